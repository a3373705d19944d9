//! Activations quantized as ggml's CPU backend quantizes them before a dot product with
//! quantized weights, kept in reusable buffers laid out for the kernels (scales apart from
//! the 32-byte-aligned quants).
//!
//! Rounding follows what llama.cpp runs on x86 (AVX2 `quantize_row_q8_0`/`q8_1`: scale
//! `127 / amax`, ties to even) rather than the portable `*_ref` functions (`1 / d`, ties away
//! from zero); the two differ only on exact ties and one-ulp scale differences. Q8_K is
//! `quantize_row_q8_K_ref`, which x86 runs as is.

use half::f16;
use rayon::prelude::*;

use super::Isa;

/// Weights per Q8_0/Q8_1 block.
pub(crate) const QK8: usize = 32;
/// Weights per K-quant super-block.
pub(crate) const QK_K: usize = 256;

/// Activations of more values than this (all rows together) are quantized in parallel.
const PAR_MIN_VALUES: usize = 64 * 1024;

/// 32 quants on a 32-byte boundary, so that rows of whole blocks load aligned.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
pub(crate) struct Lane(pub [i8; 32]);

fn lanes_as_i8(lanes: &[Lane]) -> &[i8] {
    // SAFETY: `Lane` is 32 `i8` with no padding.
    unsafe { std::slice::from_raw_parts(lanes.as_ptr().cast::<i8>(), lanes.len() * 32) }
}

/// Unquantized activations, for f32 and f16 weights: `x` holds rows of `k` values.
#[derive(Clone, Copy)]
pub(crate) struct F32Acts<'a> {
    pub x: &'a [f32],
    pub k: usize,
}

/// Rows of `k` activations as ggml Q8_1 blocks (Q8_0 is the same without `s`): block `b` of
/// row `i` has quants `qs[i*k + 32*b..][..32]`, scale `d[i*k/32 + b]` (an f16 widened) and
/// `s[..]` = f16(d * sum of its quants); `isum[..]` is that sum of quants, exact.
#[derive(Clone, Copy)]
pub(crate) struct Q8Acts<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub isum: &'a [i32],
    pub k: usize,
}

/// Rows of `k` activations as ggml Q8_K super-blocks: super-block `b` of row `i` has quants
/// `qs[i*k + 256*b..][..256]`, scale `d[i*k/256 + b]` and sums of 16 quants
/// `bsums[(i*k/256 + b)*16..][..16]`. Derived from those sums, for the packed AVX-512
/// kernels, which would otherwise redo the same scalar work for every group of 16 weight
/// rows: `pairs[(i*k/256 + b)*4 + p]`, the sums of 32 quants of sub-blocks `2p` and
/// `2p + 1` as two i16 halves (low, high) of one i32, for `vpmaddwd` against Q4_K's
/// minimums; and `offsets6[(i*k/256 + b)*16 + s]` = `-32 * bsums[..s]`, Q6_K's offset
/// applied to sub-block `s` of 16 quants.
#[derive(Clone, Copy)]
pub(crate) struct Q8KActs<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub bsums: &'a [i16],
    pub pairs: &'a [i32],
    pub offsets6: &'a [i32],
    pub k: usize,
}

#[derive(Default)]
pub(crate) struct Q8Buf {
    qs: Vec<Lane>,
    d: Vec<f32>,
    s: Vec<f32>,
    isum: Vec<i32>,
    k: usize,
}

impl Q8Buf {
    /// Quantize `m` rows of `k` values of `x`.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, isa: Isa) {
        debug_assert!(k.is_multiple_of(QK8) && x.len() == m * k);
        let nb = k / QK8;
        self.k = k;
        self.qs.resize(m * nb, Lane::default());
        self.d.resize(m * nb, 0.0);
        self.s.resize(m * nb, 0.0);
        self.isum.resize(m * nb, 0);
        if k == 0 {
            return;
        }
        if m * k >= PAR_MIN_VALUES {
            x.par_chunks(k)
                .zip(self.qs.par_chunks_mut(nb))
                .zip(self.d.par_chunks_mut(nb))
                .zip(self.s.par_chunks_mut(nb))
                .with_min_len(4)
                .for_each(|(((x, qs), d), s)| quantize_q8_row(isa, x, qs, d, s));
        } else {
            let rows = x.chunks(k).zip(self.qs.chunks_mut(nb));
            for (((x, qs), d), s) in rows.zip(self.d.chunks_mut(nb)).zip(self.s.chunks_mut(nb)) {
                quantize_q8_row(isa, x, qs, d, s);
            }
        }
        for (sum, lane) in self.isum.iter_mut().zip(&self.qs) {
            *sum = lane.0.iter().map(|&q| q as i32).sum();
        }
    }

    pub fn view(&self) -> Q8Acts<'_> {
        Q8Acts {
            qs: lanes_as_i8(&self.qs),
            d: &self.d,
            s: &self.s,
            isum: &self.isum,
            k: self.k,
        }
    }
}

#[derive(Default)]
pub(crate) struct Q8KBuf {
    qs: Vec<Lane>,
    d: Vec<f32>,
    bsums: Vec<i16>,
    pairs: Vec<i32>,
    offsets6: Vec<i32>,
    k: usize,
}

impl Q8KBuf {
    /// Quantize `m` rows of `k` values of `x`.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, isa: Isa) {
        debug_assert!(k.is_multiple_of(QK_K) && x.len() == m * k);
        let nsb = k / QK_K;
        self.k = k;
        self.qs.resize(m * k / 32, Lane::default());
        self.d.resize(m * nsb, 0.0);
        self.bsums.resize(m * nsb * 16, 0);
        if k == 0 {
            return;
        }
        if m * k >= PAR_MIN_VALUES {
            x.par_chunks(k)
                .zip(self.qs.par_chunks_mut(k / 32))
                .zip(self.d.par_chunks_mut(nsb))
                .zip(self.bsums.par_chunks_mut(nsb * 16))
                .with_min_len(4)
                .for_each(|(((x, qs), d), bsums)| quantize_q8k_row(isa, x, qs, d, bsums));
        } else {
            let rows = x.chunks(k).zip(self.qs.chunks_mut(k / 32));
            let rows = rows.zip(self.d.chunks_mut(nsb));
            for (((x, qs), d), bsums) in rows.zip(self.bsums.chunks_mut(nsb * 16)) {
                quantize_q8k_row(isa, x, qs, d, bsums);
            }
        }
        // Sums of 16 quants are at most 16 * 127 in magnitude: pairs of them fit an i16.
        self.pairs.clear();
        self.pairs.extend(self.bsums.chunks_exact(4).map(|s| {
            let (lo, hi) = (s[0] + s[1], s[2] + s[3]);
            (lo as u16 as u32 | (hi as u16 as u32) << 16) as i32
        }));
        self.offsets6.clear();
        self.offsets6
            .extend(self.bsums.iter().map(|&s| -32 * s as i32));
    }

    pub fn view(&self) -> Q8KActs<'_> {
        Q8KActs {
            qs: lanes_as_i8(&self.qs),
            d: &self.d,
            bsums: &self.bsums,
            pairs: &self.pairs,
            offsets6: &self.offsets6,
            k: self.k,
        }
    }
}

/// One row into Q8_1 blocks: quants, widened f16 scales and widened f16 scaled sums.
pub(crate) fn quantize_q8_row(isa: Isa, x: &[f32], qs: &mut [Lane], d: &mut [f32], s: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: SIMD kernels are only chosen where the CPU has AVX2, FMA and F16C.
        unsafe { super::x86::quantize_q8_row(x, qs, d, s) };
        return;
    }
    let _ = isa;
    for (((x, q), d), s) in x.chunks_exact(QK8).zip(qs).zip(d).zip(s) {
        (*d, *s) = quantize_q8_block(x, &mut q.0);
    }
}

/// One block: returns the scale and scaled sum, each rounded through f16 as ggml stores them.
pub(crate) fn quantize_q8_block(x: &[f32], q: &mut [i8; 32]) -> (f32, f32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        let r = ((v * id).round_ties_even() as i32).clamp(-128, 127);
        *q = r as i8;
        sum += r;
    }
    (
        f16::from_f32(d).to_f32(),
        f16::from_f32(d * sum as f32).to_f32(),
    )
}

/// One row into Q8_K super-blocks.
pub(crate) fn quantize_q8k_row(
    isa: Isa,
    x: &[f32],
    qs: &mut [Lane],
    d: &mut [f32],
    bsums: &mut [i16],
) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: SIMD kernels are only chosen where the CPU has AVX2, FMA and F16C.
        unsafe { super::x86::quantize_q8k_row(x, qs, d, bsums) };
        return;
    }
    let _ = isa;
    for (((x, q), d), bsums) in x
        .chunks_exact(QK_K)
        .zip(qs.chunks_exact_mut(QK_K / 32))
        .zip(d)
        .zip(bsums.chunks_exact_mut(16))
    {
        *d = quantize_q8k_block(x, q, bsums);
    }
}

/// `quantize_row_q8_K_ref` for one super-block; returns the scale.
pub(crate) fn quantize_q8k_block(x: &[f32], q: &mut [Lane], bsums: &mut [i16]) -> f32 {
    // The signed value of largest magnitude, the first one if several tie.
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(Lane::default());
        bsums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, x) in q.iter_mut().zip(x.chunks_exact(32)) {
        for (q, &v) in q.0.iter_mut().zip(x) {
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
    }
    for (j, sum) in bsums.iter_mut().enumerate() {
        let lane = &q[j / 2].0[(j % 2) * 16..][..16];
        *sum = lane.iter().map(|&v| v as i16).sum();
    }
    1.0 / iscale
}
