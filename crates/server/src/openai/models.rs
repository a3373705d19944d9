//! `GET /v1/models` and `GET /v1/models/{id}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::state::{AppState, Models};

pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let data = model_list(state.models()?);
    Ok(Json(json!({ "object": "list", "data": data })))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    model_list(state.models()?)
        .into_iter()
        .find(|m| m["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::model_not_found(&id))
}

/// Chat models, then embedding models; `max_model_len` is the longest input in tokens.
fn model_list(models: &Models) -> Vec<Value> {
    let chat = models
        .chat
        .iter()
        .map(|m| model_json(&m.id, m.created, m.model.info().context_length));
    let embedding = models
        .embedding
        .iter()
        .map(|m| model_json(&m.id, m.created, m.embedder.max_tokens()));
    chat.chain(embedding).collect()
}

fn model_json(id: &str, created: u64, max_model_len: usize) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": created,
        "owned_by": "verre",
        "max_model_len": max_model_len,
    })
}
