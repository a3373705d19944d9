//! Model architectures. Every architecture exposes one batched forward: many sequences,
//! each with its own new tokens and its own KV cache, in a single pass over the weights.

pub mod bert;
pub mod gemma3;
pub mod llama;
pub mod mistral3;
pub mod qwen2;

use std::ops::Range;

use anyhow::{Result, bail};
use candle_core::Device;

use crate::gguf::GgufFile;
use crate::kv::{KvCache, KvPool, SeqKv};

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

    /// A pool of `num_blocks` KV blocks shaped for this model.
    pub fn new_kv_pool(&self, num_blocks: usize) -> KvPool {
        let (layers, width) = self.kv_geometry();
        KvPool::new(layers, width, num_blocks)
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
