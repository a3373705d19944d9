//! URLs with a scheme (`http`, `https`, `ftp`) or starting with `www.`. Bare domains are
//! not reported: they are rarely personal and collide with e-mail domains and file names.

use std::sync::LazyLock;

use regex::Regex;

use crate::detect::{Candidate, DetectOptions, PiiKind};

static URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\b(?:(?:https?|ftp)://|www\.)[^\s<>"'`{}|\\^\[\]]+"#).expect("URL pattern")
});

pub(super) fn find(text: &str, _opts: &DetectOptions, out: &mut Vec<Candidate>) {
    for m in URL.find_iter(text) {
        let url = trim_trailing(m.as_str());
        let end = m.start() + url.len();
        // "www." or "http://" alone is not a URL.
        if !url.trim_end_matches('/').contains('.')
            || url
                .to_ascii_lowercase()
                .trim_end_matches('/')
                .ends_with("www.")
        {
            continue;
        }
        out.push(Candidate {
            kind: PiiKind::Url,
            start: m.start(),
            end,
            score: 0.85,
        });
    }
}

/// Drops sentence punctuation after a URL, and a closing parenthesis it did not open.
fn trim_trailing(url: &str) -> &str {
    let mut url = url;
    loop {
        let trimmed = url.trim_end_matches(['.', ',', ';', ':', '!', '?', '*']);
        let trimmed = if trimmed.ends_with(')')
            && trimmed.matches('(').count() < trimmed.matches(')').count()
        {
            &trimmed[..trimmed.len() - 1]
        } else {
            trimmed
        };
        if trimmed.len() == url.len() {
            return url;
        }
        url = trimmed;
    }
}

#[cfg(test)]
mod tests {
    use crate::{DetectOptions, PiiKind, detect};

    fn urls(text: &str) -> Vec<String> {
        detect(text, &DetectOptions::only(&[PiiKind::Url]))
            .into_iter()
            .map(|s| s.text)
            .collect()
    }

    #[test]
    fn finds_urls_without_trailing_punctuation() {
        assert_eq!(
            urls("See https://example.com/a?b=c."),
            ["https://example.com/a?b=c"]
        );
        assert_eq!(urls("(voir www.exemple.fr/page)"), ["www.exemple.fr/page"]);
        assert_eq!(
            urls("wiki http://en.wikipedia.org/wiki/Foo_(bar), ok"),
            ["http://en.wikipedia.org/wiki/Foo_(bar)"]
        );
        assert_eq!(
            urls("\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">"),
            ["http://www.apple.com/DTDs/PropertyList-1.0.dtd"]
        );
    }

    #[test]
    fn ignores_bare_domains_and_empty_schemes() {
        assert!(urls("example.com and http:// and www.").is_empty());
    }
}
