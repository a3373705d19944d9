//! Triage for the review queue: which message a person should look at first and why, the
//! search over what verre may decrypt, and the label values a pipeline declared.
//!
//! Content is encrypted at rest, so nothing here runs in SQL: the queue's messages are
//! decrypted by the store as it reads them, and ranked and matched here, in Rust, over a
//! bounded number of them ([`SCAN_LIMIT`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use regex::Regex;
use serde::Serialize;
use serde_json::Value;
use verre_store::review::QueueItem;

/// The most messages of one queue view read, ranked and searched.
pub const SCAN_LIMIT: usize = 1000;

/// How long a computed ranking is reused while the queue's state stays the same (the time
/// waited counts a point an hour, so a little staleness changes nothing).
pub const RANKING_TTL: Duration = Duration::from_secs(30);

/// A label value of a message, as the queue shows and filters it.
#[derive(Debug, Clone, Serialize)]
pub struct Label {
    pub key: String,
    pub value: String,
}

/// One message of the queue as the desk ranks and shows it.
#[derive(Debug)]
pub struct Triaged {
    pub item: QueueItem,
    pub subject: String,
    pub from: String,
    /// The mail's `Date` header, else when verre read it.
    pub received: i64,
    pub labels: Vec<Label>,
    pub declared: BTreeMap<String, Vec<String>>,
    pub priority: Priority,
}

/// The queue views ranked lately, each under its filter with the queue's state
/// ([`verre_store::Store::queue_state`]) it was computed from: a page view, or a j/k to the
/// next message, while nothing changed reuses it instead of decrypting and ranking the
/// queue again.
#[derive(Debug, Default)]
pub struct RankingCache {
    entries: Mutex<HashMap<String, CachedRanking>>,
    /// Messages read for a ranking since start (what the cache saves).
    messages_read: AtomicU64,
}

#[derive(Debug)]
struct CachedRanking {
    state: Vec<i64>,
    at: Instant,
    ranked: Arc<Vec<Triaged>>,
}

/// The most queue views kept (one per status and label filter in use).
const RANKINGS_KEPT: usize = 64;

impl RankingCache {
    /// The ranking of `view` computed from `state` within [`RANKING_TTL`].
    pub fn get(&self, view: &str, state: &[i64]) -> Option<Arc<Vec<Triaged>>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let hit = entries.get(view)?;
        (hit.state == state && hit.at.elapsed() < RANKING_TTL).then(|| hit.ranked.clone())
    }

    pub fn put(&self, view: &str, state: Vec<i64>, ranked: Arc<Vec<Triaged>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, c| c.at.elapsed() < RANKING_TTL);
        if entries.len() >= RANKINGS_KEPT {
            entries.clear();
        }
        let at = Instant::now();
        entries.insert(view.to_string(), CachedRanking { state, at, ranked });
    }

    /// Count `n` messages read for a ranking.
    pub fn read(&self, n: usize) {
        self.messages_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Messages read for rankings since start.
    pub fn messages_read(&self) -> u64 {
        self.messages_read.load(Ordering::Relaxed)
    }
}

/// How urgent a message is, with the reasons a reviewer sees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Priority {
    pub score: i64,
    pub reasons: Vec<String>,
}

/// What the ranking reads of one message.
pub struct Signals<'a> {
    pub extract: Option<&'a Value>,
    /// The label values the pipeline declared (`{"threat_level": ["low", ...]}`).
    pub declared: &'a BTreeMap<String, Vec<String>>,
    /// The lookups' results (`{"customer": [{"tier": "gold", ...}]}`).
    pub lookup: Option<&'a Value>,
    /// The mail's text (body and attachments) where deadlines are looked for.
    pub text: &'a str,
    /// How long the message has waited, in ms.
    pub waited_ms: i64,
}

/// The threat level's weight: its place in the declared values (the last is the worst),
/// else a known word.
fn threat_points(value: &str, declared: Option<&Vec<String>>) -> Option<i64> {
    if let Some(values) = declared.filter(|v| v.len() > 1) {
        let at = values.iter().position(|v| v == value)?;
        return Some(at as i64 * 400 / (values.len() as i64 - 1));
    }
    Some(match value {
        "low" => 0,
        "medium" => 130,
        "high" => 270,
        "critical" => 400,
        _ => return None,
    })
}

/// Customer tiers as CRMs name them, best first.
fn tier_points(tier: &str) -> i64 {
    match tier.to_lowercase().as_str() {
        "platinum" | "enterprise" | "vip" => 120,
        "gold" | "premium" => 80,
        "silver" => 40,
        "bronze" | "standard" => 20,
        _ => 10,
    }
}

fn deadline_patterns() -> &'static [(Regex, i64)] {
    static PATTERNS: OnceLock<Vec<(Regex, i64)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        [
            // "within 72 hours", "72-hour deadline"
            (
                r"(?i)\b(?:within|in|next)\s+(\d{1,3})\s*(?:hours?|h)\b",
                200,
            ),
            (r"(?i)\b(\d{1,3})[- ]hours?\b", 180),
            // "within 8 days", "8 days from receipt"
            (
                r"(?i)\b(?:within|in)\s+(\d{1,2})\s+(?:business\s+|working\s+)?days?\b",
                150,
            ),
            (r"(?i)\b(\d{1,2})\s+days?\s+(?:from|of|after)\b", 150),
            (
                r"(?i)\b(?:deadline|due(?:\s+(?:on|by|date))?|by)\s*:?\s*(\d{4}-\d{2}-\d{2})\b",
                60,
            ),
            (
                r"(?i)\b(immediately|urgent(?:ly)?|asap|as soon as possible)\b",
                100,
            ),
        ]
        .into_iter()
        .map(|(p, w)| {
            (
                Regex::new(p).expect("the deadline patterns are valid (tested)"),
                w,
            )
        })
        .collect()
    })
}

/// The strongest deadline the text states, as (points, the words found).
fn deadline(text: &str) -> Option<(i64, String)> {
    let mut best: Option<(i64, String)> = None;
    for (pattern, weight) in deadline_patterns() {
        for m in pattern.find_iter(text).take(20) {
            let words = m.as_str().split_whitespace().collect::<Vec<_>>().join(" ");
            if best.as_ref().is_none_or(|(w, _)| weight > w) {
                best = Some((*weight, words));
            }
        }
    }
    best
}

/// The message's priority: threat level, a deadline in its text, the customer's tier from
/// the lookups, and how long it has waited (a point an hour, up to four days).
pub fn priority(s: &Signals) -> Priority {
    let mut p = Priority::default();
    if let Some(level) = s
        .extract
        .and_then(|e| e.get("threat_level"))
        .and_then(Value::as_str)
        && let Some(points) = threat_points(level, s.declared.get("threat_level"))
    {
        p.score += points;
        if points > 0 {
            p.reasons.push(format!("threat level {level}"));
        }
    }
    if let Some((points, words)) = deadline(s.text) {
        p.score += points;
        p.reasons.push(format!("deadline: “{words}”"));
    }
    let tier = s
        .lookup
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|lookups| lookups.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|row| row.get("tier").and_then(Value::as_str))
        .max_by_key(|t| tier_points(t));
    if let Some(tier) = tier {
        p.score += tier_points(tier);
        p.reasons.push(format!("{tier} customer"));
    }
    let hours = s.waited_ms.max(0) / 3_600_000;
    p.score += hours.min(96);
    if hours >= 24 {
        p.reasons.push(format!("waiting {} days", hours / 24));
    }
    p
}

/// Whether every word of `query` occurs, ignoring case, in one of `fields`.
pub fn matches(query: &str, fields: &[&str]) -> bool {
    let haystack: Vec<String> = fields.iter().map(|f| f.to_lowercase()).collect();
    query
        .to_lowercase()
        .split_whitespace()
        .all(|word| haystack.iter().any(|f| f.contains(word)))
}

/// Every string in an extraction (nested values included), for the search.
pub fn strings_of(value: Option<&Value>) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            Value::Number(n) => {
                out.push_str(&n.to_string());
                out.push('\n');
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    if let Some(v) = value {
        walk(v, &mut out);
    }
    out
}

/// The label values a pipeline declared, from its stage stage's output (`labels`).
pub fn declared_labels(stage_output: Option<&Value>) -> BTreeMap<String, Vec<String>> {
    stage_output
        .and_then(|o| o.get("labels"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, values)| {
            let values = values
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            (name.clone(), values)
        })
        .collect()
}

/// The extraction's labels whose value the pipeline declared: (name, value).
pub fn declared_values_of(
    extract: Option<&Value>,
    declared: &BTreeMap<String, Vec<String>>,
) -> Vec<(String, String)> {
    declared
        .iter()
        .filter_map(|(name, values)| {
            let v = extract?.get(name)?.as_str()?;
            values
                .iter()
                .any(|d| d == v)
                .then(|| (name.clone(), v.to_string()))
        })
        .collect()
}

/// The `Date` header of the stored header text (RFC 3339 as the intake stores it, or RFC
/// 5322), as Unix ms.
pub fn date_header(headers: &str) -> Option<i64> {
    let mut value: Option<String> = None;
    for line in headers.lines() {
        match (&mut value, line.split_once(':')) {
            // A folded continuation of the Date header.
            (Some(v), _) if line.starts_with([' ', '\t']) => v.push_str(line),
            (Some(_), _) => break,
            (None, Some((name, rest))) if name.trim().eq_ignore_ascii_case("date") => {
                value = Some(rest.to_string())
            }
            _ => {}
        }
    }
    // The intake stores it as RFC 3339; a mail's own text is RFC 5322.
    let value = value?;
    let t = mail_parser::DateTime::parse_rfc3339(value.trim())
        .or_else(|| mail_parser::DateTime::parse_rfc822(value.trim()))?;
    t.is_valid().then(|| t.to_timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared() -> BTreeMap<String, Vec<String>> {
        declared_labels(Some(&json!({"labels": {
            "threat_level": ["low", "medium", "high", "critical"],
            "intent": ["question", "complaint", "legal", "incident", "newsletter"],
        }})))
    }

    fn rank(extract: Value, lookup: Value, text: &str, waited_h: i64) -> Priority {
        priority(&Signals {
            extract: Some(&extract),
            declared: &declared(),
            lookup: Some(&lookup),
            text,
            waited_ms: waited_h * 3_600_000,
        })
    }

    #[test]
    fn a_breach_with_a_deadline_outranks_a_newsletter_and_says_why() {
        let breach = rank(
            json!({"threat_level": "critical"}),
            json!({"customer": [{"tier": "platinum"}]}),
            "a personal data breach under GDPR Art. 33: we must notify the authority within 72 hours.",
            1,
        );
        let notice = rank(
            json!({"threat_level": "high"}),
            json!({"customer": []}),
            "Unless clause 7 is restored within 8 days, my client will terminate.",
            1,
        );
        let complaint = rank(
            json!({"threat_level": "medium"}),
            json!({"customer": [{"tier": "silver"}]}),
            "Third late delivery this month.",
            1,
        );
        let news = rank(
            json!({"threat_level": "low"}),
            json!({"customer": []}),
            "Early-bird tickets are 30% off until 31 December.",
            1,
        );
        assert!(breach.score > notice.score, "{breach:?} {notice:?}");
        assert!(notice.score > complaint.score, "{notice:?} {complaint:?}");
        assert!(complaint.score > news.score, "{complaint:?} {news:?}");
        assert_eq!(
            breach.reasons,
            [
                "threat level critical",
                "deadline: “within 72 hours”",
                "platinum customer"
            ]
        );
        assert_eq!(notice.reasons[1], "deadline: “within 8 days”");
        assert!(news.reasons.is_empty(), "{news:?}");
    }

    #[test]
    fn age_counts_but_does_not_outrank_a_threat() {
        let old = rank(json!({"threat_level": "low"}), json!({}), "", 24 * 30);
        let new = rank(json!({"threat_level": "low"}), json!({}), "", 0);
        let high = rank(json!({"threat_level": "high"}), json!({}), "", 0);
        assert!(old.score > new.score);
        assert!(high.score > old.score);
        assert_eq!(old.reasons, ["waiting 30 days"]);
    }

    #[test]
    fn an_invented_threat_value_counts_for_nothing() {
        let p = rank(json!({"threat_level": "apocalyptic"}), json!({}), "", 0);
        assert_eq!(p.score, 0);
    }

    #[test]
    fn only_declared_label_values_are_labels() {
        let d = declared();
        let extract = json!({"threat_level": "high", "intent": "Sender", "customer": "ACME"});
        assert_eq!(
            declared_values_of(Some(&extract), &d),
            [("threat_level".to_string(), "high".to_string())]
        );
        assert!(declared_labels(None).is_empty());
    }

    #[test]
    fn search_needs_every_word_somewhere_ignoring_case() {
        let fields = [
            "URGENT: patient records exposed",
            "p.devries@kliniek-noord.example",
        ];
        assert!(matches("patient KLINIEK", &fields));
        assert!(matches("", &fields));
        assert!(!matches("patient invoice", &fields));
        assert_eq!(
            strings_of(Some(&json!({"a": "x", "b": [1, {"c": "y"}], "d": true}))),
            "x\n1\ny\n"
        );
    }

    #[test]
    fn the_date_header_is_read_folded_or_not() {
        let h = "From: a@b.test\nDate: Fri, 27 Nov 2026 06:58:00 +0100\nSubject: x\n";
        assert_eq!(date_header(h), Some(1_795_759_080_000));
        let folded = "Subject: x\nDate: Fri,\n 27 Nov 2026 06:58:00 +0100\nTo: y\n";
        assert_eq!(date_header(folded), Some(1_795_759_080_000));
        let stored = "Subject: x\nDate: 2026-11-27T06:58:00+01:00\n";
        assert_eq!(date_header(stored), Some(1_795_759_080_000));
        assert_eq!(date_header("Subject: no date\n"), None);
        assert_eq!(date_header("Date: not a date\n"), None);
    }
}
