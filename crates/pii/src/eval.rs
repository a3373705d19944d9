//! Measuring [`detect`](crate::detect) against labelled text: precision and recall per
//! kind, with the misses and false alarms listed so that a regression can be read.
//!
//! Labelled text marks each span inline as `[[kind:text]]`, for instance
//! `Call [[phone:+33 6 12 34 56 78]] or write to [[email:jd@example.fr]]`; everything
//! outside the marks is a negative. A detection counts only with the same kind and the
//! same byte range as a label (no credit for half a name).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::detect::{DetectOptions, PiiKind, detect};

/// A gold span in a labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
}

/// A text with its gold spans, and a name for reports.
#[derive(Debug, Clone)]
pub struct LabelledText {
    pub name: String,
    pub text: String,
    pub labels: Vec<Label>,
}

impl LabelledText {
    /// Parses `[[kind:text]]` marks out of `marked`.
    pub fn parse(name: &str, marked: &str) -> Result<LabelledText, String> {
        let mut text = String::with_capacity(marked.len());
        let mut labels = Vec::new();
        let mut rest = marked;
        while let Some(open) = rest.find("[[") {
            text.push_str(&rest[..open]);
            let inner = &rest[open + 2..];
            let close = inner
                .find("]]")
                .ok_or_else(|| format!("{name}: unclosed [[ near {:?}", excerpt(inner)))?;
            let (kind, value) = inner[..close]
                .split_once(':')
                .ok_or_else(|| format!("{name}: label without kind: {:?}", &inner[..close]))?;
            let kind: PiiKind = kind.parse().map_err(|e| format!("{name}: {e}"))?;
            labels.push(Label {
                kind,
                start: text.len(),
                end: text.len() + value.len(),
            });
            text.push_str(value);
            rest = &inner[close + 2..];
        }
        text.push_str(rest);
        Ok(LabelledText {
            name: name.to_string(),
            text,
            labels,
        })
    }

    /// Labels every occurrence of each `(kind, value)` in `text` that is not glued to a
    /// letter or digit: for texts that cannot carry inline marks (files read from
    /// elsewhere), with labels kept in a side file.
    pub fn from_occurrences(
        name: &str,
        text: String,
        values: &[(PiiKind, String)],
    ) -> LabelledText {
        let mut labels = Vec::new();
        for (kind, value) in values {
            for (start, _) in text.match_indices(value.as_str()) {
                let end = start + value.len();
                let glued = text[..start]
                    .chars()
                    .next_back()
                    .is_some_and(char::is_alphanumeric)
                    || text[end..]
                        .chars()
                        .next()
                        .is_some_and(char::is_alphanumeric);
                if !glued {
                    labels.push(Label {
                        kind: *kind,
                        start,
                        end,
                    });
                }
            }
        }
        labels.sort_by_key(|l| (l.start, l.end));
        labels.dedup();
        LabelledText {
            name: name.to_string(),
            text,
            labels,
        }
    }
}

fn excerpt(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Counts for one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
}

impl Counts {
    /// Share of detections that are right; 1.0 when nothing was detected.
    pub fn precision(&self) -> f64 {
        let detected = self.true_positives + self.false_positives;
        if detected == 0 {
            1.0
        } else {
            self.true_positives as f64 / detected as f64
        }
    }

    /// Share of labels that were detected; 1.0 when there is no label.
    pub fn recall(&self) -> f64 {
        let labelled = self.true_positives + self.false_negatives;
        if labelled == 0 {
            1.0
        } else {
            self.true_positives as f64 / labelled as f64
        }
    }
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub counts: BTreeMap<PiiKind, Counts>,
    /// One line per miss or false alarm: `file: missed phone "…"`.
    pub errors: Vec<String>,
}

impl Report {
    /// Counts of `kind` (zero if it never occurred).
    pub fn get(&self, kind: PiiKind) -> Counts {
        self.counts.get(&kind).copied().unwrap_or_default()
    }

    /// The table for docs/GDPR.md: one row per kind, then all kinds together.
    pub fn markdown_table(&self) -> String {
        let mut out = String::from(
            "| kind | labels | detected | correct | precision | recall |\n|---|---:|---:|---:|---:|---:|\n",
        );
        let mut total = Counts::default();
        for kind in PiiKind::ALL {
            let c = self.get(kind);
            total.true_positives += c.true_positives;
            total.false_positives += c.false_positives;
            total.false_negatives += c.false_negatives;
            row(&mut out, kind.as_str(), c);
        }
        row(&mut out, "**all**", total);
        out
    }
}

fn row(out: &mut String, name: &str, c: Counts) {
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {:.3} | {:.3} |",
        c.true_positives + c.false_negatives,
        c.true_positives + c.false_positives,
        c.true_positives,
        c.precision(),
        c.recall()
    );
}

/// Runs [`detect`] on every text and compares with its labels.
pub fn evaluate(texts: &[LabelledText], opts: &DetectOptions) -> Report {
    let mut report = Report::default();
    for doc in texts {
        let found = detect(&doc.text, opts);
        for kind in PiiKind::ALL {
            let counts = report.counts.entry(kind).or_default();
            let gold: Vec<&Label> = doc.labels.iter().filter(|l| l.kind == kind).collect();
            let predicted: Vec<_> = found.iter().filter(|s| s.kind == kind).collect();
            for l in &gold {
                if predicted
                    .iter()
                    .any(|s| s.start == l.start && s.end == l.end)
                {
                    counts.true_positives += 1;
                } else {
                    counts.false_negatives += 1;
                    let near: Vec<&str> = found
                        .iter()
                        .filter(|s| s.start < l.end && l.start < s.end)
                        .map(|s| s.kind.as_str())
                        .collect();
                    report.errors.push(format!(
                        "{}: missed {kind} {:?}{}",
                        doc.name,
                        &doc.text[l.start..l.end],
                        if near.is_empty() {
                            String::new()
                        } else {
                            format!(" (overlapped by {})", near.join(", "))
                        }
                    ));
                }
            }
            for s in &predicted {
                if !gold.iter().any(|l| s.start == l.start && s.end == l.end) {
                    counts.false_positives += 1;
                    report
                        .errors
                        .push(format!("{}: false {kind} {:?}", doc.name, s.text));
                }
            }
        }
    }
    report
}

/// This crate's labelled set, split as docs/GDPR.md reports it.
#[derive(Debug, Clone, Default)]
pub struct LabelledSet {
    /// `tests/data/*.txt`, plus the shared evaluation data when it was found.
    pub development: Vec<LabelledText>,
    /// `tests/data/heldout/*.txt`, each written after the rules it first measured.
    pub held_out: Vec<LabelledText>,
    /// Whether `development` includes the shared evaluation data.
    pub with_shared_data: bool,
}

impl LabelledSet {
    /// Loads the crate's fixtures and, if `shared_eval` is given, the shared evaluation
    /// data labelled by `tests/data/shared_eval_labels.tsv`.
    pub fn load(shared_eval: Option<&Path>) -> Result<LabelledSet, String> {
        let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut development = load_marked_dir(&data)?;
        if let Some(dir) = shared_eval {
            let labels_path = data.join("shared_eval_labels.tsv");
            let labels = std::fs::read_to_string(&labels_path)
                .map_err(|e| format!("reading {}: {e}", labels_path.display()))?;
            development.extend(load_shared_eval(dir, &labels)?);
        }
        Ok(LabelledSet {
            development,
            held_out: load_marked_dir(&data.join("heldout"))?,
            with_shared_data: shared_eval.is_some(),
        })
    }

    /// Every text, development first.
    pub fn all(&self) -> Vec<LabelledText> {
        self.development
            .iter()
            .chain(&self.held_out)
            .cloned()
            .collect()
    }
}

/// The shared evaluation folder: `$VERRE_SHARED_EVAL`, else `shared/eval` beside the
/// repository (as CI lays it out); `Err` with the path looked at when it is not there.
pub fn shared_eval_dir() -> Result<PathBuf, PathBuf> {
    let dir = match std::env::var_os("VERRE_SHARED_EVAL") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/eval"),
    };
    if dir.join("invoices").is_dir() {
        Ok(dir)
    } else {
        Err(dir)
    }
}

/// Reads every `*.txt` of `dir` as labelled text; documents inside a file are separated
/// by a line holding only `%%` and named `file.txt#n`.
pub fn load_marked_dir(dir: &Path) -> Result<Vec<LabelledText>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let content = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (i, part) in content.split("\n%%\n").enumerate() {
            docs.push(LabelledText::parse(&format!("{file}#{}", i + 1), part)?);
        }
    }
    Ok(docs)
}

/// Reads the invoice answers (`invoices/*.json`, as `key: value` lines) and malformed
/// mails (`mail/malformed/*.eml`, as they are) of the shared evaluation folder, labelled
/// by `labels` (a TSV of `file`, `kind`, `value`; see `tests/data/shared_eval_labels.tsv`).
/// Files without a label line are all negatives.
pub fn load_shared_eval(eval_dir: &Path, labels: &str) -> Result<Vec<LabelledText>, String> {
    let mut values: BTreeMap<String, Vec<(PiiKind, String)>> = BTreeMap::new();
    for (n, line) in labels.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut cols = line.splitn(3, '\t');
        let (Some(file), Some(kind), Some(value)) = (cols.next(), cols.next(), cols.next()) else {
            return Err(format!(
                "labels line {}: expected file, kind, value separated by tabs",
                n + 1
            ));
        };
        let kind: PiiKind = kind
            .parse()
            .map_err(|e| format!("labels line {}: {e}", n + 1))?;
        values
            .entry(file.to_string())
            .or_default()
            .push((kind, value.to_string()));
    }
    let mut docs = Vec::new();
    for (folder, ext) in [("invoices", "json"), ("mail/malformed", "eml")] {
        let dir = eval_dir.join(folder);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        files.sort();
        for path in files {
            let name = format!(
                "{folder}/{}",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            );
            let bytes =
                std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let text = if ext == "json" {
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("parsing {}: {e}", path.display()))?;
                let mut text = String::new();
                render_json(&value, "", &mut text);
                text
            } else {
                String::from_utf8_lossy(&bytes).into_owned()
            };
            docs.push(LabelledText::from_occurrences(
                &name,
                text,
                values.get(&name).map_or(&[], |v| v),
            ));
        }
    }
    for file in values.keys() {
        if !docs.iter().any(|d| &d.name == file) {
            return Err(format!(
                "labels name {file}, which is not in {}",
                eval_dir.display()
            ));
        }
    }
    Ok(docs)
}

/// An invoice answer as a person would read it off the page: one `key: value` a line.
fn render_json(value: &serde_json::Value, key: &str, out: &mut String) {
    match value {
        serde_json::Value::Array(items) => items.iter().for_each(|v| render_json(v, key, out)),
        serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| render_json(v, k, out)),
        serde_json::Value::String(s) => {
            let _ = writeln!(out, "{key}: {s}");
        }
        other => {
            let _ = writeln!(out, "{key}: {other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_marks_into_byte_ranges() {
        let t = LabelledText::parse("t", "Né [[person:Zoé Ł]], [[email:z@example.fr]].").unwrap();
        assert_eq!(t.text, "Né Zoé Ł, z@example.fr.");
        assert_eq!(&t.text[t.labels[0].start..t.labels[0].end], "Zoé Ł");
        assert_eq!(&t.text[t.labels[1].start..t.labels[1].end], "z@example.fr");
        assert!(LabelledText::parse("t", "[[email:x").is_err());
        assert!(LabelledText::parse("t", "[[ssn:1]]").is_err());
    }

    #[test]
    fn counts_exact_matches_only() {
        let docs = [LabelledText::parse(
            "t",
            "Dear [[person:Anna Schmidt]], mail [[email:a@example.org]] or 06 12",
        )
        .unwrap()];
        let report = evaluate(&docs, &DetectOptions::default());
        assert_eq!(
            report.get(PiiKind::Email),
            Counts {
                true_positives: 1,
                false_positives: 0,
                false_negatives: 0
            }
        );
        assert_eq!(report.get(PiiKind::Person).true_positives, 1);
        assert_eq!(report.get(PiiKind::Phone), Counts::default());
        assert!(
            report
                .markdown_table()
                .contains("| email | 1 | 1 | 1 | 1.000 | 1.000 |")
        );
    }

    #[test]
    fn occurrences_skip_glued_matches() {
        let t = LabelledText::from_occurrences(
            "t",
            "Anna, Annabel, Anna".into(),
            &[(PiiKind::Person, "Anna".into())],
        );
        assert_eq!(t.labels.len(), 2);
    }
}
