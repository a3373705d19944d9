//! The response object, and how a chat completion — whole or streamed — becomes one: a
//! `message` item with `output_text` for the text, a `function_call` item per call, the
//! usage in Responses' names, `incomplete` when the token limit cut the answer.
//!
//! [`EventWriter`] turns the chunks of a streamed chat completion into Responses' typed
//! events, each with its `sequence_number`.

use serde_json::{Value, json};

use super::new_id;
use super::request::ResponsesRequest;

/// A response object for `req` with `status` and what is known so far.
pub fn response_object(
    req: &ResponsesRequest,
    id: &str,
    created_at: u64,
    status: &str,
    answer: &Answer,
) -> Value {
    let incomplete_details = match answer.cut {
        true => json!({ "reason": "max_output_tokens" }),
        false => Value::Null,
    };
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": req.background,
        "error": answer.error.clone().unwrap_or(Value::Null),
        "incomplete_details": incomplete_details,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata,
        "model": req.model,
        "output": answer.output,
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": { "effort": req.reasoning_effort, "summary": null },
        "store": req.store,
        "temperature": req.temperature.unwrap_or(1.0),
        "text": req.text,
        "tool_choice": req.tool_choice,
        "tools": req.tools,
        "top_p": req.top_p.unwrap_or(1.0),
        "truncation": "disabled",
        "usage": answer.usage.clone().unwrap_or(Value::Null),
        "user": req.user,
    })
}

/// What the model answered, in Responses' terms.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub output: Vec<Value>,
    pub usage: Option<Value>,
    /// The token limit cut the answer (`incomplete`, `max_output_tokens`).
    pub cut: bool,
    /// `{"code", "message"}` when it failed.
    pub error: Option<Value>,
}

impl Answer {
    pub fn failed(message: &str) -> Self {
        Self {
            error: Some(json!({ "code": "server_error", "message": message })),
            ..Default::default()
        }
    }

    /// The status of a response that ended with this answer.
    pub fn status(&self) -> &'static str {
        match (&self.error, self.cut) {
            (Some(_), _) => "failed",
            (None, true) => "incomplete",
            (None, false) => "completed",
        }
    }
}

/// The usage of a chat completion in Responses' names.
pub fn usage(chat: &Value) -> Option<Value> {
    let input = chat.get("prompt_tokens")?.as_u64().unwrap_or(0);
    let output = chat["completion_tokens"].as_u64().unwrap_or(0);
    let cached = chat["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    let reasoning = chat["completion_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .unwrap_or(0);
    Some(json!({
        "input_tokens": input,
        "input_tokens_details": { "cached_tokens": cached, "cache_write_tokens": 0 },
        "output_tokens": output,
        "output_tokens_details": { "reasoning_tokens": reasoning },
        "total_tokens": input + output,
    }))
}

fn output_text(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

/// A reasoning model's thinking in a chat message or delta: `reasoning_content`, or
/// `reasoning` as vLLM and Ollama now name it.
fn reasoning_of(message: &Value) -> Option<&str> {
    message["reasoning_content"]
        .as_str()
        .or(message["reasoning"].as_str())
        .filter(|r| !r.is_empty())
}

fn reasoning_text(text: &str) -> Value {
    json!({ "type": "reasoning_text", "text": text })
}

/// A `reasoning` output item; its text once known.
fn reasoning_item(id: &str, status: &str, text: Option<&str>) -> Value {
    json!({
        "type": "reasoning",
        "id": id,
        "summary": [],
        "content": text.map(|t| vec![reasoning_text(t)]).unwrap_or_default(),
        "status": status,
    })
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": content,
    })
}

fn call_item(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

/// A whole chat completion's answer.
pub fn from_chat_completion(chat: &Value) -> Answer {
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let cut = choice["finish_reason"] == "length";
    let item_status = if cut { "incomplete" } else { "completed" };
    let mut output = Vec::new();
    if let Some(reasoning) = reasoning_of(message) {
        output.push(reasoning_item(&new_id("rs"), "completed", Some(reasoning)));
    }
    let text = message["content"].as_str().unwrap_or_default();
    let calls = message["tool_calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !text.is_empty() || calls.is_empty() {
        output.push(message_item(
            &new_id("msg"),
            item_status,
            vec![output_text(text)],
        ));
    }
    for call in &calls {
        let arguments = match &call["function"]["arguments"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        output.push(call_item(
            &new_id("fc"),
            "completed",
            call["id"].as_str().unwrap_or_default(),
            call["function"]["name"].as_str().unwrap_or_default(),
            &arguments,
        ));
    }
    Answer {
        output,
        usage: usage(&chat["usage"]),
        cut,
        error: None,
    }
}

/// The item being streamed.
enum Open {
    None,
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Turns the chunks of a streamed chat completion into Responses events.
pub struct EventWriter {
    sequence: u64,
    open: Open,
    /// The chat call index of the open call.
    call_index: Option<u64>,
    pub answer: Answer,
}

impl EventWriter {
    pub fn new() -> Self {
        Self {
            sequence: 0,
            open: Open::None,
            call_index: None,
            answer: Answer::default(),
        }
    }

    /// An event of `kind` with `fields`, numbered.
    pub fn event(&mut self, kind: &str, fields: Value) -> Value {
        let mut event = json!({ "type": kind, "sequence_number": self.sequence });
        self.sequence += 1;
        if let (Some(event), Value::Object(fields)) = (event.as_object_mut(), fields) {
            event.extend(fields);
        }
        event
    }

    fn output_index(&self) -> usize {
        self.answer.output.len()
    }

    /// The events for one chat chunk.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<Value> {
        let mut events = Vec::new();
        if let Some(u) = usage(&chunk["usage"]) {
            self.answer.usage = Some(u);
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return events;
        };
        let delta = &choice["delta"];
        if let Some(text) = reasoning_of(delta) {
            if !matches!(self.open, Open::Reasoning { .. }) {
                self.close(&mut events);
                let id = new_id("rs");
                let index = self.output_index();
                let item = reasoning_item(&id, "in_progress", None);
                events.push(self.event(
                    "response.output_item.added",
                    json!({ "output_index": index, "item": item }),
                ));
                events.push(self.event(
                    "response.content_part.added",
                    json!({ "output_index": index, "item_id": id, "content_index": 0, "part": reasoning_text("") }),
                ));
                self.open = Open::Reasoning {
                    id,
                    text: String::new(),
                };
            }
            let index = self.output_index();
            let Open::Reasoning { id, text: all } = &mut self.open else {
                unreachable!("opened above")
            };
            all.push_str(text);
            let id = id.clone();
            events.push(self.event(
                "response.reasoning_text.delta",
                json!({ "output_index": index, "item_id": id, "content_index": 0, "delta": text }),
            ));
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if !matches!(self.open, Open::Message { .. }) {
                self.close(&mut events);
                let id = new_id("msg");
                let index = self.output_index();
                let item = message_item(&id, "in_progress", Vec::new());
                events.push(self.event(
                    "response.output_item.added",
                    json!({ "output_index": index, "item": item }),
                ));
                events.push(self.event(
                    "response.content_part.added",
                    json!({ "output_index": index, "item_id": id, "content_index": 0, "part": output_text("") }),
                ));
                self.open = Open::Message {
                    id,
                    text: String::new(),
                };
            }
            let index = self.output_index();
            let Open::Message { id, text: all } = &mut self.open else {
                unreachable!("opened above")
            };
            all.push_str(text);
            let id = id.clone();
            events.push(self.event(
                "response.output_text.delta",
                json!({ "output_index": index, "item_id": id, "content_index": 0, "delta": text, "logprobs": [] }),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap_or(0);
            if self.call_index != Some(index) || !matches!(self.open, Open::Call { .. }) {
                self.close(&mut events);
                let id = new_id("fc");
                let call_id = call["id"].as_str().unwrap_or_default().to_string();
                let name = call["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let output_index = self.output_index();
                let item = call_item(&id, "in_progress", &call_id, &name, "");
                events.push(self.event(
                    "response.output_item.added",
                    json!({ "output_index": output_index, "item": item }),
                ));
                self.open = Open::Call {
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                };
                self.call_index = Some(index);
            }
            let fragment = call["function"]["arguments"].as_str().unwrap_or_default();
            if !fragment.is_empty() {
                let output_index = self.output_index();
                let Open::Call { id, arguments, .. } = &mut self.open else {
                    unreachable!("opened above")
                };
                arguments.push_str(fragment);
                let id = id.clone();
                events.push(self.event(
                    "response.function_call_arguments.delta",
                    json!({ "output_index": output_index, "item_id": id, "delta": fragment }),
                ));
            }
        }
        if choice["finish_reason"] == "length" {
            self.answer.cut = true;
        }
        events
    }

    /// Close the open item, if any: its `done` events, and it joins the output.
    pub fn close(&mut self, events: &mut Vec<Value>) {
        let index = self.output_index();
        let item_status = if self.answer.cut {
            "incomplete"
        } else {
            "completed"
        };
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => return,
            Open::Reasoning { id, text } => {
                events.push(self.event(
                    "response.reasoning_text.done",
                    json!({ "output_index": index, "item_id": id, "content_index": 0, "text": text }),
                ));
                events.push(self.event(
                    "response.content_part.done",
                    json!({ "output_index": index, "item_id": id, "content_index": 0, "part": reasoning_text(&text) }),
                ));
                let item = reasoning_item(&id, "completed", Some(&text));
                events.push(self.event(
                    "response.output_item.done",
                    json!({ "output_index": index, "item": item }),
                ));
                self.answer.output.push(item);
            }
            Open::Message { id, text } => {
                events.push(self.event(
                    "response.output_text.done",
                    json!({ "output_index": index, "item_id": id, "content_index": 0, "text": text, "logprobs": [] }),
                ));
                events.push(self.event(
                    "response.content_part.done",
                    json!({ "output_index": index, "item_id": id, "content_index": 0, "part": output_text(&text) }),
                ));
                let item = message_item(&id, item_status, vec![output_text(&text)]);
                events.push(self.event(
                    "response.output_item.done",
                    json!({ "output_index": index, "item": item }),
                ));
                self.answer.output.push(item);
            }
            Open::Call {
                id,
                call_id,
                name,
                arguments,
            } => {
                events.push(self.event(
                    "response.function_call_arguments.done",
                    json!({ "output_index": index, "item_id": id, "name": name, "arguments": arguments }),
                ));
                let item = call_item(&id, "completed", &call_id, &name, &arguments);
                events.push(self.event(
                    "response.output_item.done",
                    json!({ "output_index": index, "item": item }),
                ));
                self.answer.output.push(item);
            }
        }
        self.call_index = None;
    }

    /// At the end of the chat stream: close what is open; a stream that said nothing still
    /// answers with an empty message, as a whole completion does.
    pub fn finish(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        self.close(&mut events);
        if self.answer.output.is_empty() && self.answer.error.is_none() {
            let id = new_id("msg");
            let status = if self.answer.cut {
                "incomplete"
            } else {
                "completed"
            };
            let item = message_item(&id, status, vec![output_text("")]);
            events.push(self.event(
                "response.output_item.added",
                json!({ "output_index": 0, "item": message_item(&id, "in_progress", Vec::new()) }),
            ));
            events.push(self.event(
                "response.output_item.done",
                json!({ "output_index": 0, "item": item }),
            ));
            self.answer.output.push(item);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_completion_becomes_output_items() {
        let chat = json!({
            "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        });
        let answer = from_chat_completion(&chat);
        assert_eq!(answer.output.len(), 1);
        assert_eq!(answer.output[0]["type"], "function_call");
        assert_eq!(answer.output[0]["call_id"], "call_1");
        assert_eq!(answer.output[0]["arguments"], "{\"a\":1}");
        assert_eq!(answer.usage.as_ref().unwrap()["total_tokens"], 10);
        assert_eq!(answer.status(), "completed");

        let cut =
            json!({"choices": [{"message": {"content": "Once upon"}, "finish_reason": "length"}]});
        let answer = from_chat_completion(&cut);
        assert_eq!(answer.status(), "incomplete");
        assert_eq!(answer.output[0]["content"][0]["text"], "Once upon");
        assert_eq!(answer.output[0]["content"][0]["annotations"], json!([]));
    }

    #[test]
    fn chat_chunks_become_numbered_events() {
        let mut w = EventWriter::new();
        let mut events = Vec::new();
        for chunk in [
            json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"delta": {"content": "Hi"}}]}),
            json!({"choices": [{"delta": {"content": " there"}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]}),
            json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
        ] {
            events.extend(w.chunk(&chunk));
        }
        events.extend(w.finish());
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
            ]
        );
        assert_eq!(w.answer.output.len(), 2);
        let numbers: Vec<u64> = events
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
        assert_eq!(events[4]["text"], "Hi there");
        assert_eq!(events[7]["output_index"], 1);
        assert_eq!(w.answer.output[1]["arguments"], "{}");
        assert_eq!(w.answer.usage.as_ref().unwrap()["output_tokens"], 2);
    }

    #[test]
    fn reasoning_is_its_own_item_before_the_answer() {
        let chat = json!({"choices": [{"message": {"content": "4", "reasoning_content": "2+2 is 4"}, "finish_reason": "stop"}]});
        let answer = from_chat_completion(&chat);
        assert_eq!(answer.output[0]["type"], "reasoning");
        assert_eq!(
            answer.output[0]["content"][0],
            json!({"type": "reasoning_text", "text": "2+2 is 4"})
        );
        assert_eq!(answer.output[1]["content"][0]["text"], "4");

        let mut w = EventWriter::new();
        let mut events = Vec::new();
        for chunk in [
            json!({"choices": [{"delta": {"reasoning": "2+2"}}]}),
            json!({"choices": [{"delta": {"reasoning": " is 4"}}]}),
            json!({"choices": [{"delta": {"content": "4"}, "finish_reason": "stop"}]}),
        ] {
            events.extend(w.chunk(&chunk));
        }
        events.extend(w.finish());
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            &kinds[..6],
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
            ]
        );
        assert_eq!(events[4]["text"], "2+2 is 4");
        assert_eq!(w.answer.output[0]["type"], "reasoning");
        assert_eq!(w.answer.output[1]["type"], "message");
        assert_eq!(events[7]["output_index"], 1, "{}", events[7]);
    }
}
