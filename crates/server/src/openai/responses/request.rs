//! A `/v1/responses` body checked at the edge, and the chat completion request it is
//! served as.
//!
//! Input items are normalised to the shape `GET /v1/responses/{id}/input_items` returns
//! (each with an `id`, message content as typed parts) and kept that way, so a conversation
//! rebuilt from `previous_response_id` reads exactly like one sent in full. As for chat,
//! unknown fields are ignored and fields that would change the answer and are not served
//! are refused by name.

use serde_json::{Map, Value, json};

use super::super::error::ApiError;
use super::new_id;

/// Responses fields verre does not serve: refused unless neutral (`null`, `{}`, `[]`).
const UNSUPPORTED: &[&str] = &["conversation", "prompt", "top_logprobs"];

/// Most keys in `metadata` (OpenAI's limit).
const MAX_METADATA_KEYS: usize = 16;

/// A checked `/v1/responses` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesRequest {
    pub model: String,
    /// The new input, normalised (see the module documentation).
    pub input: Vec<Value>,
    pub instructions: Option<String>,
    /// As sent (the flat Responses shape), echoed in the response.
    pub tools: Vec<Value>,
    /// As sent, or `"auto"`.
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
    /// `{"format": ...}` as sent, or `{"format": {"type": "text"}}`.
    pub text: Value,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub metadata: Value,
    pub store: bool,
    pub previous_response_id: Option<String>,
    pub stream: bool,
    pub background: bool,
    pub user: Option<String>,
    /// `reasoning.effort`, passed on as chat's `reasoning_effort` (chat decides).
    pub reasoning_effort: Option<Value>,
    /// `tools`, `tool_choice` and `text.format` as chat takes them.
    chat_tools: Vec<Value>,
    chat_tool_choice: Value,
    response_format: Option<Value>,
}

impl ResponsesRequest {
    pub fn from_object(object: &Map<String, Value>) -> Result<Self, ApiError> {
        for &field in UNSUPPORTED {
            if object.get(field).is_some_and(|v| !is_neutral(v)) {
                return Err(ApiError::unsupported(field));
            }
        }
        let model = match object.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(_) => return Err(ApiError::invalid("model", "model must be a string")),
            None => {
                return Err(ApiError::invalid_json(
                    "`model` is required",
                    Some("model".into()),
                ));
            }
        };
        let input = match object.get("input") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(text)) => vec![message_item("user", text)],
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| input_item(i, item))
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ApiError::invalid(
                    "input",
                    "input must be a string or an array of input items",
                ));
            }
        };
        let instructions = optional_string(object, "instructions")?;
        let previous_response_id = optional_string(object, "previous_response_id")?;
        if input.is_empty() && instructions.is_none() && previous_response_id.is_none() {
            return Err(ApiError::invalid("input", "input must not be empty"));
        }
        let tools = match object.get("tools") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(tools)) => tools.clone(),
            Some(_) => return Err(ApiError::invalid("tools", "tools must be an array")),
        };
        let chat_tools = tools
            .iter()
            .enumerate()
            .map(|(i, t)| chat_tool(i, t))
            .collect::<Result<_, _>>()?;
        let tool_choice = object
            .get("tool_choice")
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or_else(|| "auto".into());
        let chat_tool_choice = chat_tool_choice(&tool_choice)?;
        let text = match object.get("text") {
            None | Some(Value::Null) => json!({ "format": { "type": "text" } }),
            Some(Value::Object(t)) => {
                if t.get("verbosity")
                    .is_some_and(|v| !v.is_null() && *v != "medium")
                {
                    return Err(ApiError::unsupported("text.verbosity"));
                }
                let mut text = t.clone();
                let format = text
                    .get("format")
                    .filter(|f| !f.is_null())
                    .cloned()
                    .unwrap_or_else(|| json!({ "type": "text" }));
                text.insert("format".into(), format);
                Value::Object(text)
            }
            Some(_) => return Err(ApiError::invalid("text", "text must be an object")),
        };
        let response_format = response_format(&text["format"])?;
        let metadata = match object.get("metadata") {
            None | Some(Value::Null) => json!({}),
            Some(Value::Object(m))
                if m.len() <= MAX_METADATA_KEYS && m.values().all(Value::is_string) =>
            {
                Value::Object(m.clone())
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "metadata",
                    format!(
                        "metadata must be an object of at most {MAX_METADATA_KEYS} string values"
                    ),
                ));
            }
        };
        let max_output_tokens = match object.get("max_output_tokens") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().filter(|n| *n >= 1) {
                Some(n) => Some(n),
                None => {
                    return Err(ApiError::invalid(
                        "max_output_tokens",
                        "max_output_tokens must be an integer of at least 1",
                    ));
                }
            },
        };
        let store = optional_bool(object, "store")?.unwrap_or(true);
        let background = optional_bool(object, "background")?.unwrap_or(false);
        if background && !store {
            return Err(ApiError::invalid(
                "background",
                "a background response must be stored: background requires store to be true",
            ));
        }
        let reasoning_effort = match object.get("reasoning") {
            None | Some(Value::Null) => None,
            Some(Value::Object(r)) => r.get("effort").filter(|e| !e.is_null()).cloned(),
            Some(_) => {
                return Err(ApiError::invalid(
                    "reasoning",
                    "reasoning must be an object",
                ));
            }
        };
        Ok(Self {
            model,
            input,
            instructions,
            tools,
            tool_choice,
            parallel_tool_calls: optional_bool(object, "parallel_tool_calls")?.unwrap_or(false),
            text,
            max_output_tokens,
            temperature: optional_number(object, "temperature")?,
            top_p: optional_number(object, "top_p")?,
            metadata,
            store,
            previous_response_id,
            stream: optional_bool(object, "stream")?.unwrap_or(false),
            background,
            user: optional_string(object, "user")?,
            reasoning_effort,
            chat_tools,
            chat_tool_choice,
            response_format,
        })
    }

    /// The chat completion request that answers this one over `conversation` (the input
    /// items of the earlier responses, then this one's).
    pub fn chat_body(&self, conversation: &[Value]) -> Value {
        let mut messages = Vec::new();
        if let Some(instructions) = &self.instructions {
            messages.push(json!({ "role": "system", "content": instructions }));
        }
        messages.extend(chat_messages(conversation));
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "parallel_tool_calls": self.parallel_tool_calls,
        });
        if !self.chat_tools.is_empty() {
            body["tools"] = Value::Array(self.chat_tools.clone());
            body["tool_choice"] = self.chat_tool_choice.clone();
        }
        if let Some(format) = &self.response_format {
            body["response_format"] = format.clone();
        }
        if let Some(n) = self.max_output_tokens {
            body["max_completion_tokens"] = n.into();
        }
        if let Some(t) = self.temperature {
            body["temperature"] = t.into();
        }
        if let Some(p) = self.top_p {
            body["top_p"] = p.into();
        }
        if let Some(user) = &self.user {
            body["user"] = user.clone().into();
        }
        if let Some(effort) = &self.reasoning_effort {
            body["reasoning_effort"] = effort.clone();
        }
        if self.stream {
            body["stream"] = true.into();
            body["stream_options"] = json!({ "include_usage": true });
        }
        body
    }
}

/// What a chat error names, as the Responses request names it.
pub fn responses_param(chat_param: &str) -> String {
    let renamed = [
        ("messages", "input"),
        ("response_format", "text.format"),
        ("max_completion_tokens", "max_output_tokens"),
        ("max_tokens", "max_output_tokens"),
        ("reasoning_effort", "reasoning.effort"),
    ];
    for (chat, responses) in renamed {
        if let Some(rest) = chat_param.strip_prefix(chat) {
            return format!("{responses}{rest}");
        }
    }
    chat_param.to_string()
}

fn is_neutral(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(n) => n.as_u64() == Some(0),
        _ => false,
    }
}

fn optional_string(object: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(name, format!("{name} must be a string"))),
    }
}

fn optional_bool(object: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            name,
            format!("{name} must be true or false"),
        )),
    }
}

fn optional_number(object: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::invalid(name, format!("{name} must be a number"))),
    }
}

/// A message input item with text content.
pub fn message_item(role: &str, text: &str) -> Value {
    let part = if role == "assistant" {
        "output_text"
    } else {
        "input_text"
    };
    let mut content = json!({ "type": part, "text": text });
    if part == "output_text" {
        content["annotations"] = json!([]);
    }
    json!({
        "type": "message",
        "id": new_id("msg"),
        "role": role,
        "content": [content],
        "status": "completed",
    })
}

/// One item of `input`, normalised.
fn input_item(i: usize, item: &Value) -> Result<Value, ApiError> {
    let param = format!("input[{i}]");
    let Some(object) = item.as_object() else {
        return Err(ApiError::invalid(&param, "an input item must be an object"));
    };
    let kind = object.get("type").and_then(Value::as_str);
    let field = |name: &str| -> Result<String, ApiError> {
        match object.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(ApiError::invalid(
                &format!("{param}.{name}"),
                format!(
                    "a `{}` item needs a `{name}` string",
                    kind.unwrap_or("message")
                ),
            )),
        }
    };
    let id = |prefix: &str| {
        object
            .get("id")
            .and_then(Value::as_str)
            .map_or_else(|| new_id(prefix), str::to_string)
    };
    match kind {
        None | Some("message") => {
            let role = field("role")?;
            if !matches!(role.as_str(), "user" | "system" | "developer" | "assistant") {
                return Err(ApiError::invalid(
                    &format!("{param}.role"),
                    format!("unknown role `{role}`: use user, system, developer or assistant"),
                ));
            }
            let texts = match object.get("content") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, part)| content_text(&format!("{param}.content[{j}]"), part))
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(ApiError::invalid(
                        &format!("{param}.content"),
                        "content must be a string or an array of content parts",
                    ));
                }
            };
            let part = if role == "assistant" {
                "output_text"
            } else {
                "input_text"
            };
            let content: Vec<Value> = texts
                .into_iter()
                .map(|text| match part {
                    "output_text" => json!({ "type": part, "text": text, "annotations": [] }),
                    _ => json!({ "type": part, "text": text }),
                })
                .collect();
            Ok(json!({
                "type": "message",
                "id": id("msg"),
                "role": role,
                "content": content,
                "status": "completed",
            }))
        }
        Some("function_call") => {
            let call_id = field("call_id")?;
            let name = field("name")?;
            let arguments = field("arguments")?;
            Ok(json!({
                "type": "function_call",
                "id": id("fc"),
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
                "status": "completed",
            }))
        }
        Some("function_call_output") => {
            let call_id = field("call_id")?;
            let output = match object.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, part)| content_text(&format!("{param}.output[{j}]"), part))
                    .collect::<Result<Vec<_>, _>>()?
                    .join("\n"),
                _ => {
                    return Err(ApiError::invalid(
                        &format!("{param}.output"),
                        "a `function_call_output` item needs an `output` string",
                    ));
                }
            };
            Ok(json!({
                "type": "function_call_output",
                "id": id("fco"),
                "call_id": call_id,
                "output": output,
                "status": "completed",
            }))
        }
        // A model's reasoning sent back (openai-agents does): kept, not shown to the model.
        Some("reasoning") => Ok(item.clone()),
        Some(other) => {
            let mut e = ApiError::unsupported(&format!("{param}.type"));
            e.message = format!(
                "input items of type `{other}` are not supported by this server (message, function_call, function_call_output and reasoning are)"
            );
            Err(e)
        }
    }
}

/// The text of one content part.
fn content_text(param: &str, part: &Value) -> Result<String, ApiError> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text" | "refusal") => {
            let key = if part.get("refusal").is_some() {
                "refusal"
            } else {
                "text"
            };
            match part.get(key).and_then(Value::as_str) {
                Some(text) => Ok(text.to_string()),
                None => Err(ApiError::invalid(
                    &format!("{param}.text"),
                    "a text part needs a `text` string",
                )),
            }
        }
        Some(other) => {
            let mut e = ApiError::unsupported(&format!("{param}.type"));
            e.message = format!(
                "content parts of type `{other}` are not supported by this server yet (text only)"
            );
            Err(e)
        }
        None => Err(ApiError::invalid(
            &format!("{param}.type"),
            "a content part needs a `type`",
        )),
    }
}

/// Normalised input items as chat messages: function calls join the assistant message
/// before them, their outputs become tool messages, reasoning is left out.
fn chat_messages(items: &[Value]) -> Vec<Value> {
    let mut messages: Vec<Value> = Vec::new();
    for item in items {
        match item["type"].as_str() {
            Some("message") => {
                let text: Vec<&str> = item["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["text"].as_str().or(p["refusal"].as_str()))
                    .collect();
                messages.push(json!({ "role": item["role"], "content": text.join("\n") }));
            }
            Some("function_call") => {
                let call = json!({
                    "id": item["call_id"],
                    "type": "function",
                    "function": { "name": item["name"], "arguments": item["arguments"] },
                });
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" => {
                        match last["tool_calls"].as_array_mut() {
                            Some(calls) => calls.push(call),
                            None => last["tool_calls"] = json!([call]),
                        }
                    }
                    _ => messages.push(json!({
                        "role": "assistant",
                        "content": null,
                        "tool_calls": [call],
                    })),
                }
            }
            Some("function_call_output") => messages.push(json!({
                "role": "tool",
                "tool_call_id": item["call_id"],
                "content": item["output"],
            })),
            _ => {}
        }
    }
    messages
}

/// One entry of `tools` as chat takes it. Function tools only; the flat Responses shape
/// and chat's nested one are both accepted.
fn chat_tool(i: usize, tool: &Value) -> Result<Value, ApiError> {
    let param = format!("tools[{i}]");
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            let mut e = ApiError::unsupported(&format!("{param}.type"));
            e.message = format!(
                "tools of type `{other}` are not supported by this server (function tools are)"
            );
            return Err(e);
        }
        None => {
            return Err(ApiError::invalid(
                &format!("{param}.type"),
                "a tool needs a `type`",
            ));
        }
    }
    if let Some(function) = tool.get("function").filter(|f| f.is_object()) {
        return Ok(json!({ "type": "function", "function": function }));
    }
    let Some(name) = tool.get("name").and_then(Value::as_str) else {
        return Err(ApiError::invalid(
            &format!("{param}.name"),
            "a function tool needs a `name`",
        ));
    };
    let mut function = json!({ "name": name });
    for key in ["description", "parameters", "strict"] {
        if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
            function[key] = v.clone();
        }
    }
    Ok(json!({ "type": "function", "function": function }))
}

/// `tool_choice` as chat takes it.
fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o
                .get("name")
                .or_else(|| o.get("function").and_then(|f| f.get("name")))
                .and_then(Value::as_str)
            {
                Some(name) => Ok(json!({ "type": "function", "function": { "name": name } })),
                None => Err(ApiError::invalid(
                    "tool_choice.name",
                    "a function tool_choice needs the function's `name`",
                )),
            }
        }
        Value::Object(o) => {
            let mut e = ApiError::unsupported("tool_choice");
            e.message = format!(
                "tool_choice of type `{}` is not supported by this server (auto, none, required or a function are)",
                o.get("type").and_then(Value::as_str).unwrap_or("?")
            );
            Err(e)
        }
        _ => Err(ApiError::invalid(
            "tool_choice",
            "tool_choice must be `auto`, `none`, `required` or {\"type\": \"function\", \"name\": ...}",
        )),
    }
}

/// `text.format` as chat's `response_format` (None: free text).
fn response_format(format: &Value) -> Result<Option<Value>, ApiError> {
    let invalid = |message: &str| ApiError::invalid("text.format", message.to_string());
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({ "type": "json_object" }))),
        Some("json_schema") => {
            let Some(schema) = format.get("schema").filter(|s| s.is_object()) else {
                return Err(invalid("a json_schema format needs a `schema` object"));
            };
            let name = format
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("response");
            let mut json_schema = json!({ "name": name, "schema": schema });
            for key in ["strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    json_schema[key] = v.clone();
                }
            }
            Ok(Some(
                json!({ "type": "json_schema", "json_schema": json_schema }),
            ))
        }
        Some(other) => Err(invalid(&format!(
            "unknown format type `{other}`: use text, json_object or json_schema"
        ))),
        None => Err(invalid("text.format needs a `type`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ResponsesRequest, ApiError> {
        ResponsesRequest::from_object(body.as_object().unwrap())
    }

    #[test]
    fn input_items_become_chat_messages() {
        let req = parse(json!({
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Answer in French."}]},
            ],
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
            "max_output_tokens": 20,
        }))
        .unwrap();
        assert!(req.input.iter().all(|i| i["id"].is_string()));
        let chat = req.chat_body(&req.input);
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "developer", "content": "Answer in French."},
            ])
        );
        assert_eq!(
            chat["tools"],
            json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "weather"}})
        );
        assert_eq!(chat["response_format"]["json_schema"]["name"], "w");
        assert_eq!(chat["max_completion_tokens"], 20);
        assert!(chat.get("stream").is_none());
    }

    #[test]
    fn what_is_not_served_is_refused_by_name() {
        let cases = [
            (
                json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"model": "m", "input": "hi", "conversation": "conv_1"}),
                "conversation",
            ),
            (
                json!({"model": "m", "input": "hi", "text": {"format": {"type": "xml"}}}),
                "text.format",
            ),
            (
                json!({"model": "m", "input": "hi", "background": true, "store": false}),
                "background",
            ),
            (json!({"model": "m", "input": []}), "input"),
            (
                json!({"model": "m", "input": "hi", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
        ];
        for (body, param) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        // Harmless fields are accepted.
        parse(json!({"model": "m", "input": "hi", "include": ["x"], "truncation": "auto", "service_tier": "auto"}))
            .unwrap();
    }

    #[test]
    fn chat_params_are_named_as_the_responses_request_names_them() {
        assert_eq!(responses_param("messages[2].content"), "input[2].content");
        assert_eq!(responses_param("response_format"), "text.format");
        assert_eq!(
            responses_param("max_completion_tokens"),
            "max_output_tokens"
        );
        assert_eq!(responses_param("tools[0].function"), "tools[0].function");
    }
}
