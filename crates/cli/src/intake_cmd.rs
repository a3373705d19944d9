//! `verre intake`: run the pipeline over a source, work the queue, inspect messages and
//! quarantine. Wiring only; the pipeline is verre-intake, the queue verre-store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use verre_intake::{BoxFuture, ModelApi, ModelCallError, Pipeline, Source, StageRunner};
use verre_server::AppState;
use verre_server::config::VerreConfig;
use verre_server::internal::ApiClient;
use verre_store::Store;

#[derive(Subcommand)]
pub enum IntakeCommand {
    /// Store every message of SOURCE, run the pipeline over the queue until it is idle,
    /// then print a summary.
    Run(RunArgs),
    /// Keep reading SOURCE and working the queue (a worker; several may share a
    /// PostgreSQL queue).
    Watch(WatchArgs),
    /// Everything known about one message: headers, parts, stage results, actions, PII tags.
    Show {
        id: i64,
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        json: bool,
    },
    /// List quarantined messages, or put one back on the queue.
    Quarantine {
        #[command(subcommand)]
        command: Option<QuarantineCommand>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// Quarantined messages with their stage and reason (the default).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Put a quarantined message back on the queue at the stage that failed.
    Retry { id: i64 },
}

#[derive(Args, Clone)]
pub struct DbArgs {
    /// verre's database: sqlite://PATH or postgres://USER@HOST/DB
    /// (default: sqlite://$VERRE_HOME/verre.db).
    #[arg(long, env = "VERRE_DATABASE", global = true)]
    pub database: Option<String>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BackendArg {
    /// The pipeline's models through verre's `/v1` in this process: models this process
    /// loads, or backends of verre.toml, under its policy, ledger and audit.
    Engine,
    /// A deterministic stand-in for every model (tests; measuring the pipeline itself).
    Stub,
}

#[derive(Args, Clone)]
pub struct WorkArgs {
    /// The pipeline file (TOML; see docs/INTAKE.md).
    #[arg(long)]
    pub pipeline: PathBuf,
    #[command(flatten)]
    pub db: DbArgs,
    /// Workers in this process.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    #[arg(long, value_enum, default_value_t = BackendArg::Engine)]
    pub backend: BackendArg,
    /// verre.toml (docs/CONFIG.md): backends the pipeline's model names may resolve to,
    /// the egress policy, webhook targets, `[cost]` and `[audit]` (default:
    /// $VERRE_HOME/verre.toml, else ./verre.toml, when there is one).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seconds a claimed job is held before another worker may take it over (renewed
    /// while the stage runs).
    #[arg(long, default_value_t = 30)]
    pub lease_secs: u64,
    /// Decode token by token: no speculative decoding, no grammar fast-forward (the output
    /// is the same; for comparing times).
    #[arg(long)]
    pub no_speculation: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// A folder of .eml files, a Maildir, an mbox file or one .eml file.
    pub source: String,
    #[command(flatten)]
    pub work: WorkArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct WatchArgs {
    pub source: String,
    #[command(flatten)]
    pub work: WorkArgs,
    /// Seconds between reads of the source.
    #[arg(long, default_value_t = 10)]
    pub poll_secs: u64,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

impl DbArgs {
    /// The database URL: `--database`, else `sqlite://$VERRE_HOME/verre.db` (the directory
    /// is created).
    pub fn url(&self) -> Result<String> {
        match &self.database {
            Some(url) => Ok(url.clone()),
            None => {
                let home = verre_models::ModelStore::default_home()?;
                std::fs::create_dir_all(&home)
                    .with_context(|| format!("creating {}", home.display()))?;
                Ok(format!("sqlite://{}", home.join("verre.db").display()))
            }
        }
    }
}

pub(crate) async fn open_store(db: &DbArgs) -> Result<Store> {
    Store::open(&db.url()?).await
}

/// As [`open_store`], for the commands that read or remove what `verre up` stored
/// (`intake show|quarantine`, `erase`, `audit`, `purge`): without `VERRE_DATA_KEY` or
/// `VERRE_DATA_KEY_FILE`, the data keys `verre up` made in `$VERRE_HOME/data-keys` are used
/// when that file exists, as `verre up` itself does.
pub(crate) async fn open_store_as_up(db: &DbArgs) -> Result<Store> {
    let store = open_store(db).await?;
    let configured = [
        verre_store::crypto::KEY_ENV,
        verre_store::crypto::KEY_FILE_ENV,
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if configured {
        return Ok(store);
    }
    let Ok(home) = verre_models::ModelStore::default_home() else {
        return Ok(store);
    };
    let home_keys = home.join(crate::up_cmd::DATA_KEYS_FILE);
    if !home_keys.exists() {
        return Ok(store);
    }
    let keys = verre_store::Keyring::from_file(&home_keys).with_context(|| {
        format!(
            "reading the data keys verre up made, {}",
            home_keys.display()
        )
    })?;
    store.with_keys(Some(keys)).await
}

pub fn intake(cmd: IntakeCommand) -> Result<()> {
    let rt = runtime()?;
    match cmd {
        IntakeCommand::Run(args) => rt.block_on(run(args)),
        IntakeCommand::Watch(args) => rt.block_on(watch(args)),
        IntakeCommand::Show { id, db, json } => rt.block_on(show(id, &db, json)),
        IntakeCommand::Quarantine { command, db } => rt.block_on(quarantine(command, &db)),
    }
}

pub(crate) fn load_pipeline(path: &std::path::Path) -> Result<Pipeline> {
    // The error already says file:line: reason.
    Pipeline::load(path).map_err(|e| anyhow::anyhow!("invalid pipeline: {e}"))
}

pub(crate) fn runner(
    store: Store,
    pipeline: Pipeline,
    models: Arc<dyn ModelApi>,
) -> Result<Arc<StageRunner>> {
    // Mail from outside is parsed by this binary in a child process under limits.
    let exe = std::env::current_exe().context("finding the verre binary to parse mail with")?;
    let parser = verre_intake::MailParser::child(exe)?;
    Ok(Arc::new(
        StageRunner::new(
            store,
            Arc::new(pipeline),
            models,
            Some(Arc::new(PiiDetector::default())),
        )
        .with_mail_parser(parser),
    ))
}

/// verre's `/v1` in this process as a pipeline's model API. The pipeline is the caller:
/// its calls are metered, limited (`[[key]] name = "pipeline:NAME"`) and audited under
/// that name.
pub(crate) struct PipelineApi {
    client: ApiClient,
    caller: String,
}

impl PipelineApi {
    pub(crate) fn new(state: Arc<AppState>, pipeline: &Pipeline) -> Self {
        Self::for_caller(state, format!("pipeline:{}", pipeline.name))
    }

    /// The same API for another caller (`verre summarize` calls as `summarize`).
    pub(crate) fn for_caller(state: Arc<AppState>, caller: String) -> Self {
        Self {
            client: ApiClient::new(state),
            caller,
        }
    }
}

impl PipelineApi {
    async fn post(&self, path: &str, request: Value) -> Result<Value, ModelCallError> {
        self.client
            .post(&self.caller, path, &request)
            .await
            .map_err(|e| ModelCallError {
                permanent: e.is_permanent(),
                param: e.param.clone(),
                message: e.to_string(),
            })
    }
}

impl ModelApi for PipelineApi {
    fn chat(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
        Box::pin(self.post("/v1/chat/completions", request))
    }

    fn embed(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
        Box::pin(self.post("/v1/embeddings", request))
    }
}

/// verre.toml by the rule of every command, checked with the pipeline before any mail
/// is touched: each webhook action must send under a `[[delivery.webhook]]` target the
/// egress policy allows (without a verre.toml nothing is checked here: only a server whose
/// verre.toml declares the target ever delivers, and it checks again).
pub(crate) fn start_config(
    given: Option<&std::path::Path>,
    pipeline: &Pipeline,
) -> Result<Option<VerreConfig>> {
    let config = crate::config_file::load(given)?;
    if let Some(config) = &config {
        check_webhooks(pipeline, config)?;
    }
    Ok(config)
}

/// The pipeline's webhook actions against verre.toml's declared targets and policy.
pub(crate) fn check_webhooks(pipeline: &Pipeline, config: &VerreConfig) -> Result<()> {
    pipeline
        .check_webhooks(|url| {
            config
                .check_webhook_template(url)
                .map_err(|e| format!("{e} ({})", config.origin))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The models the pipeline names, as `/v1` in this process answers for them: verre.toml's
/// gateway (its backends, policy, `[cost]`, `[audit]`), and the local models loaded once.
/// Every model name is checked before any mail is touched. The returned state holds the
/// ledger to flush when the run ends.
pub(crate) async fn in_process_api(
    work: &WorkArgs,
    config: Option<&VerreConfig>,
    pipeline: &Pipeline,
    store: &Store,
) -> Result<(Arc<dyn ModelApi>, Option<Arc<AppState>>)> {
    if work.backend == BackendArg::Stub {
        return Ok((Arc::new(verre_intake::StubBackend::from_env()), None));
    }
    let gateway = config
        .map(crate::config_file::gateway)
        .transpose()
        .context("setting up the gateway")?;
    let remote: Vec<String> = gateway
        .iter()
        .flat_map(|g| g.model_names())
        .map(|(name, _)| name)
        .collect();
    // What this process loads: the models of local backends, and every name the pipeline
    // uses that no backend answers for (a store name or a .gguf path).
    let mut names: Vec<String> = config.iter().flat_map(|c| c.local_models()).collect();
    for (name, _) in pipeline.models() {
        if !remote.contains(&name) && !names.contains(&name) {
            names.push(name);
        }
    }
    // Before anything loads: a name that resolves nowhere is the pipeline's error, with
    // its line.
    let model_store = verre_models::ModelStore::from_env()?;
    pipeline
        .check_models(|name| remote.iter().any(|n| n == name) || model_store.resolve(name).is_ok())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut specs = crate::serve_cmd::model_specs(&names)?;
    // Served under the name the pipeline (or the backend) asks for, path or store name.
    for (spec, name) in specs.iter_mut().zip(&names) {
        spec.id = name.clone();
    }
    let options = verre_engine::engine::EngineOptions::default().speculative(!work.no_speculation);
    let (chat, embedding) =
        tokio::task::spawn_blocking(move || verre_server::load_models(&specs, &options))
            .await
            .context("loading the pipeline's models")??;
    let audit = gateway
        .as_ref()
        .map(|g| g.audit().clone())
        .unwrap_or_default();
    let mut state =
        AppState::new(None)
            .with_store(store.clone())
            .with_ledger(verre_server::ledger::Ledger {
                writer: verre_store::ledger::LedgerWriter::spawn(store.clone()),
                audit,
            });
    if let Some(gateway) = gateway {
        gateway.spawn_health_checks();
        state = state.with_gateway(gateway);
    }
    state.set_models(chat, embedding);
    let state = Arc::new(state);
    Ok((
        Arc::new(PipelineApi::new(state.clone(), pipeline)),
        Some(state),
    ))
}

/// verre-pii's detector as the parse stage's PII tagger (email, phone, IBAN, card, IP,
/// URL, dates of birth, person names), for the governance features to use.
#[derive(Default)]
struct PiiDetector {
    options: verre_pii::DetectOptions,
}

impl verre_intake::PiiTagger for PiiDetector {
    fn tag(&self, text: &str) -> Vec<verre_intake::PiiSpan> {
        verre_pii::detect(text, &self.options)
            .into_iter()
            .map(|s| verre_intake::PiiSpan {
                kind: s.kind.as_str().to_string(),
                start: s.start,
                end: s.end,
            })
            .collect()
    }
}

/// What one `intake run` did, over the messages of its source.
#[derive(serde::Serialize)]
pub(crate) struct Summary {
    pub messages: usize,
    pub new: usize,
    /// Messages of the source that were erased or purged before: not stored again.
    pub forgotten: usize,
    pub processed: usize,
    pub quarantined: usize,
    pub pending: usize,
    pub labels: BTreeMap<String, BTreeMap<String, usize>>,
    pub routes: BTreeMap<String, usize>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub seconds: f64,
}

/// Ingest a source and work the queue until it is idle, with a progress bar over the
/// source's messages.
pub(crate) async fn ingest_and_run(
    source: &Source,
    work: &WorkArgs,
    pipeline: Pipeline,
    progress: bool,
) -> Result<(Store, Vec<i64>, Summary)> {
    let start = Instant::now();
    let config = start_config(work.config.as_deref(), &pipeline)?;
    let store = open_store(&work.db).await?;
    let labels: Vec<String> = pipeline.labels.iter().map(|l| l.name.clone()).collect();
    let max_attempts = pipeline.max_attempts;
    let (api, server) = in_process_api(work, config.as_ref(), &pipeline, &store).await?;
    let runner = runner(store.clone(), pipeline, api)?;
    runner
        .check_at_start()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let verre_intake::IngestReport {
        ids,
        new,
        forgotten,
        ..
    } = verre_intake::ingest_source(&store, source, max_attempts).await?;

    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(ids.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} messages {msg}",
            )
            .expect("a valid template"),
        );
        bar
    });
    let work_task = tokio::spawn(verre_intake::run_until_idle(
        runner,
        work.workers,
        Duration::from_secs(work.lease_secs),
    ));
    if let Some(bar) = &bar {
        while !work_task.is_finished() {
            let statuses = store.statuses(&ids).await?;
            let done = statuses.iter().filter(|(_, s)| s != "pending").count();
            let q = statuses.iter().filter(|(_, s)| s == "quarantined").count();
            bar.set_position(done as u64);
            bar.set_message(format!("({q} quarantined)"));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    work_task.await.context("the workers stopped")??;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(ledger) = server.as_ref().and_then(|s| s.ledger()) {
        ledger.writer.flush().await;
    }

    let statuses = store.statuses(&ids).await?;
    let count = |s: &str| statuses.iter().filter(|(_, x)| x == s).count();
    let mut label_counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (_, value, _, _) in store.stage_outputs(&ids, "extract").await? {
        for l in &labels {
            let v = value[l].as_str().unwrap_or("?").to_string();
            *label_counts
                .entry(l.clone())
                .or_default()
                .entry(v)
                .or_default() += 1;
        }
    }
    let mut routes = BTreeMap::new();
    for (_, value, _, _) in store.stage_outputs(&ids, "route").await? {
        *routes
            .entry(value["route"].as_str().unwrap_or("(none)").to_string())
            .or_default() += 1;
    }
    let (prompt_tokens, completion_tokens) = store.tokens_for(&ids).await?;
    let summary = Summary {
        messages: ids.len(),
        new,
        forgotten,
        processed: count("processed"),
        quarantined: count("quarantined"),
        pending: count("pending"),
        labels: label_counts,
        routes,
        prompt_tokens,
        completion_tokens,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((store, ids, summary))
}

async fn run(args: RunArgs) -> Result<()> {
    let pipeline = load_pipeline(&args.work.pipeline)?;
    let source = Source::detect(&args.source)?;
    let (_, _, s) =
        ingest_and_run(&source, &args.work, pipeline, !args.quiet && !args.json).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let rate = s.messages as f64 / s.seconds.max(1e-9);
    println!("{:<22} {}", "messages", s.messages);
    println!("{:<22} {}", "  new this run", s.new);
    if s.forgotten > 0 {
        println!(
            "{:<22} {} (erased or purged before: not stored again)",
            "  forgotten", s.forgotten
        );
    }
    println!("{:<22} {}", "processed", s.processed);
    println!("{:<22} {}", "quarantined", s.quarantined);
    if s.pending > 0 {
        println!("{:<22} {}", "pending", s.pending);
    }
    for (label, counts) in &s.labels {
        let parts: Vec<String> = counts.iter().map(|(v, n)| format!("{v} {n}")).collect();
        println!("{:<22} {}", format!("label {label}"), parts.join(", "));
    }
    let routes: Vec<String> = s.routes.iter().map(|(r, n)| format!("{r} {n}")).collect();
    if !routes.is_empty() {
        println!("{:<22} {}", "routes", routes.join(", "));
    }
    println!(
        "{:<22} {} prompt + {} completion",
        "tokens", s.prompt_tokens, s.completion_tokens
    );
    println!("{:<22} {:.2} s ({rate:.1} messages/s)", "time", s.seconds);
    if s.quarantined > 0 {
        println!("see `verre intake quarantine list` for the reasons");
    }
    Ok(())
}

async fn watch(args: WatchArgs) -> Result<()> {
    let pipeline = load_pipeline(&args.work.pipeline)?;
    let source = Source::detect(&args.source)?;
    let config = start_config(args.work.config.as_deref(), &pipeline)?;
    let store = open_store(&args.work.db).await?;
    let max_attempts = pipeline.max_attempts;
    let (api, _server) = in_process_api(&args.work, config.as_ref(), &pipeline, &store).await?;
    let runner = runner(store.clone(), pipeline, api)?;
    runner
        .check_at_start()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "watching {} ({} worker(s)); Ctrl-C to stop",
        source.describe(),
        args.work.workers.max(1)
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    let read = || async {
        match verre_intake::ingest(&store, &source, max_attempts).await {
            Ok((_, new)) if new > 0 => eprintln!("{new} new message(s)"),
            Ok(_) => {}
            Err(e) => eprintln!("reading {}: {e:#}", source.describe()),
        }
    };
    let stats = verre_intake::watch(
        runner,
        args.work.workers,
        Duration::from_secs(args.work.lease_secs),
        Duration::from_secs(args.poll_secs),
        read,
        stop,
    )
    .await?;
    if stats.released > 0 {
        eprintln!("released {} unfinished job(s)", stats.released);
    }
    Ok(())
}

async fn show(id: i64, db: &DbArgs, json: bool) -> Result<()> {
    let store = open_store_as_up(db).await?;
    let d = store
        .detail(id)
        .await?
        .with_context(|| format!("no message {id}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    let m = &d.message;
    println!(
        "message {}  {}  ({} bytes, sha256 {})",
        m.id,
        m.status,
        m.size,
        &m.content_hash[..16]
    );
    println!("source  {} {}", m.source, m.source_ref);
    if let Some(q) = &d.quarantine {
        println!(
            "QUARANTINED at {} after {} attempt(s): {}",
            q.stage, q.attempts, q.reason
        );
    }
    println!("\nparts:");
    for p in &d.parts {
        let len = p.text.as_deref().map(str::len).unwrap_or(0);
        let pages = p
            .pages
            .as_ref()
            .and_then(|v| v.as_array())
            .map(|a| format!(", {} pages", a.len()))
            .unwrap_or_default();
        println!(
            "  #{} {} {} {}{} — {} chars of text{}{}",
            p.idx,
            p.kind,
            p.content_type,
            p.filename.as_deref().unwrap_or(""),
            if p.supported { "" } else { " [unsupported]" },
            len,
            pages,
            p.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    println!("\nstages:");
    for j in &d.jobs {
        println!(
            "  {:<9} {:<7} attempts {}/{}{}",
            j.stage,
            j.state,
            j.attempts,
            j.max_attempts,
            j.last_error
                .as_deref()
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default()
        );
    }
    for r in &d.results {
        let tokens = if r.prompt_tokens + r.completion_tokens > 0 {
            format!("  [{} + {} tokens]", r.prompt_tokens, r.completion_tokens)
        } else {
            String::new()
        };
        println!(
            "\n{} (by {}){tokens}:\n{}",
            r.stage,
            r.worker,
            serde_json::to_string_pretty(&r.output)?
        );
    }
    if !d.actions.is_empty() {
        println!("\nstaged actions:");
        for a in &d.actions {
            println!(
                "  {} {} -> {} [{}]\n    {}",
                a.name, a.kind, a.target, a.status, a.payload
            );
        }
    }
    if !d.pii_tags.is_empty() {
        println!("\nPII tags:");
        for t in &d.pii_tags {
            println!(
                "  part {:?} {} bytes {}..{}",
                t.part_idx, t.kind, t.start, t.end
            );
        }
    }
    Ok(())
}

async fn quarantine(cmd: Option<QuarantineCommand>, db: &DbArgs) -> Result<()> {
    let store = open_store_as_up(db).await?;
    match cmd.unwrap_or(QuarantineCommand::List { json: false }) {
        QuarantineCommand::List { json } => {
            let rows = store.quarantined().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("quarantine is empty");
            } else {
                println!("{:>6}  {:<9} {:<20} reason", "id", "stage", "source");
                for q in rows {
                    println!(
                        "{:>6}  {:<9} {:<20} {}",
                        q.message_id, q.stage, q.source_ref, q.reason
                    );
                }
            }
        }
        QuarantineCommand::Retry { id } => {
            store.retry_quarantined(id).await?;
            println!(
                "message {id} is back on the queue; `verre intake run` or `watch` picks it up"
            );
        }
    }
    Ok(())
}
