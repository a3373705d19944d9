//! AVX-512 VNNI kernels over weights in the packed layout (see `packed`): one group of 16
//! weight rows against `R` activation rows. Lane `l` of every vector belongs to weight row
//! `16g + l`; a (weight row, activation row) pair sees the same instructions whatever `R`
//! is, so batched products are bit-identical to one row at a time.
//!
//! Per block: the block's exact integer sum per lane (8 `vpdpbusd` in two chains, started
//! at the activation's integer sum times the weight offset), converted to f32 and added
//! with one FMA by `d_w * d_a`; Q4_1 adds its minimum times the activation's scaled sum.
//!
//! Callers guarantee AVX-512 F/BW/VNNI and F16C (see `super::isa`), that `g` points at
//! the group's `k / 32` blocks of `stride` bytes, that the activations hold rows
//! `row0..row0 + R`, and that `out + r * n` has room for `lanes` floats for each `r < R`.

use std::arch::x86_64::*;

use super::acts::{Q8Acts, Q8KActs, QK_K, QK8};
use super::packed::{Q4K_MINS, Q4K_QUANTS, Q4K_SCALES, Q6K_QUANTS, Q6K_SCALES, Q6K_SUB_BLOCK};

/// `for r in 0..R { body }` written out for `R <= 8` with `r` a literal in each copy, so
/// that per-row arrays of vectors are indexed by constants and live in registers (LLVM
/// does not unroll the loop by itself once the body is large).
macro_rules! for_rows {
    ($R:ident, |$r:ident| $body:block) => {{
        const { assert!($R <= 8, "at most 8 activation rows per call") };
        for_rows!(@ $R, $r, $body, 0 1 2 3 4 5 6 7)
    }};
    (@ $R:ident, $r:ident, $body:block, $($i:literal)*) => {{
        $(
            if $i < $R {
                let $r: usize = $i;
                $body
            }
        )*
    }};
}

macro_rules! packed_q8_kernel {
    ($name:ident, offset: $offset:expr, min: $min:expr, quants_at: $quants_at:expr,
        |$q:ident, $u:ident| $unpack:block) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        pub(crate) unsafe fn $name<const R: usize>(
            g: *const u8,
            stride: usize,
            a: &Q8Acts<'_>,
            row0: usize,
            out: *mut f32,
            n: usize,
            lanes: usize,
        ) {
            let nb = a.k / QK8;
            debug_assert!(a.qs.len() >= (row0 + R) * a.k && a.isum.len() >= (row0 + R) * nb);
            debug_assert!((1..=16).contains(&lanes));
            let mut acc = [_mm512_setzero_ps(); R];
            unsafe {
                let (qs, ad, asum, isum) =
                    (a.qs.as_ptr(), a.d.as_ptr(), a.s.as_ptr(), a.isum.as_ptr());
                for b in 0..nb {
                    let blk = g.add(b * stride);
                    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
                    let mw = if $min {
                        _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32).cast()))
                    } else {
                        _mm512_setzero_ps()
                    };
                    let $q = blk.add($quants_at);
                    let mut $u = [_mm512_setzero_si512(); 8];
                    $unpack
                    for_rows!(R, |r| {
                        let at = (row0 + r) * nb + b;
                        let x = qs.add(at * QK8).cast::<i32>();
                        let mut s0 = _mm512_set1_epi32($offset * *isum.add(at));
                        let mut s1 = _mm512_setzero_si512();
                        for c in (0..8).step_by(2) {
                            let x0 = _mm512_set1_epi32(x.add(c).read_unaligned());
                            let x1 = _mm512_set1_epi32(x.add(c + 1).read_unaligned());
                            s0 = _mm512_dpbusd_epi32(s0, $u[c], x0);
                            s1 = _mm512_dpbusd_epi32(s1, $u[c + 1], x1);
                        }
                        let p = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                        let d = _mm512_mul_ps(dw, _mm512_set1_ps(*ad.add(at)));
                        acc[r] = _mm512_fmadd_ps(d, p, acc[r]);
                        if $min {
                            acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*asum.add(at)), acc[r]);
                        }
                    });
                }
                let mask = ((1u32 << lanes) - 1) as u16;
                for (r, acc) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(out.add(r * n), mask, *acc);
                }
            }
        }
    };
}

/// Chunks `c` and `c + 4` from the low and high nibbles of 64 packed bytes each.
macro_rules! unpack_nibbles {
    ($q:ident, $u:ident) => {{
        let m4 = _mm512_set1_epi8(0x0F);
        for c in 0..4 {
            let x = _mm512_loadu_si512($q.add(64 * c).cast());
            $u[c] = _mm512_and_si512(x, m4);
            $u[c + 4] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
        }
    }};
}

packed_q8_kernel!(q4_0, offset: -8, min: false, quants_at: 32, |q, u| {
    unpack_nibbles!(q, u)
});

packed_q8_kernel!(q4_1, offset: 0, min: true, quants_at: 64, |q, u| {
    unpack_nibbles!(q, u)
});

// The fifth bits of chunk `t` (bits 4t..4t + 4 of each row's word) move to bit 4 of bytes
// 0..4 by one multiply with 2^4 + 2^11 + 2^18 + 2^25: bit i lands at 8i + 4, the other
// products where the mask drops them, and no two products share a bit (no carries).
packed_q8_kernel!(q5_0, offset: -16, min: false, quants_at: 32, |q, u| {
    let m4 = _mm512_set1_epi8(0x0F);
    let qh = _mm512_loadu_si512(q.cast());
    let spread = _mm512_set1_epi32(0x0204_0810);
    let fifth = _mm512_set1_epi32(0x1010_1010);
    let nibble4 = _mm512_set1_epi32(0xF);
    let bits = |t: u32| {
        let four = _mm512_and_si512(_mm512_srlv_epi32(qh, _mm512_set1_epi32(4 * t as i32)), nibble4);
        _mm512_and_si512(_mm512_mullo_epi32(four, spread), fifth)
    };
    for c in 0..4 {
        let x = _mm512_loadu_si512(q.add(64 + 64 * c).cast());
        u[c] = _mm512_or_si512(_mm512_and_si512(x, m4), bits(c as u32));
        u[c + 4] = _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16(x, 4), m4),
            bits(c as u32 + 4),
        );
    }
});

packed_q8_kernel!(q8_0, offset: -128, min: false, quants_at: 32, |q, u| {
    for (c, u) in u.iter_mut().enumerate() {
        *u = _mm512_loadu_si512(q.add(64 * c).cast());
    }
});

/// A packed kernel for one group against `R` activation rows.
pub(crate) type PackedFn = unsafe fn(*const u8, usize, &Q8Acts<'_>, usize, *mut f32, usize, usize);

/// The 1-row and 4-row kernels of a packed type.
pub(crate) fn kernels(qtype: super::QuantType) -> (PackedFn, PackedFn) {
    use super::QuantType as Q;
    match qtype {
        Q::Q4_0 => (q4_0::<1>, q4_0::<4>),
        Q::Q4_1 => (q4_1::<1>, q4_1::<4>),
        Q::Q8_0 => (q8_0::<1>, q8_0::<4>),
        Q::Q5_0 => (q5_0::<1>, q5_0::<4>),
        other => unreachable!("{other} has no packed kernel"),
    }
}

/// Q4_K: per super-block, `d * sum_s(scale_s * q_s . a_s) - dmin * sum_s(min_s * bsum_s)`,
/// both sums exact in i32 lanes (sub-block sums times scales by `vpmulld`, minimums by
/// `vpdpwssd` against the activation's pairs of 32-sums). Up to 8 activation rows share
/// each unpacking of the weights; per row, one `vpdpbusd` chain per sub-block of the pair.
/// The high nibbles are masked in place (`& 0xF0`, sixteen times the quant) rather than
/// shifted down: their sums come out times 16, exactly, and one shift per super-block
/// takes the 16 back out, which saves a shift per 64 bytes of weights.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q4k<const R: usize>(
    g: *const u8,
    stride: usize,
    a: &Q8KActs<'_>,
    row0: usize,
    out: *mut f32,
    n: usize,
    lanes: usize,
) {
    let nsb = a.k / QK_K;
    debug_assert!(a.qs.len() >= (row0 + R) * a.k && a.d.len() >= (row0 + R) * nsb);
    debug_assert!(a.pairs.len() >= (row0 + R) * nsb * 4);
    debug_assert!((1..=16).contains(&lanes));
    let mut acc = [_mm512_setzero_ps(); R];
    let (low4, high4) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0xF0u8 as i8));
    unsafe {
        let (qs, ad, pairs) = (a.qs.as_ptr(), a.d.as_ptr(), a.pairs.as_ptr());
        for b in 0..nsb {
            let blk = g.add(b * stride);
            // Sub-blocks 2j (low nibbles) and, times 16, 2j + 1 (high nibbles). Bounds: a
            // sub-block sum is at most 15 * 127 * 32 in magnitude, times a 6-bit scale,
            // times 16 for the high ones, over four of each: below 2^29.
            let mut isum = [_mm512_setzero_si512(); R];
            let mut isum16 = [_mm512_setzero_si512(); R];
            for j in 0..4 {
                let mut lo = [_mm512_setzero_si512(); 8];
                let mut hi = [_mm512_setzero_si512(); 8];
                for c in 0..8 {
                    let x = _mm512_loadu_si512(blk.add(Q4K_QUANTS + 64 * (8 * j + c)).cast());
                    lo[c] = _mm512_and_si512(x, low4);
                    hi[c] = _mm512_and_si512(x, high4);
                }
                let scale = |s: usize| {
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(Q4K_SCALES + 16 * s).cast()))
                };
                let (slo, shi) = (scale(2 * j), scale(2 * j + 1));
                for_rows!(R, |r| {
                    let x = qs.add(((row0 + r) * nsb + b) * QK_K + 64 * j).cast::<i32>();
                    let bcast = |i: usize| _mm512_set1_epi32(x.add(i).read_unaligned());
                    // One row alone (decode) splits each chain in two, or it would wait on
                    // the `vpdpbusd` latency; several rows' chains overlap by themselves.
                    // (Eight chains of two, added by a tree, decoded slower in the model.)
                    let (mut s, mut t) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    if R == 1 {
                        let (mut s1, mut t1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                        for c in (0..8).step_by(2) {
                            s = _mm512_dpbusd_epi32(s, lo[c], bcast(c));
                            s1 = _mm512_dpbusd_epi32(s1, lo[c + 1], bcast(c + 1));
                            t = _mm512_dpbusd_epi32(t, hi[c], bcast(8 + c));
                            t1 = _mm512_dpbusd_epi32(t1, hi[c + 1], bcast(9 + c));
                        }
                        s = _mm512_add_epi32(s, s1);
                        t = _mm512_add_epi32(t, t1);
                    } else {
                        for c in 0..8 {
                            s = _mm512_dpbusd_epi32(s, lo[c], bcast(c));
                            t = _mm512_dpbusd_epi32(t, hi[c], bcast(8 + c));
                        }
                    }
                    isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(s, slo));
                    isum16[r] = _mm512_add_epi32(isum16[r], _mm512_mullo_epi32(t, shi));
                });
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
            let dminw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32).cast()));
            let mins = |p: usize| {
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(blk.add(Q4K_MINS + 32 * p).cast()))
            };
            let mins = [mins(0), mins(1), mins(2), mins(3)];
            for_rows!(R, |r| {
                let at = (row0 + r) * nsb + b;
                let pair = pairs.add(at * 4);
                let mut msum = _mm512_setzero_si512();
                for (p, &mins) in mins.iter().enumerate() {
                    msum = _mm512_dpwssd_epi32(msum, mins, _mm512_set1_epi32(*pair.add(p)));
                }
                let isum = _mm512_add_epi32(isum[r], _mm512_srai_epi32::<4>(isum16[r]));
                let da = _mm512_set1_ps(*ad.add(at));
                let sums = _mm512_cvtepi32_ps(isum);
                acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), sums, acc[r]);
                let mins = _mm512_cvtepi32_ps(msum);
                acc[r] = _mm512_fnmadd_ps(_mm512_mul_ps(dminw, da), mins, acc[r]);
            });
        }
        let mask = ((1u32 << lanes) - 1) as u16;
        for (r, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(r * n), mask, *acc);
        }
    }
}

/// Q6_K: per super-block, `d * sum_s(scale_s * (q_s - 32) . a_s)`, exact in i32 lanes.
/// One activation row (decode) starts each sub-block's `vpdpbusd` chain at the
/// activation's `-32 * bsum_s`, which applies the `- 32` at no cost; several rows share
/// the sub-block scales widened to i16 pairs once per super-block and take the offset
/// `-32 * sum_s(scale_s * bsum_s)` with one `vpmaddwd` per pair of sub-blocks. Up to 8
/// activation rows share each unpacking of the weights.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q6k<const R: usize>(
    g: *const u8,
    stride: usize,
    a: &Q8KActs<'_>,
    row0: usize,
    out: *mut f32,
    n: usize,
    lanes: usize,
) {
    let nsb = a.k / QK_K;
    debug_assert!(a.qs.len() >= (row0 + R) * a.k && a.d.len() >= (row0 + R) * nsb);
    debug_assert!(a.offsets6.len() >= (row0 + R) * nsb * 16);
    debug_assert!((1..=16).contains(&lanes));
    let mut acc = [_mm512_setzero_ps(); R];
    unsafe {
        let (qs, ad, bsums, offsets) = (
            a.qs.as_ptr(),
            a.d.as_ptr(),
            a.bsums.as_ptr(),
            a.offsets6.as_ptr(),
        );
        for b in 0..nsb {
            let blk = g.add(b * stride);
            let mut isum = [_mm512_setzero_si512(); R];
            if R > 1 {
                let scales = |s: usize| {
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(Q6K_SCALES + 16 * s).cast()))
                };
                let mut pairs = [_mm512_setzero_si512(); 8];
                for (p, pair) in pairs.iter_mut().enumerate() {
                    // Rows 0-3 and 8-11, then 4-7 and 12-15, each as (scale 2p, 2p + 1).
                    let (even, odd) = (scales(2 * p), scales(2 * p + 1));
                    let (lo, hi) = (
                        _mm256_unpacklo_epi16(even, odd),
                        _mm256_unpackhi_epi16(even, odd),
                    );
                    let first = _mm256_permute2x128_si256::<0x20>(lo, hi);
                    let second = _mm256_permute2x128_si256::<0x31>(lo, hi);
                    *pair = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(first), second);
                }
                for_rows!(R, |r| {
                    let bs = bsums.add(((row0 + r) * nsb + b) * 16).cast::<i32>();
                    let mut offset = _mm512_setzero_si512();
                    for (p, &pair) in pairs.iter().enumerate() {
                        let sums = _mm512_set1_epi32(bs.add(p).read_unaligned());
                        offset = _mm512_add_epi32(offset, _mm512_madd_epi16(pair, sums));
                    }
                    isum[r] =
                        _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<5>(offset));
                });
            }
            let (low4, high2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
            for s in 0..16 {
                // The 6-bit quants of chunks 0..4 from their nibbles and high-bit pairs
                // (layout at `Q6K_SUB_BLOCK`); 16-bit shifts are safe under the byte masks.
                let sub = blk.add(Q6K_QUANTS + Q6K_SUB_BLOCK * s);
                let n02 = _mm512_loadu_si512(sub.cast());
                let n13 = _mm512_loadu_si512(sub.add(64).cast());
                let hi = _mm512_loadu_si512(sub.add(128).cast());
                let join = |nib: __m512i, high: __m512i| {
                    _mm512_or_si512(_mm512_and_si512(nib, low4), _mm512_and_si512(high, high2))
                };
                let u = [
                    join(n02, _mm512_slli_epi16::<4>(hi)),
                    join(n13, _mm512_slli_epi16::<2>(hi)),
                    join(_mm512_srli_epi16::<4>(n02), hi),
                    join(_mm512_srli_epi16::<4>(n13), _mm512_srli_epi16::<2>(hi)),
                ];
                let scale =
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(blk.add(Q6K_SCALES + 16 * s).cast()));
                for_rows!(R, |r| {
                    let at = (row0 + r) * nsb + b;
                    let x = qs.add(at * QK_K + 16 * s).cast::<i32>();
                    let bcast = |i: usize| _mm512_set1_epi32(x.add(i).read_unaligned());
                    // Two chains of two products (see `q4k`); one row alone starts the first
                    // at its offset.
                    let start = if R == 1 {
                        _mm512_set1_epi32(*offsets.add(at * 16 + s))
                    } else {
                        _mm512_setzero_si512()
                    };
                    let s0 = _mm512_dpbusd_epi32(start, u[0], bcast(0));
                    let s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[1], bcast(1));
                    let s0 = _mm512_dpbusd_epi32(s0, u[2], bcast(2));
                    let s1 = _mm512_dpbusd_epi32(s1, u[3], bcast(3));
                    let p = _mm512_add_epi32(s0, s1);
                    isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(p, scale));
                });
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
            for_rows!(R, |r| {
                let da = _mm512_set1_ps(*ad.add((row0 + r) * nsb + b));
                let sums = _mm512_cvtepi32_ps(isum[r]);
                acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), sums, acc[r]);
            });
        }
        let mask = ((1u32 << lanes) - 1) as u16;
        for (r, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(r * n), mask, *acc);
        }
    }
}

/// A packed K-quant kernel for one group against `R` activation rows.
pub(crate) type PackedKFn =
    unsafe fn(*const u8, usize, &Q8KActs<'_>, usize, *mut f32, usize, usize);

/// The 1-row, 4-row and 8-row kernels of a packed K-quant type.
pub(crate) fn k_kernels(qtype: super::QuantType) -> (PackedKFn, PackedKFn, PackedKFn) {
    use super::QuantType as Q;
    match qtype {
        Q::Q4K => (q4k::<1>, q4k::<4>, q4k::<8>),
        Q::Q6K => (q6k::<1>, q6k::<4>, q6k::<8>),
        other => unreachable!("{other} has no packed kernel"),
    }
}

#[cfg(test)]
pub(crate) mod previous;
