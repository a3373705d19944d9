//! `GET /v1/models` and `GET /v1/models/{id}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::gateway::KeyName;
use crate::state::{AppState, Models};

pub async fn list(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<KeyName>>,
) -> Result<Json<Value>, ApiError> {
    let key = key.as_ref().map(|Extension(KeyName(name))| name.as_str());
    let mut data = model_list(&state)?;
    // A key limited to some models sees only those.
    if let Some(gateway) = state.gateway() {
        data.retain(|m| gateway.key_may_use(key, m["id"].as_str().unwrap_or_default()));
    }
    Ok(Json(json!({ "object": "list", "data": data })))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    model_list(&state)?
        .into_iter()
        .find(|m| m["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::model_not_found(&id))
}

/// The models in this process, then the gateway's (remote models and local ones under
/// their configured names). Before loading is done that is an error without a gateway,
/// and the gateway's models alone with one.
fn model_list(state: &AppState) -> Result<Vec<Value>, ApiError> {
    let Some(gateway) = state.gateway() else {
        return Ok(local_models(state.models()?));
    };
    let mut list = state.models().map(local_models).unwrap_or_default();
    for (id, backend) in gateway.model_names() {
        if !list.iter().any(|m| m["id"] == id.as_str()) {
            list.push(json!({
                "id": id,
                "object": "model",
                "created": gateway.created(),
                "owned_by": backend,
            }));
        }
    }
    Ok(list)
}

/// Chat models, then embedding models; `max_model_len` is the longest input in tokens.
fn local_models(models: &Models) -> Vec<Value> {
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
