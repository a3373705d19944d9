//! Model architectures. Every architecture exposes one batched forward: many sequences,
//! each with its own new tokens and its own KV cache, in a single pass over the weights.

pub mod bert;
pub mod gemma3;
pub mod llama;
pub mod mistral3;
pub mod ner;
pub mod onnx;
pub mod qwen2;

use std::ops::Range;
use std::sync::Arc;

use anyhow::{Result, bail};
use candle_core::Device;

use crate::gguf::GgufFile;
use crate::kv::{KvCache, KvCacheType, KvLayout, KvPool, SeqKv};

/// One sequence's part of a forward pass: the tokens it adds now (a prompt chunk or one
/// decoded token) and its cache, whose length is the position of the first new token.
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    pub kv: &'a mut SeqKv,
    /// Logits for every new token (teacher forcing, prompt logprobs) or only for the last.
    pub all_logits: bool,
}

/// Logits of a forward pass: one row per requested position, rows of `vocab` floats.
pub struct Logits {
    pub data: Vec<f32>,
    pub vocab: usize,
    /// For each sequence of the batch, in order, the range of its rows in `data`.
    pub rows: Vec<Range<usize>>,
}

impl Logits {
    pub fn row(&self, row: usize) -> &[f32] {
        &self.data[row * self.vocab..(row + 1) * self.vocab]
    }

    /// The last row of sequence `seq` of the batch: the distribution of its next token.
    pub fn last_row(&self, seq: usize) -> &[f32] {
        self.row(self.rows[seq].end - 1)
    }
}

/// What a loaded model looks like from outside.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub architecture: String,
    pub name: Option<String>,
    pub vocab_size: usize,
    pub context_length: usize,
    pub embedding_length: usize,
    pub block_count: usize,
}

/// The GGUF architectures [`Model::load`] accepts, for error messages.
pub const SUPPORTED: &str = "llama, mistral, mistral3, qwen2, gemma3 — Llama, Mistral 7B/Nemo/Small, \
     Ministral 3, SmolLM, Qwen2/2.5, Gemma 3 and their kin";

/// A loaded model of any supported architecture.
pub enum Model {
    Llama(llama::Llama),
}

impl Model {
    /// Load the weights of a GGUF file; the architecture comes from `general.architecture`.
    pub fn load(gguf: &GgufFile, device: &Device) -> Result<Self> {
        let arch = gguf.architecture()?;
        match arch.as_str() {
            "llama" | "mistral" => Ok(Model::Llama(llama::Llama::load(gguf, &arch, device)?)),
            "qwen2" => Ok(Model::Llama(qwen2::load(gguf, device)?)),
            "mistral3" => Ok(Model::Llama(mistral3::load(gguf, device)?)),
            "gemma3" => Ok(Model::Llama(gemma3::load(gguf, device)?)),
            "mistral4" => bail!(
                "{}: architecture \"mistral4\" is not supported: it is DeepSeek-V2's block \
                 (multi-head latent attention and mixture-of-experts), which verre does not run",
                gguf.path().display()
            ),
            other => bail!(
                "{}: architecture {other:?} is not supported (verre runs: {SUPPORTED})",
                gguf.path().display()
            ),
        }
    }

    pub fn info(&self) -> &ModelInfo {
        match self {
            Model::Llama(m) => m.info(),
        }
    }

    pub fn new_kv_cache(&self) -> KvCache {
        match self {
            Model::Llama(m) => m.new_kv_cache(),
        }
    }

    /// A pool of `num_blocks` f16 KV blocks shaped for this model.
    pub fn new_kv_pool(&self, num_blocks: usize) -> KvPool {
        let (layers, width) = self.kv_geometry();
        KvPool::new(layers, width, num_blocks)
    }

    /// How this model's KV cache is laid out when stored as `kind`; an error when its
    /// attention heads do not fit `kind`'s blocks. Layers with a large key bias store their
    /// keys less its rotation (see [`KvLayout::key_offsets`]), or in f16 where that cannot
    /// be done ([`KvLayout::f16_key_layers`]).
    pub fn kv_layout(&self, kind: KvCacheType) -> Result<KvLayout> {
        kind.check_head_dim(self.head_dim())?;
        let (layers, width) = self.kv_geometry();
        let mut layout = KvLayout::new(kind, layers, width, self.head_dim());
        if kind != KvCacheType::F16 {
            let Model::Llama(m) = self;
            let offsets = m.key_offsets(OFFSET_KEYS_ABOVE_BIAS);
            layout.f16_key_layers = offsets.iter().map(Result::is_err).collect();
            layout.key_offsets = offsets
                .into_iter()
                .map(|o| o.ok().flatten().map(Arc::new))
                .collect();
        }
        Ok(layout)
    }

    /// A pool of `num_blocks` KV blocks stored as `kind`.
    pub fn new_kv_pool_as(&self, kind: KvCacheType, num_blocks: usize) -> Result<KvPool> {
        Ok(KvPool::with_layout(&self.kv_layout(kind)?, num_blocks))
    }

    /// One sequence with a cache of its own for the whole context, stored as `kind`.
    pub fn new_kv_cache_as(&self, kind: KvCacheType) -> Result<KvCache> {
        let layout = self.kv_layout(kind)?;
        Ok(KvCache::with_layout(&layout, self.info().context_length))
    }

    fn head_dim(&self) -> usize {
        match self {
            Model::Llama(m) => m.config().head_dim,
        }
    }

    /// Layers and values per position of this model's KV blocks.
    pub fn kv_geometry(&self) -> (usize, usize) {
        match self {
            Model::Llama(m) => m.kv_geometry(),
        }
    }

    /// One batched pass: every sequence's new tokens, their keys and values written into
    /// `pool` through each sequence's block table.
    pub fn forward(&self, pool: &mut KvPool, batch: &mut [SeqChunk<'_>]) -> Result<Logits> {
        match self {
            Model::Llama(m) => m.forward(pool, batch),
        }
    }

    /// One sequence with a cache of its own.
    pub fn forward_cache(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<Logits> {
        let KvCache { pool, seq } = cache;
        self.forward(
            pool,
            &mut [SeqChunk {
                tokens,
                kv: seq,
                all_logits,
            }],
        )
    }
}

/// A layer whose key bias reaches this magnitude stores its keys less the bias's rotation
/// in a quantized cache (`kernels::key_offset`), or in f16 where that offset cannot be
/// taken out. Qwen2.5-Coder's first layers have biases of 66-354 (keys of norm ~390 that
/// differ by a few units); the other layers of these files, and models without a key bias,
/// stay under 12 but for a few at 21-46. Measured on Qwen2.5-Coder-0.5B (q8_0, teacher-forced
/// against llama.cpp): every key in q8_0 mean |Δ logprob| 0.126 / max 4.5; layers 0-2 in
/// f16, 0.059 / 0.50.
const OFFSET_KEYS_ABOVE_BIAS: f32 = 32.0;

/// Tiny GGUF files written by tests: metadata for config parsing, and F32 tensors of a
/// one-layer model for load errors.
#[cfg(test)]
pub(crate) mod test_gguf {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{DType, Device, Tensor};

    use crate::gguf::GgufFile;

    pub const DIM: usize = 32;
    pub const FF: usize = 64;
    pub const VOCAB: usize = 16;

    /// The `{arch}.*` keys of a one-layer model: 4 heads of 8 over 2 KV heads.
    pub fn base_metadata(arch: &str, n_layer: u32) -> Vec<(String, Value)> {
        vec![
            ("general.architecture".into(), Value::String(arch.into())),
            (format!("{arch}.context_length"), Value::U32(256)),
            (format!("{arch}.embedding_length"), Value::U32(DIM as u32)),
            (format!("{arch}.feed_forward_length"), Value::U32(FF as u32)),
            (format!("{arch}.block_count"), Value::U32(n_layer)),
            (format!("{arch}.attention.head_count"), Value::U32(4)),
            (format!("{arch}.attention.head_count_kv"), Value::U32(2)),
        ]
    }

    /// The tensors of a one-layer Llama with `DIM`/`FF`/`VOCAB` and head size `hd`.
    pub fn llama_tensors(hd: usize) -> Vec<(String, QTensor)> {
        let (q_dim, kv_dim) = (4 * hd, 2 * hd);
        [
            ("token_embd.weight", vec![VOCAB, DIM]),
            ("output_norm.weight", vec![DIM]),
            ("blk.0.attn_norm.weight", vec![DIM]),
            ("blk.0.attn_q.weight", vec![q_dim, DIM]),
            ("blk.0.attn_k.weight", vec![kv_dim, DIM]),
            ("blk.0.attn_v.weight", vec![kv_dim, DIM]),
            ("blk.0.attn_output.weight", vec![DIM, q_dim]),
            ("blk.0.ffn_norm.weight", vec![DIM]),
            ("blk.0.ffn_gate.weight", vec![FF, DIM]),
            ("blk.0.ffn_up.weight", vec![FF, DIM]),
            ("blk.0.ffn_down.weight", vec![DIM, FF]),
        ]
        .into_iter()
        .map(|(n, shape)| (n.to_string(), tensor(&shape)))
        .collect()
    }

    pub fn tensor(shape: &[usize]) -> QTensor {
        let t = Tensor::full(0.01f32, shape, &Device::Cpu).and_then(|t| t.to_dtype(DType::F32));
        QTensor::quantize(&t.expect("tensor"), GgmlDType::F32).expect("F32 tensor")
    }

    /// Write the file into `dir` and open it.
    pub fn write(
        dir: &tempfile::TempDir,
        name: &str,
        md: &[(String, Value)],
        tensors: &[(String, QTensor)],
    ) -> GgufFile {
        let path = dir.path().join(name);
        let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut f = std::fs::File::create(&path).expect("creating the test GGUF");
        gguf_file::write(&mut f, &md, &ts).expect("writing the test GGUF");
        GgufFile::open(&path).expect("opening the test GGUF")
    }
}

#[cfg(test)]
mod tests {
    use super::test_gguf::*;
    use super::*;
    use candle_core::quantized::gguf_file::Value;

    fn load_err(g: &GgufFile) -> String {
        match Model::load(g, &Device::Cpu) {
            Ok(_) => panic!("{} loaded but should not have", g.path().display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_tiny_llama_loads_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let g = write(
            &dir,
            "ok.gguf",
            &base_metadata("llama", 1),
            &llama_tensors(8),
        );
        let model = Model::load(&g, &Device::Cpu).unwrap();
        let logits = model
            .forward_cache(&mut model.new_kv_cache(), &[1, 2, 3], false)
            .unwrap();
        assert_eq!(logits.last_row(0).len(), VOCAB);
    }

    #[test]
    fn mistral4_and_unknown_architectures_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let g = write(&dir, "m4.gguf", &base_metadata("mistral4", 1), &[]);
        let e = load_err(&g);
        assert!(
            e.contains("m4.gguf") && e.contains("\"mistral4\" is not supported"),
            "{e}"
        );
        assert!(e.contains("latent attention"), "{e}");
        let g = write(&dir, "dsv2.gguf", &base_metadata("deepseek2", 1), &[]);
        let e = load_err(&g);
        assert!(
            e.contains("\"deepseek2\" is not supported") && e.contains("gemma3"),
            "{e}"
        );
    }

    #[test]
    fn a_tensor_the_model_would_ignore_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = llama_tensors(8);
        tensors.push(("blk.0.attn_output.bias".into(), tensor(&[DIM])));
        let g = write(&dir, "bias.gguf", &base_metadata("llama", 1), &tensors);
        let e = load_err(&g);
        assert!(
            e.contains("bias.gguf")
                && e.contains("not supported for architecture llama")
                && e.contains("blk.0.attn_output.bias"),
            "{e}"
        );
    }

    #[test]
    fn mixture_of_experts_and_fused_qkv_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = llama_tensors(8);
        tensors.push(("blk.0.ffn_gate_inp.weight".into(), tensor(&[4, DIM])));
        let g = write(&dir, "moe.gguf", &base_metadata("mistral3", 1), &tensors);
        assert!(load_err(&g).contains("mixture-of-experts mistral3"));
        let mut tensors = llama_tensors(8);
        tensors.push(("blk.0.attn_qkv.weight".into(), tensor(&[64, DIM])));
        let g = write(&dir, "qkv.gguf", &base_metadata("llama", 1), &tensors);
        assert!(load_err(&g).contains("blk.N.attn_qkv.weight"));
    }

    #[test]
    fn gemma3_without_its_norms_names_the_missing_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = base_metadata("gemma3", 1);
        md.push(("gemma3.attention.key_length".into(), Value::U32(8)));
        let g = write(&dir, "g.gguf", &md, &llama_tensors(8));
        let e = load_err(&g);
        assert!(e.contains("blk.0.attn_q_norm.weight"), "{e}");
    }

    #[test]
    fn a_head_larger_than_the_kernel_takes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = base_metadata("llama", 1);
        md.push(("llama.attention.key_length".into(), Value::U32(512)));
        let g = write(&dir, "big.gguf", &md, &llama_tensors(512));
        let e = load_err(&g);
        assert!(e.contains("big.gguf") && e.contains("head size 512"), "{e}");
    }

    #[test]
    fn head_size_apart_from_embedding_over_heads_runs() {
        // 4 heads of 16: q_dim 64 != n_embd 32 (as Mistral Nemo: 32 x 128 != 5120).
        let dir = tempfile::tempdir().unwrap();
        let mut md = base_metadata("llama", 1);
        md.push(("llama.attention.key_length".into(), Value::U32(16)));
        md.push(("llama.attention.value_length".into(), Value::U32(16)));
        let g = write(&dir, "hd.gguf", &md, &llama_tensors(16));
        let model = Model::load(&g, &Device::Cpu).unwrap();
        assert_eq!(model.kv_geometry(), (1, 32));
        let logits = model
            .forward_cache(&mut model.new_kv_cache(), &[1, 2, 3], true)
            .unwrap();
        assert_eq!(logits.data.len(), 3 * VOCAB);
        assert!(logits.data.iter().all(|v| v.is_finite()));
    }
}
