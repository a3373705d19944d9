//! Running a server for real: bind (loopback only unless there are API keys or the operator
//! insists), answer 503 while the models load in the background, stop on Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use verre_engine::LoadedModel;
use verre_engine::engine::EngineOptions;
use verre_engine::model::bert::Embedder;

use crate::auth::ApiKeys;
use crate::gateway::Gateway;
use crate::{AppState, EmbeddingModel, ServedModel, is_loopback, router};

/// How long open streams may run on after a stop signal before the server closes anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One model to serve.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The name clients use.
    pub id: String,
    /// The `.gguf` of a chat model, or the directory of an embedding model.
    pub path: PathBuf,
    pub kind: ModelKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A GGUF text model, for chat and completions.
    Chat,
    /// A BERT sentence-embedding model directory, for `/v1/embeddings`.
    Embedding,
}

pub struct ServeConfig {
    pub models: Vec<ModelSpec>,
    pub host: String,
    /// 0 picks a free port; the address is printed either way.
    pub port: u16,
    /// `None`: every request is let in, which is allowed on loopback only...
    pub keys: Option<ApiKeys>,
    /// ...unless this is set.
    pub insecure_public: bool,
    pub engine: EngineOptions,
    /// Backends, policy and key limits from `verre.toml` (`--config`).
    pub gateway: Option<Arc<Gateway>>,
    /// The database URL (`sqlite://PATH`, `postgres://...`); None serves without one.
    pub database: Option<String>,
    /// Called once with the bound address, before the models are loaded.
    pub on_listening: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send + Sync>>,
    /// `[review]` and `[delivery]` from verre.toml (defaults without `--config`).
    pub review: crate::review::ReviewSettings,
    /// Called once with the server's state, before the models are loaded: for callers in
    /// the same process that use `/v1` without a socket (`verre up`'s intake, through
    /// [`crate::internal::ApiClient`]).
    pub on_state: Option<Box<dyn FnOnce(Arc<AppState>) + Send + Sync>>,
}

/// Serve until Ctrl-C or SIGTERM. Blocks; builds its own async runtime.
pub fn run(config: ServeConfig) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("verre-http")
        .build()
        .context("starting the async runtime")?
        .block_on(serve(config, stop_signal()))
}

/// Serve until `shutdown` completes (or the models fail to load), then stop taking requests
/// and give open ones [`SHUTDOWN_GRACE`] to finish. For callers with their own runtime and
/// their own idea of when to stop (`verre up`).
pub async fn serve(
    mut config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = bind(&config).await?;
    let address = listener.local_addr().context("reading the bound address")?;
    if let Some(announce) = config.on_listening.take() {
        announce(address);
    }
    let ids: Vec<&str> = config.models.iter().map(|m| m.id.as_str()).collect();
    eprintln!(
        "verre serve: listening on http://{address} (models: {}; loading)",
        ids.join(", ")
    );

    let mut state = AppState::new(config.keys).with_review(config.review.clone());
    let (stop_tx, stop) = watch::channel(false);
    if let Some(url) = &config.database {
        let store = verre_store::Store::open(url).await?;
        eprintln!("verre serve: database {}", verre_store::redact(url));
        crate::review::worker::spawn(store.clone(), config.review.clone(), stop.clone())?;
        let audit = config
            .gateway
            .as_ref()
            .map(|g| g.audit().clone())
            .unwrap_or_default();
        state = state.with_ledger(crate::ledger::Ledger {
            writer: verre_store::ledger::LedgerWriter::spawn(store.clone()),
            audit,
        });
        state = state.with_store(store);
    }
    if let Some(gateway) = &config.gateway {
        let remote: Vec<String> = gateway
            .model_names()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        eprintln!("verre serve: gateway models: {}", remote.join(", "));
        gateway.spawn_health_checks();
        state = state.with_gateway(gateway.clone());
    }
    let state = Arc::new(state);
    if let Some(give) = config.on_state.take() {
        give(state.clone());
    }
    let state_for_flush = state.clone();
    let (load_failed_tx, load_failed) = oneshot::channel();
    let loading_state = state.clone();
    let models = config.models.clone();
    let options = config.engine.clone();
    tokio::task::spawn_blocking(move || match load_models(&models, &options) {
        Ok((chat, embedding)) => {
            loading_state.set_models(chat, embedding);
            eprintln!("verre serve: ready");
        }
        Err(e) => {
            loading_state.set_load_failed(&e);
            let _ = load_failed_tx.send(e);
        }
    });

    let load_error = tokio::spawn(async move {
        let error = tokio::select! {
            _ = shutdown => None,
            // A loader that succeeds drops its sender: that is no reason to stop.
            Ok(e) = load_failed => Some(e),
        };
        let _ = stop_tx.send(true);
        error
    });
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    // The peer address feeds the review UI's login rate limit.
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(stopped(stop.clone()));
    tokio::select! {
        result = async { server.await } => result.context("serving HTTP")?,
        _ = async { stopped(stop).await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("closing with requests still open");
        }
    }
    if let Some(ledger) = state_for_flush.ledger() {
        ledger.writer.flush().await;
    }
    match load_error.await {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Bind the configured address, refusing one that other machines can reach when no API
/// keys guard it.
async fn bind(config: &ServeConfig) -> Result<TcpListener> {
    let addresses: Vec<_> = tokio::net::lookup_host((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("resolving --host {}", config.host))?
        .collect();
    let Some(&address) = addresses.first() else {
        bail!("--host {} resolves to no address", config.host);
    };
    if config.keys.is_none()
        && !config.insecure_public
        && let Some(public) = addresses.iter().find(|a| !is_loopback(a.ip()))
    {
        bail!(
            "refusing to listen on {public} without API keys: anyone who can reach it could use the model. \
                 Pass --api-key-file F (make keys with `verre keys add NAME --file F`), \
                 or --insecure-public to do it anyway"
        );
    }
    TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address}"))
}

/// Load each model and start its engine (chat) or thread (embedding). Blocks: call it off
/// the async threads.
pub fn load_models(
    models: &[ModelSpec],
    options: &EngineOptions,
) -> Result<(Vec<ServedModel>, Vec<EmbeddingModel>)> {
    let (mut chat, mut embedding) = (Vec::new(), Vec::new());
    for ModelSpec { id, path, kind } in models {
        let context = || format!("loading model {id} from {}", path.display());
        match kind {
            ModelKind::Chat => {
                let model = LoadedModel::load(path).with_context(context)?;
                chat.push(ServedModel::start(id, Arc::new(model), options.clone())?);
            }
            ModelKind::Embedding => {
                let embedder = Embedder::load(path).with_context(context)?;
                embedding.push(EmbeddingModel::start(
                    id,
                    Arc::new(embedder),
                    options.max_waiting,
                )?);
            }
        }
    }
    Ok((chat, embedding))
}

/// Ctrl-C or SIGTERM.
pub async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = ctrl_c.await;
}
