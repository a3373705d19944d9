//! The storage types of the KV cache's rows: how keys and values are written (quantized)
//! into the cache and widened back to f32 by attention.
//!
//! - f16: as llama.cpp stores them by default.
//! - q8_0: ggml's `block_q8_0` split in two arrays: per 32 values one f16 scale `d` and 32
//!   signed bytes, value = `d * q` (8.5 bits a value, 0.53x f16).
//! - q4_0: ggml's `block_q4_0`: per 32 values one f16 scale and 16 bytes, value `j` in the
//!   low nibble of byte `j`, value `j + 16` in its high nibble, value = `d * (q - 8)`
//!   (4.5 bits a value).
//!
//! Quantizing rounds as ggml's reference quantizers do. A quantized row is always a whole
//! number of 32-blocks: attention reads one KV head at a time, so the head size must be a
//! multiple of [`QK`].
//!
//! Quantized keys and values are stored rotated: each head goes through the normalised
//! Walsh-Hadamard transform ([`rotate`]) before it is quantized; attention rotates the
//! queries the same way and its outputs back (the transform is its own inverse). Being
//! orthogonal it leaves scores and weighted sums unchanged, but it spreads the few huge
//! channels some models put in their keys over the whole head: quantized as they come, one
//! such channel sets the scale of its 32-block and the other 31 keep almost no bits. Layers
//! whose keys are dominated by a large offset (Qwen2's key bias in its first layers) store
//! their keys less that offset (`key_offset`; f16 where it cannot be taken out,
//! `kv::KvLayout::f16_key_layers`). Measured on Qwen2.5-Coder-0.5B, teacher-forced against
//! llama.cpp, mean / max |Δ logprob|: f16 0.051 / 0.40; q8_0 as it comes 0.18 / 2.6;
//! rotated 0.13 / 4.5; rotated with the offset layers' keys in f16 0.056 / 0.56; rotated
//! with the offset taken out 0.0545 / 0.567.

use half::f16;

/// Values per block of the quantized types.
pub const QK: usize = 32;

/// One contiguous run of cached values (keys or values of some positions), in its storage
/// type. Offsets and lengths of quantized rows are in values, whole blocks.
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    F16(&'a [f16]),
    Q8_0 {
        quants: &'a [i8],
        scales: &'a [f16],
    },
    Q4_0 {
        /// 16 bytes per block.
        quants: &'a [u8],
        scales: &'a [f16],
    },
}

impl KvRows<'_> {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            KvRows::F16(x) => x.len(),
            KvRows::Q8_0 { quants, .. } => quants.len(),
            KvRows::Q4_0 { quants, .. } => quants.len() * 2,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `at..at + dst.len()` as f32. Quantized rows: `at` and the length are whole
    /// blocks.
    pub fn widen(&self, at: usize, dst: &mut [f32]) {
        match *self {
            KvRows::F16(x) => {
                use half::slice::HalfFloatSliceExt;
                x[at..at + dst.len()].convert_to_f32_slice(dst);
            }
            KvRows::Q8_0 { quants, scales } => {
                debug_assert!(at.is_multiple_of(QK) && dst.len().is_multiple_of(QK));
                let (b0, nb) = (at / QK, dst.len() / QK);
                let (q, d) = (&quants[at..at + dst.len()], &scales[b0..b0 + nb]);
                #[cfg(target_arch = "x86_64")]
                if super::isa() == super::Isa::Avx512Vnni {
                    // SAFETY: the CPU has AVX-512 (checked by `isa`).
                    return unsafe { avx512::widen_q8_0(q, d, dst) };
                }
                widen_q8_0(q, d, dst);
            }
            KvRows::Q4_0 { quants, scales } => {
                debug_assert!(at.is_multiple_of(QK) && dst.len().is_multiple_of(QK));
                let (b0, nb) = (at / QK, dst.len() / QK);
                let q = &quants[at / 2..(at + dst.len()) / 2];
                widen_q4_0(q, &scales[b0..b0 + nb], dst);
            }
        }
    }
}

/// Values per rotation of a head of `head_dim` values: the largest power of two that
/// divides it (the whole head for 64, 128, 256).
pub fn rotation_group(head_dim: usize) -> usize {
    1 << head_dim.trailing_zeros()
}

/// Each group of [`rotation_group`]`(x.len())` values times the normalised Hadamard matrix
/// (its own inverse). The fast transform: `log2(n)` passes of sums and differences.
pub fn rotate(x: &mut [f32]) {
    let n = rotation_group(x.len());
    #[cfg(target_arch = "x86_64")]
    if n >= 16 && super::isa() == super::Isa::Avx512Vnni {
        // SAFETY: the CPU has AVX-512 (checked by `isa`).
        return unsafe { avx512::rotate(x, n) };
    }
    rotate_portable(x, n);
}

/// [`rotate`] in plain Rust: the reference the SIMD version matches bit for bit.
fn rotate_portable(x: &mut [f32], n: usize) {
    let norm = 1.0 / (n as f32).sqrt();
    for group in x.chunks_exact_mut(n) {
        let mut h = 1;
        while h < n {
            for pair in group.chunks_exact_mut(2 * h) {
                let (a, b) = pair.split_at_mut(h);
                for (a, b) in a.iter_mut().zip(b) {
                    (*a, *b) = (*a + *b, *a - *b);
                }
            }
            h *= 2;
        }
        group.iter_mut().for_each(|v| *v *= norm);
    }
}

/// Portable q8_0 widening: `dst[j] = d * q[j]` per block (exact in f32).
fn widen_q8_0(quants: &[i8], scales: &[f16], dst: &mut [f32]) {
    for ((q, &d), out) in quants
        .chunks_exact(QK)
        .zip(scales)
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = d.to_f32();
        for (o, &x) in out.iter_mut().zip(q) {
            *o = d * f32::from(x);
        }
    }
}

fn widen_q4_0(quants: &[u8], scales: &[f16], dst: &mut [f32]) {
    for ((q, &d), out) in quants
        .chunks_exact(QK / 2)
        .zip(scales)
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = d.to_f32();
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((l, h), &b) in lo.iter_mut().zip(hi).zip(q) {
            *l = d * (f32::from(b & 0x0f) - 8.0);
            *h = d * (f32::from(b >> 4) - 8.0);
        }
    }
}

/// `src` (whole blocks) into q8_0, as ggml's `quantize_row_q8_0_ref` but for one rounding:
/// `d = max|x| / 127` stored as f16, `q = round(x / d)` with that stored `d`.
pub fn quantize_q8_0(src: &[f32], quants: &mut [i8], scales: &mut [f16]) {
    for ((x, q), d_out) in src
        .chunks_exact(QK)
        .zip(quants.chunks_exact_mut(QK))
        .zip(scales.iter_mut())
    {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        // Quantize against the scale as stored, so that `d * q` is the nearest value
        // (`as` saturates where the rounded scale is a little under amax / 127).
        *d_out = f16::from_f32(amax / 127.0);
        let d = d_out.to_f32();
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
    }
}

/// `src` (whole blocks) into q4_0, as ggml's `quantize_row_q4_0_ref`: the value of largest
/// magnitude maps to -8, `d = max / -8`, `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_q4_0(src: &[f32], quants: &mut [u8], scales: &mut [f16]) {
    for ((x, q), d_out) in src
        .chunks_exact(QK)
        .zip(quants.chunks_exact_mut(QK / 2))
        .zip(scales.iter_mut())
    {
        let max = x
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        *d_out = f16::from_f32(d);
        let nibble = |v: f32| ((v * id + 8.5) as u8).min(15);
        for (j, q) in q.iter_mut().enumerate() {
            *q = nibble(x[j]) | (nibble(x[j + QK / 2]) << 4);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::QK;

    /// `super::rotate_portable` for groups of `n` (a power of two >= 16), with the same sums
    /// and differences in the same order: passes over whole vectors while the halves are 16
    /// lanes or more apart, then within each vector through a permutation (`x + p` on the
    /// lower lanes of each pair, `p - x` on the upper ones: `a + b` and `a - b` as before).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rotate(x: &mut [f32], n: usize) {
        debug_assert!(n >= 16 && n.is_power_of_two() && x.len().is_multiple_of(n));
        /// Per pass within a vector (halves 1, 2, 4, 8 lanes apart): each lane's partner.
        const PARTNER: [[i32; 16]; 4] = {
            let mut t = [[0; 16]; 4];
            let mut s = 0;
            while s < 4 {
                let mut i = 0;
                while i < 16 {
                    t[s][i] = i as i32 ^ (1 << s);
                    i += 1;
                }
                s += 1;
            }
            t
        };
        /// The upper lane of each pair, per pass.
        const UPPER: [u16; 4] = [0xAAAA, 0xCCCC, 0xF0F0, 0xFF00];
        let norm = _mm512_set1_ps(1.0 / (n as f32).sqrt());
        // SAFETY: 16 i32 read from each 16-element row.
        let inner: [(__m512i, __mmask16); 4] = std::array::from_fn(|s| {
            (
                unsafe { _mm512_loadu_si512(PARTNER[s].as_ptr().cast()) },
                UPPER[s],
            )
        });
        for group in x.chunks_exact_mut(n) {
            let p = group.as_mut_ptr();
            // SAFETY: every offset below is inside the group of `n` floats.
            unsafe {
                for (idx, upper) in inner {
                    for v in (0..n).step_by(16) {
                        let a = _mm512_loadu_ps(p.add(v));
                        let b = _mm512_permutexvar_ps(idx, a);
                        let sum = _mm512_add_ps(a, b);
                        _mm512_storeu_ps(p.add(v), _mm512_mask_sub_ps(sum, upper, b, a));
                    }
                }
                let mut h = 16;
                while h < n {
                    for base in (0..n).step_by(2 * h) {
                        for v in (base..base + h).step_by(16) {
                            let a = _mm512_loadu_ps(p.add(v));
                            let b = _mm512_loadu_ps(p.add(v + h));
                            _mm512_storeu_ps(p.add(v), _mm512_add_ps(a, b));
                            _mm512_storeu_ps(p.add(v + h), _mm512_sub_ps(a, b));
                        }
                    }
                    h *= 2;
                }
                for v in (0..n).step_by(16) {
                    _mm512_storeu_ps(p.add(v), _mm512_mul_ps(_mm512_loadu_ps(p.add(v)), norm));
                }
            }
        }
    }

    /// `super::widen_q8_0`: 16 bytes sign-extended to 16 floats, times the block's scale.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn widen_q8_0(quants: &[i8], scales: &[f16], dst: &mut [f32]) {
        debug_assert!(quants.len() == dst.len() && quants.len() == scales.len() * QK);
        for (b, &d) in scales.iter().enumerate() {
            let d = _mm512_set1_ps(d.to_f32());
            for half in 0..2 {
                let at = b * QK + half * 16;
                // SAFETY: `at + 16 <= quants.len() == dst.len()`.
                unsafe {
                    let q = _mm_loadu_si128(quants.as_ptr().add(at).cast());
                    let x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                    _mm512_storeu_ps(dst.as_mut_ptr().add(at), _mm512_mul_ps(d, x));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 250.0 - 2.0) * (1.0 + (i / QK) as f32))
            .collect()
    }

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        let x = sample(4 * QK);
        let (mut q, mut d) = (vec![0i8; x.len()], vec![f16::ZERO; x.len() / QK]);
        quantize_q8_0(&x, &mut q, &mut d);
        let rows = KvRows::Q8_0 {
            quants: &q,
            scales: &d,
        };
        let mut back = vec![0f32; x.len()];
        rows.widen(0, &mut back);
        for (b, block) in x.chunks(QK).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = amax / 127.0;
            for (j, &v) in block.iter().enumerate() {
                let got = back[b * QK + j];
                // Half a step, plus the f16 rounding of the scale (2^-11 relative).
                assert!(
                    (got - v).abs() <= 0.5 * step + amax * 1e-3,
                    "block {b} value {j}: {got} for {v}"
                );
            }
        }
        // A block of zeros stays zeros; an offset read gives the same values.
        let mut part = vec![0f32; QK];
        rows.widen(2 * QK, &mut part);
        assert_eq!(part, back[2 * QK..3 * QK]);
    }

    #[test]
    fn simd_rotation_matches_the_portable_one_bit_for_bit() {
        for n in [16, 32, 64, 128, 256, 96, 80] {
            let x: Vec<f32> = (0..n * 3)
                .map(|i| ((i * 2654435761usize) % 1000) as f32 / 37.0 - 13.0)
                .collect();
            let (mut a, mut b) = (x.clone(), x.clone());
            rotate(&mut a);
            rotate_portable(&mut b, rotation_group(n * 3));
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "n = {n}"
            );
        }
    }

    #[test]
    fn rotation_is_orthogonal_and_its_own_inverse() {
        assert_eq!(
            (rotation_group(64), rotation_group(128), rotation_group(96)),
            (64, 128, 32)
        );
        let x = sample(128);
        let mut y = x.clone();
        rotate(&mut y);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm(&x) - norm(&y)).abs() <= 1e-4 * norm(&x));
        // One spike spreads evenly over the group.
        let mut spike = vec![0f32; 64];
        spike[5] = 8.0;
        rotate(&mut spike);
        assert!(
            spike.iter().all(|v| (v.abs() - 1.0).abs() < 1e-6),
            "{spike:?}"
        );
        rotate(&mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn q8_0_simd_widening_matches_portable() {
        let x = sample(8 * QK);
        let (mut q, mut d) = (vec![0i8; x.len()], vec![f16::ZERO; x.len() / QK]);
        quantize_q8_0(&x, &mut q, &mut d);
        let mut portable = vec![0f32; x.len()];
        widen_q8_0(&q, &d, &mut portable);
        let mut dispatched = vec![0f32; x.len()];
        KvRows::Q8_0 {
            quants: &q,
            scales: &d,
        }
        .widen(0, &mut dispatched);
        assert_eq!(portable, dispatched);
    }

    #[test]
    fn q4_0_round_trips_within_a_step_or_its_clip() {
        let x = sample(4 * QK);
        let (mut q, mut d) = (vec![0u8; x.len() / 2], vec![f16::ZERO; x.len() / QK]);
        quantize_q4_0(&x, &mut q, &mut d);
        let mut back = vec![0f32; x.len()];
        KvRows::Q4_0 {
            quants: &q,
            scales: &d,
        }
        .widen(0, &mut back);
        for (b, block) in x.chunks(QK).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = amax / 8.0;
            for (j, &v) in block.iter().enumerate() {
                let got = back[b * QK + j];
                // The largest magnitude maps to -8: the other sign clips at 7 steps.
                assert!(
                    (got - v).abs() <= step + amax * 1e-3,
                    "block {b} value {j}: {got} for {v}"
                );
            }
        }
    }
}
