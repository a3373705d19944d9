//! Where a value stands in a document's text, and on which page: the evidence of an
//! extraction (verre-intake) and a reviewer's correction (verre-server's review pages) find
//! their spans the same way. Text is compared without case and with white space collapsed
//! (then by letters and digits alone), numbers as numbers in the forms invoices print them
//! (`1.234,50`, `1,234.50`), dates as dates (`7. Mai 2014` for `2014-05-07`).

pub mod pages;

use serde_json::Value;

pub use pages::{PageMap, PagePlace};

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

/// The lines around a span (the line it is on, and the ones before and after), at most
/// about 400 bytes: what a later extraction is shown as an example of a
/// corrected field.
pub fn context_of(document: &str, start: usize, end: usize) -> String {
    let line_start = |at: usize| document[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = |at: usize| document[at..].find('\n').map_or(document.len(), |i| at + i);
    let mut s = line_start(start);
    if s > 0 {
        s = line_start(s - 1);
    }
    let mut e = line_end(end);
    if e < document.len() {
        e = line_end(e + 1);
    }
    let (mut s, mut e) = (s.max(start.saturating_sub(200)), e.min(end + 200));
    while !document.is_char_boundary(s) {
        s -= 1;
    }
    while !document.is_char_boundary(e) {
        e += 1;
    }
    document[s..e].trim().to_string()
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
    fn a_context_is_the_lines_around_the_words() {
        let doc = "a\nb\nInvoice no: 42\nc\nd";
        let s = doc.find("42").unwrap();
        assert_eq!(context_of(doc, s, s + 2), "b\nInvoice no: 42\nc");
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
