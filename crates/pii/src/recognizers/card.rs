//! Payment card numbers: 13 to 19 digits, optionally in groups separated by spaces or
//! dashes, with a correct Luhn digit and an issuer prefix of a card network.

use std::sync::LazyLock;

use regex::Regex;

use super::{char_at, char_before};
use crate::checksum::luhn_is_valid;
use crate::detect::{Candidate, DetectOptions, PiiKind};

/// Groups of digits separated by single spaces or dashes.
static RUN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9]+(?:[ \-][0-9]+)*").expect("card pattern"));

pub(super) fn find(text: &str, _opts: &DetectOptions, out: &mut Vec<Candidate>) {
    for m in RUN.find_iter(text) {
        if char_before(text, m.start()).is_some_and(|c| c.is_alphanumeric() || c == '.' || c == ',')
        {
            continue;
        }
        let glued_after = char_at(text, m.end()).is_some_and(char::is_alphanumeric);
        // A run can hold a card between other numbers ("order 1234 4111 1111 1111 1111
        // 2025"): from each group, take the longest run of whole groups that is a card.
        let groups: Vec<(usize, usize)> = m
            .as_str()
            .split([' ', '-'])
            .scan(m.start(), |at, g| {
                let span = (*at, *at + g.len());
                *at += g.len() + 1;
                Some(span)
            })
            .collect();
        let mut i = 0;
        while i < groups.len() {
            let found = (i + 1..=groups.len()).rev().find_map(|j| {
                if j == groups.len() && glued_after {
                    return None;
                }
                let (start, end) = (groups[i].0, groups[j - 1].1);
                let digits: String = text[start..end]
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect();
                ((13..=19).contains(&digits.len())
                    && luhn_is_valid(&digits)
                    && known_issuer(&digits))
                .then_some((j, start, end, j - i > 1))
            });
            match found {
                Some((j, start, end, grouped)) => {
                    let score = if grouped { 0.95 } else { 0.9 };
                    out.push(Candidate {
                        kind: PiiKind::Card,
                        start,
                        end,
                        score,
                    });
                    i = j;
                }
                None => i += 1,
            }
        }
    }
}

/// Whether the number starts like a card of a major network (Visa, Mastercard, American
/// Express, Discover, Diners, JCB, UnionPay, Maestro, Mir) with a length it issues.
fn known_issuer(digits: &str) -> bool {
    let prefix = |n: usize| digits[..n].parse::<u32>().unwrap_or(0);
    let len = digits.len();
    match digits.as_bytes()[0] {
        b'4' => matches!(len, 13 | 16 | 19),
        b'2' => {
            (2221..=2720).contains(&prefix(4)) && len == 16 || (2200..=2204).contains(&prefix(4))
        }
        b'5' => {
            (51..=55).contains(&prefix(2)) && len == 16
                || (len >= 13 && matches!(prefix(2), 50 | 56..=58))
        }
        b'3' => {
            matches!(prefix(2), 34 | 37) && len == 15
                || (300..=305).contains(&prefix(3)) && len >= 14
                || matches!(prefix(2), 36 | 38 | 39) && len >= 14
                || (3528..=3589).contains(&prefix(4)) && len >= 16
        }
        b'6' => len >= 16 || len >= 13 && matches!(prefix(2), 63 | 67),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::{DetectOptions, PiiKind, detect};

    fn cards(text: &str) -> Vec<String> {
        detect(text, &DetectOptions::only(&[PiiKind::Card]))
            .into_iter()
            .map(|s| s.text)
            .collect()
    }

    #[test]
    fn finds_cards_in_common_layouts() {
        assert_eq!(
            cards("Visa 4111 1111 1111 1111 exp 12/27"),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(cards("card=5555-5555-5555-4444;"), ["5555-5555-5555-4444"]);
        assert_eq!(cards("Amex 3782 822463 10005."), ["3782 822463 10005"]);
        assert_eq!(cards("4012888888881881"), ["4012888888881881"]);
        assert_eq!(cards("4111 1111 1111 1111 2025"), ["4111 1111 1111 1111"]);
        assert_eq!(
            cards("order 1234 4111 1111 1111 1111 5555-5555-5555-4444"),
            ["4111 1111 1111 1111", "5555-5555-5555-4444"]
        );
    }

    #[test]
    fn rejects_bad_luhn_unknown_issuers_and_amounts() {
        assert!(cards("4111 1111 1111 1112").is_empty());
        // Luhn-valid but no network issues numbers starting with 9 or 1.
        assert!(cards("9999 9999 9999 9995").is_empty());
        assert!(cards("1234 5678 9012 3452").is_empty());
        assert!(cards("total 1.234.567.890.123,00").is_empty());
        assert!(cards("ref A4111111111111111").is_empty());
    }
}
