//! The public detection API: kinds, spans, options, and the overlap resolution that turns
//! every recogniser's candidates into one sorted, non-overlapping list.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::recognizers;

/// A kind of personal data that [`detect`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    Iban,
    Card,
    Ip,
    Url,
    DateOfBirth,
    Person,
}

impl PiiKind {
    /// Every kind, in declaration order.
    pub const ALL: [PiiKind; 8] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::Iban,
        PiiKind::Card,
        PiiKind::Ip,
        PiiKind::Url,
        PiiKind::DateOfBirth,
        PiiKind::Person,
    ];

    /// The snake-case name used in configuration, tags and reports (`"date_of_birth"`).
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Iban => "iban",
            PiiKind::Card => "card",
            PiiKind::Ip => "ip",
            PiiKind::Url => "url",
            PiiKind::DateOfBirth => "date_of_birth",
            PiiKind::Person => "person",
        }
    }

    /// The label inside placeholders (`PERSON` in `<PERSON_1>`).
    pub fn placeholder_label(self) -> &'static str {
        match self {
            PiiKind::Email => "EMAIL",
            PiiKind::Phone => "PHONE",
            PiiKind::Iban => "IBAN",
            PiiKind::Card => "CARD",
            PiiKind::Ip => "IP",
            PiiKind::Url => "URL",
            PiiKind::DateOfBirth => "DATE_OF_BIRTH",
            PiiKind::Person => "PERSON",
        }
    }
}

impl std::fmt::Display for PiiKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PiiKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PiiKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown PII kind {s:?} (expected one of email, phone, iban, card, ip, url, date_of_birth, person)"))
    }
}

/// One piece of personal data found in a text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PiiSpan {
    pub kind: PiiKind,
    /// Byte offset of the first byte; always on a char boundary.
    pub start: usize,
    /// Byte offset one past the last byte; always on a char boundary.
    pub end: usize,
    /// `text[start..end]`.
    pub text: String,
    /// How sure the recogniser is, 0..=1: 1.0 for a checksum-validated IBAN or a name the
    /// caller supplied, lower for names found by context alone.
    pub score: f32,
}

/// What [`detect`] looks for and how. Deserialises from configuration with every field
/// optional (`{"kinds": ["email", "person"], "phone_regions": ["CH"]}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectOptions {
    /// Kinds to report; the others are not searched for. Default: all.
    pub kinds: Vec<PiiKind>,
    /// Regions (ISO 3166 alpha-2, e.g. `"FR"`) whose national formats a phone number may
    /// be written in; numbers in international form (`+49 …`, `0049 …`) are recognised
    /// whatever this says. Unknown codes are ignored. Default: the countries of the mail
    /// verre reads, FR, DE, IT, ES, NL, BE, AT, CH, GB, US.
    pub phone_regions: Vec<String>,
    /// Names known to be persons (for instance extracted by a model); every occurrence is
    /// reported with score 1.0, and so is each of their words of three letters or more
    /// that starts with a capital (a surname alone, "Mme Dupont" after "Jean Dupont").
    pub extra_names: Vec<String>,
    /// Spans scoring below this are dropped. Default 0.5, which keeps everything the
    /// recognisers report.
    pub min_score: f32,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            kinds: PiiKind::ALL.to_vec(),
            phone_regions: ["FR", "DE", "IT", "ES", "NL", "BE", "AT", "CH", "GB", "US"]
                .map(String::from)
                .to_vec(),
            extra_names: Vec::new(),
            min_score: 0.5,
        }
    }
}

impl DetectOptions {
    /// Default options restricted to `kinds`.
    pub fn only(kinds: &[PiiKind]) -> Self {
        DetectOptions {
            kinds: kinds.to_vec(),
            ..DetectOptions::default()
        }
    }

    pub(crate) fn wants(&self, kind: PiiKind) -> bool {
        self.kinds.contains(&kind)
    }
}

/// A recogniser's proposal before overlaps are resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

/// Finds personal data in `text`: spans sorted by start, never overlapping.
///
/// Where recognisers disagree, the longer span wins (a URL that contains an e-mail
/// address stays one URL, so no part of either is left in clear), then the higher score,
/// then the earlier start, then the kind's declaration order — the result never depends
/// on the order in which recognisers ran.
pub fn detect(text: &str, opts: &DetectOptions) -> Vec<PiiSpan> {
    let mut candidates = recognizers::all(text, opts);
    candidates.retain(|c| c.score >= opts.min_score && c.start < c.end && opts.wants(c.kind));
    resolve_overlaps(&mut candidates);
    candidates
        .into_iter()
        .map(|c| PiiSpan {
            kind: c.kind,
            start: c.start,
            end: c.end,
            text: text[c.start..c.end].to_string(),
            score: c.score,
        })
        .collect()
}

/// Keeps a maximal set of non-overlapping candidates, preferring longer, then
/// higher-scoring ones; leaves them sorted by start.
pub(crate) fn resolve_overlaps(candidates: &mut Vec<Candidate>) {
    candidates.sort_by(|a, b| {
        (b.end - b.start)
            .cmp(&(a.end - a.start))
            .then(b.score.total_cmp(&a.score))
            .then(a.start.cmp(&b.start))
            .then(a.kind.cmp(&b.kind))
    });
    // Kept spans are disjoint, so the only one that can overlap a candidate is the last
    // kept span starting before the candidate ends.
    let mut kept: BTreeMap<usize, Candidate> = BTreeMap::new();
    for c in candidates.drain(..) {
        let free = kept
            .range(..c.end)
            .next_back()
            .is_none_or(|(_, k)| k.end <= c.start);
        if free {
            kept.insert(c.start, c);
        }
    }
    *candidates = kept.into_values().collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(kind: PiiKind, start: usize, end: usize, score: f32) -> Candidate {
        Candidate {
            kind,
            start,
            end,
            score,
        }
    }

    #[test]
    fn container_beats_contained_and_result_is_sorted() {
        let mut c = vec![
            cand(PiiKind::Email, 20, 35, 0.95),
            cand(PiiKind::Url, 10, 40, 0.85),
            cand(PiiKind::Phone, 0, 8, 0.8),
        ];
        resolve_overlaps(&mut c);
        assert_eq!(
            c,
            vec![
                cand(PiiKind::Phone, 0, 8, 0.8),
                cand(PiiKind::Url, 10, 40, 0.85)
            ]
        );
    }

    #[test]
    fn resolution_does_not_depend_on_input_order() {
        let base = vec![
            cand(PiiKind::Phone, 0, 10, 0.8),
            cand(PiiKind::Card, 0, 10, 0.95),
            cand(PiiKind::Person, 5, 15, 0.7),
            cand(PiiKind::Ip, 12, 20, 0.9),
            cand(PiiKind::Url, 30, 40, 0.9),
            cand(PiiKind::Email, 30, 40, 0.9),
        ];
        let mut expected = base.clone();
        resolve_overlaps(&mut expected);
        // Same length: higher score wins (card over phone); same length and score: the
        // kind declared first wins (email over URL). The person span overlaps the card
        // and the IP, equal length to the card but lower score.
        assert_eq!(
            expected,
            vec![
                cand(PiiKind::Card, 0, 10, 0.95),
                cand(PiiKind::Ip, 12, 20, 0.9),
                cand(PiiKind::Email, 30, 40, 0.9)
            ]
        );
        // Every rotation and the reverse give the same answer.
        for r in 0..base.len() {
            let mut c = base.clone();
            c.rotate_left(r);
            resolve_overlaps(&mut c);
            assert_eq!(c, expected);
            let mut c = base.clone();
            c.rotate_left(r);
            c.reverse();
            resolve_overlaps(&mut c);
            assert_eq!(c, expected);
        }
    }

    #[test]
    fn options_deserialise_with_defaults() {
        let opts: DetectOptions =
            serde_json::from_str(r#"{"kinds": ["email", "person"], "phone_regions": ["CH"]}"#)
                .unwrap();
        assert_eq!(opts.kinds, [PiiKind::Email, PiiKind::Person]);
        assert_eq!(opts.phone_regions, ["CH"]);
        assert_eq!(opts.min_score, 0.5);
        assert!(serde_json::from_str::<DetectOptions>(r#"{"kind": []}"#).is_err());
    }

    #[test]
    fn offsets_are_bytes_on_char_boundaries_in_non_ascii_text() {
        let text =
            "Ελληνικά 日本 — Grüße von Jürgen Weiß: jürgen.weiß@beispiel.de, ☎ +49 30 901820 🎉";
        let spans = detect(text, &DetectOptions::default());
        let found: Vec<(PiiKind, &str)> = spans
            .iter()
            .map(|s| (s.kind, &text[s.start..s.end]))
            .collect();
        assert_eq!(
            found,
            [
                (PiiKind::Person, "Jürgen Weiß"),
                (PiiKind::Email, "jürgen.weiß@beispiel.de"),
                (PiiKind::Phone, "+49 30 901820"),
            ]
        );
        for s in &spans {
            assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end));
            assert_eq!(s.text, &text[s.start..s.end]);
        }
    }

    #[test]
    fn kind_names_round_trip() {
        for k in PiiKind::ALL {
            assert_eq!(k.as_str().parse::<PiiKind>().unwrap(), k);
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        assert!("ssn".parse::<PiiKind>().is_err());
    }
}
