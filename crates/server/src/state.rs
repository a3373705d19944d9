//! What every handler shares: the served models (each with its engine) and the API keys.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use verre_engine::LoadedModel;
use verre_engine::engine::{EngineHandle, EngineOptions};

use crate::auth::ApiKeys;
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

/// Shared by every handler. Models are set once, when loading is done; until then the API
/// answers 503.
pub struct AppState {
    models: OnceLock<Vec<Arc<ServedModel>>>,
    keys: Option<ApiKeys>,
}

impl AppState {
    /// A server with no models yet (it answers 503 until [`AppState::set_models`]).
    /// Without keys, every request is let in.
    pub fn new(keys: Option<ApiKeys>) -> Self {
        Self {
            models: OnceLock::new(),
            keys,
        }
    }

    /// A server ready at once.
    pub fn with_models(models: Vec<ServedModel>, keys: Option<ApiKeys>) -> Self {
        let state = Self::new(keys);
        state.set_models(models);
        state
    }

    /// Loading is done; the first call wins.
    pub fn set_models(&self, models: Vec<ServedModel>) {
        let _ = self.models.set(models.into_iter().map(Arc::new).collect());
    }

    pub fn is_ready(&self) -> bool {
        self.models.get().is_some()
    }

    pub fn models(&self) -> Result<&[Arc<ServedModel>], ApiError> {
        self.models
            .get()
            .map(Vec::as_slice)
            .ok_or_else(ApiError::loading)
    }

    pub fn model(&self, id: &str) -> Result<Arc<ServedModel>, ApiError> {
        self.models()?
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .ok_or_else(|| ApiError::model_not_found(id))
    }

    pub fn keys(&self) -> Option<&ApiKeys> {
        self.keys.as_ref()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
