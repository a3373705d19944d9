//! BERT sentence embeddings (all-MiniLM-L6-v2 and its kin, as sentence-transformers
//! packages them): a safetensors model directory with `config.json` and `tokenizer.json`.
//!
//! Per layer: self-attention over the whole sequence, residual, LayerNorm; GELU MLP,
//! residual, LayerNorm. The sentence vector is the mean of the last layer's token vectors,
//! scaled to unit length.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use candle_core::{D, DType, Device, Tensor};
use serde::Deserialize;

/// The fields of a Hugging Face BERT `config.json` that the forward needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub model_type: String,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight_t)?.broadcast_add(&self.bias)?)
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// A loaded sentence-embedding model.
pub struct Embedder {
    cfg: BertConfig,
    tokenizer: tokenizers::Tokenizer,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    /// Longest input in tokens; longer inputs are truncated, as sentence-transformers does.
    max_tokens: usize,
    pub dir: PathBuf,
}

impl Embedder {
    /// Load a model directory (as `verre pull minilm-l6` stores it).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let cfg: BertConfig = serde_json::from_str(&read("config.json")?)
            .with_context(|| format!("{}/config.json", dir.display()))?;
        if !cfg.model_type.is_empty() && cfg.model_type != "bert" {
            bail!(
                "{}: model_type {:?} is not a BERT model",
                dir.display(),
                cfg.model_type
            );
        }
        ensure!(
            cfg.hidden_act == "gelu",
            "{}: activation {:?} is not supported (gelu)",
            dir.display(),
            cfg.hidden_act
        );
        ensure!(
            cfg.num_attention_heads > 0 && cfg.hidden_size.is_multiple_of(cfg.num_attention_heads),
            "{}: hidden size {} does not divide into {} heads",
            dir.display(),
            cfg.hidden_size,
            cfg.num_attention_heads
        );
        let max_tokens = match read("sentence_bert_config.json") {
            Ok(s) => serde_json::from_str::<serde_json::Value>(&s)?
                .get("max_seq_length")
                .and_then(|v| v.as_u64())
                .map_or(cfg.max_position_embeddings, |v| v as usize),
            Err(_) => cfg.max_position_embeddings,
        }
        .min(cfg.max_position_embeddings);

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow!("{}: {e}", tok_path.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{}: {e}", tok_path.display()))?;

        let weights_path = dir.join("model.safetensors");
        let mut w: HashMap<String, Tensor> =
            candle_core::safetensors::load(&weights_path, &Device::Cpu)
                .map_err(|e| anyhow!("{}: {e}", weights_path.display()))?;
        // Some exports prefix every name with "bert.".
        let mut take = |name: &str| -> Result<Tensor> {
            let t = w
                .remove(name)
                .or_else(|| w.remove(&format!("bert.{name}")))
                .ok_or_else(|| anyhow!("{}: tensor {name} is missing", weights_path.display()))?;
            Ok(t.to_dtype(DType::F32)?)
        };
        let linear = |take: &mut dyn FnMut(&str) -> Result<Tensor>, p: &str| -> Result<Linear> {
            Ok(Linear {
                weight_t: take(&format!("{p}.weight"))?.t()?.contiguous()?,
                bias: take(&format!("{p}.bias"))?,
            })
        };
        let eps = cfg.layer_norm_eps;
        let norm = |take: &mut dyn FnMut(&str) -> Result<Tensor>, p: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: take(&format!("{p}.weight"))?,
                bias: take(&format!("{p}.bias"))?,
                eps,
            })
        };

        let word = take("embeddings.word_embeddings.weight")?;
        let position = take("embeddings.position_embeddings.weight")?;
        let token_type = take("embeddings.token_type_embeddings.weight")?;
        let embed_norm = norm(&mut take, "embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: linear(&mut take, &format!("{p}.attention.self.query"))?,
                key: linear(&mut take, &format!("{p}.attention.self.key"))?,
                value: linear(&mut take, &format!("{p}.attention.self.value"))?,
                attn_out: linear(&mut take, &format!("{p}.attention.output.dense"))?,
                attn_norm: norm(&mut take, &format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&mut take, &format!("{p}.intermediate.dense"))?,
                output: linear(&mut take, &format!("{p}.output.dense"))?,
                out_norm: norm(&mut take, &format!("{p}.output.LayerNorm"))?,
            });
        }
        ensure!(
            word.dim(1)? == cfg.hidden_size,
            "{}: word embeddings are {} wide, config says {}",
            weights_path.display(),
            word.dim(1)?,
            cfg.hidden_size
        );
        Ok(Self {
            cfg,
            tokenizer,
            word,
            position,
            token_type,
            embed_norm,
            layers,
            max_tokens,
            dir: dir.to_path_buf(),
        })
    }

    /// Length of the vectors this model produces.
    pub fn dimensions(&self) -> usize {
        self.cfg.hidden_size
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Token ids run `0..vocab_size()`.
    pub fn vocab_size(&self) -> usize {
        self.word.dims()[0]
    }

    /// Token ids of an input, with [CLS]/[SEP], truncated to `max_tokens`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenize_truncated(text)?.0)
    }

    /// [`Embedder::tokenize`], and whether the input was longer than `max_tokens` (its
    /// end was cut).
    pub fn tokenize_truncated(&self, text: &str) -> Result<(Vec<u32>, bool)> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing input: {e}"))?;
        Ok((enc.get_ids().to_vec(), !enc.get_overflowing().is_empty()))
    }

    /// Unit-length sentence vectors, one per input, and the tokens each used.
    pub fn embed(&self, inputs: &[&str]) -> Result<Vec<(Vec<f32>, usize)>> {
        let ids = inputs
            .iter()
            .map(|text| self.tokenize(text))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(BATCH_SEQUENCES) {
            let vectors = self.embed_batch(batch)?;
            out.extend(vectors.into_iter().zip(batch.iter().map(Vec::len)));
        }
        Ok(out)
    }

    /// One sequence through the encoder, mean-pooled and normalised.
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = self.embed_batch(std::slice::from_ref(&ids.to_vec()))?;
        Ok(out.pop().expect("one vector per sequence"))
    }

    /// Several sequences through the encoder in one pass: their tokens are stacked, so that
    /// every linear layer is one large product (small per-sequence products leave most of a
    /// core idle), while attention and pooling stay within each sequence. The vectors are
    /// those of [`Embedder::embed_ids`] one sequence at a time, up to float rounding.
    /// Callers bound the batch ([`BATCH_SEQUENCES`] is what verre uses): its activations
    /// take about `4 * intermediate_size` bytes per token.
    pub fn embed_batch(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        for ids in seqs {
            ensure!(!ids.is_empty(), "empty input");
            ensure!(
                ids.len() <= self.max_tokens,
                "input of {} tokens exceeds {}",
                ids.len(),
                self.max_tokens
            );
        }
        let (h, heads) = (self.cfg.hidden_size, self.cfg.num_attention_heads);
        let hd = h / heads;
        let dev = Device::Cpu;
        let total: usize = seqs.iter().map(Vec::len).sum();
        let flat: Vec<u32> = seqs.iter().flatten().copied().collect();
        let positions: Vec<u32> = seqs.iter().flat_map(|ids| 0..ids.len() as u32).collect();

        let x = self
            .word
            .index_select(&Tensor::from_slice(&flat, total, &dev)?, 0)?;
        let pos = self
            .position
            .index_select(&Tensor::from_slice(&positions, total, &dev)?, 0)?;
        let x = (x + pos)?.broadcast_add(&self.token_type.narrow(0, 0, 1)?)?;
        let mut x = self.embed_norm.forward(&x)?;

        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.layers {
            let (q, k, v) = (
                l.query.forward(&x)?,
                l.key.forward(&x)?,
                l.value.forward(&x)?,
            );
            let mut ctx = Vec::with_capacity(seqs.len());
            let mut start = 0;
            for ids in seqs {
                let n = ids.len();
                // [n, h] -> [heads, n, hd]
                let split = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.narrow(0, start, n)?
                        .reshape((n, heads, hd))?
                        .transpose(0, 1)?
                        .contiguous()?)
                };
                let (q, k, v) = (split(&q)?, split(&k)?, split(&v)?);
                let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
                let probs = softmax_last(&scores)?;
                ctx.push(
                    probs
                        .matmul(&v)?
                        .transpose(0, 1)?
                        .contiguous()?
                        .reshape((n, h))?,
                );
                start += n;
            }
            let ctx = Tensor::cat(&ctx, 0)?;
            x = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + &x)?)?;
            let inner = l.intermediate.forward(&x)?.gelu_erf()?;
            x = l.out_norm.forward(&(l.output.forward(&inner)? + &x)?)?;
        }
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for ids in seqs {
            let pooled = x.narrow(0, start, ids.len())?.mean(0)?;
            start += ids.len();
            let pooled = pooled.to_vec1::<f32>()?;
            let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            out.push(pooled.into_iter().map(|v| v / norm).collect());
        }
        Ok(out)
    }
}

/// Sequences per [`Embedder::embed_batch`] call in verre's own callers: large enough that
/// the linear layers run as large products, small enough that a batch of 256-token inputs
/// stays in tens of megabytes.
pub const BATCH_SEQUENCES: usize = 16;

fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}
