//! BERT sentence embeddings (all-MiniLM-L6-v2 and its kin, as sentence-transformers
//! packages them): a safetensors model directory with `config.json` and `tokenizer.json`.
//!
//! Per layer: self-attention over the whole sequence, residual, LayerNorm; GELU MLP,
//! residual, LayerNorm. The sentence vector is the mean of the last layer's token vectors,
//! scaled to unit length.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
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

/// A dense layer: the product with the (transposed, contiguous) weights runs in candle's
/// GEMM; the bias is added by whatever pass reads the product next.
struct Linear {
    weight_t: Tensor,
    bias: Vec<f32>,
}

impl Linear {
    /// `rows` rows of `x` times the weights, without the bias: `rows * out` floats.
    fn product(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let k = self.weight_t.dim(0)?;
        let x = Tensor::from_slice(x, (rows, k), &Device::Cpu)?;
        Ok(x.matmul(&self.weight_t)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    /// Each row of `x` (plus `bias` and `residual`, when given) normalised, in place: one
    /// pass over the rows, spread over the rayon pool.
    fn apply(&self, x: &mut [f32], bias: Option<&[f32]>, residual: Option<&[f32]>) {
        let w = self.weight.len();
        let row = |(i, r): (usize, &mut [f32])| {
            if let Some(b) = bias {
                r.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            if let Some(res) = residual {
                r.iter_mut()
                    .zip(&res[i * w..(i + 1) * w])
                    .for_each(|(v, x)| *v += x);
            }
            let mean = r.iter().sum::<f32>() / w as f32;
            let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / w as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, g), b) in r.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = (*v - mean) * inv * g + b;
            }
        };
        x.par_chunks_mut(w)
            .enumerate()
            .with_min_len(32)
            .for_each(row);
    }
}

struct Layer {
    /// Query, key and value in one product (`3 * hidden` outputs).
    qkv: Linear,
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
    /// Embedding tables, row-major (`hidden_size` wide).
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    vocab_size: usize,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    /// Longest input in tokens; longer inputs are truncated, as sentence-transformers does.
    max_tokens: usize,
    pub dir: PathBuf,
}

impl Embedder {
    /// Load a model directory (as `verre pull minilm-l6` stores it).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::load_with_rest(dir.as_ref())?.0)
    }

    /// [`Embedder::load`], also handing back the tensors the encoder did not take (a
    /// task head such as `classifier.weight`) and the path of the weights file.
    pub(crate) fn load_with_rest(dir: &Path) -> Result<(Self, HashMap<String, Tensor>, PathBuf)> {
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

        let (weights_path, mut w) = load_weights(dir)?;
        // Some exports prefix every name with "bert.".
        let mut take = |name: &str| -> Result<Tensor> {
            let t = w
                .remove(name)
                .or_else(|| w.remove(&format!("bert.{name}")))
                .ok_or_else(|| anyhow!("{}: tensor {name} is missing", weights_path.display()))?;
            Ok(t.to_dtype(DType::F32)?)
        };
        let vec = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        // `names`' weights side by side in one product (query, key and value).
        let linear =
            |take: &mut dyn FnMut(&str) -> Result<Tensor>, names: &[&str]| -> Result<Linear> {
                let mut weights = Vec::new();
                let mut bias = Vec::new();
                for p in names {
                    weights.push(take(&format!("{p}.weight"))?);
                    bias.extend(vec(take(&format!("{p}.bias"))?)?);
                }
                let weight_t = Tensor::cat(&weights, 0)?.t()?.contiguous()?;
                ensure!(
                    weight_t.dim(1)? == bias.len(),
                    "{}: {} has {} outputs and {} biases",
                    weights_path.display(),
                    names[0],
                    weight_t.dim(1)?,
                    bias.len()
                );
                Ok(Linear { weight_t, bias })
            };
        let eps = cfg.layer_norm_eps as f32;
        let norm = |take: &mut dyn FnMut(&str) -> Result<Tensor>, p: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: vec(take(&format!("{p}.weight"))?)?,
                bias: vec(take(&format!("{p}.bias"))?)?,
                eps,
            })
        };

        let word = take("embeddings.word_embeddings.weight")?;
        ensure!(
            word.dim(1)? == cfg.hidden_size,
            "{}: word embeddings are {} wide, config says {}",
            weights_path.display(),
            word.dim(1)?,
            cfg.hidden_size
        );
        let vocab_size = word.dim(0)?;
        let position = take("embeddings.position_embeddings.weight")?;
        ensure!(
            position.dims() == [cfg.max_position_embeddings, cfg.hidden_size],
            "{}: position embeddings are {:?}, config says [{}, {}]",
            weights_path.display(),
            position.dims(),
            cfg.max_position_embeddings,
            cfg.hidden_size
        );
        let token_type = take("embeddings.token_type_embeddings.weight")?;
        ensure!(
            token_type.dim(1)? == cfg.hidden_size,
            "{}: token type embeddings are {} wide",
            weights_path.display(),
            token_type.dim(1)?
        );
        let (word, position, token_type) = (vec(word)?, vec(position)?, vec(token_type)?);
        let embed_norm = norm(&mut take, "embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let attn = format!("{p}.attention.self");
            layers.push(Layer {
                qkv: linear(
                    &mut take,
                    &[
                        &format!("{attn}.query"),
                        &format!("{attn}.key"),
                        &format!("{attn}.value"),
                    ],
                )?,
                attn_out: linear(&mut take, &[&format!("{p}.attention.output.dense")])?,
                attn_norm: norm(&mut take, &format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&mut take, &[&format!("{p}.intermediate.dense")])?,
                output: linear(&mut take, &[&format!("{p}.output.dense")])?,
                out_norm: norm(&mut take, &format!("{p}.output.LayerNorm"))?,
            });
        }
        let embedder = Self {
            cfg,
            tokenizer,
            word,
            position,
            token_type,
            vocab_size,
            embed_norm,
            layers,
            max_tokens,
            dir: dir.to_path_buf(),
        };
        Ok((embedder, w, weights_path))
    }

    /// Length of the vectors this model produces.
    /// The tokenizer, truncating at [`Embedder::max_tokens`].
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    pub fn dimensions(&self) -> usize {
        self.cfg.hidden_size
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Token ids run `0..vocab_size()`.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
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
    /// core idle), while attention and pooling stay within each sequence. Biases,
    /// residuals, LayerNorm and GELU are single passes over the rows (candle's element-wise
    /// operators would take one pass, an allocation and a thread barrier each). The vectors
    /// are those of [`Embedder::embed_ids`] one sequence at a time, up to float rounding.
    /// Callers bound the batch ([`BATCH_SEQUENCES`] is what verre uses): its activations
    /// take about `4 * intermediate_size` bytes per token.
    pub fn embed_batch(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.cfg.hidden_size;
        let x = self.hidden_states(seqs)?;
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for ids in seqs {
            let n = ids.len();
            // The mean of the token vectors, scaled to unit length: the sum scaled alike.
            let mut pooled = vec![0f32; h];
            for row in x[start * h..(start + n) * h].chunks_exact(h) {
                pooled.iter_mut().zip(row).for_each(|(p, v)| *p += v);
            }
            start += n;
            let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            out.push(pooled.into_iter().map(|v| v / norm).collect());
        }
        Ok(out)
    }

    /// The last layer's vector of every token of `seqs`, stacked: `hidden_size` floats a
    /// token, the sequences one after the other (see [`Embedder::embed_batch`]).
    pub fn hidden_states(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        for ids in seqs {
            ensure!(!ids.is_empty(), "empty input");
            ensure!(
                ids.len() <= self.max_tokens,
                "input of {} tokens exceeds {}",
                ids.len(),
                self.max_tokens
            );
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                bail!(
                    "token id {id} is outside the vocabulary of {}",
                    self.vocab_size
                );
            }
        }
        let h = self.cfg.hidden_size;
        let total: usize = seqs.iter().map(Vec::len).sum();

        let mut x = Vec::with_capacity(total * h);
        for ids in seqs {
            for (pos, &id) in ids.iter().enumerate() {
                let (w, p) = (id as usize * h, pos * h);
                let rows = self.word[w..w + h].iter().zip(&self.position[p..p + h]);
                x.extend(rows.zip(&self.token_type[..h]).map(|((w, p), t)| w + p + t));
            }
        }
        self.embed_norm.apply(&mut x, None, None);

        for l in &self.layers {
            let qkv = l.qkv.product(&x, total)?;
            let ctx = self.attention(&qkv, &l.qkv.bias, seqs)?;
            let mut attended = l.attn_out.product(&ctx, total)?;
            l.attn_norm
                .apply(&mut attended, Some(&l.attn_out.bias), Some(&x));
            x = attended;
            let mut inner = l.intermediate.product(&x, total)?;
            gelu_with_bias(&mut inner, &l.intermediate.bias);
            let mut out = l.output.product(&inner, total)?;
            l.out_norm.apply(&mut out, Some(&l.output.bias), Some(&x));
            x = out;
        }
        Ok(x)
    }

    /// Self-attention of each sequence over itself, from the stacked query/key/value
    /// product (`3 * hidden` per token, biases not added yet): the context vectors, stacked
    /// as the tokens are (`hidden` per token).
    fn attention(&self, qkv: &[f32], bias: &[f32], seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        let (h, heads) = (self.cfg.hidden_size, self.cfg.num_attention_heads);
        let hd = h / heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut starts = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for ids in seqs {
            starts.push(start);
            start += ids.len();
        }
        let per_seq = seqs
            .par_iter()
            .zip(starts)
            .map(|(ids, start)| -> Result<Vec<f32>> {
                let n = ids.len();
                // Head-major: queries and values [heads, n, hd], keys transposed [heads, hd, n].
                let (mut q, mut kt, mut v) =
                    (vec![0f32; n * h], vec![0f32; n * h], vec![0f32; n * h]);
                for i in 0..n {
                    let row = &qkv[(start + i) * 3 * h..(start + i + 1) * 3 * h];
                    for head in 0..heads {
                        for d in 0..hd {
                            let c = head * hd + d;
                            q[(head * n + i) * hd + d] = (row[c] + bias[c]) * scale;
                            kt[(head * hd + d) * n + i] = row[h + c] + bias[h + c];
                            v[(head * n + i) * hd + d] = row[2 * h + c] + bias[2 * h + c];
                        }
                    }
                }
                let dev = Device::Cpu;
                let q = Tensor::from_vec(q, (heads, n, hd), &dev)?;
                let kt = Tensor::from_vec(kt, (heads, hd, n), &dev)?;
                let mut scores = q.matmul(&kt)?.flatten_all()?.to_vec1::<f32>()?;
                for row in scores.chunks_exact_mut(n) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for s in row.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    row.iter_mut().for_each(|s| *s /= sum);
                }
                let probs = Tensor::from_vec(scores, (heads, n, n), &dev)?;
                let v = Tensor::from_vec(v, (heads, n, hd), &dev)?;
                let ctx = probs.matmul(&v)?.flatten_all()?.to_vec1::<f32>()?;
                // Back to token-major [n, hidden].
                let mut out = vec![0f32; n * h];
                for head in 0..heads {
                    for i in 0..n {
                        let from = &ctx[(head * n + i) * hd..(head * n + i + 1) * hd];
                        out[i * h + head * hd..i * h + (head + 1) * hd].copy_from_slice(from);
                    }
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(per_seq.concat())
    }
}

/// `x + bias`, then GELU (the exact, erf form BERT was trained with), row by row in place.
/// The weights in `dir`: `model.safetensors`, else an ONNX export (`model.onnx`, or the
/// only `.onnx` file in `dir` or `dir/onnx`, such as a 4-bit `onnx/model_q4.onnx`).
fn load_weights(dir: &Path) -> Result<(PathBuf, HashMap<String, Tensor>)> {
    let safetensors = dir.join("model.safetensors");
    if safetensors.exists() {
        let w = candle_core::safetensors::load(&safetensors, &Device::Cpu)
            .map_err(|e| anyhow!("{}: {e}", safetensors.display()))?;
        return Ok((safetensors, w));
    }
    let mut onnx = Vec::new();
    for folder in [dir.to_path_buf(), dir.join("onnx")] {
        let Ok(items) = std::fs::read_dir(&folder) else {
            continue;
        };
        for item in items.flatten() {
            let path = item.path();
            if path.extension().is_some_and(|e| e == "onnx") {
                onnx.push(path);
            }
        }
    }
    onnx.sort();
    let path = match onnx.as_slice() {
        [] => bail!(
            "{} holds no model.safetensors and no .onnx file",
            dir.display()
        ),
        [one] => one.clone(),
        many => many
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n == "model.onnx"))
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "{} holds several .onnx files and none is model.onnx: {}",
                    dir.display(),
                    many.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
    };
    let w = super::onnx::load_bert_weights(&path)?;
    Ok((path, w))
}

fn gelu_with_bias(x: &mut [f32], bias: &[f32]) {
    x.par_chunks_mut(bias.len())
        .with_min_len(32)
        .for_each(|row| {
            for (v, b) in row.iter_mut().zip(bias) {
                let t = *v + b;
                *v = 0.5 * t * (1.0 + libm::erff(t * std::f32::consts::FRAC_1_SQRT_2));
            }
        });
}

/// Sequences per [`Embedder::embed_batch`] call in verre's own callers: large enough that
/// the linear layers run as large products, small enough that a batch of 256-token inputs
/// stays in tens of megabytes.
pub const BATCH_SEQUENCES: usize = 16;

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}
