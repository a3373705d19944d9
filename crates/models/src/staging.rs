//! Atomic pulls. Every pull writes into a staging directory inside `models/` whose name ends
//! in `.partial` (`models/.pull-NAME-XXXX.partial/`): the model files, each hashed while it is
//! written and fsynced, then the manifest. Only then is the directory renamed to
//! `models/NAME/` — one atomic step on the same filesystem. A pull that fails or is killed
//! leaves at most a `.partial` directory, which `list` and `resolve` never look at, and
//! which the next pull deletes once it has sat untouched for [`STALE_AFTER`].

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::manifest::Manifest;

/// A `.partial` entry older than this belongs to a pull that died: an active pull writes
/// far more often.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(60 * 60);

const PARTIAL_SUFFIX: &str = ".partial";

/// A file the pull wrote: its size and sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WrittenFile {
    pub size_bytes: u64,
    pub sha256: String,
}

/// A model being assembled; dropped without [`Staging::commit`], it deletes itself.
pub(crate) struct Staging {
    dir: tempfile::TempDir,
}

impl Staging {
    /// A fresh staging directory in `models_dir` for the model `name`.
    pub(crate) fn new(models_dir: &Path, name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!(".pull-{name}-"))
            .suffix(PARTIAL_SUFFIX)
            .tempdir_in(models_dir)
            .with_context(|| format!("creating a staging directory in {}", models_dir.display()))?;
        Ok(Staging { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies `reader` to `relative` inside the staging directory, hashing as it goes, and
    /// fsyncs the file. `what` names the source in errors (a URL, a wheel entry).
    pub(crate) fn write_file(
        &self,
        relative: &Path,
        reader: &mut dyn Read,
        bar: &ProgressBar,
        what: &str,
    ) -> anyhow::Result<WrittenFile> {
        let mut file = self.create_file(relative)?;
        file.append(reader, what, &mut |chunk| bar.inc(chunk))?;
        file.finish()
    }

    /// Creates `relative` inside the staging directory for [`StagedFile::append`], for a
    /// file written from several sources in turn.
    pub(crate) fn create_file(&self, relative: &Path) -> anyhow::Result<StagedFile> {
        let path = self.dir.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(StagedFile {
            path,
            file,
            hasher: Sha256::new(),
            size_bytes: 0,
        })
    }

    /// Writes the manifest, then renames the staging directory to `models_dir/NAME`. With
    /// `replace`, an existing model of that name is swapped out and deleted; without it, an
    /// existing one is an error (another pull got there first).
    pub(crate) fn commit(
        self,
        models_dir: &Path,
        manifest: &Manifest,
        replace: bool,
    ) -> anyhow::Result<PathBuf> {
        manifest.write_to(self.dir.path())?;
        sync_dir(self.dir.path())?;
        let target = models_dir.join(&manifest.name);

        let mut replaced = None;
        if target.exists() {
            if !replace {
                bail!(
                    "{} appeared while pulling (another pull of {}?)",
                    target.display(),
                    manifest.name
                );
            }
            // Rename the old model aside first: rename(2) cannot replace a non-empty directory.
            let aside = tempfile::Builder::new()
                .prefix(&format!(".old-{}-", manifest.name))
                .suffix(PARTIAL_SUFFIX)
                .tempdir_in(models_dir)
                .with_context(|| format!("creating a directory in {}", models_dir.display()))?
                .keep();
            std::fs::remove_dir(&aside).with_context(|| format!("removing {}", aside.display()))?;
            std::fs::rename(&target, &aside).with_context(|| {
                format!(
                    "moving the old {} aside to {}",
                    target.display(),
                    aside.display()
                )
            })?;
            replaced = Some(aside);
        }

        let staged = self.dir.path().to_path_buf();
        if let Err(err) = std::fs::rename(&staged, &target) {
            if let Some(aside) = &replaced {
                // Put the old model back rather than leave the name empty.
                let _ = std::fs::rename(aside, &target);
            }
            return Err(err)
                .with_context(|| format!("renaming {} to {}", staged.display(), target.display()));
        }
        // The directory now lives under its final name; nothing left for TempDir to delete.
        let _ = self.dir.keep();
        sync_dir(models_dir)?;
        if let Some(aside) = replaced
            && let Err(err) = std::fs::remove_dir_all(&aside)
        {
            tracing::warn!(
                "could not delete the replaced model at {}: {err}",
                aside.display()
            );
        }
        Ok(target)
    }
}

/// A file being written into a staging directory, hashed as it grows.
pub(crate) struct StagedFile {
    path: PathBuf,
    file: File,
    hasher: Sha256,
    size_bytes: u64,
}

impl StagedFile {
    /// Appends everything `reader` yields, calling `on_chunk` with each chunk's length, and
    /// returns how many bytes it appended. `what` names the source in errors.
    pub(crate) fn append(
        &mut self,
        reader: &mut dyn Read,
        what: &str,
        on_chunk: &mut dyn FnMut(u64),
    ) -> anyhow::Result<u64> {
        let mut buffer = vec![0u8; 1 << 20];
        let mut appended = 0u64;
        loop {
            let read = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("reading {what} after {appended} bytes"));
                }
            };
            let chunk = &buffer[..read];
            self.file
                .write_all(chunk)
                .with_context(|| format!("writing {}", self.path.display()))?;
            self.hasher.update(chunk);
            appended += read as u64;
            self.size_bytes += read as u64;
            on_chunk(read as u64);
        }
        Ok(appended)
    }

    /// Bytes written so far.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Flushes the file to disk and returns its size and sha256.
    pub(crate) fn finish(self) -> anyhow::Result<WrittenFile> {
        self.file
            .sync_all()
            .with_context(|| format!("flushing {} to disk", self.path.display()))?;
        Ok(WrittenFile {
            size_bytes: self.size_bytes,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }
}

/// A scratch directory in `models_dir` for downloads (`.LABEL-XXXX.partial`): on the same
/// disk as the models, deleted when dropped, and cleaned like any other `.partial` when a
/// pull is killed.
pub(crate) fn download_dir(models_dir: &Path, label: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!(".{label}-"))
        .suffix(PARTIAL_SUFFIX)
        .tempdir_in(models_dir)
        .with_context(|| format!("creating a download directory in {}", models_dir.display()))
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("flushing the directory {} to disk", dir.display()))
}

/// True for names that `list` and `resolve` must skip: staging and hidden entries.
pub(crate) fn is_hidden(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(PARTIAL_SUFFIX)
}

/// Deletes `.partial` entries in `models_dir` untouched for longer than `stale_after`: what
/// killed pulls left behind. Failures are logged, not returned: cleaning is a courtesy.
pub(crate) fn remove_stale_partials(models_dir: &Path, stale_after: Duration) {
    let Ok(items) = std::fs::read_dir(models_dir) else {
        return;
    };
    let now = SystemTime::now();
    for item in items.flatten() {
        let name = item.file_name();
        if !name.to_string_lossy().ends_with(PARTIAL_SUFFIX) {
            continue;
        }
        let path = item.path();
        let idle = newest_mtime(&path)
            .and_then(|newest| now.duration_since(newest).ok())
            .unwrap_or_default();
        if idle < stale_after {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => tracing::info!("removed {}, left by an interrupted pull", path.display()),
            Err(err) => tracing::warn!("could not remove {}: {err}", path.display()),
        }
    }
}

/// The latest modification time of `path` and, for a directory, of anything inside it.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let metadata = std::fs::symlink_metadata(path).ok()?;
    let mut newest = metadata.modified().ok()?;
    if metadata.is_dir() {
        for item in std::fs::read_dir(path).ok()?.flatten() {
            if let Some(inner) = newest_mtime(&item.path()) {
                newest = newest.max(inner);
            }
        }
    }
    Some(newest)
}

/// Errors unless `actual` is `expected` (case-insensitive hex).
pub(crate) fn verify_sha256(what: &str, expected: &str, actual: &str) -> anyhow::Result<()> {
    if !expected.eq_ignore_ascii_case(actual) {
        bail!(
            "{what}: sha256 mismatch: expected {expected}, got {actual}; the download was discarded"
        );
    }
    Ok(())
}

/// True for a string that is a sha256 in hex.
pub(crate) fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A byte-count progress bar on stderr (indicatif draws nothing when stderr is not a
/// terminal), or a hidden one when `enabled` is false.
pub(crate) fn byte_bar(enabled: bool, total: Option<u64>, message: String) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.with_message(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::ModelFormat;

    fn manifest(name: &str) -> Manifest {
        Manifest {
            name: name.into(),
            source: "test".into(),
            format: ModelFormat::Gguf,
            path: "m.gguf".into(),
            sha256: None,
            size_bytes: 3,
            files: vec![],
            pulled_at_unix: 0,
        }
    }

    #[test]
    fn commit_renames_and_drop_cleans_up() {
        let models = tempfile::tempdir().unwrap();
        let staging = Staging::new(models.path(), "m").unwrap();
        let written = staging
            .write_file(
                Path::new("m.gguf"),
                &mut &b"abc"[..],
                &ProgressBar::hidden(),
                "test",
            )
            .unwrap();
        assert_eq!(written.size_bytes, 3);
        assert_eq!(
            written.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let target = staging
            .commit(models.path(), &manifest("m"), false)
            .unwrap();
        assert_eq!(std::fs::read(target.join("m.gguf")).unwrap(), b"abc");
        assert!(Manifest::read_from(&target).unwrap().is_some());

        // A second commit of the same name: refused without replace, swaps with it.
        let staging = Staging::new(models.path(), "m").unwrap();
        staging
            .write_file(
                Path::new("m.gguf"),
                &mut &b"xyz"[..],
                &ProgressBar::hidden(),
                "test",
            )
            .unwrap();
        let staged = staging.path().to_path_buf();
        assert!(
            staging
                .commit(models.path(), &manifest("m"), false)
                .is_err()
        );
        assert!(
            !staged.exists(),
            "a refused commit must not leave its staging directory"
        );
        let staging = Staging::new(models.path(), "m").unwrap();
        staging
            .write_file(
                Path::new("m.gguf"),
                &mut &b"xyz"[..],
                &ProgressBar::hidden(),
                "test",
            )
            .unwrap();
        staging.commit(models.path(), &manifest("m"), true).unwrap();
        assert_eq!(std::fs::read(target.join("m.gguf")).unwrap(), b"xyz");
        let leftovers: Vec<_> = std::fs::read_dir(models.path())
            .unwrap()
            .map(|item| item.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("m")]);
    }

    #[test]
    fn only_stale_partials_are_removed() {
        let models = tempfile::tempdir().unwrap();
        let fresh = models.path().join(".pull-a-1.partial");
        let stale = models.path().join(".pull-b-2.partial");
        let model = models.path().join("c");
        for dir in [&fresh, &stale, &model] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("f"), b"x").unwrap();
        }
        let long_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
        for path in [
            stale.join("f"),
            stale.clone(),
            model.join("f"),
            model.clone(),
        ] {
            File::open(&path).unwrap().set_modified(long_ago).unwrap();
        }
        remove_stale_partials(models.path(), STALE_AFTER);
        assert!(fresh.exists());
        assert!(!stale.exists());
        assert!(model.exists(), "a stored model is never stale");
    }
}
