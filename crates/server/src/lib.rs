//! verre-server: the HTTP side of verre. An OpenAI-compatible API (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`, `/v1/models`) over local engines, API keys,
//! `/health` and Prometheus `/metrics`.
//!
//! - [`openai`]: validation at the edge, handlers, response and stream shapes, errors.
//! - [`embedding`]: an embedding model on its own thread.
//! - [`auth`]: the API keys file.
//! - [`metrics`]: the `/metrics` page.
//! - [`gateway`] and [`config`]: `verre.toml` backends (local and remote OpenAI-compatible
//!   upstreams), routing with failover, the egress policy, per-key limits.
//! - [`review`]: the human review UI at `/review` and the outbox delivery worker.
//! - [`ledger`] and [`cost`]: every API call in the cost ledger; `GET /v1/verre/usage`.
//!
//! [`router`] builds the whole app over an [`AppState`]; [`run`] serves it for real.

pub mod auth;
pub mod config;
pub mod cost;
pub mod embedding;
pub mod gateway;
pub mod internal;
mod launch;
pub mod ledger;
pub mod metrics;
pub mod openai;
pub mod review;
mod state;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use embedding::EmbeddingModel;
pub use launch::{ModelKind, ModelSpec, ServeConfig, load_models, run, serve, stop_signal};
pub use state::{AppState, Models, ServedModel, unix_now};

use openai::error::ApiError;

/// The whole app: `/v1/*` behind the API keys (when there are any), `/health` and
/// `/metrics` open, and an OpenAI-shaped 404 for everything else.
pub fn router(state: Arc<AppState>) -> Router {
    let api = api_routes(&state).layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .merge(api)
        .merge(review::routes())
        .route("/health", get(health))
        .route("/metrics", get(metrics_page))
        .fallback(not_found)
        .with_state(state)
}

/// `/v1/*` as every caller sees it past authentication: the gateway (routing, egress
/// policy, pseudonymisation, per-key limits), then the ledger and audit, then the handlers.
/// The HTTP app puts the API keys in front; [`internal::ApiClient`] calls it in-process.
pub(crate) fn api_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    openai::routes()
        .route("/v1/verre/usage", get(ledger::usage))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            gateway::route,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ledger::record,
        ))
}

/// Whether an address only this machine can reach: the loopback range, or `::1`.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

async fn require_key(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(keys) = state.keys() else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        None => ApiError::unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.",
        )
        .into_response(),
        Some(key) => match keys.verify(key) {
            None => ApiError::unauthorized("Incorrect API key provided.").into_response(),
            Some(name) => {
                let name = gateway::KeyName(name.to_string());
                request.extensions_mut().insert(name);
                next.run(request).await
            }
        },
    }
}

/// 200 when every model is loaded, 503 before.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.models() {
        Ok(_) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "status": "ok" })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics_page(State(state): State<Arc<AppState>>) -> Response {
    let page = match state.models() {
        Ok(models) => metrics::render(models),
        Err(_) => metrics::render(&Models::default()),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        page,
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}
