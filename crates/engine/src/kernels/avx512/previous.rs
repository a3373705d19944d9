//! The Q4_K and Q6_K kernels as they were before the 8-row tiles (at most 4 activation
//! rows per weight unpack, four `vpdpbusd` chains per row): the baseline of the ignored
//! throughput test in `kernels::tests`, and an oracle for the new kernels, which must
//! give the same bits (the same integers, the same f32 operations in the same order).

use std::arch::x86_64::*;

use super::super::acts::{Q8KActs, QK_K};
use super::super::packed::{
    Q4K_MINS, Q4K_QUANTS, Q4K_SCALES, Q6K_QUANTS, Q6K_SCALES, Q6K_SUB_BLOCK,
};

/// Q4_K: per super-block, `d * sum_s(scale_s * q_s . a_s) - dmin * sum_s(min_s * bsum_s)`,
/// both sums exact in i32 lanes (sub-block sums times scales by `vpmulld`, minimums by
/// `vpmaddwd` against pairs of activation sums).
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
    debug_assert!((1..=16).contains(&lanes));
    let mut acc = [_mm512_setzero_ps(); R];
    let m4 = _mm512_set1_epi8(0x0F);
    unsafe {
        let (qs, ad, bsums) = (a.qs.as_ptr(), a.d.as_ptr(), a.bsums.as_ptr());
        for b in 0..nsb {
            let blk = g.add(b * stride);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
            let dminw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32).cast()));
            let mut isum = [_mm512_setzero_si512(); R];
            let mut msum = [_mm512_setzero_si512(); R];
            for_rows!(R, |r| {
                let msum = &mut msum[r];
                let bs = bsums.add(((row0 + r) * nsb + b) * 16);
                for p in 0..4 {
                    let lo = *bs.add(4 * p) + *bs.add(4 * p + 1);
                    let hi = *bs.add(4 * p + 2) + *bs.add(4 * p + 3);
                    let pair = (lo as u16 as u32 | (hi as u16 as u32) << 16) as i32;
                    // (The minimums are bytes since the one-row kernels; widened here.)
                    let mins = _mm256_loadu_si256(blk.add(Q4K_MINS + 32 * p).cast());
                    let mins = _mm512_cvtepu8_epi16(mins);
                    *msum =
                        _mm512_add_epi32(*msum, _mm512_madd_epi16(mins, _mm512_set1_epi32(pair)));
                }
            });
            for j in 0..4 {
                let mut lo = [_mm512_setzero_si512(); 8];
                let mut hi = [_mm512_setzero_si512(); 8];
                for c in 0..8 {
                    let x = _mm512_loadu_si512(blk.add(Q4K_QUANTS + 64 * (8 * j + c)).cast());
                    lo[c] = _mm512_and_si512(x, m4);
                    hi[c] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
                }
                let scale = |s: usize| {
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(Q4K_SCALES + 16 * s).cast()))
                };
                let (slo, shi) = (scale(2 * j), scale(2 * j + 1));
                for_rows!(R, |r| {
                    let isum = &mut isum[r];
                    let x = qs.add(((row0 + r) * nsb + b) * QK_K + 64 * j).cast::<i32>();
                    let bcast = |i: usize| _mm512_set1_epi32(x.add(i).read_unaligned());
                    let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    let (mut t0, mut t1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    for c in (0..8).step_by(2) {
                        s0 = _mm512_dpbusd_epi32(s0, lo[c], bcast(c));
                        s1 = _mm512_dpbusd_epi32(s1, lo[c + 1], bcast(c + 1));
                        t0 = _mm512_dpbusd_epi32(t0, hi[c], bcast(8 + c));
                        t1 = _mm512_dpbusd_epi32(t1, hi[c + 1], bcast(9 + c));
                    }
                    let l = _mm512_mullo_epi32(_mm512_add_epi32(s0, s1), slo);
                    let h = _mm512_mullo_epi32(_mm512_add_epi32(t0, t1), shi);
                    *isum = _mm512_add_epi32(*isum, _mm512_add_epi32(l, h));
                });
            }
            for_rows!(R, |r| {
                let da = _mm512_set1_ps(*ad.add((row0 + r) * nsb + b));
                let sums = _mm512_cvtepi32_ps(isum[r]);
                acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), sums, acc[r]);
                let mins = _mm512_cvtepi32_ps(msum[r]);
                acc[r] = _mm512_fnmadd_ps(_mm512_mul_ps(dminw, da), mins, acc[r]);
            });
        }
        let mask = ((1u32 << lanes) - 1) as u16;
        for (r, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(r * n), mask, *acc);
        }
    }
}

/// Q6_K: per super-block, `d * sum_s(scale_s * (q_s - 32) . a_s)`, exact in i32 lanes;
/// the `- 32` applied once through the activation's sums of 16.
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
    debug_assert!((1..=16).contains(&lanes));
    let mut acc = [_mm512_setzero_ps(); R];
    unsafe {
        let (qs, ad, bsums) = (a.qs.as_ptr(), a.d.as_ptr(), a.bsums.as_ptr());
        for b in 0..nsb {
            let blk = g.add(b * stride);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
            let mut isum = [_mm512_setzero_si512(); R];
            for_rows!(R, |r| {
                let isum = &mut isum[r];
                // (The scales were also stored as i16 pairs before the one-row kernels; the
                // same sum from the bytes.)
                let bs = bsums.add(((row0 + r) * nsb + b) * 16);
                let mut offset = _mm512_setzero_si512();
                for s in 0..16 {
                    let scales = _mm_loadu_si128(blk.add(Q6K_SCALES + 16 * s).cast());
                    let sum = _mm512_set1_epi32(*bs.add(s) as i32);
                    let product = _mm512_mullo_epi32(_mm512_cvtepi8_epi32(scales), sum);
                    offset = _mm512_add_epi32(offset, product);
                }
                *isum = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<5>(offset));
            });
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
                    let isum = &mut isum[r];
                    let x = qs.add(((row0 + r) * nsb + b) * QK_K + 16 * s).cast::<i32>();
                    let bcast = |i: usize| _mm512_set1_epi32(x.add(i).read_unaligned());
                    let s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[0], bcast(0));
                    let s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[1], bcast(1));
                    let s0 = _mm512_dpbusd_epi32(s0, u[2], bcast(2));
                    let s1 = _mm512_dpbusd_epi32(s1, u[3], bcast(3));
                    let p = _mm512_mullo_epi32(_mm512_add_epi32(s0, s1), scale);
                    *isum = _mm512_add_epi32(*isum, p);
                });
            }
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

/// The 1-row and 4-row kernels of a packed K-quant type, as they were.
pub(crate) fn k_kernels(qtype: super::super::QuantType) -> (super::PackedKFn, super::PackedKFn) {
    use super::super::QuantType as Q;
    match qtype {
        Q::Q4K => (q4k::<1>, q4k::<4>),
        Q::Q6K => (q6k::<1>, q6k::<4>),
        other => unreachable!("{other} has no packed kernel"),
    }
}
