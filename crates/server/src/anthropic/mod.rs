//! Anthropic's Messages API: `POST /v1/messages` (whole and streamed, tools, thinking) and
//! `POST /v1/messages/count_tokens`, as vLLM and llama-server serve it for the tools built
//! on Anthropic's SDKs.
//!
//! A Messages request is translated into a chat completion request ([`request`]) and
//! served by the `/v1` stack in this process — the gateway (routing, egress policy,
//! pseudonymisation for a remote backend, key limits), the ledger and audit log, then the
//! chat handler with its constrained decoding and tool grammar — so a remote backend gets
//! the chat request and every record says `chat`. The answer, whole or streamed, is
//! translated back ([`response`]). Errors on these paths, the API keys' included, take
//! Anthropic's shape ([`anthropic_errors`]). `anthropic-version` and `anthropic-beta` are
//! accepted and not read.

pub mod request;
pub mod response;

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::gateway::KeyName;
use crate::openai::body::ApiBody;
use crate::openai::chat;
use crate::openai::error::ApiError;
use crate::openai::request::ChatRequest;
use crate::sse::{event_data, event_end};
use crate::state::AppState;
use request::{Purpose, Translated};
use response::MessageEvents;

/// The largest chat answer read back whole (a completion is a few KB).
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// Where the Messages handlers send the chat requests they translate to.
#[derive(Clone)]
struct Messages {
    state: Arc<AppState>,
    /// The `/v1` stack past the API keys: the same one HTTP clients reach.
    chat: Router,
}

/// The Messages routes, over the `/v1` stack of `state`.
pub fn routes<S: Clone + Send + Sync + 'static>(state: &Arc<AppState>) -> Router<S> {
    let messages = Messages {
        state: state.clone(),
        chat: crate::api_routes(state).with_state(state.clone()),
    };
    Router::new()
        .route("/v1/messages", post(create))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .with_state(messages)
}

/// Whether a path is served by this module (its errors take Anthropic's shape).
fn is_messages_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// The middleware around `/v1`, outside the API keys: an error answered on a Messages
/// path, by whichever layer, in Anthropic's shape.
pub async fn anthropic_errors(request: Request, next: Next) -> Response {
    let messages = is_messages_path(request.uri().path());
    let response = next.run(request).await;
    if !messages || response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let status = parts.status;
    let bytes = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let shaped = response::anthropic_error(status, &body);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(shaped.to_string()))
}

/// `POST /v1/messages`.
async fn create(
    State(messages): State<Messages>,
    key: Option<Extension<KeyName>>,
    body: ApiBody,
) -> Result<Response, ApiError> {
    let translated = request::translate(body.object(), Purpose::Generate)?;
    let answer = messages.chat(&translated, key).await?;
    if !answer.status().is_success() {
        // Shaped by `anthropic_errors` on the way out.
        return Ok(answer);
    }
    let backend = answer.headers().get("x-verre-backend").cloned();
    let mut response = match translated.stream {
        true => stream(answer, &translated),
        false => whole(answer, &translated).await?,
    };
    if let Some(backend) = backend {
        response.headers_mut().insert("x-verre-backend", backend);
    }
    Ok(response)
}

/// `POST /v1/messages/count_tokens`: the prompt tokens of a request, rendered as it would
/// be served, on a model of this process.
async fn count_tokens(
    State(messages): State<Messages>,
    body: ApiBody,
) -> Result<Json<Value>, ApiError> {
    let translated = request::translate(body.object(), Purpose::CountTokens)?;
    let req = ChatRequest::from_object(&translated.chat)?;
    let served = messages.state.model(&req.model)?;
    let tokens = chat::prompt_tokens(&served, &req).await?;
    Ok(Json(json!({ "input_tokens": tokens })))
}

impl Messages {
    /// The translated request through the `/v1` stack, as the caller.
    async fn chat(
        &self,
        translated: &Translated,
        key: Option<Extension<KeyName>>,
    ) -> Result<Response, ApiError> {
        let bytes = serde_json::to_vec(&translated.chat)
            .map_err(|e| ApiError::internal(format!("serialising the chat request: {e}")))?;
        let mut request = Request::post("/v1/chat/completions")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .map_err(|e| ApiError::internal(format!("building the chat request: {e}")))?;
        if let Some(Extension(key)) = key {
            request.extensions_mut().insert(key);
        }
        match self.chat.clone().oneshot(request).await {
            Ok(response) => Ok(response),
            Err(never) => match never {},
        }
    }
}

/// A whole chat answer as a message.
async fn whole(answer: Response, translated: &Translated) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(answer.into_body(), MAX_ANSWER_BYTES)
        .await
        .map_err(|e| ApiError::internal(format!("reading the chat answer: {e}")))?;
    let chat: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::internal(format!(
            "the chat answer is not JSON ({e}): {:.200}",
            String::from_utf8_lossy(&bytes)
        ))
    })?;
    let message = response::message(&chat, &translated.model, &translated.stop_sequences);
    Ok(Json(message).into_response())
}

/// What the stream translation holds between reads.
struct Translation {
    chat: BoxStream<'static, Result<Bytes, axum::Error>>,
    buffer: Vec<u8>,
    events: MessageEvents,
    done: bool,
}

/// A streamed chat answer as Messages events, each sent as it is translated.
fn stream(answer: Response, translated: &Translated) -> Response {
    let state = Translation {
        chat: answer.into_body().into_data_stream().boxed(),
        buffer: Vec::new(),
        events: MessageEvents::new(&translated.model, translated.stop_sequences.clone()),
        done: false,
    };
    let body = stream::unfold(state, |mut s| async move {
        let events = s.next_events().await?;
        let text: String = events.iter().map(response::event_text).collect();
        Some((Ok::<_, Infallible>(Bytes::from(text)), s))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

impl Translation {
    /// The next events to send; `None` at the end.
    async fn next_events(&mut self) -> Option<Vec<response::Event>> {
        loop {
            if let Some(end) = event_end(&self.buffer) {
                let event: Vec<u8> = self.buffer.drain(..end).collect();
                let events = match event_data(&event) {
                    Some(data) => self.events.data(&data),
                    // A keep-alive: Anthropic's is a ping.
                    None => self.events.ping(),
                };
                if !events.is_empty() {
                    return Some(events);
                }
                continue;
            }
            if self.done {
                return None;
            }
            match self.chat.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    self.done = true;
                    return Some(self.events.fail(&format!("reading the chat stream: {e}")));
                }
                None => {
                    self.done = true;
                    let events = self.events.end();
                    if !events.is_empty() {
                        return Some(events);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_paths_are_told_apart() {
        assert!(is_messages_path("/v1/messages"));
        assert!(is_messages_path("/v1/messages/count_tokens"));
        assert!(!is_messages_path("/v1/messagesx"));
        assert!(!is_messages_path("/v1/chat/completions"));
    }
}
