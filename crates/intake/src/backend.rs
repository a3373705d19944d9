//! How the `extract` and `draft` stages call models: as a client of verre's own `/v1`.
//!
//! The pipeline names models exactly as an API client does (`qwen2.5-coder-1.5b`, or
//! `large` on a vLLM cluster of verre.toml), and every call goes through [`ModelApi`]: in
//! `verre up` and `verre intake run` that is the server's `/v1` in-process, with its
//! gateway (egress policy, pseudonymisation before any backend that is not local), its
//! engines (batching, prefix cache, admission, `/metrics`), its cost ledger and its audit
//! log. [`StubBackend`] answers instead for tests and for measuring the pipeline itself.
//!
//! Extraction asks for a JSON answer under the schema (`response_format` json_schema,
//! strict: constrained decoding on the local engine, guided decoding on vLLM), validates
//! what comes back and, when it does not validate, asks again with the error.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;

use anyhow::Context;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::evidence::AnswerTokens;

/// A boxed future, for the object-safe [`ModelApi`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `/v1/chat/completions` as the pipeline calls it.
pub trait ModelApi: Send + Sync {
    /// The answer to an OpenAI-shaped chat request (never streamed).
    fn chat(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>>;

    /// The answer to an OpenAI-shaped `/v1/embeddings` request (finding the corrected
    /// examples most like a document, [`crate::fewshot`]). None by default.
    fn embed(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
        let _ = request;
        Box::pin(async {
            Err(ModelCallError::permanent(
                "this model API serves no embeddings",
            ))
        })
    }
}

/// The vectors of `inputs` from the embedding model `model`, in order.
pub async fn embeddings(
    api: &dyn ModelApi,
    model: &str,
    inputs: &[String],
) -> Result<Vec<Vec<f32>>, ModelCallError> {
    // A document is longer than an embedding model reads: its start stands for it.
    let request = json!({"model": model, "input": inputs, "truncate": true});
    let response = api.embed(request).await?;
    let data = response["data"].as_array().ok_or_else(|| {
        ModelCallError::transient(format!(
            "the embeddings answer has no data: {:.300}",
            response.to_string()
        ))
    })?;
    let mut vectors = vec![Vec::new(); inputs.len()];
    for (i, d) in data.iter().enumerate() {
        let at = d["index"].as_u64().map_or(i, |x| x as usize);
        let v: Vec<f32> = d["embedding"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_f64().map(|x| x as f32))
            .collect();
        if let Some(slot) = vectors.get_mut(at) {
            *slot = v;
        }
    }
    if vectors.iter().any(Vec::is_empty) {
        return Err(ModelCallError::transient(
            "the embeddings answer lacks a vector for an input",
        ));
    }
    Ok(vectors)
}

/// A model call that did not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ModelCallError {
    /// The request itself was refused (invalid, not allowed, unknown model): asking again
    /// cannot help. Otherwise (a limit, a backend down, a timeout) a later attempt may pass.
    pub permanent: bool,
    /// The OpenAI error's `param`, when it names one (`response_format`).
    pub param: Option<String>,
    pub message: String,
}

impl ModelCallError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            param: None,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            param: None,
            message: message.into(),
        }
    }
}

/// An extraction request: answer `prompt` as JSON that satisfies `schema`.
pub struct ExtractRequest<'a> {
    /// The model name, resolved as `/v1` resolves it.
    pub model: &'a str,
    pub system: &'a str,
    /// The user turn: the pipeline's prompt rendered over the document.
    pub prompt: &'a str,
    pub schema: &'a Value,
    pub max_tokens: usize,
    /// Extra tries after an answer that is not valid JSON for the schema.
    pub retries: u32,
    /// 1.0 for none (see `ExtractConfig::repetition_penalty`); sent only when not 1.0.
    pub repetition_penalty: f32,
}

/// A drafting request: free text for a system prompt and a user prompt.
pub struct CompleteRequest<'a> {
    pub model: &'a str,
    pub system: &'a str,
    pub prompt: &'a str,
    pub max_tokens: usize,
    /// Sent only when not 1.0.
    pub repetition_penalty: f32,
}

/// A validated extraction and what it cost.
#[derive(Debug, Clone)]
pub struct Extraction {
    pub value: Value,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Model calls made (1 + retries used).
    pub calls: u32,
    /// The validated answer token by token with its log-probabilities, when the backend
    /// gives them (the confidence of each field, [`crate::evidence`]).
    pub answer: Option<AnswerTokens>,
}

/// A drafted text and what it cost.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// The model answered every time, and never with JSON valid for the schema.
#[derive(Debug, thiserror::Error)]
#[error(
    "no valid extraction after {calls} model call(s); last error: {last_error}; last answer: {last_answer:?}"
)]
pub struct ExtractFailed {
    pub calls: u32,
    pub last_error: String,
    pub last_answer: String,
}

/// Why an extraction did not come back.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Invalid(#[from] ExtractFailed),
    #[error("the extraction model call failed: {0}")]
    Call(#[from] ModelCallError),
}

/// Validate `value` against `schema`, joining every error into one line.
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    let validator =
        jsonschema::validator_for(schema).map_err(|e| format!("invalid schema: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The first JSON object in a model's answer (models wrap JSON in prose or code fences).
pub fn first_json_object(text: &str) -> Option<Value> {
    let mut start = 0;
    while let Some(off) = text[start..].find('{') {
        let s = start + off;
        let mut de = serde_json::Deserializer::from_str(&text[s..]).into_iter::<Value>();
        if let Some(Ok(v @ Value::Object(_))) = de.next() {
            return Some(v);
        }
        start = s + 1;
    }
    None
}

/// The schema's own words about its fields (`description`: a label's definition of its
/// values, a field's meaning), one line each, for the model to read beside the skeleton.
fn field_descriptions(schema: &Value) -> String {
    let Some(props) = schema["properties"].as_object() else {
        return String::new();
    };
    props
        .iter()
        .filter_map(|(k, v)| v["description"].as_str().map(|d| format!("\n- {k}: {d}")))
        .collect()
}

/// A one-line JSON skeleton of a schema's properties, for the prompt:
/// `{"customer": "...", "threat_level": "low" | "medium", "amount": 0}`.
fn skeleton(schema: &Value) -> String {
    let Some(props) = schema["properties"].as_object() else {
        return "{}".into();
    };
    let fields: Vec<String> = props
        .iter()
        .map(|(k, v)| {
            // A nullable field (`["number", "null"]`) shows its other type.
            let ty = match v.get("type") {
                Some(Value::Array(types)) => types.iter().find(|t| *t != "null"),
                other => other,
            };
            let example = match (v.get("enum").and_then(Value::as_array), ty) {
                (Some(options), _) => options
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(" | "),
                (None, Some(t)) if t == "number" || t == "integer" => "0".to_string(),
                (None, Some(t)) if t == "boolean" => "false".to_string(),
                (None, Some(t)) if t == "array" => "[]".to_string(),
                _ => "\"...\"".to_string(),
            };
            format!("\"{k}\": {example}")
        })
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// What a chat answer holds: the text and the tokens it cost.
fn answer(response: &Value) -> Result<(String, usize, usize), ModelCallError> {
    let choice = &response["choices"][0];
    let text = choice["message"]["content"].as_str().ok_or_else(|| {
        ModelCallError::transient(format!(
            "the answer has no choices[0].message.content: {:.300}",
            response.to_string()
        ))
    })?;
    let usage = &response["usage"];
    let tokens = |k: &str| usage[k].as_u64().unwrap_or(0) as usize;
    Ok((
        text.to_string(),
        tokens("prompt_tokens"),
        tokens("completion_tokens"),
    ))
}

/// A chat request body: greedy (the same message gives the same answer).
fn chat_request(model: &str, messages: &[Value], max_tokens: usize, penalty: f32) -> Value {
    let mut request = json!({
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    if penalty != 1.0 {
        // As written in the pipeline (an f32 printed as f64 reads 1.149999976...).
        request["repetition_penalty"] = json!((penalty as f64 * 1e4).round() / 1e4);
    }
    request
}

/// Ask `api` for JSON valid against `req.schema`: under the schema first; again with the
/// validation error after an answer that does not validate, up to `req.retries` times.
/// A backend that refuses the schema (`response_format` unsupported) is asked without it,
/// and its answers are validated the same way.
pub async fn extract(
    api: &dyn ModelApi,
    req: &ExtractRequest<'_>,
) -> Result<Extraction, ExtractError> {
    let system = format!(
        "{}\nAnswer with one JSON object only, in this form: {}{}",
        req.system,
        skeleton(req.schema),
        field_descriptions(req.schema)
    );
    let mut messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": req.prompt}),
    ];
    let mut constrained = true;
    let mut logprobs = true;
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    let mut last_error = String::new();
    let mut last_answer = String::new();
    let mut call = 0;
    while call <= req.retries {
        let mut request =
            chat_request(req.model, &messages, req.max_tokens, req.repetition_penalty);
        if logprobs {
            request["logprobs"] = json!(true);
        }
        if constrained {
            request["response_format"] = json!({
                "type": "json_schema",
                "json_schema": {"name": "extraction", "schema": req.schema, "strict": true},
            });
        }
        let response = match api.chat(request).await {
            Ok(r) => r,
            Err(e)
                if constrained && e.permanent && e.param.as_deref() == Some("response_format") =>
            {
                tracing::warn!(
                    "the extraction schema is refused by the model's backend, validating instead: {e}"
                );
                constrained = false;
                continue;
            }
            // Log-probabilities only give the fields' confidence: not worth a failed call.
            Err(e) if logprobs && e.permanent && e.param.as_deref() == Some("logprobs") => {
                logprobs = false;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        call += 1;
        let (text, p, c) = answer(&response)?;
        prompt_tokens += p;
        completion_tokens += c;
        let error = match first_json_object(&text) {
            None => "the answer contains no JSON object".to_string(),
            Some(v) => match validate(req.schema, &v) {
                Ok(()) => {
                    return Ok(Extraction {
                        value: v,
                        prompt_tokens,
                        completion_tokens,
                        calls: call,
                        answer: AnswerTokens::from_chat(&response["choices"][0])
                            .filter(|a| a.text == text),
                    });
                }
                Err(e) => e,
            },
        };
        messages.push(json!({"role": "assistant", "content": text}));
        messages.push(json!({
            "role": "user",
            "content": format!("That is not valid: {error}. Answer again with only the JSON object."),
        }));
        last_error = error;
        last_answer = text;
    }
    Err(ExtractFailed {
        calls: call,
        last_error,
        last_answer: last_answer.chars().take(300).collect(),
    }
    .into())
}

/// Free text from `api` for a system prompt and a user prompt.
pub async fn complete(
    api: &dyn ModelApi,
    req: &CompleteRequest<'_>,
) -> Result<Completion, ModelCallError> {
    let messages = [
        json!({"role": "system", "content": req.system}),
        json!({"role": "user", "content": req.prompt}),
    ];
    let request = chat_request(req.model, &messages, req.max_tokens, req.repetition_penalty);
    let (text, prompt_tokens, completion_tokens) = answer(&api.chat(request).await?)?;
    Ok(Completion {
        text: text.trim().to_string(),
        prompt_tokens,
        completion_tokens,
    })
}

/// A deterministic stand-in for every model, for tests and for measuring the pipeline
/// itself (`verre intake run --backend stub`). It answers `/v1/chat/completions` requests:
/// one with a `response_format` schema gets JSON valid for any schema made of objects,
/// strings, numbers, booleans, arrays and enums, each value derived from a hash of the last
/// user turn, so the same message always gets the same answer; one without gets a short
/// fixed reply.
///
/// Test hooks (environment): `VERRE_INTAKE_STUB_DELAY_MS` makes each call take that long;
/// `VERRE_INTAKE_STUB_LOG=FILE` appends a hash of each extraction prompt to FILE, so
/// a test can count how often each message was extracted.
#[derive(Default)]
pub struct StubBackend {
    delay: Option<std::time::Duration>,
    log: Option<std::path::PathBuf>,
}

impl StubBackend {
    pub fn from_env() -> Self {
        Self {
            delay: std::env::var("VERRE_INTAKE_STUB_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_millis),
            log: std::env::var_os("VERRE_INTAKE_STUB_LOG").map(Into::into),
        }
    }

    /// Make each call take `delay` (a stand-in for a model's latency).
    pub fn with_delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Append a hash of each extraction prompt to `log` (see the type's doc).
    pub fn with_log(mut self, log: impl Into<std::path::PathBuf>) -> Self {
        self.log = Some(log.into());
        self
    }

    fn log_prompt(&self, prompt: &str) -> anyhow::Result<()> {
        let Some(log) = &self.log else { return Ok(()) };
        let digest = hex::encode(Sha256::digest(prompt.as_bytes()));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening stub log {}", log.display()))?;
        // One write per line: appends from several processes do not interleave.
        f.write_all(format!("{}\n", &digest[..16]).as_bytes())?;
        Ok(())
    }

    fn answer(&self, request: &Value) -> Result<Value, ModelCallError> {
        let messages = request["messages"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let text = |role: &str| -> String {
            messages
                .iter()
                .filter(|m| m["role"] == role)
                .filter_map(|m| m["content"].as_str())
                .collect()
        };
        let prompt = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or("");
        let content = match request["response_format"]["json_schema"].get("schema") {
            Some(schema) => {
                self.log_prompt(prompt)
                    .map_err(|e| ModelCallError::transient(format!("{e:#}")))?;
                let value = stub_value(schema, prompt.as_bytes(), "");
                validate(schema, &value).map_err(|e| {
                    ModelCallError::permanent(format!("the stub cannot satisfy this schema: {e}"))
                })?;
                value.to_string()
            }
            None => format!(
                "Thank you for your message. (stub draft {})",
                &hex::encode(Sha256::digest(prompt))[..8]
            ),
        };
        let prompt_tokens = (text("system").len() + text("user").len()) / 4;
        let logprobs =
            (request["logprobs"] == json!(true)).then(|| json!({"content": stub_tokens(&content)}));
        Ok(json!({
            "object": "chat.completion",
            "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": logprobs, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": content.len() / 4},
        }))
    }
}

impl ModelApi for StubBackend {
    fn chat(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
        Box::pin(async move {
            if let Some(d) = self.delay {
                tokio::time::sleep(d).await;
            }
            self.answer(&request)
        })
    }

    /// Each input as counts of its lower-cased words hashed into 64 dimensions: texts that
    /// share words are near.
    fn embed(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
        let data: Vec<Value> = request["input"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(index, text)| {
                let mut v = [0f32; 64];
                for word in text
                    .as_str()
                    .unwrap_or("")
                    .split(|c: char| !c.is_alphanumeric())
                {
                    if !word.is_empty() {
                        let h = Sha256::digest(word.to_lowercase().as_bytes());
                        v[h[0] as usize % 64] += 1.0;
                    }
                }
                json!({"index": index, "embedding": v.to_vec()})
            })
            .collect();
        Box::pin(async move { Ok(json!({"object": "list", "data": data})) })
    }
}

/// The stub's answer as chat `logprobs` tokens: each top-level value one token, with a
/// probability from a hash of the value (some below 0.5, so a demo has fields to check),
/// the JSON around them certain.
fn stub_tokens(content: &str) -> Vec<Value> {
    let token = |text: &str, p: f64| json!({"token": text, "logprob": p.ln(), "bytes": text.as_bytes(), "top_logprobs": []});
    let mut tokens = Vec::new();
    let mut at = 0;
    for (_, (start, end)) in crate::evidence::value_ranges(content) {
        if start > at {
            tokens.push(token(&content[at..start], 1.0));
        }
        let h = Sha256::digest(&content.as_bytes()[start..end]);
        tokens.push(token(&content[start..end], 0.2 + 0.8 * h[0] as f64 / 255.0));
        at = end;
    }
    if at < content.len() {
        tokens.push(token(&content[at..], 1.0));
    }
    tokens
}

fn stub_value(schema: &Value, seed: &[u8], key: &str) -> Value {
    let h = Sha256::new()
        .chain_update(seed)
        .chain_update(key.as_bytes())
        .finalize();
    let n = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.is_empty()
    {
        return options[(n % options.len() as u64) as usize].clone();
    }
    // A nullable type (`["number", "null"]`, a chunk's schema) is answered in its other type.
    let ty = match schema.get("type") {
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null"),
        other => other.and_then(Value::as_str),
    };
    match ty {
        Some("object") => {
            let mut obj = serde_json::Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    obj.insert(k.clone(), stub_value(v, seed, &format!("{key}.{k}")));
                }
            }
            Value::Object(obj)
        }
        Some("integer") => json!(n % 1000),
        Some("number") => json!((n % 100_000) as f64 / 100.0),
        Some("boolean") => json!(n % 2 == 0),
        Some("array") => json!([]),
        Some("null") => Value::Null,
        _ => json!(format!("stub-{}", &hex::encode(&h[..4]))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn finds_json_in_prose() {
        assert_eq!(
            first_json_object("Sure! ```json\n{\"a\": 1}\n```").unwrap()["a"],
            1
        );
        assert_eq!(
            first_json_object("{broken {\"b\": [1]}").unwrap()["b"][0],
            1
        );
        assert!(first_json_object("no json here").is_none());
    }

    #[test]
    fn the_model_reads_each_described_field_once() {
        let schema = json!({"type": "object", "properties": {
            "summary": {"type": "string"},
            "level": {"enum": ["low", "high"], "description": "high: legal threats"},
        }});
        assert_eq!(
            skeleton(&schema),
            r#"{"summary": "...", "level": "low" | "high"}"#
        );
        assert_eq!(
            field_descriptions(&schema),
            "\n- level: high: legal threats"
        );
        assert_eq!(field_descriptions(&json!({"type": "string"})), "");
    }

    #[test]
    fn validation_names_the_field() {
        let schema =
            json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}});
        assert!(validate(&schema, &json!({"n": 3})).is_ok());
        let e = validate(&schema, &json!({"n": "x"})).unwrap_err();
        assert!(e.contains("/n"), "{e}");
        assert!(
            validate(&schema, &json!({}))
                .unwrap_err()
                .contains("required")
        );
    }

    #[test]
    fn skeletons_show_keys_and_choices() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}, "n": {"type": "number"}, "l": {"enum": ["x", "y"]}, "m": {"type": ["null", "number"]}}});
        assert_eq!(
            skeleton(&schema),
            r#"{"a": "...", "n": 0, "l": "x" | "y", "m": 0}"#
        );
    }

    fn request<'a>(schema: &'a Value, retries: u32) -> ExtractRequest<'a> {
        ExtractRequest {
            model: "m",
            system: "s",
            prompt: "doc",
            schema,
            max_tokens: 10,
            retries,
            repetition_penalty: 1.0,
        }
    }

    #[tokio::test]
    async fn the_stub_is_deterministic_and_valid() {
        let schema = json!({"type": "object", "required": ["level", "who", "n"], "properties": {
            "level": {"type": "string", "enum": ["low", "high"]}, "who": {"type": "string"},
            "n": {"type": "number"}, "ok": {"type": "boolean"}}});
        let stub = StubBackend::default();
        let a = extract(&stub, &request(&schema, 0)).await.unwrap();
        let b = extract(&stub, &request(&schema, 0)).await.unwrap();
        assert_eq!(a.value, b.value);
        assert!(validate(&schema, &a.value).is_ok());
    }

    /// A model that answers from a script, recording every request.
    struct Scripted {
        answers: Mutex<Vec<Result<&'static str, ModelCallError>>>,
        requests: Mutex<Vec<Value>>,
    }

    impl Scripted {
        fn new(answers: Vec<Result<&'static str, ModelCallError>>) -> Self {
            Self {
                answers: Mutex::new(answers),
                requests: Mutex::default(),
            }
        }
    }

    impl ModelApi for Scripted {
        fn chat(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
            self.requests.lock().unwrap().push(request);
            let next = self.answers.lock().unwrap().remove(0);
            Box::pin(async move {
                next.map(|text| {
                    json!({"choices": [{"message": {"content": text}}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 2}})
                })
            })
        }
    }

    #[tokio::test]
    async fn an_invalid_answer_is_asked_again_with_the_error() {
        let schema =
            json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}});
        let api = Scripted::new(vec![Ok("{\"n\": \"three\"}"), Ok("{\"n\": 3}")]);
        let x = extract(&api, &request(&schema, 1)).await.unwrap();
        assert_eq!(
            (x.value, x.calls, x.prompt_tokens),
            (json!({"n": 3}), 2, 20)
        );
        let requests = api.requests.lock().unwrap();
        let first = &requests[0];
        assert_eq!(first["model"], "m");
        assert_eq!(first["temperature"], 0);
        assert_eq!(first["response_format"]["json_schema"]["schema"], schema);
        assert!(first.get("repetition_penalty").is_none(), "1.0 is not sent");
        let again = requests[1]["messages"].as_array().unwrap();
        assert_eq!(again.len(), 4);
        assert!(
            again[3]["content"].as_str().unwrap().contains("/n"),
            "{again:?}"
        );

        let api = Scripted::new(vec![Ok("no"), Ok("still no")]);
        match extract(&api, &request(&schema, 1)).await {
            Err(ExtractError::Invalid(f)) => assert_eq!(f.calls, 2),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_answer_comes_back_with_its_token_probabilities() {
        let schema = json!({"type": "object", "required": ["who"], "properties": {"who": {"type": "string"}}});
        let x = extract(&StubBackend::default(), &request(&schema, 0))
            .await
            .unwrap();
        let answer = x.answer.expect("the stub gives log-probabilities");
        assert_eq!(answer.text, x.value.to_string());
        let e = crate::evidence::evidence("", &x.value, Some(&answer), 0.5);
        assert!(e.fields[0].confidence.is_some_and(|c| c > 0.0 && c <= 1.0));

        // A backend that refuses log-probabilities is asked without them.
        let refused = ModelCallError {
            permanent: true,
            param: Some("logprobs".into()),
            message: "unsupported".into(),
        };
        let api = Scripted::new(vec![Err(refused), Ok("{\"who\": \"x\"}")]);
        let x = extract(&api, &request(&schema, 0)).await.unwrap();
        assert_eq!((x.calls, x.answer), (1, None));
        let requests = api.requests.lock().unwrap();
        assert_eq!(requests[0]["logprobs"], true);
        assert!(requests[1].get("logprobs").is_none());
    }

    #[tokio::test]
    async fn a_backend_that_refuses_the_schema_is_asked_without_it() {
        let schema =
            json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}});
        let refused = ModelCallError {
            permanent: true,
            param: Some("response_format".into()),
            message: "unsupported".into(),
        };
        let api = Scripted::new(vec![Err(refused), Ok("Here: {\"n\": 1}")]);
        let x = extract(&api, &request(&schema, 0)).await.unwrap();
        assert_eq!((x.value, x.calls), (json!({"n": 1}), 1));
        let requests = api.requests.lock().unwrap();
        assert!(requests[1].get("response_format").is_none());

        // Any other refusal is the stage's error, not a fallback.
        let api = Scripted::new(vec![Err(ModelCallError::permanent("model not found"))]);
        assert!(matches!(
            extract(&api, &request(&schema, 3)).await,
            Err(ExtractError::Call(e)) if e.permanent
        ));
    }
}
