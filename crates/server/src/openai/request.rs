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
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logit_bias",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "reasoning_effort",
    "verbosity",
];

/// Completion fields that verre does not serve yet.
const COMPLETION_UNSUPPORTED: &[&str] = &["suffix", "logit_bias", "response_format"];

/// What every generation request carries, chat or completion.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub n: usize,
    /// `None`: as many as the context leaves (chat) or the API's default (completions).
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
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
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: Option<Value>,
    tool_calls: Option<Value>,
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
}

#[derive(Deserialize)]
struct RawEmbedding {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<i64>,
    /// Accepted and unused, as for generation.
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawStreamOptions {
    include_usage: Option<bool>,
}

impl ChatRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let object = parse_object(body)?;
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
        Ok(Self {
            model: raw.model,
            messages,
            params,
            logprobs,
        })
    }
}

impl CompletionRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let object = parse_object(body)?;
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
        })
    }
}

impl EmbeddingRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let raw: RawEmbedding = typed(&parse_object(body)?)?;
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
        "tool" | "function" => return Err(ApiError::unsupported(&format!("messages[{i}].role"))),
        other => {
            return Err(ApiError::invalid(
                &format!("messages[{i}].role"),
                format!("unknown role `{other}`: use system, developer, user or assistant"),
            ));
        }
    };
    if m.tool_calls
        .as_ref()
        .is_some_and(|v| !is_neutral("tool_calls", v))
    {
        return Err(ApiError::unsupported(&format!("messages[{i}].tool_calls")));
    }
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
    Ok(verre_engine::Message::new(role, &content))
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
        let e = chat(&format!(r#"{{{HI}, "tools": [{{"type": "function"}}]}}"#)).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (400, Some("tools"))
        );
        assert!(e.message.contains("`tools`"), "{}", e.message);
        let e = chat(&format!(
            r#"{{{HI}, "response_format": {{"type": "json_object"}}}}"#
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format"));
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
}
