//! IBANs, compact or in groups (`DE89 3704 0044 0532 0130 00`): a country code with a
//! known IBAN length, then exactly that many characters, then the mod-97 check. Shapes
//! that fail the check are not reported.

use std::sync::LazyLock;

use regex::Regex;

use super::{char_at, char_before};
use crate::checksum::{iban_is_valid, iban_length};
use crate::detect::{Candidate, DetectOptions, PiiKind};

static START: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z]{2}[0-9]{2}").expect("IBAN start pattern"));

pub(super) fn find(text: &str, _opts: &DetectOptions, out: &mut Vec<Candidate>) {
    for m in START.find_iter(text) {
        if char_before(text, m.start()).is_some_and(char::is_alphanumeric) {
            continue;
        }
        let Some(len) = iban_length(&m.as_str()[..2].to_ascii_uppercase()) else {
            continue;
        };
        if let Some(end) = take_alnum(text, m.start(), len)
            && iban_is_valid(&text[m.start()..end].replace([' ', '\u{a0}', '-', '\r', '\n'], ""))
        {
            out.push(Candidate {
                kind: PiiKind::Iban,
                start: m.start(),
                end,
                score: 1.0,
            });
        }
    }
}

/// The end of `count` ASCII letters and digits from `start`, allowing one space, no-break
/// space, dash or line break (PDF text wraps long IBANs) between groups; `None` if the
/// text runs out or the last group goes on.
fn take_alnum(text: &str, start: usize, count: usize) -> Option<usize> {
    let mut taken = 0;
    let mut i = start;
    let mut last_was_sep = false;
    while taken < count {
        let c = char_at(text, i)?;
        if c.is_ascii_alphanumeric() {
            taken += 1;
            last_was_sep = false;
        } else if c == '\r' && text[i..].starts_with("\r\n") && !last_was_sep && taken > 0 {
            i += 1;
            last_was_sep = true;
        } else if matches!(c, ' ' | '\u{a0}' | '-' | '\n') && !last_was_sep && taken > 0 {
            last_was_sep = true;
        } else {
            return None;
        }
        i += c.len_utf8();
    }
    (!char_at(text, i).is_some_and(char::is_alphanumeric)).then_some(i)
}

#[cfg(test)]
mod tests {
    use crate::{DetectOptions, PiiKind, detect};

    fn ibans(text: &str) -> Vec<String> {
        detect(text, &DetectOptions::only(&[PiiKind::Iban]))
            .into_iter()
            .map(|s| s.text)
            .collect()
    }

    #[test]
    fn finds_grouped_and_compact_ibans() {
        assert_eq!(
            ibans("IBAN: DE89 3704 0044 0532 0130 00 BIC: COBADEFFXXX"),
            ["DE89 3704 0044 0532 0130 00"]
        );
        assert_eq!(ibans("IBAN NL91ABNA0417164300."), ["NL91ABNA0417164300"]);
        assert_eq!(
            ibans("FR14 2004 1010 0505 0001 3M02 606"),
            ["FR14 2004 1010 0505 0001 3M02 606"]
        );
        assert_eq!(ibans("iban nl91abna0417164300"), ["nl91abna0417164300"]);
        assert_eq!(
            ibans("DE89 3704 0044\r\n0532 0130 00\nBIC"),
            ["DE89 3704 0044\r\n0532 0130 00"]
        );
    }

    #[test]
    fn rejects_bad_checksums_wrong_lengths_and_glued_text() {
        assert!(ibans("DE89 3704 0044 0532 0130 01").is_empty());
        assert!(ibans("US1234567890").is_empty());
        assert!(ibans("DE89 3704 0044 0532 0130 001").is_empty());
        assert!(ibans("XDE89370400440532013000").is_empty());
        assert!(ibans("VAT NL810433941B01").is_empty());
    }
}
