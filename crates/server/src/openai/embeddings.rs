//! `POST /v1/embeddings`: sentence vectors from an embedding model.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::error::ApiError;
use super::request::{EmbeddingEncoding, EmbeddingRequest, Prompt};
use crate::embedding::{Embedding, EmbeddingModel};
use crate::state::AppState;

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = EmbeddingRequest::parse(&body)?;
    let model = state.embedding_model(&req.model)?;
    check_for_model(&model, &req)?;
    let embeddings = model.embed(req.inputs, req.truncate).await?;
    Ok(Json(embedding_response(
        &req.model,
        req.encoding,
        &embeddings,
    )))
}

/// What only the model can tell: its width, and which token ids it takes. Inputs longer
/// than the model's limit are refused unless the request asks for truncation (text is
/// measured on the model's thread, which tokenizes it anyway).
fn check_for_model(model: &EmbeddingModel, req: &EmbeddingRequest) -> Result<(), ApiError> {
    let embedder = &model.embedder;
    if let Some(d) = req.dimensions
        && d != embedder.dimensions()
    {
        return Err(ApiError::invalid(
            "dimensions",
            format!(
                "{} makes vectors of {} dimensions and cannot shorten them; omit dimensions or pass {}",
                model.id,
                embedder.dimensions(),
                embedder.dimensions()
            ),
        ));
    }
    let (vocab, max_tokens) = (embedder.vocab_size(), embedder.max_tokens());
    for (i, input) in req.inputs.iter().enumerate() {
        let Prompt::Tokens(ids) = input else { continue };
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid(
                "input",
                format!("input[{i}]: token id {t} is outside the vocabulary (0..{vocab})"),
            ));
        }
        if ids.len() > max_tokens && !req.truncate {
            return Err(crate::embedding::too_long(&model.id, i, max_tokens));
        }
    }
    Ok(())
}

fn embedding_response(model: &str, encoding: EmbeddingEncoding, out: &[Embedding]) -> Value {
    let data: Vec<Value> = out
        .iter()
        .enumerate()
        .map(|(index, e)| {
            json!({
                "object": "embedding",
                "index": index,
                "embedding": encode(&e.vector, encoding),
            })
        })
        .collect();
    let tokens: usize = out.iter().map(|e| e.tokens).sum();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    })
}

fn encode(vector: &[f32], encoding: EmbeddingEncoding) -> Value {
    match encoding {
        EmbeddingEncoding::Float => json!(vector),
        EmbeddingEncoding::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
            Value::String(BASE64.encode(bytes))
        }
    }
}
