//! Every API call into the cost ledger, and `GET /v1/verre/usage` out of it.
//!
//! [`record`] is a middleware around chat, completions and embeddings, served here or
//! upstream: it wraps the response body in a [`Tap`] that passes every byte on as it
//! comes and reads the token counts on the way — the `usage` of a JSON answer, or of a
//! stream's last chunk. A streamed request that did not ask for usage is sent on with
//! `stream_options.include_usage = true`, and the usage chunk that comes back is taken out
//! again before the client sees it. When the body ends (or the client goes away) the
//! entry goes to the [`LedgerWriter`]'s queue; nothing on the request path waits for the
//! database.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use verre_store::ledger::{ApiAudit, ApiCall, GroupBy, LedgerEntry, LedgerWriter};

use crate::cost::{self, CostConfig, CostQuery};
use crate::gateway::KeyName;
use crate::openai::body::{ApiBody, Parsed};
use crate::openai::error::ApiError;
use crate::sse::{self, event_data, event_end};
use crate::state::AppState;

/// How much of the end of a JSON answer is kept to find its `usage`.
const JSON_TAIL: usize = 64 << 10;

/// `[audit]` in `verre.toml`: what the audit log keeps of API calls.
pub use verre_config::AuditConfig;

/// The ledger of a running server: its writer and what to audit.
pub struct Ledger {
    pub writer: Arc<LedgerWriter>,
    pub audit: AuditConfig,
}

/// Which backend answered; the gateway puts it on the response.
#[derive(Debug, Clone)]
pub struct ServedBy {
    pub backend: String,
    pub local: bool,
    /// Whether the request went through the pseudonymiser on its way to the backend.
    pub pseudonymized: bool,
}

fn endpoint(method: &Method, path: &str) -> Option<&'static str> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" => Some("chat"),
        "/v1/completions" => Some("completions"),
        "/v1/embeddings" => Some("embeddings"),
        "/v1/responses" => Some("responses"),
        _ => None,
    }
}

/// The middleware: behind the API keys (it records the key's name), in front of the
/// gateway.
pub async fn record(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(ledger) = state.ledger() else {
        return next.run(request).await;
    };
    let Some(endpoint) = endpoint(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let started = Instant::now();
    let at = verre_store::now_ms();
    let api_key = request
        .extensions()
        .get::<KeyName>()
        .map(|k| k.0.clone())
        .unwrap_or_default();
    // Read once at the edge (openai::body); a body that is not one is metered as asked.
    let body = match request.extensions().get::<Parsed>() {
        Some(Parsed(Ok(body))) => Some(body.clone()),
        _ => None,
    };
    let object = body.as_ref().map(ApiBody::object);
    let field = |name: &str| object.and_then(|o| o.get(name));
    let asked_usage = field("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // A Responses stream always ends with its usage.
    let strip = !matches!(endpoint, "embeddings" | "responses")
        && field("stream") == Some(&Value::Bool(true))
        && !asked_usage;
    let audit = match (ledger.audit.api_calls, ledger.audit.content) {
        (false, _) => ApiAudit::None,
        (true, false) => ApiAudit::Metadata,
        (true, true) => ApiAudit::WithContent(
            object
                .map(|request| serde_json::json!({ "request": request }))
                .unwrap_or(Value::Null),
        ),
    };
    let model = body
        .as_ref()
        .and_then(ApiBody::model)
        .unwrap_or_default()
        .to_string();
    let request = match (strip, body) {
        (true, Some(body)) => {
            let (parts, _) = request.into_parts();
            match ask_for_usage(&body) {
                Ok(asked) => asked.into_request(parts),
                Err(_) => body.into_request(parts),
            }
        }
        _ => request,
    };

    let response = next.run(request).await;
    if response
        .extensions()
        .get::<crate::openai::responses::ServedAsChat>()
        .is_some()
    {
        // Its chat completion was recorded as it went through /v1.
        return response;
    }

    let served = response.extensions().get::<ServedBy>().cloned();
    let (backend, local, pseudonymized) = match (served, state.gateway()) {
        (Some(s), _) => (s.backend, s.local, s.pseudonymized),
        // Without a gateway everything is served in this process.
        (None, None) => ("local".to_string(), true, false),
        // Refused before a backend was chosen.
        (None, Some(_)) => (String::new(), false, false),
    };
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let meter = Meter {
        state: state.clone(),
        call: ApiCall {
            entry: LedgerEntry {
                at,
                api_key,
                endpoint: endpoint.to_string(),
                model,
                backend,
                local,
                status: response.status().as_u16(),
                prompt_tokens: 0,
                completion_tokens: 0,
                first_byte_ms: started.elapsed().as_millis() as u64,
                latency_ms: 0,
            },
            audit,
            pseudonymized,
        },
        started,
        scan: match streamed {
            true => Scan::Sse(SseScan {
                strip,
                ..Default::default()
            }),
            false => Scan::Json(Vec::new()),
        },
    };
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(Tap {
            inner: body,
            meter: Some(meter),
        }),
    )
}

/// The request with `stream_options.include_usage = true`.
fn ask_for_usage(body: &ApiBody) -> Result<ApiBody, ApiError> {
    let mut object = body.to_object();
    let options = object.entry("stream_options").or_insert(Value::Null);
    if !options.is_object() {
        *options = Value::Object(Default::default());
    }
    options["include_usage"] = Value::Bool(true);
    ApiBody::from_object(object)
}

/// A `usage` object: chat's and completions' names, or the Responses API's.
#[derive(Deserialize, Clone, Copy, Default)]
struct Tokens {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: u64,
}

/// What is read from an answer on its way out.
enum Scan {
    /// The end of a JSON answer.
    Json(Vec<u8>),
    Sse(SseScan),
}

#[derive(Default)]
struct SseScan {
    /// Take the usage chunk out (the client did not ask for it).
    strip: bool,
    /// An event not complete yet.
    partial: sse::EventBuffer,
    usage: Option<Tokens>,
    /// `data:` events other than `[DONE]` and the usage chunk.
    events: u64,
}

impl Scan {
    /// The bytes to pass on for `data`.
    fn push(&mut self, data: Bytes) -> Bytes {
        match self {
            Scan::Json(tail) => {
                tail.extend_from_slice(&data);
                if tail.len() > 2 * JSON_TAIL {
                    tail.drain(..tail.len() - JSON_TAIL);
                }
                data
            }
            Scan::Sse(sse) => sse.push(data),
        }
    }

    /// Whatever was held back, at the end.
    fn finish(&mut self) -> Bytes {
        match self {
            Scan::Json(_) => Bytes::new(),
            Scan::Sse(sse) => {
                // An event the upstream did not end with a blank line.
                let rest = sse.partial.take_rest();
                let keep = !rest.is_empty() && sse.event(&rest);
                if sse.strip && keep {
                    Bytes::from(rest)
                } else {
                    Bytes::new()
                }
            }
        }
    }

    fn tokens(&self) -> Tokens {
        match self {
            Scan::Json(tail) => json_usage(tail).unwrap_or_default(),
            Scan::Sse(sse) => sse.usage.unwrap_or(Tokens {
                // No usage from upstream: about one token per event, the role chunk aside.
                prompt_tokens: 0,
                completion_tokens: sse.events.saturating_sub(1),
            }),
        }
    }
}

impl SseScan {
    fn push(&mut self, data: Bytes) -> Bytes {
        if !self.strip && self.partial.is_empty() && !data.windows(7).any(|w| w == b"\"usage\"") {
            // Fast path: count the events of a chunk that carries no usage, pass it as is.
            let events = count_events(&data);
            if data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n") {
                self.events += events;
                return data;
            }
        }
        self.partial.push(&data);
        let mut out = Vec::new();
        while let Some(event) = self.partial.next_event() {
            let event = event.to_vec();
            let keep = self.event(&event);
            if self.strip && keep {
                out.extend_from_slice(&event);
            }
        }
        if self.strip { Bytes::from(out) } else { data }
    }

    /// Read one whole event; false if it is the usage chunk the client did not ask for.
    fn event(&mut self, event: &[u8]) -> bool {
        let Some(data) = event_data(event) else {
            return true;
        };
        if data.trim() == sse::DONE {
            return true;
        }
        if has_usage_object(data.as_bytes()) {
            #[derive(Deserialize)]
            struct Chunk {
                choices: Option<Vec<IgnoredAny>>,
                usage: Option<Tokens>,
                /// A Responses event's response (`response.completed` has the usage).
                response: Option<Nested>,
            }
            #[derive(Deserialize)]
            struct Nested {
                usage: Option<Tokens>,
            }
            if let Ok(chunk) = serde_json::from_str::<Chunk>(&data)
                && let Some(usage) = chunk.usage.or(chunk.response.and_then(|r| r.usage))
            {
                self.usage = Some(usage);
                if chunk.choices.is_none_or(|c| c.is_empty()) {
                    return !self.strip;
                }
            }
        }
        self.events += 1;
        true
    }
}

/// `data:` events in a chunk of whole events, `[DONE]` aside.
fn count_events(bytes: &[u8]) -> u64 {
    let mut n = 0;
    let mut rest = bytes;
    while let Some(end) = event_end(rest) {
        if event_data(&rest[..end]).is_some_and(|d| d.trim() != sse::DONE) {
            n += 1;
        }
        rest = &rest[end..];
    }
    n
}

/// Whether `"usage":` is followed by an object somewhere (not `null`).
fn has_usage_object(bytes: &[u8]) -> bool {
    let key = b"\"usage\"";
    let mut from = 0;
    while let Some(p) = bytes[from..].windows(key.len()).position(|w| w == key) {
        let after = &bytes[from + p + key.len()..];
        let value = after
            .iter()
            .skip_while(|b| b.is_ascii_whitespace())
            .skip_while(|b| **b == b':')
            .find(|b| !b.is_ascii_whitespace());
        if value == Some(&b'{') {
            return true;
        }
        from += p + key.len();
    }
    false
}

/// The last `"usage": {...}` in the end of a JSON answer.
fn json_usage(tail: &[u8]) -> Option<Tokens> {
    let key = b"\"usage\"";
    let at = tail.windows(key.len()).rposition(|w| w == key)?;
    let rest = &tail[at + key.len()..];
    let colon = rest.iter().position(|b| *b == b':')?;
    serde_json::Deserializer::from_slice(&rest[colon + 1..])
        .into_iter::<Tokens>()
        .next()?
        .ok()
}

/// What is known of a call while its answer is on the way.
struct Meter {
    state: Arc<AppState>,
    call: ApiCall,
    started: Instant,
    scan: Scan,
}

impl Meter {
    fn done(mut self, completed: bool) {
        let tokens = self.scan.tokens();
        let entry = &mut self.call.entry;
        entry.prompt_tokens = tokens.prompt_tokens;
        entry.completion_tokens = tokens.completion_tokens;
        entry.latency_ms = self.started.elapsed().as_millis() as u64;
        if !completed {
            // The client went away before the end (nginx's "client closed request").
            entry.status = 499;
        }
        if let Some(gateway) = self.state.gateway() {
            gateway.spend_tokens(
                &entry.api_key,
                entry.prompt_tokens + entry.completion_tokens,
                entry.at,
            );
        }
        if let Some(ledger) = self.state.ledger() {
            ledger.writer.record(self.call);
        }
    }
}

/// A response body that passes through and meters what passes.
pub struct Tap {
    inner: Body,
    meter: Option<Meter>,
}

impl Tap {
    fn finish(&mut self, completed: bool) -> Bytes {
        let Some(mut meter) = self.meter.take() else {
            return Bytes::new();
        };
        let rest = meter.scan.finish();
        meter.done(completed);
        rest
    }

    fn strips(&self) -> bool {
        matches!(&self.meter, Some(Meter { scan: Scan::Sse(s), .. }) if s.strip)
    }
}

impl http_body::Body for Tap {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        loop {
            let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
            let Some(meter) = this.meter.as_mut() else {
                return Poll::Ready(frame);
            };
            match frame {
                None => {
                    let rest = this.finish(true);
                    return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(rest))));
                }
                Some(Err(e)) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    let mut out = meter.scan.push(data);
                    if this.inner.is_end_stream() {
                        let rest = this.finish(true);
                        if !rest.is_empty() {
                            out = [out, rest].concat().into();
                        }
                    }
                    if out.is_empty() && !this.inner.is_end_stream() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.meter.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.strips() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[derive(Deserialize)]
pub struct UsageParams {
    since: Option<String>,
    by: Option<String>,
    key: Option<String>,
}

/// `GET /v1/verre/usage[?since=7d&by=key|model|backend&key=NAME]`: what `verre cost
/// --json` prints. A key sees its own requests; a key with `admin = true` in `[[key]]`
/// (or anyone, when the server runs without keys) sees every key's.
pub async fn usage(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<KeyName>>,
    Query(params): Query<UsageParams>,
) -> Result<Response, ApiError> {
    let Some(store) = state.store() else {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "this server runs without a database, so it keeps no ledger".into(),
            kind: "server_error",
            param: None,
            code: Some("no_ledger"),
        });
    };
    let caller = key.map(|Extension(KeyName(name))| name);
    let admin = match (&caller, state.keys()) {
        (_, None) => true,
        (Some(name), Some(_)) => state.gateway().is_some_and(|g| g.key_is_admin(name)),
        (None, Some(_)) => false,
    };
    let api_key = match (admin, params.key) {
        (true, wanted) => wanted,
        (false, Some(wanted)) if Some(&wanted) != caller.as_ref() => {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "this key may only see its own usage; `admin = true` in its [[key]] shows {wanted:?}'s"
                ),
                kind: "invalid_request_error",
                param: Some("key".into()),
                code: Some("not_admin"),
            });
        }
        (false, _) => caller.clone(),
    };
    let since = params
        .since
        .as_deref()
        .map(cost::parse_since)
        .transpose()
        .map_err(|e| ApiError::invalid("since", e.to_string()))?;
    let by = match params.by.as_deref() {
        None => None,
        Some("key") => Some(GroupBy::Key),
        Some("model") => Some(GroupBy::Model),
        Some("backend") => Some(GroupBy::Backend),
        Some(other) => {
            return Err(ApiError::invalid(
                "by",
                format!("by={other:?}: expected key, model or backend"),
            ));
        }
    };
    let default_cost = CostConfig::default();
    let config = state.gateway().map_or(&default_cost, |g| g.cost());
    let report = cost::report(store, config, &CostQuery { since, by, api_key })
        .await
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    Ok(Json(report).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(chunks: &[&str]) -> String {
        chunks.iter().map(|c| format!("data: {c}\n\n")).collect()
    }

    #[test]
    fn the_usage_chunk_is_read_and_taken_out_when_not_asked_for() {
        let stream = sse(&[
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"b"}}],"usage":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#,
            "[DONE]",
        ]);
        for strip in [true, false] {
            let mut scan = Scan::Sse(SseScan {
                strip,
                ..Default::default()
            });
            // In pieces that split events anywhere.
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(13) {
                out.extend_from_slice(&scan.push(Bytes::copy_from_slice(piece)));
            }
            out.extend_from_slice(&scan.finish());
            let out = String::from_utf8(out).unwrap();
            let tokens = scan.tokens();
            assert_eq!((tokens.prompt_tokens, tokens.completion_tokens), (7, 2));
            assert_eq!(out.contains("prompt_tokens"), !strip, "{out}");
            assert!(out.contains(r#""content":"b""#) && out.ends_with("data: [DONE]\n\n"));
        }
    }

    #[test]
    fn a_stream_without_usage_is_estimated_by_its_events() {
        let mut scan = Scan::Sse(SseScan::default());
        let stream = sse(&[
            r#"{"choices":[{"delta":{"role":"assistant"}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"}}]}"#,
            r#"{"choices":[{"delta":{"content":"b"}}]}"#,
            "[DONE]",
        ]);
        assert_eq!(scan.push(Bytes::from(stream.clone())), stream.as_bytes());
        assert_eq!(scan.tokens().completion_tokens, 2);
    }

    #[test]
    fn usage_is_found_at_the_end_of_a_json_answer() {
        let mut scan = Scan::Json(Vec::new());
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"{}"}}}}],"usage": {{"prompt_tokens":3,"completion_tokens":5}}}}"#,
            "x".repeat(3 * JSON_TAIL)
        );
        for piece in body.as_bytes().chunks(1000) {
            scan.push(Bytes::copy_from_slice(piece));
        }
        let t = scan.tokens();
        assert_eq!((t.prompt_tokens, t.completion_tokens), (3, 5));
        assert!(json_usage(br#"{"usage":null}"#).is_none());
    }

    #[test]
    fn usage_is_asked_for_in_the_request() {
        let parse = |s: &'static str| ApiBody::parse(Bytes::from(s)).unwrap();
        let asked = ask_for_usage(&parse(r#" {"model":"m","stream":true}"#)).unwrap();
        assert_eq!(asked.object()["stream_options"]["include_usage"], true);
        assert_eq!(asked.model(), Some("m"));
        let asked = ask_for_usage(&parse(
            r#"{"model":"m","stream_options":{"include_usage":false}}"#,
        ))
        .unwrap();
        assert_eq!(asked.object()["stream_options"]["include_usage"], true);
        let asked = ask_for_usage(&parse(r#"{"model":"m","stream_options":null}"#)).unwrap();
        assert_eq!(asked.object()["stream_options"]["include_usage"], true);
        let bytes: Value = serde_json::from_slice(asked.bytes()).unwrap();
        assert_eq!(
            bytes["stream_options"]["include_usage"], true,
            "the bytes say it too"
        );
    }
}
