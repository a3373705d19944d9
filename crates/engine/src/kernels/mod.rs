//! Quantized matrix products on the CPU, reading GGUF weight blocks where they lie.
//!
//! A [`QuantMatrix`] is an `[n, k]` weight exactly as GGUF stores it (rows of ggml blocks),
//! borrowed from shared bytes such as a memory map: nothing is copied. [`QuantMatrix::matmul`]
//! computes `out[m][n] = sum_k x[m][k] * W[n][k]`.
//!
//! Numerics follow llama.cpp's CPU backend, which is what verre is tested against:
//! activations are quantized once per call (Q8_0/Q8_1 32-blocks for Q4_0, Q4_1 and Q8_0
//! weights; Q8_K 256-blocks for the K-quants), dot products are exact integer sums per
//! block, scaled and summed in f32. The activation quantizers round exactly as ggml's x86
//! build does (see [`acts`]).
//!
//! Every output element is summed in the same order whatever the number of activation rows
//! `m` and however the rows are split across threads, so a sequence decoded alone or in a
//! batch gets bit-identical logits. The GEMM path (m > 1) only changes which weight block
//! is reused for which activation rows, never the arithmetic of one (row, column) pair.
//!
//! Kernels: a portable scalar reference for every type (also the test oracle) and AVX2+FMA
//! kernels on x86_64 for all quantized types, chosen once at run time. On other
//! architectures (aarch64 included) the scalar kernels run: NEON is not written yet.
//! `VERRE_KERNELS=scalar` forces the scalar kernels, for comparison.

mod acts;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use anyhow::{Result, bail, ensure};
use rayon::prelude::*;

use acts::{F32Acts, Q8Acts, Q8Buf, Q8KActs, Q8KBuf};

/// Bytes shared with whoever owns them: a memory-mapped model file (`Arc<memmap2::Mmap>`),
/// a `Vec<u8>`, a `&'static [u8]`.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A weight layout: ggml's block formats (see `ggml-common.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    F32,
    F16,
    /// 32 weights: f16 scale, 16 bytes of 4-bit values offset by 8.
    Q4_0,
    /// 32 weights: f16 scale, f16 minimum, 16 bytes of 4-bit values.
    Q4_1,
    /// 32 weights: f16 scale, 32 signed bytes.
    Q8_0,
    /// 256 weights: f16 scale and min-scale, 12 bytes of 6-bit sub-block scales and mins, 4-bit values.
    Q4K,
    /// As Q4K with a fifth bit per weight.
    Q5K,
    /// 256 weights: 4 low bits, 2 high bits, 16 signed 8-bit sub-block scales, f16 scale.
    Q6K,
}

impl QuantType {
    /// Weights per block.
    pub const fn block_len(self) -> usize {
        match self {
            QuantType::F32 | QuantType::F16 => 1,
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0 => 32,
            QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantType::F32 => 4,
            QuantType::F16 => 2,
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q8_0 => 34,
            QuantType::Q4K => 144,
            QuantType::Q5K => 176,
            QuantType::Q6K => 210,
        }
    }

    /// Bytes of one row of `cols` weights (`cols` a multiple of [`Self::block_len`]).
    pub const fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// The type with this GGUF/ggml tensor type id, if verre has kernels for it.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => QuantType::F32,
            1 => QuantType::F16,
            2 => QuantType::Q4_0,
            3 => QuantType::Q4_1,
            8 => QuantType::Q8_0,
            12 => QuantType::Q4K,
            13 => QuantType::Q5K,
            14 => QuantType::Q6K,
            _ => return None,
        })
    }

    /// How activations are quantized for a product with this weight type.
    fn act_kind(self) -> ActKind {
        match self {
            QuantType::F32 | QuantType::F16 => ActKind::F32,
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0 => ActKind::Q8,
            QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => ActKind::Q8K,
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuantType::F32 => "F32",
            QuantType::F16 => "F16",
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4K => "Q4_K",
            QuantType::Q5K => "Q5_K",
            QuantType::Q6K => "Q6_K",
        })
    }
}

impl TryFrom<candle_core::quantized::GgmlDType> for QuantType {
    type Error = anyhow::Error;

    fn try_from(dtype: candle_core::quantized::GgmlDType) -> Result<Self> {
        use candle_core::quantized::GgmlDType as G;
        Ok(match dtype {
            G::F32 => QuantType::F32,
            G::F16 => QuantType::F16,
            G::Q4_0 => QuantType::Q4_0,
            G::Q4_1 => QuantType::Q4_1,
            G::Q8_0 => QuantType::Q8_0,
            G::Q4K => QuantType::Q4K,
            G::Q5K => QuantType::Q5K,
            G::Q6K => QuantType::Q6K,
            other => bail!("no verre kernel for tensor type {other:?}"),
        })
    }
}

/// Activation formats, one per family of weight types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActKind {
    F32,
    /// ggml's Q8_0/Q8_1: 32-blocks, f16 scale (and f16 scaled sum).
    Q8,
    /// ggml's Q8_K: 256-blocks, f32 scale, sums of 16.
    Q8K,
}

/// The instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C (x86-64-v3).
    Avx2,
}

/// The kernels this machine runs, detected once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        if std::env::var("VERRE_KERNELS").is_ok_and(|v| v == "scalar") {
            return Isa::Scalar;
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Isa::Avx2;
        }
        Isa::Scalar
    })
}

/// A weight matrix of `rows` output features by `cols` input features, stored as GGUF
/// stores an `[n, k]` tensor: `rows` rows of `cols / block_len` blocks. Cloning is cheap.
#[derive(Clone)]
pub struct QuantMatrix {
    bytes: SharedBytes,
    offset: usize,
    qtype: QuantType,
    rows: usize,
    cols: usize,
}

impl fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("qtype", &self.qtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("offset", &self.offset)
            .finish()
    }
}

impl QuantMatrix {
    /// A matrix whose blocks start at `offset` in `data`. Fails if `cols` is not a whole
    /// number of blocks or the blocks run past the end of `data`.
    pub fn new(
        data: SharedBytes,
        offset: usize,
        qtype: QuantType,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        ensure!(
            cols.is_multiple_of(qtype.block_len()),
            "a {qtype} matrix needs a multiple of {} columns, this one has {cols}",
            qtype.block_len()
        );
        let len = rows
            .checked_mul(qtype.row_bytes(cols))
            .and_then(|len| len.checked_add(offset))
            .ok_or_else(|| anyhow::anyhow!("a {qtype} matrix of {rows}x{cols} is too large"))?;
        let available = (*data).as_ref().len();
        ensure!(
            len <= available,
            "a {qtype} matrix of {rows}x{cols} at byte {offset} needs {len} bytes, only {available} are there"
        );
        Ok(Self {
            bytes: data,
            offset,
            qtype,
            rows,
            cols,
        })
    }

    /// A matrix that owns its blocks.
    pub fn from_vec(blocks: Vec<u8>, qtype: QuantType, rows: usize, cols: usize) -> Result<Self> {
        Self::new(Arc::new(blocks), 0, qtype, rows, cols)
    }

    /// Output features (n).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (k).
    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn qtype(&self) -> QuantType {
        self.qtype
    }

    /// The matrix's blocks, as stored.
    pub fn data(&self) -> &[u8] {
        let len = self.rows * self.qtype.row_bytes(self.cols);
        &(*self.bytes).as_ref()[self.offset..self.offset + len]
    }

    /// `out[i][j] = sum_k x[i][k] * W[j][k]` for `m` rows of `x` (`m * cols` floats, row
    /// major) into `out` (`m * rows` floats). The output rows are shared across the rayon
    /// pool this is called in; nothing is allocated once `scratch` has grown to the size.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32], scratch: &mut Scratch) {
        self.matmul_with(isa(), x, m, out, scratch);
    }

    fn matmul_with(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32], scratch: &mut Scratch) {
        self.check_shapes(x, m, out);
        if m == 0 || self.rows == 0 {
            return;
        }
        match self.qtype.act_kind() {
            ActKind::F32 => {
                let acts = F32Acts { x, k: self.cols };
                product(self, &acts, m, out, &f32_tiles(self.qtype, isa));
            }
            ActKind::Q8 => {
                scratch.q8.quantize(x, m, self.cols, isa);
                product(self, &scratch.q8.view(), m, out, &q8_tiles(self.qtype, isa));
            }
            ActKind::Q8K => {
                scratch.q8k.quantize(x, m, self.cols, isa);
                product(self, &scratch.q8k.view(), m, out, &q8k_tiles(self.qtype, isa));
            }
        }
    }

    fn check_shapes(&self, x: &[f32], m: usize, out: &[f32]) {
        assert_eq!(
            x.len(),
            m * self.cols,
            "matmul input: expected {m} rows of {} values",
            self.cols
        );
        assert_eq!(
            out.len(),
            m * self.rows,
            "matmul output: expected {m} rows of {} values",
            self.rows
        );
    }

    /// Dequantize row `row` (an embedding lookup) into `out` (`cols` floats).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(
            row < self.rows,
            "row {row} of a matrix with {} rows",
            self.rows
        );
        assert_eq!(out.len(), self.cols, "dequantize_row: output length");
        let rb = self.qtype.row_bytes(self.cols);
        scalar::dequantize(self.qtype, &self.data()[row * rb..(row + 1) * rb], out);
    }
}

/// Several matrices that read the same input (Q, K and V; gate and up), computed with one
/// quantization of the input and one parallel pass. `outs[i]` receives `m` rows of
/// `mats[i].rows()` values, exactly what `mats[i].matmul` would write.
pub fn matmul_many(
    mats: &[&QuantMatrix],
    x: &[f32],
    m: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut Scratch,
) {
    matmul_many_with(isa(), mats, x, m, outs, scratch);
}

fn matmul_many_with(
    isa: Isa,
    mats: &[&QuantMatrix],
    x: &[f32],
    m: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut Scratch,
) {
    assert_eq!(mats.len(), outs.len(), "matmul_many: one output per matrix");
    for (mat, out) in mats.iter().zip(outs.iter()) {
        mat.check_shapes(x, m, out);
    }
    if m == 0 || mats.is_empty() {
        return;
    }
    let kind = mats[0].qtype.act_kind();
    if mats.iter().any(|mat| mat.qtype.act_kind() != kind) {
        for (mat, out) in mats.iter().zip(outs.iter_mut()) {
            mat.matmul_with(isa, x, m, out, scratch);
        }
        return;
    }
    let k = mats[0].cols;
    let jobs: Vec<Job<'_>> = Vec::with_capacity(0); // placeholder, replaced below
    drop(jobs);
    match kind {
        ActKind::F32 => {
            let acts = F32Acts { x, k };
            let tiles: Vec<_> = mats.iter().map(|w| f32_tiles(w.qtype, isa)).collect();
            product_many(mats, &acts, m, outs, &tiles);
        }
        ActKind::Q8 => {
            scratch.q8.quantize(x, m, k, isa);
            let tiles: Vec<_> = mats.iter().map(|w| q8_tiles(w.qtype, isa)).collect();
            product_many(mats, &scratch.q8.view(), m, outs, &tiles);
        }
        ActKind::Q8K => {
            scratch.q8k.quantize(x, m, k, isa);
            let tiles: Vec<_> = mats.iter().map(|w| q8k_tiles(w.qtype, isa)).collect();
            product_many(mats, &scratch.q8k.view(), m, outs, &tiles);
        }
    }
}

/// Reusable buffers for quantized activations, so a decode loop allocates nothing. One per
/// thread that calls [`QuantMatrix::matmul`]; it only grows.
#[derive(Default)]
pub struct Scratch {
    q8: Q8Buf,
    q8k: Q8KBuf,
}

impl Scratch {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Dot products of one weight row with `R` consecutive activation rows starting at `row0`.
type TileFn<A, const R: usize> = unsafe fn(&[u8], &A, usize) -> [f32; R];

/// The kernels of one weight type against one activation format.
struct Tiles<A> {
    one: TileFn<A, 1>,
    four: TileFn<A, 4>,
}

impl<A> Clone for Tiles<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for Tiles<A> {}

fn f32_tiles(qtype: QuantType, isa: Isa) -> Tiles<F32Acts<'static>> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        return match qtype {
            QuantType::F32 => Tiles {
                one: x86::f32w::<1>,
                four: x86::f32w::<4>,
            },
            QuantType::F16 => Tiles {
                one: x86::f16w::<1>,
                four: x86::f16w::<4>,
            },
            _ => unreachable!("{qtype} does not take f32 activations"),
        };
    }
    let _ = isa;
    match qtype {
        QuantType::F32 => Tiles {
            one: scalar::f32w::<1>,
            four: scalar::f32w::<4>,
        },
        QuantType::F16 => Tiles {
            one: scalar::f16w::<1>,
            four: scalar::f16w::<4>,
        },
        _ => unreachable!("{qtype} does not take f32 activations"),
    }
}
