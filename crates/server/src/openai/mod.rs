//! The OpenAI-compatible API: request validation, handlers, and response and stream shapes.

pub mod body;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod error;
pub mod generation;
pub mod logprobs;
pub mod models;
pub mod reasoning;
pub mod request;
pub mod responses;
pub mod structured;
pub mod tools;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

/// The `/v1` routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::get))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .merge(responses::routes())
}
