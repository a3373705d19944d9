//! `/v1` called from inside the process, for verre's own callers (the intake pipeline).
//!
//! A call goes through exactly what an HTTP client's call goes through past the API keys:
//! the gateway (model names, routing and failover, the egress policy, pseudonymisation
//! before any backend that is not local, per-key limits), the cost ledger and the audit
//! log, then the handlers and the engines they share with every other client. Only the
//! socket and the key check are skipped: the caller names itself instead, and that name is
//! what the ledger, the audit log and `[[key]]` limits in verre.toml see.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use serde_json::Value;
use tower::ServiceExt;

use crate::AppState;
use crate::gateway::KeyName;

/// The largest answer read back (a chat completion is a few KB; this only stops a
/// misbehaving upstream from filling memory).
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// In-process `/v1` client over a server's state.
#[derive(Clone)]
pub struct ApiClient {
    state: Arc<AppState>,
    app: Router,
}

/// A call that did not answer 200: the status and the OpenAI-shaped error's message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {}: {message}", code.as_deref().unwrap_or("error"))]
pub struct ApiCallError {
    pub status: u16,
    /// `error.code`, else `error.type`, when the answer had one.
    pub code: Option<String>,
    /// `error.param`: the request field the error is about.
    pub param: Option<String>,
    pub message: String,
}

impl ApiCallError {
    /// Whether asking again with the same request cannot help: the request itself was
    /// refused (invalid, not allowed by the policy, unknown model, too large). Limits
    /// (429), an unavailable backend (502, 503, 504) and server errors may pass.
    pub fn is_permanent(&self) -> bool {
        matches!(self.status, 400 | 401 | 403 | 404 | 405 | 413 | 422)
    }

    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            code: None,
            param: None,
            message: message.into(),
        }
    }
}

impl ApiClient {
    pub fn new(state: Arc<AppState>) -> Self {
        let app = crate::api_routes(&state).with_state(state.clone());
        Self { state, app }
    }

    /// The server state the calls go to.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// POST `body` to `path` (`/v1/chat/completions`, ...) as `caller`, once the models are
    /// loaded, and return the JSON answer. Not for `stream: true` requests.
    pub async fn post(
        &self,
        caller: &str,
        path: &str,
        body: &Value,
    ) -> Result<Value, ApiCallError> {
        self.state
            .wait_ready()
            .await
            .map_err(|e| ApiCallError::new(503, format!("the models did not load: {e}")))?;
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ApiCallError::new(400, format!("serialising the request: {e}")))?;
        let mut request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .map_err(|e| ApiCallError::new(400, format!("building the request: {e}")))?;
        request.extensions_mut().insert(KeyName(caller.to_string()));
        let response = match self.app.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| ApiCallError::new(502, format!("reading the answer: {e}")))?;
        let answer: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return answer.ok_or_else(|| {
                ApiCallError::new(
                    502,
                    format!(
                        "the answer is not JSON: {:.200}",
                        String::from_utf8_lossy(&bytes)
                    ),
                )
            });
        }
        let error = answer.as_ref().map(|a| &a["error"]);
        Err(ApiCallError {
            status: status.as_u16(),
            code: error
                .and_then(|e| e["code"].as_str().or(e["type"].as_str()))
                .map(str::to_string),
            param: error.and_then(|e| e["param"].as_str()).map(str::to_string),
            message: error
                .and_then(|e| e["message"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("{:.200}", String::from_utf8_lossy(&bytes))),
        })
    }
}
