//! IPv4 and IPv6 addresses, validated by the standard library's parsers. Dotted quads
//! that are version numbers ("v1.2.3.4", "version 10.0.0.1") or parts of longer dotted
//! strings are skipped.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::Regex;

use super::{char_at, char_before, window_before};
use crate::detect::{Candidate, DetectOptions, PiiKind};

static V4: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}").expect("IPv4 pattern"));
static V6: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)[0-9a-f]{0,4}(?::(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9a-f]{0,4})){2,7}")
        .expect("IPv6 pattern")
});

const VERSION_WORDS: [&str; 6] = ["version", "ver.", "release", "build", "firmware", "v."];

pub(super) fn find(text: &str, _opts: &DetectOptions, out: &mut Vec<Candidate>) {
    for m in V4.find_iter(text) {
        let before = char_before(text, m.start());
        let after = char_at(text, m.end());
        let glued_before = before.is_some_and(|c| c.is_alphanumeric() || c == '.' || c == '-');
        let glued_after = after.is_some_and(|c| c.is_alphanumeric() || c == '@' || c == '-')
            || (after == Some('.')
                && char_at(text, m.end() + 1).is_some_and(|c| c.is_ascii_digit()));
        if glued_before || glued_after || m.as_str().parse::<Ipv4Addr>().is_err() {
            continue;
        }
        let context = window_before(text, m.start(), 16);
        if VERSION_WORDS
            .iter()
            .any(|w| context.trim_end().ends_with(w))
        {
            continue;
        }
        out.push(Candidate {
            kind: PiiKind::Ip,
            start: m.start(),
            end: m.end(),
            score: 0.9,
        });
    }
    for m in V6.find_iter(text) {
        let s = m.as_str();
        if !s.contains("::") && s.matches(':').count() < 7 {
            continue;
        }
        // "a::b" parses, but an address written by a person almost always has a digit.
        if !s.chars().any(|c| c.is_ascii_digit()) {
            continue;
        }
        let glued = char_before(text, m.start())
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            || char_at(text, m.end()).is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            || (char_at(text, m.end()) == Some('.')
                && char_at(text, m.end() + 1).is_some_and(|c| c.is_ascii_hexdigit()));
        if glued || s.parse::<Ipv6Addr>().is_err() {
            continue;
        }
        out.push(Candidate {
            kind: PiiKind::Ip,
            start: m.start(),
            end: m.end(),
            score: 0.9,
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::{DetectOptions, PiiKind, detect};

    fn ips(text: &str) -> Vec<String> {
        detect(text, &DetectOptions::only(&[PiiKind::Ip]))
            .into_iter()
            .map(|s| s.text)
            .collect()
    }

    #[test]
    fn finds_v4_and_v6() {
        assert_eq!(ips("from [192.168.1.20] by mx"), ["192.168.1.20"]);
        assert_eq!(
            ips("client 2001:db8::8a2e:370:7334 connected"),
            ["2001:db8::8a2e:370:7334"]
        );
        assert_eq!(
            ips("loopback ::1, mapped ::ffff:10.0.0.1."),
            ["::1", "::ffff:10.0.0.1"]
        );
        assert_eq!(
            ips("fe80:0:0:0:202:b3ff:fe1e:8329"),
            ["fe80:0:0:0:202:b3ff:fe1e:8329"]
        );
    }

    #[test]
    fn skips_versions_times_and_out_of_range() {
        assert!(ips("version 1.2.3.4 and v10.0.0.1 and 1.2.3.4.5").is_empty());
        assert!(ips("at 10:30:00, 999.1.1.1, 01.02.2023, <1.2.3.4@example>").is_empty());
        assert!(ips("std::vector and a::b").is_empty());
    }
}
