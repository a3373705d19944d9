//! verre-engine: a GGUF model file in, tokens out.
pub mod tokenizer;
