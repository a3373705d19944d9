//! Helpers shared by the engine's integration tests.

use std::path::PathBuf;
use std::sync::Arc;

use verre_engine::LoadedModel;

/// The model whose file the environment variable `var` names, or `None` (printing that the
/// test is skipped) where it is not set.
pub fn load(var: &str) -> Option<Arc<LoadedModel>> {
    let path = PathBuf::from(std::env::var_os(var).or_else(|| {
        eprintln!("skipped: set {var} to the model file");
        None
    })?);
    let model = LoadedModel::load(path.clone())
        .unwrap_or_else(|e| panic!("loading {} (from {var}): {e:#}", path.display()));
    Some(Arc::new(model))
}
