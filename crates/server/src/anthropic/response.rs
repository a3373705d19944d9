//! A chat completion's answer as a Messages answer: the whole message, or the typed events
//! of a stream (`message_start`, `content_block_start`, `content_block_delta`,
//! `content_block_stop`, `message_delta`, `message_stop`, with `ping`s), and errors in
//! Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`).

use axum::http::StatusCode;
use serde_json::{Value, json};

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error body in Anthropic's shape.
pub fn error_body(status: StatusCode, message: &str) -> Value {
    json!({
        "type": "error",
        "error": { "type": error_type(status), "message": message },
    })
}

/// An OpenAI-shaped error body (`{"error": {"message", ...}}`) in Anthropic's shape; a
/// body already in that shape is kept.
pub fn anthropic_error(status: StatusCode, body: &Value) -> Value {
    if body["type"] == "error" {
        return body.clone();
    }
    let message = body["error"]["message"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("the request failed ({status})"));
    error_body(status, &message)
}

/// `msg_...` for a chat completion's `chatcmpl-...`.
/// `msg_...` for a chat completion's `chatcmpl-...`; a fresh one when the answer has none
/// (some upstreams send no id).
fn message_id(chat_id: Option<&str>) -> String {
    match chat_id.filter(|id| !id.is_empty()) {
        Some(id) => format!("msg_{}", id.strip_prefix("chatcmpl-").unwrap_or(id)),
        None => format!("msg_{:024x}", rand::random::<u128>() >> 32),
    }
}

/// `toolu_...` for a chat call id.
fn tool_use_id(call_id: &str) -> String {
    match call_id.starts_with("toolu_") {
        true => call_id.to_string(),
        false => format!("toolu_{call_id}"),
    }
}

/// Why the message stopped, and the stop sequence that stopped it.
fn stop_reason(choice: &Value, stop_sequences: &[String]) -> (Value, Value) {
    match choice["finish_reason"].as_str() {
        Some("length") => ("max_tokens".into(), Value::Null),
        Some("tool_calls") => ("tool_use".into(), Value::Null),
        // `stop_reason` (vLLM's and verre's): the stop string that ended the choice.
        Some(_) => match choice["stop_reason"].as_str() {
            Some(s) if stop_sequences.iter().any(|q| q == s) => ("stop_sequence".into(), s.into()),
            _ => ("end_turn".into(), Value::Null),
        },
        None => (Value::Null, Value::Null),
    }
}

fn usage(chat_usage: &Value) -> Value {
    json!({
        "input_tokens": chat_usage["prompt_tokens"].as_u64().unwrap_or(0),
        "output_tokens": chat_usage["completion_tokens"].as_u64().unwrap_or(0),
    })
}

/// The arguments of a call as the `input` object (an empty one when they do not parse).
fn input(arguments: &Value) -> Value {
    arguments
        .as_str()
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// A chat completion as a Messages answer.
pub fn message(chat: &Value, model: &str, stop_sequences: &[String]) -> Value {
    let choice = &chat["choices"][0];
    let answer = &choice["message"];
    let mut content = Vec::new();
    let reasoning = answer["reasoning_content"]
        .as_str()
        .or_else(|| answer["reasoning"].as_str())
        .filter(|r| !r.is_empty());
    if let Some(thinking) = reasoning {
        content.push(json!({ "type": "thinking", "thinking": thinking, "signature": "" }));
    }
    if let Some(text) = answer["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({ "type": "text", "text": text }));
    }
    for call in answer["tool_calls"].as_array().into_iter().flatten() {
        content.push(json!({
            "type": "tool_use",
            "id": tool_use_id(call["id"].as_str().unwrap_or_default()),
            "name": call["function"]["name"],
            "input": input(&call["function"]["arguments"]),
        }));
    }
    let (stop_reason, stop_sequence) = stop_reason(choice, stop_sequences);
    json!({
        "id": message_id(chat["id"].as_str()),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage(&chat["usage"]),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    /// The call's `index` in the chat stream.
    ToolUse(u64),
}

/// Turns a chat stream's chunks into a Messages stream's events, one chunk at a time.
pub struct MessageEvents {
    model: String,
    stop_sequences: Vec<String>,
    started: bool,
    /// The message's id without `msg_`, once started.
    message_id: String,
    /// The open content block and its index.
    open: Option<(usize, Block)>,
    next_index: usize,
    stop_reason: Value,
    stop_sequence: Value,
    usage: Value,
    ended: bool,
}

/// One event: its name and its data.
pub type Event = (&'static str, Value);

impl MessageEvents {
    pub fn new(model: &str, stop_sequences: Vec<String>) -> Self {
        Self {
            model: model.to_string(),
            stop_sequences,
            started: false,
            message_id: String::new(),
            open: None,
            next_index: 0,
            stop_reason: Value::Null,
            stop_sequence: Value::Null,
            usage: json!({ "input_tokens": 0, "output_tokens": 0 }),
            ended: false,
        }
    }

    /// The events for one `data:` of the chat stream.
    pub fn data(&mut self, data: &str) -> Vec<Event> {
        if self.ended {
            return Vec::new();
        }
        if data == crate::sse::DONE {
            return self.end();
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return self.fail(&format!(
                "the model's stream sent what is not JSON: {data:.200}"
            ));
        };
        if let Some(message) = chunk["error"]["message"].as_str() {
            return self.fail(message);
        }
        let mut events = self.start(&chunk);
        if let Some(choice) = chunk["choices"].as_array().and_then(|c| c.first()) {
            self.choice(choice, &mut events);
        }
        if chunk["usage"].is_object() {
            self.usage = usage(&chunk["usage"]);
        }
        events
    }

    /// The chat stream ended: the message ends (if `[DONE]` has not ended it).
    pub fn end(&mut self) -> Vec<Event> {
        if self.ended {
            return Vec::new();
        }
        let mut events = self.start(&Value::Null);
        self.close(&mut events);
        self.ended = true;
        events.push((
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence },
                "usage": self.usage,
            }),
        ));
        events.push(("message_stop", json!({ "type": "message_stop" })));
        events
    }

    /// A keep-alive of the chat stream.
    pub fn ping(&mut self) -> Vec<Event> {
        match self.started && !self.ended {
            true => vec![("ping", json!({ "type": "ping" }))],
            false => Vec::new(),
        }
    }

    /// The stream failed midway: an `error` event ends it.
    pub fn fail(&mut self, message: &str) -> Vec<Event> {
        self.ended = true;
        vec![(
            "error",
            error_body(StatusCode::INTERNAL_SERVER_ERROR, message),
        )]
    }

    fn start(&mut self, chunk: &Value) -> Vec<Event> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        let id = message_id(chunk["id"].as_str());
        self.message_id = id["msg_".len()..].to_string();
        vec![
            (
                "message_start",
                json!({
                    "type": "message_start",
                    "message": {
                        "id": id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": null,
                        "stop_sequence": null,
                        "usage": { "input_tokens": 0, "output_tokens": 0 },
                    },
                }),
            ),
            ("ping", json!({ "type": "ping" })),
        ]
    }

    fn choice(&mut self, choice: &Value, events: &mut Vec<Event>) {
        let delta = &choice["delta"];
        let reasoning = delta["reasoning_content"]
            .as_str()
            .or_else(|| delta["reasoning"].as_str());
        if let Some(thinking) = reasoning.filter(|t| !t.is_empty()) {
            let index = self.block(Block::Thinking, events);
            events.push(block_delta(
                index,
                json!({ "type": "thinking_delta", "thinking": thinking }),
            ));
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let index = self.block(Block::Text, events);
            events.push(block_delta(
                index,
                json!({ "type": "text_delta", "text": text }),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let call_index = call["index"].as_u64().unwrap_or(0);
            let index = match self.open {
                // More of the open call's arguments.
                Some((index, Block::ToolUse(open)))
                    if open == call_index && call["id"].is_null() =>
                {
                    index
                }
                // A new call: its own block (with an id of its own if the stream gives none).
                _ => {
                    self.close(events);
                    let id = match call["id"].as_str() {
                        Some(id) => tool_use_id(id),
                        None => format!("toolu_{}_{call_index}", self.message_id),
                    };
                    let index = self.open_block(
                        json!({
                            "type": "tool_use",
                            "id": id,
                            "name": call["function"]["name"].as_str().unwrap_or_default(),
                            "input": {},
                        }),
                        events,
                    );
                    self.open = Some((index, Block::ToolUse(call_index)));
                    index
                }
            };
            let arguments = call["function"]["arguments"].as_str().unwrap_or("");
            if !arguments.is_empty() {
                events.push(block_delta(
                    index,
                    json!({ "type": "input_json_delta", "partial_json": arguments }),
                ));
            }
        }
        if !choice["finish_reason"].is_null() {
            self.close(events);
            (self.stop_reason, self.stop_sequence) = stop_reason(choice, &self.stop_sequences);
        }
    }

    /// The index of an open block of `kind`, opening one (and closing another) if needed.
    fn block(&mut self, kind: Block, events: &mut Vec<Event>) -> usize {
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(events);
        let start = match kind {
            Block::Thinking => json!({ "type": "thinking", "thinking": "", "signature": "" }),
            Block::Text => json!({ "type": "text", "text": "" }),
            Block::ToolUse(_) => json!({ "type": "tool_use", "input": {} }),
        };
        let index = self.open_block(start, events);
        self.open = Some((index, kind));
        index
    }

    fn open_block(&mut self, content_block: Value, events: &mut Vec<Event>) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        events.push((
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": content_block }),
        ));
        index
    }

    fn close(&mut self, events: &mut Vec<Event>) {
        if let Some((index, _)) = self.open.take() {
            events.push((
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": index }),
            ));
        }
    }
}

fn block_delta(index: usize, delta: Value) -> Event {
    (
        "content_block_delta",
        json!({ "type": "content_block_delta", "index": index, "delta": delta }),
    )
}

/// One event as server-sent events text.
pub fn event_text((name, data): &Event) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_answer_becomes_a_message() {
        let chat = json!({
            "id": "chatcmpl-abc",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Looking.", "reasoning_content": "Use the tool.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]
            }}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        });
        assert_eq!(
            message(&chat, "m", &[]),
            json!({
                "id": "msg_abc", "type": "message", "role": "assistant", "model": "m",
                "content": [
                    {"type": "thinking", "thinking": "Use the tool.", "signature": ""},
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_call_1", "name": "f", "input": {"a": 1}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 5}
            })
        );
        let stop = |finish: &str, stop: Value| {
            let chat = json!({"choices": [{"finish_reason": finish, "stop_reason": stop, "message": {"content": "x"}}]});
            let m = message(&chat, "m", &["END".to_string()]);
            (m["stop_reason"].clone(), m["stop_sequence"].clone())
        };
        assert_eq!(
            stop("length", Value::Null),
            (json!("max_tokens"), Value::Null)
        );
        assert_eq!(stop("stop", Value::Null), (json!("end_turn"), Value::Null));
        assert_eq!(
            stop("stop", json!("END")),
            (json!("stop_sequence"), json!("END"))
        );
    }

    #[test]
    fn a_chat_stream_becomes_message_events_in_order() {
        let mut w = MessageEvents::new("m", Vec::new());
        let chunks = [
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": null}),
            json!({"choices": [{"index": 0, "delta": {"reasoning_content": "hm", "reasoning": "hm"}}], "usage": null}),
            json!({"choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": null}),
            json!({"choices": [{"index": 0, "delta": {"content": "!"}}], "usage": null}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}], "usage": null}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}], "usage": null}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "usage": null}),
            json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
        ];
        let mut events: Vec<Event> = chunks.iter().flat_map(|c| w.data(&c.to_string())).collect();
        events.extend(w.data("[DONE]"));
        events.extend(w.end());
        let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[0].1["message"]["id"], "msg_1");
        assert_eq!(
            events[3].1["delta"],
            json!({"type": "thinking_delta", "thinking": "hm"})
        );
        assert_eq!(
            events[6].1["delta"],
            json!({"type": "text_delta", "text": "Hi"})
        );
        assert_eq!(events[9].1["content_block"]["id"], "toolu_call_1");
        assert_eq!(
            events[10].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "{}"})
        );
        assert_eq!(
            events[12].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"input_tokens": 3, "output_tokens": 4}})
        );
        assert_eq!(
            event_text(&events[13]),
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        );
    }

    #[test]
    fn a_failure_midway_is_an_error_event_and_errors_take_anthropics_shape() {
        let mut w = MessageEvents::new("m", Vec::new());
        w.data(&json!({"choices": [{"delta": {"content": "a"}}]}).to_string());
        let events =
            w.data(&json!({"error": {"message": "boom", "type": "server_error"}}).to_string());
        assert_eq!(events[0].0, "error");
        assert_eq!(
            events[0].1["error"],
            json!({"type": "api_error", "message": "boom"})
        );
        assert!(w.end().is_empty());
        let openai = json!({"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}});
        assert_eq!(
            anthropic_error(StatusCode::UNAUTHORIZED, &openai),
            json!({"type": "error", "error": {"type": "authentication_error", "message": "bad key"}})
        );
    }
}
