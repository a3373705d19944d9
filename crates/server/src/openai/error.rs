//! Errors as OpenAI shapes them: `{"error": {"message", "type", "param", "code"}}` with the
//! HTTP status the official clients turn into their exception classes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use verre_engine::EngineError;
use verre_engine::engine::SubmitError;

/// Seconds a client is told to wait when the engine's queue is full.
const RETRY_AFTER_SECONDS: u32 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, ...
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// A field with a value that cannot be used.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .param(param)
            .code("invalid_value")
    }

    /// A request that is wrong as a whole (no single field to blame).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// A body that is not JSON, or JSON of the wrong shape.
    pub fn invalid_json(message: impl Into<String>, param: Option<String>) -> Self {
        let mut e = Self::bad_request(message);
        e.param = param;
        e
    }

    /// A field OpenAI knows and verre does not serve yet: refused, never silently ignored.
    pub fn unsupported(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("`{param}` is not supported by this server yet; remove it from the request"),
        )
        .param(param)
        .code("unsupported_parameter")
    }

    /// A schema or grammar that constrained decoding cannot enforce: refused, never
    /// generated without it.
    pub fn unsupported_grammar(param: &str, reason: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("`{param}`: {reason}"),
        )
        .param(param)
        .code("unsupported_schema")
    }

    pub fn context_length(param: &str, message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .param(param)
            .code("context_length_exceeded")
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .code("invalid_api_key")
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "The model `{model}` does not exist or is not served here. See GET /v1/models."
            ),
        )
        .param("model")
        .code("model_not_found")
    }

    /// A model that is served, but not by this endpoint (a chat model asked for embeddings).
    pub fn wrong_model_kind(model: &str, what: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("{model} {what}"),
        )
        .param("model")
        .code("model_not_supported")
    }

    /// A method the route does not serve (the `Allow` header says which it does).
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            message,
        )
        .code("method_not_allowed")
    }

    /// A request this server will not serve to this caller (`code` says why).
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "invalid_request_error", message).code(code)
    }

    /// A body not sent as JSON.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            message,
        )
        .code("unsupported_media_type")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message).code("not_found")
    }

    pub fn loading() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the model is still loading; try again in a moment",
        )
        .code("model_loading")
    }

    pub fn queue_full(message: String) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "requests", message).code("rate_limit_exceeded")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The body, also sent as an SSE event when a stream fails midway.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull(_) => ApiError::queue_full(e.to_string()),
            SubmitError::Invalid(inner) => inner.into(),
            SubmitError::Stopped => ApiError::internal(e.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::ContextLength { .. } => {
                ApiError::context_length("messages", e.to_string())
            }
            EngineError::EmptyPrompt => ApiError::bad_request(e.to_string()),
            EngineError::InvalidParameter(_) => ApiError::bad_request(e.to_string()),
        }
    }
}
