//! What every handler shares: the served models (chat models each with its engine, embedding
//! models each with its thread) and the API keys.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use verre_engine::LoadedModel;
use verre_engine::engine::{EngineHandle, EngineOptions};

use verre_store::Store;

use crate::auth::ApiKeys;
use crate::embedding::EmbeddingModel;
use crate::gateway::Gateway;
use crate::ledger::Ledger;
use crate::metrics::RequestLatency;
use crate::openai::error::ApiError;

/// One model behind the API: its name, its weights and the engine that runs it.
pub struct ServedModel {
    /// The name clients put in `model`.
    pub id: String,
    pub model: Arc<LoadedModel>,
    pub engine: EngineHandle,
    /// Unix time it was loaded (`created` in `/v1/models`).
    pub created: u64,
    pub latency: Arc<RequestLatency>,
}

impl ServedModel {
    /// Start an engine for a loaded model.
    pub fn start(id: &str, model: Arc<LoadedModel>, options: EngineOptions) -> Result<Self> {
        let engine = EngineHandle::spawn(model.clone(), options)?;
        Ok(Self {
            id: id.to_string(),
            model,
            engine,
            created: unix_now(),
            latency: Arc::default(),
        })
    }
}

/// Every model the server answers for, by kind.
#[derive(Default)]
pub struct Models {
    pub chat: Vec<Arc<ServedModel>>,
    pub embedding: Vec<Arc<EmbeddingModel>>,
}

/// Shared by every handler. Models are set once, when loading is done; until then the API
/// answers 503.
pub struct AppState {
    models: OnceLock<Models>,
    /// `None` while loading, then whether the models loaded (with the error if not).
    loaded: tokio::sync::watch::Sender<Option<Result<(), String>>>,
    keys: Option<ApiKeys>,
    gateway: Option<Arc<Gateway>>,
    store: Option<Store>,
    review: crate::review::ReviewSettings,
    ledger: Option<Ledger>,
    /// `/v1/responses` kept without a store, and background ones running.
    responses: crate::openai::responses::kept::KeptResponses,
    /// The archive `archive:<model>` asks, opened on first use (crate::archive).
    pub(crate) archive: OnceLock<Arc<verre_archive::Archive>>,
}

impl AppState {
    /// A server with no models yet (it answers 503 until [`AppState::set_models`]).
    /// Without keys, every request is let in.
    pub fn new(keys: Option<ApiKeys>) -> Self {
        Self {
            models: OnceLock::new(),
            loaded: tokio::sync::watch::Sender::new(None),
            keys,
            gateway: None,
            store: None,
            review: Default::default(),
            ledger: None,
            responses: Default::default(),
            archive: OnceLock::new(),
        }
    }

    /// Route requests through `gateway` (backends from `verre.toml`).
    pub fn with_gateway(mut self, gateway: Arc<Gateway>) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Keep durable state (the review queue, the outbox, the ledger, the audit log) in
    /// `store`.
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Review UI and delivery settings (`[review]`, `[delivery]` of verre.toml).
    pub fn with_review(mut self, review: crate::review::ReviewSettings) -> Self {
        self.review = review;
        self
    }

    /// Record every API call in the cost ledger (and the audit log) through `ledger`.
    pub fn with_ledger(mut self, ledger: Ledger) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// A server ready at once.
    pub fn with_models(
        chat: Vec<ServedModel>,
        embedding: Vec<EmbeddingModel>,
        keys: Option<ApiKeys>,
    ) -> Self {
        let state = Self::new(keys);
        state.set_models(chat, embedding);
        state
    }

    /// Loading is done; the first call wins.
    pub fn set_models(&self, chat: Vec<ServedModel>, embedding: Vec<EmbeddingModel>) {
        let _ = self.models.set(Models {
            chat: chat.into_iter().map(Arc::new).collect(),
            embedding: embedding.into_iter().map(Arc::new).collect(),
        });
        self.loaded.send_replace(Some(Ok(())));
    }

    /// Loading failed: whoever waits in [`AppState::wait_ready`] hears why.
    pub fn set_load_failed(&self, error: &anyhow::Error) {
        self.loaded.send_replace(Some(Err(format!("{error:#}"))));
    }

    /// Wait until the models are loaded, or the loading failed.
    pub async fn wait_ready(&self) -> Result<(), String> {
        let mut loaded = self.loaded.subscribe();
        let outcome = loaded
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "the server stopped before its models loaded".to_string())?;
        outcome.clone().expect("waited for Some")
    }

    pub fn is_ready(&self) -> bool {
        self.models.get().is_some()
    }

    pub fn models(&self) -> Result<&Models, ApiError> {
        self.models.get().ok_or_else(ApiError::loading)
    }

    /// The chat model `id`, for generation.
    pub fn model(&self, id: &str) -> Result<Arc<ServedModel>, ApiError> {
        let models = self.models()?;
        if let Some(m) = models.chat.iter().find(|m| m.id == id) {
            return Ok(m.clone());
        }
        if models.embedding.iter().any(|m| m.id == id) {
            return Err(ApiError::wrong_model_kind(
                id,
                "is an embedding model: use it with /v1/embeddings",
            ));
        }
        Err(ApiError::model_not_found(id))
    }

    /// The embedding model `id`, for `/v1/embeddings`.
    pub fn embedding_model(&self, id: &str) -> Result<Arc<EmbeddingModel>, ApiError> {
        let models = self.models()?;
        if let Some(m) = models.embedding.iter().find(|m| m.id == id) {
            return Ok(m.clone());
        }
        if models.chat.iter().any(|m| m.id == id) {
            return Err(ApiError::wrong_model_kind(
                id,
                "is a chat model, not an embedding model: use it with /v1/chat/completions or /v1/completions",
            ));
        }
        Err(ApiError::model_not_found(id))
    }

    pub fn keys(&self) -> Option<&ApiKeys> {
        self.keys.as_ref()
    }

    pub fn gateway(&self) -> Option<&Gateway> {
        self.gateway.as_deref()
    }

    /// The database, when the server was started with one (`verre serve` always is).
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    pub fn review(&self) -> &crate::review::ReviewSettings {
        &self.review
    }

    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    /// Responses kept by `/v1/responses` (in the store when there is one).
    pub fn responses(&self) -> &crate::openai::responses::kept::KeptResponses {
        &self.responses
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
