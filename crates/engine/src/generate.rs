//! A loaded model with its tokenizer and chat template, and what a generation request
//! asks for. Generating is the engine's work ([`crate::engine::EngineHandle`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use candle_core::Device;

use crate::chat::{ChatTemplate, Message};
use crate::constraint::{ConstraintCompiler, Grammar, GrammarError, GrammarSpec};
use crate::gguf::GgufFile;
use crate::kv::KvCache;
use crate::model::{Model, ModelInfo};
use crate::sampler::SamplingParams;
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
}
