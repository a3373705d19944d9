//! The pipeline file: a declarative TOML description of what the intake does with a
//! message (see docs/INTAKE.md and examples/intake-pipeline.toml).
//!
//! [`Pipeline::load`] parses and validates the whole file before anything runs: the JSON
//! Schema compiles, every template and expression compiles, every lookup is parameterised
//! SQL whose `$N` placeholders match its parameters, every route names declared actions.
//! A file that does not validate is refused with its line and the reason.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};
use toml::Spanned;

/// A pipeline file that failed to load: where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {reason}", path.display())]
pub struct PipelineError {
    pub path: PathBuf,
    /// 1-based line of the offending value (the first line for whole-file problems).
    pub line: usize,
    pub reason: String,
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub path: PathBuf,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    /// Characters one model call reads of the message (`chunk_tokens` x 4): the draft
    /// stage's `document`, and what older files meant by `max_document_chars`.
    pub max_document_chars: usize,
    /// How much of a message the extraction reads, and in what pieces (`[limits]`
    /// `max_pages`, `max_document_tokens`, `chunk_tokens`).
    pub budget: crate::document::Budget,
    /// How long a stage may run before it fails like any other error (`[limits]
    /// stage_timeout_s`, and per stage `[limits.stage_timeouts]`), by stage name.
    pub timeouts: std::collections::BTreeMap<String, std::time::Duration>,
    pub extract: ExtractConfig,
    pub labels: Vec<Label>,
    pub crossref: Option<Crossref>,
    pub routes: Vec<Route>,
    pub draft: Option<DraftConfig>,
    pub actions: Vec<Action>,
    /// `[summary]`: the summarize stage summarises the message's documents.
    pub summary: Option<SummaryConfig>,
}

#[derive(Debug, Clone)]
pub struct SummaryConfig {
    /// The extraction model unless the section names one.
    pub model: String,
    pub model_line: usize,
    /// About how many words.
    pub words: usize,
}

#[derive(Debug, Clone)]
pub struct ExtractConfig {
    /// A model name as `/v1` knows it: a model this process serves, or a backend's model
    /// from verre.toml.
    pub model: String,
    /// The line of `model` in the file, for errors found at start.
    pub model_line: usize,
    pub system: String,
    /// minijinja template of the user turn; `document` is the message's text.
    pub prompt: String,
    pub max_tokens: usize,
    /// How many times the model is asked again, with the validation error, after an
    /// answer that does not validate.
    pub retries: u32,
    /// Penalty on tokens already in the prompt or the answer (1.0: none). Extraction copies
    /// values out of the document, so the default is none; the engine's loop breaker and
    /// the grammar's closing near the limit stop runaway answers instead.
    pub repetition_penalty: f32,
    /// The schema the model answers to: the file's schema with the labels merged in as
    /// required enum properties.
    pub schema: Value,
    /// Fields whose confidence is below this are marked for checking (`check_below`,
    /// between 0 and 1; default [`crate::evidence::DEFAULT_CHECK_BELOW`]).
    pub check_below: f32,
    /// How many of the reviewers' most similar corrected examples the prompt shows
    /// (`few_shot_from_corrections`; 0, the default: none).
    pub few_shot: usize,
    /// The embedding model that finds the most similar examples (`few_shot_model`), with
    /// its line in the file.
    pub few_shot_model: String,
    pub few_shot_model_line: usize,
    /// How similar an earlier document must be for its corrections to be shown
    /// (`few_shot_min_similarity`, a cosine; default [`DEFAULT_FEW_SHOT_MIN_SIMILARITY`]).
    pub few_shot_min_similarity: f32,
    /// Pick the examples field by field (`few_shot_per_field`): for each field reviewers
    /// corrected, its corrections in the N most similar documents that have one, however
    /// unlike this one (no similarity floor): a field's correction shows where such a value
    /// is printed and in what form, which carries over to other issuers' layouts.
    pub few_shot_per_field: bool,
    /// How each top-level field of a document read in several chunks is merged
    /// (`[extract.merge]`): labels by `max` (the worst value by the declared order),
    /// other fields by `first`, unless the file says otherwise.
    pub merge: std::collections::BTreeMap<String, crate::merge::MergeRule>,
}

impl ExtractConfig {
    /// The merge rule of a top-level field.
    pub fn merge_rule(&self, field: &str) -> crate::merge::MergeRule {
        self.merge
            .get(field)
            .copied()
            .unwrap_or(crate::merge::MergeRule::First)
    }
}

/// Documents of one layout (the same issuer's invoices) are nearer than this; documents of
/// different issuers are far below it (0.24–0.52 between the five eval invoices).
pub const DEFAULT_FEW_SHOT_MIN_SIMILARITY: f32 = 0.7;

#[derive(Debug, Clone)]
pub struct Label {
    pub name: String,
    pub values: Vec<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Crossref {
    /// The business database (`sqlite://...` or `postgres://...`), never verre's own.
    pub database: String,
    /// The line of `database` in the file, for errors found at start.
    pub database_line: usize,
    pub lookups: Vec<Lookup>,
}

#[derive(Debug, Clone)]
pub struct Lookup {
    pub name: String,
    /// SQL with `$1`, `$2`... placeholders, bound from `params`; never interpolated.
    pub sql: String,
    /// minijinja expressions over the context, one per placeholder.
    pub params: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// minijinja expression; a route without one always matches (a default).
    pub when: Option<String>,
    pub draft: bool,
    /// The model that drafts for this route instead of `[draft] model` (escalations to a
    /// larger model), with its line in the file.
    pub draft_model: Option<(String, usize)>,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DraftConfig {
    pub model: String,
    pub model_line: usize,
    pub system: String,
    pub prompt: String,
    pub max_tokens: usize,
    /// Sent to the model when not 1.0 (small models loop on free text without one).
    pub repetition_penalty: f32,
}

#[derive(Debug, Clone)]
pub enum ActionKind {
    /// A reply to the sender: `to` (default: Reply-To or From), `subject`, `body` templates.
    Reply {
        to: Option<String>,
        subject: String,
        body: String,
    },
    /// A webhook call: `url`, and a `payload` template that must render JSON.
    Webhook { url: String, payload: String },
}

#[derive(Debug, Clone)]
pub struct Action {
    pub name: String,
    pub kind: ActionKind,
    /// The line of its `url` (a webhook) or `kind` in the file, for errors found at start.
    pub line: usize,
}

// ---- the file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Spanned<String>,
    #[serde(default)]
    limits: Limits,
    extract: Spanned<ExtractFile>,
    #[serde(default)]
    labels: Vec<Spanned<LabelFile>>,
    crossref: Option<Spanned<CrossrefFile>>,
    #[serde(default)]
    route: Vec<Spanned<RouteFile>>,
    draft: Option<Spanned<DraftFile>>,
    #[serde(default)]
    action: Vec<Spanned<ActionFile>>,
    summary: Option<Spanned<SummaryFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SummaryFile {
    model: Option<Spanned<String>>,
    words: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Limits {
    max_attempts: Option<u32>,
    backoff_ms: Option<u64>,
    max_document_chars: Option<Spanned<usize>>,
    max_pages: Option<Spanned<usize>>,
    max_document_tokens: Option<Spanned<usize>>,
    chunk_tokens: Option<Spanned<usize>>,
    stage_timeout_s: Option<Spanned<u64>>,
    #[serde(default)]
    stage_timeouts: std::collections::BTreeMap<String, Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtractFile {
    model: Spanned<String>,
    system: Spanned<String>,
    prompt: Option<Spanned<String>>,
    max_tokens: Option<usize>,
    retries: Option<u32>,
    repetition_penalty: Option<Spanned<f32>>,
    schema: Option<Spanned<Value>>,
    schema_file: Option<Spanned<String>>,
    check_below: Option<Spanned<f32>>,
    few_shot_from_corrections: Option<usize>,
    few_shot_model: Option<Spanned<String>>,
    few_shot_min_similarity: Option<Spanned<f32>>,
    few_shot_per_field: Option<bool>,
    #[serde(default)]
    merge: std::collections::BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelFile {
    name: Spanned<String>,
    values: Spanned<Vec<String>>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CrossrefFile {
    database: Spanned<String>,
    #[serde(default)]
    lookup: Vec<Spanned<LookupFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupFile {
    name: Spanned<String>,
    sql: Spanned<String>,
    #[serde(default)]
    params: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    name: Spanned<String>,
    when: Option<Spanned<String>>,
    #[serde(default)]
    draft: bool,
    draft_model: Option<Spanned<String>>,
    #[serde(default)]
    actions: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DraftFile {
    model: Spanned<String>,
    system: Spanned<String>,
    prompt: Spanned<String>,
    max_tokens: Option<usize>,
    repetition_penalty: Option<Spanned<f32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionFile {
    name: Spanned<String>,
    kind: Spanned<String>,
    to: Option<Spanned<String>>,
    subject: Option<Spanned<String>>,
    body: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    payload: Option<Spanned<String>>,
}

/// A minijinja compilation, its panics (the expression lexer has one on `}}`) as errors.
fn guarded(compile: impl FnOnce() -> Result<(), minijinja::Error>) -> Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(compile)) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(panic) => Err(format!(
            "the template compiler failed ({})",
            crate::parse::panic_message(panic.as_ref())
        )),
    }
}

/// The minijinja environment every pipeline template and expression runs in: strict
/// undefined (a typo is an error, not an empty string), no auto-escaping, no loader (a
/// template cannot read files).
pub fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    env: minijinja::Environment<'static>,
}

impl Checker<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|b| *b == b'\n').count() + 1
    }

    fn err(&self, span: Range<usize>, reason: impl Into<String>) -> PipelineError {
        PipelineError {
            path: self.path.to_path_buf(),
            line: self.line(span),
            reason: reason.into(),
        }
    }

    fn template(&self, what: &str, t: &Spanned<String>) -> Result<String, PipelineError> {
        guarded(|| self.env.template_from_str(t.get_ref()).map(|_| ()))
            .map_err(|e| self.err(t.span(), format!("{what}: not a valid template: {e}")))?;
        Ok(t.get_ref().clone())
    }

    fn expression(&self, what: &str, t: &Spanned<String>) -> Result<String, PipelineError> {
        guarded(|| self.env.compile_expression(t.get_ref()).map(|_| ()))
            .map_err(|e| self.err(t.span(), format!("{what}: not a valid expression: {e}")))?;
        Ok(t.get_ref().clone())
    }

    fn name(
        &self,
        what: &str,
        n: &Spanned<String>,
        seen: &mut BTreeSet<String>,
    ) -> Result<String, PipelineError> {
        let s = n.get_ref();
        let ok = !s.is_empty()
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit());
        if !ok {
            return Err(self.err(
                n.span(),
                format!("{what} name {s:?}: use letters, digits and _ (not first)"),
            ));
        }
        if !seen.insert(s.clone()) {
            return Err(self.err(n.span(), format!("{what} {s:?} is declared twice")));
        }
        Ok(s.clone())
    }
}

impl Pipeline {
    /// Read, parse and validate a pipeline file.
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError {
            path: path.to_path_buf(),
            line: 1,
            reason: format!("cannot read the file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parse and validate pipeline text; `path` names it in errors and anchors
    /// `schema_file`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, PipelineError> {
        let c = Checker {
            path,
            text,
            env: template_env(),
        };
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| c.line(s)).unwrap_or(1);
            PipelineError {
                path: path.to_path_buf(),
                line,
                reason: e.message().to_string(),
            }
        })?;

        let limits = &file.limits;
        let max_attempts = limits.max_attempts.unwrap_or(3);
        if max_attempts == 0 {
            return Err(c.err(0..0, "limits.max_attempts must be at least 1"));
        }
        let timeouts = stage_timeouts(&c, limits)?;
        let budget = budget(&c, limits)?;

        // Labels first: they become part of the extraction schema.
        let mut names = BTreeSet::new();
        let mut labels = Vec::new();
        for l in &file.labels {
            let name = c.name("label", &l.get_ref().name, &mut names)?;
            let values = l.get_ref().values.get_ref().clone();
            if values.is_empty() {
                return Err(c.err(
                    l.get_ref().values.span(),
                    format!("label {name:?} has no values"),
                ));
            }
            labels.push(Label {
                name,
                values,
                description: l.get_ref().description.clone(),
            });
        }

        let ex = file.extract.get_ref();
        let mut schema = match (&ex.schema, &ex.schema_file) {
            (Some(s), None) => s.get_ref().clone(),
            (None, Some(f)) => {
                let p = path.parent().unwrap_or(Path::new(".")).join(f.get_ref());
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| c.err(f.span(), format!("schema_file {}: {e}", p.display())))?;
                serde_json::from_str(&text).map_err(|e| {
                    c.err(
                        f.span(),
                        format!("schema_file {}: not JSON: {e}", p.display()),
                    )
                })?
            }
            (Some(s), Some(_)) => {
                return Err(c.err(s.span(), "extract: give schema or schema_file, not both"));
            }
            (None, None) => {
                return Err(c.err(
                    file.extract.span(),
                    "extract: a schema (or schema_file) is required",
                ));
            }
        };
        let schema_span = ex
            .schema
            .as_ref()
            .map(|s| s.span())
            .or(ex.schema_file.as_ref().map(|s| s.span()))
            .unwrap_or(0..0);
        if schema["properties"].get(crate::DOCUMENT_KEY).is_some() {
            return Err(c.err(
                schema_span,
                format!(
                    "extract.schema: {:?} is verre's own key in the extraction (pages and what was not read)",
                    crate::DOCUMENT_KEY
                ),
            ));
        }
        if schema.get("type") != Some(&json!("object")) {
            return Err(c.err(
                schema_span,
                "extract.schema: the top level must be {type = \"object\"}",
            ));
        }
        for l in &labels {
            let obj = schema.as_object_mut().expect("checked: an object");
            let props = obj.entry("properties").or_insert_with(|| json!({}));
            let Some(props) = props.as_object_mut() else {
                return Err(c.err(schema_span, "extract.schema: properties must be a table"));
            };
            if props.contains_key(&l.name) {
                return Err(c.err(
                    schema_span,
                    format!("label {:?} is also a schema property", l.name),
                ));
            }
            let mut prop = json!({"type": "string", "enum": l.values});
            if let Some(d) = &l.description {
                prop["description"] = json!(d);
            }
            props.insert(l.name.clone(), prop);
            let required = obj.entry("required").or_insert_with(|| json!([]));
            match required.as_array_mut() {
                Some(r) => r.push(json!(l.name)),
                None => return Err(c.err(schema_span, "extract.schema: required must be a list")),
            }
        }
        jsonschema::validator_for(&schema).map_err(|e| {
            c.err(
                schema_span,
                format!("extract.schema: not a valid JSON Schema: {e}"),
            )
        })?;
        let extract = ExtractConfig {
            model: model_ref(&c, &ex.model)?,
            model_line: c.line(ex.model.span()),
            system: c.template("extract.system", &ex.system)?,
            prompt: match &ex.prompt {
                Some(p) => c.template("extract.prompt", p)?,
                None => "{{ document }}".to_string(),
            },
            max_tokens: ex.max_tokens.unwrap_or(256),
            retries: ex.retries.unwrap_or(2),
            repetition_penalty: penalty(&c, "extract", &ex.repetition_penalty, 1.0)?,
            merge: merge_rules(&c, ex, &schema, &labels)?,
            schema,
            check_below: match &ex.check_below {
                None => crate::evidence::DEFAULT_CHECK_BELOW,
                Some(t) if (0.0..=1.0).contains(t.get_ref()) => *t.get_ref(),
                Some(t) => {
                    return Err(c.err(
                        t.span(),
                        "extract.check_below: a probability, between 0 and 1",
                    ));
                }
            },
            few_shot: ex.few_shot_from_corrections.unwrap_or(0),
            few_shot_model: match &ex.few_shot_model {
                Some(m) => model_ref(&c, m)?,
                None => "minilm-l6".to_string(),
            },
            few_shot_min_similarity: match &ex.few_shot_min_similarity {
                None => DEFAULT_FEW_SHOT_MIN_SIMILARITY,
                Some(t) if (-1.0..=1.0).contains(t.get_ref()) => *t.get_ref(),
                Some(t) => {
                    return Err(c.err(
                        t.span(),
                        "extract.few_shot_min_similarity: a cosine, between -1 and 1",
                    ));
                }
            },
            few_shot_per_field: ex.few_shot_per_field.unwrap_or(false),
            few_shot_model_line: c.line(
                ex.few_shot_model
                    .as_ref()
                    .map_or(file.extract.span(), |m| m.span()),
            ),
        };

        let crossref = match &file.crossref {
            None => None,
            Some(x) => {
                let x_ref = x.get_ref();
                let db = x_ref.database.get_ref();
                if !(db.starts_with("sqlite:")
                    || db.starts_with("postgres://")
                    || db.starts_with("postgresql://"))
                {
                    return Err(c.err(
                        x_ref.database.span(),
                        "crossref.database: expected sqlite://PATH or postgres://...",
                    ));
                }
                let mut names = BTreeSet::new();
                let mut lookups = Vec::new();
                for l in &x_ref.lookup {
                    let l = l.get_ref();
                    let name = c.name("lookup", &l.name, &mut names)?;
                    let sql = l.sql.get_ref();
                    if sql.contains("{{") || sql.contains("{%") {
                        return Err(c.err(l.sql.span(), format!(
                            "lookup {name:?}: the SQL contains a template; pass values as params and use $1, $2... (values are bound, never interpolated)"
                        )));
                    }
                    let used = placeholders(sql);
                    let expected: BTreeSet<usize> = (1..=l.params.len()).collect();
                    if used != expected {
                        return Err(c.err(l.sql.span(), format!(
                            "lookup {name:?}: the SQL uses placeholders {:?} but {} param(s) are given (expected $1..${})",
                            used.iter().map(|n| format!("${n}")).collect::<Vec<_>>(),
                            l.params.len(),
                            l.params.len()
                        )));
                    }
                    let params = l
                        .params
                        .iter()
                        .map(|p| c.expression(&format!("lookup {name:?} param"), p))
                        .collect::<Result<_, _>>()?;
                    lookups.push(Lookup {
                        name,
                        sql: sql.clone(),
                        params,
                    });
                }
                Some(Crossref {
                    database: business_db_url(path, db),
                    database_line: c.line(x_ref.database.span()),
                    lookups,
                })
            }
        };

        let mut names = BTreeSet::new();
        let mut actions = Vec::new();
        for a in &file.action {
            let a = a.get_ref();
            let name = c.name("action", &a.name, &mut names)?;
            let need =
                |f: &Option<Spanned<String>>, field: &str| -> Result<String, PipelineError> {
                    match f {
                        Some(t) => c.template(&format!("action {name:?} {field}"), t),
                        None => Err(c.err(
                            a.kind.span(),
                            format!(
                                "action {name:?}: {field} is required for kind {:?}",
                                a.kind.get_ref()
                            ),
                        )),
                    }
                };
            let line = c.line(a.url.as_ref().map_or(a.kind.span(), |u| u.span()));
            let kind = match a.kind.get_ref().as_str() {
                "reply" => ActionKind::Reply {
                    to: a.to.as_ref().map(|t| c.template(&format!("action {name:?} to"), t)).transpose()?,
                    subject: need(&a.subject, "subject")?,
                    body: need(&a.body, "body")?,
                },
                "webhook" => {
                    let url = need(&a.url, "url")?;
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(c.err(a.url.as_ref().map(|u| u.span()).unwrap_or(0..0), format!("action {name:?}: url must be http(s)://")));
                    }
                    ActionKind::Webhook {
                        url,
                        payload: need(&a.payload, "payload")?,
                    }
                }
                other => return Err(c.err(a.kind.span(), format!("action {name:?}: unknown kind {other:?} (expected \"reply\" or \"webhook\")"))),
            };
            actions.push(Action { name, kind, line });
        }

        let mut names = BTreeSet::new();
        let mut routes = Vec::new();
        for r in &file.route {
            let r = r.get_ref();
            let name = c.name("route", &r.name, &mut names)?;
            for a in &r.actions {
                if !actions.iter().any(|x| &x.name == a.get_ref()) {
                    return Err(c.err(
                        a.span(),
                        format!(
                            "route {name:?}: no action named {:?} is declared",
                            a.get_ref()
                        ),
                    ));
                }
            }
            if r.draft && file.draft.is_none() {
                return Err(c.err(
                    r.name.span(),
                    format!("route {name:?} asks for a draft but there is no [draft] section"),
                ));
            }
            let draft_model = match &r.draft_model {
                None => None,
                Some(m) if !r.draft => {
                    return Err(c.err(
                        m.span(),
                        format!("route {name:?}: draft_model without draft = true"),
                    ));
                }
                Some(m) => Some((model_ref(&c, m)?, c.line(m.span()))),
            };
            routes.push(Route {
                name,
                when: r
                    .when
                    .as_ref()
                    .map(|w| c.expression("route when", w))
                    .transpose()?,
                draft: r.draft,
                draft_model,
                actions: r.actions.iter().map(|a| a.get_ref().clone()).collect(),
            });
        }

        let draft = match &file.draft {
            None => None,
            Some(d) => {
                let d = d.get_ref();
                Some(DraftConfig {
                    model: model_ref(&c, &d.model)?,
                    model_line: c.line(d.model.span()),
                    system: c.template("draft.system", &d.system)?,
                    prompt: c.template("draft.prompt", &d.prompt)?,
                    max_tokens: d.max_tokens.unwrap_or(200),
                    repetition_penalty: penalty(&c, "draft", &d.repetition_penalty, 1.15)?,
                })
            }
        };

        let summary = match &file.summary {
            None => None,
            Some(sm) => {
                let sm = sm.get_ref();
                let words = match &sm.words {
                    Some(w) if !(20..=5000).contains(w.get_ref()) => {
                        return Err(c.err(w.span(), "summary.words: between 20 and 5000"));
                    }
                    Some(w) => *w.get_ref(),
                    None => 200,
                };
                Some(match &sm.model {
                    Some(m) => SummaryConfig {
                        model: model_ref(&c, m)?,
                        model_line: c.line(m.span()),
                        words,
                    },
                    None => SummaryConfig {
                        model: extract.model.clone(),
                        model_line: extract.model_line,
                        words,
                    },
                })
            }
        };

        Ok(Pipeline {
            name: file.name.get_ref().clone(),
            path: path.to_path_buf(),
            max_attempts,
            backoff_ms: limits.backoff_ms.unwrap_or(1000),
            max_document_chars: budget.chunk_tokens * 4,
            budget,
            timeouts,
            extract,
            labels,
            crossref,
            routes,
            draft,
            actions,
            summary,
        })
    }

    pub fn action(&self, name: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.name == name)
    }

    /// How long `stage` may run.
    pub fn timeout(&self, stage: &str) -> std::time::Duration {
        self.timeouts
            .get(stage)
            .copied()
            .unwrap_or(DEFAULT_STAGE_TIMEOUT)
    }

    /// Every model the pipeline calls, each once, with the line that first names it.
    pub fn models(&self) -> Vec<(String, usize)> {
        let mut models: Vec<(String, usize)> =
            vec![(self.extract.model.clone(), self.extract.model_line)];
        if self.extract.few_shot > 0 {
            models.push((
                self.extract.few_shot_model.clone(),
                self.extract.few_shot_model_line,
            ));
        }
        let drafts = self
            .draft
            .iter()
            .map(|d| (d.model.clone(), d.model_line))
            .chain(self.summary.iter().map(|s| (s.model.clone(), s.model_line)));
        let routes = self.routes.iter().filter_map(|r| r.draft_model.clone());
        for (name, line) in drafts.chain(routes) {
            if !models.iter().any(|(seen, _)| *seen == name) {
                models.push((name, line));
            }
        }
        models
    }

    /// Check at start that every model the pipeline names resolves (`resolves` says
    /// whether `/v1` knows a name): the first that does not is an error with its line.
    pub fn check_models(&self, resolves: impl Fn(&str) -> bool) -> Result<(), PipelineError> {
        match self.models().into_iter().find(|(name, _)| !resolves(name)) {
            None => Ok(()),
            Some((name, line)) => Err(PipelineError {
                path: self.path.clone(),
                line,
                reason: format!(
                    "model {name:?} is neither served by this process nor a model of a [[backend]] in verre.toml"
                ),
            }),
        }
    }

    /// Check at start that every webhook action may send where its `url` points
    /// (`allowed` says why not: verre.toml's declared targets and egress policy); the
    /// first that may not is an error with its line.
    pub fn check_webhooks(
        &self,
        allowed: impl Fn(&str) -> Result<(), String>,
    ) -> Result<(), PipelineError> {
        for action in &self.actions {
            if let ActionKind::Webhook { url, .. } = &action.kind
                && let Err(why) = allowed(url)
            {
                return Err(PipelineError {
                    path: self.path.clone(),
                    line: action.line,
                    reason: format!("action {:?}: {why}", action.name),
                });
            }
        }
        Ok(())
    }
}

/// A stage's time limit when the file sets none: generous for a 1.5B model drafting on two
/// cores, short enough that a hung backend frees its worker.
pub const DEFAULT_STAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

fn stage_timeouts(
    c: &Checker,
    limits: &Limits,
) -> Result<std::collections::BTreeMap<String, std::time::Duration>, PipelineError> {
    let seconds = |what: &str, s: &Spanned<u64>| match *s.get_ref() {
        0 => Err(c.err(s.span(), format!("{what}: at least 1 second"))),
        n => Ok(std::time::Duration::from_secs(n)),
    };
    let default = match &limits.stage_timeout_s {
        Some(s) => seconds("limits.stage_timeout_s", s)?,
        None => DEFAULT_STAGE_TIMEOUT,
    };
    let mut timeouts: std::collections::BTreeMap<String, std::time::Duration> = crate::STAGES
        .iter()
        .map(|s| (s.to_string(), default))
        .collect();
    for (stage, s) in &limits.stage_timeouts {
        if !crate::STAGES.contains(&stage.as_str()) {
            return Err(c.err(
                s.span(),
                format!(
                    "limits.stage_timeouts: no stage named {stage:?} (the stages: {})",
                    crate::STAGES.join(", ")
                ),
            ));
        }
        timeouts.insert(
            stage.clone(),
            seconds(&format!("limits.stage_timeouts.{stage}"), s)?,
        );
    }
    Ok(timeouts)
}

/// The reading budget of `[limits]`. `max_document_chars` (older files) sets the size of
/// one chunk, `chunk_tokens = max_document_chars / 4`, as it bounded what one call read.
fn budget(c: &Checker, limits: &Limits) -> Result<crate::document::Budget, PipelineError> {
    let positive = |what: &str, v: &Option<Spanned<usize>>| match v {
        Some(n) if *n.get_ref() == 0 => Err(c.err(n.span(), format!("limits.{what}: at least 1"))),
        Some(n) => Ok(Some(*n.get_ref())),
        None => Ok(None),
    };
    let chars = positive("max_document_chars", &limits.max_document_chars)?;
    let chunk_tokens = match (&limits.chunk_tokens, chars) {
        (Some(t), Some(_)) => {
            return Err(c.err(
                t.span(),
                "limits: give chunk_tokens or max_document_chars (older files), not both",
            ));
        }
        (Some(_), None) => positive("chunk_tokens", &limits.chunk_tokens)?.unwrap_or(1500),
        (None, Some(chars)) => chars.div_ceil(4),
        (None, None) => DEFAULT_CHUNK_TOKENS,
    };
    if let Some(t) = &limits.chunk_tokens
        && *t.get_ref() < 128
    {
        return Err(c.err(t.span(), "limits.chunk_tokens: at least 128"));
    }
    Ok(crate::document::Budget {
        max_pages: positive("max_pages", &limits.max_pages)?.unwrap_or(DEFAULT_MAX_PAGES),
        max_tokens: positive("max_document_tokens", &limits.max_document_tokens)?
            .unwrap_or(DEFAULT_MAX_DOCUMENT_TOKENS),
        chunk_tokens,
    })
}

/// Tokens one extraction call reads when the file does not say (about two dense pages).
pub const DEFAULT_CHUNK_TOKENS: usize = 1500;
/// Pages read per message when the file does not say.
pub const DEFAULT_MAX_PAGES: usize = 100;
/// Tokens read per message, all chunks together, when the file does not say.
pub const DEFAULT_MAX_DOCUMENT_TOKENS: usize = 100_000;

/// `[extract.merge]`: a known rule for a declared top-level field; `union` only for lists.
/// Labels default to `max` (the worst value by the declared order).
fn merge_rules(
    c: &Checker,
    ex: &ExtractFile,
    schema: &Value,
    labels: &[Label],
) -> Result<std::collections::BTreeMap<String, crate::merge::MergeRule>, PipelineError> {
    use crate::merge::MergeRule;
    let mut rules: std::collections::BTreeMap<String, MergeRule> = labels
        .iter()
        .map(|l| (l.name.clone(), MergeRule::Max))
        .collect();
    for (field, rule) in &ex.merge {
        let Some(prop) = schema["properties"].get(field) else {
            return Err(c.err(
                rule.span(),
                format!("extract.merge: {field:?} is not a property of the schema"),
            ));
        };
        let parsed = MergeRule::parse(rule.get_ref()).ok_or_else(|| {
            c.err(
                rule.span(),
                format!(
                    "extract.merge.{field}: unknown rule {:?} (expected one of {})",
                    rule.get_ref(),
                    MergeRule::NAMES.join(", ")
                ),
            )
        })?;
        let is_list = prop["type"] == "array"
            || prop["type"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("array")));
        if parsed == MergeRule::Union && !is_list {
            return Err(c.err(
                rule.span(),
                format!("extract.merge.{field}: union needs a list (type = \"array\")"),
            ));
        }
        rules.insert(field.clone(), parsed);
    }
    Ok(rules)
}

fn penalty(
    c: &Checker,
    section: &str,
    value: &Option<Spanned<f32>>,
    default: f32,
) -> Result<f32, PipelineError> {
    match value {
        None => Ok(default),
        Some(p) if (1.0..=2.0).contains(p.get_ref()) => Ok(*p.get_ref()),
        Some(p) => Err(c.err(
            p.span(),
            format!("{section}.repetition_penalty: between 1.0 (none) and 2.0"),
        )),
    }
}

/// The business database as the crossref stage opens it: a relative SQLite path is
/// relative to the pipeline file, and SQLite is opened read-only (a lookup never writes,
/// and a missing file is an error rather than a new empty database).
fn business_db_url(pipeline: &Path, url: &str) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_string();
    };
    let (file, query) = rest.split_once('?').unwrap_or((rest, ""));
    let file = Path::new(file);
    let file = if file.is_relative() {
        pipeline.parent().unwrap_or(Path::new(".")).join(file)
    } else {
        file.to_path_buf()
    };
    let query = if query.is_empty() {
        "mode=ro".to_string()
    } else {
        query.to_string()
    };
    format!("sqlite://{}?{query}", file.display())
}

fn model_ref(c: &Checker, m: &Spanned<String>) -> Result<String, PipelineError> {
    if m.get_ref().trim().is_empty() {
        return Err(c.err(
            m.span(),
            "model: a store name (smollm2-135m) or a path to a .gguf file",
        ));
    }
    Ok(m.get_ref().clone())
}

/// The `$N` placeholders an SQL text uses (outside quoted strings).
fn placeholders(sql: &str) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let b = sql.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let ch = b[i];
        match quote {
            Some(q) if ch == q => quote = None,
            Some(_) => {}
            None if ch == b'\'' || ch == b'"' => quote = Some(ch),
            None if ch == b'$' => {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && b[end].is_ascii_digit() {
                    end += 1;
                }
                if end > start
                    && let Ok(n) = sql[start..end].parse()
                {
                    out.insert(n);
                }
                i = end.max(i + 1);
                continue;
            }
            None => {}
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/intake-pipeline.toml");

    fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        Pipeline::parse(Path::new("p.toml"), text)
    }

    /// Found by fuzzing (fuzz/regressions/pipeline/): minijinja's expression lexer panics
    /// on `}}` ("empty lexer stack"); the file is refused with its line instead.
    #[test]
    fn an_expression_that_panics_minijinja_is_refused_with_its_line() {
        for (key, line) in [("when = \"}}t\"", 8), ("when = \"a }} b\"", 8)] {
            let text = format!(
                "name = \"x\"\n[extract]\nmodel = \"m\"\nsystem = \"s\"\nschema = {{ type = \"object\" }}\n\n[[route]]\n{key}\nname = \"r\"\n"
            );
            let e = parse(&text).unwrap_err();
            assert_eq!(e.line, line, "{e}");
            assert!(e.reason.contains("not a valid expression"), "{e}");
        }
        let fuzzed =
            include_str!("../../../fuzz/regressions/pipeline/expression-closing-braces.toml");
        assert!(parse(fuzzed).is_err());
    }

    #[test]
    fn the_example_validates_and_labels_join_the_schema() {
        let p = parse(EXAMPLE).unwrap();
        assert!(!p.labels.is_empty());
        let props = &p.extract.schema["properties"];
        for l in &p.labels {
            assert_eq!(props[&l.name]["enum"], json!(l.values));
        }
        assert!(p.crossref.is_some() && p.draft.is_some() && !p.routes.is_empty());
    }

    #[test]
    fn a_webhook_that_may_not_send_is_refused_with_its_line() {
        let p = parse(EXAMPLE).unwrap();
        let line = EXAMPLE
            .lines()
            .position(|l| l.starts_with("url = \"https://crm.internal.example"))
            .unwrap()
            + 1;
        assert!(p.check_webhooks(|_| Ok(())).is_ok());
        let e = p
            .check_webhooks(|url| Err(format!("{url} is not allowed")))
            .unwrap_err();
        assert_eq!(e.line, line);
        assert_eq!(
            e.to_string(),
            format!(
                "p.toml:{line}: action \"crm_ticket\": https://crm.internal.example/hooks/intake is not allowed"
            )
        );
    }

    #[test]
    fn schema_properties_keep_the_order_written() {
        let p = parse(include_str!("../../../examples/invoice-pipeline.toml")).unwrap();
        let keys: Vec<&String> = p.extract.schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(
            keys,
            ["invoice_number", "date", "amount", "currency", "issuer"]
        );
    }

    fn error_of(text: &str) -> PipelineError {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    const BASE: &str = r#"name = "t"
[extract]
model = "smollm2-135m"
system = "Extract."
schema = { type = "object", properties = { a = { type = "string" } } }
"#;

    #[test]
    fn errors_name_the_line_and_the_reason() {
        let e = error_of(&format!(
            "{BASE}[[route]]\nname = \"r\"\nwhen = \"extract.a ==\"\n"
        ));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.reason.contains("not a valid expression"), "{e}");

        let e = error_of(&format!(
            "{BASE}[crossref]\ndatabase = \"sqlite://b.db\"\n[[crossref.lookup]]\nname = \"c\"\nsql = \"SELECT * FROM c WHERE e = $1 AND f = $2\"\nparams = [\"message.from\"]\n"
        ));
        assert_eq!(e.line, 10, "{e}");
        assert!(e.reason.contains("placeholders"), "{e}");

        let e = error_of(&format!(
            "{BASE}[crossref]\ndatabase = \"sqlite://b.db\"\n[[crossref.lookup]]\nname = \"c\"\nsql = \"SELECT * FROM c WHERE e = '{{{{ message.from }}}}'\"\n"
        ));
        assert!(e.reason.contains("never interpolated"), "{e}");

        let e = error_of(&format!(
            "{BASE}[[route]]\nname = \"r\"\nactions = [\"nope\"]\n"
        ));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.reason.contains("no action named"), "{e}");

        let e = error_of(&format!("{BASE}bogus = 1\n"));
        assert_eq!(e.line, 6, "{e}");
        assert!(e.reason.contains("unknown field"), "{e}");

        let e = error_of(&BASE.replace("type = \"string\"", "type = \"strang\""));
        assert_eq!(e.line, 5, "{e}");
        assert!(e.reason.contains("JSON Schema"), "{e}");

        let e = error_of(&format!("{BASE}[[labels]]\nname = \"x\"\nvalues = []\n"));
        assert_eq!(e.line, 8, "{e}");

        let e = error_of("name = \"t\"\n[extract\n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.to_string().starts_with("p.toml:2: "), "{e}");
    }

    #[test]
    fn budgets_and_merge_rules_are_read_and_checked() {
        use crate::merge::MergeRule;
        let p = parse(&format!(
            "{BASE}[[labels]]\nname = \"level\"\nvalues = [\"low\", \"high\"]\n"
        ))
        .unwrap();
        assert_eq!(p.budget.chunk_tokens, DEFAULT_CHUNK_TOKENS);
        assert_eq!(p.budget.max_pages, DEFAULT_MAX_PAGES);
        assert_eq!(
            p.extract.merge_rule("level"),
            MergeRule::Max,
            "labels: the worst wins"
        );
        assert_eq!(p.extract.merge_rule("a"), MergeRule::First);

        // Older files: max_document_chars is the size of one call.
        let old = BASE.replace(
            "name = \"t\"\n",
            "name = \"t\"\n[limits]\nmax_document_chars = 8000\n",
        );
        let p = parse(&old).unwrap();
        assert_eq!((p.budget.chunk_tokens, p.max_document_chars), (2000, 8000));

        let new = BASE.replace(
            "name = \"t\"\n",
            "name = \"t\"\n[limits]\nmax_pages = 40\nmax_document_tokens = 9000\nchunk_tokens = 700\n",
        );
        let p = parse(&format!("{new}merge = {{ a = \"most_frequent\" }}\n")).unwrap();
        assert_eq!(
            (
                p.budget.max_pages,
                p.budget.max_tokens,
                p.budget.chunk_tokens
            ),
            (40, 9000, 700)
        );
        assert_eq!(p.extract.merge_rule("a"), MergeRule::MostFrequent);

        let e = error_of(&format!("{BASE}merge = {{ a = \"average\" }}\n"));
        assert_eq!(e.line, 6, "{e}");
        assert!(e.reason.contains("unknown rule"), "{e}");
        let e = error_of(&format!("{BASE}merge = {{ a = \"union\" }}\n"));
        assert!(e.reason.contains("union needs a list"), "{e}");
        let e = error_of(&format!("{BASE}merge = {{ b = \"first\" }}\n"));
        assert!(e.reason.contains("not a property"), "{e}");
        let both = BASE.replace(
            "name = \"t\"\n",
            "name = \"t\"\n[limits]\nmax_document_chars = 8000\nchunk_tokens = 700\n",
        );
        assert!(error_of(&both).reason.contains("not both"));
        let e = error_of(&BASE.replace(
            "properties = { a",
            "properties = { _document = { type = \"object\" }, a",
        ));
        assert!(e.reason.contains("verre's own key"), "{e}");
    }

    #[test]
    fn evidence_and_few_shot_options_are_read_and_checked() {
        let p = parse(BASE).unwrap();
        assert_eq!(
            (p.extract.check_below, p.extract.few_shot),
            (crate::evidence::DEFAULT_CHECK_BELOW, 0)
        );
        assert_eq!(p.models().len(), 1, "no embedding model unless asked");
        let text = BASE.replace(
            "system = \"Extract.\"",
            "system = \"Extract.\"\ncheck_below = 0.8\nfew_shot_from_corrections = 3",
        );
        let p = parse(&text).unwrap();
        assert_eq!((p.extract.check_below, p.extract.few_shot), (0.8, 3));
        assert!(!p.extract.few_shot_per_field, "per document unless asked");
        assert_eq!(p.models()[1], ("minilm-l6".to_string(), 2));
        let p = parse(&text.replace("= 3", "= 3\nfew_shot_per_field = true")).unwrap();
        assert!(p.extract.few_shot_per_field);
        let e = error_of(&BASE.replace(
            "system = \"Extract.\"",
            "system = \"Extract.\"\ncheck_below = 1.5",
        ));
        assert_eq!(e.line, 5, "{e}");
        assert!(e.reason.contains("between 0 and 1"), "{e}");
    }

    #[test]
    fn business_sqlite_paths_are_relative_to_the_pipeline_and_read_only() {
        assert_eq!(
            business_db_url(Path::new("/p/x.toml"), "sqlite://crm.db"),
            "sqlite:///p/crm.db?mode=ro"
        );
        assert_eq!(
            business_db_url(Path::new("/p/x.toml"), "sqlite:///abs/crm.db"),
            "sqlite:///abs/crm.db?mode=ro"
        );
        assert_eq!(
            business_db_url(Path::new("x.toml"), "postgres://h/db"),
            "postgres://h/db"
        );
    }

    #[test]
    fn placeholders_skip_quoted_text() {
        assert_eq!(
            placeholders("SELECT '$3' FROM t WHERE a = $1 AND b = $2"),
            BTreeSet::from([1, 2])
        );
        assert!(placeholders("SELECT 1").is_empty());
    }
}
