//! What the server's model tests share: the SmolLM2 test model, loaded once per test binary,
//! and an app serving it. Without `VERRE_SMOLLM2_GGUF` the tests skip (and fail in CI).
#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use verre_engine::LoadedModel;
use verre_engine::engine::EngineOptions;
use verre_server::{AppState, ServedModel, router};

/// The name the test model is served under.
pub const MODEL: &str = "smollm2-135m";

/// SmolLM2-135M from `VERRE_SMOLLM2_GGUF`, or `None` (the test skips) outside CI.
pub fn model() -> Option<Arc<LoadedModel>> {
    static MODEL: OnceLock<Option<Arc<LoadedModel>>> = OnceLock::new();
    MODEL
        .get_or_init(|| match std::env::var_os("VERRE_SMOLLM2_GGUF") {
            Some(path) => Some(Arc::new(LoadedModel::load(PathBuf::from(path)).unwrap())),
            None if std::env::var_os("CI").is_some() => {
                panic!("VERRE_SMOLLM2_GGUF must point at the model file in CI")
            }
            None => {
                eprintln!("skipped: set VERRE_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf");
                None
            }
        })
        .clone()
}

/// An app serving the test model with no keys, gateway or store, or `None` without it.
pub fn app() -> Option<Router> {
    let served = ServedModel::start(MODEL, model()?, EngineOptions::default()).unwrap();
    Some(router(Arc::new(AppState::with_models(
        vec![served],
        vec![],
        None,
    ))))
}
