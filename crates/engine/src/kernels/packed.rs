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
//!   128, as unsigned (8 x 64 bytes).
//!
//! The offsets (Q4_0's 8, Q8_0's 128) come back through the activation's integer block
//! sum, so every block sum is the same integer the scalar kernel computes.

use super::QuantType;

/// Rows interleaved in one group.
pub(crate) const GROUP: usize = 16;

/// One matrix in the packed layout.
pub(crate) struct Packed {
    pub qtype: QuantType,
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
            _ => None,
        }
    }

    /// Repack `rows` rows of `cols` columns of ggml blocks; `None` for types without a
    /// packed kernel.
    pub fn new(qtype: QuantType, data: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let stride = Self::stride(qtype)?;
        let nb = cols / 32;
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
                dst[2 * l..2 * l + 2].copy_from_slice(&src[0..2]);
                match qtype {
                    QuantType::Q4_0 => {
                        for c in 0..4 {
                            let at = 32 + c * 64 + 4 * l;
                            dst[at..at + 4].copy_from_slice(&src[2 + 4 * c..2 + 4 * c + 4]);
                        }
                    }
                    QuantType::Q4_1 => {
                        dst[32 + 2 * l..32 + 2 * l + 2].copy_from_slice(&src[2..4]);
                        for c in 0..4 {
                            let at = 64 + c * 64 + 4 * l;
                            dst[at..at + 4].copy_from_slice(&src[4 + 4 * c..4 + 4 * c + 4]);
                        }
                    }
                    QuantType::Q8_0 => {
                        for c in 0..8 {
                            let at = 32 + c * 64 + 4 * l;
                            for i in 0..4 {
                                dst[at + i] = src[2 + 4 * c + i] ^ 0x80;
                            }
                        }
                    }
                    _ => unreachable!("{qtype} does not pack"),
                }
            }
        }
        Some(Self {
            qtype,
            lines,
            stride,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 bytes without padding.
        unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.lines.len() * 64)
        }
    }
}
