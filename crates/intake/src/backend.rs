//! The models behind the `extract` and `draft` stages, behind one small trait so that the
//! pipeline does not care whether a model runs in-process, remotely, or is stubbed out.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use verre_engine::{GenerateRequest, LoadedModel, Message, SamplingParams};

/// An extraction request: answer `document` as JSON that satisfies `schema`.
pub struct ExtractRequest<'a> {
    pub system: &'a str,
    /// The user turn: the pipeline's prompt rendered over the document.
    pub prompt: &'a str,
    pub schema: &'a Value,
    pub max_tokens: usize,
    /// Extra tries after an answer that is not valid JSON for the schema.
    pub retries: u32,
    /// 1.0 for none (see `ExtractConfig::repetition_penalty`).
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
}

/// A drafted text and what it cost.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Why an extraction failed; `attempts` holds the last answer and its error for the
/// quarantine reason.
#[derive(Debug, thiserror::Error)]
#[error(
    "no valid extraction after {calls} model call(s); last error: {last_error}; last answer: {last_answer:?}"
)]
pub struct ExtractFailed {
    pub calls: u32,
    pub last_error: String,
    pub last_answer: String,
}

/// A model the pipeline can ask for structured output and for free text.
pub trait ExtractBackend: Send + Sync {
    /// A JSON value valid against `req.schema` (the implementation validates; the stage
    /// validates again before storing).
    fn extract(&self, req: &ExtractRequest) -> Result<Extraction>;
    /// Free text for a system prompt and a user prompt.
    fn complete(&self, system: &str, prompt: &str, max_tokens: usize) -> Result<Completion>;
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

/// The in-process engine: a GGUF model loaded once and shared by every stage that names it.
///
/// Extraction today: generate, parse the first JSON object, validate with `jsonschema`,
/// and on failure ask again with the error fed back. When the engine's constrained decoding
/// lands, the schema goes into the generate request and the first answer is valid by
/// construction (the validation stays: it is cheap and the store must never hold an
/// unvalidated extraction).
pub struct EngineBackend {
    model: Arc<LoadedModel>,
}

impl EngineBackend {
    pub fn load(path: &Path) -> Result<Self> {
        let model =
            LoadedModel::load(path).with_context(|| format!("loading {}", path.display()))?;
        Ok(Self {
            model: Arc::new(model),
        })
    }

    /// Generate after the chat template's assistant header, with the answer begun with
    /// `answer_prefix` (returned as part of the text), under `grammar` if given.
    fn generate(
        &self,
        messages: &[Message],
        answer_prefix: &str,
        max_tokens: usize,
        sampling: SamplingParams,
        grammar: Option<std::sync::Arc<verre_engine::Grammar>>,
    ) -> Result<(String, usize, usize)> {
        let mut text = self.model.template.render(messages, true)?;
        text.push_str(answer_prefix);
        let prompt_ids = self.model.encode_prompt(&text)?;
        let req = GenerateRequest {
            prompt_ids,
            max_tokens,
            sampling,
            stop: Vec::new(),
            ignore_eos: false,
            grammar,
        };
        let g = self.model.generate(&req, |_| true)?;
        Ok((
            format!("{answer_prefix}{}", g.text),
            g.prompt_tokens,
            g.completion_tokens,
        ))
    }
}

/// A one-line JSON skeleton of a schema's properties, for the prompt:
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

/// `{"customer": "...", "threat_level": "low" | "medium", "amount": 0}`.
fn skeleton(schema: &Value) -> String {
    let Some(props) = schema["properties"].as_object() else {
        return "{}".into();
    };
    let fields: Vec<String> = props
        .iter()
        .map(|(k, v)| {
            let example = match (v.get("enum").and_then(Value::as_array), v.get("type")) {
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

impl ExtractBackend for EngineBackend {
    fn extract(&self, req: &ExtractRequest) -> Result<Extraction> {
        let system = format!(
            "{}\nAnswer with one JSON object only, in this form: {}{}",
            req.system,
            skeleton(req.schema),
            field_descriptions(req.schema)
        );
        let mut messages = vec![
            Message::new("system", &system),
            Message::new("user", req.prompt),
        ];
        // The answer is generated under the schema (constrained decoding): valid JSON of the
        // right shape by construction. A schema the grammar compiler cannot enforce falls
        // back to starting the answer for the model and validating what comes back.
        let grammar = match self
            .model
            .compile_grammar(&verre_engine::GrammarSpec::JsonSchema(req.schema.clone()))
        {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!("extraction schema not enforceable, validating instead: {e}");
                None
            }
        };
        let prefix = match (
            &grammar,
            req.schema["properties"]
                .as_object()
                .and_then(|p| p.keys().next()),
        ) {
            (Some(_), _) => String::new(),
            (None, Some(k)) => format!("{{\"{k}\":"),
            (None, None) => "{".to_string(),
        };
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        let mut last_error = String::new();
        let mut last_answer = String::new();
        for call in 1..=req.retries + 1 {
            // Greedy: the same message gives the same extraction.
            let sampling = SamplingParams {
                repetition_penalty: req.repetition_penalty,
                ..SamplingParams::default()
            };
            let (text, p, c) = self.generate(
                &messages,
                &prefix,
                req.max_tokens,
                sampling,
                grammar.clone(),
            )?;
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
                        });
                    }
                    Err(e) => e,
                },
            };
            messages.push(Message::new("assistant", &text));
            messages.push(Message::new(
                "user",
                &format!("That is not valid: {error}. Answer again with only the JSON object."),
            ));
            last_error = error;
            last_answer = text;
        }
        Err(ExtractFailed {
            calls: req.retries + 1,
            last_error,
            last_answer: last_answer.chars().take(300).collect(),
        }
        .into())
    }

    fn complete(&self, system: &str, prompt: &str, max_tokens: usize) -> Result<Completion> {
        let messages = [Message::new("system", system), Message::new("user", prompt)];
        // Greedy too, with a repetition penalty: small models loop on free text without one.
        let sampling = SamplingParams {
            repetition_penalty: 1.15,
            ..SamplingParams::default()
        };
        let (text, prompt_tokens, completion_tokens) =
            self.generate(&messages, "", max_tokens, sampling, None)?;
        Ok(Completion {
            text: text.trim().to_string(),
            prompt_tokens,
            completion_tokens,
        })
    }
}

/// A deterministic stand-in for a model, for tests and for measuring the pipeline itself
/// (`verre intake run --backend stub`). Its extraction is valid for any schema made of
/// objects, strings, numbers, booleans, arrays and enums: each value is derived from a
/// hash of the document, so the same message always gets the same answer.
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

    fn pause(&self) {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
    }
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
    match schema.get("type").and_then(Value::as_str) {
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

impl ExtractBackend for StubBackend {
    fn extract(&self, req: &ExtractRequest) -> Result<Extraction> {
        self.pause();
        if let Some(log) = &self.log {
            let digest = hex::encode(Sha256::digest(req.prompt.as_bytes()));
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening stub log {}", log.display()))?;
            // One write per line: appends from several processes do not interleave.
            f.write_all(format!("{}\n", &digest[..16]).as_bytes())?;
        }
        let value = stub_value(req.schema, req.prompt.as_bytes(), "");
        validate(req.schema, &value)
            .map_err(|e| anyhow::anyhow!("the stub cannot satisfy this schema: {e}"))?;
        Ok(Extraction {
            prompt_tokens: req.prompt.len() / 4 + req.system.len() / 4,
            completion_tokens: value.to_string().len() / 4,
            value,
            calls: 1,
        })
    }

    fn complete(&self, _system: &str, prompt: &str, _max_tokens: usize) -> Result<Completion> {
        self.pause();
        let text = format!(
            "Thank you for your message. (stub draft {})",
            &hex::encode(Sha256::digest(prompt))[..8]
        );
        Ok(Completion {
            prompt_tokens: prompt.len() / 4,
            completion_tokens: text.len() / 4,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(skeleton(&schema), r#"{"summary": "...", "level": "low" | "high"}"#);
        assert_eq!(field_descriptions(&schema), "\n- level: high: legal threats");
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
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}, "n": {"type": "number"}, "l": {"enum": ["x", "y"]}}});
        assert_eq!(skeleton(&schema), r#"{"a": "...", "n": 0, "l": "x" | "y"}"#);
    }

    #[test]
    fn the_stub_is_deterministic_and_valid() {
        let schema = json!({"type": "object", "required": ["level", "who", "n"], "properties": {
            "level": {"type": "string", "enum": ["low", "high"]}, "who": {"type": "string"},
            "n": {"type": "number"}, "ok": {"type": "boolean"}}});
        let req = ExtractRequest {
            system: "s",
            prompt: "doc",
            schema: &schema,
            max_tokens: 10,
            retries: 0,
            repetition_penalty: 1.0,
        };
        let stub = StubBackend::default();
        let a = stub.extract(&req).unwrap();
        let b = stub.extract(&req).unwrap();
        assert_eq!(a.value, b.value);
        assert!(validate(&schema, &a.value).is_ok());
    }
}
