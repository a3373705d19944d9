//! Tool calling: showing the tools to the model in the format its chat template taught it,
//! constraining the calls when the client requires one, and parsing the model's calls out
//! of its text — as a whole or token by token for a stream.
//!
//! Two families of formats are known:
//! - **Hermes** (SmolLM, Qwen, Hermes and most ChatML models): each call is
//!   `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
//! - **Mistral**, in its two generations: `[TOOL_CALLS]` then a JSON array of
//!   `{"name", "arguments"}` objects (v3: Mistral 7B v0.3, Nemo), or
//!   `[TOOL_CALLS]name[ARGS]{...}` once per call (v11 and later: Devstral, Magistral,
//!   Ministral 3, Mistral Small 3.2, which also writes `[CALL_ID]id` before `[ARGS]`).
//!   The parser reads both whatever the template says; the template decides which one a
//!   required call is constrained to. Mistral's templates refuse call ids that are not 9
//!   characters long: calls get 9 alphanumeric characters, and ids a client sends back in
//!   another shape are mapped to such ids before rendering.
//!
//! A template that renders `tools` itself gets them as Hugging Face passes them; for one
//! that does not, verre describes the tools in the system message (Hermes format) and
//! turns tool results and earlier calls into text the template can render.

use serde_json::{Map, Value, json};
use verre_engine::{LoadedModel, Message};

use super::request::{Tool, ToolChoice};

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const MISTRAL_CALL_ID: &str = "[CALL_ID]";
/// Length of the call ids Mistral's templates insist on.
const MISTRAL_ID_LEN: usize = 9;
const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Mistral(Mistral),
}

/// What a Mistral template writes for a call, and which of its markers are single tokens
/// of the vocabulary (control tokens decode to no text: the parser needs their ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mistral {
    /// `[TOOL_CALLS]name[ARGS]{...}` (v11 and later) rather than `[TOOL_CALLS][{...}]`.
    pub name_args: bool,
    /// `[CALL_ID]id` between the name and `[ARGS]` (Mistral Small 3.2).
    pub call_id: bool,
    pub calls_token: Option<u32>,
    pub args_token: Option<u32>,
    pub call_id_token: Option<u32>,
}

impl ToolFormat {
    /// The format the model's chat template speaks.
    pub fn for_model(model: &LoadedModel) -> Self {
        Self::for_template(model.template.source(), |piece| {
            model.tokenizer.token_id(piece)
        })
    }

    /// The format a template speaks; `token_id` finds a marker in the vocabulary.
    pub fn for_template(source: &str, token_id: impl Fn(&str) -> Option<u32>) -> Self {
        if !source.contains(MISTRAL_CALLS) {
            return ToolFormat::Hermes;
        }
        ToolFormat::Mistral(Mistral {
            name_args: source.contains(MISTRAL_ARGS),
            call_id: source.contains(MISTRAL_CALL_ID),
            calls_token: token_id(MISTRAL_CALLS),
            args_token: token_id(MISTRAL_ARGS),
            call_id_token: token_id(MISTRAL_CALL_ID),
        })
    }

    /// The text that starts a call, and its token where it is a control token.
    pub fn call_marker(&self) -> (&'static str, Option<u32>) {
        match self {
            ToolFormat::Hermes => (HERMES_OPEN, None),
            ToolFormat::Mistral(m) => (MISTRAL_CALLS, m.calls_token),
        }
    }

    fn marker(&self) -> &'static str {
        match self {
            ToolFormat::Hermes => HERMES_OPEN,
            ToolFormat::Mistral(_) => MISTRAL_CALLS,
        }
    }

    /// The text of a marker that is a control token (its decoded text is empty).
    fn control_text(&self, token: u32) -> Option<&'static str> {
        let ToolFormat::Mistral(m) = self else {
            return None;
        };
        [
            (m.calls_token, MISTRAL_CALLS),
            (m.args_token, MISTRAL_ARGS),
            (m.call_id_token, MISTRAL_CALL_ID),
        ]
        .into_iter()
        .find(|(id, _)| *id == Some(token))
        .map(|(_, text)| text)
    }

    /// A new call id in the shape the format's templates accept.
    fn new_call_id(&self) -> String {
        match self {
            ToolFormat::Hermes => format!("call_{}", hex_id()),
            ToolFormat::Mistral(_) => (0..MISTRAL_ID_LEN)
                .map(|_| ALPHANUMERIC[rand::random_range(0..ALPHANUMERIC.len())] as char)
                .collect(),
        }
    }
}

/// Whether `id` is a call id Mistral's templates accept.
fn is_mistral_id(id: &str) -> bool {
    id.len() == MISTRAL_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A 9-character alphanumeric id standing for `id` (the same for the same id, so a call
/// and its result still match): ids from another API (`call_...`) become ids Mistral's
/// templates accept.
fn mistral_id_for(id: &str) -> String {
    if is_mistral_id(id) {
        return id.to_string();
    }
    use sha2::{Digest, Sha256};
    Sha256::digest(id.as_bytes())
        .iter()
        .take(MISTRAL_ID_LEN)
        .map(|b| ALPHANUMERIC[*b as usize % ALPHANUMERIC.len()] as char)
        .collect()
}

/// Call ids in earlier messages, as a Mistral template accepts them.
fn with_mistral_ids(messages: &[Message]) -> Vec<Message> {
    messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Some(id) = &m.tool_call_id {
                m.tool_call_id = Some(mistral_id_for(id));
            }
            if let Some(Value::Array(calls)) = &mut m.tool_calls {
                for call in calls {
                    if let Some(id) = call.get("id").and_then(Value::as_str) {
                        call["id"] = Value::String(mistral_id_for(id));
                    }
                }
            }
            m
        })
        .collect()
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
        let messages = match ToolFormat::for_model(model) {
            ToolFormat::Mistral(_) => with_mistral_ids(messages),
            ToolFormat::Hermes => messages.to_vec(),
        };
        return (messages, value);
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
/// under its schema. `None` when the choice does not constrain. The arguments' schemas
/// are narrowed as a `response_format` schema is (closed objects), and the engine closes
/// their JSON near the token limit ([`GrammarSpec::ToolCalls`]).
///
/// [`GrammarSpec::ToolCalls`]: verre_engine::GrammarSpec::ToolCalls
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
    // The separators Python's json.dumps (the templates' `tojson`) writes.
    let layout =
        json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
    let many = parallel && !matches!(choice, ToolChoice::Function(_));
    if let ToolFormat::Mistral(m) = format
        && m.name_args
    {
        return Some(name_args_grammar(m, &allowed, &layout, many));
    }
    let mut defs = Map::new();
    let variants: Vec<Value> = allowed
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    "arguments": rooted_parameters(i, &t.parameters, &mut defs),
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let mut schema = json!({"anyOf": variants, "x-guidance": layout});
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs);
    }
    Some(match format {
        ToolFormat::Hermes => format!(
            "start: {}\ncall: \"{HERMES_OPEN}\\n\" body \"\\n{HERMES_CLOSE}\"\nbody: %json {schema}\n",
            if many { "call (\"\\n\" call)*" } else { "call" }
        ),
        ToolFormat::Mistral(m) => format!(
            "start: {} \"[\" {} \"]\"\nbody: %json {schema}\n",
            lark_marker(m.calls_token, MISTRAL_CALLS),
            if many { "body (\", \" body)*" } else { "body" }
        ),
    })
}

/// Where the definitions of the `index`-th tool live in a combined schema.
fn tool_root(index: usize) -> String {
    format!("verre_tool_{index}")
}

/// A tool's arguments schema as it sits in the combined schema, narrowed. A schema that
/// refers to itself (`$ref` to `#/$defs/...`, `#/definitions/...` or `#`: any Pydantic
/// model nesting another) no longer has its own root there, so it moves whole under
/// `$defs/verre_tool_<index>` of the combined root, its local references rewritten to
/// point into it, and a reference to it takes its place.
fn rooted_parameters(index: usize, parameters: &Value, defs: &mut Map<String, Value>) -> Value {
    let mut schema = parameters.clone();
    verre_engine::constraint::narrow_schema(&mut schema);
    if !has_local_ref(&schema) {
        return schema;
    }
    let root = format!("#/$defs/{}", tool_root(index));
    rebase_local_refs(&mut schema, &root);
    defs.insert(tool_root(index), schema);
    json!({ "$ref": root })
}

/// Keywords whose values are instances, not schemas: a `$ref` inside is data.
fn is_instance_keyword(key: &str) -> bool {
    matches!(key, "enum" | "const" | "default" | "examples")
}

fn has_local_ref(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => map.iter().any(|(key, value)| match (key.as_str(), value) {
            ("$ref", Value::String(r)) => r.starts_with('#'),
            (key, _) if is_instance_keyword(key) => false,
            _ => has_local_ref(value),
        }),
        Value::Array(items) => items.iter().any(has_local_ref),
        _ => false,
    }
}

/// `#` becomes `root`, `#/x/y` becomes `root/x/y`.
fn rebase_local_refs(schema: &mut Value, root: &str) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match (key.as_str(), value) {
                    ("$ref", Value::String(r)) if r.starts_with('#') => {
                        *r = format!("{root}{}", &r[1..]);
                    }
                    (key, _) if is_instance_keyword(key) => {}
                    (_, value) => rebase_local_refs(value, root),
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| rebase_local_refs(item, root)),
        _ => {}
    }
}

/// A marker in a Lark grammar: its token when it is one, else its text.
fn lark_marker(token: Option<u32>, text: &str) -> String {
    match token {
        Some(id) => format!("<[{id}]>"),
        None => format!("\"{text}\""),
    }
}

/// `[TOOL_CALLS]name[ARGS]{...}` (with `[CALL_ID]id` before `[ARGS]` where the template
/// writes one), one alternative per function so that the arguments follow its schema.
fn name_args_grammar(m: Mistral, allowed: &[&Tool], layout: &Value, many: bool) -> String {
    let calls = lark_marker(m.calls_token, MISTRAL_CALLS);
    let args = lark_marker(m.args_token, MISTRAL_ARGS);
    let call_id = if m.call_id {
        format!(
            "{} /[a-zA-Z0-9]{{9}}/ ",
            lark_marker(m.call_id_token, MISTRAL_CALL_ID)
        )
    } else {
        String::new()
    };
    let mut lark = format!("start: {}\n", if many { "call+" } else { "call" });
    let alternatives: Vec<String> = (0..allowed.len()).map(|i| format!("call{i}")).collect();
    lark.push_str(&format!("call: {}\n", alternatives.join(" | ")));
    for (i, tool) in allowed.iter().enumerate() {
        // Each call's arguments are a schema of their own: references resolve as written.
        let mut schema = tool.parameters.clone();
        verre_engine::constraint::narrow_schema(&mut schema);
        if let Some(object) = schema.as_object_mut() {
            object.insert("x-guidance".into(), layout.clone());
        }
        lark.push_str(&format!(
            "call{i}: {calls} {} {call_id}{args} args{i}\nargs{i}: %json {schema}\n",
            Value::String(tool.name.clone())
        ));
    }
    lark
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

/// A call as read from the output, before it gets an id: the id the model wrote, if any
/// (`[CALL_ID]`, or `"id"` in a v3 call object), its name and its arguments as JSON text.
#[derive(Debug)]
struct ParsedCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// Reads a model's output as it comes: text goes out as content, except what might be the
/// start of a call, which is held back until it is known; each call goes out when it is
/// complete. A call that does not parse goes out as the text it was — unless the token
/// limit cut it: a partial call is not content.
pub struct ToolCallParser {
    format: ToolFormat,
    in_calls: bool,
    /// Content held back (could be the start of the marker), or the calls' text so far.
    buffer: String,
    calls: usize,
    /// Calls let out so far (name, arguments), when a repeated call is dropped.
    distinct: Option<Vec<(String, String)>>,
    /// The declared tools' names, when an answer that is nothing but a call object (bare or
    /// in a fenced code block) is read as that call; see [`ToolCallParser::bare_calls`].
    bare: Option<Vec<String>>,
    /// Whether the answer so far could still be such a bare call (its text is held back).
    bare_possible: bool,
    /// How far the held text was scanned for the end of its JSON value, so that each byte
    /// is looked at once while the value is incomplete (see [`BareScan`]).
    bare_scan: BareScan,
    /// Times the held text was parsed whole (bounded: see [`BareScan`]).
    bare_parses: std::cell::Cell<usize>,
}

/// The structure of a held answer's JSON, scanned incrementally: its nesting depth outside
/// strings. Parsing the whole held text again on every token would cost quadratic time on
/// a long answer; the scan says when the value may be complete, and only then is it parsed.
#[derive(Debug, Default)]
struct BareScan {
    /// Bytes of the buffer scanned.
    at: usize,
    started: bool,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The value's outermost bracket closed: parse it (and whatever follows) now.
    closed: bool,
}

impl BareScan {
    fn advance(&mut self, text: &str) {
        for &b in &text.as_bytes()[self.at..] {
            if !self.started {
                if b == b'{' || b == b'[' {
                    self.started = true;
                    self.depth = 1;
                }
                continue;
            }
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        self.closed = true;
                    }
                }
                _ => {}
            }
        }
        self.at = text.len();
    }
}

/// Held text short enough to decide on by parsing it whole (the fence, the first bracket).
const BARE_PREFIX: usize = 64;

impl ToolCallParser {
    pub fn new(format: ToolFormat) -> Self {
        Self {
            format,
            in_calls: false,
            buffer: String::new(),
            calls: 0,
            distinct: None,
            bare: None,
            bare_possible: false,
            bare_scan: BareScan::default(),
            bare_parses: std::cell::Cell::new(0),
        }
    }

    /// An answer that is nothing but a call object, `{"name": ..., "arguments": {...}}` (or a
    /// list of them), without the format's call markers — bare or in a ```json fence — is
    /// read as that call when `name` is one of `tools`. Small Hermes-format models (Qwen2.5
    /// Coder 0.5B and 1.5B) answer this way under `tool_choice: auto`. Such an answer is held
    /// back until it is known; an answer that starts otherwise streams as before.
    pub fn bare_calls(mut self, tools: Vec<String>) -> Self {
        self.bare_possible = matches!(self.format, ToolFormat::Hermes) && !tools.is_empty();
        self.bare = Some(tools);
        self
    }

    /// A call with the same name and arguments as an earlier one of the same answer is
    /// dropped (a constrained model asked for several calls tends to repeat its first).
    pub fn distinct(mut self) -> Self {
        self.distinct = Some(Vec::new());
        self
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// One token of output and the text it let out. A marker that is a control token
    /// decodes to nothing; its id stands for its text.
    pub fn push(&mut self, token: u32, text: &str) -> Vec<ToolDelta> {
        let text = self.format.control_text(token).unwrap_or(text);
        let mut out = Vec::new();
        self.buffer.push_str(text);
        if self.bare_possible && !self.in_calls {
            // The call marker in the new text ends it; else the held text is parsed only
            // while it is short or once its value's brackets closed.
            let marker = self.format.marker();
            let from = self.bare_scan.at.saturating_sub(marker.len());
            let from = (0..=from)
                .rev()
                .find(|&i| self.buffer.is_char_boundary(i))
                .unwrap_or(0);
            let marked = self.buffer[from..].contains(marker);
            self.bare_scan.advance(&self.buffer);
            let decide = marked || self.buffer.len() <= BARE_PREFIX || self.bare_scan.closed;
            match decide {
                false => return out,
                true => match self.bare_state() {
                    Bare::Possible => return out,
                    Bare::Ruled => self.bare_possible = false,
                },
            }
        }
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

    /// The end of the output: the last call (even without its closing tag, or cut inside
    /// it), or the text held back. `cut`: the token limit ended the output, so what is
    /// left of a call that does not parse is dropped rather than shown as content.
    pub fn finish(&mut self, cut: bool) -> Vec<ToolDelta> {
        let mut out = Vec::new();
        if self.bare_possible && !self.in_calls {
            self.bare_possible = false;
            if let Some(calls) = self.bare_answer() {
                self.buffer.clear();
                for call in calls {
                    out.extend(self.call(call));
                }
                return out;
            }
        }
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
        let last = match self.format {
            ToolFormat::Hermes => {
                let body = body.strip_prefix(HERMES_OPEN).unwrap_or(body).trim();
                parse_call(body)
                    .or_else(|| parse_call_before_partial_close(body))
                    .map(|call| vec![call])
            }
            // What is left did not parse as a complete call.
            ToolFormat::Mistral(_) => None,
        };
        match last {
            Some(calls) => {
                for call in calls {
                    out.extend(self.call(call));
                }
            }
            None if cut => {}
            None => out.extend(content(self.unparsed(&rest))),
        }
        out
    }

    /// Whether the text so far could still be a bare call answer.
    fn bare_state(&self) -> Bare {
        self.bare_parses.set(self.bare_parses.get() + 1);
        let text = self.buffer.trim_start();
        if text.contains(self.format.marker()) {
            return Bare::Ruled;
        }
        let Some(body) = strip_open_fence(text) else {
            return Bare::Ruled;
        };
        if body.is_empty() {
            return Bare::Possible;
        }
        if !body.starts_with('{') && !body.starts_with('[') {
            return Bare::Ruled;
        }
        let mut values = serde_json::Deserializer::from_str(body).into_iter::<Value>();
        match values.next() {
            Some(Ok(value)) => {
                let tail = body[values.byte_offset()..].trim();
                let fence_tail =
                    tail.is_empty() || (text.starts_with('`') && "```".starts_with(tail));
                match fence_tail && self.bare_calls_in(&value).is_some() {
                    true => Bare::Possible,
                    false => Bare::Ruled,
                }
            }
            Some(Err(e)) if e.is_eof() => Bare::Possible,
            _ => Bare::Ruled,
        }
    }

    /// The whole answer read as bare calls, if it is one.
    fn bare_answer(&self) -> Option<Vec<ParsedCall>> {
        let text = self.buffer.trim();
        let body = strip_open_fence(text)?;
        let body = match text.starts_with('`') {
            true => body.strip_suffix("```")?.trim_end(),
            false => body,
        };
        let value: Value = serde_json::from_str(body).ok()?;
        self.bare_calls_in(&value)
    }

    /// The calls `value` makes, when it is a call object or a list of them and every name is
    /// a declared tool.
    fn bare_calls_in(&self, value: &Value) -> Option<Vec<ParsedCall>> {
        let tools = self.bare.as_ref()?;
        let calls: Vec<ParsedCall> = match value {
            Value::Array(items) if !items.is_empty() => {
                items.iter().map(parsed_from_value).collect::<Option<_>>()?
            }
            object @ Value::Object(_) => vec![parsed_from_value(object)?],
            _ => return None,
        };
        calls
            .iter()
            .all(|call| tools.contains(&call.name))
            .then_some(calls)
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
                while let Some((end, parsed)) = hermes_call_end(&self.buffer) {
                    let body = hermes_body(&self.buffer[..end]).to_string();
                    self.buffer.drain(..end + HERMES_CLOSE.len());
                    let trimmed = self.buffer.trim_start().to_string();
                    self.buffer = trimmed;
                    match parsed {
                        Some(call) => out.extend(self.call(call)),
                        None => out.extend(content(format!("{HERMES_OPEN}{body}{HERMES_CLOSE}"))),
                    }
                }
            }
            ToolFormat::Mistral(_) => {
                while let Some((calls, used)) = next_mistral_calls(&self.buffer) {
                    self.buffer.drain(..used);
                    for call in calls {
                        out.extend(self.call(call));
                    }
                }
            }
        }
    }

    /// A parsed call as it goes out; `None` for a repeat when repeats are dropped.
    fn call(&mut self, parsed: ParsedCall) -> Option<ToolDelta> {
        if let Some(seen) = &mut self.distinct {
            let key = (parsed.name.clone(), parsed.arguments.clone());
            if seen.contains(&key) {
                return None;
            }
            seen.push(key);
        }
        self.calls += 1;
        let id = match (self.format, parsed.id) {
            (ToolFormat::Mistral(_), Some(id)) if is_mistral_id(&id) => id,
            _ => self.format.new_call_id(),
        };
        Some(ToolDelta::Call(ToolCall {
            id,
            name: parsed.name,
            arguments: parsed.arguments,
        }))
    }
}

/// A Hermes call's text without its opening tag and the space around it.
fn hermes_body(text: &str) -> &str {
    let body = text.trim();
    body.strip_prefix(HERMES_OPEN).unwrap_or(body).trim()
}

/// Where the first complete Hermes call in `buffer` ends (the offset of its closing tag),
/// with the call: the first closing tag before which the text parses as a call, so that a
/// closing tag written inside a string argument (which a grammar allows) does not cut the
/// call; else the first closing tag outside the JSON strings, ending a call that does not
/// parse. `None` while neither is there yet.
fn hermes_call_end(buffer: &str) -> Option<(usize, Option<ParsedCall>)> {
    for (end, _) in buffer.match_indices(HERMES_CLOSE) {
        if let Some(call) = parse_call(hermes_body(&buffer[..end])) {
            return Some((end, Some(call)));
        }
    }
    let (mut in_string, mut escaped) = (false, false);
    for (i, c) in buffer.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if buffer[i..].starts_with(HERMES_CLOSE) {
            return Some((i, None));
        }
    }
    None
}

/// Whether an answer could still be a bare call.
enum Bare {
    Possible,
    Ruled,
}

/// What follows an opening code fence (```` ``` ```` or ```` ```json ````, then a line
/// break) at the start of `text`; `text` itself when it has no fence; the empty string
/// while the fence is still being written; `None` when it opens some other block.
fn strip_open_fence(text: &str) -> Option<&str> {
    if !text.starts_with('`') {
        return Some(text);
    }
    if "```".starts_with(text) {
        return Some("");
    }
    let rest = text.strip_prefix("```")?;
    let Some(line_end) = rest.find('\n') else {
        // The fence's language tag, still being written.
        return "json".starts_with(rest.trim_end()).then_some("");
    };
    let tag = rest[..line_end].trim();
    (tag.is_empty() || tag.eq_ignore_ascii_case("json")).then(|| rest[line_end..].trim_start())
}

/// The complete Mistral call(s) at the start of `text` (what follows a `[TOOL_CALLS]`, or
/// the next call's own `[TOOL_CALLS]`), in either form, and the bytes they took. `None`
/// while the text is not yet a complete call, or does not parse as one.
fn next_mistral_calls(text: &str) -> Option<(Vec<ParsedCall>, usize)> {
    let mut body = text.trim_start();
    // Each call of the v11 form has its own marker.
    if let Some(rest) = body.strip_prefix(MISTRAL_CALLS) {
        body = rest.trim_start();
    } else if MISTRAL_CALLS.starts_with(body) {
        return None;
    }
    let start = text.len() - body.len();
    let (calls, used) = if body.starts_with('[') || body.starts_with('{') {
        // v3: a JSON array of calls (or one call object).
        let (value, used) = first_json_value(body)?;
        let calls = match value {
            Value::Array(items) => items.iter().map(parsed_from_value).collect::<Option<_>>()?,
            single @ Value::Object(_) => vec![parsed_from_value(&single)?],
            _ => return None,
        };
        (calls, used)
    } else {
        // v11 and later: name, maybe [CALL_ID]id, [ARGS], then the arguments object.
        let args_at = body.find(MISTRAL_ARGS)?;
        let (name, id) = match body[..args_at].split_once(MISTRAL_CALL_ID) {
            Some((name, id)) => (name, Some(id.trim().to_string())),
            None => (&body[..args_at], None),
        };
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return None;
        }
        let after = args_at + MISTRAL_ARGS.len();
        let (arguments, used) = first_json_value(&body[after..])?;
        if !arguments.is_object() {
            return None;
        }
        let call = ParsedCall {
            id,
            name: name.to_string(),
            arguments: arguments.to_string(),
        };
        (vec![call], after + used)
    };
    Some((calls, start + used))
}

/// The JSON value at the start of `text` (after whitespace) and the bytes it took; `None`
/// when it is incomplete or malformed.
fn first_json_value(text: &str) -> Option<(Value, usize)> {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let value = values.next()?.ok()?;
    Some((value, values.byte_offset()))
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

/// A Hermes call whose closing tag the token limit cut: the call object, then nothing but
/// the start of `</tool_call>`.
fn parse_call_before_partial_close(body: &str) -> Option<ParsedCall> {
    let (value, used) = first_json_value(body)?;
    let tail = body[used..].trim();
    (!tail.is_empty() && HERMES_CLOSE.starts_with(tail))
        .then(|| parsed_from_value(&value))
        .flatten()
}

/// `{"name": ..., "arguments": {...}}` (or `"parameters"`, or arguments as a JSON string).
fn parse_call(body: &str) -> Option<ParsedCall> {
    let value: Value = serde_json::from_str(body).ok()?;
    parsed_from_value(&value)
}

fn parsed_from_value(value: &Value) -> Option<ParsedCall> {
    let object = value.as_object()?;
    let name = object.get("name")?.as_str()?.to_string();
    let arguments = match object.get("arguments").or_else(|| object.get("parameters")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str(s).ok()?,
        Some(v) => v.clone(),
    };
    let id = object.get("id").and_then(Value::as_str).map(str::to_string);
    arguments.is_object().then(|| ParsedCall {
        id,
        name,
        arguments: arguments.to_string(),
    })
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
        deltas.extend(p.finish(false));
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

    /// Mistral's markers as control tokens 9, 10 and 11 (they decode to no text).
    fn mistral(name_args: bool) -> ToolFormat {
        ToolFormat::Mistral(Mistral {
            name_args,
            call_id: false,
            calls_token: Some(9),
            args_token: Some(10),
            call_id_token: Some(11),
        })
    }

    fn ids(format: ToolFormat, pieces: &[(u32, &str)]) -> Vec<String> {
        let mut p = ToolCallParser::new(format);
        let mut deltas: Vec<ToolDelta> = pieces.iter().flat_map(|(t, s)| p.push(*t, s)).collect();
        deltas.extend(p.finish(false));
        deltas
            .into_iter()
            .filter_map(|d| match d {
                ToolDelta::Call(c) => Some(c.id),
                ToolDelta::Content(_) => None,
            })
            .collect()
    }

    #[test]
    fn mistral_v3_calls_by_text_and_by_control_token() {
        for format in [mistral(false), mistral(true)] {
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
    }

    #[test]
    fn mistral_v11_calls_from_any_split() {
        // Whatever the template says, both forms are read (a model may answer in either).
        for format in [mistral(true), mistral(false)] {
            let (content, calls) = every_split(
                format,
                "Let me check. [TOOL_CALLS]get_weather[ARGS]{\"city\": \"Zürich\", \"q\": \"a [ARGS] {b}\"}[TOOL_CALLS]lookup_invoice[ARGS]{\"number\": 1042, \"tags\": [\"x\", {\"y\": []}]}",
            );
            assert_eq!(content, "Let me check. ");
            assert_eq!(
                calls,
                vec![
                    (
                        "get_weather".into(),
                        r#"{"city":"Zürich","q":"a [ARGS] {b}"}"#.into()
                    ),
                    (
                        "lookup_invoice".into(),
                        r#"{"number":1042,"tags":["x",{"y":[]}]}"#.into()
                    ),
                ]
            );
        }
    }

    #[test]
    fn mistral_v11_markers_as_control_tokens_stream_each_call_when_complete() {
        let format = mistral(true);
        let mut p = ToolCallParser::new(format);
        let mut out = Vec::new();
        for (t, s) in [
            (9, ""),
            (1, "get_weather"),
            (10, ""),
            (2, "{\"city\": "),
            (3, "\"Paris\"}"),
        ] {
            out.extend(p.push(t, s));
        }
        // The first call goes out as soon as its arguments close, before the output ends.
        assert!(
            matches!(&out[..], [ToolDelta::Call(c)] if c.name == "get_weather" && c.arguments == r#"{"city":"Paris"}"#),
            "{out:?}"
        );
        for (t, s) in [(9, ""), (4, "f"), (10, ""), (5, "{}")] {
            out.extend(p.push(t, s));
        }
        out.extend(p.finish(false));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(p.calls(), 2);
    }

    #[test]
    fn mistral_call_ids_are_nine_alphanumerics_or_the_models_own() {
        let text = "[TOOL_CALLS]a[ARGS]{}[TOOL_CALLS]b[CALL_ID]Xy7Zq01Ab[ARGS]{}[TOOL_CALLS]c[CALL_ID]too-long-id[ARGS]{}";
        let got = ids(mistral(true), &[(0, text)]);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|id| is_mistral_id(id)), "{got:?}");
        assert_eq!(got[1], "Xy7Zq01Ab");
        // v3: an id the model wrote in the call object.
        let got = ids(
            mistral(false),
            &[(
                0,
                "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}, \"id\": \"k9L8m7N6p\"}]",
            )],
        );
        assert_eq!(got, ["k9L8m7N6p"]);
        // Random ids differ; Hermes keeps OpenAI's shape.
        let a = ids(mistral(true), &[(0, "[TOOL_CALLS]a[ARGS]{}")]);
        let b = ids(mistral(true), &[(0, "[TOOL_CALLS]a[ARGS]{}")]);
        assert_ne!(a, b);
        let h = ids(
            ToolFormat::Hermes,
            &[(0, "<tool_call>{\"name\": \"a\"}</tool_call>")],
        );
        assert!(h[0].starts_with("call_") && h[0].len() > 9, "{h:?}");
    }

    #[test]
    fn a_malformed_mistral_call_is_shown_as_written() {
        for text in [
            "[TOOL_CALLS]get_weather[ARGS]{\"city\": ",
            "[TOOL_CALLS]get_weather{\"city\": 1}",
            "[TOOL_CALLS][{\"name\": 3}]",
        ] {
            let (content, calls) = every_split(mistral(true), text);
            assert_eq!((content.as_str(), calls.len()), (text, 0));
        }
    }

    #[test]
    fn client_call_ids_are_mapped_to_ids_mistral_templates_accept() {
        assert_eq!(mistral_id_for("a1B2c3D4e"), "a1B2c3D4e");
        let mapped = mistral_id_for("call_0123456789abcdef");
        assert!(is_mistral_id(&mapped), "{mapped}");
        assert_eq!(mapped, mistral_id_for("call_0123456789abcdef"));
        assert_ne!(mapped, mistral_id_for("call_0123456789abcdeg"));

        let mut assistant = Message::new("assistant", "");
        assistant.tool_calls = Some(json!([{"id": "call_0123456789abcdef", "type": "function",
            "function": {"name": "f", "arguments": {}}}]));
        let mut result = Message::new("tool", "ok");
        result.tool_call_id = Some("call_0123456789abcdef".into());
        let out = with_mistral_ids(&[Message::new("user", "hi"), assistant, result]);
        assert_eq!(out[0], Message::new("user", "hi"));
        assert_eq!(out[1].tool_calls.as_ref().unwrap()[0]["id"], json!(mapped));
        assert_eq!(out[2].tool_call_id.as_deref(), Some(mapped.as_str()));
    }

    #[test]
    fn the_template_decides_the_mistral_form() {
        let token = |piece: &str| (piece == "[ARGS]").then_some(7);
        assert_eq!(
            ToolFormat::for_template("{{ messages }}", token),
            ToolFormat::Hermes
        );
        let v3 = "{{- '[TOOL_CALLS][' }}{{ call|tojson }}";
        let v11 = "{{- '[TOOL_CALLS]' + name + '[ARGS]' + arguments }}";
        let v13 = "{{- '[TOOL_CALLS]' + name }}{{ '[CALL_ID]' + id }}{{ '[ARGS]' }}";
        let ToolFormat::Mistral(m) = ToolFormat::for_template(v3, token) else {
            panic!()
        };
        assert!(!m.name_args && !m.call_id);
        let ToolFormat::Mistral(m) = ToolFormat::for_template(v11, token) else {
            panic!()
        };
        assert!(m.name_args && !m.call_id && m.args_token == Some(7) && m.calls_token.is_none());
        let ToolFormat::Mistral(m) = ToolFormat::for_template(v13, token) else {
            panic!()
        };
        assert!(m.name_args && m.call_id);
    }

    /// llama.cpp's real Mistral templates, when the test data is at hand.
    #[test]
    fn real_mistral_templates_are_told_apart() {
        let Some(dir) = std::env::var_os("VERRE_LLAMA_TEMPLATES_DIR") else {
            eprintln!("skipped: set VERRE_LLAMA_TEMPLATES_DIR");
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        for (file, name_args, call_id) in [
            ("mistralai-Mistral-Nemo-Instruct-2407.jinja", false, false),
            ("unsloth-mistral-Devstral-Small-2507.jinja", true, false),
            (
                "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
                true,
                false,
            ),
            ("Mistral-Small-3.2-24B-Instruct-2506.jinja", true, true),
        ] {
            let source = std::fs::read_to_string(dir.join(file)).expect(file);
            let ToolFormat::Mistral(m) = ToolFormat::for_template(&source, |_| None) else {
                panic!("{file}: not a Mistral template")
            };
            assert_eq!((m.name_args, m.call_id), (name_args, call_id), "{file}");
        }
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
        let v3 = ToolFormat::Mistral(Mistral {
            calls_token: Some(5),
            ..Mistral::default()
        });
        let g = call_grammar(v3, &tools, &ToolChoice::Function("lookup".into()), true).unwrap();
        assert!(
            g.contains("<[5]>") && g.contains("\"lookup\"") && !g.contains("\"search\""),
            "{g}"
        );
        // v11 and later: one alternative per function, its name then [ARGS] then its
        // arguments' schema (and a 9-character [CALL_ID] where the template writes one).
        let v13 = ToolFormat::Mistral(Mistral {
            name_args: true,
            call_id: true,
            calls_token: Some(5),
            args_token: Some(6),
            call_id_token: None,
        });
        let g = call_grammar(v13, &tools, &ToolChoice::Required, true).unwrap();
        assert!(g.starts_with("start: call+\ncall: call0 | call1\n"), "{g}");
        assert!(
            g.contains("call0: <[5]> \"search\" \"[CALL_ID]\" /[a-zA-Z0-9]{9}/ <[6]> args0\n"),
            "{g}"
        );
        assert!(g.contains("args1: %json {\"type\":\"object\""), "{g}");
        assert!(g.contains("\"key_separator\":\": \""), "{g}");
    }
    /// A Pydantic model nesting another: `Person` with an `Addr`, referenced from the root.
    fn pydantic_tool(name: &str) -> Tool {
        Tool {
            name: name.into(),
            parameters: json!({
                "$defs": {"Addr": {"type": "object", "title": "Addr",
                    "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"]}},
                "type": "object", "title": "Person",
                "properties": {"name": {"type": "string"}, "home": {"$ref": "#/$defs/Addr"},
                    "old": {"anyOf": [{"$ref": "#/definitions/Old"}, {"type": "null"}]},
                    "friend": {"$ref": "#"}, "example": {"const": {"$ref": "#/kept"}}},
                "definitions": {"Old": {"type": "object", "properties": {"x": {}}}},
                "required": ["name", "home"],
            }),
            raw: json!({"type": "function", "function": {"name": name}}),
        }
    }

    /// The schema a Hermes grammar embeds.
    fn embedded_schema(grammar: &str) -> Value {
        let at = grammar.find("%json ").unwrap() + "%json ".len();
        first_json_value(&grammar[at..]).unwrap().0
    }

    #[test]
    fn references_of_each_tool_resolve_from_the_combined_root() {
        let plain = Tool {
            name: "plain".into(),
            parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
            raw: json!({}),
        };
        let tools = [plain, pydantic_tool("person"), pydantic_tool("other")];
        let g = call_grammar(ToolFormat::Hermes, &tools, &ToolChoice::Required, false).unwrap();
        let schema = embedded_schema(&g);
        // A tool without references stays inline (closed, as response_format's are).
        assert_eq!(
            schema.pointer("/anyOf/0/properties/arguments"),
            Some(
                &json!({"type": "object", "properties": {"q": {"type": "string"}}, "additionalProperties": false})
            )
        );
        for (i, name) in [(1, "verre_tool_1"), (2, "verre_tool_2")] {
            assert_eq!(
                schema.pointer(&format!("/anyOf/{i}/properties/arguments")),
                Some(&json!({"$ref": format!("#/$defs/{name}")}))
            );
            let lifted = schema.pointer(&format!("/$defs/{name}")).unwrap();
            let prop = |p: &str| lifted.pointer(&format!("/properties/{p}")).unwrap().clone();
            assert_eq!(
                prop("home"),
                json!({"$ref": format!("#/$defs/{name}/$defs/Addr")})
            );
            assert_eq!(
                prop("old")["anyOf"][0],
                json!({"$ref": format!("#/$defs/{name}/definitions/Old")})
            );
            assert_eq!(prop("friend"), json!({"$ref": format!("#/$defs/{name}")}));
            // Instances are data, not references.
            assert_eq!(prop("example"), json!({"const": {"$ref": "#/kept"}}));
            // Every rewritten reference points at something that exists.
            for r in ["/$defs/Addr", "/definitions/Old", ""] {
                assert!(
                    schema.pointer(&format!("/$defs/{name}{r}")).is_some(),
                    "{r}"
                );
            }
            assert_eq!(lifted["additionalProperties"], json!(false));
            assert_eq!(
                lifted["$defs"]["Addr"]["additionalProperties"],
                json!(false)
            );
        }
        // Mistral v11 grammars embed each tool's schema as its own root: left as written.
        let v11 = ToolFormat::Mistral(Mistral {
            name_args: true,
            ..Mistral::default()
        });
        let g = call_grammar(v11, &tools[1..2], &ToolChoice::Required, false).unwrap();
        assert!(g.contains(r##""$ref":"#/$defs/Addr""##), "{g}");
    }

    #[test]
    fn one_call_unless_parallel() {
        let tools = [pydantic_tool("a"), pydantic_tool("b")];
        for choice in [ToolChoice::Required, ToolChoice::Function("a".into())] {
            let g = call_grammar(ToolFormat::Hermes, &tools, &choice, false).unwrap();
            assert!(g.starts_with("start: call\n"), "{g}");
        }
        let g = call_grammar(ToolFormat::Hermes, &tools, &ToolChoice::Required, true).unwrap();
        assert!(g.starts_with("start: call (\"\\n\" call)*\n"), "{g}");
    }

    #[test]
    fn a_call_cut_by_the_token_limit_is_not_content() {
        let cut = |text: &str| {
            let mut p = ToolCallParser::new(ToolFormat::Hermes);
            let mut out = p.push(0, text);
            out.extend(p.finish(true));
            out
        };
        // Cut inside the arguments: no call, and no call text as content.
        let out = cut("Sure. <tool_call>\n{\"name\": \"f\", \"arguments\": {\"city\": \"Par");
        assert_eq!(out, vec![ToolDelta::Content("Sure. ".into())]);
        // Cut inside the closing tag: the call is complete.
        for tail in ["\n</tool", "</", "\n<"] {
            let out = cut(&format!(
                "<tool_call>\n{{\"name\": \"f\", \"arguments\": {{}}}}{tail}"
            ));
            assert!(
                matches!(&out[..], [ToolDelta::Call(c)] if c.name == "f"),
                "{tail:?}: {out:?}"
            );
        }
        // Not cut: a malformed call is still shown as written.
        let mut p = ToolCallParser::new(ToolFormat::Hermes);
        let mut out = p.push(0, "<tool_call>{\"name\": ");
        out.extend(p.finish(false));
        assert_eq!(
            out,
            vec![ToolDelta::Content("<tool_call>{\"name\": ".into())]
        );
    }

    /// A grammar lets a string argument hold the closing tag (a 135M model sampled
    /// `"street": "…London}}}</tool_call><tool_call>In this command…"` in about 1 of 75
    /// forced calls): the call ends at the closing tag after its JSON, token by token and
    /// whole.
    #[test]
    fn a_closing_tag_inside_a_string_argument_does_not_end_the_call() {
        let street = "12 Lane}}}</tool_call><tool_call>In this \\\"text\\\" </tool_call>";
        let text = format!(
            "<tool_call>{{\"name\": \"save\", \"arguments\": {{\"street\": \"{street}\", \"city\": \"\"}}}}</tool_call>"
        );
        let want = serde_json::json!({"street": "12 Lane}}}</tool_call><tool_call>In this \"text\" </tool_call>", "city": ""});
        for step in [text.len(), 1, 3] {
            let mut p = ToolCallParser::new(ToolFormat::Hermes);
            let mut out = Vec::new();
            let mut at = 0;
            while at < text.len() {
                let end = (at + step).min(text.len());
                out.extend(p.push(0, &text[at..end]));
                at = end;
            }
            out.extend(p.finish(false));
            match &out[..] {
                [ToolDelta::Call(c)] => {
                    assert_eq!(c.name, "save");
                    let args: Value = serde_json::from_str(&c.arguments).unwrap();
                    assert_eq!(args, want, "step {step}");
                }
                other => panic!("step {step}: {other:?}"),
            }
        }
        // A malformed call still ends at the first closing tag outside its strings.
        let mut p = ToolCallParser::new(ToolFormat::Hermes);
        let out = p.push(0, "<tool_call>{\"name\": }</tool_call>after");
        assert_eq!(
            out,
            vec![ToolDelta::Content(
                "<tool_call>{\"name\": }</tool_call>".into()
            )]
        );
    }

    #[test]
    fn repeated_constrained_calls_go_out_once() {
        let call = |args: &str| {
            format!("<tool_call>\n{{\"name\": \"f\", \"arguments\": {args}}}\n</tool_call>\n")
        };
        let text = [call("{\"x\": 1}"), call("{\"x\": 1}"), call("{\"x\": 2}")].concat();
        let names = |mut p: ToolCallParser| {
            let mut out = p.push(0, &text);
            out.extend(p.finish(false));
            assert!(
                out.iter().all(|d| matches!(d, ToolDelta::Call(_))),
                "{out:?}"
            );
            (out.len(), p.calls())
        };
        assert_eq!(
            names(ToolCallParser::new(ToolFormat::Hermes).distinct()),
            (2, 2)
        );
        assert_eq!(names(ToolCallParser::new(ToolFormat::Hermes)), (3, 3));
    }

    /// `every_split` for a parser that reads bare calls to the declared `tools`.
    fn bare_split(tools: &[&str], text: &str) -> (String, Vec<(String, String)>) {
        let run = |pieces: &[&str]| {
            let names = tools.iter().map(|t| t.to_string()).collect();
            let mut p = ToolCallParser::new(ToolFormat::Hermes).bare_calls(names);
            let mut deltas = Vec::new();
            for piece in pieces {
                deltas.extend(p.push(0, piece));
            }
            deltas.extend(p.finish(false));
            let mut text = String::new();
            let mut calls = Vec::new();
            for d in deltas {
                match d {
                    ToolDelta::Content(c) => text.push_str(&c),
                    ToolDelta::Call(c) => calls.push((c.name, c.arguments)),
                }
            }
            (text, calls)
        };
        let whole = run(&[text]);
        for i in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            assert_eq!(run(&[&text[..i], &text[i..]]), whole, "split at {i}");
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(&pieces), whole, "char by char");
        whole
    }

    #[test]
    fn an_answer_that_is_only_a_call_object_is_that_call() {
        let weather = ("get_weather".to_string(), r#"{"city":"Paris"}"#.to_string());
        // Qwen2.5-Coder 0.5B under `auto`: the object, bare.
        let bare = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
        assert_eq!(
            bare_split(&["get_weather"], bare),
            (String::new(), vec![weather.clone()])
        );
        // Qwen2.5-Coder 1.5B: the same in a fenced block, with white space around.
        let fenced = format!("\n```json\n{bare}\n```\n");
        assert_eq!(
            bare_split(&["get_weather"], &fenced),
            (String::new(), vec![weather.clone()])
        );
        let plain_fence = format!("```\n{bare}\n```");
        assert_eq!(
            bare_split(&["get_weather"], &plain_fence).1,
            vec![weather.clone()]
        );
        // A list of calls.
        let list = format!("[{bare}, {{\"name\": \"get_time\", \"parameters\": {{}}}}]");
        let (content, calls) = bare_split(&["get_weather", "get_time"], &list);
        assert_eq!((content.as_str(), calls.len()), ("", 2));
    }

    #[test]
    fn answers_that_only_look_like_calls_stay_content() {
        let tools = ["get_weather"];
        for text in [
            // Not a declared tool.
            "{\"name\": \"rm_rf\", \"arguments\": {}}",
            // Arguments that are not an object.
            "{\"name\": \"get_weather\", \"arguments\": [1]}",
            // Text after the object.
            "{\"name\": \"get_weather\", \"arguments\": {}} and then some",
            // Text before it.
            "Sure: {\"name\": \"get_weather\", \"arguments\": {}}",
            // Another language's block, and text after the fence.
            "```python\nprint(1)\n```",
            "```json\n{\"name\": \"get_weather\", \"arguments\": {}}\n```\nDone.",
            // JSON that is not a call, and a call cut short.
            "{\"city\": \"Paris\"}",
            "{\"name\": \"get_weather\", \"arguments\": {",
            "[]",
            "Paris is sunny.",
        ] {
            assert_eq!(
                bare_split(&tools, text),
                (text.to_string(), vec![]),
                "{text:?}"
            );
        }
        // Tagged calls are read as before.
        let tagged = "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>";
        assert_eq!(bare_split(&tools, tagged).1.len(), 1);
    }

    #[test]
    fn an_answer_that_cannot_be_a_call_streams_at_once() {
        let mut p = ToolCallParser::new(ToolFormat::Hermes).bare_calls(vec!["f".into()]);
        assert_eq!(p.push(0, "Hello"), vec![ToolDelta::Content("Hello".into())]);
        let mut p = ToolCallParser::new(ToolFormat::Hermes).bare_calls(vec!["f".into()]);
        assert!(p.push(0, "{\"name\": \"f\"").is_empty());
        assert_eq!(
            p.push(0, ", \"x\": 1} no"),
            vec![ToolDelta::Content("{\"name\": \"f\", \"x\": 1} no".into())]
        );
    }

    #[test]
    fn a_long_held_answer_is_parsed_a_bounded_number_of_times() {
        // A bare call whose argument is 100 KB, one byte per token: parsing the held text
        // at every token would be quadratic.
        let long = "x".repeat(100_000);
        let text = format!("{{\"name\": \"f\", \"arguments\": {{\"text\": \"{long}\"}}}}");
        let mut p = ToolCallParser::new(ToolFormat::Hermes).bare_calls(vec!["f".into()]);
        let mut deltas = Vec::new();
        for i in 0..text.len() {
            deltas.extend(p.push(0, &text[i..i + 1]));
        }
        deltas.extend(p.finish(false));
        assert!(
            matches!(&deltas[..], [ToolDelta::Call(c)] if c.name == "f" && c.arguments.len() > 100_000),
            "{:?}",
            deltas.len()
        );
        assert!(
            p.bare_parses.get() <= BARE_PREFIX + 4,
            "{}",
            p.bare_parses.get()
        );
    }
}
