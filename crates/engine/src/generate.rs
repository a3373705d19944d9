//! A loaded model with its tokenizer and chat template, and single-request generation:
//! prefill, then decode token by token until EOS, a stop string or the token limit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::Device;

use crate::EngineError;
use crate::chat::{ChatTemplate, Message};
use crate::constraint::{ConstraintCompiler, Grammar, GrammarError, GrammarSpec};
use crate::decoding::Decoding;
use crate::gguf::GgufFile;
use crate::kv::KvCache;
use crate::model::{Model, ModelInfo};
use crate::sampler::{Sampled, SamplingParams};
use crate::tokenizer::Tokenizer;

/// Prompt tokens per forward pass during prefill; bounds activation memory for long prompts.
pub const PREFILL_CHUNK: usize = 512;

/// A model file, loaded and ready to generate.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub path: PathBuf,
    pub file_size: u64,
    /// Built on the first constrained request (the token trie takes a moment).
    constraints: OnceLock<Result<ConstraintCompiler, String>>,
}

/// What to generate after a prompt.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    /// Most tokens to generate; also capped by the room left in the context.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends before the first occurrence of any of these; it is not returned.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// The output must follow this grammar (structured outputs); compile it with
    /// [`LoadedModel::compile_grammar`].
    pub grammar: Option<Arc<Grammar>>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompt_ids: Vec::new(),
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            grammar: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// The token limit or the end of the context.
    Length,
    /// The caller asked to stop (a client went away).
    Cancelled,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// One step of a generation as it happens: the token, and the text it completed (may be
/// empty while a multi-byte character or a possible stop string is held back). The last
/// event of a generation that ends without a stop may carry no token, only the text that
/// was held back until then.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub sampled: Option<Sampled>,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Log-probability of each generated token, in order.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt processing, up to the first token's logits.
    pub prefill_ms: f64,
    /// Everything after the first token.
    pub decode_ms: f64,
    /// Under a grammar: the time each token mask took.
    pub mask_times: Vec<Duration>,
}

impl Generation {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        per_second(self.prompt_tokens, self.prefill_ms)
    }

    /// Tokens after the first, over the time after the first.
    pub fn decode_tokens_per_second(&self) -> f64 {
        per_second(self.completion_tokens.saturating_sub(1), self.decode_ms)
    }
}

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

impl LoadedModel {
    /// Load a GGUF file on the CPU: header, tokenizer, chat template, weights.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_on(path, &Device::Cpu)
    }

    pub fn load_on(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let gguf = GgufFile::open(path)?;
        // Architecture first: an unsupported model should say so before anything else.
        let model = Model::load(&gguf, device)?;
        let tokenizer = Tokenizer::from_gguf_metadata(gguf.metadata()).with_context(|| {
            format!(
                "{}: building the tokenizer from GGUF metadata",
                path.display()
            )
        })?;
        if tokenizer.vocab_size() != model.info().vocab_size {
            tracing::warn!(
                "{}: tokenizer has {} tokens, the embedding table {}",
                path.display(),
                tokenizer.vocab_size(),
                model.info().vocab_size
            );
        }
        let piece = |id: Option<u32>| {
            id.and_then(|id| tokenizer.decode(&[id], false).ok())
                .unwrap_or_default()
        };
        let template_src = match gguf.get("tokenizer.chat_template") {
            Some(_) => Some(gguf.get_str("tokenizer.chat_template")?),
            None => None,
        };
        let template = ChatTemplate::for_architecture(
            template_src.as_deref(),
            &model.info().architecture,
            &piece(tokenizer.bos_id()),
            &piece(tokenizer.eos_id()),
        )
        .with_context(|| format!("{}: chat template", path.display()))?;
        Ok(Self {
            model,
            tokenizer,
            template,
            path: path.to_path_buf(),
            file_size: gguf.file_size(),
            constraints: OnceLock::new(),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        self.model.info()
    }

    /// Render a conversation with the model's chat template and tokenize it (special
    /// tokens written by the template become their ids).
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        self.encode_prompt(&text)
    }

    /// As [`LoadedModel::chat_prompt`], with tool definitions given to the template.
    pub fn chat_prompt_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
    ) -> Result<Vec<u32>> {
        let text = self.template.render_with_tools(messages, tools, true)?;
        self.encode_prompt(&text)
    }

    /// Tokenize prompt text as-is (no template), with BOS if the model wants one.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        // A template that writes BOS itself must not get a second one from the tokenizer.
        let bos_text = self
            .tokenizer
            .bos_id()
            .and_then(|id| self.tokenizer.decode(&[id], false).ok());
        let has_bos = bos_text.is_some_and(|b| !b.is_empty() && text.starts_with(&b));
        self.tokenizer.encode(text, !has_bos, true)
    }

    /// Compile a grammar for this model's vocabulary, or say why it cannot be enforced.
    pub fn compile_grammar(&self, spec: &GrammarSpec) -> Result<Arc<Grammar>, GrammarError> {
        let compiler = self
            .constraints
            .get_or_init(|| ConstraintCompiler::new(&self.tokenizer).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| GrammarError {
                kind: "grammar",
                reason: format!("this model's tokenizer cannot be used for constraints: {e}"),
            })?;
        compiler.compile(spec).map(Arc::new)
    }

    pub fn new_kv_cache(&self) -> KvCache {
        self.model.new_kv_cache()
    }

    /// Run the prompt through the model in chunks and return the logits of its last token.
    pub fn prefill(&self, kv: &mut KvCache, prompt: &[u32]) -> Result<Vec<f32>> {
        let mut last = Vec::new();
        for chunk in prompt.chunks(PREFILL_CHUNK) {
            let logits = self.model.forward_cache(kv, chunk, false)?;
            last = logits.last_row(0).to_vec();
        }
        Ok(last)
    }

    /// Check that a prompt fits: at least one token of room must be left to generate.
    pub fn check_prompt_length(&self, n: usize) -> Result<(), EngineError> {
        let context = self.info().context_length;
        if n == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        if n >= context {
            return Err(EngineError::ContextLength {
                prompt_tokens: n,
                context_length: context,
            });
        }
        Ok(())
    }

    /// Generate for one request. `on_token` sees each token as it is chosen; returning
    /// `false` stops the generation (finish reason `Cancelled`).
    pub fn generate(
        &self,
        req: &GenerateRequest,
        mut on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation> {
        self.check_prompt_length(req.prompt_ids.len())?;
        req.sampling
            .validate()
            .map_err(EngineError::InvalidParameter)?;
        let context = self.info().context_length;
        let max_tokens = req.max_tokens.min(context - req.prompt_ids.len());

        let start = Instant::now();
        let mut kv = self.new_kv_cache();
        let mut logits = self.prefill(&mut kv, &req.prompt_ids)?;
        let prefill_ms = start.elapsed().as_secs_f64() * 1000.0;
        let decode_start = Instant::now();

        let mut dec = Decoding::new(&self.tokenizer, req, req.sampling.clone(), max_tokens);
        let mut logprobs = Vec::new();
        let mut finish = FinishReason::Length;
        while dec.output.len() < max_tokens {
            let step = dec.step(&logits, &req.prompt_ids)?;
            let token = step.sampled.token;
            logprobs.push(step.sampled.logprob);
            if !on_token(&TokenEvent {
                sampled: Some(step.sampled),
                text: step.text,
            }) {
                finish = FinishReason::Cancelled;
                break;
            }
            if let Some(reason) = step.finish {
                finish = reason;
                break;
            }
            // The next token's mask is worked out while the model computes its logits, as
            // the engine does; an error shows again when the mask is applied.
            let out = match dec.constraint.as_mut() {
                Some(c) => {
                    rayon::join(
                        || self.model.forward_cache(&mut kv, &[token], false),
                        || {
                            let _ = c.compute_mask();
                        },
                    )
                    .0
                }
                None => self.model.forward_cache(&mut kv, &[token], false),
            }?;
            logits = out.last_row(0).to_vec();
        }
        let token_ids = dec.output.clone();
        let mask_times = dec
            .constraint
            .as_ref()
            .map(|c| c.mask_times().to_vec())
            .unwrap_or_default();
        Ok(Generation {
            text: dec.into_text(),
            completion_tokens: token_ids.len(),
            token_ids,
            logprobs,
            finish_reason: finish,
            prompt_tokens: req.prompt_ids.len(),
            prefill_ms,
            decode_ms: decode_start.elapsed().as_secs_f64() * 1000.0,
            mask_times,
        })
    }
}

/// Finds stop strings in streamed text. Text that might be the start of a stop string is
/// held back until it is known not to be.
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Add text; returns what may be shown now and whether a stop string was reached.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        let search_from = self.emitted;
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| i + search_from)
            })
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.stopped = true;
            let out = self.text[self.emitted..].to_string();
            self.emitted = self.text.len();
            return (out, true);
        }
        let held = self.held_back();
        let upto = self.text.len() - held;
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        (out, false)
    }

    /// Release whatever was held back (the generation ended without a stop string).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    pub fn into_text(self) -> String {
        self.text
    }

    /// Length of the longest suffix of the text that is a proper prefix of a stop string.
    fn held_back(&self) -> usize {
        let mut held = 0;
        for s in &self.stops {
            for (i, _) in self.text[self.emitted..].char_indices() {
                let suffix = &self.text[self.emitted + i..];
                if suffix.len() < s.len() && s.starts_with(suffix) {
                    held = held.max(suffix.len());
                    break;
                }
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, String) {
        let mut m = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut shown = String::new();
        let mut hit = false;
        for p in pieces {
            let (t, h) = m.push(p);
            shown.push_str(&t);
            if h {
                hit = true;
                break;
            }
        }
        if !hit {
            shown.push_str(&m.flush());
        }
        (shown, hit, m.into_text())
    }

    #[test]
    fn stop_string_split_across_pieces_is_never_shown() {
        let (shown, hit, text) = run(&["\nUser:"], &["Hello", "\nUs", "er:", " more"]);
        assert!(hit);
        assert_eq!(shown, "Hello");
        assert_eq!(text, "Hello");
    }

    #[test]
    fn near_miss_is_released() {
        let (shown, hit, text) = run(&["STOP"], &["a ST", "OP", ""]);
        assert!(hit);
        assert_eq!((shown.as_str(), text.as_str()), ("a ", "a "));
        let (shown, hit, _) = run(&["STOP"], &["a ST", "ONE"]);
        assert!(!hit);
        assert_eq!(shown, "a STONE");
    }

    #[test]
    fn held_back_text_is_flushed_at_the_end_and_multibyte_is_safe() {
        let (shown, hit, _) = run(&["éé"], &["café"]);
        assert!(!hit);
        assert_eq!(shown, "café");
    }
}
