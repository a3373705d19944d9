//! Constrained decoding: JSON Schema, regular expressions and Lark grammars enforced token
//! by token with llguidance, so that what the model writes is valid by construction.
//!
//! - [`ConstraintCompiler`] is built once per model from its tokenizer (a token trie over
//!   the bytes of every token);
//! - [`ConstraintCompiler::compile`] turns a [`GrammarSpec`] into a [`Grammar`], or refuses
//!   it with a [`GrammarError`] that names what is not supported — a caller must never fall
//!   back to unconstrained generation;
//! - [`Grammar::start`] gives each sequence its own [`Constraint`]: before each token,
//!   [`Constraint::compute_mask`] says which tokens may come next and
//!   [`Constraint::apply_mask`] rules the others out of the logits; after it,
//!   [`Constraint::commit`] advances the parser.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::tokenizer::Tokenizer;

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// An instance of this JSON Schema.
    JsonSchema(Value),
    /// A string matching this regular expression (whole output).
    Regex(String),
    /// A Lark grammar in llguidance's dialect (may embed `%json { ... }`).
    Lark(String),
    /// A Lark grammar of tool calls: JSON arguments inside the model's call markers. Its
    /// JSON is closed near the token limit as a schema's is (see [`Constraint::close_json`]);
    /// the schemas it embeds should be narrowed with [`narrow_schema`] first.
    ToolCalls(String),
}

impl GrammarSpec {
    fn kind(&self) -> &'static str {
        match self {
            GrammarSpec::JsonObject => "json_object",
            GrammarSpec::JsonSchema(_) => "JSON schema",
            GrammarSpec::Regex(_) => "regex",
            GrammarSpec::Lark(_) | GrammarSpec::ToolCalls(_) => "Lark grammar",
        }
    }
}

/// A grammar that cannot be enforced: the request must be refused (an API answers 400).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind} not supported for constrained decoding: {reason}")]
pub struct GrammarError {
    pub kind: &'static str,
    pub reason: String,
}

/// Token masks for one model's vocabulary.
pub struct ConstraintCompiler {
    factory: ParserFactory,
    eos: u32,
    /// Every end-of-generation token: allowed exactly when the grammar may end.
    eog: Arc<[u32]>,
    /// The vocabulary's tokens that close a JSON string, array or object.
    json: Arc<JsonVocab>,
}

/// What JSON closing needs to know of a vocabulary: each token's bytes, and the tokens that
/// close a string, an array or an object and do nothing else.
struct JsonVocab {
    bytes: Vec<Vec<u8>>,
    quote: Vec<u32>,
    bracket: Vec<u32>,
    brace: Vec<u32>,
}

impl JsonVocab {
    fn new(tokenizer: &Tokenizer) -> Self {
        let mut v = JsonVocab {
            bytes: Vec::with_capacity(tokenizer.vocab_size()),
            quote: Vec::new(),
            bracket: Vec::new(),
            brace: Vec::new(),
        };
        for id in 0..tokenizer.vocab_size() as u32 {
            let bytes = if tokenizer.is_special(id) {
                Vec::new()
            } else {
                tokenizer.token_bytes(id)
            };
            // Only tokens that close and nothing else (`"`, `"}`, `]}`...): a closer that
            // goes on (`"},`) would open the next item instead.
            let only_closing = bytes.iter().skip(1).all(|b| matches!(b, b']' | b'}'));
            match bytes.first() {
                Some(b'"') if only_closing => v.quote.push(id),
                Some(b']') if only_closing => v.bracket.push(id),
                Some(b'}') if only_closing => v.brace.push(id),
                _ => {}
            }
            v.bytes.push(bytes);
        }
        v
    }
}

/// Where a JSON output is, lexically: inside a string or not, and in which containers.
#[derive(Clone)]
struct JsonState {
    vocab: Arc<JsonVocab>,
    in_string: bool,
    escaped: bool,
    open: Vec<u8>,
}

impl JsonState {
    fn feed(&mut self, token: u32) {
        let vocab = self.vocab.clone();
        for &b in vocab
            .bytes
            .get(token as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => self.open.push(b),
                b']' | b'}' => {
                    self.open.pop();
                }
                _ => {}
            }
        }
    }

    /// The tokens that would close the innermost open thing.
    fn closers(&self) -> &[u32] {
        if self.in_string {
            return &self.vocab.quote;
        }
        match self.open.last() {
            Some(b'[') => &self.vocab.bracket,
            Some(b'{') => &self.vocab.brace,
            _ => &[],
        }
    }
}

impl std::fmt::Debug for ConstraintCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintCompiler")
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

/// llguidance's view of our tokenizer: the bytes of every token (control tokens marked
/// with the trie's special-token byte) and a way to tokenize text.
struct VerreTokEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for VerreTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // llguidance asks for text in the middle of an output: no BOS, no control tokens,
        // no SentencePiece space prefix.
        let text = String::from_utf8_lossy(s);
        self.tokenizer
            .encode_continuation(&text)
            .unwrap_or_default()
    }
}

impl ConstraintCompiler {
    /// Build the token trie for a tokenizer (tens of milliseconds for a 50k vocabulary).
    pub fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let vocab = tokenizer.vocab_size();
        let eog: Arc<[u32]> = tokenizer.eog_ids().into();
        let eos = tokenizer
            .eos_id()
            .or_else(|| eog.first().copied())
            .ok_or_else(|| anyhow::anyhow!("the tokenizer has no end-of-sequence token"))?;
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                if tokenizer.is_special(id) {
                    let mut marked = Vec::with_capacity(bytes.len() + 1);
                    marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    marked.extend_from_slice(&bytes);
                    marked
                } else {
                    bytes
                }
            })
            .collect();
        let mut info = TokRxInfo::new(vocab as u32, eos);
        info.tok_bos = tokenizer.bos_id();
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(VerreTokEnv {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.quiet();
        Ok(Self {
            factory,
            eos,
            eog,
            json: Arc::new(JsonVocab::new(tokenizer)),
        })
    }

    /// Compile a grammar, or say why it cannot be enforced.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Grammar, GrammarError> {
        let started = Instant::now();
        let error = |reason: String| GrammarError {
            kind: spec.kind(),
            reason,
        };
        let top = match spec {
            GrammarSpec::JsonObject => TopLevelGrammar::from_json_schema(with_compact_json(
                serde_json::json!({"type": "object"}),
            )),
            GrammarSpec::JsonSchema(schema) => {
                if !(schema.is_object() || schema.is_boolean()) {
                    return Err(error("a JSON schema must be an object or a boolean".into()));
                }
                let mut schema = schema.clone();
                narrow_schema(&mut schema);
                TopLevelGrammar::from_json_schema(with_compact_json(schema))
            }
            GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            GrammarSpec::Lark(lark) | GrammarSpec::ToolCalls(lark) => {
                TopLevelGrammar::from_lark(lark.clone())
            }
        };
        // llguidance reports unsupported keywords, bad regexes and grammars too large for
        // its limits here; a panic inside it is a refusal too, never a crash.
        let parser = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.factory.create_parser(top)
        }))
        .map_err(|_| error("the grammar compiler failed on this input".into()))?
        .map_err(|e| error(format!("{e:#}")))?;
        let mut matcher = Matcher::new(Ok(parser));
        // Compiling is lazy in places: the first mask surfaces errors the parser found late.
        if let Err(e) = matcher.compute_mask() {
            return Err(error(format!("{e:#}")));
        }
        if let Some(e) = matcher.get_error() {
            return Err(error(e));
        }
        let json = matches!(
            spec,
            GrammarSpec::JsonObject | GrammarSpec::JsonSchema(_) | GrammarSpec::ToolCalls(_)
        )
        .then(|| self.json.clone());
        Ok(Grammar {
            template: Mutex::new(matcher),
            eos: self.eos,
            eog: self.eog.clone(),
            compile_time: started.elapsed(),
            json,
        })
    }
}

/// Formats defined by JSON Schema (draft 2020-12 and earlier). A `format` outside this
/// list is an annotation any validator ignores, so it is dropped before compiling; a known
/// one that llguidance cannot enforce is refused by the compiler (never ignored).
const KNOWN_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uri-template",
    "uuid",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// A JSON schema as verre generates it: formats no validator knows dropped, and objects
/// closed where that only narrows the output ([`close_open_objects`]). Every instance
/// generated under the result is an instance of the schema as written.
pub fn narrow_schema(schema: &mut Value) {
    strip_unknown_formats(schema);
    close_open_objects(schema);
}

fn strip_unknown_formats(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| !KNOWN_FORMATS.contains(&f))
            {
                map.remove("format");
            }
            for (key, value) in map.iter_mut() {
                // Instances, not schemas: left as written.
                if !matches!(key.as_str(), "enum" | "const" | "default" | "examples") {
                    strip_unknown_formats(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_unknown_formats),
        _ => {}
    }
}

/// Objects that declare their `properties` and say nothing of others are generated with the
/// declared ones only (`additionalProperties: false`), as OpenAI's strict mode requires of
/// every schema: a small model otherwise keeps inventing keys until the token limit cuts the
/// output. What is generated is still valid under the schema as written (it only narrows
/// what may be generated). Left alone: objects combined with `allOf`/`anyOf`/`oneOf`/`$ref`
/// or `patternProperties`, objects inside those combinators (a sibling branch may declare
/// the other properties), and objects requiring a property they do not declare.
fn close_open_objects(schema: &mut Value) {
    let Value::Object(map) = schema else { return };
    let combined = [
        "allOf",
        "anyOf",
        "oneOf",
        "$ref",
        "patternProperties",
        "unevaluatedProperties",
        "if",
    ]
    .iter()
    .any(|k| map.contains_key(*k));
    if !combined
        && !map.contains_key("additionalProperties")
        && let Some(Value::Object(props)) = map.get("properties")
    {
        let declared = |name: &Value| name.as_str().is_some_and(|n| props.contains_key(n));
        let required_declared = match map.get("required") {
            Some(Value::Array(names)) => names.iter().all(declared),
            _ => true,
        };
        if required_declared {
            map.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    for (key, value) in map.iter_mut() {
        match key.as_str() {
            "properties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Value::Object(children) = value {
                    children.values_mut().for_each(close_open_objects);
                }
            }
            "items" | "additionalProperties" | "contains" | "additionalItems" => {
                close_open_objects(value)
            }
            "prefixItems" => {
                if let Value::Array(items) = value {
                    items.iter_mut().for_each(close_open_objects);
                }
            }
            // allOf/anyOf/oneOf branches, not, if/then/else, and instances: as written.
            _ => {}
        }
    }
}

/// Generated JSON without free whitespace: a small model given the freedom to add spaces
/// and newlines between tokens can spend its whole budget on them.
fn with_compact_json(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        let options = map
            .entry("x-guidance")
            .or_insert_with(|| serde_json::json!({}));
        if let Value::Object(options) = options {
            options
                .entry("whitespace_flexible")
                .or_insert(Value::Bool(false));
            options
                .entry("item_separator")
                .or_insert(Value::String(", ".into()));
            options
                .entry("key_separator")
                .or_insert(Value::String(": ".into()));
        }
    } else if schema == Value::Bool(true) {
        schema = serde_json::json!({"x-guidance": {"whitespace_flexible": false}});
    }
    schema
}

/// A compiled grammar, shared by every sequence that must follow it.
pub struct Grammar {
    template: Mutex<Matcher>,
    eos: u32,
    eog: Arc<[u32]>,
    compile_time: Duration,
    /// Set when the grammar produces JSON (a schema or `json_object`).
    json: Option<Arc<JsonVocab>>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar")
            .field("compile_time", &self.compile_time)
            .finish_non_exhaustive()
    }
}

impl Grammar {
    /// A fresh constraint at the start of the output.
    pub fn start(&self) -> Constraint {
        let matcher = self
            .template
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deep_clone();
        Constraint {
            matcher,
            eos: self.eos,
            eog: self.eog.clone(),
            mask: None,
            mask_times: Vec::new(),
            json: self.json.clone().map(|vocab| JsonState {
                vocab,
                in_string: false,
                escaped: false,
                open: Vec::new(),
            }),
        }
    }

    /// How long compiling took (includes the first mask).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }
}

/// The state of one sequence under a grammar.
pub struct Constraint {
    matcher: Matcher,
    eos: u32,
    eog: Arc<[u32]>,
    /// The mask for the next token, once computed.
    mask: Option<SimpleVob>,
    mask_times: Vec<Duration>,
    /// Where a JSON output is, for closing it when the token budget runs low.
    json: Option<JsonState>,
}

impl Constraint {
    /// Work out which tokens may come next. Cheap to call again before the next commit.
    /// Can run while the model computes the logits (it needs none).
    pub fn compute_mask(&mut self) -> Result<()> {
        if self.mask.is_some() {
            return Ok(());
        }
        let started = Instant::now();
        let mask = self.matcher.compute_mask_or_eos()?;
        self.mask_times.push(started.elapsed());
        if mask.is_zero() {
            anyhow::bail!(
                "the grammar allows no token here: {}",
                self.matcher.get_error().unwrap_or_default()
            );
        }
        self.mask = Some(mask);
        Ok(())
    }

    /// Rule out every token the grammar forbids (logit −∞). End-of-generation tokens are
    /// allowed exactly when the grammar may end here.
    pub fn apply_mask(&mut self, logits: &mut [f32]) -> Result<()> {
        self.compute_mask()?;
        let mask = self.mask.as_ref().expect("computed above");
        let may_end = mask.is_allowed(self.eos);
        // Other end-of-generation tokens mean the same as EOS: keep their logits when the
        // output may end, rule them out when it may not.
        let ends: Vec<(usize, f32)> = self
            .eog
            .iter()
            .filter_map(|&id| logits.get(id as usize).map(|&l| (id as usize, l)))
            .collect();
        let limit = mask.len().min(logits.len());
        for (id, logit) in logits.iter_mut().enumerate() {
            if id >= limit || !mask.is_allowed(id as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        for (id, l) in ends {
            logits[id] = if may_end { l } else { f32::NEG_INFINITY };
        }
        if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
            anyhow::bail!("the grammar allows no token of this model's vocabulary here");
        }
        Ok(())
    }

    /// Advance past a token the sampler chose. End-of-generation tokens end the output and
    /// are not fed to the parser.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.mask = None;
        if self.eog.contains(&token) {
            return Ok(());
        }
        self.matcher.consume_token(token)?;
        if let Some(json) = &mut self.json {
            json.feed(token);
        }
        Ok(())
    }

    /// For a JSON output running out of tokens: keep only the allowed tokens that close
    /// the innermost open string, array or object (`masked` already has the grammar's
    /// mask applied), so the output completes instead of being cut. Nothing changes when
    /// the grammar allows no closer here (a required property still missing, say): the
    /// model goes on, and the next string it opens is closed at once.
    pub fn close_json(&self, masked: &mut [f32]) {
        let Some(json) = &self.json else { return };
        let closers = json.closers();
        let allowed = |id: &u32| {
            masked
                .get(*id as usize)
                .is_some_and(|l| *l != f32::NEG_INFINITY)
        };
        if !closers.iter().any(allowed) {
            return;
        }
        let keep: Vec<(u32, f32)> = closers
            .iter()
            .filter(|id| allowed(id))
            .map(|&id| (id, masked[id as usize]))
            .collect();
        masked.fill(f32::NEG_INFINITY);
        for (id, logit) in keep {
            masked[id as usize] = logit;
        }
    }

    /// The tokens the grammar forces next, whatever the model would write (the keys,
    /// quotes and punctuation of a JSON schema), as llguidance tokenizes them. Nothing is
    /// committed. The model may still spell the same bytes with other tokens: the engine
    /// checks these as drafts rather than taking them on trust.
    pub fn forced_tokens(&mut self) -> Vec<u32> {
        if self.matcher.is_stopped() {
            return Vec::new();
        }
        self.matcher.compute_ff_tokens()
    }

    /// How many of `tokens`, in order from here, the grammar allows. Nothing is committed.
    /// End-of-generation tokens are never counted (they end the output).
    pub fn allowed_prefix(&mut self, tokens: &[u32]) -> usize {
        let upto = tokens
            .iter()
            .position(|t| self.eog.contains(t))
            .unwrap_or(tokens.len());
        if upto == 0 || self.matcher.is_stopped() {
            return 0;
        }
        self.matcher.validate_tokens(&tokens[..upto]).unwrap_or(0)
    }

    /// The grammar is complete and allows nothing more: the output ends here.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Time spent computing each mask so far.
    pub fn mask_times(&self) -> &[Duration] {
        &self.mask_times
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn open_objects_are_closed_where_that_only_narrows_the_output() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "object", "properties": {"x": {"type": "string"}}},
                "b": {"type": "array", "items": {"type": "object", "properties": {"y": {}}}},
                "c": {"allOf": [{"properties": {"p": {}}}, {"properties": {"q": {}}}]},
                "d": {"type": "object", "properties": {"z": {}}, "additionalProperties": {"type": "number"}},
                "e": {"type": "object", "properties": {"k": {}}, "required": ["k", "undeclared"]},
                "f": {"enum": [{"properties": {}}]}
            },
            "$defs": {"g": {"properties": {"w": {}}}}
        });
        close_open_objects(&mut schema);
        let closed = |ptr: &str| {
            schema
                .pointer(ptr)
                .unwrap()
                .get("additionalProperties")
                .cloned()
        };
        assert_eq!(closed(""), Some(json!(false)));
        assert_eq!(closed("/properties/a"), Some(json!(false)));
        assert_eq!(closed("/properties/b/items"), Some(json!(false)));
        assert_eq!(closed("/$defs/g"), Some(json!(false)));
        // Combinator branches, explicit additionalProperties, undeclared required names and
        // instances are left as written.
        assert_eq!(closed("/properties/c/allOf/0"), None);
        assert_eq!(closed("/properties/d"), Some(json!({"type": "number"})));
        assert_eq!(closed("/properties/e"), None);
        assert_eq!(closed("/properties/f/enum/0"), None);
    }
}
