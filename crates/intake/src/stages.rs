//! The stages, each a function from what the store holds about a message to the effects
//! of the stage (written by the worker, atomically with the job's completion).
//!
//! `parse -> extract -> summarize -> crossref -> route -> draft -> stage`

use std::sync::Arc;

use serde_json::{Map, Value, json};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Column, Row, ValueRef};
use tokio::sync::OnceCell;
use verre_store::{NewAction, PiiTag, StageEffects, Store};

use crate::backend::{CompleteRequest, ExtractError, ExtractRequest, ModelApi, validate};
use crate::isolation::MailParser;
use crate::parse::{ParseError, attachments_text, body_text, document_text};
use crate::pipeline::{ActionKind, Pipeline, template_env};

/// The stages in order.
pub const STAGES: [&str; 7] = [
    "parse",
    "extract",
    "summarize",
    "crossref",
    "route",
    "draft",
    "stage",
];

/// The stage after `stage`, or None after the last.
pub fn next_stage(stage: &str) -> Option<&'static str> {
    let i = STAGES.iter().position(|s| *s == stage)?;
    STAGES.get(i + 1).copied()
}

/// A stage that did not complete. `permanent` failures (the same input would fail the same
/// way: a message that is not MIME, a template that does not render) skip the remaining
/// attempts and go straight to quarantine.
#[derive(Debug)]
pub struct StageError {
    pub permanent: bool,
    pub reason: String,
}

impl StageError {
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            permanent: true,
            reason: reason.into(),
        }
    }
    pub fn transient(reason: impl Into<String>) -> Self {
        Self {
            permanent: false,
            reason: reason.into(),
        }
    }
}

impl From<anyhow::Error> for StageError {
    fn from(e: anyhow::Error) -> Self {
        StageError::transient(format!("{e:#}"))
    }
}

/// Where PII detection plugs in (the `verre-pii` crate): given one part's text, the spans
/// it finds. Kinds are short names: `email`, `phone`, `iban`, `card`, `ip`.
pub trait PiiTagger: Send + Sync {
    fn tag(&self, text: &str) -> Vec<PiiSpan>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiiSpan {
    pub kind: String,
    /// Byte offsets into the text.
    pub start: usize,
    pub end: usize,
}

/// What the stages share: the pipeline, the model API, the optional PII tagger and the
/// business database (connected on first use).
pub struct StageRunner {
    pub store: Store,
    pub pipeline: Arc<Pipeline>,
    /// Where the `extract` and `draft` stages send the pipeline's model names.
    pub models: Arc<dyn ModelApi>,
    pub pii: Option<Arc<dyn PiiTagger>>,
    /// How raw messages are parsed: in a child process under limits when a `verre`
    /// binary is known (see [`crate::isolation`]).
    pub parser: MailParser,
    business_db: OnceCell<AnyPool>,
}

type StageResult = Result<StageEffects, StageError>;

impl StageRunner {
    pub fn new(
        store: Store,
        pipeline: Arc<Pipeline>,
        models: Arc<dyn ModelApi>,
        pii: Option<Arc<dyn PiiTagger>>,
    ) -> Self {
        Self {
            store,
            pipeline,
            models,
            pii,
            parser: MailParser::from_env_or_defaults(),
            business_db: OnceCell::new(),
        }
    }

    /// The same runner, parsing raw messages with `parser`.
    pub fn with_mail_parser(mut self, parser: MailParser) -> Self {
        self.parser = parser;
        self
    }

    /// Check at start what can be checked before any mail is touched: the business
    /// database opens (and answers a query). The error names the pipeline file and line.
    pub async fn check_at_start(&self) -> Result<(), crate::PipelineError> {
        let Some(x) = &self.pipeline.crossref else {
            return Ok(());
        };
        let fail = |reason: String| crate::PipelineError {
            path: self.pipeline.path.clone(),
            line: x.database_line,
            reason,
        };
        let pool = self
            .business_db(&x.database)
            .await
            .map_err(|e| fail(e.reason))?;
        sqlx::query("SELECT 1").fetch_one(pool).await.map_err(|e| {
            fail(format!(
                "the business database {} does not answer: {e}",
                verre_store::redact(&x.database)
            ))
        })?;
        Ok(())
    }

    pub async fn run(&self, stage: &str, message_id: i64) -> StageResult {
        match stage {
            "parse" => self.parse(message_id).await,
            "extract" => self.extract(message_id).await,
            "summarize" => self.summarize(message_id).await,
            "crossref" => self.crossref(message_id).await,
            "route" => self.route(message_id).await,
            "draft" => self.draft(message_id).await,
            "stage" => self.stage(message_id).await,
            other => Err(StageError::permanent(format!(
                "unknown stage {other:?} (from a newer verre?)"
            ))),
        }
    }

    /// A stage's stored output as templates see it (the extraction without
    /// [`crate::DOCUMENT_KEY`]).
    async fn output(&self, message_id: i64, stage: &str) -> Result<Value, StageError> {
        let mut output = self
            .store
            .stage_output(message_id, stage)
            .await?
            .ok_or_else(|| StageError::permanent(format!("the {stage} result is missing")))?;
        if let Some(fields) = output.as_object_mut() {
            fields.remove(crate::DOCUMENT_KEY);
        }
        Ok(output)
    }

    async fn parse(&self, message_id: i64) -> StageResult {
        let raw = self.store.raw_message(message_id).await?;
        let pii = self.pii.clone();
        let parser = self.parser.clone();
        // PDF text extraction is CPU work (and waiting for the parser process blocks): off
        // the async threads.
        let parsed = tokio::task::spawn_blocking(move || {
            let parsed = parser.parse(&raw)?;
            let mut tags = Vec::new();
            if let Some(tagger) = pii {
                for p in &parsed.parts {
                    if let Some(text) = &p.text {
                        tags.extend(tagger.tag(text).into_iter().map(|s| PiiTag {
                            part_idx: Some(p.idx),
                            kind: s.kind,
                            start: s.start as i64,
                            end: s.end as i64,
                        }));
                    }
                }
            }
            Ok::<_, ParseError>((parsed, tags))
        })
        .await
        .map_err(|e| StageError::permanent(format!("the parser crashed: {e}")))?;
        let (parsed, pii_tags) = parsed.map_err(|e| StageError::permanent(e.to_string()))?;
        let unsupported: Vec<Value> = parsed
            .parts
            .iter()
            .filter(|p| !p.supported)
            .map(|p| json!({"part": p.idx, "filename": p.filename, "content_type": p.content_type, "note": p.note}))
            .collect();
        let mut output = parsed.fields.clone();
        output["parts"] = json!(parsed.parts.len());
        output["unsupported"] = json!(unsupported);
        Ok(StageEffects {
            output,
            parts: parsed.parts,
            pii_tags,
            ..Default::default()
        })
    }

    async fn extract(&self, message_id: i64) -> StageResult {
        let parts = self.store.parts(message_id).await?;
        let message = self.message_context(message_id).await?;
        let pages = crate::document::message_pages(&parts);
        let plan = crate::document::plan(&pages, &self.pipeline.budget);
        if plan.chunks.len() > 1 || !plan.unread.is_empty() {
            return self.extract_chunks(&message, &plan).await;
        }
        // The whole message fits one call (the plan says so): read as it always was.
        let max = usize::MAX;
        let ex = &self.pipeline.extract;
        let document = document_text(&parts, max);
        let ctx = json!({
            "document": &document,
            "body": body_text(&parts, max),
            "attachments": attachments_text(&parts, max),
            "message": message,
        });
        let mut system = render(&ex.system, &ctx, "extract.system")?;
        let mut shown = Vec::new();
        if ex.few_shot > 0 {
            let examples = crate::fewshot::examples(
                &self.store,
                self.models.as_ref(),
                &ex.few_shot_model,
                message_id,
                &document,
                &ex.schema,
                crate::fewshot::Selection {
                    n: ex.few_shot,
                    min_similarity: ex.few_shot_min_similarity,
                    per_field: ex.few_shot_per_field,
                },
            )
            .await
            .map_err(|e| match e {
                crate::fewshot::ExamplesError::Embed(e) => {
                    call_failed("few-shot embedding", &ex.few_shot_model, e)
                }
                crate::fewshot::ExamplesError::Store(e) => e.into(),
            })?;
            system.push_str(&crate::fewshot::prompt_section(
                &examples,
                ex.few_shot_per_field,
            ));
            // Kept with the evidence: why a later extraction answered as it did.
            shown = examples
                .iter()
                .map(|e| json!({"message": e.message_id, "field": e.field, "similarity": e.similarity}))
                .collect();
        }
        let prompt = render(&ex.prompt, &ctx, "extract.prompt")?;
        let extraction = self
            .extract_one(&system, &prompt, &ex.schema)
            .await?
            .map_err(|e| StageError::permanent(e.to_string()))?;
        // Never store an extraction that does not validate, whatever the backend claims.
        validate(&ex.schema, &extraction.value)
            .map_err(|e| StageError::permanent(format!("the extraction does not validate: {e}")))?;
        let evidence = crate::evidence::evidence(
            &document,
            &extraction.value,
            extraction.answer.as_ref(),
            ex.check_below,
        );
        let mut evidence = json!(evidence);
        if ex.few_shot > 0 {
            evidence["few_shot"] = json!(shown);
        }
        let mut output = extraction.value;
        // Values of a paged document keep their page.
        if let Some(chunk) = plan.chunks.first()
            && chunk.content().any(|p| p.number.is_some())
        {
            let sources: Map<String, Value> = output
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), json!(crate::merge::locate(v, chunk))))
                .collect();
            output[crate::DOCUMENT_KEY] = json!({
                "chunks": 1,
                "pages_read": plan.pages_read,
                "pages_total": plan.pages_total,
                "unread": [],
                "sources": sources,
            });
        }
        Ok(StageEffects {
            output,
            prompt_tokens: extraction.prompt_tokens as i64,
            completion_tokens: extraction.completion_tokens as i64,
            evidence: Some(evidence),
            ..Default::default()
        })
    }

    /// One extraction call under `schema`: Ok(Err) when the model never answered with a
    /// valid value (the same input fails the same way), Err when the call itself failed.
    async fn extract_one(
        &self,
        system: &str,
        prompt: &str,
        schema: &Value,
    ) -> Result<Result<crate::backend::Extraction, ExtractError>, StageError> {
        let ex = &self.pipeline.extract;
        let request = ExtractRequest {
            model: &ex.model,
            system,
            prompt,
            schema,
            max_tokens: ex.max_tokens,
            retries: ex.retries,
            repetition_penalty: ex.repetition_penalty,
        };
        match crate::backend::extract(self.models.as_ref(), &request).await {
            Ok(x) => Ok(Ok(x)),
            Err(e @ ExtractError::Invalid(_)) => Ok(Err(e)),
            Err(ExtractError::Call(e)) => Err(call_failed("extraction", &ex.model, e)),
        }
    }

    /// A message longer than one call: every chunk extracted under the nullable schema,
    /// all requests at once (the engine batches them), then merged field by field with
    /// each value's page; fields ruled `reconcile`, and required fields no chunk stated,
    /// decided by one more call over the chunks' candidates.
    async fn extract_chunks(&self, message: &Value, plan: &crate::document::Plan) -> StageResult {
        use crate::merge::{ChunkAnswer, chunk_schema, merge, reconcile_prompt, reconcile_schema};
        let ex = &self.pipeline.extract;
        let labels: Vec<String> = self
            .pipeline
            .labels
            .iter()
            .map(|l| l.name.clone())
            .collect();
        let schema = chunk_schema(&ex.schema, &labels);
        let n = plan.chunks.len();
        let mut prompts = Vec::with_capacity(n);
        for (i, chunk) in plan.chunks.iter().enumerate() {
            let ctx = json!({
                "document": chunk.document(),
                "body": chunk.body(),
                "attachments": chunk.attachments(),
                "message": message,
            });
            let system = render(&ex.system, &ctx, "extract.system")?;
            let prompt = format!(
                "{}\n\n(This is part {} of {n} of a longer message: {}. Answer from this part only; null for a field it does not state.)",
                render(&ex.prompt, &ctx, "extract.prompt")?,
                i + 1,
                chunk.span()
            );
            prompts.push((system, prompt));
        }
        let calls = prompts
            .iter()
            .map(|(system, prompt)| {
                Box::pin(self.extract_one(system, prompt, &schema)) as crate::BoxFuture<'_, _>
            })
            .collect();
        let results: Vec<Result<Result<crate::backend::Extraction, ExtractError>, StageError>> =
            crate::document::all_in_order(calls).await;

        let (mut prompt_tokens, mut completion_tokens) = (0i64, 0i64);
        let mut answers = Vec::new();
        let mut unread = plan.unread.clone();
        for (chunk, result) in plan.chunks.iter().zip(results) {
            match result? {
                Ok(x) => {
                    prompt_tokens += x.prompt_tokens as i64;
                    completion_tokens += x.completion_tokens as i64;
                    answers.push(ChunkAnswer {
                        chunk,
                        value: x.value,
                    });
                }
                // The pages stay listed as not read rather than failing the whole message.
                Err(e) => {
                    let numbers: Vec<u32> = chunk.content().filter_map(|p| p.number).collect();
                    let first = chunk.content().next();
                    unread.push(crate::document::Unread {
                        part: first.map_or(0, |p| p.part),
                        file: first.and_then(|p| p.file.clone()),
                        first: numbers.first().copied(),
                        last: numbers.last().copied(),
                        reason: format!("the extraction failed: {e}"),
                    });
                }
            }
        }
        if answers.is_empty() {
            return Err(StageError::permanent(format!(
                "no part of the message could be extracted: {}",
                unread.last().map(|u| u.reason.as_str()).unwrap_or("")
            )));
        }

        let fields: Vec<String> = ex.schema["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let required: Vec<&str> = ex.schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let order = |f: &str| ex.schema["properties"][f]["enum"].as_array().cloned();
        let mut merged = merge(&answers, &fields, |f| ex.merge_rule(f), order);
        // A required field no chunk stated is decided with the others (the reconciling
        // call sees that every part said null); an optional one is left out.
        for f in &fields {
            if merged.value.get(f) == Some(&Value::Null) {
                merged.value.remove(f);
                if required.contains(&f.as_str()) {
                    merged.reconcile.push(f.clone());
                }
            }
        }
        if !merged.reconcile.is_empty() {
            let schema = reconcile_schema(&ex.schema, &merged.reconcile);
            let system = render(
                &ex.system,
                &json!({"document": "", "body": "", "attachments": "", "message": message}),
                "extract.system",
            )?;
            let prompt = reconcile_prompt(&answers, &merged.reconcile);
            let x = self
                .extract_one(&system, &prompt, &schema)
                .await?
                .map_err(|e| StageError::permanent(format!("reconciling the parts: {e}")))?;
            prompt_tokens += x.prompt_tokens as i64;
            completion_tokens += x.completion_tokens as i64;
            for f in &merged.reconcile {
                if let Some(v) = x.value.get(f) {
                    if let Some(source) = crate::merge::reconciled_source(v, f, &answers) {
                        merged.sources.insert(f.clone(), json!(source));
                    }
                    merged.value.insert(f.clone(), v.clone());
                }
            }
        }
        let mut output = Value::Object(merged.value);
        validate(&ex.schema, &output).map_err(|e| {
            StageError::permanent(format!("the merged extraction does not validate: {e}"))
        })?;
        // The spans point into the pages read, headers once; the merged values have no
        // token probabilities, so no confidence.
        let read = crate::document::Chunk {
            pages: plan.read_pages(),
        };
        let evidence = crate::evidence::evidence(&read.document(), &output, None, ex.check_below);
        output[crate::DOCUMENT_KEY] = json!({
            "chunks": n,
            "pages_read": plan.pages_read,
            "pages_total": plan.pages_total,
            "unread": unread.iter().map(|u| json!({
                "part": u.part, "file": u.file, "first": u.first, "last": u.last,
                "reason": u.reason, "line": u.line(),
            })).collect::<Vec<_>>(),
            "sources": merged.sources,
        });
        Ok(StageEffects {
            output,
            prompt_tokens,
            completion_tokens,
            evidence: Some(json!(evidence)),
            ..Default::default()
        })
    }

    /// The pipeline's `[summary]` of the message's documents (what the reading budget
    /// lets in), section by section ([`crate::summary`]); `{"summary": null}` without one.
    async fn summarize(&self, message_id: i64) -> StageResult {
        let Some(cfg) = &self.pipeline.summary else {
            return Ok(StageEffects {
                output: json!({"summary": null}),
                ..Default::default()
            });
        };
        let parts = self.store.parts(message_id).await?;
        let pages = crate::document::message_pages(&parts);
        let plan = crate::document::plan(&pages, &self.pipeline.budget);
        let read = plan.read_pages();
        let options = crate::summary::SummaryOptions {
            model: cfg.model.clone(),
            words: cfg.words,
            chunk_tokens: self.pipeline.budget.chunk_tokens,
        };
        let s = crate::summary::summarize(self.models.as_ref(), &read, &options, &|_, _| {})
            .await
            .map_err(|e| call_failed("summary", &cfg.model, e))?;
        Ok(StageEffects {
            output: json!({
                "summary": s.text,
                "sections": s.sections,
                "model": cfg.model,
                "chunks": s.chunks,
                "pages_read": plan.pages_read,
                "pages_total": plan.pages_total,
            }),
            prompt_tokens: s.prompt_tokens as i64,
            completion_tokens: s.completion_tokens as i64,
            ..Default::default()
        })
    }

    async fn business_db(&self, url: &str) -> Result<&AnyPool, StageError> {
        self.business_db
            .get_or_try_init(|| async {
                sqlx::any::install_default_drivers();
                AnyPoolOptions::new()
                    .max_connections(4)
                    // Lookups only read: PostgreSQL refuses any write, SQLite opens the
                    // file read-only and writes no other file.
                    .after_connect(|conn, _| {
                        Box::pin(async move { verre_store::read_only_session(conn).await })
                    })
                    .connect(&verre_store::read_only_url(url))
                    .await
                    .map_err(|e| {
                        StageError::transient(format!(
                            "connecting to the business database {}: {e}",
                            verre_store::redact(url)
                        ))
                    })
            })
            .await
    }

    async fn crossref(&self, message_id: i64) -> StageResult {
        let mut results = Map::new();
        if let Some(x) = &self.pipeline.crossref {
            let ctx = json!({
                "message": self.message_context(message_id).await?,
                "extract": self.output(message_id, "extract").await?,
            });
            let pool = self.business_db(&x.database).await?;
            let env = template_env();
            let mj_ctx = minijinja::Value::from_serialize(&ctx);
            for lookup in &x.lookups {
                // The operator's own SQL from the pipeline file; message values are only ever bound.
                let mut query = sqlx::query(sqlx::AssertSqlSafe(lookup.sql.clone()));
                for (i, expr) in lookup.params.iter().enumerate() {
                    let value = env
                        .compile_expression(expr)
                        .and_then(|e| e.eval(&mj_ctx))
                        .map_err(|e| {
                            StageError::permanent(format!(
                                "lookup {:?} param {}: {e}",
                                lookup.name,
                                i + 1
                            ))
                        })?;
                    let value = serde_json::to_value(&value).map_err(|e| {
                        StageError::permanent(format!(
                            "lookup {:?} param {}: {e}",
                            lookup.name,
                            i + 1
                        ))
                    })?;
                    query = match value {
                        Value::Null => query.bind(None::<String>),
                        Value::Bool(b) => query.bind(b),
                        Value::Number(n) if n.is_i64() => query.bind(n.as_i64()),
                        Value::Number(n) => query.bind(n.as_f64()),
                        Value::String(s) => query.bind(s),
                        other => query.bind(other.to_string()),
                    };
                }
                let rows = query
                    .fetch_all(pool)
                    .await
                    .map_err(|e| StageError::transient(format!("lookup {:?}: {e}", lookup.name)))?;
                let rows: Vec<Value> = rows.iter().map(row_to_json).collect();
                results.insert(lookup.name.clone(), Value::Array(rows));
            }
        }
        Ok(StageEffects {
            output: Value::Object(results),
            ..Default::default()
        })
    }

    async fn route(&self, message_id: i64) -> StageResult {
        let ctx = json!({
            "message": self.message_context(message_id).await?,
            "extract": self.output(message_id, "extract").await?,
            "summary": self.summary(message_id).await?,
            "lookup": self.output(message_id, "crossref").await?,
        });
        let env = template_env();
        let mj_ctx = minijinja::Value::from_serialize(&ctx);
        // Why: each route tried, in order, with the values its rule read.
        let mut why = Vec::new();
        for r in &self.pipeline.routes {
            let taken = match &r.when {
                None => true,
                Some(expr) => env
                    .compile_expression(expr)
                    .and_then(|e| e.eval(&mj_ctx))
                    .map_err(|e| StageError::permanent(format!("route {:?}: {e}", r.name)))?
                    .is_true(),
            };
            why.push(json!({
                "route": r.name,
                "when": r.when,
                "matched": taken,
                "values": r.when.as_deref().map(|w| rule_values(&env, w, &mj_ctx)).unwrap_or_default(),
            }));
            if taken {
                let draft_model = r.draft_model.as_ref().map(|(m, _)| m);
                return Ok(StageEffects {
                    output: json!({"route": r.name, "draft": r.draft, "draft_model": draft_model, "actions": r.actions, "why": why}),
                    ..Default::default()
                });
            }
        }
        Ok(StageEffects {
            output: json!({"route": null, "draft": false, "actions": [], "why": why}),
            ..Default::default()
        })
    }

    async fn full_context(&self, message_id: i64) -> Result<Value, StageError> {
        let route = self.output(message_id, "route").await?;
        Ok(json!({
            "message": self.message_context(message_id).await?,
            "extract": self.output(message_id, "extract").await?,
            "summary": self.summary(message_id).await?,
            "lookup": self.output(message_id, "crossref").await?,
            "route": route["route"],
        }))
    }

    /// `summary` in templates: the summarize stage's text, empty without one (and for a
    /// message that went past that stage before it existed).
    async fn summary(&self, message_id: i64) -> Result<String, StageError> {
        Ok(self
            .store
            .stage_output(message_id, "summarize")
            .await?
            .and_then(|o| o["summary"].as_str().map(str::to_string))
            .unwrap_or_default())
    }

    async fn draft(&self, message_id: i64) -> StageResult {
        let route = self.output(message_id, "route").await?;
        let (Some(cfg), true) = (&self.pipeline.draft, route["draft"] == json!(true)) else {
            return Ok(StageEffects {
                output: json!({"draft": null}),
                ..Default::default()
            });
        };
        let mut ctx = self.full_context(message_id).await?;
        // The message's own words, as in the extract prompt: a reply answers them.
        let parts = self.store.parts(message_id).await?;
        let max = self.pipeline.max_document_chars;
        ctx["document"] = document_text(&parts, max).into();
        ctx["body"] = body_text(&parts, max).into();
        let system = render(&cfg.system, &ctx, "draft.system")?;
        let prompt = render(&cfg.prompt, &ctx, "draft.prompt")?;
        // A route may escalate to a larger model than the pipeline's default drafter.
        let model = route["draft_model"].as_str().unwrap_or(&cfg.model);
        let request = CompleteRequest {
            model,
            system: &system,
            prompt: &prompt,
            max_tokens: cfg.max_tokens,
            repetition_penalty: cfg.repetition_penalty,
        };
        let c = crate::backend::complete(self.models.as_ref(), &request)
            .await
            .map_err(|e| call_failed("drafting", model, e))?;
        Ok(StageEffects {
            output: json!({"draft": c.text, "model": model}),
            prompt_tokens: c.prompt_tokens as i64,
            completion_tokens: c.completion_tokens as i64,
            ..Default::default()
        })
    }

    async fn stage(&self, message_id: i64) -> StageResult {
        let route = self.output(message_id, "route").await?;
        let mut ctx = self.full_context(message_id).await?;
        ctx["draft"] = self.output(message_id, "draft").await?["draft"]
            .as_str()
            .unwrap_or("")
            .into();
        let mut actions = Vec::new();
        for name in route["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let action = self.pipeline.action(name).ok_or_else(|| {
                StageError::permanent(format!(
                    "route names action {name:?}, which the pipeline no longer declares"
                ))
            })?;
            let what = |field: &str| format!("action {name:?} {field}");
            let staged = match &action.kind {
                ActionKind::Reply { to, subject, body } => {
                    let to = match to {
                        Some(t) => render(t, &ctx, &what("to"))?,
                        None => ctx["message"]["reply_to"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    };
                    if to.is_empty() {
                        return Err(StageError::permanent(format!(
                            "action {name:?}: the message has no sender to reply to"
                        )));
                    }
                    let payload = json!({"to": to, "subject": render(subject, &ctx, &what("subject"))?, "body": render(body, &ctx, &what("body"))?});
                    NewAction {
                        name: name.into(),
                        kind: "reply".into(),
                        target: to,
                        payload: payload.to_string(),
                    }
                }
                ActionKind::Webhook { url, payload } => {
                    let text = render(payload, &ctx, &what("payload"))?;
                    let value: Value = serde_json::from_str(&text).map_err(|e| {
                        StageError::permanent(format!(
                            "{} did not render JSON: {e}: {text:.200}",
                            what("payload")
                        ))
                    })?;
                    NewAction {
                        name: name.into(),
                        kind: "webhook".into(),
                        target: render(url, &ctx, &what("url"))?,
                        payload: value.to_string(),
                    }
                }
            };
            actions.push(staged);
        }
        // The label values the pipeline declares, for the review desk's filters and forms
        // (values a model invented elsewhere are not offered).
        let labels: Map<String, Value> = self
            .pipeline
            .labels
            .iter()
            .map(|l| (l.name.clone(), json!(l.values)))
            .collect();
        Ok(StageEffects {
            output: json!({"actions": actions.iter().map(|a| a.name.clone()).collect::<Vec<_>>(), "labels": labels}),
            actions,
            ..Default::default()
        })
    }

    /// `message` in templates: the parse stage's header fields and the message id.
    async fn message_context(&self, message_id: i64) -> Result<Value, StageError> {
        let mut m = self.output(message_id, "parse").await?;
        m["id"] = json!(message_id);
        Ok(m)
    }
}

/// The values a route's rule reads (`extract.threat_level`, `lookup.customer[0].tier`,
/// `message.from`), each as the rule saw it; a path that is not there reads as null.
fn rule_values(
    env: &minijinja::Environment<'_>,
    when: &str,
    ctx: &minijinja::Value,
) -> Map<String, Value> {
    let mut values = Map::new();
    for path in crate::evidence::rule_paths(when) {
        let value = env
            .compile_expression(&path)
            .and_then(|e| e.eval(ctx))
            .ok()
            .and_then(|v| serde_json::to_value(&v).ok())
            .unwrap_or(Value::Null);
        values.insert(path, value);
    }
    values
}

/// A model call that failed, as the stage's error: permanent when the request itself was
/// refused (unknown model, not allowed by the policy), else worth another attempt.
fn call_failed(what: &str, model: &str, e: crate::backend::ModelCallError) -> StageError {
    let reason = format!("the {what} model {model:?}: {e}");
    match e.permanent {
        true => StageError::permanent(reason),
        false => StageError::transient(reason),
    }
}

/// Render a pipeline template. Errors are one line (minijinja's alternate form dumps the
/// template and every variable, which does not belong in a quarantine reason).
fn render(template: &str, ctx: &Value, what: &str) -> Result<String, StageError> {
    template_env()
        .render_str(template, minijinja::Value::from_serialize(ctx))
        .map_err(|e| StageError::permanent(format!("{what}: {e}")))
}

fn row_to_json(row: &sqlx::any::AnyRow) -> Value {
    let mut obj = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let v = match row.try_get_raw(i) {
            Ok(raw) if raw.is_null() => Value::Null,
            Ok(_) => row
                .try_get::<i64, _>(i)
                .map(Value::from)
                .or_else(|_| row.try_get::<f64, _>(i).map(Value::from))
                .or_else(|_| row.try_get::<String, _>(i).map(Value::from))
                .or_else(|_| row.try_get::<bool, _>(i).map(Value::from))
                .or_else(|_| {
                    row.try_get::<Vec<u8>, _>(i)
                        .map(|b| Value::from(hex::encode(b)))
                })
                .unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        obj.insert(col.name().to_string(), v);
    }
    Value::Object(obj)
}
