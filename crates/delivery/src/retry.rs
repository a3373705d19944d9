//! When to try a delivery again, and what a target's answer means.
//!
//! The schedule is the Standard Webhooks one: at once, then after 5 s, 5 min, 30 min, 2 h,
//! 5 h, 10 h and 10 h. A `Retry-After` from the target pushes the next attempt later (never
//! earlier), by at most [`MAX_RETRY_AFTER`]: a target cannot park a delivery for a year.
//! `410 Gone` disables the endpoint. After the last attempt the delivery is
//! failed — kept, shown, and retried only by a person — never dropped.

use std::time::Duration;

use chrono::NaiveDateTime;

/// Delay before each attempt, the first immediate.
pub const RETRY_SCHEDULE: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// The longest delay a target's `Retry-After` may ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What happened on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The target answered with this status (and maybe `Retry-After`, in seconds).
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, reset, TLS failure or timeout.
    NoAnswer(String),
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again after this delay.
    RetryAfter(Duration),
    /// The attempts are used up: the delivery is failed (and stays visible).
    Failed(String),
    /// The endpoint said it is gone (410): disable it; nothing more is sent there.
    EndpointGone,
}

/// Decide after attempt number `attempt` (1 for the first).
pub fn next(attempt: usize, result: &Attempt) -> Outcome {
    let why = match result {
        Attempt::Status { code, .. } if (200..300).contains(code) => return Outcome::Delivered,
        Attempt::Status { code: 410, .. } => return Outcome::EndpointGone,
        Attempt::Status { code, .. } => format!("HTTP {code}"),
        Attempt::NoAnswer(e) => e.clone(),
    };
    let Some(&scheduled) = RETRY_SCHEDULE.get(attempt) else {
        return Outcome::Failed(format!("{why} after {attempt} attempts"));
    };
    let asked = match result {
        Attempt::Status {
            retry_after: Some(d),
            ..
        } => (*d).min(MAX_RETRY_AFTER),
        _ => Duration::ZERO,
    };
    Outcome::RetryAfter(scheduled.max(asked))
}

/// `Retry-After` as seconds or an HTTP date, relative to `now` (seconds since the epoch).
pub fn parse_retry_after(value: &str, now: u64) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_to_unix(v)?;
    Some(Duration::from_secs(when.saturating_sub(now)))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) as seconds since the epoch.
fn httpdate_to_unix(s: &str) -> Option<u64> {
    let when = NaiveDateTime::parse_from_str(s, "%a, %d %b %Y %H:%M:%S GMT").ok()?;
    u64::try_from(when.and_utc().timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Attempt {
        Attempt::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn the_schedule_then_failure() {
        assert_eq!(next(1, &status(204)), Outcome::Delivered);
        assert_eq!(
            next(1, &status(500)),
            Outcome::RetryAfter(Duration::from_secs(5))
        );
        assert_eq!(
            next(2, &status(503)),
            Outcome::RetryAfter(Duration::from_secs(300))
        );
        assert_eq!(
            next(7, &Attempt::NoAnswer("connection refused".into())),
            Outcome::RetryAfter(Duration::from_secs(36_000))
        );
        match next(8, &status(500)) {
            Outcome::Failed(why) => assert!(why.contains("HTTP 500") && why.contains("8 attempts")),
            other => panic!("{other:?}"),
        }
        assert_eq!(next(3, &status(410)), Outcome::EndpointGone);
    }

    #[test]
    fn retry_after_only_ever_delays() {
        let later = Attempt::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(60)),
        };
        assert_eq!(
            next(1, &later),
            Outcome::RetryAfter(Duration::from_secs(60))
        );
        // A Retry-After shorter than the schedule does not bring the attempt forward.
        assert_eq!(
            next(2, &later),
            Outcome::RetryAfter(Duration::from_secs(300))
        );
        // A year asked for: an hour at most, or the schedule's own delay when longer.
        let a_year = Attempt::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(365 * 86_400)),
        };
        assert_eq!(next(1, &a_year), Outcome::RetryAfter(MAX_RETRY_AFTER));
        assert_eq!(
            next(7, &a_year),
            Outcome::RetryAfter(Duration::from_secs(36_000))
        );
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_717),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 900_000_000),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }

    #[test]
    fn a_retry_after_date_is_a_real_date() {
        assert_eq!(
            parse_retry_after("Thu, 29 Feb 2024 23:59:59 GMT", 1_709_251_139),
            Some(Duration::from_secs(60))
        );
        for bad in [
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Wed, 29 Feb 2023 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 06 Nov 1994 08:49 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, 0), None, "{bad}");
        }
    }
}
