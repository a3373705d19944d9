//! Evidence for an extraction: for each field, where in the document its value stands (the
//! span, with the attachment and page for PDFs) and how sure the model was (the
//! probabilities of the tokens it wrote for the value). A reviewer checks the fields the
//! model was least sure of first, against the words they came from.
//!
//! [`evidence`] is the one entry point the extraction stage calls: the document text the
//! model read, the validated extraction, and the answer's tokens with their log-probabilities.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pages::{PageMap, PagePlace};

/// Below this confidence a field is marked for checking, unless the pipeline says
/// otherwise (`[extract] check_below`).
pub const DEFAULT_CHECK_BELOW: f32 = 0.5;

/// One token of the model's answer: its byte range in the answer text and its
/// log-probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenProb {
    pub start: usize,
    pub end: usize,
    pub logprob: f32,
}

/// The model's answer as written, token by token (from `logprobs` of the chat answer).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnswerTokens {
    pub text: String,
    pub tokens: Vec<TokenProb>,
}

impl AnswerTokens {
    /// The tokens of a chat answer's `choices[0].logprobs.content` (each with its exact
    /// `bytes`); None when the answer has no log-probabilities.
    pub fn from_chat(choice: &Value) -> Option<Self> {
        let content = choice["logprobs"]["content"].as_array()?;
        let mut bytes = Vec::new();
        let mut tokens = Vec::with_capacity(content.len());
        for t in content {
            let piece: Vec<u8> = match t["bytes"].as_array() {
                Some(b) => b
                    .iter()
                    .filter_map(|x| x.as_u64().map(|x| x as u8))
                    .collect(),
                None => t["token"].as_str()?.as_bytes().to_vec(),
            };
            let start = bytes.len();
            bytes.extend_from_slice(&piece);
            tokens.push(TokenProb {
                start,
                end: bytes.len(),
                logprob: t["logprob"].as_f64()? as f32,
            });
        }
        Some(Self {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            tokens,
        })
    }
}

/// Where a value stands in the document text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpan {
    /// Byte offsets into the document text.
    pub start: usize,
    pub end: usize,
    /// The text of the span, as it stands in the document.
    pub quote: String,
    /// The attachment and page it is on; None: the mail's own text.
    pub place: Option<PagePlace>,
}

/// What backs one extracted field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldEvidence {
    pub field: String,
    pub value: Value,
    /// None: the value is not written in the document (a label the model chose, a value it
    /// reworded or made up).
    pub span: Option<SourceSpan>,
    /// The lowest probability among the tokens the model wrote for the value; None
    /// without log-probabilities (a backend that gives none).
    pub confidence: Option<f32>,
    /// Below the pipeline's threshold: a person should check it.
    pub check: bool,
}

/// The evidence of one extraction: fields to check first, then the others in the
/// extraction's order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub fields: Vec<FieldEvidence>,
    pub check_below: f32,
}

/// The evidence for `extraction` (a JSON object) read from `document`: each top-level
/// field's span in the document and its confidence from `answer`'s tokens.
pub fn evidence(
    document: &str,
    extraction: &Value,
    answer: Option<&AnswerTokens>,
    check_below: f32,
) -> Evidence {
    let pages = PageMap::of(document);
    let value_ranges = answer.map(|a| value_ranges(&a.text)).unwrap_or_default();
    let mut fields: Vec<FieldEvidence> = extraction
        .as_object()
        .into_iter()
        .flatten()
        .map(|(field, value)| {
            let span = find_value(document, value).map(|(start, end)| SourceSpan {
                start,
                end,
                quote: document[start..end].to_string(),
                place: pages.at(start).cloned(),
            });
            let confidence = answer.and_then(|a| {
                let (s, e) = value_ranges.iter().find(|(k, _)| k == field)?.1;
                min_probability(&a.tokens, s, e)
            });
            FieldEvidence {
                field: field.clone(),
                value: value.clone(),
                span,
                check: confidence.is_some_and(|c| c < check_below),
                confidence,
            }
        })
        .collect();
    // Stable: the extraction's order within each group.
    fields.sort_by_key(|f| !f.check);
    Evidence {
        fields,
        check_below,
    }
}

/// The lowest token probability over the answer's bytes `start..end`.
fn min_probability(tokens: &[TokenProb], start: usize, end: usize) -> Option<f32> {
    tokens
        .iter()
        .filter(|t| t.start < end && t.end > start)
        .map(|t| t.logprob.exp())
        .reduce(f32::min)
}

/// The byte range of each top-level value in the first JSON object of `answer` (a
/// string's range without its quotes, when it is not empty).
pub fn value_ranges(answer: &str) -> Vec<(String, (usize, usize))> {
    let b = answer.as_bytes();
    let mut out = Vec::new();
    let Some(open) = answer.find('{') else {
        return out;
    };
    let mut i = open + 1;
    loop {
        i = skip_ws(b, i);
        if i >= b.len() || b[i] != b'"' {
            return out;
        }
        let key_end = skip_string(b, i);
        let Ok(key) = serde_json::from_str::<String>(&answer[i..key_end.min(b.len())]) else {
            return out;
        };
        i = skip_ws(b, key_end);
        if i >= b.len() || b[i] != b':' {
            return out;
        }
        let start = skip_ws(b, i + 1);
        let end = skip_value(b, start);
        if end > b.len() || end <= start {
            return out;
        }
        let range = if b[start] == b'"' && end - start > 2 {
            (start + 1, end - 1)
        } else {
            (start, end)
        };
        out.push((key, range));
        i = skip_ws(b, end);
        if i >= b.len() || b[i] != b',' {
            return out;
        }
        i += 1;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The index after the string that starts at `i` (a `"`).
fn skip_string(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len() + 1
}

/// The index after the JSON value that starts at `i`.
fn skip_value(b: &[u8], i: usize) -> usize {
    if i >= b.len() {
        return i;
    }
    match b[i] {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            b.len() + 1
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace()
            {
                j += 1;
            }
            j
        }
    }
}

/// The context paths a route's `when` expression reads (`extract.x`, `lookup.c[0].tier`,
/// `message.from`), each once, in the order written; text in quotes is skipped.
pub fn rule_paths(when: &str) -> Vec<String> {
    let b = when.as_bytes();
    let mut paths: Vec<String> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let root = &when[start..i];
                if !["extract", "lookup", "message"].contains(&root)
                    || (start > 0 && b[start - 1] == b'.')
                {
                    continue;
                }
                // Attribute and index steps: `.name`, `[0]`, `["key"]`.
                loop {
                    if i + 1 < b.len()
                        && b[i] == b'.'
                        && (b[i + 1].is_ascii_alphabetic() || b[i + 1] == b'_')
                    {
                        i += 1;
                        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                            i += 1;
                        }
                    } else if i < b.len() && b[i] == b'[' {
                        match when[i..].find(']') {
                            Some(close) if !when[i + 1..i + close].contains('[') => i += close + 1,
                            _ => break,
                        }
                    } else {
                        break;
                    }
                }
                let path = when[start..i].to_string();
                if path.len() > root.len() && !paths.contains(&path) {
                    paths.push(path);
                }
            }
            _ => i += 1,
        }
    }
    paths
}

/// Where `value` stands in `document`: text compared without case and with white space
/// collapsed (then by letters and digits alone), numbers as numbers in the forms invoices
/// print them (`1.234,50`, `1,234.50`), dates as dates (`7. Mai 2014` for `2014-05-07`).
pub fn find_value(document: &str, value: &Value) -> Option<(usize, usize)> {
    match value {
        Value::Number(n) => find_number(document, n.as_f64()?),
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => {
            let s = s.trim();
            if let Some(iso) = normalise_date(s).filter(|_| looks_like_date(s))
                && let Some(span) = find_date(document, &iso)
            {
                return Some(span);
            }
            find_text(document, s, Normal::Words)
                .or_else(|| find_text(document, s, Normal::Alnum))
                .or_else(|| {
                    let n = parse_number(s)?;
                    s.chars()
                        .all(|c| c.is_ascii_digit() || ".,-' ".contains(c))
                        .then(|| find_number(document, n))?
                })
        }
        _ => None,
    }
}

fn looks_like_date(s: &str) -> bool {
    s.chars().filter(char::is_ascii_digit).count() >= 4
}

#[derive(Clone, Copy, PartialEq)]
enum Normal {
    /// Case folded, runs of white space as one space.
    Words,
    /// Letters and digits only, case folded.
    Alnum,
}

/// `text` normalised, each character with the byte range of the original it comes from.
fn normalised(text: &str, how: Normal) -> Vec<(char, usize, usize)> {
    let mut out: Vec<(char, usize, usize)> = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        if c.is_whitespace() {
            if how == Normal::Words && out.last().is_some_and(|l| l.0 != ' ') {
                out.push((' ', i, end));
            }
            continue;
        }
        if how == Normal::Alnum && !c.is_alphanumeric() {
            continue;
        }
        for l in c.to_lowercase() {
            out.push((l, i, end));
        }
    }
    out
}

fn find_text(document: &str, needle: &str, how: Normal) -> Option<(usize, usize)> {
    let n: Vec<char> = normalised(needle, how).into_iter().map(|c| c.0).collect();
    let n: &[char] = match n.as_slice() {
        [' ', rest @ ..] => rest,
        all => all,
    };
    let min = if how == Normal::Alnum { 3 } else { 1 };
    if n.iter().filter(|c| c.is_alphanumeric()).count() < min {
        return None;
    }
    let d = normalised(document, how);
    (0..d.len().saturating_sub(n.len() - 1)).find_map(|i| {
        let window = &d[i..i + n.len()];
        if !window.iter().zip(n).all(|(a, c)| a.0 == *c) {
            return None;
        }
        let (start, end) = (window[0].1, window[n.len() - 1].2);
        // Not the middle of a longer word or number ("12" in "2012").
        let inside = |at: Option<char>, edge: Option<&char>| {
            at.is_some_and(char::is_alphanumeric) && edge.is_some_and(|c| c.is_alphanumeric())
        };
        let before = document[..start].chars().next_back();
        let after = document[end..].chars().next();
        (!inside(before, n.first()) && !inside(after, n.last())).then_some((start, end))
    })
}

/// Every number written in `document` (digits with `.`, `,`, `'` or a thin space between
/// groups), with its byte range.
fn numbers(document: &str) -> Vec<(usize, usize)> {
    let b = document.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric());
        if !starts {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        let mut j = i;
        while j < b.len() {
            if b[j].is_ascii_digit() {
                j += 1;
                end = j;
            } else if matches!(b[j], b'.' | b',' | b'\'' | b' ')
                && j + 1 < b.len()
                && b[j + 1].is_ascii_digit()
                // A space only between groups of three: "1 234,50", not "12 2014".
                && (b[j] != b' ' || (j + 4 <= b.len() && b[j + 1..j + 4].iter().all(u8::is_ascii_digit)
                    && b.get(j + 4).is_none_or(|c| !c.is_ascii_digit())))
            {
                j += 1;
            } else {
                break;
            }
        }
        out.push((start, end));
        i = end.max(i + 1);
    }
    out
}

fn find_number(document: &str, n: f64) -> Option<(usize, usize)> {
    numbers(document).into_iter().find(|&(s, e)| {
        parse_number(&document[s..e]).is_some_and(|x| (x.abs() - n.abs()).abs() < 0.005)
    })
}

fn find_date(document: &str, iso: &str) -> Option<(usize, usize)> {
    let words: Vec<(usize, usize)> = document
        .char_indices()
        .filter(|(i, c)| {
            c.is_alphanumeric()
                && document[..*i]
                    .chars()
                    .next_back()
                    .is_none_or(|p| !p.is_alphanumeric())
        })
        .map(|(i, _)| {
            let len = document[i..]
                .find(|c: char| !c.is_alphanumeric())
                .unwrap_or(document.len() - i);
            (i, i + len)
        })
        .collect();
    words.windows(3).find_map(|w| {
        let (start, end) = (w[0].0, w[2].1);
        let text = &document[start..end];
        (text.len() <= 30 && !text.contains('\n') && normalise_date(text).as_deref() == Some(iso))
            .then_some((start, end))
    })
}

/// A number as invoices print it: `1.234,56` and `1,234.56` (the last separator is the
/// decimal one unless three digits follow it), currency signs and letters ignored.
pub fn parse_number(s: &str) -> Option<f64> {
    let s: String = s
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.' || *c == ',' || *c == '-')
        .collect();
    let last = match s.rfind(['.', ',']) {
        Some(l) => l,
        None => return s.parse().ok(),
    };
    let (int, frac) = s.split_at(last);
    let int: String = int
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    if frac.len() == 3 {
        format!("{int}.{}", &frac[1..]).parse().ok()
    } else {
        s.replace(',', "").parse().ok()
    }
    .or_else(|| s.replace(',', "").parse().ok())
}

/// A date in the forms invoices use, as YYYY-MM-DD: `2014-05-07`, `07.05.2014` (day
/// first unless impossible), `May 7, 2014`, `7. Mai 2014`, `19 avril 2014`.
pub fn normalise_date(s: &str) -> Option<String> {
    // English, then the German, French and Dutch spellings that differ.
    const MONTHS: [&[&str]; 12] = [
        &["jan"],
        &["feb", "fév", "fev"],
        &["mar", "mär", "maa"],
        &["apr", "avr"],
        &["may", "mai", "mei"],
        &["jun", "juin"],
        &["jul", "juil"],
        &["aug", "aoû", "aou"],
        &["sep"],
        &["oct", "okt"],
        &["nov"],
        &["dec", "dez", "déc"],
    ];
    let s = s.trim();
    let tokens: Vec<String> = s
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
        .collect();
    let month_of = |t: &str| {
        MONTHS
            .iter()
            .position(|names| names.iter().any(|m| t.starts_with(m)))
            .map(|i| i as u32 + 1)
    };
    let num = |t: &str| {
        t.trim_end_matches(|c: char| c.is_alphabetic())
            .parse::<u32>()
            .ok()
    };
    let ymd = |y: u32, m: u32, d: u32| {
        ((1900..2200).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d))
            .then(|| format!("{y:04}-{m:02}-{d:02}"))
    };
    match tokens.as_slice() {
        [a, b, c] => {
            let (a_n, b_n, c_n) = (num(a), num(b), num(c));
            if let (Some(y), Some(m), Some(d)) = (a_n, b_n, c_n)
                && a.len() == 4
            {
                return ymd(y, m, d);
            }
            if let (Some(d), Some(m), Some(y)) = (a_n, b_n, c_n) {
                // Day first (European invoices), unless that is impossible.
                return ymd(y, m, d).or_else(|| ymd(y, d, m));
            }
            if let (Some(m), Some(d), Some(y)) = (month_of(a), b_n, c_n) {
                return ymd(y, m, d);
            }
            if let (Some(d), Some(m), Some(y)) = (a_n, month_of(b), c_n) {
                return ymd(y, m, d);
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DOC: &str = "From: Ann <ann@acme.example>\n\nPlease pay.\n\n[attachment invoice.pdf]\n[page 1]\nACME   GmbH\nRechnungsnr.: RE-2014/0815\nRechnungsdatum: 7. Mai 2014\n\n[page 2]\nSumme EUR 1.234,50\n";

    fn span_of(value: Value) -> Option<String> {
        find_value(DOC, &value).map(|(s, e)| DOC[s..e].to_string())
    }

    #[test]
    fn values_are_found_as_written_in_the_document() {
        assert_eq!(span_of(json!("acme gmbh")).as_deref(), Some("ACME   GmbH"));
        assert_eq!(
            span_of(json!("RE 2014 0815")).as_deref(),
            Some("RE-2014/0815")
        );
        assert_eq!(span_of(json!(1234.5)).as_deref(), Some("1.234,50"));
        assert_eq!(span_of(json!("1234.50")).as_deref(), Some("1.234,50"));
        assert_eq!(span_of(json!("2014-05-07")).as_deref(), Some("7. Mai 2014"));
        assert_eq!(
            span_of(json!("ann@acme.example")).as_deref(),
            Some("ann@acme.example")
        );
        // Not in the text, or only inside a longer word.
        assert_eq!(span_of(json!("high")), None);
        assert_eq!(span_of(json!(20)), None);
        assert_eq!(span_of(json!("ACM")), None);
        assert_eq!(span_of(json!(true)), None);
    }

    #[test]
    fn spans_name_the_attachment_and_page() {
        let e = evidence(DOC, &json!({"total": 1234.5, "customer": "Ann"}), None, 0.5);
        let total = &e.fields[0];
        assert_eq!(total.field, "total");
        let place = total.span.as_ref().unwrap().place.clone().unwrap();
        assert_eq!(place.attachment.as_deref(), Some("invoice.pdf"));
        assert_eq!(place.page, Some(2));
        let customer = e.fields[1].span.as_ref().unwrap();
        assert_eq!((customer.quote.as_str(), &customer.place), ("Ann", &None));
    }

    #[test]
    fn value_ranges_cover_each_top_level_value() {
        let answer = r#"Sure: {"a": "x\"y", "n": -1.5e3, "o": {"k": [1, "}"]}, "e": ""}"#;
        let ranges = value_ranges(answer);
        let text: Vec<(&str, &str)> = ranges
            .iter()
            .map(|(k, (s, e))| (k.as_str(), &answer[*s..*e]))
            .collect();
        assert_eq!(
            text,
            [
                ("a", "x\\\"y"),
                ("n", "-1.5e3"),
                ("o", "{\"k\": [1, \"}\"]}"),
                ("e", "\"\"")
            ]
        );
    }

    /// An answer as the engine tokenizes it, each token with a probability.
    fn answer(pieces: &[(&str, f32)]) -> AnswerTokens {
        let choice = json!({"logprobs": {"content": pieces.iter().map(|(t, p)| json!({
            "token": t, "logprob": p.ln(), "bytes": t.as_bytes(),
        })).collect::<Vec<_>>()}});
        AnswerTokens::from_chat(&choice).unwrap()
    }

    #[test]
    fn confidence_is_the_least_sure_token_of_the_value_and_unsure_fields_come_first() {
        let a = answer(&[
            ("{\"", 1.0),
            ("customer", 1.0),
            ("\": \"", 1.0),
            ("Ann", 0.9),
            ("\", \"", 1.0),
            ("total", 1.0),
            ("\": ", 1.0),
            ("12", 0.3),
            ("34.5", 0.8),
            ("}", 1.0),
        ]);
        assert_eq!(a.text, "{\"customer\": \"Ann\", \"total\": 1234.5}");
        let extraction = json!({"customer": "Ann", "total": 1234.5});
        let e = evidence(DOC, &extraction, Some(&a), 0.5);
        let got: Vec<(&str, bool)> = e
            .fields
            .iter()
            .map(|f| (f.field.as_str(), f.check))
            .collect();
        assert_eq!(got, [("total", true), ("customer", false)]);
        assert!((e.fields[0].confidence.unwrap() - 0.3).abs() < 1e-5);
        assert!((e.fields[1].confidence.unwrap() - 0.9).abs() < 1e-5);
        // Without log-probabilities: spans, no confidence, nothing marked.
        let e = evidence(DOC, &extraction, None, 0.5);
        assert!(e.fields.iter().all(|f| f.confidence.is_none() && !f.check));
    }

    #[test]
    fn a_rule_names_the_values_it_reads() {
        assert_eq!(
            rule_paths(
                r#"extract.threat_level in ["high", "critical"] or (lookup.customer and lookup.customer[0].tier == "gold" and "extract.x" != message.from)"#
            ),
            [
                "extract.threat_level",
                "lookup.customer",
                "lookup.customer[0].tier",
                "message.from"
            ]
        );
        assert!(rule_paths("true").is_empty());
    }

    #[test]
    fn numbers_and_dates_read_like_a_person_would() {
        assert_eq!(parse_number("€ 717,97"), Some(717.97));
        assert_eq!(parse_number("1,234.50"), Some(1234.5));
        assert_eq!(parse_number("42"), Some(42.0));
        assert_eq!(
            normalise_date("August 3, 2014").as_deref(),
            Some("2014-08-03")
        );
        assert_eq!(normalise_date("07.05.2014").as_deref(), Some("2014-05-07"));
        assert_eq!(normalise_date("2023"), None);
    }
}
