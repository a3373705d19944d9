//! Personal data out of requests to backends that are not local, and back into their
//! answers: verre-pii replaces each value with a placeholder (`<PERSON_1>`) before the
//! request leaves, and the answer — a JSON body, or a stream of SSE events in which a
//! placeholder may be split across chunks — gets the originals back in its content, text
//! and tool-call arguments.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::Value;
use verre_pii::{Escape, PiiKind, PseudonymizeOptions, Pseudonymizer, Restorer, StreamRestorer};

use crate::openai::error::ApiError;
use crate::sse;

/// Keys whose values are structure, identifiers or binary data, never text to read: left
/// as they are wherever they appear. Everything else that is a string is pseudonymised.
const NOT_TEXT: &[&str] = &[
    "model",
    "role",
    "type",
    "id",
    "tool_call_id",
    "call_id",
    "previous_response_id",
    "encoding_format",
    "image_url",
    "input_audio",
    "file_data",
    "file_id",
    "logit_bias",
    "required",
    "pattern",
    "format",
    "$ref",
    "$schema",
];

/// Objects whose `name` is an identifier (a tool, a schema), not a person's name.
const NAMED_BY_IDENTIFIER: &[&str] = &[
    "function",
    "functions",
    "function_call",
    "custom",
    "json_schema",
    "tool_choice",
    // Responses: flat function tools, and function_call items among the input.
    "tools",
    "input",
];

/// A request on its way to a pseudonymising backend: the body to send, always the parsed
/// and re-serialised one, and how the answer gets the originals back.
pub struct Pseudonymized {
    pub body: Bytes,
    /// `None` when nothing was replaced.
    pub restorer: Option<Restorer>,
}

/// A named-entity model that finds the names of persons the rules miss (`[pii]
/// ner_model`): its proposals, vetted by the rules, are added to every request's
/// pseudonymiser before any field is rewritten, so that a name is replaced everywhere.
pub struct PersonModel {
    model: verre_engine::model::ner::TokenClassifier,
    threshold: f32,
}

impl PersonModel {
    pub fn new(model: verre_engine::model::ner::TokenClassifier, threshold: f32) -> Self {
        PersonModel { model, threshold }
    }

    /// The names of persons in `text`, as the rules accept them.
    pub fn names(&self, text: &str) -> anyhow::Result<Vec<String>> {
        let spans = self.model.persons(text, self.threshold)?;
        Ok(verre_pii::vet_proposed_names(
            spans.iter().map(|s| &text[s.start..s.end]),
        ))
    }
}

/// `body` (a request for the upstream endpoint `path`) with the personal data in every
/// text-bearing field replaced: message contents, names, tool-call arguments, tool and
/// schema descriptions, prompts, inputs, `user`, `metadata`... A body that cannot be
/// parsed in full (invalid UTF-8, a lone surrogate, nesting past serde_json's limit, a
/// number out of range) is refused: it is never forwarded as it came. With a
/// `person_model`, the names it finds in those same fields are replaced too; if it fails,
/// the request is refused (500), not sent with less replaced. It runs on the calling
/// thread: call this off the async runtime when a model is given.
pub fn pseudonymize(
    body: &Bytes,
    person_model: Option<&PersonModel>,
) -> Result<Pseudonymized, ApiError> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| {
        cannot_pseudonymize(format!(
            "the request body could not be read in full to pseudonymise it before it leaves \
             for a backend that is not local ({e}); it was not sent"
        ))
    })?;
    let Value::Object(request) = &mut value else {
        return Err(cannot_pseudonymize(
            "the request body is not a JSON object; it was not sent".into(),
        ));
    };
    let mut p = Pseudonymizer::new(PseudonymizeOptions::default());
    if let Some(model) = person_model {
        let mut names = Vec::new();
        let mut failure = None;
        for_each_text(request, &mut |field, text| {
            if field == Field::Text && failure.is_none() {
                match model.names(text) {
                    Ok(found) => names.extend(found),
                    Err(e) => failure = Some(e),
                }
            }
        });
        if let Some(e) = failure {
            return Err(ApiError {
                status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                message: format!(
                    "the named-entity model failed while pseudonymising the request ({e:#}); \
                     it was not sent"
                ),
                kind: "server_error",
                param: None,
                code: Some("cannot_pseudonymize"),
            });
        }
        p.add_names(names);
    }
    for_each_text(request, &mut |field, text| match field {
        Field::ParticipantName => {
            *text = p.placeholder(PiiKind::Person, &text.replace(['_', '-'], " "));
        }
        Field::Text => *text = p.pseudonymize(text),
    });
    let body = serde_json::to_vec(&value).map_err(|e| {
        cannot_pseudonymize(format!(
            "writing the pseudonymised request: {e}; it was not sent"
        ))
    })?;
    Ok(Pseudonymized {
        body: Bytes::from(body),
        restorer: (!p.is_empty()).then(|| p.restorer()),
    })
}

fn cannot_pseudonymize(message: String) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::BAD_REQUEST,
        message,
        kind: "invalid_request_error",
        param: None,
        code: Some("cannot_pseudonymize"),
    }
}

/// What a string of a request is to the pseudonymiser.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Text that may contain personal data anywhere.
    Text,
    /// A chat message's `name`: a participant's name as a whole (OpenAI allows no spaces
    /// in it, so `Jean_Dupont` is how a name is written there).
    ParticipantName,
}

/// Calls `f` on every text-bearing string of `request`, the one place that says which
/// fields those are.
fn for_each_text(
    request: &mut serde_json::Map<String, Value>,
    f: &mut dyn FnMut(Field, &mut String),
) {
    for (key, field) in request.iter_mut() {
        if key == "messages" {
            for message in field.as_array_mut().into_iter().flatten() {
                message_texts(message, f);
            }
        } else {
            field_texts(key, field, f);
        }
    }
}

fn message_texts(message: &mut Value, f: &mut dyn FnMut(Field, &mut String)) {
    let Value::Object(message) = message else {
        return field_texts("messages", message, f);
    };
    for (key, field) in message.iter_mut() {
        match (key.as_str(), field) {
            ("name", Value::String(name)) if !name.is_empty() => f(Field::ParticipantName, name),
            (key, field) => field_texts(key, field, f),
        }
    }
}

/// Every string under the member `key`, but for [`NOT_TEXT`] and identifier names.
fn field_texts(key: &str, value: &mut Value, f: &mut dyn FnMut(Field, &mut String)) {
    if NOT_TEXT.contains(&key) {
        return;
    }
    match value {
        Value::String(text) => f(Field::Text, text),
        Value::Array(items) => items.iter_mut().for_each(|v| field_texts(key, v, f)),
        Value::Object(members) => {
            let identifier_name = NAMED_BY_IDENTIFIER.contains(&key);
            for (member, v) in members.iter_mut() {
                if !(identifier_name && member == "name") {
                    field_texts(member, v, f);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The upstream's answer with the originals back.
pub async fn restore(response: Response, restorer: Restorer) -> Response {
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let (mut parts, body) = response.into_parts();
    if streamed {
        let mut events = SseRestorer::new(restorer);
        let stream = body
            .into_data_stream()
            .map(move |chunk| chunk.map(|bytes| events.push(&bytes)));
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    let bytes = match axum::body::to_bytes(body, super::upstream::MAX_ANSWER_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            let error = super::gateway_error(
                axum::http::StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("reading the upstream's answer: {e}"),
            );
            return axum::response::IntoResponse::into_response(error);
        }
    };
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut value) => {
            restore_choices(&mut value, &restorer);
            if let Some(Value::Array(output)) = value.get_mut("output") {
                output
                    .iter_mut()
                    .for_each(|item| restore_item(item, &restorer));
            }
            Bytes::from(serde_json::to_vec(&value).unwrap_or_else(|_| bytes.to_vec()))
        }
        Err(_) => bytes,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// A whole answer: chat messages (content, tool-call arguments) and completion texts.
fn restore_choices(value: &mut Value, restorer: &Restorer) {
    let Some(choices) = value.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    for choice in choices {
        if let Some(Value::String(text)) = choice.get_mut("text") {
            *text = restorer.restore(text);
        }
        let Some(message) = choice.get_mut("message") else {
            continue;
        };
        if let Some(Value::String(content)) = message.get_mut("content") {
            *content = restorer.restore(content);
        }
        if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
            for call in calls {
                if let Some(Value::String(arguments)) = call.pointer_mut("/function/arguments") {
                    *arguments = restorer.restore_escaped(arguments, Escape::JsonString);
                }
            }
        }
    }
}

/// The name of a Responses event: its `type`.
fn kind_of(event: &Value, default: &str) -> String {
    event["type"].as_str().unwrap_or(default).to_string()
}

/// A Responses output item whole: its message text, its call's arguments.
fn restore_item(item: &mut Value, restorer: &Restorer) {
    if let Some(Value::String(arguments)) = item.get_mut("arguments") {
        *arguments = restorer.restore_escaped(arguments, Escape::JsonString);
    }
    if let Some(Value::String(text)) = item.get_mut("text") {
        *text = restorer.restore(text);
    }
    for key in ["content", "part"] {
        match item.get_mut(key) {
            Some(Value::Array(parts)) => parts.iter_mut().for_each(|p| restore_item(p, restorer)),
            Some(part @ Value::Object(_)) => restore_item(part, restorer),
            _ => {}
        }
    }
}

/// Restores a stream of server-sent events chunk by chunk: each `data:` event is parsed
/// once complete, and its text runs through a [`StreamRestorer`] per choice (and per
/// tool call), which holds back only what could be the start of a placeholder.
struct SseRestorer {
    restorer: Restorer,
    /// Bytes of an event not complete yet.
    partial: sse::EventBuffer,
    /// Per choice index: its content (chat) or text (completions).
    texts: HashMap<u64, StreamRestorer>,
    /// Per (choice index, tool-call index): the arguments.
    arguments: HashMap<(u64, u64), StreamRestorer>,
    /// Responses events: per output item id, its text or arguments deltas.
    items: HashMap<String, StreamRestorer>,
}

impl SseRestorer {
    fn new(restorer: Restorer) -> Self {
        Self {
            restorer,
            partial: sse::EventBuffer::default(),
            texts: HashMap::new(),
            arguments: HashMap::new(),
            items: HashMap::new(),
        }
    }

    /// The next bytes from upstream; what may go to the client now.
    fn push(&mut self, bytes: &[u8]) -> Bytes {
        self.partial.push(bytes);
        let mut out = Vec::new();
        while let Some(event) = self.partial.next_event() {
            let event = event.to_vec();
            out.extend(self.event(&event));
        }
        Bytes::from(out)
    }

    fn event(&mut self, event: &[u8]) -> Vec<u8> {
        let Some(mut chunk) =
            sse::event_data(event).and_then(|data| serde_json::from_str::<Value>(&data).ok())
        else {
            return event.to_vec();
        };
        if let Some(kind) = chunk["type"]
            .as_str()
            .filter(|t| t.starts_with("response."))
        {
            let kind = kind.to_string();
            return self
                .responses_event(&kind, chunk)
                .iter()
                .flat_map(|e| sse::named_event(&kind_of(e, &kind), &e.to_string()).into_bytes())
                .collect();
        }
        if let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) {
            for choice in choices {
                self.choice(choice);
            }
        }
        sse::data_event(&chunk.to_string()).into_bytes()
    }

    /// A Responses event, restored: deltas through a stream restorer per item (what it
    /// holds back comes out in one more delta before the item's `done`), whole texts,
    /// arguments, items and the final response as they are.
    fn responses_event(&mut self, kind: &str, mut event: Value) -> Vec<Value> {
        let item_id = event["item_id"].as_str().unwrap_or_default().to_string();
        match kind {
            "response.output_text.delta" | "response.function_call_arguments.delta" => {
                let restorer = self.items.entry(item_id).or_insert_with(|| match kind {
                    "response.output_text.delta" => self.restorer.stream(),
                    _ => self.restorer.stream_escaped(Escape::JsonString),
                });
                if let Some(Value::String(delta)) = event.get_mut("delta") {
                    *delta = restorer.push(delta);
                }
                vec![event]
            }
            "response.output_text.done" | "response.function_call_arguments.done" => {
                let mut out = Vec::new();
                if let Some(restorer) = self.items.remove(&item_id) {
                    let rest = restorer.finish();
                    if !rest.is_empty() {
                        let mut delta = event.clone();
                        let delta_kind = kind.replace(".done", ".delta");
                        delta["type"] = delta_kind.into();
                        delta["delta"] = rest.into();
                        for key in ["text", "arguments", "name"] {
                            if let Some(o) = delta.as_object_mut() {
                                o.remove(key);
                            }
                        }
                        out.push(delta);
                    }
                }
                restore_item(&mut event, &self.restorer);
                out.push(event);
                out
            }
            _ => {
                for key in ["item", "part"] {
                    if let Some(item) = event.get_mut(key) {
                        restore_item(item, &self.restorer);
                    }
                }
                if let Some(Value::Array(output)) = event.pointer_mut("/response/output") {
                    output
                        .iter_mut()
                        .for_each(|i| restore_item(i, &self.restorer));
                }
                vec![event]
            }
        }
    }

    fn choice(&mut self, choice: &mut Value) {
        let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
        let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
        if let Some(Value::String(text)) = choice.get_mut("text") {
            *text = self.text(index, text, finished);
            return;
        }
        let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
            return;
        };
        match delta.get_mut("content") {
            Some(Value::String(content)) => *content = self.text(index, content, finished),
            _ if finished => {
                let rest = self.text(index, "", true);
                if !rest.is_empty() {
                    delta.insert("content".into(), Value::String(rest));
                }
            }
            _ => {}
        }
        if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
            for call in calls.iter_mut() {
                let call_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(Value::String(arguments)) = call.pointer_mut("/function/arguments") {
                    let restorer = self
                        .arguments
                        .entry((index, call_index))
                        .or_insert_with(|| self.restorer.stream_escaped(Escape::JsonString));
                    *arguments = restorer.push(arguments);
                }
            }
        }
        if finished {
            let mut held: Vec<(u64, String)> = Vec::new();
            self.arguments.retain(|&(choice, call), restorer| {
                if choice != index {
                    return true;
                }
                held.push((call, restorer.clone().finish()));
                false
            });
            held.retain(|(_, rest)| !rest.is_empty());
            if !held.is_empty() {
                let calls = delta
                    .entry("tool_calls")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(calls) = calls {
                    for (call, rest) in held {
                        calls.push(
                            serde_json::json!({ "index": call, "function": { "arguments": rest } }),
                        );
                    }
                }
            }
        }
    }

    /// A piece of a choice's text, restored; the held-back rest too when it is the last.
    fn text(&mut self, index: u64, piece: &str, last: bool) -> String {
        let restorer = self
            .texts
            .entry(index)
            .or_insert_with(|| self.restorer.stream());
        let mut out = restorer.push(piece);
        if last && let Some(restorer) = self.texts.remove(&index) {
            out.push_str(&restorer.finish());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restorer() -> Restorer {
        Restorer::new(HashMap::from([
            ("<PERSON_1>".to_string(), "Jean \"JD\" Dupont".to_string()),
            ("<EMAIL_1>".to_string(), "jd@example.fr".to_string()),
        ]))
    }

    fn sse(chunks: &[Value]) -> String {
        chunks
            .iter()
            .map(|c| format!("data: {c}\n\n"))
            .collect::<String>()
            + "data: [DONE]\n\n"
    }

    #[test]
    fn streamed_content_and_arguments_are_restored_across_any_split() {
        let input = sse(&[
            serde_json::json!({ "choices": [{ "index": 0, "delta": { "content": "Hi <PERS" }, "finish_reason": null }] }),
            serde_json::json!({ "choices": [{ "index": 0, "delta": { "content": "ON_1>, mail <EMA" }, "finish_reason": null }] }),
            serde_json::json!({ "choices": [{ "index": 0, "delta": { "tool_calls": [{ "index": 0, "function": { "arguments": "{\"to\": \"<PERSON" } }] }, "finish_reason": null }] }),
            serde_json::json!({ "choices": [{ "index": 0, "delta": { "tool_calls": [{ "index": 0, "function": { "arguments": "_1>\"}" } }] }, "finish_reason": null }] }),
            serde_json::json!({ "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }] }),
        ]);
        // Every split of the byte stream gives the same events.
        for size in [1, 7, 64, input.len()] {
            let mut events = SseRestorer::new(restorer());
            let mut out = Vec::new();
            for piece in input.as_bytes().chunks(size) {
                out.extend_from_slice(&events.push(piece));
            }
            let out = String::from_utf8(out).unwrap();
            let (mut content, mut arguments) = (String::new(), String::new());
            for data in out.lines().filter_map(|l| l.strip_prefix("data: ")) {
                let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                    assert_eq!(data, "[DONE]");
                    continue;
                };
                let delta = &chunk["choices"][0]["delta"];
                content += delta["content"].as_str().unwrap_or_default();
                if let Some(calls) = delta["tool_calls"].as_array() {
                    for c in calls {
                        arguments += c["function"]["arguments"].as_str().unwrap_or_default();
                    }
                }
            }
            assert_eq!(content, "Hi Jean \"JD\" Dupont, mail <EMA", "split {size}");
            let arguments: Value = serde_json::from_str(&arguments).unwrap();
            assert_eq!(arguments["to"], "Jean \"JD\" Dupont");
            assert!(out.ends_with("data: [DONE]\n\n"));
        }
    }

    #[test]
    fn crlf_streams_are_restored_not_swallowed() {
        let chunk = serde_json::json!({ "choices": [{ "index": 0, "delta": { "content": "Hi <PERSON_1>" }, "finish_reason": "stop" }] });
        let input = format!("data: {chunk}\r\n\r\ndata: [DONE]\r\n\r\n");
        for size in [1, 5, input.len()] {
            let mut events = SseRestorer::new(restorer());
            let mut out = Vec::new();
            for piece in input.as_bytes().chunks(size) {
                out.extend_from_slice(&events.push(piece));
            }
            let out = String::from_utf8(out).unwrap();
            assert!(
                out.contains("Hi Jean \\\"JD\\\" Dupont"),
                "split {size}: {out:?}"
            );
            assert!(!out.contains("<PERSON_1>"), "{out:?}");
            assert!(out.contains("[DONE]"), "{out:?}");
        }
    }

    #[test]
    fn requests_lose_their_personal_data() {
        let body = Bytes::from(
            serde_json::json!({ "model": "m", "messages": [{ "role": "user", "content": "Write to jean.dupont@example.fr" }] })
                .to_string(),
        );
        let Pseudonymized {
            body: sent,
            restorer,
        } = pseudonymize(&body, None).unwrap();
        let restorer = restorer.unwrap();
        let sent = String::from_utf8(sent.to_vec()).unwrap();
        assert!(
            !sent.contains("jean.dupont") && sent.contains("<EMAIL_1>"),
            "{sent}"
        );
        assert_eq!(
            restorer.restore("ok <EMAIL_1>"),
            "ok jean.dupont@example.fr"
        );
        let plain =
            Bytes::from(r#"{"model": "m", "messages": [{"role": "user", "content": "hello"}]}"#);
        assert!(pseudonymize(&plain, None).unwrap().restorer.is_none());
    }
}
