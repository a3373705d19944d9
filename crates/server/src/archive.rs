//! The archive over the OpenAI API: `"model": "archive:<chat model>"` on
//! `/v1/chat/completions` retrieves passages for the last user message from the archive
//! (verre-archive, `verre archive add`), adds them to the conversation with the
//! instruction to cite them as `[document, p. N]`, and sends the request on to the chat
//! model through the rest of `/v1` (gateway, ledger, handlers). The answer carries two
//! extension fields: `passages` (what was retrieved: document, page, text, scores) and
//! `citations` (the passages the answer cites). A stream starts with one chunk that has no
//! choices and the `passages`. When no passage is close enough to the question, the answer
//! says so and no model is called.
//!
//! Optional request field `archive`: `{"k": 5, "retrieval": "hybrid"|"vector"|"keyword",
//! "min_score": 0.35}`; it is not passed on.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use verre_archive::{Archive, Passage, Retrieval, answer};

use crate::AppState;
use crate::openai::body::{ApiBody, Parsed};
use crate::openai::error::ApiError;

/// The prefix that names the archive in `model`.
pub const PREFIX: &str = "archive:";

/// Largest answer read back to add its citations.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The middleware, inside [`crate::openai::body::read_once`] and outside the ledger.
pub async fn route(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if request.uri().path() != "/v1/chat/completions" {
        return next.run(request).await;
    }
    let body = match request.extensions().get::<Parsed>() {
        Some(Parsed(Ok(body))) if body.model().is_some_and(|m| m.starts_with(PREFIX)) => {
            body.clone()
        }
        _ => return next.run(request).await,
    };
    match ask(&state, body, request, next).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// What the request asks of the archive.
struct Options {
    k: usize,
    retrieval: Retrieval,
    min_score: f32,
}

fn options(object: &Map<String, Value>) -> Result<Options, ApiError> {
    let mut o = Options {
        k: 5,
        retrieval: Retrieval::Hybrid,
        min_score: answer::MIN_COSINE,
    };
    let Some(given) = object.get("archive") else {
        return Ok(o);
    };
    let given = given
        .as_object()
        .ok_or_else(|| ApiError::invalid("archive", "`archive` must be an object"))?;
    if let Some(k) = given.get("k") {
        o.k = k
            .as_u64()
            .filter(|k| (1..=50).contains(k))
            .ok_or_else(|| ApiError::invalid("archive.k", "`archive.k` must be 1 to 50"))?
            as usize;
    }
    if let Some(r) = given.get("retrieval") {
        o.retrieval = r
            .as_str()
            .ok_or_else(|| ApiError::invalid("archive.retrieval", "must be a string"))?
            .parse()
            .map_err(|e: String| ApiError::invalid("archive.retrieval", e))?;
    }
    if let Some(s) = given.get("min_score") {
        o.min_score = s
            .as_f64()
            .filter(|s| (0.0..=1.0).contains(s))
            .ok_or_else(|| {
                ApiError::invalid("archive.min_score", "`archive.min_score` must be 0 to 1")
            })? as f32;
    }
    Ok(o)
}

/// The archive of this server: its store, and the embedding model its documents were
/// added with (which must be served here).
async fn archive(state: &AppState) -> Result<Arc<Archive>, ApiError> {
    if let Some(a) = state.archive.get() {
        return Ok(a.clone());
    }
    let store = state.store().ok_or_else(|| {
        ApiError::bad_request(
            "the archive needs verre's database: this server runs without one (`verre up`, or `verre serve --database`)",
        )
    })?;
    let documents = store
        .archive_documents()
        .await
        .map_err(|e| ApiError::internal(format!("reading the archive: {e:#}")))?;
    let model = documents
        .first()
        .map(|d| d.model.clone())
        .unwrap_or_else(|| verre_archive::DEFAULT_EMBEDDING_MODEL.to_string());
    let embedding = state.embedding_model(&model).map_err(|_| {
        ApiError::bad_request(format!(
            "the archive's passages are embedded with {model}, which this server does not serve: load it as an embedding model"
        ))
    })?;
    let archive = Arc::new(Archive::new(
        store.clone(),
        embedding.embedder.clone(),
        &model,
    ));
    Ok(state.archive.get_or_init(|| archive).clone())
}

async fn ask(
    state: &AppState,
    body: ApiBody,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let mut object = body.to_object();
    let requested = body.model().unwrap_or_default().to_string();
    let base = requested[PREFIX.len()..].to_string();
    if base.is_empty() {
        return Err(ApiError::invalid(
            "model",
            "`archive:` needs a chat model after it, as in `archive:qwen2.5-coder-1.5b`",
        ));
    }
    // The key must be one that may use the chat model: the passages are the archive's
    // content, answered or not (`[[key]] models`).
    let key = request
        .extensions()
        .get::<crate::gateway::KeyName>()
        .map(|k| k.0.clone());
    if let Some(gateway) = state.gateway()
        && !gateway.key_may_use(key.as_deref(), &base)
    {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "the API key {:?} may not use the model `{base}`, nor the archive through it",
                key.unwrap_or_default()
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_allowed"),
        });
    }
    let options = options(&object)?;
    object.remove("archive");
    let mut messages: Vec<Value> = object
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| ApiError::invalid("messages", "`messages` must be an array"))?;
    let question = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(answer::message_text)
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "messages",
                "the archive answers the last user message: there is none",
            )
        })?;
    let archive = archive(state).await?;
    let passages = archive
        .search(&question, options.k, options.retrieval)
        .await
        .map_err(|e| ApiError::internal(format!("searching the archive: {e:#}")))?;
    let stream = object.get("stream").and_then(Value::as_bool) == Some(true);
    if !answer::relevant(&passages, options.min_score) {
        // Answered here, so counted here: the key's request limits apply to it too.
        if let Some(gateway) = state.gateway()
            && let Err(refusal) = gateway.admit(key.as_deref(), &base, state.store()).await
        {
            return Ok(refusal);
        }
        return Ok(nothing_relevant(&requested, &passages, stream));
    }
    answer::augment(&mut messages, &passages);
    object.insert("messages".into(), Value::Array(messages));
    object.insert("model".into(), Value::String(base));
    let (parts, _) = request.into_parts();
    let response = next
        .run(ApiBody::from_object(object)?.into_request(parts))
        .await;
    if response.status() != StatusCode::OK {
        return Ok(response);
    }
    if stream {
        return Ok(prepend_passages(response, &requested, &passages));
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| ApiError::internal(format!("reading the answer: {e}")))?;
    let mut answer: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::internal(format!("the answer is not JSON: {e}")))?;
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    answer["model"] = Value::String(requested);
    answer["citations"] = json!(answer::cited(&text, &passages));
    answer["passages"] = json!(passages);
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Body::from(answer.to_string())))
}

/// The answer when nothing retrieved is close enough: said, no model called.
fn nothing_relevant(model: &str, passages: &[Passage], stream: bool) -> Response {
    let id = format!("chatcmpl-archive-{}", crate::unix_now());
    let created = crate::unix_now();
    if stream {
        let chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": answer::NOTHING_RELEVANT}, "finish_reason": "stop"}],
            "passages": passages, "citations": [],
        });
        return sse(format!("data: {chunk}\n\ndata: [DONE]\n\n"));
    }
    Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer::NOTHING_RELEVANT}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "passages": passages, "citations": [],
    }))
    .into_response()
}

fn sse(text: String) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(text))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A stream with one chunk first that carries the passages (no choices).
fn prepend_passages(response: Response, model: &str, passages: &[Passage]) -> Response {
    use futures_util::StreamExt;
    let first = json!({
        "id": format!("chatcmpl-archive-{}", crate::unix_now()),
        "object": "chat.completion.chunk", "created": crate::unix_now(), "model": model,
        "choices": [], "passages": passages,
    });
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let head = futures_util::stream::once(async move {
        Ok::<_, axum::Error>(axum::body::Bytes::from(format!("data: {first}\n\n")))
    });
    let stream = head.chain(body.into_data_stream());
    Response::from_parts(parts, Body::from_stream(stream))
}
