//! Quantized matrix products on the CPU, reading GGUF weight blocks where they lie.
//!
//! A [`QuantMatrix`] is an `[n, k]` weight exactly as GGUF stores it (rows of ggml blocks),
//! borrowed from shared bytes such as a memory map: nothing is copied. [`QuantMatrix::matmul`]
//! computes `out[m][n] = sum_k x[m][k] * W[n][k]`; [`matmul_many`] does several matrices that
//! read the same input (Q/K/V, gate/up) in one pass.
//!
//! Numerics follow llama.cpp's CPU backend, which is what verre is tested against:
//! activations are quantized once per call (Q8_0/Q8_1 32-blocks for Q4_0, Q4_1, Q5_0, Q5_1
//! and Q8_0 weights; Q8_K 256-blocks for the K-quants), dot products are exact integer sums
//! per block, scaled and summed in f32. The activation quantizers round as ggml's x86 build
//! does (see `acts`). Only the order of the f32 sums differs from llama.cpp's.
//!
//! Every output element is summed in the same order whatever the number of activation rows
//! `m` and however the rows are split across threads, so a sequence decoded alone or in a
//! batch gets bit-identical logits. The GEMM (m > 1) only changes which weight blocks are
//! reused for which activation rows, never the arithmetic of one (row, column) pair.
//!
//! Kernels: a portable scalar reference for every type (also the test oracle) and, on
//! x86_64, AVX2+FMA+F16C kernels for every type, with an AVX-VNNI build of the 32-block
//! ones (same integers, fewer instructions), and, where the CPU has AVX-512 F/BW/VNNI,
//! kernels over weights [`QuantMatrix::pack`]ed 16 rows at a time (Q4_0, Q4_1, Q5_0, Q8_0,
//! Q4_K, Q6_K; see `packed`), chosen once at run time. Elsewhere (aarch64 included) the
//! scalar kernels run: there is no NEON code yet. `VERRE_KERNELS=scalar` or `=avx2` forces
//! lesser kernels, for comparison. Attention over the KV cache is in [`attention`].
//!
//! Threads: the output rows are split across the rayon pool the call runs in. Call from a
//! thread of that pool (inside `ThreadPool::install`) in the decode loop: from outside, each
//! product pays a round trip through the pool's queue, which costs more than a small gemv.

mod acts;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod key_offset;
pub mod kv_rows;
mod packed;
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
use packed::{GROUP, Packed};

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
    /// 32 weights: f16 scale, 32 fifth bits, 4-bit values; offset by 16.
    Q5_0,
    /// 32 weights: f16 scale, f16 minimum, 32 fifth bits, 4-bit values.
    Q5_1,
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
            QuantType::Q4_0
            | QuantType::Q4_1
            | QuantType::Q5_0
            | QuantType::Q5_1
            | QuantType::Q8_0 => 32,
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
            QuantType::Q5_0 => 22,
            QuantType::Q5_1 => 24,
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
            6 => QuantType::Q5_0,
            7 => QuantType::Q5_1,
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
            QuantType::Q4_0
            | QuantType::Q4_1
            | QuantType::Q5_0
            | QuantType::Q5_1
            | QuantType::Q8_0 => ActKind::Q8,
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
            QuantType::Q5_0 => "Q5_0",
            QuantType::Q5_1 => "Q5_1",
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
            G::Q5_0 => QuantType::Q5_0,
            G::Q5_1 => QuantType::Q5_1,
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
    /// The above with AVX-VNNI (`vpdpbusd` on 256-bit vectors): same results, fewer
    /// instructions for the 32-block formats.
    Avx2Vnni,
    /// AVX-512 F/BW/VNNI on top of AVX2: packed 16-row kernels (Q4_0, Q4_1, Q5_0, Q8_0,
    /// Q4_K, Q6_K) for matrices that were [`QuantMatrix::pack`]ed, the AVX2 kernels (VNNI where
    /// present) for the rest.
    Avx512Vnni,
}

impl Isa {
    /// The 256-bit kernel set this ISA includes.
    fn vex(self) -> Isa {
        match self {
            Isa::Avx512Vnni if has_avxvnni() => Isa::Avx2Vnni,
            Isa::Avx512Vnni => Isa::Avx2,
            other => other,
        }
    }
}

fn has_avxvnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avxvnni") {
        return true;
    }
    false
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
            let forced = std::env::var("VERRE_KERNELS").ok();
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
                && forced.is_none()
            {
                return Isa::Avx512Vnni;
            }
            if is_x86_feature_detected!("avxvnni") && forced.as_deref() != Some("avx2") {
                return Isa::Avx2Vnni;
            }
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
    /// The same weights interleaved for the AVX-512 kernels, once [`Self::pack`]ed.
    packed: Option<Arc<Packed>>,
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
            packed: None,
        })
    }

    /// Add a copy of the weights in the layout of this machine's fastest kernels, where
    /// there is one (AVX-512 VNNI, for Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K). Products then read the copy;
    /// [`Self::data`] and [`Self::dequantize_row`] still read the original blocks.
    pub fn pack(self) -> Self {
        self.pack_for(isa())
    }

    fn pack_for(mut self, isa: Isa) -> Self {
        if isa == Isa::Avx512Vnni && self.packed.is_none() {
            self.packed = Packed::new(self.qtype, self.data(), self.rows, self.cols).map(Arc::new);
        }
        self
    }

    /// Drop the original blocks' pages from the resident set once products read a packed
    /// copy: pages of a memory-mapped file are read back from the file if they are touched
    /// again (an embedding lookup), so packing does not hold the weights in memory twice.
    ///
    /// # Safety
    /// The bytes must be a read-only mapping of a file (`memmap2::Mmap`): on anonymous
    /// memory (a `Vec`) this would zero them.
    pub unsafe fn release_source_pages(&self) {
        #[cfg(target_os = "linux")]
        if self.is_packed() {
            const PAGE: usize = 4096;
            let data = self.data();
            let start = (data.as_ptr() as usize).next_multiple_of(PAGE);
            let end = (data.as_ptr() as usize + data.len()) / PAGE * PAGE;
            if end > start {
                // SAFETY: whole pages inside the matrix's bytes, which the caller guarantees
                // are a file mapping; products no longer read them.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
                };
            }
        }
    }

    /// Whether products read a packed copy of the weights.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
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
        matmul_many_with(isa, &[self], x, m, &mut [out], scratch);
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

/// Several matrices that read the same input (Q, K and V; gate and up) in one parallel pass,
/// with one quantization of the input. `outs[i]` receives `m` rows of `mats[i].rows()`
/// values, bit for bit what `mats[i].matmul` would write.
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
    if mats.len() > MANY_MAX || mats.iter().any(|mat| mat.qtype.act_kind() != kind) {
        for (mat, out) in mats.iter().zip(outs.iter_mut()) {
            matmul_many_with(isa, &[*mat], x, m, &mut [&mut **out], scratch);
        }
        return;
    }
    let k = mats[0].cols;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && mats.iter().all(|mat| mat.is_packed()) {
        match kind {
            ActKind::Q8 => {
                scratch.q8.quantize(x, m, k, isa.vex());
                let kernels = |q| {
                    let (one, four) = avx512::kernels(q);
                    PackedKernels::<Q8Acts<'_>> {
                        one,
                        four,
                        eight: None,
                    }
                };
                packed_product(mats, &scratch.q8.view(), m, outs, kernels);
                return;
            }
            ActKind::Q8K => {
                scratch.q8k.quantize(x, m, k, isa.vex());
                let kernels = |q| {
                    let (one, four, eight) = avx512::k_kernels(q);
                    PackedKernels::<Q8KActs<'_>> {
                        one,
                        four,
                        eight: Some(eight),
                    }
                };
                packed_product(mats, &scratch.q8k.view(), m, outs, kernels);
                return;
            }
            ActKind::F32 => {}
        }
    }
    let isa = isa.vex();
    match kind {
        ActKind::F32 => {
            let acts = F32Acts { x, k };
            product(mats, &acts, m, outs, |q| f32_tiles(q, isa));
        }
        ActKind::Q8 => {
            scratch.q8.quantize(x, m, k, isa);
            product(mats, &scratch.q8.view(), m, outs, |q| q8_tiles(q, isa));
        }
        ActKind::Q8K => {
            scratch.q8k.quantize(x, m, k, isa);
            product(mats, &scratch.q8k.view(), m, outs, |q| q8k_tiles(q, isa));
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

/// Dot products of `RW` consecutive weight rows (from the start of the slice) with `R`
/// consecutive activation rows from `row0`: `out[weight row][activation row]`.
type TileFn<A, const RW: usize, const R: usize> = unsafe fn(&[u8], &A, usize) -> [[f32; R]; RW];

/// The kernels of one weight type against one activation format, for 1 or 2 weight rows
/// by 1 or 4 activation rows: the same code, so a (row, column) pair is summed identically
/// by each.
struct Tiles<A> {
    w1a1: TileFn<A, 1, 1>,
    w1a4: TileFn<A, 1, 4>,
    w2a1: TileFn<A, 2, 1>,
    w2a4: TileFn<A, 2, 4>,
    /// Whether the GEMM takes weight rows two at a time (`w2a*`) or one (`w1a*`). Pairs
    /// share the activation loads, but signed formats need the registers for a second chain
    /// of FMAs per (row, column) pair instead. Either way a (row, column) pair is computed
    /// by the same arithmetic.
    pairs: bool,
}

impl<A> Clone for Tiles<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for Tiles<A> {}

macro_rules! tiles {
    ($module:ident :: $kernel:ident) => {
        tiles!($module::$kernel, pairs: false)
    };
    ($module:ident :: $kernel:ident, pairs: $pairs:expr) => {
        Tiles {
            w1a1: $module::$kernel::<1, 1>,
            w1a4: $module::$kernel::<1, 4>,
            w2a1: $module::$kernel::<2, 1>,
            w2a4: $module::$kernel::<2, 4>,
            pairs: $pairs,
        }
    };
}

fn f32_tiles<'a>(qtype: QuantType, isa: Isa) -> Tiles<F32Acts<'a>> {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        return match qtype {
            QuantType::F32 => tiles!(x86::f32w),
            QuantType::F16 => tiles!(x86::f16w),
            _ => unreachable!("{qtype} weights take quantized activations"),
        };
    }
    let _ = isa;
    match qtype {
        QuantType::F32 => tiles!(scalar::f32w),
        QuantType::F16 => tiles!(scalar::f16w),
        _ => unreachable!("{qtype} weights take quantized activations"),
    }
}

fn q8_tiles<'a>(qtype: QuantType, isa: Isa) -> Tiles<Q8Acts<'a>> {
    #[cfg(target_arch = "x86_64")]
    match (isa, qtype) {
        (Isa::Scalar, _) => {}
        (Isa::Avx2, QuantType::Q4_0) => return tiles!(x86::q4_0),
        (Isa::Avx2, QuantType::Q4_1) => return tiles!(x86::q4_1, pairs: true),
        (Isa::Avx2, QuantType::Q5_0) => return tiles!(x86::q5_0),
        (Isa::Avx2, QuantType::Q5_1) => return tiles!(x86::q5_1, pairs: true),
        (Isa::Avx2, QuantType::Q8_0) => return tiles!(x86::q8_0),
        (Isa::Avx2Vnni, QuantType::Q4_0) => return tiles!(x86::q4_0_vnni),
        (Isa::Avx2Vnni, QuantType::Q4_1) => return tiles!(x86::q4_1_vnni, pairs: true),
        (Isa::Avx2Vnni, QuantType::Q5_0) => return tiles!(x86::q5_0_vnni),
        (Isa::Avx2Vnni, QuantType::Q5_1) => return tiles!(x86::q5_1_vnni, pairs: true),
        (Isa::Avx2Vnni, QuantType::Q8_0) => return tiles!(x86::q8_0_vnni),
        _ => unreachable!("{qtype} weights do not take Q8_0 activations"),
    }
    let _ = isa;
    match qtype {
        QuantType::Q4_0 => tiles!(scalar::q4_0),
        QuantType::Q4_1 => tiles!(scalar::q4_1),
        QuantType::Q5_0 => tiles!(scalar::q5_0),
        QuantType::Q5_1 => tiles!(scalar::q5_1),
        QuantType::Q8_0 => tiles!(scalar::q8_0),
        _ => unreachable!("{qtype} weights do not take Q8_0 activations"),
    }
}

fn q8k_tiles<'a>(qtype: QuantType, isa: Isa) -> Tiles<Q8KActs<'a>> {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        return match qtype {
            QuantType::Q4K => tiles!(x86::q4k),
            QuantType::Q5K => tiles!(x86::q5k),
            QuantType::Q6K => tiles!(x86::q6k),
            _ => unreachable!("{qtype} weights do not take Q8_K activations"),
        };
    }
    let _ = isa;
    match qtype {
        QuantType::Q4K => tiles!(scalar::q4k),
        QuantType::Q5K => tiles!(scalar::q5k),
        QuantType::Q6K => tiles!(scalar::q6k),
        _ => unreachable!("{qtype} weights do not take Q8_K activations"),
    }
}

/// Most matrices [`matmul_many`] computes in one pass.
const MANY_MAX: usize = 4;

/// Work below which a gemv task is not worth handing to another thread (multiply-adds).
const MIN_TASK_MACS: usize = 32 * 1024;

/// Bytes of quantized activation rows kept hot while a weight row is applied to them.
const ACT_BLOCK_BYTES: usize = 32 * 1024;

/// Most weight rows in one GEMM task: their blocks stay in L2 while the activation
/// blocks pass over them.
const GEMM_TASK_ROWS: usize = 64;

/// Weight rows per parallel task.
fn rows_per_task(n: usize, m: usize, k: usize, threads: usize) -> usize {
    if threads <= 1 {
        return n.max(1);
    }
    let balanced = n.div_ceil(threads * 4);
    let rows = if m == 1 {
        balanced.max(MIN_TASK_MACS.div_ceil(k.max(1)))
    } else {
        balanced.clamp(4, GEMM_TASK_ROWS)
    };
    rows.next_multiple_of(4).clamp(1, n.max(1))
}

/// Activation rows that one weight row meets before the next weight row comes.
fn act_block_rows(k: usize) -> usize {
    (ACT_BLOCK_BYTES / (k + k / 8).max(1)).max(4) / 4 * 4
}

/// A raw output pointer shared by the tasks of one product; each task writes only the
/// columns of its own weight rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements and the product waits for all of them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `outs[i] = x @ mats[i].T`, the rows of all matrices split into tasks over the rayon pool.
fn product<A: Sync>(
    mats: &[&QuantMatrix],
    acts: &A,
    m: usize,
    outs: &mut [&mut [f32]],
    tiles_for: impl Fn(QuantType) -> Tiles<A>,
) {
    debug_assert!(!mats.is_empty() && mats.len() <= MANY_MAX);
    let threads = rayon::current_num_threads();
    let first = mats[0];
    let pick = |i: usize| mats[i.min(mats.len() - 1)];
    let tiles: [Tiles<A>; MANY_MAX] = std::array::from_fn(|i| tiles_for(pick(i).qtype));
    let rpt: [usize; MANY_MAX] =
        std::array::from_fn(|i| rows_per_task(pick(i).rows, m, first.cols, threads));
    let tasks: [usize; MANY_MAX] = std::array::from_fn(|i| {
        if i < mats.len() {
            mats[i].rows.div_ceil(rpt[i])
        } else {
            0
        }
    });
    let ptrs: [OutPtr; MANY_MAX] = std::array::from_fn(|i| {
        OutPtr(
            outs.get_mut(i)
                .map_or(std::ptr::null_mut(), |o| o.as_mut_ptr()),
        )
    });
    let run = |mut t: usize| {
        let mut i = 0;
        while t >= tasks[i] {
            t -= tasks[i];
            i += 1;
        }
        let mat = mats[i];
        let rows = t * rpt[i]..((t + 1) * rpt[i]).min(mat.rows);
        // SAFETY: `ptrs[i]` holds `m * mat.rows` floats (checked by the caller) and this task
        // alone writes the columns `rows`; the activations hold `m` rows of `mat.cols`.
        unsafe { rows_product(mat, rows, acts, m, ptrs[i], tiles[i]) };
    };
    let total: usize = tasks.iter().sum();
    if total == 1 {
        run(0);
    } else {
        (0..total).into_par_iter().for_each(run);
    }
}

/// Columns `rows` of `out = x @ mat.T`.
///
/// # Safety
/// `out` points to `m * mat.rows` floats that nothing else touches in columns `rows`, and
/// `acts` holds `m` rows of `mat.cols` activations in the format `tiles` reads.
unsafe fn rows_product<A>(
    mat: &QuantMatrix,
    rows: Range<usize>,
    acts: &A,
    m: usize,
    out: OutPtr,
    tiles: Tiles<A>,
) {
    let data = mat.data();
    let rb = mat.qtype.row_bytes(mat.cols);
    let n = mat.rows;
    let out = out.0;
    // SAFETY (all writes): row `i < m`, column `j` in `rows`, as the caller allows.
    let store = |i: usize, j: usize, v: f32| unsafe { *out.add(i * n + j) = v };
    unsafe {
        if m == 1 {
            // One weight row at a time: pairs would read two streams of cold weights, which
            // the prefetchers serve worse than one.
            for j in rows {
                let [[v]] = (tiles.w1a1)(&data[j * rb..(j + 1) * rb], acts, 0);
                store(0, j, v);
            }
            return;
        }
        let block = act_block_rows(mat.cols);
        let mut i0 = 0;
        while i0 < m {
            let i1 = m.min(i0 + block);
            let mut j = rows.start;
            while tiles.pairs && j + 2 <= rows.end {
                let w = &data[j * rb..(j + 2) * rb];
                let mut i = i0;
                while i + 4 <= i1 {
                    let [v0, v1] = (tiles.w2a4)(w, acts, i);
                    for (r, (v0, v1)) in v0.into_iter().zip(v1).enumerate() {
                        store(i + r, j, v0);
                        store(i + r, j + 1, v1);
                    }
                    i += 4;
                }
                while i < i1 {
                    let [[v0], [v1]] = (tiles.w2a1)(w, acts, i);
                    store(i, j, v0);
                    store(i, j + 1, v1);
                    i += 1;
                }
                j += 2;
            }
            while j < rows.end {
                let w = &data[j * rb..(j + 1) * rb];
                let mut i = i0;
                while i + 4 <= i1 {
                    let [v] = (tiles.w1a4)(w, acts, i);
                    for (r, v) in v.into_iter().enumerate() {
                        store(i + r, j, v);
                    }
                    i += 4;
                }
                while i < i1 {
                    let [[v]] = (tiles.w1a1)(w, acts, i);
                    store(i, j, v);
                    i += 1;
                }
                j += 1;
            }
            i0 = i1;
        }
    }
}

/// A packed kernel: one group of [`GROUP`] weight rows (its blocks of `stride` bytes)
/// against activation rows from `row0`, into `out + r * n` (`lanes` valid columns).
type PackedFn<A> = unsafe fn(*const u8, usize, &A, usize, *mut f32, usize, usize);

/// The packed kernels of one type: 1 and 4 activation rows per call, and 8 where the
/// weights cost enough to unpack that sharing them across more rows pays (the K-quants).
/// A (weight row, activation row) pair is computed by the same arithmetic in each.
struct PackedKernels<A> {
    one: PackedFn<A>,
    four: PackedFn<A>,
    eight: Option<PackedFn<A>>,
}

/// Activation rows that one group of weight rows meets before the next group comes; with
/// 8-row kernels, a multiple of 8, so that they run even where a row is long.
fn packed_block_rows(k: usize, eight: bool) -> usize {
    let rows = act_block_rows(k);
    if eight { rows.max(8) / 8 * 8 } else { rows }
}

/// Weight groups (of [`GROUP`] rows) per parallel task of a packed product.
fn groups_per_task(groups: usize, m: usize, k: usize, threads: usize) -> usize {
    if threads <= 1 {
        return groups.max(1);
    }
    let balanced = groups.div_ceil(threads * 4);
    let per_task = if m == 1 {
        balanced.max(MIN_TASK_MACS.div_ceil((k * GROUP).max(1)))
    } else {
        balanced.clamp(1, 2)
    };
    per_task.clamp(1, groups.max(1))
}

/// `outs[i] = x @ mats[i].T` for packed matrices, groups of rows split into tasks over the
/// rayon pool.
#[cfg(target_arch = "x86_64")]
fn packed_product<A: Sync>(
    mats: &[&QuantMatrix],
    acts: &A,
    m: usize,
    outs: &mut [&mut [f32]],
    kernels: impl Fn(QuantType) -> PackedKernels<A> + Sync,
) {
    debug_assert!(!mats.is_empty() && mats.len() <= MANY_MAX);
    let threads = rayon::current_num_threads();
    let groups = |i: usize| mats.get(i).map_or(0, |mat| mat.rows.div_ceil(GROUP));
    let gpt: [usize; MANY_MAX] =
        std::array::from_fn(|i| groups_per_task(groups(i), m, mats[0].cols, threads));
    let tasks: [usize; MANY_MAX] = std::array::from_fn(|i| groups(i).div_ceil(gpt[i]));
    let ptrs: [OutPtr; MANY_MAX] = std::array::from_fn(|i| {
        OutPtr(
            outs.get_mut(i)
                .map_or(std::ptr::null_mut(), |o| o.as_mut_ptr()),
        )
    });
    let run = |mut t: usize| {
        let mut i = 0;
        while t >= tasks[i] {
            t -= tasks[i];
            i += 1;
        }
        let range = t * gpt[i]..((t + 1) * gpt[i]).min(groups(i));
        // SAFETY: `ptrs[i]` holds `m * rows` floats (checked by the caller), this task alone
        // writes the columns of its groups, and `isa()` chose AVX-512 VNNI.
        unsafe { packed_rows(mats[i], range, acts, m, ptrs[i], kernels(mats[i].qtype)) };
    };
    let total: usize = tasks.iter().sum();
    if total == 1 {
        run(0);
    } else {
        (0..total).into_par_iter().for_each(run);
    }
}

/// Columns of the row groups `groups` of `out = x @ mat.T`, for a packed `mat`.
///
/// # Safety
/// As [`rows_product`], for the columns of `groups`; the CPU has AVX-512 F/BW/VNNI.
#[cfg(target_arch = "x86_64")]
unsafe fn packed_rows<A>(
    mat: &QuantMatrix,
    groups: Range<usize>,
    acts: &A,
    m: usize,
    out: OutPtr,
    kernels: PackedKernels<A>,
) {
    let packed = mat.packed.as_deref().expect("a packed matrix");
    let group_bytes = mat.cols / mat.qtype.block_len() * packed.stride;
    let n = mat.rows;
    let block = packed_block_rows(mat.cols, kernels.eight.is_some());
    let bytes = packed.bytes().as_ptr();
    let mut i0 = 0;
    while i0 < m {
        let i1 = m.min(i0 + block);
        for g in groups.clone() {
            let lanes = (n - g * GROUP).min(GROUP);
            // SAFETY: group `g` lies in the packed bytes; rows `i < m` and columns of group
            // `g` lie in `out`, as the caller guarantees.
            unsafe {
                let w = bytes.add(g * group_bytes);
                let call = |kernel: PackedFn<A>, i: usize| {
                    let out = out.0.add(i * n + g * GROUP);
                    kernel(w, packed.stride, acts, i, out, n, lanes)
                };
                let mut i = i0;
                if let Some(eight) = kernels.eight {
                    while i + 8 <= i1 {
                        call(eight, i);
                        i += 8;
                    }
                }
                while i + 4 <= i1 {
                    call(kernels.four, i);
                    i += 4;
                }
                while i < i1 {
                    call(kernels.one, i);
                    i += 1;
                }
            }
        }
        i0 = i1;
    }
}
