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
