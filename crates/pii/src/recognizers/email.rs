//! E-mail addresses: a dot-atom local part, `@`, and a domain whose last label is
//! alphabetic. Message identifiers (`Message-ID: <…@host>`) share the syntax but name no
//! one, so addresses on those header lines are skipped.

use std::sync::LazyLock;

use regex::Regex;

use super::{char_before, line_start};
use crate::detect::{Candidate, DetectOptions, PiiKind};

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"[\p{L}\p{N}_%+\-](?:[\p{L}\p{N}._%+\-]*[\p{L}\p{N}_%+\-])?@(?:[\p{L}\p{N}](?:[\p{L}\p{N}\-]{0,61}[\p{L}\p{N}])?\.)+\p{L}{2,24}",
    )
    .expect("e-mail pattern")
});

const MESSAGE_ID_HEADERS: [&str; 5] = [
    "message-id:",
    "content-id:",
    "in-reply-to:",
    "references:",
    "resent-message-id:",
];

pub(super) fn find(text: &str, _opts: &DetectOptions, out: &mut Vec<Candidate>) {
    for m in EMAIL.find_iter(text) {
        // A longer local part glued to the left ("a..b@x") is not an address we can trust.
        if char_before(text, m.start()).is_some_and(|c| c == '.' || c == '@') {
            continue;
        }
        let line = &text[line_start(text, m.start())..m.start()];
        let header = line.trim_start().to_ascii_lowercase();
        if MESSAGE_ID_HEADERS.iter().any(|h| header.starts_with(h)) {
            continue;
        }
        out.push(Candidate {
            kind: PiiKind::Email,
            start: m.start(),
            end: m.end(),
            score: 0.95,
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::{DetectOptions, PiiKind, detect};

    fn emails(text: &str) -> Vec<String> {
        detect(text, &DetectOptions::only(&[PiiKind::Email]))
            .into_iter()
            .map(|s| s.text)
            .collect()
    }

    #[test]
    fn finds_addresses_in_prose_and_headers() {
        assert_eq!(
            emails("write to jean.dupont@example.fr."),
            ["jean.dupont@example.fr"]
        );
        assert_eq!(
            emails("From: Test User <test@example.org>"),
            ["test@example.org"]
        );
        assert_eq!(
            emails("(max+tag@mail.example.co.uk)"),
            ["max+tag@mail.example.co.uk"]
        );
        assert_eq!(
            emails("Grüße an jürgen.müller@bücher.de"),
            ["jürgen.müller@bücher.de"]
        );
    }

    #[test]
    fn skips_message_ids_and_non_addresses() {
        assert!(emails("Message-ID: <multi-001@example.test>").is_empty());
        assert!(emails("Content-ID: <image001.png@01D2.example>").is_empty());
        assert!(emails("user@localhost and @handle and a@b.c").is_empty());
    }
}
