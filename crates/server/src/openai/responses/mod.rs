//! The Responses API: `POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`,
//! `GET /v1/responses/{id}/input_items`, `POST /v1/responses/{id}/cancel`.
//!
//! A response is served as a chat completion: the request becomes a chat request
//! ([`request`]) that goes through `/v1` in-process, as the caller, exactly as the caller's
//! own chat request would — the gateway (routing, egress policy, pseudonymisation before
//! a remote backend, key limits), the ledger and the audit log, the same constrained
//! decoding and tool-call grammar — and its answer, whole or streamed, becomes the
//! response ([`output`]). A gateway backend marked `responses = true` gets the request
//! itself instead (the gateway passes it through before it reaches this handler).
//!
//! With `store` (the default) the response and the conversation it answered are kept
//! ([`kept`]) for `previous_response_id`, `GET` and `DELETE`; each is the caller's only.

pub mod kept;
pub mod output;
pub mod request;

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{Request, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;
use verre_store::StoredResponse;

use super::body::ApiBody;
use super::error::ApiError;
use crate::gateway::KeyName;
use crate::sse::{self, event_data, event_end};
use crate::state::{AppState, unix_now};
use output::{Answer, EventWriter, response_object};
use request::ResponsesRequest;

/// The largest chat answer read back whole.
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// The `/v1/responses` routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/responses", post(create))
        .route("/v1/responses/{id}", get(retrieve).delete(delete))
        .route("/v1/responses/{id}/input_items", get(input_items))
        .route("/v1/responses/{id}/cancel", post(cancel))
}

/// A new id: `prefix_` and 24 random hex digits.
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 12] = rand::random();
    format!("{prefix}_{}", hex::encode(bytes))
}

fn key_name(key: &Option<Extension<KeyName>>) -> String {
    key.as_ref().map(|k| k.0.0.clone()).unwrap_or_default()
}

/// One response being made.
#[derive(Clone)]
struct Run {
    state: Arc<AppState>,
    key: Option<KeyName>,
    req: Arc<ResponsesRequest>,
    id: String,
    created_at: u64,
    /// Every input item the answer is to: the earlier responses' and this request's.
    conversation: Arc<Vec<Value>>,
}

/// Marks a Responses answer whose chat completion the ledger already recorded (as it went
/// through `/v1`): the ledger does not count it twice.
#[derive(Debug, Clone, Copy)]
pub struct ServedAsChat;

pub async fn create(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<KeyName>>,
    body: ApiBody,
) -> Result<Response, ApiError> {
    let mut response = respond(state, key, body).await?;
    response.extensions_mut().insert(ServedAsChat);
    Ok(response)
}

/// A response, or the refusal of a request that never became a chat completion.
async fn respond(
    state: Arc<AppState>,
    key: Option<Extension<KeyName>>,
    body: ApiBody,
) -> Result<Response, ApiError> {
    let req = ResponsesRequest::from_object(body.object())?;
    if req.stream && req.background {
        let mut e = ApiError::unsupported("stream");
        e.message =
            "streaming a background response is not supported by this server: send one of stream and background".into();
        return Err(e);
    }
    let api_key = key_name(&key);
    let mut conversation = Vec::new();
    if let Some(previous) = &req.previous_response_id {
        let kept = state
            .responses()
            .get(state.store(), previous, &api_key)
            .await?
            .ok_or_else(|| kept::not_found(previous, Some("previous_response_id")))?;
        if matches!(kept.status.as_str(), "queued" | "in_progress") {
            return Err(ApiError::invalid(
                "previous_response_id",
                format!(
                    "the response {previous} is still {}: wait until it ends",
                    kept.status
                ),
            ));
        }
        conversation.extend(kept.input.as_array().cloned().unwrap_or_default());
        conversation.extend(kept.body["output"].as_array().cloned().unwrap_or_default());
    }
    conversation.extend(req.input.iter().cloned());
    let run = Run {
        state,
        key: key.map(|k| k.0),
        req: Arc::new(req),
        id: new_id("resp"),
        created_at: unix_now(),
        conversation: Arc::new(conversation),
    };
    if run.req.background {
        return run.start_background().await;
    }
    let chat = run.call_chat().await;
    if !chat.status().is_success() {
        return Ok(relay_error(chat).await);
    }
    if run.req.stream {
        return Ok(run.stream(chat));
    }
    let answer = match read_json(chat).await {
        Ok(completion) => output::from_chat_completion(&completion),
        Err(message) => Answer::failed(&message),
    };
    let body = run.finish(&answer).await?;
    Ok(Json(body).into_response())
}

impl Run {
    fn api_key(&self) -> String {
        self.key.as_ref().map(|k| k.0.clone()).unwrap_or_default()
    }

    fn object(&self, status: &str, answer: &Answer) -> Value {
        response_object(&self.req, &self.id, self.created_at, status, answer)
    }

    /// The chat completion, through `/v1` as the caller.
    async fn call_chat(&self) -> Response {
        let chat = self.req.chat_body(&self.conversation);
        let app = crate::api_routes(&self.state).with_state(self.state.clone());
        let mut request = Request::post("/v1/chat/completions")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(chat.to_string()))
            .expect("a request from valid parts");
        if let Some(key) = &self.key {
            request.extensions_mut().insert(key.clone());
        }
        match app.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// Keep the response as `body` says (when `store`).
    async fn keep(&self, body: &Value, first: bool) -> Result<(), ApiError> {
        if !self.req.store {
            return Ok(());
        }
        let state = &self.state;
        let kept = StoredResponse {
            id: self.id.clone(),
            api_key: self.api_key(),
            model: self.req.model.clone(),
            status: body["status"].as_str().unwrap_or_default().to_string(),
            created_at: self.created_at as i64 * 1000,
            input: Value::Array(self.conversation.to_vec()),
            body: body.clone(),
        };
        state.responses().put(state.store(), kept).await?;
        if first && let Some(store) = state.store() {
            let detail = json!({
                "model": self.req.model,
                "previous_response_id": self.req.previous_response_id,
            });
            kept::audit(
                store,
                &self.api_key(),
                "api.responses.create",
                &self.id,
                detail,
            )
            .await;
        }
        Ok(())
    }

    /// The finished response, kept when asked.
    async fn finish(&self, answer: &Answer) -> Result<Value, ApiError> {
        let body = self.object(answer.status(), answer);
        self.keep(&body, true).await?;
        Ok(body)
    }

    /// The chat call, noting in the store every [`kept::HEARTBEAT`] that the response is
    /// still being made (another server, or this one after a restart, fails a response
    /// whose heartbeat stopped: [`kept::LEASE`]).
    async fn call_chat_with_heartbeat(&self) -> Response {
        let call = self.call_chat();
        tokio::pin!(call);
        let mut beat = tokio::time::interval(kept::HEARTBEAT);
        beat.tick().await;
        loop {
            tokio::select! {
                chat = &mut call => return chat,
                _ = beat.tick() => {
                    if let Some(store) = self.state.store().filter(|_| self.req.store)
                        && let Err(e) = store.touch_response(&self.id, verre_store::now_ms()).await
                    {
                        tracing::warn!("background response {}: {e:#}", self.id);
                    }
                }
            }
        }
    }

    /// Answer `queued` now and make the response in a task (`cancel` stops it).
    async fn start_background(self) -> Result<Response, ApiError> {
        let queued = self.object("queued", &Answer::default());
        self.keep(&queued, true).await?;
        let run = self.clone();
        let responses = self.state.responses();
        let task = tokio::spawn(async move {
            let in_progress = run.object("in_progress", &Answer::default());
            if let Err(e) = run.keep(&in_progress, false).await {
                tracing::error!("background response {}: {}", run.id, e.message);
            }
            let chat = run.call_chat_with_heartbeat().await;
            let answer = match chat.status().is_success() {
                true => match read_json(chat).await {
                    Ok(completion) => output::from_chat_completion(&completion),
                    Err(message) => Answer::failed(&message),
                },
                false => {
                    let status = chat.status();
                    let error = read_json(chat).await.unwrap_or_default();
                    let mut answer = Answer::failed(
                        error["error"]["message"]
                            .as_str()
                            .unwrap_or("the model did not answer"),
                    );
                    if status.is_client_error() {
                        answer.error = Some(json!({
                            "code": error["error"]["code"].as_str().unwrap_or("invalid_request"),
                            "message": error["error"]["message"],
                        }));
                    }
                    answer
                }
            };
            let body = run.object(answer.status(), &answer);
            if let Err(e) = run.keep(&body, false).await {
                tracing::error!("background response {}: {}", run.id, e.message);
            }
            run.state.responses().ended(&run.id);
        });
        responses.running(&self.id, task.abort_handle());
        // It may have ended before it was noted as running.
        if task.is_finished() {
            responses.ended(&self.id);
        }
        Ok(Json(queued).into_response())
    }

    /// Stream the chat answer as Responses events; keep the response at the end.
    fn stream(self, chat: Response) -> Response {
        let mut writer = EventWriter::default();
        let mut first = Vec::new();
        let created = self.object("in_progress", &Answer::default());
        first.push(writer.event("response.created", json!({ "response": created })));
        first.push(writer.event("response.in_progress", json!({ "response": created })));
        let state = StreamState {
            run: self,
            body: chat.into_body().into_data_stream().boxed(),
            buffer: Vec::new(),
            writer,
            ended: false,
        };
        let events = stream::once(async move { first })
            .chain(stream::unfold(state, |mut s| async move {
                if s.ended {
                    return None;
                }
                let events = s.next_events().await;
                Some((events, s))
            }))
            .flat_map(|events| {
                stream::iter(events.into_iter().map(|e| {
                    let kind = e["type"].as_str().unwrap_or("message").to_string();
                    Ok::<_, Infallible>(Event::default().event(kind).data(e.to_string()))
                }))
            });
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    }
}

struct StreamState {
    run: Run,
    body: BoxStream<'static, Result<Bytes, axum::Error>>,
    /// Bytes of a chat event not complete yet.
    buffer: Vec<u8>,
    writer: EventWriter,
    ended: bool,
}

impl StreamState {
    /// The events for the next bytes of the chat stream; at its end, the last ones.
    async fn next_events(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        match self.body.next().await {
            Some(Ok(bytes)) => {
                self.buffer.extend_from_slice(&bytes);
                while let Some(end) = event_end(&self.buffer) {
                    let event: Vec<u8> = self.buffer.drain(..end).collect();
                    let Some(data) = event_data(&event) else {
                        continue;
                    };
                    if data.trim() == sse::DONE {
                        continue;
                    }
                    match serde_json::from_str::<Value>(&data) {
                        Ok(chunk) if chunk.get("error").is_some() => {
                            let message = chunk["error"]["message"]
                                .as_str()
                                .unwrap_or("the model failed")
                                .to_string();
                            self.writer.answer.error = Answer::failed(&message).error;
                        }
                        Ok(chunk) => events.extend(self.writer.chunk(&chunk)),
                        Err(_) => {}
                    }
                }
                if self.writer.answer.error.is_none() {
                    return events;
                }
            }
            Some(Err(e)) => {
                self.writer.answer.error =
                    Answer::failed(&format!("reading the answer: {e}")).error;
            }
            None => {}
        }
        // The end (or a failure): close what is open and say how it ended.
        self.ended = true;
        events.extend(self.writer.finish());
        let answer = self.writer.answer.clone();
        let status = answer.status();
        let body = self.run.object(status, &answer);
        let kind = match status {
            "completed" => "response.completed",
            "incomplete" => "response.incomplete",
            _ => "response.failed",
        };
        if let Err(e) = self.run.keep(&body, true).await {
            tracing::error!("keeping the response {}: {}", self.run.id, e.message);
        }
        events.push(self.writer.event(kind, json!({ "response": body })));
        events
    }
}

/// A whole JSON answer, or why it is not one.
async fn read_json(response: Response) -> Result<Value, String> {
    let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not JSON: {e}"))
}

/// The chat request's error as this request's: the same status and body, its `param`
/// named as the Responses request names it.
async fn relay_error(chat: Response) -> Response {
    let status = chat.status();
    let headers = chat.headers().clone();
    let mut body = read_json(chat).await.unwrap_or_else(|message| {
        json!({ "error": { "message": message, "type": "server_error", "param": null, "code": null } })
    });
    if let Some(param) = body["error"]["param"].as_str() {
        body["error"]["param"] = request::responses_param(param).into();
    }
    let mut response = (status, Json(body)).into_response();
    for name in [
        header::RETRY_AFTER,
        header::HeaderName::from_static("x-verre-backend"),
    ] {
        if let Some(value) = headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<KeyName>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let kept = state
        .responses()
        .get(state.store(), &id, &key_name(&key))
        .await?
        .ok_or_else(|| kept::not_found(&id, None))?;
    Ok(Json(kept.body))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<KeyName>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state
        .responses()
        .delete(state.store(), &id, &key_name(&key))
        .await?
    {
        true => Ok(Json(
            json!({ "id": id, "object": "response", "deleted": true }),
        )),
        false => Err(kept::not_found(&id, None)),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
    order: Option<String>,
}

/// The input items of a response: the whole conversation it answered, newest first
/// unless `order=asc`.
pub async fn input_items(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<KeyName>>,
    Path(id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let kept = state
        .responses()
        .get(state.store(), &id, &key_name(&key))
        .await?
        .ok_or_else(|| kept::not_found(&id, None))?;
    let mut items = kept.input.as_array().cloned().unwrap_or_default();
    match query.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(_) => return Err(ApiError::invalid("order", "order must be `asc` or `desc`")),
    }
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            "limit must be between 1 and 100",
        ));
    }
    let position = |cursor: &str| items.iter().position(|i| i["id"] == cursor);
    let start = match query.after.as_deref() {
        Some(after) => position(after).map_or(items.len(), |p| p + 1),
        None => 0,
    };
    let end = match query.before.as_deref() {
        Some(before) => position(before).unwrap_or(items.len()),
        None => items.len(),
    };
    let page: Vec<Value> = items
        .get(start..end.max(start))
        .unwrap_or_default()
        .iter()
        .take(limit)
        .cloned()
        .collect();
    let has_more = end.max(start) - start > page.len();
    Ok(Json(json!({
        "object": "list",
        "data": page,
        "first_id": page.first().map(|i| i["id"].clone()),
        "last_id": page.last().map(|i| i["id"].clone()),
        "has_more": has_more,
    })))
}

/// Stop a background response: `cancelled`, as it stands. One that already ended is
/// returned as it ended.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<KeyName>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let api_key = key_name(&key);
    let responses = state.responses();
    let kept = responses
        .get(state.store(), &id, &api_key)
        .await?
        .ok_or_else(|| kept::not_found(&id, None))?;
    if kept.body["background"] != true {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: "Only background responses can be cancelled.".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_value"),
        });
    }
    responses.stop(&id);
    // Read again: the task may have ended between the read above and the stop.
    let mut kept = responses
        .get(state.store(), &id, &api_key)
        .await?
        .ok_or_else(|| kept::not_found(&id, None))?;
    if matches!(kept.status.as_str(), "queued" | "in_progress") {
        kept.status = "cancelled".into();
        kept.body["status"] = "cancelled".into();
        responses.put(state.store(), kept.clone()).await?;
    }
    Ok(Json(kept.body))
}
