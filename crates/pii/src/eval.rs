//! Measuring [`detect`](crate::detect) against labelled text: precision and recall per
//! kind, with the misses and false alarms listed so that a regression can be read; and
//! [`measure_leaks`], what a [`Pseudonymizer`](crate::Pseudonymizer) leaves in clear.
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

/// What a pseudonymiser left in clear, per kind: the measure of the gateway's promise
/// that personal data does not leave, where [`evaluate`] measures the detector's spans.
#[derive(Debug, Clone, Default)]
pub struct LeakReport {
    pub counts: BTreeMap<PiiKind, LeakCounts>,
    /// Words of text that is not personal data (outside every label), and how many of
    /// them were replaced anyway.
    pub other_words: usize,
    pub other_words_replaced: usize,
    /// One line per value not wholly replaced, with what the backend would have read.
    pub leaks: Vec<String>,
    /// One line per replaced word outside the labels.
    pub false_alarms: Vec<String>,
}

/// Counts for one kind in a [`LeakReport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeakCounts {
    /// Labelled values.
    pub values: usize,
    /// Values whose text does not appear in the pseudonymised document.
    pub text_gone: usize,
    /// Values whose text is gone and every letter and digit of which was inside a
    /// replaced span: no word of the value, not a particle ("van", "de"), was left.
    pub replaced: usize,
}

impl LeakCounts {
    /// Share of values wholly replaced; 1.0 when there is none.
    pub fn recall(&self) -> f64 {
        if self.values == 0 {
            1.0
        } else {
            self.replaced as f64 / self.values as f64
        }
    }
}

impl LeakReport {
    /// Counts of `kind` (zero if it never occurred).
    pub fn get(&self, kind: PiiKind) -> LeakCounts {
        self.counts.get(&kind).copied().unwrap_or_default()
    }

    /// Share of the words outside the labels that were replaced.
    pub fn other_words_replaced_share(&self) -> f64 {
        if self.other_words == 0 {
            0.0
        } else {
            self.other_words_replaced as f64 / self.other_words as f64
        }
    }

    /// The table for docs/GDPR.md: one row per kind that has values, then all together.
    pub fn markdown_table(&self) -> String {
        let mut out = String::from(
            "| kind | values | text gone | wholly replaced | recall |\n|---|---:|---:|---:|---:|\n",
        );
        let mut total = LeakCounts::default();
        for kind in PiiKind::ALL {
            let c = self.get(kind);
            if c.values == 0 {
                continue;
            }
            total.values += c.values;
            total.text_gone += c.text_gone;
            total.replaced += c.replaced;
            leak_row(&mut out, kind.as_str(), c);
        }
        leak_row(&mut out, "**all**", total);
        out
    }
}

fn leak_row(out: &mut String, name: &str, c: LeakCounts) {
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {:.3} |",
        c.values,
        c.text_gone,
        c.replaced,
        c.recall()
    );
}

/// Sends every text through a [`Pseudonymizer`](crate::Pseudonymizer) with `opts` (one
/// per text, as the gateway makes one per request) and measures, for each label, whether
/// its value left in clear, and for the words outside the labels, how many were replaced.
pub fn measure_leaks(texts: &[LabelledText], opts: &crate::PseudonymizeOptions) -> LeakReport {
    measure_leaks_with(texts, opts, |_| Vec::new())
}

/// [`measure_leaks`], with names from elsewhere for each text (a named-entity model's, a
/// CRM's) added to `opts.detect.extra_names` as a caller of the pseudonymiser would.
pub fn measure_leaks_with(
    texts: &[LabelledText],
    opts: &crate::PseudonymizeOptions,
    mut names: impl FnMut(&LabelledText) -> Vec<String>,
) -> LeakReport {
    let mut report = LeakReport::default();
    for doc in texts {
        let mut opts = opts.clone();
        opts.detect.extra_names.extend(names(doc));
        // What `Pseudonymizer::pseudonymize` does, with the spans kept to see what each
        // label was covered by.
        let spans = detect(&doc.text, &opts.detect);
        let sent = crate::Pseudonymizer::new(opts.clone()).pseudonymize_spans(&doc.text, &spans);
        let replaced = |i: usize| spans.iter().any(|s| s.start <= i && i < s.end);
        for l in &doc.labels {
            let value = &doc.text[l.start..l.end];
            let counts = report.counts.entry(l.kind).or_default();
            counts.values += 1;
            let text_gone = !sent.contains(value);
            let covered = doc.text[l.start..l.end]
                .char_indices()
                .all(|(i, c)| !c.is_alphanumeric() || replaced(l.start + i));
            counts.text_gone += usize::from(text_gone);
            counts.replaced += usize::from(text_gone && covered);
            if !(text_gone && covered) {
                let near: Vec<&str> = spans
                    .iter()
                    .filter(|s| s.start < l.end && l.start < s.end)
                    .map(|s| s.text.as_str())
                    .collect();
                report.leaks.push(format!(
                    "{}: {} {value:?} {}",
                    doc.name,
                    l.kind,
                    if near.is_empty() {
                        "left in clear".to_string()
                    } else {
                        format!("only partly replaced ({near:?})")
                    }
                ));
            }
        }
        for (start, end) in words(&doc.text) {
            if doc.labels.iter().any(|l| l.start < end && start < l.end) {
                continue;
            }
            report.other_words += 1;
            if let Some(s) = spans.iter().find(|s| s.start < end && start < s.end) {
                report.other_words_replaced += 1;
                report.false_alarms.push(format!(
                    "{}: {:?} replaced as {} {:?}",
                    doc.name,
                    &doc.text[start..end],
                    s.kind,
                    s.text
                ));
            }
        }
    }
    report
}

/// Byte ranges of the white-space separated words of `text` that hold a letter or digit.
fn words(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                if text[s..i].chars().any(char::is_alphanumeric) {
                    out.push((s, i));
                }
                start = None;
            }
            _ => {}
        }
    }
    out
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
        docs.extend(load_marked_file(&path)?);
    }
    Ok(docs)
}

/// Reads one file of labelled text: documents separated by a line holding only `%%`,
/// named `file.txt#n`; lines starting with `# ` before the first document are comments.
pub fn load_marked_file(path: &Path) -> Result<Vec<LabelledText>, String> {
    let content =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut body = content.as_str();
    while body.starts_with("# ") {
        body = body.split_once('\n').map_or("", |(_, rest)| rest);
    }
    body.split("\n%%\n")
        .enumerate()
        .map(|(i, part)| LabelledText::parse(&format!("{file}#{}", i + 1), part))
        .collect()
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
    fn leaks_count_values_left_whole_or_in_part() {
        let docs = [LabelledText::parse(
            "t",
            "Dear [[person:Anna Schmidt]], mail [[email:a@example.org]] or [[phone:12]]. Thanks",
        )
        .unwrap()];
        let report = measure_leaks(&docs, &crate::PseudonymizeOptions::default());
        assert_eq!(report.get(PiiKind::Person).replaced, 1);
        assert_eq!(report.get(PiiKind::Email).replaced, 1);
        // "12" is no phone number anyone recognises: it stays, and is reported.
        let phone = report.get(PiiKind::Phone);
        assert_eq!((phone.values, phone.text_gone, phone.replaced), (1, 0, 0));
        assert_eq!(report.leaks, ["t: phone \"12\" left in clear"]);
        assert_eq!(report.other_words, 4);
        assert_eq!(report.other_words_replaced, 0);
        assert!(
            report
                .markdown_table()
                .contains("| phone | 1 | 0 | 0 | 0.000 |")
        );
    }

    #[test]
    fn a_partly_replaced_value_is_a_leak() {
        // "Anna" is replaced, "Xyzzyq" is not: the value's text is gone from what is sent,
        // and still it is a leak.
        let docs = [LabelledText::parse("t", "wrote [[person:Anna / Xyzzyq]] today").unwrap()];
        let opts = crate::PseudonymizeOptions {
            detect: DetectOptions {
                extra_names: vec!["Anna".into()],
                ..DetectOptions::only(&[PiiKind::Person])
            },
        };
        let report = measure_leaks(&docs, &opts);
        let c = report.get(PiiKind::Person);
        assert_eq!((c.values, c.text_gone, c.replaced), (1, 1, 0));
        assert_eq!(
            report.leaks,
            ["t: person \"Anna / Xyzzyq\" only partly replaced ([\"Anna\"])"]
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
