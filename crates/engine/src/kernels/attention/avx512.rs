//! The inner loops on 512-bit vectors: a chunk of 16 keys is one register.

use std::arch::x86_64::*;

use super::CHUNK;

/// `super::dots` for `N * 16` dimensions, `Q` queries at a time (their elements are FMA
/// memory operands): each key's row is loaded once for the `Q` queries (at a 16K
/// context, head size 128: one query at a time 409 ms a call against 301 for four;
/// eight 284 against 243), and one vector FMA per 16 dimensions
/// leaves the key's 16 lane sums in one register (lane `l` summing the dimensions
/// `d = l (mod 16)` in order, as `super::dots`). The 16 keys' registers are then folded
/// together, halves first as `super::fold_lanes` folds: the same operations on the same
/// values, so the same bits.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn dots<const N: usize, const Q: usize>(
    queries: &mut [super::Query],
    keys: &[f32],
    hd: usize,
    scale: f32,
    c0: usize,
    dst: *mut f32,
    n: usize,
) {
    debug_assert!(hd == N * 16 && keys.len() >= CHUNK * hd && queries.len() <= super::TILE);
    // Key j's score sits at element 4 * (j % 4) + j / 4 of the folded register.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let scale = _mm512_set1_ps(scale);
    let hidden = _mm512_set1_ps(f32::NEG_INFINITY);
    for (g, group) in queries.chunks_mut(Q).enumerate() {
        // A short group repeats its last query (its extra sums are not stored).
        let q: [*const f32; Q] = std::array::from_fn(|i| group[i.min(group.len() - 1)].q.as_ptr());
        // SAFETY: `keys` holds 16 rows of `hd` floats, each query `hd` floats.
        let folded = unsafe { fold_keys::<N, Q>(&q, keys.as_ptr()) };
        for (i, (qv, f)) in group.iter_mut().zip(folded).enumerate() {
            let visible = qv.visible(c0);
            let mask = ((1u32 << visible.end) - (1u32 << visible.start)) as __mmask16;
            let f = _mm512_mul_ps(_mm512_permutexvar_ps(order, f), scale);
            let f = _mm512_mask_blend_ps(mask, hidden, f);
            // SAFETY: the caller's; `max` holds 16 floats.
            unsafe {
                _mm512_storeu_ps(dst.add((g * Q + i) * n), f);
                let m = _mm512_loadu_ps(qv.max.as_ptr());
                _mm512_storeu_ps(qv.max.as_mut_ptr(), _mm512_max_ps(f, m));
            }
        }
    }
}

/// Per query, the lane sums of key `j` (row `keys + j * N * 16`).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn lanes<const N: usize, const Q: usize>(
    q: &[*const f32; Q],
    keys: *const f32,
    j: usize,
) -> [__m512; Q] {
    let mut acc = [_mm512_setzero_ps(); Q];
    for c in 0..N {
        // SAFETY: the caller's.
        unsafe {
            let k = _mm512_loadu_ps(keys.add((j * N + c) * 16));
            for (a, &q) in acc.iter_mut().zip(q) {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(16 * c)), k, *a);
            }
        }
    }
    acc
}

/// The 16 keys' lane sums folded into one register per query, in the order the
/// binary tree of `fold_keys` leaves them: key `i + 4 t` at element `4 i + t`.
/// Level 1 adds lanes `l + 8` of keys `2m, 2m + 1` (a 256-bit half each), level 2
/// lanes `l + 4` (a 128-bit quarter a key), level 3 `l + 2`, level 4 `l + 1`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn fold_keys<const N: usize, const Q: usize>(
    q: &[*const f32; Q],
    keys: *const f32,
) -> [__m512; Q] {
    let level1 = |j: usize| {
        // SAFETY: the caller's.
        let (a, b) = unsafe { (lanes::<N, Q>(q, keys, j), lanes::<N, Q>(q, keys, j + 1)) };
        std::array::from_fn::<__m512, Q, _>(|i| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a[i], b[i]),
                _mm512_shuffle_f32x4::<0xEE>(a[i], b[i]),
            )
        })
    };
    let level2 = |j: usize| {
        let (s, t) = (level1(j), level1(j + 2));
        std::array::from_fn::<__m512, Q, _>(|i| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(s[i], t[i]),
                _mm512_shuffle_f32x4::<0xDD>(s[i], t[i]),
            )
        })
    };
    let level3 = |j: usize| {
        let (u, v) = (level2(j), level2(j + 4));
        std::array::from_fn::<__m512, Q, _>(|i| {
            let (u, v) = (_mm512_castps_pd(u[i]), _mm512_castps_pd(v[i]));
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(u, v)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(u, v)),
            )
        })
    };
    let (w, z) = (level3(0), level3(8));
    std::array::from_fn(|i| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(w[i], z[i]),
            _mm512_shuffle_ps::<0xDD>(w[i], z[i]),
        )
    })
}

/// `super::exp16` on one register; the same arithmetic.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn exp16(x: __m512) -> __m512 {
    let v = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(88.0),
    );
    let round = _mm512_set1_ps(super::EXP_ROUND);
    let z = _mm512_fmadd_ps(v, _mm512_set1_ps(std::f32::consts::LOG2_E), round);
    let n = _mm512_sub_ps(z, round);
    let r = _mm512_fmadd_ps(
        n,
        _mm512_set1_ps(-super::EXP_LN2_LO),
        _mm512_fmadd_ps(n, _mm512_set1_ps(-super::EXP_LN2_HI), v),
    );
    let mut p = _mm512_set1_ps(super::EXP_POLY[0]);
    for c in &super::EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let e = _mm512_add_ps(
        _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r),
        _mm512_set1_ps(1.0),
    );
    // e * 2^n, one rounding as `super::exp16`'s product with the power of two.
    _mm512_scalef_ps(e, n)
}

/// `super::softmax_f16`; the same arithmetic.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn softmax_f16(scores: &mut [f32], max: f32) -> f32 {
    debug_assert!(scores.len().is_multiple_of(CHUNK));
    let p = scores.as_mut_ptr();
    let chunks = scores.len() / CHUNK;
    let mut sum = 0f64;
    unsafe {
        let max = _mm512_set1_ps(max);
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in 0..chunks {
            let s = _mm512_loadu_ps(p.add(c * CHUNK));
            let live = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(s, ninf);
            let e = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(s, max)));
            _mm512_storeu_ps(p.add(c * CHUNK), e);
            sum += fold(e) as f64;
        }
    }
    (1.0 / sum) as f32
}

/// The 16 lanes summed as `super::fold16` sums them.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn fold(v: __m512) -> f32 {
    let v8 = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let h8 = _mm256_add_ps(_mm512_castps512_ps256(v), v8);
    let h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps::<1>(h8));
    let h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    let h1 = _mm_add_ss(h2, _mm_movehdup_ps(h2));
    _mm_cvtss_f32(h1)
}

/// `super::weighted_sum` for `N * 16` dimensions and up to 4 queries, each query's
/// sums in `N` registers: the same order per query, with zero weights added instead
/// of skipped (which leaves every sum unchanged), and each row of values loaded once.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn weighted_sum<const N: usize>(
    e: &[f32],
    invs: &[f32; super::TILE],
    n: usize,
    span: std::ops::Range<usize>,
    values: &[f32],
    outs: &[*mut f32],
    hd: usize,
) {
    debug_assert!(hd == N * 16 && outs.len() <= super::TILE && values.len() >= span.len() * hd);
    // At most 16 sums in registers (4 queries of 64 or 2 of 128 dimensions), or they
    // spill; the queries of the tile go through the values in groups of that size.
    let group = (16 / N).clamp(1, 4);
    debug_assert!(span.len() <= super::VALUE_RUN && span.len().is_multiple_of(CHUNK));
    for (g, outs) in outs.chunks(group).enumerate() {
        // The group's weights over the span, made from the exponentials (in L1 for the
        // loop over the values).
        let mut w = [[0f32; super::VALUE_RUN]; 4];
        for (i, w) in w.iter_mut().enumerate().take(outs.len()) {
            let q = g * group + i;
            let inv = _mm512_set1_ps(invs[q]);
            for (c, p) in span.clone().step_by(CHUNK).enumerate() {
                // SAFETY: the span holds whole chunks of `e`'s row `q`.
                unsafe {
                    let x = _mm512_mul_ps(_mm512_loadu_ps(e.as_ptr().add(q * n + p)), inv);
                    let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
                    _mm512_storeu_ps(w.as_mut_ptr().add(c * CHUNK), _mm512_cvtph_ps(h));
                }
            }
        }
        let len = span.len();
        match outs.len() {
            1 => unsafe { tile::<N, 1>(&w, len, values, outs) },
            2 => unsafe { tile::<N, 2>(&w, len, values, outs) },
            3 => unsafe { tile::<N, 3>(&w, len, values, outs) },
            _ => unsafe { tile::<N, 4>(&w, len, values, outs) },
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn tile<const N: usize, const Q: usize>(
    w: &[[f32; super::VALUE_RUN]; 4],
    len: usize,
    values: &[f32],
    outs: &[*mut f32],
) {
    let hd = N * 16;
    let mut acc = [[_mm512_setzero_ps(); N]; Q];
    unsafe {
        for (acc, &out) in acc.iter_mut().zip(outs) {
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(out.add(16 * c));
            }
        }
        for (i, v) in values.chunks_exact(hd).take(len).enumerate() {
            let v = v.as_ptr();
            let wq: [__m512; Q] = std::array::from_fn(|q| _mm512_set1_ps(w[q][i]));
            for c in 0..N {
                let row = _mm512_loadu_ps(v.add(16 * c));
                for (acc, wq) in acc.iter_mut().zip(&wq) {
                    acc[c] = _mm512_fmadd_ps(*wq, row, acc[c]);
                }
            }
        }
        for (acc, &out) in acc.iter().zip(outs) {
            for (c, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.add(16 * c), *a);
            }
        }
    }
}
