//! Structured outputs: `response_format` and required tool calls compiled into a grammar
//! that the engine enforces token by token. A grammar that cannot be enforced is a 400 that
//! names the unsupported feature — never an answer generated without it.

use std::sync::Arc;

use verre_engine::{Grammar, GrammarSpec, LoadedModel};

use super::error::ApiError;
use super::request::ResponseFormat;

/// The grammar for a response format (`None` for free text).
pub fn response_format_spec(format: &ResponseFormat) -> Option<GrammarSpec> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(GrammarSpec::JsonObject),
        ResponseFormat::JsonSchema { schema, .. } => Some(GrammarSpec::JsonSchema(schema.clone())),
        ResponseFormat::Regex(rx) => Some(GrammarSpec::Regex(rx.clone())),
        ResponseFormat::Lark(lark) => Some(GrammarSpec::Lark(lark.clone())),
    }
}

/// Compile off the async workers (a large schema can take a while); `param` is the field
/// a refusal names.
pub async fn compile(
    model: &Arc<LoadedModel>,
    spec: Option<GrammarSpec>,
    param: &str,
) -> Result<Option<Arc<Grammar>>, ApiError> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let model = model.clone();
    let compiled = tokio::task::spawn_blocking(move || model.compile_grammar(&spec))
        .await
        .map_err(|e| ApiError::internal(format!("compiling the grammar: {e}")))?;
    compiled
        .map(Some)
        .map_err(|e| ApiError::unsupported_grammar(param, &e.to_string()))
}
