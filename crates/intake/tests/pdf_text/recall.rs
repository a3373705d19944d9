//! Word recall of one text against a reference: the share of the reference's words (as a
//! multiset) that the text also has. Both sides are normalised first, so that typography a
//! reader does not see is not counted as a miss:
//! - compatibility characters are folded as NFKC would for what PDFs produce: the Latin
//!   ligatures (U+FB00-FB06) become their letters, full-width ASCII (U+FF01-FF5E) becomes
//!   ASCII, no-break and other Unicode spaces become spaces;
//! - dashes and minus (U+2010-2015, U+2212) become `-`, curly quotes become `'` and `"`;
//! - soft hyphens and zero-width characters are dropped.
//!
//! Case, accents and punctuation are kept; words are what lies between whitespace.

use std::collections::HashMap;

pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{FB00}' => out.push_str("ff"),
            '\u{FB01}' => out.push_str("fi"),
            '\u{FB02}' => out.push_str("fl"),
            '\u{FB03}' => out.push_str("ffi"),
            '\u{FB04}' => out.push_str("ffl"),
            '\u{FB05}' | '\u{FB06}' => out.push_str("st"),
            '\u{FF01}'..='\u{FF5E}' => {
                out.push(char::from_u32(c as u32 - 0xFF01 + 0x21).expect("ASCII"))
            }
            '\u{00A0}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' => {
                out.push(' ')
            }
            '\u{2010}'..='\u{2015}' | '\u{2212}' => out.push('-'),
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{2032}' => out.push('\''),
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{2033}' => out.push('"'),
            '\u{00AD}' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' => {}
            c => out.push(c),
        }
    }
    out
}

fn words(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in normalise(text).split_whitespace() {
        *counts.entry(word.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Matched reference words over reference words (1.0 for an empty reference), and the
/// reference words that were missed (for the report).
pub fn word_recall(reference: &str, text: &str) -> (f64, Vec<String>) {
    let reference = words(reference);
    let text = words(text);
    let total: usize = reference.values().sum();
    if total == 0 {
        return (1.0, Vec::new());
    }
    let mut matched = 0;
    let mut missed = Vec::new();
    for (word, &n) in &reference {
        let found = text.get(word).copied().unwrap_or(0).min(n);
        matched += found;
        if found < n {
            missed.push(word.clone());
        }
    }
    missed.sort();
    (matched as f64 / total as f64, missed)
}
