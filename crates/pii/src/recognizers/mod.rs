//! One recogniser per kind; each returns candidates that [`crate::detect`] resolves.
//!
//! Recognisers validate what they can (checksums, libphonenumber metadata, std's address
//! parsers) and use context words where the pattern alone is ambiguous (dates of birth,
//! names, phone numbers written without a trunk prefix).

mod card;
mod dob;
mod email;
mod iban;
mod ip;
mod person;
pub use person::vet_proposed_names;
mod phone;
mod table;
mod url;

use crate::detect::{Candidate, DetectOptions, PiiKind};

pub(crate) use phone::normalize as normalize_phone;

/// A recogniser appends its candidates for a text.
type Recognizer = fn(&str, &DetectOptions, &mut Vec<Candidate>);

/// Runs every recogniser that `opts` asks for.
pub(crate) fn all(text: &str, opts: &DetectOptions) -> Vec<Candidate> {
    let mut out = Vec::new();
    let recognizers: [(PiiKind, Recognizer); 8] = [
        (PiiKind::Email, email::find),
        (PiiKind::Phone, phone::find),
        (PiiKind::Iban, iban::find),
        (PiiKind::Card, card::find),
        (PiiKind::Ip, ip::find),
        (PiiKind::Url, url::find),
        (PiiKind::DateOfBirth, dob::find),
        (PiiKind::Person, person::find),
    ];
    for (kind, find) in recognizers {
        if opts.wants(kind) {
            find(text, opts, &mut out);
        }
    }
    // Tables find persons, phone numbers and birth dates by their column's header.
    if [PiiKind::Person, PiiKind::Phone, PiiKind::DateOfBirth]
        .into_iter()
        .any(|k| opts.wants(k))
    {
        table::find(text, opts, &mut out);
    }
    out
}

/// The char ending just before byte `i`, if any.
pub(crate) fn char_before(text: &str, i: usize) -> Option<char> {
    text[..i].chars().next_back()
}

/// The char starting at byte `i`, if any.
pub(crate) fn char_at(text: &str, i: usize) -> Option<char> {
    text[i..].chars().next()
}

/// Whether `text[start..end]` is not glued to a letter or digit on either side.
pub(crate) fn is_word_bounded(text: &str, start: usize, end: usize) -> bool {
    !char_before(text, start).is_some_and(char::is_alphanumeric)
        && !char_at(text, end).is_some_and(char::is_alphanumeric)
}

/// Up to `max_bytes` of text before byte `i`, cut back to a char boundary, lower-cased.
pub(crate) fn window_before(text: &str, i: usize, max_bytes: usize) -> String {
    let mut from = i.saturating_sub(max_bytes);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    text[from..i].to_lowercase()
}

/// The line (without its terminator) that contains byte `i`.
pub(crate) fn line_start(text: &str, i: usize) -> usize {
    text[..i].rfind('\n').map_or(0, |p| p + 1)
}

/// The start of the line that contains byte `i`, or of the text at most `max_bytes`
/// before `i` when the line is longer: rules that look back a few words stay linear on
/// text without line breaks.
pub(crate) fn near_line_start(text: &str, i: usize, max_bytes: usize) -> usize {
    let mut from = i.saturating_sub(max_bytes);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    text[from..i].rfind('\n').map_or(from, |p| from + p + 1)
}
