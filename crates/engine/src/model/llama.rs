//! The Llama family: Llama 1-3, Mistral 7B / Nemo / Small, SmolLM and their kin.
//!
//! The block structure here is shared with the families that differ from Llama only in
//! details ([`Family`]): Qwen2 (`qwen2.rs`) adds Q/K/V biases and rotates NeoX-style;
//! Mistral 3 (`mistral3.rs`) adds YaRN's attention factor and a query temperature; Gemma 3
//! (`gemma3.rs`) adds query/key norms, norms after each block, GeGLU, scaled embeddings and
//! local layers with their own RoPE base.
//!
//! Per layer: RMSNorm, attention with grouped-query heads and rotary position embeddings
//! (llama.cpp's "normal" RoPE: adjacent pairs rotate), residual; RMSNorm, SwiGLU MLP,
//! residual. A sliding window applies where the metadata declares one: to every layer
//! (`attention.sliding_window`, Mistral 7B v0.1) or to the layers that
//! `attention.sliding_window_pattern` marks (interleaved local and global layers: an array
//! of booleans, one per layer, or a period, as llama.cpp reads it for gemma3 and kin).
//! llama.cpp's own `llama` architecture ignores both keys, and its converter writes
//! Mistral 7B and Ministral 8B without them, so their GGUFs from llama.cpp run with full
//! attention here as there; files that do declare a window get it.
//!
//! The head size may differ from `n_embd / n_head` (`attention.key_length`: Mistral Nemo
//! and Small 3 use 128 where 5120 / 32 = 160).

use anyhow::{Context, Result, anyhow, bail, ensure};
use std::sync::Mutex;

use candle_core::quantized::QMatMul;
use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Module, Tensor};

use super::{Logits, ModelInfo, SeqChunk};
use crate::gguf::GgufFile;
use crate::kernels::attention::{AttentionShape, MAX_HEAD_DIM, SeqAttention, attention};
use crate::kernels::key_offset::KeyOffset;
use crate::kernels::{self, QuantMatrix, Scratch};
use crate::kv::{BLOCK_TOKENS, KvCache, KvPool};

/// Hyper-parameters read from `{arch}.*` metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub context_length: usize,
    pub rope: RopeConfig,
    /// Windowed layers attend to at most this many positions (themselves included).
    pub sliding_window: Option<usize>,
    /// Per layer: whether the window applies (all `true` when no pattern is declared).
    pub swa_layers: Vec<bool>,
    /// The RoPE of windowed layers where it differs from `rope` (Gemma 3's local base).
    pub rope_swa: Option<RopeConfig>,
    /// Multiplies every attention score (`1 / sqrt(head_dim)` unless a family says otherwise).
    pub attention_scale: f32,
    /// Mistral 3 / Llama 4: queries scaled up with their position.
    pub attn_temperature: Option<AttnTemperature>,
    /// Gemma: logits pass through `cap * tanh(logit / cap)`.
    pub final_logit_softcap: Option<f32>,
}

/// Llama 4-style attention temperature (llama.cpp's `attention.temperature_scale`): the
/// query at position `p` is multiplied by `1 + scale * ln(floor(p / floor_scale) + 1)`,
/// so attention sharpens past the original context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnTemperature {
    pub scale: f32,
    pub floor_scale: usize,
}

impl AttnTemperature {
    pub fn factor(&self, pos: usize) -> f32 {
        // As llama.cpp: position as f32, the logarithm in f64.
        let steps = (pos as f32 / self.floor_scale as f32).floor() as f64;
        ((steps + 1.0).ln() * self.scale as f64 + 1.0) as f32
    }
}

#[derive(Debug, Clone)]
pub struct RopeConfig {
    /// Dimensions of each head that rotate (`rope.dimension_count`), the rest pass through.
    pub n_rot: usize,
    pub freq_base: f32,
    /// 1 / scaling factor; 1.0 when the model asks for no scaling.
    pub freq_scale: f32,
    pub scaling: RopeScaling,
    /// Llama 3.1's per-frequency divisors (`rope_freqs.weight`), when present.
    pub freq_factors: Option<Vec<f32>>,
    /// Which dimensions of a head rotate together.
    pub style: RopeStyle,
}

impl RopeConfig {
    /// The pairs of a head's dimensions that rotate together.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        let half = self.n_rot / 2;
        (0..half)
            .map(|i| match self.style {
                RopeStyle::Normal => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            })
            .collect()
    }

    /// Per pair, the angle it turns by per position, and the magnitude scale (YaRN's), in
    /// f64: the angles [`RopeTable`] computes in f32, as `position * speed`.
    pub fn angular_speeds(&self) -> (Vec<f64>, f64) {
        let half = self.n_rot / 2;
        let theta_scale = (self.freq_base as f64).powf(-2.0 / self.n_rot as f64);
        let freq_scale = self.freq_scale as f64;
        let mut mscale = 1.0;
        let speeds = (0..half)
            .map(|i| {
                let ff = self.freq_factors.as_ref().map_or(1.0, |f| f[i] as f64);
                let base = theta_scale.powi(i as i32) / ff;
                match self.scaling {
                    RopeScaling::Yarn {
                        original_context,
                        ext_factor,
                        attn_factor,
                        beta_fast,
                        beta_slow,
                    } => {
                        let (low, high) = yarn_corr_dims(
                            self.n_rot,
                            original_context,
                            self.freq_base,
                            beta_fast,
                            beta_slow,
                        );
                        let ramp = (yarn_ramp(low, high, 2 * i) * ext_factor) as f64;
                        mscale = attn_factor as f64 * (1.0 + 0.1 * (1.0 / freq_scale).ln());
                        freq_scale * base * (1.0 - ramp) + base * ramp
                    }
                    _ => freq_scale * base,
                }
            })
            .collect();
        (speeds, mscale)
    }
}

/// How a head's dimensions pair up for rotation (llama.cpp's rope types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: Llama, Mistral, SmolLM (`LLAMA_ROPE_TYPE_NORM`).
    Normal,
    /// Halves `(i, i + n_rot/2)`: Qwen2, Gemma, GPT-NeoX (`LLAMA_ROPE_TYPE_NEOX`).
    Neox,
}

/// What sets a family apart from plain Llama while sharing its block structure.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub rope_style: RopeStyle,
    /// Qwen2: the Q, K and V projections carry biases (`attn_{q,k,v}.bias`).
    pub qkv_bias: bool,
    /// Gemma 3: each query and key head is RMS-normalised before RoPE (`attn_{q,k}_norm`).
    pub qk_norm: bool,
    /// Gemma 2/3: each block's output is RMS-normalised before it joins the residual
    /// stream (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    pub ffn: FfnActivation,
    /// Gemma: token embeddings are multiplied by `sqrt(n_embd)`.
    pub scale_embeddings: bool,
}

/// The gated feed-forward's activation: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnActivation {
    /// SiLU: Llama, Mistral, Qwen.
    SwiGlu,
    /// GELU, tanh approximation: Gemma.
    GeGlu,
}

impl Family {
    pub const LLAMA: Family = Family {
        rope_style: RopeStyle::Normal,
        qkv_bias: false,
        qk_norm: false,
        post_norms: false,
        ffn: FfnActivation::SwiGlu,
        scale_embeddings: false,
    };
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear,
    Yarn {
        original_context: usize,
        ext_factor: f32,
        attn_factor: f32,
        beta_fast: f32,
        beta_slow: f32,
    },
}

/// A weight matrix: read in place from the memory map by verre's kernels, or, for the
/// few types they do not cover, loaded into candle's quantized storage.
pub(super) enum Weight {
    Mapped(QuantMatrix),
    Candle(QMatMul),
}

impl Weight {
    pub(super) fn load(
        g: &GgufFile,
        name: &str,
        rows: usize,
        cols: usize,
        device: &Device,
    ) -> Result<Self> {
        if device.is_cpu()
            && let Some(m) = g.mapped_matrix(name, rows, cols)?
        {
            let m = m.pack();
            // SAFETY: `mapped_matrix` reads the file's read-only memory map.
            unsafe { m.release_source_pages() };
            return Ok(Weight::Mapped(m));
        }
        let t = g.tensor_with_shape(name, &[rows, cols], device)?;
        Ok(Weight::Candle(QMatMul::from_qtensor(t).map_err(|e| {
            anyhow!("{}: {name}: {e}", g.path().display())
        })?))
    }

    /// `out = x @ W.T` for `m` rows of `x`; `out` is resized to fit and reused.
    pub(super) fn matmul_into(
        &self,
        x: &[f32],
        m: usize,
        out: &mut Vec<f32>,
        scratch: &mut Scratch,
        device: &Device,
    ) -> Result<()> {
        match self {
            Weight::Mapped(w) => {
                out.resize(m * w.rows(), 0.0);
                w.matmul(x, m, out, scratch);
            }
            Weight::Candle(w) => {
                let cols = x.len() / m.max(1);
                let t = Tensor::from_slice(x, (m, cols), device)?;
                *out = matmul(w, &t)?;
            }
        }
        Ok(())
    }
}

/// Products of several weights with one input (Q, K, V; gate, up) into `outs`: one
/// quantization of the input and one parallel pass when all are mapped.
pub(super) fn matmul_shared_input<const N: usize>(
    ws: [&Weight; N],
    x: &[f32],
    m: usize,
    outs: [&mut Vec<f32>; N],
    scratch: &mut Scratch,
    device: &Device,
) -> Result<()> {
    let mapped: [Option<&QuantMatrix>; N] = ws.map(|w| match w {
        Weight::Mapped(q) => Some(q),
        Weight::Candle(_) => None,
    });
    if mapped.iter().all(Option::is_some) {
        let mats = mapped.map(|q| q.expect("checked above"));
        let mut i = 0;
        let mut views: [&mut [f32]; N] = outs.map(|o| {
            o.resize(m * mats[i].rows(), 0.0);
            i += 1;
            o.as_mut_slice()
        });
        kernels::matmul_many(&mats, x, m, &mut views, scratch);
    } else {
        for (w, out) in ws.into_iter().zip(outs) {
            w.matmul_into(x, m, out, scratch, device)?;
        }
    }
    Ok(())
}

/// The buffers of a forward pass, kept between passes: once grown to the batch's size,
/// decoding allocates nothing for activations.
#[derive(Default)]
struct ForwardBuffers {
    kernels: Scratch,
    /// Normalised input of the current block.
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    /// A block's output, before it joins the residual stream.
    out: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    /// Biases of Q, K and V (Qwen2), added after the products.
    qkv_bias: Option<[Vec<f32>; 3]>,
    /// Per-head RMSNorm weights of queries and keys (Gemma 3), applied before RoPE.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Weight,
    /// Norm of the attention output before the residual (Gemma).
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: Weight,
    w_up: Weight,
    w_down: Weight,
    /// Norm of the feed-forward output before the residual (Gemma).
    post_ffn_norm: Option<Vec<f32>>,
}

pub struct Llama {
    cfg: LlamaConfig,
    family: Family,
    info: ModelInfo,
    device: Device,
    token_embd: Embedding,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Weight,
    /// Buffers reused across forwards (one engine thread runs them).
    buffers: Mutex<ForwardBuffers>,
}

/// The token embedding table: rows dequantized on lookup.
pub(super) enum Embedding {
    Mapped(QuantMatrix),
    Candle(candle_core::quantized::QTensor),
}

impl Embedding {
    pub(super) fn lookup(&self, ids: &[u32], dim: usize, device: &Device) -> Result<Vec<f32>> {
        match self {
            Embedding::Mapped(m) => {
                let mut x = vec![0f32; ids.len() * dim];
                for (row, &id) in x.chunks_exact_mut(dim).zip(ids) {
                    m.dequantize_row(id as usize, row);
                }
                Ok(x)
            }
            Embedding::Candle(t) => {
                let ids_t = Tensor::from_slice(ids, ids.len(), device)?;
                Ok(t.embedding(&ids_t)?.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }
}

impl LlamaConfig {
    pub fn from_gguf(g: &GgufFile, arch: &str) -> Result<Self> {
        Self::from_gguf_family(g, arch, Family::LLAMA)
    }

    pub fn from_gguf_family(g: &GgufFile, arch: &str, family: Family) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = g.get_u64(&key("embedding_length"))? as usize;
        let n_head = g.get_u64(&key("attention.head_count"))? as usize;
        let n_kv_head = g
            .get_u64_opt(&key("attention.head_count_kv"))?
            .map_or(n_head, |v| v as usize);
        ensure!(
            n_head > 0 && n_kv_head > 0,
            "{}: attention.head_count must be positive",
            g.path().display()
        );
        ensure!(
            n_head.is_multiple_of(n_kv_head),
            "{}: {n_head} attention heads do not divide into {n_kv_head} key/value heads",
            g.path().display()
        );
        let value_length = g.get_u64_opt(&key("attention.value_length"))?;
        let head_dim = match g.get_u64_opt(&key("attention.key_length"))? {
            Some(v) => {
                if let Some(vl) = value_length {
                    ensure!(
                        vl == v,
                        "{}: attention.key_length {v} differs from attention.value_length {vl}: \
                         verre supports equal key and value head sizes only",
                        g.path().display()
                    );
                }
                v as usize
            }
            None => {
                ensure!(
                    n_embd.is_multiple_of(n_head),
                    "{}: embedding length {n_embd} is not a multiple of {n_head} heads",
                    g.path().display()
                );
                n_embd / n_head
            }
        };
        let n_rot = g
            .get_u64_opt(&key("rope.dimension_count"))?
            .map_or(head_dim, |v| v as usize);
        ensure!(
            n_rot <= head_dim && n_rot % 2 == 0,
            "{}: rope.dimension_count {n_rot} is invalid for head size {head_dim}",
            g.path().display()
        );
        let context_length = g.get_u64(&key("context_length"))? as usize;

        let scaling_type = match g.get(&key("rope.scaling.type")) {
            Some(_) => g.get_str(&key("rope.scaling.type"))?,
            None => "none".to_string(),
        };
        let factor = match g.get_f32_opt(&key("rope.scaling.factor"))? {
            Some(f) => Some(f),
            None => g.get_f32_opt(&key("rope.scale_linear"))?,
        };
        let factor = factor.filter(|f| *f > 0.0 && *f != 1.0);
        let scaling = match (scaling_type.as_str(), factor) {
            (_, None) | ("none", _) => RopeScaling::None,
            ("linear", Some(_)) => RopeScaling::Linear,
            ("yarn", Some(_)) => RopeScaling::Yarn {
                original_context: g
                    .get_u64_opt(&key("rope.scaling.original_context_length"))?
                    .map_or(context_length, |v| v as usize),
                ext_factor: 1.0,
                attn_factor: g
                    .get_f32_opt(&key("rope.scaling.attn_factor"))?
                    .unwrap_or(1.0),
                beta_fast: g
                    .get_f32_opt(&key("rope.scaling.yarn_beta_fast"))?
                    .unwrap_or(32.0),
                beta_slow: g
                    .get_f32_opt(&key("rope.scaling.yarn_beta_slow"))?
                    .unwrap_or(1.0),
            },
            (other, Some(_)) => bail!(
                "{}: rope scaling {other:?} is not supported (linear, yarn)",
                g.path().display()
            ),
        };
        let freq_scale = match scaling {
            RopeScaling::None => 1.0,
            _ => 1.0 / factor.unwrap_or(1.0),
        };

        let n_layer = g.get_u64(&key("block_count"))? as usize;
        let n_ff = g.get_u64(&key("feed_forward_length"))? as usize;
        for (name, v) in [
            ("embedding_length", n_embd),
            ("attention.key_length", head_dim),
            ("feed_forward_length", n_ff),
            ("block_count", n_layer),
            ("context_length", context_length),
        ] {
            ensure!(v > 0, "{}: {arch}.{name} is 0", g.path().display());
        }
        Ok(Self {
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_kv_head,
            head_dim,
            rms_eps: g
                .get_f32_opt(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            context_length,
            rope: RopeConfig {
                n_rot,
                freq_base: g.get_f32_opt(&key("rope.freq_base"))?.unwrap_or(10_000.0),
                freq_scale,
                scaling,
                freq_factors: None,
                style: family.rope_style,
            },
            sliding_window: g
                .get_u64_opt(&key("attention.sliding_window"))?
                .map(|v| v as usize)
                .filter(|&w| w > 0 && w < context_length),
            swa_layers: swa_pattern(g, arch, n_layer, None)?,
            rope_swa: None,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_temperature: None,
            final_logit_softcap: None,
        })
    }

    /// The window of layer `layer`, if it has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.swa_layers[layer])
    }

    /// The RoPE of layer `layer`.
    pub fn rope_of(&self, layer: usize) -> &RopeConfig {
        match &self.rope_swa {
            Some(r) if self.swa_layers[layer] => r,
            _ => &self.rope,
        }
    }
}

/// Which layers are windowed, from `{arch}.attention.sliding_window_pattern` as llama.cpp
/// reads it: an array of booleans, one per layer (`true`: windowed), or a period `n` (layer
/// `i` is windowed unless `i % n == n - 1`; 0 windows every layer). Without the key:
/// `default_period` (Gemma 3: 6, five local layers then one global) or every layer.
pub(super) fn swa_pattern(
    g: &GgufFile,
    arch: &str,
    n_layer: usize,
    default_period: Option<u64>,
) -> Result<Vec<bool>> {
    let key = format!("{arch}.attention.sliding_window_pattern");
    let period = |n: u64| -> Vec<bool> {
        (0..n_layer as u64)
            .map(|i| n == 0 || i % n < n - 1)
            .collect()
    };
    match g.get(&key) {
        None => Ok(default_period.map_or_else(|| vec![true; n_layer], period)),
        Some(Value::Array(items)) => {
            ensure!(
                items.len() == n_layer,
                "{}: {key} has {} entries for {n_layer} layers",
                g.path().display(),
                items.len()
            );
            items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Bool(b) => Ok(*b),
                    other => bail!(
                        "{}: {key}[{i}] is {:?}, expected a boolean",
                        g.path().display(),
                        other.value_type()
                    ),
                })
                .collect()
        }
        Some(_) => Ok(period(g.get_u64(&key)?)),
    }
}

impl Llama {
    pub fn load(g: &GgufFile, arch: &str, device: &Device) -> Result<Self> {
        Self::load_family(g, arch, Family::LLAMA, device)
    }

    /// Load a model of Llama's block structure with a family's differences.
    pub fn load_family(g: &GgufFile, arch: &str, family: Family, device: &Device) -> Result<Self> {
        let cfg = LlamaConfig::from_gguf_family(g, arch, family)?;
        Self::load_config(g, arch, family, cfg, device)
    }

    /// Load the weights for a configuration a family has already adjusted (Gemma 3's local
    /// layers, Mistral 3's temperature). Every tensor of the file must find its place: one
    /// left over belongs to a layout verre does not run, and is named in the error.
    pub fn load_config(
        g: &GgufFile,
        arch: &str,
        family: Family,
        mut cfg: LlamaConfig,
        device: &Device,
    ) -> Result<Self> {
        if g.has_tensor("blk.0.ffn_gate_exps.weight") || g.has_tensor("blk.0.ffn_gate_inp.weight") {
            bail!(
                "{}: mixture-of-experts {arch} models (Mixtral and kin) are not supported yet",
                g.path().display()
            );
        }
        if g.has_tensor("blk.0.attn_qkv.weight") {
            bail!(
                "{}: fused Q/K/V projections (blk.N.attn_qkv.weight) are not supported for {arch}",
                g.path().display()
            );
        }
        let (d, hd) = (cfg.n_embd, cfg.head_dim);
        ensure!(
            hd <= MAX_HEAD_DIM,
            "{}: head size {hd} (attention.key_length) is larger than verre's attention kernel takes ({MAX_HEAD_DIM})",
            g.path().display()
        );
        let q_dim = cfg.n_head * hd;
        let kv_dim = cfg.n_kv_head * hd;

        let (embd_type, embd_shape) = g.tensor_info("token_embd.weight").ok_or_else(|| {
            anyhow!(
                "{}: tensor token_embd.weight is missing",
                g.path().display()
            )
        })?;
        let [vocab, embd_cols] = embd_shape[..] else {
            bail!(
                "{}: token_embd.weight is not a matrix ({embd_type:?} {embd_shape:?})",
                g.path().display()
            )
        };
        ensure!(
            embd_cols == d,
            "{}: token_embd.weight has {embd_cols} columns, expected embedding length {d}",
            g.path().display()
        );
        let token_embd = match g.mapped_matrix("token_embd.weight", vocab, d)? {
            Some(m) if device.is_cpu() => Embedding::Mapped(m),
            _ => Embedding::Candle(g.tensor("token_embd.weight", device)?),
        };

        // Names of the tensors taken, to find any the model would silently ignore.
        let used = std::cell::RefCell::new(std::collections::HashSet::from([
            "token_embd.weight".to_string()
        ]));
        let qmatmul = |name: &str, rows: usize, cols: usize| {
            used.borrow_mut().insert(name.to_string());
            Weight::load(g, name, rows, cols, device)
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
            used.borrow_mut().insert(name.to_string());
            let t = g.tensor_with_shape(name, &[len], device)?;
            t.dequantize(device)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| anyhow!("{}: {name}: {e}", g.path().display()))
        };
        let vector_if =
            |on: bool, name: &str, len: usize| on.then(|| vector(name, len)).transpose();

        if g.has_tensor("rope_freqs.weight") {
            cfg.rope.freq_factors = Some(vector("rope_freqs.weight", cfg.rope.n_rot / 2)?);
        }

        let output_norm = vector("output_norm.weight", d)?;
        // Models with tied embeddings (SmolLM2) have no output.weight: the embedding table
        // doubles as the output projection. The largest matrix is repacked first: while a
        // matrix is repacked its file pages are resident too, and the peak is lowest when
        // that happens before the other matrices are held.
        let output = if g.has_tensor("output.weight") {
            qmatmul("output.weight", vocab, d)?
        } else {
            qmatmul("token_embd.weight", vocab, d)?
        };

        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: vector(&p("attn_norm.weight"), d)?,
                wq: qmatmul(&p("attn_q.weight"), q_dim, d)?,
                wk: qmatmul(&p("attn_k.weight"), kv_dim, d)?,
                wv: qmatmul(&p("attn_v.weight"), kv_dim, d)?,
                qkv_bias: if family.qkv_bias {
                    Some([
                        vector(&p("attn_q.bias"), q_dim)?,
                        vector(&p("attn_k.bias"), kv_dim)?,
                        vector(&p("attn_v.bias"), kv_dim)?,
                    ])
                } else {
                    None
                },
                q_norm: vector_if(family.qk_norm, &p("attn_q_norm.weight"), hd)?,
                k_norm: vector_if(family.qk_norm, &p("attn_k_norm.weight"), hd)?,
                wo: qmatmul(&p("attn_output.weight"), d, q_dim)?,
                post_attn_norm: vector_if(family.post_norms, &p("post_attention_norm.weight"), d)?,
                ffn_norm: vector(&p("ffn_norm.weight"), d)?,
                w_gate: qmatmul(&p("ffn_gate.weight"), cfg.n_ff, d)?,
                w_up: qmatmul(&p("ffn_up.weight"), cfg.n_ff, d)?,
                w_down: qmatmul(&p("ffn_down.weight"), d, cfg.n_ff)?,
                post_ffn_norm: vector_if(family.post_norms, &p("post_ffw_norm.weight"), d)?,
            });
        }

        let used = used.into_inner();
        let mut unused: Vec<&str> = g.tensor_names().filter(|n| !used.contains(*n)).collect();
        if !unused.is_empty() {
            unused.sort_unstable();
            let more = if unused.len() > 4 {
                format!(" and {} more", unused.len() - 4)
            } else {
                String::new()
            };
            bail!(
                "{}: tensor layout not supported for architecture {arch}: verre's {arch} model has no place for {}{more}",
                g.path().display(),
                unused[..unused.len().min(4)].join(", ")
            );
        }

        let info = ModelInfo {
            architecture: arch.to_string(),
            name: g.get_str("general.name").ok(),
            vocab_size: vocab,
            context_length: cfg.context_length,
            embedding_length: d,
            block_count: cfg.n_layer,
        };
        Ok(Self {
            cfg,
            family,
            info,
            device: device.clone(),
            token_embd,
            layers,
            output_norm,
            output,
            buffers: Mutex::new(ForwardBuffers::default()),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn new_kv_cache(&self) -> KvCache {
        KvCache::new(
            self.cfg.n_layer,
            self.cfg.n_kv_head * self.cfg.head_dim,
            self.cfg.context_length,
        )
    }

    /// Per layer, the largest magnitude of its key bias (0 without one): a large one puts
    /// the same big offset in every key of the layer.
    pub fn key_bias_max(&self) -> Vec<f32> {
        self.layers
            .iter()
            .map(|l| {
                l.qkv_bias.as_ref().map_or(0.0, |[_, bk, _]| {
                    bk.iter().fold(0f32, |m, x| m.max(x.abs()))
                })
            })
            .collect()
    }

    /// Per layer, the offset a quantized cache takes out of its keys (see
    /// `kernels::key_offset`): for layers whose key bias reaches `from`, the bias as RoPE
    /// turns it. `Err(layer)`: a layer whose keys are normalised after the bias (the offset
    /// is not the bias then): its keys must stay f16.
    pub fn key_offsets(&self, from: f32) -> Vec<Result<Option<KeyOffset>, usize>> {
        let hd = self.cfg.head_dim;
        self.layers
            .iter()
            .enumerate()
            .map(|(li, l)| {
                let Some([_, bk, _]) = &l.qkv_bias else {
                    return Ok(None);
                };
                if bk.iter().all(|b| b.abs() < from) {
                    return Ok(None);
                }
                if l.k_norm.is_some() {
                    return Err(li);
                }
                let rope = self.cfg.rope_of(li);
                let (speeds, mscale) = rope.angular_speeds();
                Ok(Some(KeyOffset::new(bk, hd, &rope.pairs(), &speeds, mscale)))
            })
            .collect()
    }

    /// Layers and values per position: the shape of this model's KV blocks.
    pub fn kv_geometry(&self) -> (usize, usize) {
        (self.cfg.n_layer, self.cfg.n_kv_head * self.cfg.head_dim)
    }

    /// One pass over the weights for every sequence of the batch. The new tokens of all
    /// sequences are stacked into one activation matrix for the matrix products; attention
    /// runs per sequence over its own cache.
    pub fn forward(&self, pool: &mut KvPool, batch: &mut [SeqChunk<'_>]) -> Result<Logits> {
        // Run on a worker of the pool: the kernels' parallel loops then start without a trip
        // through the pool's injection queue (roughly halves the cost of a small product).
        rayon::scope(|_| self.forward_in_pool(pool, batch))
    }

    fn forward_in_pool(&self, pool: &mut KvPool, batch: &mut [SeqChunk<'_>]) -> Result<Logits> {
        let cfg = &self.cfg;
        let (d, hd) = (cfg.n_embd, cfg.head_dim);
        let q_dim = cfg.n_head * hd;
        let kv_dim = cfg.n_kv_head * hd;

        // The absolute position of each stacked row.
        let mut row_pos = Vec::new();
        let mut ids = Vec::new();
        for (s, chunk) in batch.iter_mut().enumerate() {
            ensure!(
                !chunk.tokens.is_empty(),
                "forward: sequence {s} has no new tokens"
            );
            let start = chunk.kv.len();
            let end = start + chunk.tokens.len();
            ensure!(
                end <= chunk.kv.capacity(),
                "sequence of {end} tokens exceeds the model's context length of {}",
                chunk.kv.capacity()
            );
            ensure!(
                pool.reserve(chunk.kv, end),
                "the KV cache is full: no free block for sequence {s}"
            );
            for (i, &t) in chunk.tokens.iter().enumerate() {
                ensure!(
                    (t as usize) < self.info.vocab_size,
                    "token id {t} is outside the vocabulary ({})",
                    self.info.vocab_size
                );
                row_pos.push(start + i);
                ids.push(t);
            }
        }
        let n_rows = ids.len();
        let rope = RopeTable::new(&cfg.rope, &row_pos);
        let rope_swa = cfg.rope_swa.as_ref().map(|r| RopeTable::new(r, &row_pos));
        let temperature: Option<Vec<f32>> = cfg
            .attn_temperature
            .map(|t| row_pos.iter().map(|&p| t.factor(p)).collect());

        let mut x = self.token_embd.lookup(&ids, d, &self.device)?;
        if self.family.scale_embeddings {
            let scale = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
        // The shared buffers when free. Never wait for them: two engines may share one model,
        // and a pool worker blocked inside one forward can pick up another forward of the same
        // model (work stealing), which would then wait on a lock its own stack holds.
        let mut own = None;
        let mut shared = match self.buffers.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let bufs: &mut ForwardBuffers = match shared.as_deref_mut() {
            Some(b) => b,
            None => own.insert(ForwardBuffers::default()),
        };
        let ForwardBuffers {
            kernels: scratch,
            h,
            q,
            k,
            v,
            attn,
            out,
            gate,
            up,
        } = bufs;
        let dev = &self.device;

        for (li, layer) in self.layers.iter().enumerate() {
            let attn_shape = AttentionShape {
                n_head: cfg.n_head,
                n_kv_head: cfg.n_kv_head,
                head_dim: hd,
                scale: cfg.attention_scale,
                window: cfg.window(li),
            };
            let rope = match &rope_swa {
                Some(local) if cfg.swa_layers[li] => local,
                _ => &rope,
            };
            // Attention block.
            rms_norm(&x, &layer.attn_norm, cfg.rms_eps, h);
            matmul_shared_input(
                [&layer.wq, &layer.wk, &layer.wv],
                h,
                n_rows,
                [&mut *q, &mut *k, &mut *v],
                scratch,
                dev,
            )?;
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                add_row_bias(q, bq);
                add_row_bias(k, bk);
                add_row_bias(v, bv);
            }
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                rms_norm_in_place(q, qn, cfg.rms_eps);
                rms_norm_in_place(k, kn, cfg.rms_eps);
            }
            rope.apply(q, cfg.n_head, hd);
            rope.apply(k, cfg.n_kv_head, hd);
            if let Some(t) = &temperature {
                for (row, &f) in q.chunks_exact_mut(q_dim).zip(t) {
                    row.iter_mut().for_each(|v| *v *= f);
                }
            }

            let mut row = 0;
            for chunk in batch.iter_mut() {
                let n = chunk.tokens.len();
                pool.write(
                    li,
                    chunk.kv,
                    chunk.kv.len(),
                    &k[row * kv_dim..(row + n) * kv_dim],
                    &v[row * kv_dim..(row + n) * kv_dim],
                );
                row += n;
            }
            // Each sequence's blocks, through its block table, up to its new positions.
            let blocks: Vec<_> = batch
                .iter()
                .map(|c| pool.layer_blocks(li, c.kv, c.kv.len() + c.tokens.len()))
                .collect();
            let key_offset = pool.key_offset(li);
            let mut row = 0;
            let seqs: Vec<SeqAttention<'_>> = batch
                .iter()
                .zip(&blocks)
                .map(|(c, (k, v))| {
                    let n = c.tokens.len();
                    row += n;
                    SeqAttention {
                        k,
                        v,
                        block_len: BLOCK_TOKENS,
                        len: c.kv.len() + n,
                        rows: row - n..row,
                        key_offset,
                    }
                })
                .collect();
            attn.resize(n_rows * q_dim, 0.0);
            attention(&attn_shape, &seqs, q, attn);
            layer.wo.matmul_into(attn, n_rows, out, scratch, dev)?;
            add_block_output(&mut x, out, layer.post_attn_norm.as_deref(), cfg.rms_eps, h);

            // Feed-forward block.
            rms_norm(&x, &layer.ffn_norm, cfg.rms_eps, h);
            matmul_shared_input(
                [&layer.w_gate, &layer.w_up],
                h,
                n_rows,
                [&mut *gate, &mut *up],
                scratch,
                dev,
            )?;
            match self.family.ffn {
                FfnActivation::SwiGlu => {
                    for (g, u) in gate.iter_mut().zip(up.iter()) {
                        *g = silu(*g) * u;
                    }
                }
                FfnActivation::GeGlu => {
                    for (g, u) in gate.iter_mut().zip(up.iter()) {
                        *g = gelu_f16_table(*g) * u;
                    }
                }
            }
            layer.w_down.matmul_into(gate, n_rows, out, scratch, dev)?;
            add_block_output(&mut x, out, layer.post_ffn_norm.as_deref(), cfg.rms_eps, h);
        }
        for chunk in batch.iter_mut() {
            chunk.kv.commit(chunk.tokens.len());
        }

        // Logits only for the rows that were asked for.
        let mut selected = Vec::new();
        let mut rows = Vec::with_capacity(batch.len());
        let mut row = 0;
        for chunk in batch.iter() {
            let n = chunk.tokens.len();
            let first = if chunk.all_logits { row } else { row + n - 1 };
            let start = selected.len() / d;
            selected.extend_from_slice(&x[first * d..(row + n) * d]);
            rows.push(start..selected.len() / d);
            row += n;
        }
        let n_out = selected.len() / d;
        rms_norm(&selected, &self.output_norm, cfg.rms_eps, h);
        let mut data = Vec::new();
        self.output.matmul_into(h, n_out, &mut data, scratch, dev)?;
        if let Some(cap) = cfg.final_logit_softcap {
            data.iter_mut().for_each(|l| *l = (*l / cap).tanh() * cap);
        }
        Ok(Logits {
            data,
            vocab: self.info.vocab_size,
            rows,
        })
    }
}

/// `x @ w.T` through candle's quantized kernels, returned as a flat row-major vector.
fn matmul(w: &QMatMul, x: &Tensor) -> Result<Vec<f32>> {
    w.forward(x)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .context("quantized matrix product")
}

/// Root-mean-square normalisation of each row, scaled by `weight`. The mean of squares is
/// summed in f64, as ggml does.
pub(super) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut Vec<f32>) {
    let d = weight.len();
    out.resize(x.len(), 0.0);
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
        let scale = 1.0 / ((mean as f32) + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// RMS normalisation of each `weight.len()` values of `x` in place: per head when the
/// weights are a head's (Gemma 3's query and key norms).
pub(super) fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(weight.len()) {
        let mean = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / weight.len() as f64;
        let scale = 1.0 / ((mean as f32) + eps).sqrt();
        for (v, &w) in row.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

/// `x += out`, through the block's post-norm when it has one (`scratch` holds the normed
/// output).
fn add_block_output(
    x: &mut [f32],
    out: &[f32],
    post_norm: Option<&[f32]>,
    eps: f32,
    scratch: &mut Vec<f32>,
) {
    match post_norm {
        Some(w) => {
            rms_norm(out, w, eps, scratch);
            add_assign(x, scratch);
        }
        None => add_assign(x, out),
    }
}

/// Add `bias` to every row of `x`.
pub(super) fn add_row_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (a, b) in row.iter_mut().zip(bias) {
            *a += b;
        }
    }
}

pub(super) fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation.
pub(super) fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
}

/// GELU as llama.cpp's CPU backend computes it: the input rounded to f16 and looked up in a
/// table of f16 results; identity above 10 and zero below -10.
pub(super) fn gelu_f16_table(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        let xh = half::f16::from_f32(x).to_f32();
        half::f16::from_f32(gelu(xh)).to_f32()
    }
}

/// Cosines and sines for every stacked row's position, computed once per forward and
/// shared by all layers.
pub(super) struct RopeTable {
    n_rot: usize,
    style: RopeStyle,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub(super) fn new(cfg: &RopeConfig, positions: &[usize]) -> Self {
        let half = cfg.n_rot / 2;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        let theta_scale = cfg.freq_base.powf(-2.0 / cfg.n_rot as f32);
        let yarn = match cfg.scaling {
            RopeScaling::Yarn {
                original_context,
                ext_factor,
                attn_factor,
                beta_fast,
                beta_slow,
            } => {
                let dims = yarn_corr_dims(
                    cfg.n_rot,
                    original_context,
                    cfg.freq_base,
                    beta_fast,
                    beta_slow,
                );
                Some((dims, ext_factor, attn_factor))
            }
            _ => None,
        };
        for &pos in positions {
            let mut theta_extrap = pos as f32;
            for i in 0..half {
                let ff = cfg.freq_factors.as_ref().map_or(1.0, |f| f[i]);
                let base = theta_extrap / ff;
                let (theta, mscale) = match yarn {
                    None => (cfg.freq_scale * base, 1.0),
                    Some(((low, high), ext, attn)) => {
                        let interp = cfg.freq_scale * base;
                        let ramp = yarn_ramp(low, high, 2 * i) * ext;
                        let theta = interp * (1.0 - ramp) + base * ramp;
                        let mscale = attn * (1.0 + 0.1 * (1.0 / cfg.freq_scale).ln());
                        (theta, mscale)
                    }
                };
                cos.push(theta.cos() * mscale);
                sin.push(theta.sin() * mscale);
                theta_extrap *= theta_scale;
            }
        }
        Self {
            n_rot: cfg.n_rot,
            style: cfg.style,
            cos,
            sin,
        }
    }

    /// Rotate the first `n_rot` dimensions of every head of every row: pairs (2i, 2i+1) in
    /// the normal style, (i, i + n_rot/2) in the NeoX style.
    pub(super) fn apply(&self, x: &mut [f32], n_heads: usize, head_dim: usize) {
        let half = self.n_rot / 2;
        let (stride, offset) = match self.style {
            RopeStyle::Normal => (2, 1),
            RopeStyle::Neox => (1, half),
        };
        for (row, xr) in x.chunks_exact_mut(n_heads * head_dim).enumerate() {
            let cos = &self.cos[row * half..(row + 1) * half];
            let sin = &self.sin[row * half..(row + 1) * half];
            for head in xr.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = (stride * i, stride * i + offset);
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

/// The first and last rotary dimension YaRN blends between interpolation and extrapolation.
fn yarn_corr_dims(
    n_rot: usize,
    original_context: usize,
    base: f32,
    beta_fast: f32,
    beta_slow: f32,
) -> (f32, f32) {
    let corr_dim = |n_rotations: f32| {
        n_rot as f32 * (original_context as f32 / (n_rotations * 2.0 * std::f32::consts::PI)).ln()
            / (2.0 * base.ln())
    };
    let start = corr_dim(beta_fast).floor().max(0.0);
    let end = corr_dim(beta_slow).ceil().min(n_rot as f32 - 1.0);
    (start, end)
}

fn yarn_ramp(low: f32, high: f32, i0: usize) -> f32 {
    let y = (i0 as f32 / 2.0 - low) / (high - low).max(0.001);
    1.0 - y.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_gguf;

    #[test]
    fn rms_norm_matches_definition() {
        let x = [1.0f32, -2.0, 3.0, 0.5, 4.0, 4.0, 4.0, 4.0];
        let w = [1.0f32, 2.0, 0.5, 1.0];
        let mut out = Vec::new();
        rms_norm(&x, &w, 1e-5, &mut out);
        let ms: f32 = (1.0 + 4.0 + 9.0 + 0.25) / 4.0;
        let s = 1.0 / (ms + 1e-5).sqrt();
        assert!((out[1] - (-2.0 * s * 2.0)).abs() < 1e-6);
        // A constant row normalises to the weights.
        assert!((out[4] - 1.0).abs() < 1e-5 && (out[5] - 2.0).abs() < 1e-5);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let cfg = RopeConfig {
            n_rot: 4,
            freq_base: 10_000.0,
            freq_scale: 1.0,
            scaling: RopeScaling::None,
            freq_factors: None,
            style: RopeStyle::Normal,
        };
        let table = RopeTable::new(&cfg, &[0, 7]);
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0];
        table.apply(&mut x, 1, 4);
        assert_eq!(&x[..4], &[1.0, 2.0, 3.0, 4.0]);
        let n0: f32 = [1.0f32, 2.0].iter().map(|v| v * v).sum();
        let n1: f32 = x[4..6].iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
        // First pair rotates by exactly 7 radians.
        let (c, s) = (7f32.cos(), 7f32.sin());
        assert!((x[4] - (c - 2.0 * s)).abs() < 1e-5);
    }

    #[test]
    fn neox_rope_rotates_halves_together() {
        let cfg = RopeConfig {
            n_rot: 4,
            freq_base: 10_000.0,
            freq_scale: 1.0,
            scaling: RopeScaling::None,
            freq_factors: None,
            style: RopeStyle::Neox,
        };
        let table = RopeTable::new(&cfg, &[3]);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        table.apply(&mut x, 1, 4);
        // Pair (0, 2) turns by 3 radians, pair (1, 3) by 3 / sqrt(10000) radians.
        let (c0, s0) = (3f32.cos(), 3f32.sin());
        assert!((x[0] - (1.0 * c0 - 3.0 * s0)).abs() < 1e-5);
        assert!((x[2] - (1.0 * s0 + 3.0 * c0)).abs() < 1e-5);
        let t1 = 3.0 * 10_000f32.powf(-0.5);
        assert!((x[1] - (2.0 * t1.cos() - 4.0 * t1.sin())).abs() < 1e-5);
        assert!((x[3] - (2.0 * t1.sin() + 4.0 * t1.cos())).abs() < 1e-5);
    }

    #[test]
    fn rope_base_1e9_stays_within_f32_rounding_of_exact_angles() {
        // Mistral Small 3 / Ministral 3 rotate with base 1e9 (exact in f32). Angles are
        // computed as ggml computes them (f32, one multiplication per pair), so their
        // error grows with the position: measured <= 3.4e-8 x position, 0.004 rad at 128K.
        let cfg = RopeConfig {
            n_rot: 128,
            freq_base: 1e9,
            freq_scale: 1.0,
            scaling: RopeScaling::None,
            freq_factors: None,
            style: RopeStyle::Normal,
        };
        assert_eq!(cfg.freq_base as f64, 1e9);
        let positions = [0usize, 1, 4095, 32767, 131071];
        let table = RopeTable::new(&cfg, &positions);
        for (r, &pos) in positions.iter().enumerate() {
            for i in 0..64 {
                let theta = pos as f64 * 1e9f64.powf(-2.0 * i as f64 / 128.0);
                let (c, s) = (table.cos[r * 64 + i] as f64, table.sin[r * 64 + i] as f64);
                let bound = 1e-7 * pos as f64 + 1e-6;
                assert!(
                    (c - theta.cos()).abs() <= bound && (s - theta.sin()).abs() <= bound,
                    "position {pos}, pair {i}: ({c}, {s}) vs angle {theta}"
                );
            }
        }
    }

    #[test]
    fn angular_speeds_turn_as_the_rope_table_turns() {
        // What a quantized cache takes out of keys (`key_offset`) must be the bias as the
        // table rotates it: plain, linear, YaRN with per-frequency factors.
        let plain = RopeConfig {
            n_rot: 64,
            freq_base: 1e6,
            freq_scale: 1.0,
            scaling: RopeScaling::None,
            freq_factors: None,
            style: RopeStyle::Neox,
        };
        let linear = RopeConfig {
            freq_scale: 0.25,
            scaling: RopeScaling::Linear,
            style: RopeStyle::Normal,
            ..plain.clone()
        };
        let yarn = RopeConfig {
            freq_base: 1e4,
            freq_scale: 0.25,
            scaling: RopeScaling::Yarn {
                original_context: 4096,
                ext_factor: 1.0,
                attn_factor: 1.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
            },
            freq_factors: Some((0..32).map(|i| 1.0 + i as f32 / 8.0).collect()),
            ..plain.clone()
        };
        let positions = [0usize, 1, 7, 300, 4095];
        for cfg in [plain, linear, yarn] {
            let (speeds, mscale) = cfg.angular_speeds();
            let table = RopeTable::new(&cfg, &positions);
            for (r, &pos) in positions.iter().enumerate() {
                for (i, w) in speeds.iter().enumerate() {
                    let (s, c) = (w * pos as f64).sin_cos();
                    let got = (table.cos[r * 32 + i] as f64, table.sin[r * 32 + i] as f64);
                    let bound = 1e-7 * pos as f64 + 1e-6;
                    assert!(
                        (got.0 - c * mscale).abs() <= bound && (got.1 - s * mscale).abs() <= bound,
                        "{:?} position {pos}, pair {i}: {got:?} vs {:?}",
                        cfg.scaling,
                        (c * mscale, s * mscale)
                    );
                }
            }
        }
    }

    #[test]
    fn attention_temperature_steps_with_the_original_context() {
        let t = AttnTemperature {
            scale: 0.1,
            floor_scale: 16,
        };
        assert_eq!(t.factor(0), 1.0);
        assert_eq!(t.factor(15), 1.0);
        assert!((t.factor(16) - (1.0 + 0.1 * 2f32.ln())).abs() < 1e-7);
        assert!((t.factor(50) - (1.0 + 0.1 * 4f32.ln())).abs() < 1e-7);
    }

    fn config(md: &[(String, Value)]) -> Result<LlamaConfig> {
        let dir = tempfile::tempdir().unwrap();
        let g = test_gguf::write(&dir, "cfg.gguf", md, &[]);
        LlamaConfig::from_gguf(&g, "llama")
    }

    fn with(extra: Vec<(&str, Value)>) -> Vec<(String, Value)> {
        let mut md = test_gguf::base_metadata("llama", 4);
        md.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        md
    }

    #[test]
    fn sliding_window_applies_to_every_layer_without_a_pattern() {
        let cfg = config(&with(vec![(
            "llama.attention.sliding_window",
            Value::U32(16),
        )]))
        .unwrap();
        assert_eq!(
            (0..4).map(|l| cfg.window(l)).collect::<Vec<_>>(),
            vec![Some(16); 4]
        );
        let cfg = config(&with(vec![])).unwrap();
        assert_eq!(cfg.window(0), None);
        // A window as long as the context is no window.
        let cfg = config(&with(vec![(
            "llama.attention.sliding_window",
            Value::U32(256),
        )]))
        .unwrap();
        assert_eq!(cfg.window(3), None);
    }

    #[test]
    fn sliding_window_pattern_as_booleans_or_a_period() {
        let flags = |v: &[bool]| Value::Array(v.iter().map(|&b| Value::Bool(b)).collect());
        let cfg = config(&with(vec![
            ("llama.attention.sliding_window", Value::U32(16)),
            (
                "llama.attention.sliding_window_pattern",
                flags(&[true, false, true, true]),
            ),
        ]))
        .unwrap();
        let windows: Vec<_> = (0..4).map(|l| cfg.window(l)).collect();
        assert_eq!(windows, vec![Some(16), None, Some(16), Some(16)]);
        // Period 2: every second layer global (llama.cpp: windowed when i % n < n - 1).
        let cfg = config(&with(vec![
            ("llama.attention.sliding_window", Value::U32(16)),
            ("llama.attention.sliding_window_pattern", Value::U32(2)),
        ]))
        .unwrap();
        assert_eq!(cfg.swa_layers, vec![true, false, true, false]);
        let cfg = config(&with(vec![
            ("llama.attention.sliding_window", Value::U32(16)),
            ("llama.attention.sliding_window_pattern", Value::U32(0)),
        ]))
        .unwrap();
        assert_eq!(cfg.swa_layers, vec![true; 4]);
    }

    #[test]
    fn a_malformed_pattern_is_an_error_naming_the_key() {
        let e = config(&with(vec![
            ("llama.attention.sliding_window", Value::U32(16)),
            (
                "llama.attention.sliding_window_pattern",
                Value::Array(vec![Value::Bool(true)]),
            ),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("sliding_window_pattern has 1 entries for 4 layers"),
            "{e}"
        );
        let e = config(&with(vec![(
            "llama.attention.sliding_window_pattern",
            Value::Array(vec![Value::U32(1); 4]),
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("sliding_window_pattern[0]") && e.contains("expected a boolean"),
            "{e}"
        );
    }

    #[test]
    fn head_size_and_rope_base_come_from_the_metadata() {
        // Mistral Nemo's shape in small: 4 heads of 16 where 32 / 4 = 8.
        let cfg = config(&with(vec![
            ("llama.attention.key_length", Value::U32(16)),
            ("llama.attention.value_length", Value::U32(16)),
            ("llama.rope.freq_base", Value::F32(1e9)),
        ]))
        .unwrap();
        assert_eq!((cfg.head_dim, cfg.rope.n_rot, cfg.n_embd), (16, 16, 32));
        assert_eq!(cfg.rope.freq_base, 1e9);
        assert_eq!(cfg.attention_scale, 0.25);
        let e = config(&with(vec![
            ("llama.attention.key_length", Value::U32(16)),
            ("llama.attention.value_length", Value::U32(8)),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("differs from attention.value_length"), "{e}");
    }

    #[test]
    fn yarn_ramp_is_one_below_low_and_zero_above_high() {
        assert_eq!(yarn_ramp(4.0, 10.0, 2), 1.0);
        assert_eq!(yarn_ramp(4.0, 10.0, 40), 0.0);
        let mid = yarn_ramp(4.0, 10.0, 14);
        assert!(mid > 0.0 && mid < 1.0);
    }
}
