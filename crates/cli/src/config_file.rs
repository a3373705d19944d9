//! Which verre.toml a command reads: one rule for every command (docs/CONFIG.md).

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use verre_config::VerreConfig;

/// `--config FILE`, else `$VERRE_HOME/verre.toml` when it exists, else `./verre.toml` when
/// it exists, else none.
pub(crate) fn config_path(given: Option<&Path>) -> Option<PathBuf> {
    let home = verre_models::ModelStore::default_home().ok();
    verre_config::discover(given, home.as_deref())
}

/// The verre.toml of [`config_path`], parsed and checked; none when there is none.
pub(crate) fn load(given: Option<&Path>) -> Result<Option<VerreConfig>> {
    config_path(given)
        .map(|path| VerreConfig::load(&path).map_err(Into::into))
        .transpose()
}

/// [`load`] for a command that needs a verre.toml.
pub(crate) fn require(given: Option<&Path>) -> Result<VerreConfig> {
    load(given)?.ok_or_else(|| {
        let home = verre_models::ModelStore::default_home()
            .map(|h| format!("{} nor ", h.display()))
            .unwrap_or_default();
        anyhow!("no verre.toml in {home}the current directory: give --config FILE")
    })
}

/// The gateway of `config`, with its `[pii] ner_model` loaded (a store name such as
/// `rampart-ner`, or a model directory).
pub(crate) fn gateway(
    config: &VerreConfig,
) -> Result<std::sync::Arc<verre_server::gateway::Gateway>> {
    use anyhow::Context;
    let gateway = verre_server::gateway::Gateway::new(config)?;
    let Some(name) = &config.pii.ner_model else {
        return Ok(std::sync::Arc::new(gateway));
    };
    let path = if Path::new(name).is_dir() {
        PathBuf::from(name)
    } else {
        verre_models::ModelStore::from_env()?
            .resolve(name)
            .with_context(|| format!("[pii] ner_model = {name:?}"))?
            .path
    };
    let model = verre_engine::model::ner::TokenClassifier::load(&path)
        .with_context(|| format!("[pii] ner_model = {name:?}: loading {}", path.display()))?;
    if !model.knows_persons() {
        anyhow::bail!(
            "[pii] ner_model = {name:?}: none of its labels ({}) names a person",
            model.labels().join(", ")
        );
    }
    let model = verre_server::gateway::pii::PersonModel::new(model, config.pii.ner_threshold);
    Ok(std::sync::Arc::new(
        gateway.with_person_model(std::sync::Arc::new(model)),
    ))
}
