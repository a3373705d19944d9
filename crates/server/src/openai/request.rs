//! Validation at the edge: a request body in, a typed request the rest of the server can
//! trust out — or an OpenAI-shaped 400 that names the field.
//!
//! Unknown fields are ignored, as OpenAI ignores them. Fields that OpenAI knows and verre
//! does not serve yet are refused by name (unless they hold their neutral value, such as
//! `"tool_choice": "none"`), so that a client never gets an answer that silently skipped
//! what it asked for.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use verre_engine::SamplingParams;

use super::error::ApiError;
use super::reasoning::{RESERVED_TEMPLATE_VARIABLES, ReasoningEffort};

/// Most stop strings per request.
const MAX_STOP: usize = 16;
/// Longest stop string, in bytes: matching holds back up to this much text per step.
const MAX_STOP_BYTES: usize = 1024;
/// Most inputs in one embeddings request (OpenAI's limit).
const MAX_EMBEDDING_INPUTS: usize = 2048;
/// Most alternatives per token in logprobs (OpenAI's limit for chat).
const MAX_TOP_LOGPROBS: i64 = 20;

/// Chat fields that verre does not serve yet.
const CHAT_UNSUPPORTED: &[&str] = &[
    "functions",
    "function_call",
    "logit_bias",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "verbosity",
];

/// Completion fields that verre does not serve yet.
const COMPLETION_UNSUPPORTED: &[&str] = &["suffix", "logit_bias"];
/// Most tools in one request (OpenAI's limit).
const MAX_TOOLS: usize = 128;

/// What every generation request carries, chat or completion.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub n: usize,
    /// `None`: as many as the context leaves (chat) or the API's default (completions).
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// verre's extension `"speculative": false`: decode this request token by token (no
    /// speculative decoding, no grammar fast-forward). `None`: the server's setting.
    pub speculative: Option<bool>,
    /// `Some` when the answer is streamed as server-sent events.
    pub stream: Option<StreamOptions>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamOptions {
    /// Send a last chunk with the usage (and `"usage": null` on every other chunk).
    pub include_usage: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<verre_engine::Message>,
    pub params: GenerationParams,
    /// Report each token's log-probability (`logprobs: true`).
    pub logprobs: bool,
    pub response_format: ResponseFormat,
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    /// More than one call per answer may be made (`parallel_tool_calls: true`; false by
    /// default: a required or named call is exactly one call).
    pub parallel_tool_calls: bool,
    /// `reasoning_effort`, for the template's thinking switch (`reasoning::template_kwargs`).
    pub reasoning_effort: Option<ReasoningEffort>,
    /// `chat_template_kwargs` (vLLM's extension): more variables for the chat template.
    pub template_kwargs: Map<String, Value>,
}

/// What shape the answer must take (`response_format`).
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object.
    JsonObject,
    /// An instance of a JSON Schema (`strict` or not, verre enforces it).
    JsonSchema {
        name: String,
        schema: Value,
    },
    /// verre's extension: `{"type": "grammar", "syntax": "regex" | "lark", "grammar": "..."}`.
    Regex(String),
    Lark(String),
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    /// JSON Schema of the arguments (an object schema; `{"type": "object"}` when absent).
    pub parameters: Value,
    /// The tool as the client sent it, for the chat template.
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// No calls: the tools are not shown to the model.
    None,
    /// The model decides; its calls are parsed from its output.
    Auto,
    /// At least one call, arguments constrained by the schemas.
    Required,
    /// Exactly this function, arguments constrained by its schema.
    Function(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub model: String,
    /// Each prompt is completed `n` times; choice `p * n + i` is prompt `p`'s `i`-th.
    pub prompts: Vec<Prompt>,
    pub params: GenerationParams,
    pub echo: bool,
    /// Log-probabilities with this many alternatives per token (`logprobs: N`).
    pub logprobs: Option<usize>,
    pub response_format: ResponseFormat,
}

/// A completion's prompt or an embedding's input: text, or ids in the model's vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRequest {
    pub model: String,
    /// One vector per input, in order; none is empty.
    pub inputs: Vec<Prompt>,
    pub encoding: EmbeddingEncoding,
    /// Checked against the model's by the handler: verre does not shorten vectors.
    pub dimensions: Option<usize>,
    /// Inputs longer than the model takes are cut to its limit (`truncate: true`, as TEI
    /// and vLLM accept it) rather than refused.
    pub truncate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingEncoding {
    /// A JSON array of numbers.
    Float,
    /// The little-endian `f32` bytes in standard base64, as the official SDKs decode them.
    Base64,
}

#[derive(Deserialize)]
struct RawChat {
    model: String,
    messages: Vec<RawMessage>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    reasoning_effort: Option<Value>,
    chat_template_kwargs: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: Option<Value>,
    tool_calls: Option<Value>,
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct RawCompletion {
    model: String,
    prompt: Value,
    max_tokens: Option<i64>,
    echo: Option<bool>,
    logprobs: Option<i64>,
    best_of: Option<i64>,
}

/// The fields chat and completions share.
#[derive(Deserialize)]
struct RawSampling {
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<i64>,
    stop: Option<Value>,
    seed: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    stream: Option<bool>,
    stream_options: Option<RawStreamOptions>,
    /// Accepted and unused: verre keeps no per-user record of requests.
    #[allow(dead_code)]
    user: Option<String>,
    // Extensions that vLLM also accepts.
    top_k: Option<i64>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    ignore_eos: Option<bool>,
    // verre's own: speculative decoding for this request (the output is the same).
    speculative: Option<bool>,
}

#[derive(Deserialize)]
struct RawEmbedding {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<i64>,
    truncate: Option<bool>,
    /// Accepted and unused, as for generation.
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawStreamOptions {
    include_usage: Option<bool>,
}

impl ChatRequest {
    /// Parse a body (the HTTP path reads it once, with `openai::body`, and calls
    /// [`Self::from_object`]).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        Self::from_object(&parse_object(body)?)
    }

    pub fn from_object(object: &Map<String, Value>) -> Result<Self, ApiError> {
        let object = object.clone();
        refuse_unsupported(&object, CHAT_UNSUPPORTED)?;
        let raw: RawChat = typed(&object)?;
        let max_tokens = match (raw.max_completion_tokens, raw.max_tokens) {
            (Some(n), _) => Some(count("max_completion_tokens", n, 1)?),
            (None, Some(n)) => Some(count("max_tokens", n, 1)?),
            (None, None) => None,
        };
        let mut params = generation_params(&object, max_tokens)?;
        let logprobs = raw.logprobs.unwrap_or(false);
        if let Some(top) = raw.top_logprobs {
            if !logprobs {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs requires logprobs to be true",
                ));
            }
            params.sampling.top_logprobs = top_logprobs("top_logprobs", top)?;
        }
        if raw.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        let messages = raw
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<_, _>>()?;
        let tools = raw.tools.unwrap_or_default();
        if tools.len() > MAX_TOOLS {
            return Err(ApiError::invalid(
                "tools",
                format!("at most {MAX_TOOLS} tools are allowed"),
            ));
        }
        let tools = tools
            .into_iter()
            .enumerate()
            .map(|(i, t)| tool(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        let tool_choice = tool_choice(raw.tool_choice, &tools)?;
        let reasoning_effort = match raw.reasoning_effort {
            None | Some(Value::Null) => None,
            Some(v) => Some(ReasoningEffort::parse(&v)?),
        };
        let template_kwargs = raw.chat_template_kwargs.unwrap_or_default();
        if let Some(key) = RESERVED_TEMPLATE_VARIABLES
            .iter()
            .find(|k| template_kwargs.contains_key(**k))
        {
            return Err(ApiError::invalid(
                &format!("chat_template_kwargs.{key}"),
                format!("`{key}` is set by the server and cannot be passed to the template"),
            ));
        }
        Ok(Self {
            model: raw.model,
            messages,
            params,
            logprobs,
            response_format: response_format(object.get("response_format"))?,
            tools,
            tool_choice,
            parallel_tool_calls: raw.parallel_tool_calls.unwrap_or(false),
            reasoning_effort,
            template_kwargs,
        })
    }
}

impl CompletionRequest {
    /// Parse a body (the HTTP path reads it once, with `openai::body`, and calls
    /// [`Self::from_object`]).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        Self::from_object(&parse_object(body)?)
    }

    pub fn from_object(object: &Map<String, Value>) -> Result<Self, ApiError> {
        let object = object.clone();
        refuse_unsupported(&object, COMPLETION_UNSUPPORTED)?;
        let raw: RawCompletion = typed(&object)?;
        let max_tokens = raw
            .max_tokens
            .map(|n| count("max_tokens", n, 0))
            .transpose()?;
        let mut params = generation_params(&object, max_tokens)?;
        if let Some(best_of) = raw.best_of
            && best_of != 1
            && best_of != params.n as i64
        {
            return Err(ApiError::unsupported("best_of"));
        }
        let logprobs = raw
            .logprobs
            .map(|n| top_logprobs("logprobs", n))
            .transpose()?;
        params.sampling.top_logprobs = logprobs.unwrap_or(0);
        Ok(Self {
            model: raw.model,
            prompts: prompts(raw.prompt, "prompt")?,
            params,
            echo: raw.echo.unwrap_or(false),
            logprobs,
            response_format: response_format(object.get("response_format"))?,
        })
    }
}

impl EmbeddingRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        Self::from_object(&parse_object(body)?)
    }

    pub fn from_object(object: &Map<String, Value>) -> Result<Self, ApiError> {
        let raw: RawEmbedding = typed(object)?;
        let inputs = prompts(raw.input, "input")?;
        if inputs.len() > MAX_EMBEDDING_INPUTS {
            return Err(ApiError::invalid(
                "input",
                format!(
                    "input holds {} items; at most {MAX_EMBEDDING_INPUTS} are allowed",
                    inputs.len()
                ),
            ));
        }
        if let Some(i) = inputs
            .iter()
            .position(|p| matches!(p, Prompt::Text(t) if t.is_empty()))
        {
            return Err(ApiError::invalid(
                "input",
                format!("input[{i}] is an empty string: every input must hold text"),
            ));
        }
        let encoding = match raw.encoding_format.as_deref() {
            None | Some("float") => EmbeddingEncoding::Float,
            Some("base64") => EmbeddingEncoding::Base64,
            Some(other) => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("encoding_format must be `float` or `base64`, not `{other}`"),
                ));
            }
        };
        Ok(Self {
            model: raw.model,
            inputs,
            encoding,
            dimensions: raw
                .dimensions
                .map(|d| count("dimensions", d, 1))
                .transpose()?,
            truncate: raw.truncate.unwrap_or(false),
        })
    }
}

/// The body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::invalid_json(
            "the request body must be a JSON object",
            None,
        )),
        Err(e) => Err(ApiError::invalid_json(
            format!("the request body is not valid JSON: {e}"),
            None,
        )),
    }
}

/// Deserialize the fields `T` knows; a wrong type names the field.
fn typed<T: DeserializeOwned>(object: &Map<String, Value>) -> Result<T, ApiError> {
    let value = Value::Object(object.clone());
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        let message = match &param {
            Some(p) => format!("invalid value for `{p}`: {}", e.inner()),
            None => e.inner().to_string(),
        };
        ApiError::invalid_json(message, param)
    })
}

fn refuse_unsupported(object: &Map<String, Value>, fields: &[&str]) -> Result<(), ApiError> {
    for &field in fields {
        if let Some(value) = object.get(field)
            && !is_neutral(field, value)
        {
            return Err(ApiError::unsupported(field));
        }
    }
    Ok(())
}

/// A value that asks for nothing: absent in effect (`null`, `[]`, `{}`, `""`,
/// `"tool_choice": "none"`, `"modalities": ["text"]`, `"response_format": {"type": "text"}`).
fn is_neutral(field: &str, value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => {
            s.is_empty() || (s == "none" && matches!(field, "tool_choice" | "function_call"))
        }
        Value::Array(a) => {
            a.is_empty() || (field == "modalities" && a.as_slice() == [Value::from("text")])
        }
        Value::Object(o) => {
            o.is_empty()
                || (field == "response_format"
                    && o.len() == 1
                    && o.get("type") == Some(&"text".into()))
        }
        Value::Bool(_) | Value::Number(_) => false,
    }
}

fn generation_params(
    object: &Map<String, Value>,
    max_tokens: Option<usize>,
) -> Result<GenerationParams, ApiError> {
    let raw: RawSampling = typed(object)?;
    let temperature = raw.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            "temperature must be between 0 and 2",
        ));
    }
    let top_p = raw.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            "top_p must be greater than 0 and at most 1",
        ));
    }
    let penalty = |name: &str, v: Option<f32>| {
        let v = v.unwrap_or(0.0);
        if (-2.0..=2.0).contains(&v) {
            Ok(v)
        } else {
            Err(ApiError::invalid(
                name,
                format!("{name} must be between -2 and 2"),
            ))
        }
    };
    let min_p = raw.min_p.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::invalid("min_p", "min_p must be between 0 and 1"));
    }
    let repetition_penalty = raw.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
        return Err(ApiError::invalid(
            "repetition_penalty",
            "repetition_penalty must be greater than 0",
        ));
    }
    let top_k = match raw.top_k {
        None | Some(-1) => 0,
        Some(k) => count("top_k", k, 0)?,
    };
    let sampling = SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        presence_penalty: penalty("presence_penalty", raw.presence_penalty)?,
        frequency_penalty: penalty("frequency_penalty", raw.frequency_penalty)?,
        // A negative seed is as good a seed as any: keep its bits.
        seed: raw.seed.map(|s| s as u64),
        top_logprobs: 0,
    };
    let stream = match (raw.stream.unwrap_or(false), raw.stream_options) {
        (true, options) => Some(StreamOptions {
            include_usage: options.and_then(|o| o.include_usage).unwrap_or(false),
        }),
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options is only allowed when stream is true",
            ));
        }
        (false, None) => None,
    };
    Ok(GenerationParams {
        n: raw.n.map(|n| count("n", n, 1)).transpose()?.unwrap_or(1),
        max_tokens,
        sampling,
        stop: stop_strings(raw.stop)?,
        ignore_eos: raw.ignore_eos.unwrap_or(false),
        speculative: raw.speculative,
        stream,
    })
}

/// A non-negative count of at least `min`.
fn count(name: &str, value: i64, min: i64) -> Result<usize, ApiError> {
    if value < min {
        return Err(ApiError::invalid(
            name,
            format!("{name} must be at least {min}"),
        ));
    }
    usize::try_from(value).map_err(|_| ApiError::invalid(name, format!("{name} is too large")))
}

fn top_logprobs(name: &str, value: i64) -> Result<usize, ApiError> {
    if !(0..=MAX_TOP_LOGPROBS).contains(&value) {
        return Err(ApiError::invalid(
            name,
            format!("{name} must be between 0 and {MAX_TOP_LOGPROBS}"),
        ));
    }
    Ok(value as usize)
}

fn stop_strings(stop: Option<Value>) -> Result<Vec<String>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "stop",
            format!("stop must be a string or an array of at most {MAX_STOP} strings"),
        )
    };
    let stops = match stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if items.len() <= MAX_STOP => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(invalid()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid()),
    };
    if stops.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            "stop",
            format!("each stop string must be at most {MAX_STOP_BYTES} bytes"),
        ));
    }
    Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
}

/// One chat message: a role the chat template knows and text content (a string, or text
/// parts joined by newlines).
fn message(i: usize, m: RawMessage) -> Result<verre_engine::Message, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        "function" => return Err(ApiError::unsupported(&format!("messages[{i}].role"))),
        other => {
            return Err(ApiError::invalid(
                &format!("messages[{i}].role"),
                format!("unknown role `{other}`: use system, developer, user, assistant or tool"),
            ));
        }
    };
    let tool_calls = match m.tool_calls {
        Some(v) if !is_neutral("tool_calls", &v) => {
            if role != "assistant" {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].tool_calls"),
                    "only assistant messages carry tool_calls",
                ));
            }
            Some(assistant_tool_calls(i, v)?)
        }
        _ => None,
    };
    let tool_call_id = match (role, m.tool_call_id) {
        ("tool", Some(id)) => Some(id),
        ("tool", None) => {
            return Err(ApiError::invalid(
                &format!("messages[{i}].tool_call_id"),
                "a tool message needs the `tool_call_id` of the call it answers",
            ));
        }
        _ => None,
    };
    let content = match m.content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let param = format!("messages[{i}].content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text").and_then(Value::as_str) {
                        Some(text) => texts.push(text),
                        None => {
                            return Err(ApiError::invalid(
                                &format!("{param}.text"),
                                "a text part needs a `text` string",
                            ));
                        }
                    },
                    Some(other) => {
                        let mut e = ApiError::unsupported(&format!("{param}.type"));
                        e.message = format!(
                            "content parts of type `{other}` are not supported by this server yet (text only)"
                        );
                        return Err(e);
                    }
                    None => {
                        return Err(ApiError::invalid(
                            &format!("{param}.type"),
                            "a content part needs a `type`",
                        ));
                    }
                }
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("messages[{i}].content"),
                "content must be a string or an array of content parts",
            ));
        }
    };
    let mut message = verre_engine::Message::new(role, &content);
    message.tool_calls = tool_calls;
    message.tool_call_id = tool_call_id;
    Ok(message)
}

/// An assistant's earlier calls: checked, with `arguments` parsed from the JSON string
/// OpenAI sends into the object chat templates expect.
fn assistant_tool_calls(i: usize, value: Value) -> Result<Value, ApiError> {
    let param = format!("messages[{i}].tool_calls");
    let Value::Array(calls) = value else {
        return Err(ApiError::invalid(&param, "tool_calls must be an array"));
    };
    let mut out = Vec::with_capacity(calls.len());
    for (j, call) in calls.into_iter().enumerate() {
        let param = format!("{param}[{j}]");
        let function = call.get("function").and_then(Value::as_object);
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::invalid(
                    &format!("{param}.function.name"),
                    "a tool call needs a function name",
                )
            })?;
        let arguments = match function.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
                ApiError::invalid(
                    &format!("{param}.function.arguments"),
                    format!("arguments must be a JSON string of an object: {e}"),
                )
            })?,
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    &format!("{param}.function.arguments"),
                    "arguments must be a JSON string",
                ));
            }
        };
        let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
        out.push(serde_json::json!({
            "id": id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }));
    }
    Ok(Value::Array(out))
}

/// One entry of `tools`.
fn tool(i: usize, value: Value) -> Result<Tool, ApiError> {
    let param = format!("tools[{i}]");
    if value.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ApiError::invalid(
            &format!("{param}.type"),
            "only tools of type `function` are supported",
        ));
    }
    let function = value
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ApiError::invalid(
                &format!("{param}.function"),
                "a tool needs a `function` object",
            )
        })?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .ok_or_else(|| {
            ApiError::invalid(
                &format!("{param}.function.name"),
                "a function name must be 1-64 characters of a-z, A-Z, 0-9, _ and -",
            )
        })?;
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("{param}.function.parameters"),
                "parameters must be a JSON Schema object",
            ));
        }
    };
    Ok(Tool {
        name: name.to_string(),
        parameters,
        raw: value,
    })
}

fn tool_choice(value: Option<Value>, tools: &[Tool]) -> Result<ToolChoice, ApiError> {
    let choice = match value {
        None | Some(Value::Null) if tools.is_empty() => ToolChoice::None,
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!(
                        "tool_choice must be none, auto, required or a function, not `{other}`"
                    ),
                ));
            }
        },
        Some(v @ Value::Object(_)) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice",
                        "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("tool_choice names `{name}`, which is not in tools"),
                ));
            }
            ToolChoice::Function(name.to_string())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice must be a string or an object",
            ));
        }
    };
    if tools.is_empty() && matches!(choice, ToolChoice::Auto | ToolChoice::Required) {
        return Err(ApiError::invalid(
            "tool_choice",
            "tool_choice needs tools to choose from",
        ));
    }
    Ok(choice)
}

fn response_format(value: Option<&Value>) -> Result<ResponseFormat, ApiError> {
    let object = match value {
        None | Some(Value::Null) => return Ok(ResponseFormat::Text),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(ApiError::invalid(
                "response_format",
                "response_format must be an object",
            ));
        }
    };
    let string = |key: &str| {
        object
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::invalid(
                    &format!("response_format.{key}"),
                    format!("`{key}` must be a string"),
                )
            })
    };
    match object.get("type").and_then(Value::as_str) {
        None | Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let spec = object
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "response_format.json_schema",
                        "json_schema must be an object with `name` and `schema`",
                    )
                })?;
            let schema = match spec.get("schema") {
                Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
                None => serde_json::json!({}),
                Some(_) => {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.schema",
                        "schema must be a JSON Schema object",
                    ));
                }
            };
            let name = spec
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("response")
                .to_string();
            Ok(ResponseFormat::JsonSchema { name, schema })
        }
        Some("grammar") => {
            let grammar = string("grammar")?;
            match object.get("syntax").and_then(Value::as_str) {
                Some("regex") => Ok(ResponseFormat::Regex(grammar)),
                None | Some("lark") => Ok(ResponseFormat::Lark(grammar)),
                Some(other) => Err(ApiError::invalid(
                    "response_format.syntax",
                    format!("syntax must be `lark` or `regex`, not `{other}`"),
                )),
            }
        }
        Some(other) => Err(ApiError::invalid(
            "response_format.type",
            format!(
                "response_format.type must be text, json_object, json_schema or grammar, not `{other}`"
            ),
        )),
    }
}

/// A completion's `prompt` or an embedding's `input` (named by `param`): a string, an array
/// of strings, an array of token ids, or an array of arrays of token ids.
fn prompts(prompt: Value, param: &str) -> Result<Vec<Prompt>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            param,
            format!(
                "{param} must be a string, an array of strings, an array of token ids or an array of arrays of token ids"
            ),
        )
    };
    let tokens = |items: &[Value]| -> Option<Vec<u32>> {
        items
            .iter()
            .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect()
    };
    let prompts = match prompt {
        Value::String(s) => vec![Prompt::Text(s)],
        Value::Array(items) if items.is_empty() => return Err(invalid()),
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(Prompt::Text(s)),
                    _ => Err(invalid()),
                })
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![Prompt::Tokens(tokens(&items).ok_or_else(invalid)?)],
            Value::Array(_) => items
                .iter()
                .map(|v| match v {
                    Value::Array(ids) if !ids.is_empty() => {
                        tokens(ids).map(Prompt::Tokens).ok_or_else(invalid)
                    }
                    _ => Err(invalid()),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(invalid()),
        },
        _ => return Err(invalid()),
    };
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse(body.as_bytes())
    }

    const HI: &str = r#""model": "m", "messages": [{"role": "user", "content": "hi"}]"#;

    #[test]
    fn a_minimal_chat_gets_openai_defaults() {
        let r = chat(&format!("{{{HI}}}")).unwrap();
        assert_eq!(r.messages, vec![verre_engine::Message::new("user", "hi")]);
        assert_eq!(r.params.n, 1);
        assert_eq!(r.params.sampling.temperature, 1.0);
        assert_eq!(r.params.max_tokens, None);
        assert!(r.params.stream.is_none() && !r.logprobs);
    }

    #[test]
    fn unknown_fields_are_ignored_and_unsupported_ones_are_named() {
        assert!(chat(&format!(r#"{{{HI}, "frobnicate": 3, "store": false}}"#)).is_ok());
        let e = chat(&format!(r#"{{{HI}, "functions": [{{"name": "f"}}]}}"#)).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (400, Some("functions"))
        );
        assert!(e.message.contains("`functions`"), "{}", e.message);
        // Neutral values ask for nothing and pass.
        let ok = format!(
            r#"{{{HI}, "tool_choice": "none", "response_format": {{"type": "text"}}, "logit_bias": {{}}, "tools": null}}"#
        );
        assert!(chat(&ok).is_ok());
    }

    #[test]
    fn bad_json_and_bad_types_name_what_is_wrong() {
        let e = chat("{not json").unwrap_err();
        assert!(e.message.contains("not valid JSON") && e.param.is_none());
        let e = chat(&format!(r#"{{{HI}, "temperature": "hot"}}"#)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = chat(&format!(r#"{{{HI}, "temperature": 3}}"#)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = chat(r#"{"messages": []}"#).unwrap_err();
        assert!(e.message.contains("model"), "{}", e.message);
        let e = chat(&format!(r#"{{{HI}, "max_tokens": 0}}"#)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = chat(&format!(r#"{{{HI}, "top_logprobs": 2}}"#)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
    }

    #[test]
    fn content_parts_text_only_and_roles() {
        let r = chat(
            r#"{"model": "m", "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.messages[0],
            verre_engine::Message::new("system", "be brief")
        );
        assert_eq!(r.messages[1].content, "a\nb");
        assert_eq!(r.messages[2].content, "");
        let e = chat(
            r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        let e =
            chat(r#"{"model": "m", "messages": [{"role": "tool", "content": "x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].tool_call_id"));
        let e = chat(r#"{"model": "m", "messages": [{"role": "function", "content": "x"}]}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn sampling_stop_stream_and_logprobs() {
        let r = chat(&format!(
            r#"{{{HI}, "n": 2, "stop": "\n", "seed": -1, "max_completion_tokens": 5, "max_tokens": 9,
                "logprobs": true, "top_logprobs": 3, "stream": true, "stream_options": {{"include_usage": true}},
                "presence_penalty": 0.5, "frequency_penalty": -0.5, "temperature": 0}}"#
        ))
        .unwrap();
        assert_eq!(r.params.n, 2);
        assert_eq!(r.params.stop, vec!["\n".to_string()]);
        assert_eq!(r.params.sampling.seed, Some(u64::MAX));
        assert_eq!(r.params.max_tokens, Some(5));
        assert_eq!(r.params.sampling.top_logprobs, 3);
        assert!(r.logprobs);
        assert_eq!(
            r.params.stream,
            Some(StreamOptions {
                include_usage: true
            })
        );
        assert_eq!(r.params.sampling.temperature, 0.0);
        assert_eq!(r.params.speculative, None);
        let off = chat(&format!(r#"{{{HI}, "speculative": false}}"#)).unwrap();
        assert_eq!(off.params.speculative, Some(false));
        let e = chat(&format!(r#"{{{HI}, "speculative": "no"}}"#)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("speculative"));
        let e = chat(&format!(r#"{{{HI}, "stop": [1]}}"#)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        let e = chat(&format!(
            r#"{{{HI}, "stream_options": {{"include_usage": true}}}}"#
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream_options"));
    }

    #[test]
    fn completion_prompts_in_every_shape() {
        let parse = |p: &str| {
            CompletionRequest::parse(format!(r#"{{"model": "m", "prompt": {p}}}"#).as_bytes())
        };
        assert_eq!(
            parse(r#""a""#).unwrap().prompts,
            vec![Prompt::Text("a".into())]
        );
        assert_eq!(parse(r#"["a", "b"]"#).unwrap().prompts.len(), 2);
        assert_eq!(
            parse("[1, 2]").unwrap().prompts,
            vec![Prompt::Tokens(vec![1, 2])]
        );
        assert_eq!(parse("[[1], [2, 3]]").unwrap().prompts.len(), 2);
        for bad in ["[]", "[1, \"a\"]", "3", "[[]]", "[-1]"] {
            assert_eq!(
                parse(bad).unwrap_err().param.as_deref(),
                Some("prompt"),
                "{bad}"
            );
        }
        let r = CompletionRequest::parse(
            br#"{"model": "m", "prompt": "a", "echo": true, "logprobs": 2, "max_tokens": 0}"#,
        )
        .unwrap();
        assert!(r.echo);
        assert_eq!((r.logprobs, r.params.max_tokens), (Some(2), Some(0)));
        let e = CompletionRequest::parse(br#"{"model": "m", "prompt": "a", "suffix": "b"}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("suffix"));
    }

    #[test]
    fn embedding_inputs_and_encodings() {
        let parse = |extra: &str| {
            EmbeddingRequest::parse(format!(r#"{{"model": "m", {extra}}}"#).as_bytes())
        };
        let r = parse(r#""input": "a", "user": "u""#).unwrap();
        assert_eq!(r.inputs, vec![Prompt::Text("a".into())]);
        assert_eq!((r.encoding, r.dimensions), (EmbeddingEncoding::Float, None));
        let r = parse(r#""input": [[1, 2], [3]], "encoding_format": "base64", "dimensions": 384"#)
            .unwrap();
        assert_eq!(
            r.inputs,
            vec![Prompt::Tokens(vec![1, 2]), Prompt::Tokens(vec![3])]
        );
        assert_eq!(
            (r.encoding, r.dimensions),
            (EmbeddingEncoding::Base64, Some(384))
        );
        for (bad, param) in [
            (r#""input": """#, "input"),
            (r#""input": ["a", ""]"#, "input"),
            (r#""input": []"#, "input"),
            (r#""input": {}"#, "input"),
            (
                r#""input": "a", "encoding_format": "hex""#,
                "encoding_format",
            ),
            (r#""input": "a", "dimensions": -1"#, "dimensions"),
        ] {
            assert_eq!(
                parse(bad).unwrap_err().param.as_deref(),
                Some(param),
                "{bad}"
            );
        }
    }

    #[test]
    fn response_formats() {
        let parse = |rf: &str| chat(&format!(r#"{{{HI}, "response_format": {rf}}}"#));
        assert_eq!(
            parse(r#"{"type": "text"}"#).unwrap().response_format,
            ResponseFormat::Text
        );
        assert_eq!(
            parse(r#"{"type": "json_object"}"#).unwrap().response_format,
            ResponseFormat::JsonObject
        );
        let r = parse(
            r#"{"type": "json_schema", "json_schema": {"name": "p", "strict": true, "schema": {"type": "object"}}}"#,
        )
        .unwrap();
        assert_eq!(
            r.response_format,
            ResponseFormat::JsonSchema {
                name: "p".into(),
                schema: serde_json::json!({"type": "object"})
            }
        );
        assert_eq!(
            parse(r#"{"type": "grammar", "syntax": "regex", "grammar": "[0-9]+"}"#)
                .unwrap()
                .response_format,
            ResponseFormat::Regex("[0-9]+".into())
        );
        for (bad, param) in [
            (r#"{"type": "xml"}"#, "response_format.type"),
            (r#"{"type": "json_schema"}"#, "response_format.json_schema"),
            (
                r#"{"type": "json_schema", "json_schema": {"schema": 3}}"#,
                "response_format.json_schema.schema",
            ),
            (r#"{"type": "grammar"}"#, "response_format.grammar"),
            (
                r#"{"type": "grammar", "syntax": "ebnf", "grammar": "x"}"#,
                "response_format.syntax",
            ),
            ("3", "response_format"),
        ] {
            assert_eq!(
                parse(bad).unwrap_err().param.as_deref(),
                Some(param),
                "{bad}"
            );
        }
    }

    #[test]
    fn tools_and_tool_choice() {
        let tools = r#""tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]"#;
        let r = chat(&format!(r#"{{{HI}, {tools}}}"#)).unwrap();
        assert_eq!((r.tools.len(), &r.tool_choice), (1, &ToolChoice::Auto));
        // One call per answer unless the client asks for more.
        assert!(!r.parallel_tool_calls);
        let r = chat(&format!(
            r#"{{{HI}, {tools}, "tool_choice": {{"type": "function", "function": {{"name": "get_weather"}}}}, "parallel_tool_calls": true}}"#
        ))
        .unwrap();
        assert_eq!(r.tool_choice, ToolChoice::Function("get_weather".into()));
        assert!(r.parallel_tool_calls);
        for (bad, param) in [
            (r#""tool_choice": "required""#.to_string(), "tool_choice"),
            (
                format!(r#"{tools}, "tool_choice": "sometimes""#),
                "tool_choice",
            ),
            (
                format!(
                    r#"{tools}, "tool_choice": {{"type": "function", "function": {{"name": "nope"}}}}"#
                ),
                "tool_choice",
            ),
            (
                r#""tools": [{"type": "retrieval"}]"#.to_string(),
                "tools[0].type",
            ),
            (
                r#""tools": [{"type": "function", "function": {"name": "has space"}}]"#.to_string(),
                "tools[0].function.name",
            ),
            (
                r#""tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]"#
                    .to_string(),
                "tools[0].function.parameters",
            ),
        ] {
            let e = chat(&format!(r#"{{{HI}, {bad}}}"#)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}");
        }
    }

    #[test]
    fn reasoning_effort_and_template_kwargs() {
        let r = chat(&format!(
            r#"{{{HI}, "reasoning_effort": "none", "chat_template_kwargs": {{"enable_thinking": true}}}}"#
        ))
        .unwrap();
        assert_eq!(r.reasoning_effort, Some(ReasoningEffort::None));
        assert_eq!(r.template_kwargs["enable_thinking"], Value::Bool(true));
        for (bad, param) in [
            (r#""reasoning_effort": "extreme""#, "reasoning_effort"),
            (r#""reasoning_effort": 3"#, "reasoning_effort"),
            (r#""chat_template_kwargs": []"#, "chat_template_kwargs"),
            (
                r#""chat_template_kwargs": {"messages": []}"#,
                "chat_template_kwargs.messages",
            ),
        ] {
            let e = chat(&format!(r#"{{{HI}, {bad}}}"#)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}");
        }
    }

    #[test]
    fn tool_messages_round_trip() {
        let r = chat(
            r#"{"model": "m", "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]}"#,
        )
        .unwrap();
        let calls = r.messages[1].tool_calls.as_ref().unwrap();
        assert_eq!(calls[0]["function"]["arguments"]["city"], "Paris");
        assert_eq!(r.messages[2].tool_call_id.as_deref(), Some("call_1"));
        let e = chat(
            r#"{"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].tool_calls[0].function.arguments")
        );
    }
}
