//! Weights repacked for the AVX-512 kernels: 16 rows interleaved block by block, so that
//! one 512-bit vector holds the same 4 columns of 16 rows and `vpdpbusd` against 4
//! broadcast activation bytes adds to 16 row sums at once. Each i32 lane then holds one
//! row's exact block sum: no horizontal reductions, no sign tricks.
//!
//! Layout of group `g` (rows `16g..16g + 16`, missing rows zero), block `b`, at
//! `(g * nb + b) * stride`:
//! - 16 f16 scales (32 bytes);
//! - Q4_1 only: 16 f16 minimums (32 bytes);
//! - the quants in four-byte chunks, chunk-major: for chunk `c`, 16 rows of 4 bytes.
//!   Q4_0/Q4_1 keep nibbles packed: chunk `c` (`c < 4`) holds bytes `4c..4c + 4` of each
//!   row's 16 quant bytes, whose low nibbles are elements `4c..4c + 4` and high nibbles
//!   elements `16 + 4c..16 + 4c + 4` (4 x 64 bytes). Q8_0 stores its 32 signed bytes plus
//!   128, as unsigned (8 x 64 bytes). Q5_0 stores the 16 rows' 32-bit words of fifth bits
//!   (64 bytes) and then its nibbles as Q4_0 does: the same 22 bytes per row as the file.
//!
//! The offsets (Q4_0's 8, Q5_0's 16, Q8_0's 128) come back through the activation's integer block
//! sum, so every block sum is the same integer the scalar kernel computes.
//!
//! The K-quants pack per 256-value super-block the same way (their layouts are described
//! at [`pack_q4k`] and [`pack_q6k`]), with the sub-block scales unpacked row-interleaved
//! beside the quants, so that a sub-block's 16 row sums meet their 16 scales in one
//! vector multiply. Q6_K keeps its 6-bit quants as the file does, four low bits and two
//! high bits apart (as many bytes as the file holds), and its kernel puts each byte back
//! together with a few shifts and masks per 256 quants. Q4_K holds 2.8% more than the file
//! (its minimums unpacked to bytes).

use super::QuantType;

/// Rows interleaved in one group.
pub(crate) const GROUP: usize = 16;

/// One matrix in the packed layout.
pub(crate) struct Packed {
    /// Bytes, 64-byte aligned.
    lines: Vec<Line>,
    /// Bytes per block of a group.
    pub stride: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl Packed {
    /// Bytes per (group, block) for `qtype`, if it packs.
    pub fn stride(qtype: QuantType) -> Option<usize> {
        match qtype {
            QuantType::Q4_0 => Some(32 + 256),
            QuantType::Q4_1 => Some(64 + 256),
            QuantType::Q8_0 => Some(32 + 512),
            QuantType::Q5_0 => Some(32 + 64 + 256),
            QuantType::Q4K => Some(Q4K_QUANTS + 2048),
            QuantType::Q6K => Some(Q6K_QUANTS + 16 * Q6K_SUB_BLOCK),
            _ => None,
        }
    }

    /// Repack `rows` rows of `cols` columns of ggml blocks; `None` for types without a
    /// packed kernel.
    pub fn new(qtype: QuantType, data: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let stride = Self::stride(qtype)?;
        let nb = cols / qtype.block_len();
        let bb = qtype.block_bytes();
        let rb = qtype.row_bytes(cols);
        let groups = rows.div_ceil(GROUP);
        let len = groups * nb * stride;
        let mut lines = vec![Line([0; 64]); len.div_ceil(64)];
        // SAFETY: `Line` is 64 bytes without padding.
        let out = unsafe {
            std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), lines.len() * 64)
        };
        for row in 0..rows {
            let (g, l) = (row / GROUP, row % GROUP);
            for b in 0..nb {
                let src = &data[row * rb + b * bb..][..bb];
                let dst = &mut out[(g * nb + b) * stride..][..stride];
                match qtype {
                    QuantType::Q4_0 => {
                        dst[2 * l..2 * l + 2].copy_from_slice(&src[0..2]);
                        for c in 0..4 {
                            let at = 32 + c * 64 + 4 * l;
                            dst[at..at + 4].copy_from_slice(&src[2 + 4 * c..2 + 4 * c + 4]);
                        }
                    }
                    QuantType::Q4_1 => {
                        dst[2 * l..2 * l + 2].copy_from_slice(&src[0..2]);
                        dst[32 + 2 * l..32 + 2 * l + 2].copy_from_slice(&src[2..4]);
                        for c in 0..4 {
                            let at = 64 + c * 64 + 4 * l;
                            dst[at..at + 4].copy_from_slice(&src[4 + 4 * c..4 + 4 * c + 4]);
                        }
                    }
                    QuantType::Q8_0 => {
                        dst[2 * l..2 * l + 2].copy_from_slice(&src[0..2]);
                        for c in 0..8 {
                            let at = 32 + c * 64 + 4 * l;
                            for i in 0..4 {
                                dst[at + i] = src[2 + 4 * c + i] ^ 0x80;
                            }
                        }
                    }
                    QuantType::Q5_0 => {
                        dst[2 * l..2 * l + 2].copy_from_slice(&src[0..2]);
                        dst[32 + 4 * l..32 + 4 * l + 4].copy_from_slice(&src[2..6]);
                        for c in 0..4 {
                            let at = 96 + c * 64 + 4 * l;
                            dst[at..at + 4].copy_from_slice(&src[6 + 4 * c..6 + 4 * c + 4]);
                        }
                    }
                    QuantType::Q4K => pack_q4k(src, dst, l),
                    QuantType::Q6K => pack_q6k(src, dst, l),
                    _ => unreachable!("{qtype} does not pack"),
                }
            }
        }
        Some(Self { lines, stride })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 bytes without padding.
        unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.lines.len() * 64)
        }
    }
}

/// Where the quants of a packed Q4_K super-block start: after 16 f16 scales, 16 f16
/// minimum scales, the 6-bit sub-block scales as bytes (`[sub-block][row]`) and the
/// 6-bit sub-block minimums as byte pairs (`[pair][row][2]`, widened to i16 for
/// `vpmaddwd`): 2,368 bytes per 16 rows, 2.8% more than the file's 2,304.
pub(crate) const Q4K_QUANTS: usize = 32 + 32 + 8 * 16 + 4 * 16 * 2;
pub(crate) const Q4K_SCALES: usize = 64;
pub(crate) const Q4K_MINS: usize = 64 + 128;

/// Q4_K, row `l` of a group: quants nibble-packed as ggml stores them, in chunks: chunk
/// `8j + c` holds bytes `32j + 4c..32j + 4c + 4`, whose low nibbles are elements
/// `64j + 4c..` (sub-block `2j`) and high nibbles elements `64j + 32 + 4c..` (`2j + 1`).
fn pack_q4k(src: &[u8], dst: &mut [u8], l: usize) {
    dst[2 * l..2 * l + 2].copy_from_slice(&src[0..2]);
    dst[32 + 2 * l..32 + 2 * l + 2].copy_from_slice(&src[2..4]);
    let (scales, mins) = super::scalar::k4_scales(&src[4..16]);
    for s in 0..8 {
        dst[Q4K_SCALES + 16 * s + l] = scales[s];
    }
    for p in 0..4 {
        for h in 0..2 {
            dst[Q4K_MINS + 32 * p + 2 * l + h] = mins[2 * p + h];
        }
    }
    for chunk in 0..32 {
        let at = Q4K_QUANTS + 64 * chunk + 4 * l;
        dst[at..at + 4].copy_from_slice(&src[16 + 4 * chunk..16 + 4 * chunk + 4]);
    }
}

/// Where the quants of a packed Q6_K super-block start: after 16 f16 scales and the 16
/// sub-block scales as signed bytes (`[sub-block][row]`): 3,360 bytes per 16 rows, as
/// many as the file holds (the `- 32` offset comes with the activations, see
/// `acts::Q8KActs::offsets6`).
pub(crate) const Q6K_QUANTS: usize = 32 + 16 * 16;
pub(crate) const Q6K_SCALES: usize = 32;
/// Bytes of one 16-value sub-block of 16 rows: three vectors, each holding 4 bytes per
/// row (`4 * row + j` for element `j` of a chunk of 4). The first holds the low four bits
/// of chunk 0 (low nibble) and chunk 2 (high nibble), the second those of chunks 1 and 3,
/// the third the two high bits of chunks 0, 1, 2, 3 (bits 0-1, 2-3, 4-5, 6-7).
pub(crate) const Q6K_SUB_BLOCK: usize = 3 * 64;

/// Q6_K, row `l` of a group: each 6-bit quant (0..64, the 32 offset left to the kernel)
/// in its own byte, chunk `e / 4` holding elements `e` in order.
fn pack_q6k(src: &[u8], dst: &mut [u8], l: usize) {
    dst[2 * l..2 * l + 2].copy_from_slice(&src[208..210]);
    for s in 0..16 {
        dst[Q6K_SCALES + 16 * s + l] = src[192 + s];
    }
    // Element e of the super-block (e = 128h + 32t + i) is element 4c + j of sub-block
    // s = e / 16, in chunk c; see `Q6K_SUB_BLOCK` for where its bits go.
    let mut q = [0u8; 256];
    for h in 0..2 {
        for t in 0..4 {
            for i in 0..32 {
                q[128 * h + 32 * t + i] = super::scalar::q6k_quant(src, h, t, i) as u8;
            }
        }
    }
    for (s, q) in q.chunks_exact(16).enumerate() {
        let base = Q6K_QUANTS + Q6K_SUB_BLOCK * s + 4 * l;
        for j in 0..4 {
            let [q0, q1, q2, q3] = [q[j], q[4 + j], q[8 + j], q[12 + j]];
            dst[base + j] = (q0 & 15) | (q2 & 15) << 4;
            dst[base + 64 + j] = (q1 & 15) | (q3 & 15) << 4;
            dst[base + 128 + j] = q0 >> 4 | (q1 >> 4) << 2 | (q2 >> 4) << 4 | (q3 >> 4) << 6;
        }
    }
}
