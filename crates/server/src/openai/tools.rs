//! Tool calling: showing the tools to the model in the format its chat template taught it,
//! constraining the calls when the client requires one, and parsing the model's calls out
//! of its text — as a whole or token by token for a stream.
//!
//! Two formats are known:
//! - **Hermes** (SmolLM, Qwen, Hermes and most ChatML models): each call is
//!   `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
//! - **Mistral**: `[TOOL_CALLS]` then a JSON array of `{"name", "arguments"}` objects.
//!
//! A template that renders `tools` itself gets them as Hugging Face passes them; for one
//! that does not, verre describes the tools in the system message (Hermes format) and
//! turns tool results and earlier calls into text the template can render.

use serde_json::{Map, Value, json};
use verre_engine::{LoadedModel, Message};

use super::request::{Tool, ToolChoice};

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL_MARKER: &str = "[TOOL_CALLS]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    /// `marker_id`: the id of `[TOOL_CALLS]` when it is one token of the vocabulary.
    Mistral {
        marker_id: Option<u32>,
    },
}

impl ToolFormat {
    /// The format the model's chat template speaks.
    pub fn for_model(model: &LoadedModel) -> Self {
        if model.template.source().contains(MISTRAL_MARKER) {
            ToolFormat::Mistral {
                marker_id: model.tokenizer.token_id(MISTRAL_MARKER),
            }
        } else {
            ToolFormat::Hermes
        }
    }

    fn marker(&self) -> &'static str {
        match self {
            ToolFormat::Hermes => HERMES_OPEN,
            ToolFormat::Mistral { .. } => MISTRAL_MARKER,
        }
    }

    fn marker_id(&self) -> Option<u32> {
        match self {
            ToolFormat::Hermes => None,
            ToolFormat::Mistral { marker_id } => *marker_id,
        }
    }
}

/// The messages and `tools` value to render for a request with tools.
pub fn prepare_prompt(
    model: &LoadedModel,
    messages: &[Message],
    tools: &[Tool],
    choice: &ToolChoice,
) -> (Vec<Message>, Option<Value>) {
    let shown: Vec<&Tool> = match choice {
        ToolChoice::None => Vec::new(),
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    if model.template.handles_tools() {
        let value = (!shown.is_empty())
            .then(|| Value::Array(shown.iter().map(|t| t.raw.clone()).collect()));
        return (messages.to_vec(), value);
    }
    let mut out: Vec<Message> = messages.iter().map(as_plain_text).collect();
    if !shown.is_empty() {
        let description = describe_tools(&shown);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{description}", first.content);
            }
            _ => out.insert(0, Message::new("system", &description)),
        }
    }
    (out, None)
}

/// The tools, described in the system message for a template that has no place for them.
fn describe_tools(tools: &[&Tool]) -> String {
    let mut text = String::from(
        "You can call functions to answer. The functions available are listed between \
         <tools> and </tools>, one JSON signature per line:\n<tools>\n",
    );
    for tool in tools {
        let function = tool.raw.get("function").cloned().unwrap_or(Value::Null);
        text.push_str(&function.to_string());
        text.push('\n');
    }
    text.push_str(
        "</tools>\nTo call a function, answer with a JSON object holding its name and its \
         arguments between <tool_call> and </tool_call>, like this:\n<tool_call>\n\
         {\"name\": \"function_name\", \"arguments\": {\"argument\": \"value\"}}\n</tool_call>\n\
         Function results come back between <tool_response> and </tool_response>.",
    );
    text
}

/// A tool result or an assistant's calls as plain messages a template without tool
/// support can render.
fn as_plain_text(m: &Message) -> Message {
    if m.role == "tool" {
        return Message::new(
            "user",
            &format!("<tool_response>\n{}\n</tool_response>", m.content),
        );
    }
    let Some(Value::Array(calls)) = &m.tool_calls else {
        return Message::new(&m.role, &m.content);
    };
    let mut content = m.content.clone();
    for call in calls {
        let function = call.get("function").cloned().unwrap_or(Value::Null);
        let body = json!({
            "name": function.get("name").cloned().unwrap_or(Value::Null),
            "arguments": function.get("arguments").cloned().unwrap_or(json!({})),
        });
        if !content.is_empty() {
            content.push('\n');
        }
        content.push_str(&format!("{HERMES_OPEN}\n{body}\n{HERMES_CLOSE}"));
    }
    Message::new(&m.role, &content)
}

/// A Lark grammar whose every sentence is one (or, when `parallel`, one or more) valid
/// call(s) in the model's format, each naming a function and holding arguments valid
/// under its schema. `None` when the choice does not constrain.
pub fn call_grammar(
    format: ToolFormat,
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
) -> Option<String> {
    let allowed: Vec<&Tool> = match choice {
        ToolChoice::None | ToolChoice::Auto => return None,
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.name == name).collect(),
    };
    let variants: Vec<Value> = allowed
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    "arguments": t.parameters,
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let schema = json!({
        "anyOf": variants,
        "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "},
    });
    let many = parallel && !matches!(choice, ToolChoice::Function(_));
    Some(match format {
        ToolFormat::Hermes => format!(
            "start: {}\ncall: \"{HERMES_OPEN}\\n\" body \"\\n{HERMES_CLOSE}\"\nbody: %json {schema}\n",
            if many { "call (\"\\n\" call)*" } else { "call" }
        ),
        ToolFormat::Mistral { marker_id } => {
            let marker = match marker_id {
                Some(id) => format!("<[{id}]>"),
                None => format!("\"{MISTRAL_MARKER}\""),
            };
            format!(
                "start: {marker} \"[\" {} \"]\"\nbody: %json {schema}\n",
                if many { "body (\", \" body)*" } else { "body" }
            )
        }
    })
}

/// A call as it goes to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON string (OpenAI's shape).
    pub arguments: String,
}

impl ToolCall {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

/// What the parser lets out.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolDelta {
    Content(String),
    Call(ToolCall),
}

/// Reads a model's output as it comes: text goes out as content, except what might be the
/// start of a call, which is held back until it is known; each call goes out when it is
/// complete. A call that does not parse goes out as the text it was.
pub struct ToolCallParser {
    format: ToolFormat,
    in_calls: bool,
    /// Content held back (could be the start of the marker), or the calls' text so far.
    buffer: String,
    calls: usize,
}

impl ToolCallParser {
    pub fn new(format: ToolFormat) -> Self {
        Self {
            format,
            in_calls: false,
            buffer: String::new(),
            calls: 0,
        }
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn push(&mut self, token: u32, text: &str) -> Vec<ToolDelta> {
        let mut out = Vec::new();
        if !self.in_calls && self.format.marker_id() == Some(token) {
            // The marker as a control token: its text may not be shown at all.
            out.extend(content(std::mem::take(&mut self.buffer)));
            self.in_calls = true;
            self.buffer
                .push_str(text.trim_start_matches(MISTRAL_MARKER));
            return out;
        }
        self.buffer.push_str(text);
        if !self.in_calls {
            let marker = self.format.marker();
            if let Some(at) = self.buffer.find(marker) {
                let rest = self.buffer.split_off(at);
                out.extend(content(std::mem::take(&mut self.buffer)));
                self.buffer = rest[marker.len()..].to_string();
                self.in_calls = true;
            } else {
                let keep = partial_suffix(&self.buffer, marker);
                let ready = self.buffer.len() - keep;
                let rest = self.buffer.split_off(ready);
                out.extend(content(std::mem::replace(&mut self.buffer, rest)));
                return out;
            }
        }
        self.drain_complete_calls(&mut out);
        out
    }

    /// The end of the output: the last call (even without its closing tag), or the text
    /// held back.
    pub fn finish(&mut self) -> Vec<ToolDelta> {
        let mut out = Vec::new();
        if !self.in_calls {
            out.extend(content(std::mem::take(&mut self.buffer)));
            return out;
        }
        self.drain_complete_calls(&mut out);
        let rest = std::mem::take(&mut self.buffer);
        let body = rest.trim();
        if body.is_empty() {
            return out;
        }
        match self.format {
            ToolFormat::Hermes => {
                let body = body.strip_prefix(HERMES_OPEN).unwrap_or(body).trim();
                match parse_call(body) {
                    Some(call) => out.push(self.call(call)),
                    None => out.extend(content(self.unparsed(&rest))),
                }
            }
            ToolFormat::Mistral { .. } => match parse_call_list(body) {
                Some(calls) => {
                    for call in calls {
                        out.push(self.call(call));
                    }
                }
                None => out.extend(content(self.unparsed(&rest))),
            },
        }
        out
    }

    /// Text that was taken for calls and is not: shown as it was written.
    fn unparsed(&self, rest: &str) -> String {
        if self.calls == 0 {
            format!("{}{rest}", self.format.marker())
        } else {
            rest.to_string()
        }
    }

    fn drain_complete_calls(&mut self, out: &mut Vec<ToolDelta>) {
        match self.format {
            ToolFormat::Hermes => {
                while let Some(end) = self.buffer.find(HERMES_CLOSE) {
                    let body = self.buffer[..end].trim().to_string();
                    let body = body
                        .strip_prefix(HERMES_OPEN)
                        .unwrap_or(&body)
                        .trim()
                        .to_string();
                    self.buffer.drain(..end + HERMES_CLOSE.len());
                    let trimmed = self.buffer.trim_start().to_string();
                    self.buffer = trimmed;
                    match parse_call(&body) {
                        Some(call) => out.push(self.call(call)),
                        None => out.extend(content(format!("{HERMES_OPEN}{body}{HERMES_CLOSE}"))),
                    }
                }
            }
            ToolFormat::Mistral { .. } => {
                let body = self.buffer.trim();
                if body.ends_with(']')
                    && let Some(calls) = parse_call_list(body)
                {
                    self.buffer.clear();
                    for call in calls {
                        out.push(self.call(call));
                    }
                }
            }
        }
    }

    fn call(&mut self, (name, arguments): (String, String)) -> ToolDelta {
        self.calls += 1;
        ToolDelta::Call(ToolCall {
            id: format!("call_{}", hex_id()),
            name,
            arguments,
        })
    }
}

fn content(text: String) -> Option<ToolDelta> {
    (!text.is_empty()).then_some(ToolDelta::Content(text))
}

/// Bytes at the end of `text` that could be the start of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// `{"name": ..., "arguments": {...}}` (or `"parameters"`, or arguments as a JSON string).
fn parse_call(body: &str) -> Option<(String, String)> {
    let value: Value = serde_json::from_str(body).ok()?;
    call_from_value(&value)
}

fn call_from_value(value: &Value) -> Option<(String, String)> {
    let object = value.as_object()?;
    let name = object.get("name")?.as_str()?.to_string();
    let arguments = match object.get("arguments").or_else(|| object.get("parameters")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str(s).ok()?,
        Some(v) => v.clone(),
    };
    arguments.is_object().then(|| (name, arguments.to_string()))
}

fn parse_call_list(body: &str) -> Option<Vec<(String, String)>> {
    match serde_json::from_str::<Value>(body).ok()? {
        Value::Array(items) => items.iter().map(call_from_value).collect(),
        single @ Value::Object(_) => call_from_value(&single).map(|c| vec![c]),
        _ => None,
    }
}

fn hex_id() -> String {
    rand::random::<[u8; 12]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: ToolFormat, pieces: &[(u32, &str)]) -> (String, Vec<(String, String)>) {
        let mut p = ToolCallParser::new(format);
        let mut deltas = Vec::new();
        for (t, s) in pieces {
            deltas.extend(p.push(*t, s));
        }
        deltas.extend(p.finish());
        let mut text = String::new();
        let mut calls = Vec::new();
        for d in deltas {
            match d {
                ToolDelta::Content(c) => text.push_str(&c),
                ToolDelta::Call(c) => calls.push((c.name, c.arguments)),
            }
        }
        (text, calls)
    }

    /// Every split of the text into two pieces gives the same result.
    fn every_split(format: ToolFormat, text: &str) -> (String, Vec<(String, String)>) {
        let whole = run(format, &[(0, text)]);
        for i in 0..=text.len() {
            if !text.is_char_boundary(i) {
                continue;
            }
            let split = run(format, &[(0, &text[..i]), (0, &text[i..])]);
            assert_eq!(split, whole, "split at {i}");
        }
        let by_char: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<(u32, &str)> = by_char.iter().map(|s| (0, s.as_str())).collect();
        assert_eq!(run(format, &pieces), whole, "char by char");
        whole
    }

    #[test]
    fn hermes_calls_are_parsed_from_any_split() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"get_time\", \"arguments\": \"{\\\"tz\\\": \\\"CET\\\"}\"}</tool_call>";
        let (content, calls) = every_split(ToolFormat::Hermes, text);
        assert_eq!(content, "Let me check.\n");
        assert_eq!(
            calls,
            vec![
                ("get_weather".into(), r#"{"city":"Paris"}"#.into()),
                ("get_time".into(), r#"{"tz":"CET"}"#.into()),
            ]
        );
    }

    #[test]
    fn hermes_without_closing_tag_and_plain_text() {
        let (content, calls) = every_split(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"f\", \"arguments\": {}}",
        );
        assert_eq!((content.as_str(), calls.len()), ("", 1));
        // Text that merely looks like the start of a tag is content.
        let (content, calls) = every_split(ToolFormat::Hermes, "a < b and <tool is fine");
        assert_eq!(
            (content.as_str(), calls.len()),
            ("a < b and <tool is fine", 0)
        );
        // A malformed call is shown as written, not dropped.
        let (content, calls) = every_split(ToolFormat::Hermes, "<tool_call>{not json}</tool_call>");
        assert_eq!(calls.len(), 0);
        assert_eq!(content, "<tool_call>{not json}</tool_call>");
    }

    #[test]
    fn mistral_calls_by_text_and_by_control_token() {
        let format = ToolFormat::Mistral { marker_id: Some(9) };
        let (content, calls) = every_split(
            format,
            "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {}}]",
        );
        assert_eq!(content, "");
        assert_eq!(
            calls,
            vec![("a".into(), r#"{"x":1}"#.into()), ("b".into(), "{}".into())]
        );
        // The marker as a control token decodes to nothing.
        let (content, calls) = run(
            format,
            &[
                (9, ""),
                (1, "[{\"name\": \"a\", "),
                (2, "\"arguments\": {}}]"),
            ],
        );
        assert_eq!((content.as_str(), calls.len()), ("", 1));
    }

    #[test]
    fn grammars_name_each_allowed_function() {
        let tool = |name: &str| Tool {
            name: name.into(),
            parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}),
            raw: json!({"type": "function", "function": {"name": name}}),
        };
        let tools = [tool("search"), tool("lookup")];
        assert!(call_grammar(ToolFormat::Hermes, &tools, &ToolChoice::Auto, true).is_none());
        let g = call_grammar(ToolFormat::Hermes, &tools, &ToolChoice::Required, true).unwrap();
        assert!(
            g.contains("\"search\"")
                && g.contains("\"lookup\"")
                && g.contains("call (\"\\n\" call)*"),
            "{g}"
        );
        let g = call_grammar(
            ToolFormat::Mistral { marker_id: Some(5) },
            &tools,
            &ToolChoice::Function("lookup".into()),
            true,
        )
        .unwrap();
        assert!(
            g.contains("<[5]>") && g.contains("\"lookup\"") && !g.contains("\"search\""),
            "{g}"
        );
    }
}
