//! A Messages request, checked and translated into the chat completion request that
//! serves it: `system` and `messages` (text, `tool_use`, `tool_result` blocks) into chat
//! messages, `tools` and `tool_choice` into function tools, `stop_sequences` into `stop`,
//! `thinking` into the template's thinking switch. Whatever the chat path checks itself
//! (sampling ranges, tool schemas, the context) is checked there.

use serde_json::{Map, Value, json};

use crate::openai::error::ApiError;

/// Fields of the Messages API that verre does not serve: refused, never ignored.
const UNSUPPORTED: &[&str] = &["mcp_servers", "container"];

/// The chat request for a Messages request, and what the answer's translation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The body for `/v1/chat/completions`.
    pub chat: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// To tell a stop sequence from the end of the turn.
    pub stop_sequences: Vec<String>,
}

/// `count_tokens` takes a request without `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Generate,
    CountTokens,
}

pub fn translate(object: &Map<String, Value>, purpose: Purpose) -> Result<Translated, ApiError> {
    for &field in UNSUPPORTED {
        if object.get(field).is_some_and(|v| !is_empty(v)) {
            return Err(ApiError::unsupported(field));
        }
    }
    let model = match object.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(ApiError::invalid(
                "model",
                "model: a model name is required",
            ));
        }
    };
    let mut chat = Map::new();
    chat.insert("model".into(), model.clone().into());
    match (object.get("max_tokens"), purpose) {
        (Some(n), _) if n.as_u64().is_some_and(|n| n >= 1) => {
            chat.insert("max_tokens".into(), n.clone());
        }
        (None, Purpose::CountTokens) => {}
        (None, Purpose::Generate) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens: Field required",
            ));
        }
        (Some(_), _) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens: must be an integer of at least 1",
            ));
        }
    }
    let mut messages = system(object.get("system"))?;
    let turns = match object.get("messages") {
        Some(Value::Array(turns)) if !turns.is_empty() => turns,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "messages: at least one message is required",
            ));
        }
        _ => {
            return Err(ApiError::invalid(
                "messages",
                "messages: Field required (an array of messages)",
            ));
        }
    };
    for (i, turn) in turns.iter().enumerate() {
        messages.extend(turn_messages(i, turn)?);
    }
    chat.insert("messages".into(), Value::Array(messages));
    for field in ["temperature", "top_p", "top_k"] {
        if let Some(v) = object.get(field).filter(|v| !v.is_null()) {
            chat.insert(field.into(), v.clone());
        }
    }
    let stop_sequences = match object.get("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid(
                    "stop_sequences",
                    "stop_sequences: must be an array of strings",
                )
            })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop_sequences",
                "stop_sequences: must be an array of strings",
            ));
        }
    };
    if !stop_sequences.is_empty() {
        chat.insert("stop".into(), json!(stop_sequences));
    }
    if let Some(metadata) = object.get("metadata")
        && !(metadata.is_object() || metadata.is_null())
    {
        return Err(ApiError::invalid("metadata", "metadata: must be an object"));
    }
    if let Some(tools) = tools(object.get("tools"))? {
        chat.insert("tools".into(), tools);
    }
    if let Some((choice, parallel)) = tool_choice(object.get("tool_choice"))? {
        chat.insert("tool_choice".into(), choice);
        if let Some(parallel) = parallel {
            chat.insert("parallel_tool_calls".into(), parallel.into());
        }
    }
    if let Some(enabled) = thinking(object.get("thinking"))? {
        chat.insert(
            "chat_template_kwargs".into(),
            json!({ "enable_thinking": enabled }),
        );
    }
    output_config(object.get("output_config"), &mut chat)?;
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream", "stream: must be a boolean")),
    };
    if stream {
        chat.insert("stream".into(), true.into());
        chat.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    Ok(Translated {
        chat,
        model,
        stream,
        stop_sequences,
    })
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// `system`: a string or text blocks, as the chat's first message.
fn system(value: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (j, block) in blocks.iter().enumerate() {
                texts.push(text_block(block, &format!("system[{j}]"))?);
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "system",
                "system: must be a string or an array of text blocks",
            ));
        }
    };
    Ok(vec![json!({ "role": "system", "content": text })])
}

/// The text of a `{"type": "text", "text"}` block.
fn text_block(block: &Value, param: &str) -> Result<String, ApiError> {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => block
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::invalid(
                    &format!("{param}.text"),
                    format!("{param}.text: Field required"),
                )
            }),
        Some(other) => Err(unsupported_block(param, other)),
        None => Err(ApiError::invalid(
            &format!("{param}.type"),
            format!("{param}.type: Field required"),
        )),
    }
}

fn unsupported_block(param: &str, kind: &str) -> ApiError {
    let mut e = ApiError::unsupported(&format!("{param}.type"));
    e.message = format!(
        "{param}: content blocks of type `{kind}` are not supported by this server (text, tool_use and tool_result are)"
    );
    e
}

/// One Messages turn as chat messages: a user turn's tool results become tool messages
/// (before its text), an assistant turn's `tool_use` blocks its tool calls.
fn turn_messages(i: usize, turn: &Value) -> Result<Vec<Value>, ApiError> {
    let param = format!("messages[{i}]");
    let role = match turn.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        Some(other) => {
            return Err(ApiError::invalid(
                &format!("{param}.role"),
                format!(
                    "{param}.role: must be `user` or `assistant`, not `{other}` (the system prompt goes in `system`)"
                ),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                &format!("{param}.role"),
                format!("{param}.role: Field required"),
            ));
        }
    };
    let blocks = match turn.get("content") {
        Some(Value::String(s)) => return Ok(vec![json!({ "role": role, "content": s })]),
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(ApiError::invalid(
                &format!("{param}.content"),
                format!("{param}.content: must be a string or an array of content blocks"),
            ));
        }
    };
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    let mut results = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let param = format!("{param}.content[{j}]");
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        match (role, kind) {
            (_, "text") => texts.push(text_block(block, &param)?),
            ("assistant", "tool_use") => calls.push(tool_use(block, &param)?),
            ("user", "tool_result") => results.push(tool_result(block, &param)?),
            // Earlier thinking is not shown to the model again.
            ("assistant", "thinking" | "redacted_thinking") => {}
            ("user", "tool_use") | ("assistant", "tool_result") => {
                return Err(ApiError::invalid(
                    &format!("{param}.type"),
                    format!(
                        "{param}: `{kind}` blocks belong in {} turns",
                        if kind == "tool_use" {
                            "assistant"
                        } else {
                            "user"
                        }
                    ),
                ));
            }
            ("", _) | (_, "") => {
                return Err(ApiError::invalid(
                    &format!("{param}.type"),
                    format!("{param}.type: Field required"),
                ));
            }
            (_, other) => return Err(unsupported_block(&param, other)),
        }
    }
    let mut out = results;
    let text = texts.join("\n");
    if role == "assistant" {
        let mut message = json!({ "role": "assistant", "content": text });
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        out.push(message);
    } else if !text.is_empty() || out.is_empty() {
        out.push(json!({ "role": "user", "content": text }));
    }
    Ok(out)
}

/// `{"type": "tool_use", "id", "name", "input"}` as an OpenAI tool call.
fn tool_use(block: &Value, param: &str) -> Result<Value, ApiError> {
    let field = |name: &str| {
        block.get(name).and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(
                &format!("{param}.{name}"),
                format!("{param}.{name}: Field required"),
            )
        })
    };
    let input = match block.get("input") {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => {
            return Err(ApiError::invalid(
                &format!("{param}.input"),
                format!("{param}.input: must be an object"),
            ));
        }
    };
    Ok(json!({
        "id": field("id")?,
        "type": "function",
        "function": { "name": field("name")?, "arguments": input.to_string() },
    }))
}

/// `{"type": "tool_result", "tool_use_id", "content", "is_error"}` as a tool message.
fn tool_result(block: &Value, param: &str) -> Result<Value, ApiError> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::invalid(
                &format!("{param}.tool_use_id"),
                format!("{param}.tool_use_id: Field required"),
            )
        })?;
    let content = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .enumerate()
            .map(|(k, b)| text_block(b, &format!("{param}.content[{k}]")))
            .collect::<Result<Vec<_>, _>>()?
            .join("\n"),
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("{param}.content"),
                format!("{param}.content: must be a string or an array of text blocks"),
            ));
        }
    };
    let content = match block.get("is_error") {
        Some(Value::Bool(true)) => format!("Error: {content}"),
        _ => content,
    };
    Ok(json!({ "role": "tool", "tool_call_id": id, "content": content }))
}

/// `tools` (`name`, `description`, `input_schema`) as function tools.
fn tools(value: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let tools = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(ApiError::invalid("tools", "tools: must be an array")),
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        match tool.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(other) => {
                let mut e = ApiError::unsupported(&format!("{param}.type"));
                e.message = format!(
                    "{param}: tools of type `{other}` (Anthropic's server tools) are not supported by this server; define the tool with `name`, `description` and `input_schema`"
                );
                return Err(e);
            }
        }
        let name = tool.get("name").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(
                &format!("{param}.name"),
                format!("{param}.name: Field required"),
            )
        })?;
        let schema = match tool.get("input_schema") {
            Some(s @ Value::Object(_)) => s.clone(),
            _ => {
                return Err(ApiError::invalid(
                    &format!("{param}.input_schema"),
                    format!("{param}.input_schema: a JSON Schema object is required"),
                ));
            }
        };
        let mut function = json!({ "name": name, "parameters": schema });
        if let Some(description) = tool.get("description").and_then(Value::as_str) {
            function["description"] = description.into();
        }
        out.push(json!({ "type": "function", "function": function }));
    }
    Ok((!out.is_empty()).then_some(Value::Array(out)))
}

/// `tool_choice` as the chat's, and `parallel_tool_calls` when the client said (through
/// `disable_parallel_tool_use`). Left unsaid, a required call is one call, as on the chat
/// path.
fn tool_choice(value: Option<&Value>) -> Result<Option<(Value, Option<bool>)>, ApiError> {
    let choice = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(c)) => c,
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice: must be an object",
            ));
        }
    };
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|disable| !disable);
    let chat = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => json!({ "type": "function", "function": { "name": name } }),
            None => {
                return Err(ApiError::invalid(
                    "tool_choice.name",
                    "tool_choice.name: Field required for `tool`",
                ));
            }
        },
        _ => {
            return Err(ApiError::invalid(
                "tool_choice.type",
                "tool_choice.type: must be auto, any, tool or none",
            ));
        }
    };
    Ok(Some((chat, parallel)))
}

/// `output_config`: `format` (a JSON Schema the answer follows, under the same constrained
/// decoding as the chat's `response_format`) and `effort` (the chat's `reasoning_effort`;
/// `xhigh` and `max` are `high`).
fn output_config(value: Option<&Value>, chat: &mut Map<String, Value>) -> Result<(), ApiError> {
    let config = match value {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(c)) => c,
        Some(_) => {
            return Err(ApiError::invalid(
                "output_config",
                "output_config: must be an object",
            ));
        }
    };
    if let Some(format) = config.get("format").filter(|f| !f.is_null()) {
        let schema = match (
            format.get("type").and_then(Value::as_str),
            format.get("schema"),
        ) {
            (Some("json_schema"), Some(schema @ Value::Object(_))) => schema.clone(),
            (Some("json_schema"), _) => {
                return Err(ApiError::invalid(
                    "output_config.format.schema",
                    "output_config.format.schema: a JSON Schema object is required",
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    "output_config.format.type",
                    "output_config.format.type: must be json_schema",
                ));
            }
        };
        chat.insert(
            "response_format".into(),
            json!({ "type": "json_schema", "json_schema": { "name": "output", "strict": true, "schema": schema } }),
        );
    }
    if let Some(effort) = config.get("effort").filter(|e| !e.is_null()) {
        let effort = match effort.as_str() {
            Some(e @ ("low" | "medium" | "high")) => e,
            Some("xhigh" | "max") => "high",
            _ => {
                return Err(ApiError::invalid(
                    "output_config.effort",
                    "output_config.effort: must be low, medium, high, xhigh or max",
                ));
            }
        };
        chat.insert("reasoning_effort".into(), effort.into());
    }
    Ok(())
}

/// `thinking`: whether the model thinks (`None`: as the model does by default).
fn thinking(value: Option<&Value>) -> Result<Option<bool>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.get("type").and_then(Value::as_str) {
            Some("enabled" | "adaptive" | "between_tools") => Ok(Some(true)),
            Some("disabled") => Ok(Some(false)),
            _ => Err(ApiError::invalid(
                "thinking.type",
                "thinking.type: must be enabled, adaptive, between_tools or disabled",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<Translated, ApiError> {
        translate(body.as_object().unwrap(), Purpose::Generate)
    }

    #[test]
    fn a_conversation_with_a_tool_round_trip_becomes_chat_messages() {
        let t = parse(json!({
            "model": "m",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "call it", "signature": "x"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "And tomorrow?"}
                ]}
            ],
            "tools": [{"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "stop_sequences": ["\n\n"],
            "temperature": 0.5,
            "top_k": 5,
            "metadata": {"user_id": "u"},
            "stream": true
        }))
        .unwrap();
        assert_eq!(
            Value::Object(t.chat.clone()),
            json!({
                "model": "m",
                "max_tokens": 64,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": "Let me look.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                    {"role": "user", "content": "And tomorrow?"}
                ],
                "temperature": 0.5,
                "top_k": 5,
                "stop": ["\n\n"],
                "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}, "description": "Weather"}}],
                "tool_choice": "required",
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
        assert!(t.stream);
        assert_eq!(t.stop_sequences, vec!["\n\n".to_string()]);
    }

    #[test]
    fn tool_choice_and_thinking_map_to_the_chat_switches() {
        let base =
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
        let with = |extra: Value| {
            let mut body = base.clone();
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse(body).unwrap().chat
        };
        let chat = with(
            json!({"tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": false}}),
        );
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(chat["parallel_tool_calls"], true);
        let chat = with(json!({"thinking": {"type": "disabled"}}));
        assert_eq!(
            chat["chat_template_kwargs"],
            json!({"enable_thinking": false})
        );
        let chat = with(json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}));
        assert_eq!(
            chat["chat_template_kwargs"],
            json!({"enable_thinking": true})
        );
        let chat = with(
            json!({"output_config": {"effort": "max", "format": {"type": "json_schema", "schema": {"type": "object"}}}}),
        );
        assert_eq!(chat["reasoning_effort"], "high");
        assert_eq!(
            chat["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "output", "strict": true, "schema": {"type": "object"}}})
        );
    }

    #[test]
    fn what_cannot_be_served_is_refused_by_name() {
        let hi = json!([{"role": "user", "content": "hi"}]);
        for (body, param) in [
            (json!({"model": "m", "messages": hi}), "max_tokens"),
            (
                json!({"model": "m", "max_tokens": 0, "messages": hi}),
                "max_tokens",
            ),
            (json!({"max_tokens": 1, "messages": hi}), "model"),
            (
                json!({"model": "m", "max_tokens": 1, "messages": []}),
                "messages",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": hi, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": hi, "tool_choice": {"type": "tool"}}),
                "tool_choice.name",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": hi, "mcp_servers": [{"url": "x"}]}),
                "mcp_servers",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": hi, "stop_sequences": "x"}),
                "stop_sequences",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": hi, "output_config": {"format": {"type": "xml"}}}),
                "output_config.format.type",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": hi, "output_config": {"effort": "huge"}}),
                "output_config.effort",
            ),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        // count_tokens needs no max_tokens.
        let body = json!({"model": "m", "messages": hi});
        assert!(translate(body.as_object().unwrap(), Purpose::CountTokens).is_ok());
    }
}
