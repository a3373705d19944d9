//! AVX2 + FMA + F16C kernels (x86-64-v3), in the manner of ggml-cpu's x86 dot products:
//! `maddubs` (unsigned x signed bytes into i16 pairs) then `madd` into i32 lanes, exact per
//! block, scaled in f32.
//!
//! Each kernel takes `RW` consecutive weight rows and `R` activation rows. Every (weight
//! row, activation row) pair has its own accumulators that see the same sequence of
//! operations whatever `RW` and `R` are, which is what makes a batched product
//! bit-identical to one row at a time; the gain of `R > 1` is that each weight block is
//! loaded and unpacked once for `R` rows, that of `RW = 2` that each activation block is
//! loaded once for two weight rows.
//!
//! Callers guarantee the CPU features (see `super::isa`) and the slice sizes: `w` holds
//! `RW` whole rows of blocks for `a.k` columns and the activations hold rows
//! `row0..row0 + R`.

// The kernels index several per-row arrays (accumulators, sums, scales) in lockstep.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::acts::{F32Acts, Lane, Q8Acts, Q8KActs, QK_K, QK8};

/// An f16 at `p` (unaligned), widened.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    unsafe {
        let bits = std::ptr::read_unaligned(p.cast::<u16>());
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load(p: *const i8) -> __m256i {
    unsafe { _mm256_loadu_si256(p.cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// 16 bytes of packed 4-bit values into 32 bytes: low nibbles first, then high nibbles
/// (ggml's element order for Q4_0/Q4_1).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    unsafe {
        let x = _mm_loadu_si128(p.cast());
        let both = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
    }
}

/// Sum of `u[i] * s[i]` over each group of 4 bytes, as 8 i32 lanes (`u` unsigned, `s`
/// signed; no i16 pair may exceed 32767, which holds for every format here).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// `dot_u8_i8` in one instruction (AVX-VNNI); the same integers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn dot_u8_i8_vnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
}

/// Finish `R` pairs: horizontal sums of the vector accumulators plus scalar terms.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn finish<const R: usize>(acc: [__m256; R], extra: [f32; R]) -> [f32; R] {
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum_f32(acc[r]) + extra[r];
    }
    out
}

/// Spread 32 bits to 32 bytes: 0xFF where the bit is set, 0 elsewhere.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bits_to_bytes(p: *const u8) -> __m256i {
    unsafe {
        let bits = std::ptr::read_unaligned(p.cast::<u32>()) as i32;
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits),
            _mm256_setr_epi64x(
                0,
                0x0101_0101_0101_0101,
                0x0202_0202_0202_0202,
                0x0303_0303_0303_0303,
            ),
        );
        let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1))
    }
}

/// Where the f16 minimum sits in a Q4_1 or Q5_1 block.
const MIN_AT: usize = 2;

/// Kernels against Q8 32-blocks, in an AVX2 and an AVX-VNNI build of the same code, for
/// `RW` consecutive weight rows by `R` activation rows. `|blk| weight` unpacks the block
/// at `blk` into `(u, sign, dw, mw)`: the quants as unsigned bytes, the signs to give the
/// activations (`None` when the quants are unsigned), the scale and the minimum (0 for
/// symmetric formats).
///
/// A pair accumulates `d_w * d_a * (q . a)` block by block in one 8-lane vector; the
/// minimum terms (Q4_1, Q5_1) join it as one FMA of 8 weight minimums by 8 activation sums
/// per group of 8 blocks, or block by block in a scalar for the blocks after the last full
/// group. Everything is summed at the end.
macro_rules! q8_kernel {
    ($name:ident, $vnni:ident, $bytes:expr, $has_min:expr, chains: $chains:expr,
        |$blk:ident| $weight:block) => {
        q8_kernel!(@build $name, "avx2,fma,f16c", dot_u8_i8, $bytes, $has_min, $chains,
            |$blk| $weight);
        q8_kernel!(@build $vnni, "avx2,fma,f16c,avxvnni", dot_u8_i8_vnni, $bytes, $has_min,
            $chains, |$blk| $weight);
    };
    (@build $name:ident, $features:literal, $dot:ident, $bytes:expr, $has_min:expr,
        $chains:expr, |$blk:ident| $weight:block) => {
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name<const RW: usize, const R: usize>(
            w: &[u8],
            a: &Q8Acts<'_>,
            row0: usize,
        ) -> [[f32; R]; RW] {
            const C: usize = $chains;
            let k = a.k;
            let nb = k / QK8;
            let rb = nb * $bytes;
            debug_assert!(w.len() >= RW * rb);
            debug_assert!(a.qs.len() >= (row0 + R) * k && a.d.len() >= (row0 + R) * nb);
            let mut acc = [[[_mm256_setzero_ps(); C]; R]; RW];
            let mut summ = [[0f32; R]; RW];
            unsafe {
                let (qs, ad, asum) = (a.qs.as_ptr(), a.d.as_ptr(), a.s.as_ptr());
                macro_rules! block {
                    ($b:expr, $chain:expr, $scalar_min:expr) => {{
                        let b = $b;
                        let mut us = [_mm256_setzero_si256(); RW];
                        let mut signs = [None; RW];
                        let mut dws = [_mm256_setzero_ps(); RW];
                        let mut mws = [0f32; RW];
                        for wr in 0..RW {
                            let $blk = w.as_ptr().add(wr * rb + b * $bytes);
                            let (u, sign, dw, mw): (__m256i, Option<__m256i>, f32, f32) = $weight;
                            (us[wr], signs[wr], dws[wr], mws[wr]) =
                                (u, sign, _mm256_set1_ps(dw), mw);
                        }
                        for r in 0..R {
                            let at = (row0 + r) * nb + b;
                            let q = load(qs.add(at * QK8));
                            let da = _mm256_broadcast_ss(&*ad.add(at));
                            for wr in 0..RW {
                                let q = match signs[wr] {
                                    Some(sign) => _mm256_sign_epi8(q, sign),
                                    None => q,
                                };
                                let p = _mm256_cvtepi32_ps($dot(us[wr], q));
                                let d = _mm256_mul_ps(dws[wr], da);
                                acc[wr][r][$chain] = _mm256_fmadd_ps(d, p, acc[wr][r][$chain]);
                                if $scalar_min {
                                    summ[wr][r] += mws[wr] * *asum.add(at);
                                }
                            }
                        }
                    }};
                }
                let mut b = 0;
                while b + 8 <= nb {
                    for i in (0..8).step_by(C) {
                        for c in 0..C {
                            block!(b + i + c, c, false);
                        }
                    }
                    if $has_min {
                        for wr in 0..RW {
                            let mut mins = [0u16; 8];
                            for (i, m) in mins.iter_mut().enumerate() {
                                let at = w.as_ptr().add(wr * rb + (b + i) * $bytes + MIN_AT);
                                *m = std::ptr::read_unaligned(at.cast::<u16>());
                            }
                            let mins = _mm256_cvtph_ps(_mm_loadu_si128(mins.as_ptr().cast()));
                            for r in 0..R {
                                let sums = _mm256_loadu_ps(asum.add((row0 + r) * nb + b));
                                acc[wr][r][0] = _mm256_fmadd_ps(mins, sums, acc[wr][r][0]);
                            }
                        }
                    }
                    b += 8;
                }
                while b + C <= nb {
                    for c in 0..C {
                        block!(b + c, c, $has_min);
                    }
                    b += C;
                }
                if b < nb {
                    block!(b, 0, $has_min);
                }
            }
            let mut out = [[0f32; R]; RW];
            for wr in 0..RW {
                for r in 0..R {
                    let chains = &acc[wr][r];
                    let sum = chains[1..].iter().fold(chains[0], |s, c| _mm256_add_ps(s, *c));
                    out[wr][r] = hsum_f32(sum) + summ[wr][r];
                }
            }
            out
        }
    };
}

q8_kernel!(q4_0, q4_0_vnni, 18, false, chains: 2, |blk| {
    let q = _mm256_sub_epi8(nibbles(blk.add(2)), _mm256_set1_epi8(8));
    (_mm256_sign_epi8(q, q), Some(q), f16_at(blk), 0.0)
});

q8_kernel!(q4_1, q4_1_vnni, 20, true, chains: 1, |blk| {
    (nibbles(blk.add(4)), None, f16_at(blk), f16_at(blk.add(2)))
});

// The fifth bit, where clear, turns `nibble` into `nibble - 16` (as a signed byte).
q8_kernel!(q5_0, q5_0_vnni, 22, false, chains: 2, |blk| {
    let clear = _mm256_andnot_si256(bits_to_bytes(blk.add(2)), _mm256_set1_epi8(0xF0u8 as i8));
    let q = _mm256_or_si256(nibbles(blk.add(6)), clear);
    (_mm256_sign_epi8(q, q), Some(q), f16_at(blk), 0.0)
});

q8_kernel!(q5_1, q5_1_vnni, 24, true, chains: 1, |blk| {
    let high = _mm256_and_si256(bits_to_bytes(blk.add(4)), _mm256_set1_epi8(0x10));
    (
        _mm256_or_si256(nibbles(blk.add(8)), high),
        None,
        f16_at(blk),
        f16_at(blk.add(2)),
    )
});

q8_kernel!(q8_0, q8_0_vnni, 34, false, chains: 2, |blk| {
    let q = load(blk.add(2).cast());
    (_mm256_sign_epi8(q, q), Some(q), f16_at(blk), 0.0)
});

/// f32 and f16 weights against unquantized activations: 8 columns at a time, the tail
/// (k % 8) in scalar.
macro_rules! float_kernel {
    ($name:ident, $bytes:expr, |$p:ident| $load8:expr, |$t:ident| $load1:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const R: usize>(w: &[u8], a: &F32Acts<'_>, row0: usize) -> [f32; R] {
            let k = a.k;
            debug_assert!(w.len() >= k * $bytes && a.x.len() >= (row0 + R) * k);
            let mut acc = [_mm256_setzero_ps(); R];
            let mut tail = [0f32; R];
            unsafe {
                let x = a.x.as_ptr();
                let mut c = 0;
                while c + 8 <= k {
                    let $p = w.as_ptr().add(c * $bytes);
                    let wv: __m256 = $load8;
                    for r in 0..R {
                        let xv = _mm256_loadu_ps(x.add((row0 + r) * k + c));
                        acc[r] = _mm256_fmadd_ps(wv, xv, acc[r]);
                    }
                    c += 8;
                }
                while c < k {
                    let $t = w.as_ptr().add(c * $bytes);
                    let wv: f32 = $load1;
                    for r in 0..R {
                        tail[r] += wv * *x.add((row0 + r) * k + c);
                    }
                    c += 1;
                }
            }
            finish(acc, tail)
        }
    };
}

float_kernel!(f32w_row, 4, |p| _mm256_loadu_ps(p.cast()), |t| {
    std::ptr::read_unaligned(t.cast::<f32>())
});

float_kernel!(
    f16w_row,
    2,
    |p| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    |t| f16_at(t)
);

/// `sum(mins[j] * (bsums[2j] + bsums[2j+1]))` for one Q8_K super-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_min_sum(mins: __m128i, bsums: *const i16) -> i32 {
    unsafe {
        let lo = _mm_loadu_si128(bsums.cast());
        let hi = _mm_loadu_si128(bsums.add(8).cast());
        let pairs = _mm_hadd_epi16(lo, hi);
        let p = _mm_madd_epi16(mins, pairs);
        let p = _mm_add_epi32(p, _mm_unpackhi_epi64(p, p));
        let p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0b10_11_00_01));
        _mm_cvtsi128_si32(p)
    }
}

/// The 8 sub-block scales (i16 lanes 0..8) and 8 mins (lanes 8..16) of a Q4_K/Q5_K
/// super-block, from its 12 packed 6-bit fields (as ggml's x86 kernels unpack them).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_scales_mins(p: *const u8) -> __m256i {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| unsafe { std::ptr::read_unaligned(p.add(4 * i).cast::<u32>()) };
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let scales_lo = w0 & LOW6;
    let scales_hi = (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4);
    let mins_lo = w1 & LOW6;
    let mins_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4);
    _mm256_cvtepu8_epi16(_mm_setr_epi32(
        scales_lo as i32,
        scales_hi as i32,
        mins_lo as i32,
        mins_hi as i32,
    ))
}

/// Byte shuffles that spread the i16 scale `i` to all 16 lanes (in both 128-bit halves).
const K4_SCALE_SHUFFLE: [[i8; 32]; 8] = {
    let mut t = [[0i8; 32]; 8];
    let mut i = 0;
    while i < 8 {
        let mut b = 0;
        while b < 32 {
            t[i][b] = (2 * i + b % 2) as i8;
            b += 1;
        }
        i += 1;
    }
    t
};

/// Q4_K and Q5_K: per super-block, `d * sum(scale * q . a) - dmin * sum(min * bsum)`.
/// `$quants(j)` gives the unsigned quants of the low and high halves of 64-chunk `j`.
macro_rules! k4_kernel {
    ($name:ident, $bytes:expr, |$blk:ident, $j:ident| $quants:block) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const R: usize>(w: &[u8], a: &Q8KActs<'_>, row0: usize) -> [f32; R] {
            let k = a.k;
            let nsb = k / QK_K;
            debug_assert!(w.len() >= nsb * $bytes);
            debug_assert!(a.qs.len() >= (row0 + R) * k && a.d.len() >= (row0 + R) * nsb);
            let mut acc = [_mm256_setzero_ps(); R];
            let mut summ = [0f32; R];
            unsafe {
                let (qs, ad, bsums) = (a.qs.as_ptr(), a.d.as_ptr(), a.bsums.as_ptr());
                for b in 0..nsb {
                    let $blk = w.as_ptr().add(b * $bytes);
                    let (dw, dminw) = (f16_at($blk), f16_at($blk.add(2)));
                    let scales_mins = k4_scales_mins($blk.add(4));
                    let mins = _mm256_extracti128_si256(scales_mins, 1);
                    let scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(scales_mins));
                    let mut sumi = [_mm256_setzero_si256(); R];
                    for r in 0..R {
                        let at = (row0 + r) * nsb + b;
                        let m = k4_min_sum(mins, bsums.add(at * 16));
                        summ[r] += (dminw * *ad.add(at)) * m as f32;
                    }
                    for $j in 0..4 {
                        let (lo, hi): (__m256i, __m256i) = $quants;
                        let slo =
                            _mm256_shuffle_epi8(scales, load(K4_SCALE_SHUFFLE[2 * $j].as_ptr()));
                        let shi = _mm256_shuffle_epi8(
                            scales,
                            load(K4_SCALE_SHUFFLE[2 * $j + 1].as_ptr()),
                        );
                        for r in 0..R {
                            let q = qs.add((row0 + r) * k + b * QK_K + 64 * $j);
                            let plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load(q)), slo);
                            let phi =
                                _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load(q.add(32))), shi);
                            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(plo, phi));
                        }
                    }
                    for r in 0..R {
                        let at = (row0 + r) * nsb + b;
                        let d = _mm256_set1_ps(dw * *ad.add(at));
                        acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r]), acc[r]);
                    }
                }
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = hsum_f32(acc[r]) - summ[r];
            }
            out
        }
    };
}

k4_kernel!(q4k_row, 144, |blk, j| {
    let bytes = load(blk.add(16 + 32 * j).cast());
    let m4 = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(bytes, m4),
        _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4),
    )
});

k4_kernel!(q5k_row, 176, |blk, j| {
    let bytes = load(blk.add(48 + 32 * j).cast());
    let high = load(blk.add(16).cast());
    let m4 = _mm256_set1_epi8(0x0F);
    let sixteen = _mm256_set1_epi8(16);
    // Bit 2j of qh[l] is the fifth bit of low-half element l, bit 2j + 1 of the high half.
    let bit = |n: usize| {
        let mask = _mm256_set1_epi8((1u8 << n) as i8);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(high, mask), mask);
        _mm256_and_si256(set, sixteen)
    };
    (
        _mm256_or_si256(_mm256_and_si256(bytes, m4), bit(2 * j)),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4),
            bit(2 * j + 1),
        ),
    )
});

/// Byte shuffles that spread Q6_K scales `2g` (first 8 bytes) and `2g + 1` (last 8).
const Q6K_SCALE_SHUFFLE: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut g = 0;
    while g < 8 {
        let mut i = 0;
        while i < 16 {
            t[g][i] = (2 * g + i / 8) as u8;
            i += 1;
        }
        g += 1;
    }
    t
};

/// Q6_K: `d * sum(scale * (q - 32) . a)`, the `- 32` applied through the activation sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_row<const R: usize>(w: &[u8], a: &Q8KActs<'_>, row0: usize) -> [f32; R] {
    let k = a.k;
    let nsb = k / QK_K;
    debug_assert!(w.len() >= nsb * 210);
    debug_assert!(a.qs.len() >= (row0 + R) * k && a.d.len() >= (row0 + R) * nsb);
    let mut acc = [_mm256_setzero_ps(); R];
    unsafe {
        let (qs, ad, bsums) = (a.qs.as_ptr(), a.d.as_ptr(), a.bsums.as_ptr());
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        for b in 0..nsb {
            let blk = w.as_ptr().add(b * 210);
            let dw = f16_at(blk.add(208));
            let scales = _mm_loadu_si128(blk.add(192).cast());
            let all_scales = _mm256_cvtepi8_epi16(scales);
            let group_scales = |g: usize| {
                let shuffle = _mm_loadu_si128(Q6K_SCALE_SHUFFLE[g].as_ptr().cast());
                _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuffle))
            };
            let mut sumi = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let at = (row0 + r) * nsb + b;
                let bs = _mm256_loadu_si256(bsums.add(at * 16).cast());
                let offset = _mm256_slli_epi32(_mm256_madd_epi16(bs, all_scales), 5);
                sumi[r] = _mm256_sub_epi32(sumi[r], offset);
            }
            for h in 0..2 {
                let ql0 = load(blk.add(64 * h).cast());
                let ql1 = load(blk.add(64 * h + 32).cast());
                let qh = load(blk.add(128 + 32 * h).cast());
                for pair in 0..2 {
                    // Quants 32t..32t+32 of this half for t = 2 * pair and 2 * pair + 1.
                    let (q0, q1) = if pair == 0 {
                        (
                            _mm256_or_si256(
                                _mm256_and_si256(ql0, m4),
                                _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(ql1, m4),
                                _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                            ),
                        )
                    } else {
                        (
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                _mm256_and_si256(qh, m30),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                            ),
                        )
                    };
                    let s0 = group_scales(4 * h + 2 * pair);
                    let s1 = group_scales(4 * h + 2 * pair + 1);
                    for r in 0..R {
                        let q = qs.add((row0 + r) * k + b * QK_K + 128 * h + 64 * pair);
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, load(q)), s0);
                        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, load(q.add(32))), s1);
                        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p0, p1));
                    }
                }
            }
            for r in 0..R {
                let at = (row0 + r) * nsb + b;
                let d = _mm256_set1_ps(dw * *ad.add(at));
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r]), acc[r]);
            }
        }
    }
    finish(acc, [0.0; R])
}

/// Kernels that take one weight row at a time, for `RW` rows in turn.
macro_rules! row_by_row {
    ($($name:ident = $row:ident, $acts:ident, $row_bytes:expr;)*) => {$(
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) unsafe fn $name<const RW: usize, const R: usize>(
            w: &[u8],
            a: &$acts<'_>,
            row0: usize,
        ) -> [[f32; R]; RW] {
            let rb = $row_bytes(a.k);
            let mut out = [[0f32; R]; RW];
            for (wr, out) in out.iter_mut().enumerate() {
                *out = unsafe { $row::<R>(&w[wr * rb..(wr + 1) * rb], a, row0) };
            }
            out
        }
    )*};
}

row_by_row! {
    f32w = f32w_row, F32Acts, |k| k * 4;
    f16w = f16w_row, F32Acts, |k| k * 2;
    q4k = q4k_row, Q8KActs, |k| k / QK_K * 144;
    q5k = q5k_row, Q8KActs, |k| k / QK_K * 176;
    q6k = q6k_row, Q8KActs, |k| k / QK_K * 210;
}

/// `acts::quantize_q8_row`, 32 values at a time; bit-identical to the scalar code.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8_row(x: &[f32], qs: &mut [Lane], d: &mut [f32], s: &mut [f32]) {
    let nb = x.len() / QK8;
    debug_assert!(qs.len() >= nb && d.len() >= nb && s.len() >= nb);
    let abs_mask = _mm256_set1_ps(-0.0);
    for b in 0..nb {
        unsafe {
            let p = x.as_ptr().add(b * QK8);
            let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(p.add(o)));
            let mut amax = _mm256_andnot_ps(abs_mask, v[0]);
            for vi in &v[1..] {
                amax = _mm256_max_ps(amax, _mm256_andnot_ps(abs_mask, *vi));
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
            let dd = amax / 127.0;
            let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            let i = v.map(|v| {
                _mm256_cvtps_epi32(_mm256_round_ps::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(_mm256_mul_ps(v, id)))
            });
            let sum = hsum_i32(_mm256_add_epi32(
                _mm256_add_epi32(i[0], i[1]),
                _mm256_add_epi32(i[2], i[3]),
            ));
            store_i8x32(&mut qs[b], i);
            d[b] = f16_round(dd);
            s[b] = f16_round(dd * sum as f32);
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_round(v: f32) -> f32 {
    let h = _mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_set_ss(v));
    _mm_cvtss_f32(_mm_cvtph_ps(h))
}

/// Saturate 32 i32 (four vectors in element order) to i8 and store them in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_i8x32(lane: &mut Lane, i: [__m256i; 4]) {
    let a = _mm256_packs_epi32(i[0], i[1]);
    let b = _mm256_packs_epi32(i[2], i[3]);
    let packed = _mm256_packs_epi16(a, b);
    // The packs work within 128-bit halves; put the 4-byte groups back in order.
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `Lane` is 32 bytes on a 32-byte boundary.
    unsafe { _mm256_store_si256(lane.0.as_mut_ptr().cast(), ordered) };
}

/// `acts::quantize_q8k_row` vectorised; bit-identical to the scalar code.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8k_row(
    x: &[f32],
    qs: &mut [Lane],
    d: &mut [f32],
    bsums: &mut [i16],
) {
    let nsb = x.len() / QK_K;
    debug_assert!(qs.len() >= nsb * 8 && d.len() >= nsb && bsums.len() >= nsb * 16);
    let abs_mask = _mm256_set1_ps(-0.0);
    for b in 0..nsb {
        let x = &x[b * QK_K..][..QK_K];
        let lanes = &mut qs[b * 8..][..8];
        let sums = &mut bsums[b * 16..][..16];
        unsafe {
            let p = x.as_ptr();
            let mut vmax = _mm256_setzero_ps();
            for o in (0..QK_K).step_by(8) {
                vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(abs_mask, _mm256_loadu_ps(p.add(o))));
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
            if amax == 0.0 {
                lanes.fill(Lane::default());
                sums.fill(0);
                d[b] = 0.0;
                continue;
            }
            // The first value of largest magnitude, as the scalar scan keeps.
            let max = *x.iter().find(|v| v.abs() == amax).unwrap_or(&amax);
            let iscale = -127.0 / max;
            let vscale = _mm256_set1_ps(iscale);
            let top = _mm256_set1_epi32(127);
            for (c, lane) in lanes.iter_mut().enumerate() {
                let i = [0, 8, 16, 24].map(|o| {
                    let v = _mm256_mul_ps(vscale, _mm256_loadu_ps(p.add(32 * c + o)));
                    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                    _mm256_min_epi32(_mm256_cvtps_epi32(r), top)
                });
                sums[2 * c] = hsum_i32(_mm256_add_epi32(i[0], i[1])) as i16;
                sums[2 * c + 1] = hsum_i32(_mm256_add_epi32(i[2], i[3])) as i16;
                store_i8x32(lane, i);
            }
            d[b] = 1.0 / iscale;
        }
    }
}
