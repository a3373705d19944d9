//! The OpenAI-compatible API: request validation, handlers, and response and stream shapes.

pub mod chat;
pub mod completions;
pub mod error;
pub mod generation;
pub mod logprobs;
pub mod models;
pub mod request;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;
use error::ApiError;

/// The `/v1` routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::get))
        .route("/v1/embeddings", post(embeddings))
}

/// Embeddings need an embedding model (BERT), which is not served yet.
async fn embeddings() -> ApiError {
    let mut e = ApiError::not_found("no embedding model is loaded on this server");
    e.param = Some("model".into());
    e.code = Some("model_not_found");
    e
}
