//! Evidence for an extraction: for each field, where in the document its value stands (the
//! span, with the attachment and page for PDFs) and how sure the model was (the
//! probabilities of the tokens it wrote for the value). A reviewer checks the fields the
//! model was least sure of first, against the words they came from.
//!
//! [`evidence`] is the one entry point the extraction stage calls: the document text the
//! model read, the validated extraction, and the answer's tokens with their log-probabilities.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use verre_spans::PageMap;
pub use verre_spans::{PagePlace, context_of, find_value, normalise_date, parse_number};

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
    /// The document text the model read, which the spans point into (what the review page
    /// shows with the spans highlighted).
    #[serde(default)]
    pub document: String,
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
        document: document.to_string(),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DOC: &str = "From: Ann <ann@acme.example>\n\nPlease pay.\n\n[attachment invoice.pdf]\n[page 1]\nACME   GmbH\nRechnungsnr.: RE-2014/0815\nRechnungsdatum: 7. Mai 2014\n\n[page 2]\nSumme EUR 1.234,50\n";

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
}
