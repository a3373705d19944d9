//! verre-engine: a GGUF model file in, tokens out. No HTTP, no database.
//!
//! - [`gguf`]: reading model files, with errors that name the file and the problem.
//! - [`tokenizer`]: the tokenizer described by the GGUF metadata; streaming detokenization.
//! - [`chat`]: the model's chat template.
//! - [`model`]: architectures, each with one batched forward over many sequences.
//! - [`kv`]: per-sequence key/value caches.
//! - [`sampler`]: choosing tokens from logits.
//! - [`constraint`]: JSON Schema / regex / Lark grammars enforced during decoding.
//! - [`generate`]: a loaded model and what a request asks for.
//! - [`engine`]: the engine loop every generation goes through: [`EngineHandle`]; its
//!   scheduler (`scheduler.rs`) plans each step.

pub mod chat;
pub mod constraint;
mod decoding;
mod draft;
pub mod engine;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod kv;
pub mod model;
pub mod sampler;
mod scheduler;
pub mod tokenizer;

pub use chat::{ChatTemplate, Message};
pub use constraint::{Constraint, ConstraintCompiler, Grammar, GrammarError, GrammarSpec};
pub use draft::DraftModel;
pub use engine::{EngineHandle, EngineOptions, Generation};
pub use generate::{FinishReason, GenerateRequest, LoadedModel};
pub use sampler::{Sampled, Sampler, SamplingParams};

/// Errors a caller may want to tell apart (an API maps them to 400s); everything else is
/// an `anyhow::Error` with context.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the prompt has {prompt_tokens} tokens, the model's context length is {context_length}: nothing is left to generate"
    )]
    ContextLength {
        prompt_tokens: usize,
        context_length: usize,
    },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
}
