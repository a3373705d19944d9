//! `GET /v1/models` and `GET /v1/models/{id}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::state::{AppState, ServedModel};

pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let data: Vec<Value> = state.models()?.iter().map(|m| model_json(m)).collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = state.model(&id)?;
    Ok(Json(model_json(&model)))
}

fn model_json(m: &ServedModel) -> Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": "verre",
        "max_model_len": m.model.info().context_length,
    })
}
