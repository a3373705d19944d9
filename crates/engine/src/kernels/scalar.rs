//! Portable reference kernels: plain loops over ggml's block layouts. They are the oracle
//! the SIMD kernels are tested against and what runs where no SIMD kernel exists. Each
//! block's dot product is an exact integer sum, as in ggml.

use half::f16;

use super::QuantType;
use super::acts::{F32Acts, Q8Acts, Q8KActs, QK_K, QK8};

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit scales and mins of the 8 sub-blocks of a Q4_K/Q5_K super-block, from its 12
/// packed bytes (ggml's `get_scale_min_k4`).
pub(crate) fn k4_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0; 8];
    let mut mins = [0; 8];
    for j in 0..8 {
        if j < 4 {
            scales[j] = s[j] & 63;
            mins[j] = s[j + 4] & 63;
        } else {
            scales[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            mins[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (scales, mins)
}

fn f32w_row<const R: usize>(w: &[u8], a: &F32Acts<'_>, row0: usize) -> [f32; R] {
    std::array::from_fn(|r| {
        let x = &a.x[(row0 + r) * a.k..][..a.k];
        w.chunks_exact(4)
            .zip(x)
            .map(|(w, &x)| f32::from_le_bytes([w[0], w[1], w[2], w[3]]) * x)
            .sum()
    })
}

fn f16w_row<const R: usize>(w: &[u8], a: &F32Acts<'_>, row0: usize) -> [f32; R] {
    std::array::from_fn(|r| {
        let x = &a.x[(row0 + r) * a.k..][..a.k];
        w.chunks_exact(2)
            .zip(x)
            .map(|(w, &x)| f16::from_le_bytes([w[0], w[1]]).to_f32() * x)
            .sum()
    })
}

/// Sum over the 32-blocks of one row: `block(weight block, quants, act scale, act sum)`.
fn q8_row(
    w: &[u8],
    block_bytes: usize,
    a: &Q8Acts<'_>,
    row: usize,
    block: impl Fn(&[u8], &[i8], f32, f32) -> f32,
) -> f32 {
    let nb = a.k / QK8;
    w.chunks_exact(block_bytes)
        .take(nb)
        .enumerate()
        .map(|(b, blk)| {
            let q = &a.qs[row * a.k + b * QK8..][..QK8];
            block(blk, q, a.d[row * nb + b], a.s[row * nb + b])
        })
        .sum()
}

fn q4_0_row<const R: usize>(w: &[u8], a: &Q8Acts<'_>, row0: usize) -> [f32; R] {
    std::array::from_fn(|r| {
        q8_row(w, 18, a, row0 + r, |blk, q, d, _| {
            let mut sumi = 0i32;
            for j in 0..16 {
                sumi += ((blk[2 + j] & 15) as i32 - 8) * q[j] as i32;
                sumi += ((blk[2 + j] >> 4) as i32 - 8) * q[j + 16] as i32;
            }
            sumi as f32 * (f16_at(blk, 0) * d)
        })
    })
}

fn q4_1_row<const R: usize>(w: &[u8], a: &Q8Acts<'_>, row0: usize) -> [f32; R] {
    std::array::from_fn(|r| {
        q8_row(w, 20, a, row0 + r, |blk, q, d, s| {
            let mut sumi = 0i32;
            for j in 0..16 {
                sumi += (blk[4 + j] & 15) as i32 * q[j] as i32;
                sumi += (blk[4 + j] >> 4) as i32 * q[j + 16] as i32;
            }
            sumi as f32 * (f16_at(blk, 0) * d) + f16_at(blk, 2) * s
        })
    })
}

/// The fifth bit of each of the 32 weights of a Q5_0/Q5_1 block, at `bit << 4`.
fn q5_high(qh: &[u8]) -> impl Fn(usize) -> u8 {
    let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    move |e| (((bits >> e) & 1) << 4) as u8
}

fn q5_0_row<const R: usize>(w: &[u8], a: &Q8Acts<'_>, row0: usize) -> [f32; R] {
    std::array::from_fn(|r| {
        q8_row(w, 22, a, row0 + r, |blk, q, d, _| {
            let high = q5_high(&blk[2..6]);
            let mut sumi = 0i32;
            for j in 0..16 {
                sumi += (((blk[6 + j] & 15) | high(j)) as i32 - 16) * q[j] as i32;
                sumi += (((blk[6 + j] >> 4) | high(j + 16)) as i32 - 16) * q[j + 16] as i32;
            }
            sumi as f32 * (f16_at(blk, 0) * d)
        })
    })
}

fn q5_1_row<const R: usize>(w: &[u8], a: &Q8Acts<'_>, row0: usize) -> [f32; R] {
    std::array::from_fn(|r| {
        q8_row(w, 24, a, row0 + r, |blk, q, d, s| {
            let high = q5_high(&blk[4..8]);
            let mut sumi = 0i32;
            for j in 0..16 {
                sumi += ((blk[8 + j] & 15) | high(j)) as i32 * q[j] as i32;
                sumi += ((blk[8 + j] >> 4) | high(j + 16)) as i32 * q[j + 16] as i32;
            }
            sumi as f32 * (f16_at(blk, 0) * d) + f16_at(blk, 2) * s
        })
    })
}

fn q8_0_row<const R: usize>(w: &[u8], a: &Q8Acts<'_>, row0: usize) -> [f32; R] {
    std::array::from_fn(|r| {
        q8_row(w, 34, a, row0 + r, |blk, q, d, _| {
            let sumi: i32 = (0..32).map(|j| blk[2 + j] as i8 as i32 * q[j] as i32).sum();
            sumi as f32 * (f16_at(blk, 0) * d)
        })
    })
}

/// Sum over the super-blocks of one row: `block(weight block, quants, act scale, bsums)`.
fn q8k_row(
    w: &[u8],
    block_bytes: usize,
    a: &Q8KActs<'_>,
    row: usize,
    block: impl Fn(&[u8], &[i8], f32, &[i16]) -> f32,
) -> f32 {
    let nsb = a.k / QK_K;
    w.chunks_exact(block_bytes)
        .take(nsb)
        .enumerate()
        .map(|(b, blk)| {
            let q = &a.qs[row * a.k + b * QK_K..][..QK_K];
            let bsums = &a.bsums[(row * nsb + b) * 16..][..16];
            block(blk, q, a.d[row * nsb + b], bsums)
        })
        .sum()
}

/// Q4_K and Q5_K: `d * sum(scale * q . a) - dmin * sum(min * a)`, with `q(j, l, high)` the
/// unsigned quant of element `l` of the low or high half of 64-chunk `j`.
fn k4_block(
    blk: &[u8],
    q: &[i8],
    da: f32,
    bsums: &[i16],
    quant: impl Fn(usize, usize, bool) -> i32,
) -> f32 {
    let (scales, mins) = k4_scales(&blk[4..16]);
    let mut sumi = 0i32;
    for j in 0..4 {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            lo += quant(j, l, false) * q[64 * j + l] as i32;
            hi += quant(j, l, true) * q[64 * j + 32 + l] as i32;
        }
        sumi += scales[2 * j] as i32 * lo + scales[2 * j + 1] as i32 * hi;
    }
    let summ: i32 = (0..8)
        .map(|j| mins[j] as i32 * (bsums[2 * j] as i32 + bsums[2 * j + 1] as i32))
        .sum();
    (f16_at(blk, 0) * da) * sumi as f32 - (f16_at(blk, 2) * da) * summ as f32
}

fn q4k_row<const R: usize>(w: &[u8], a: &Q8KActs<'_>, row0: usize) -> [f32; R] {
    std::array::from_fn(|r| {
        q8k_row(w, 144, a, row0 + r, |blk, q, da, bsums| {
            let qs = &blk[16..144];
            k4_block(blk, q, da, bsums, |j, l, high| {
                let byte = qs[32 * j + l];
                (if high { byte >> 4 } else { byte & 15 }) as i32
            })
        })
    })
}

fn q5k_row<const R: usize>(w: &[u8], a: &Q8KActs<'_>, row0: usize) -> [f32; R] {
    std::array::from_fn(|r| {
        q8k_row(w, 176, a, row0 + r, |blk, q, da, bsums| {
            let (qh, qs) = (&blk[16..48], &blk[48..176]);
            k4_block(blk, q, da, bsums, |j, l, high| {
                let byte = qs[32 * j + l];
                let low4 = if high { byte >> 4 } else { byte & 15 };
                let bit = (qh[l] >> (2 * j + high as usize)) & 1;
                (low4 | bit << 4) as i32
            })
        })
    })
}

/// Element `128 * h + 32 * t + l` of a Q6_K super-block, in 0..64 (ggml subtracts 32).
pub(crate) fn q6k_quant(blk: &[u8], h: usize, t: usize, l: usize) -> i32 {
    let ql = blk[64 * h + 32 * (t % 2) + l];
    let low4 = if t < 2 { ql & 15 } else { ql >> 4 };
    let high2 = (blk[128 + 32 * h + l] >> (2 * t)) & 3;
    (low4 | high2 << 4) as i32
}

fn q6k_row<const R: usize>(w: &[u8], a: &Q8KActs<'_>, row0: usize) -> [f32; R] {
    std::array::from_fn(|r| {
        q8k_row(w, 210, a, row0 + r, |blk, q, da, _| {
            let mut sumi = 0i32;
            for h in 0..2 {
                for t in 0..4 {
                    for l in 0..32 {
                        let scale = blk[192 + 8 * h + 2 * t + l / 16] as i8 as i32;
                        let e = 128 * h + 32 * t + l;
                        sumi += scale * (q6k_quant(blk, h, t, l) - 32) * q[e] as i32;
                    }
                }
            }
            (f16_at(blk, 208) * da) * sumi as f32
        })
    })
}

/// Kernels for `RW` consecutive weight rows, one after the other.
macro_rules! row_by_row {
    ($($name:ident = $row:ident, $acts:ident, $qtype:expr;)*) => {$(
        pub(crate) fn $name<const RW: usize, const R: usize>(
            w: &[u8],
            a: &$acts<'_>,
            row0: usize,
        ) -> [[f32; R]; RW] {
            let rb = $qtype.row_bytes(a.k);
            std::array::from_fn(|wr| $row::<R>(&w[wr * rb..(wr + 1) * rb], a, row0))
        }
    )*};
}

row_by_row! {
    f32w = f32w_row, F32Acts, QuantType::F32;
    f16w = f16w_row, F32Acts, QuantType::F16;
    q4_0 = q4_0_row, Q8Acts, QuantType::Q4_0;
    q4_1 = q4_1_row, Q8Acts, QuantType::Q4_1;
    q5_0 = q5_0_row, Q8Acts, QuantType::Q5_0;
    q5_1 = q5_1_row, Q8Acts, QuantType::Q5_1;
    q8_0 = q8_0_row, Q8Acts, QuantType::Q8_0;
    q4k = q4k_row, Q8KActs, QuantType::Q4K;
    q5k = q5k_row, Q8KActs, QuantType::Q5K;
    q6k = q6k_row, Q8KActs, QuantType::Q6K;
}

/// One row of `qtype` blocks (`w`) into floats (`out`, a whole number of blocks).
pub(crate) fn dequantize(qtype: QuantType, w: &[u8], out: &mut [f32]) {
    let blocks = w.chunks_exact(qtype.block_bytes());
    let outs = out.chunks_exact_mut(qtype.block_len());
    for (blk, y) in blocks.zip(outs) {
        match qtype {
            QuantType::F32 => y[0] = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]),
            QuantType::F16 => y[0] = f16_at(blk, 0),
            QuantType::Q4_0 => {
                let d = f16_at(blk, 0);
                for j in 0..16 {
                    y[j] = ((blk[2 + j] & 15) as i32 - 8) as f32 * d;
                    y[j + 16] = ((blk[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
            QuantType::Q4_1 => {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                for j in 0..16 {
                    y[j] = (blk[4 + j] & 15) as f32 * d + m;
                    y[j + 16] = (blk[4 + j] >> 4) as f32 * d + m;
                }
            }
            QuantType::Q5_0 => {
                let (d, high) = (f16_at(blk, 0), q5_high(&blk[2..6]));
                for j in 0..16 {
                    y[j] = (((blk[6 + j] & 15) | high(j)) as i32 - 16) as f32 * d;
                    y[j + 16] = (((blk[6 + j] >> 4) | high(j + 16)) as i32 - 16) as f32 * d;
                }
            }
            QuantType::Q5_1 => {
                let (d, m, high) = (f16_at(blk, 0), f16_at(blk, 2), q5_high(&blk[4..8]));
                for j in 0..16 {
                    y[j] = ((blk[8 + j] & 15) | high(j)) as f32 * d + m;
                    y[j + 16] = ((blk[8 + j] >> 4) | high(j + 16)) as f32 * d + m;
                }
            }
            QuantType::Q8_0 => {
                let d = f16_at(blk, 0);
                for j in 0..32 {
                    y[j] = blk[2 + j] as i8 as f32 * d;
                }
            }
            QuantType::Q4K | QuantType::Q5K => {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (scales, mins) = k4_scales(&blk[4..16]);
                let five = qtype == QuantType::Q5K;
                let (qh, qs) = if five {
                    (&blk[16..48], &blk[48..176])
                } else {
                    (&blk[16..16], &blk[16..144])
                };
                for j in 0..4 {
                    for (half, shift) in [(0, 0), (1, 4)] {
                        let sb = 2 * j + half;
                        let (scale, min) = (d * scales[sb] as f32, dmin * mins[sb] as f32);
                        for l in 0..32 {
                            let mut q = (qs[32 * j + l] >> shift) & 15;
                            if five {
                                q |= ((qh[l] >> sb) & 1) << 4;
                            }
                            y[64 * j + 32 * half + l] = scale * q as f32 - min;
                        }
                    }
                }
            }
            QuantType::Q6K => {
                let d = f16_at(blk, 208);
                for h in 0..2 {
                    for t in 0..4 {
                        for l in 0..32 {
                            let scale = blk[192 + 8 * h + 2 * t + l / 16] as i8 as f32;
                            let q = q6k_quant(blk, h, t, l) - 32;
                            y[128 * h + 32 * t + l] = d * scale * q as f32;
                        }
                    }
                }
            }
        }
    }
}
