//! verre-server: the HTTP side of verre. An OpenAI-compatible API (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`, `/v1/models`) over local engines, API keys,
//! `/health` and Prometheus `/metrics`.
//!
//! - [`openai`]: validation at the edge, handlers, response and stream shapes, errors.
//! - [`anthropic`]: Anthropic's Messages API (`/v1/messages`), served by translating to
//!   and from chat completions.
//! - [`embedding`]: an embedding model on its own thread.
//! - [`auth`]: the API keys file (keys presented as `Authorization: Bearer` or `x-api-key`).
//! - `edge`: CORS for the listed origins, the loopback guard of a server without keys,
//!   `/metrics` keyed for remote peers, OpenAI-shaped 405s.
//! - [`metrics`]: the `/metrics` page.
//! - [`gateway`] and [`config`]: `verre.toml` backends (local and remote OpenAI-compatible
//!   upstreams), routing with failover, the egress policy, per-key limits.
//! - [`review`]: the human review UI at `/review` and the outbox delivery worker.
//! - [`ledger`] and [`cost`]: every API call in the cost ledger; `GET /v1/verre/usage`.
//!
//! [`router`] builds the whole app over an [`AppState`]; [`run`] serves it for real.

pub mod anthropic;
pub mod archive;
pub mod auth;
pub mod config;
pub mod cost;
mod edge;
pub mod embedding;
pub mod gateway;
pub mod gdpr;
pub mod internal;
mod launch;
pub mod ledger;
pub mod metrics;
pub mod openai;
pub mod review;
pub mod sse;
mod state;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use embedding::EmbeddingModel;
pub use launch::{ModelKind, ModelSpec, ServeConfig, load_models, run, serve, stop_signal};
pub use state::{AppState, Models, ServedModel, unix_now};

use openai::error::ApiError;

/// The whole app: `/v1/*` behind the API keys (when there are any; on loopback without
/// keys, behind the checks a web page cannot pass), `/health` open, `/metrics` open to this
/// machine, CORS for the origins `[http] cors_origins` lists, and OpenAI-shaped 404s and
/// 405s for everything else.
pub fn router(state: Arc<AppState>) -> Router {
    let api = api_routes(&state)
        .merge(anthropic::routes(&state))
        .layer(middleware::from_fn_with_state(state.clone(), require_key))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            edge::loopback_guard,
        ))
        .layer(middleware::from_fn(anthropic::anthropic_errors));
    let metrics =
        Router::new()
            .route("/metrics", get(metrics_page))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                edge::metrics_guard,
            ));
    let origins = edge::CorsOrigins::new(
        state
            .gateway()
            .map(|g| g.cors_origins())
            .unwrap_or_default(),
    );
    let app = Router::new()
        .merge(api)
        .merge(review::routes())
        .merge(metrics)
        .route("/health", get(health))
        .fallback(not_found)
        .layer(middleware::map_response(edge::json_method_not_allowed));
    let app = match origins.is_empty() {
        true => app,
        false => app.layer(middleware::from_fn_with_state(origins, edge::cors)),
    };
    app.with_state(state)
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
        // `archive:<model>` adds the archive's passages before anything meters the call.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            archive::route,
        ))
        // Outermost: each body is read and parsed once, for the ledger, the gateway and
        // the handlers alike.
        .layer(middleware::from_fn(openai::body::read_once))
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

/// The API key a request presents: `Authorization: Bearer KEY` (OpenAI's clients) or
/// `x-api-key: KEY` (Anthropic-style clients).
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let api_key = || headers.get("x-api-key").and_then(|v| v.to_str().ok());
    bearer.or_else(api_key).map(str::trim)
}

async fn require_key(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(keys) = state.keys() else {
        return next.run(request).await;
    };
    match presented_key(request.headers()) {
        None => ApiError::unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer KEY` or `x-api-key: KEY`.",
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
