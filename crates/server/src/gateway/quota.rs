//! Per-key limits from `[[key]]`: the models a key may use, its requests per minute and
//! its tokens per day.
//!
//! Requests per minute are counted in memory (a restart forgets at most a minute). Tokens
//! per day survive restarts: the day's tokens from before this process started are read
//! from the ledger once per key and day, and the tokens of this process's requests are
//! added as each answer ends. A day is a UTC day. A request is let in while the key is
//! under its limit, so requests already running when it is reached may go over it.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use verre_store::Store;

use crate::config::KeyLimits;
use crate::openai::error::ApiError;
use crate::state::unix_now;

const DAY_MS: i64 = 86_400_000;

pub struct Quotas {
    limits: HashMap<String, KeyLimits>,
    /// Per key: the minute (unix time / 60) being counted and its requests so far.
    minutes: Mutex<HashMap<String, (u64, u32)>>,
    /// Per key: tokens of the UTC day being counted.
    days: Mutex<HashMap<String, DayTokens>>,
    /// Unix ms this counter started: the ledger holds the tokens before it, memory after.
    started_ms: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct DayTokens {
    /// Days since the epoch.
    day: i64,
    /// The ledger's count before `started_ms`; `None` until read.
    before: Option<u64>,
    /// This process's count.
    spent: u64,
}

impl Quotas {
    pub fn new(limits: HashMap<String, KeyLimits>) -> Self {
        Self {
            limits,
            minutes: Mutex::default(),
            days: Mutex::default(),
            started_ms: verre_store::now_ms(),
        }
    }

    /// Let a request from `key` for `model` (known to the gateway as `canonical`) in, and
    /// count it; or the response that says why not. Requests without a key (no keys
    /// file) have no limits. `store` holds the ledger the day's tokens are read from.
    pub async fn admit(
        &self,
        key: Option<&str>,
        model: &str,
        canonical: Option<&str>,
        store: Option<&Store>,
    ) -> Result<(), Response> {
        let Some((key, limits)) = key.and_then(|k| self.limits.get_key_value(k)) else {
            return Ok(());
        };
        if let Some(limit) = limits.tokens_per_day {
            let now = verre_store::now_ms();
            let used = self.tokens_today(key, now, store).await;
            if used >= limit {
                let mut response = ApiError::queue_full(format!(
                    "the API key {key:?} has used {used} of its {limit} tokens for today (UTC)"
                ))
                .into_response();
                let seconds = (DAY_MS - now.rem_euclid(DAY_MS)) / 1000 + 1;
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                return Err(response);
            }
        }
        self.admit_at(key, model, canonical, unix_now() / 60)
            .map_err(IntoResponse::into_response)
    }

    /// Whether `key` may use `model` (known to the gateway as `canonical`); counts nothing.
    pub fn allows(&self, key: Option<&str>, model: &str, canonical: Option<&str>) -> bool {
        let models = key
            .and_then(|k| self.limits.get(k))
            .and_then(|l| l.models.as_ref());
        models.is_none_or(|models| {
            models
                .iter()
                .any(|m| m == model || Some(m.as_str()) == canonical)
        })
    }

    /// Whether `key` has `admin = true`.
    pub fn is_admin(&self, key: &str) -> bool {
        self.limits.get(key).is_some_and(|l| l.admin)
    }

    /// Count `tokens` of a request `key` made at `at_ms` (when its answer ended).
    pub fn spend(&self, key: &str, tokens: u64, at_ms: i64) {
        if tokens == 0
            || self
                .limits
                .get(key)
                .is_none_or(|l| l.tokens_per_day.is_none())
        {
            return;
        }
        let day = at_ms.div_euclid(DAY_MS);
        let mut days = self.days.lock().unwrap_or_else(|e| e.into_inner());
        let count = days.entry(key.to_string()).or_default();
        if count.day < day {
            *count = DayTokens {
                day,
                before: None,
                spent: 0,
            };
        }
        if count.day == day {
            count.spent += tokens;
        }
    }

    /// The key's tokens on the UTC day of `now`: the ledger's from before this process
    /// (read once a day; a database that cannot be read counts as zero, logged) plus this
    /// process's.
    async fn tokens_today(&self, key: &str, now: i64, store: Option<&Store>) -> u64 {
        let day = now.div_euclid(DAY_MS);
        let known = {
            let mut days = self.days.lock().unwrap_or_else(|e| e.into_inner());
            let count = days.entry(key.to_string()).or_default();
            if count.day < day {
                *count = DayTokens {
                    day,
                    before: None,
                    spent: 0,
                };
            }
            count.before.map(|b| b + count.spent)
        };
        if let Some(used) = known {
            return used;
        }
        let from = day * DAY_MS;
        let before = match store {
            None => 0,
            // This process started today: the ledger has nothing of today before it.
            Some(_) if self.started_ms <= from => 0,
            Some(store) => match store.ledger_tokens(key, from, self.started_ms).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!("reading today's tokens of key {key:?} from the ledger: {e:#}");
                    return self.spent_today(key, day);
                }
            },
        };
        let mut days = self.days.lock().unwrap_or_else(|e| e.into_inner());
        let count = days.entry(key.to_string()).or_default();
        if count.day == day {
            count.before.get_or_insert(before);
            return count.before.unwrap_or(0) + count.spent;
        }
        before
    }

    fn spent_today(&self, key: &str, day: i64) -> u64 {
        let days = self.days.lock().unwrap_or_else(|e| e.into_inner());
        days.get(key)
            .filter(|c| c.day == day)
            .map_or(0, |c| c.spent)
    }

    fn admit_at(
        &self,
        key: &str,
        model: &str,
        canonical: Option<&str>,
        minute: u64,
    ) -> Result<(), ApiError> {
        let Some(limits) = self.limits.get(key) else {
            return Ok(());
        };
        if !self.allows(Some(key), model, canonical) {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                message: format!("the API key {key:?} may not use the model `{model}`"),
                kind: "invalid_request_error",
                param: Some("model".into()),
                code: Some("model_not_allowed"),
            });
        }
        if let Some(per_minute) = limits.requests_per_minute {
            let mut minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
            let counter = minutes.entry(key.to_string()).or_insert((minute, 0));
            if counter.0 != minute {
                *counter = (minute, 0);
            }
            if counter.1 >= per_minute {
                return Err(ApiError::queue_full(format!(
                    "the API key {key:?} has used its {per_minute} requests for this minute"
                )));
            }
            counter.1 += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_and_requests_per_minute() {
        let limits = KeyLimits {
            models: Some(vec!["small".into()]),
            requests_per_minute: Some(2),
            ..Default::default()
        };
        let q = Quotas::new(HashMap::from([("ci".to_string(), limits)]));
        assert!(
            q.admit_at("other", "large", None, 7).is_ok(),
            "a key without limits"
        );
        let e = q.admit_at("ci", "large", None, 7).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(q.admit_at("ci", "alias-of-small", Some("small"), 7).is_ok());
        assert!(q.admit_at("ci", "small", None, 7).is_ok());
        let e = q.admit_at("ci", "small", None, 7).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(q.admit_at("ci", "small", None, 8).is_ok(), "a new minute");
    }

    #[tokio::test]
    async fn tokens_per_day_count_until_the_day_turns() {
        let limits = KeyLimits {
            tokens_per_day: Some(10),
            ..Default::default()
        };
        let q = Quotas::new(HashMap::from([("ci".to_string(), limits)]));
        assert!(q.admit(None, "m", None, None).await.is_ok(), "no key");
        assert!(q.admit(Some("ci"), "m", None, None).await.is_ok());
        let now = verre_store::now_ms();
        q.spend("ci", 6, now);
        assert!(q.admit(Some("ci"), "m", None, None).await.is_ok());
        q.spend("ci", 4, now);
        let refused = q.admit(Some("ci"), "m", None, None).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: i64 = refused.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=86_401).contains(&retry), "{retry}");
        // Tokens of yesterday do not count today; unlimited keys are not counted.
        q.spend("ci", 100, now - DAY_MS);
        q.spend("other", 100, now);
        assert_eq!(q.tokens_today("ci", now, None).await, 10);
        assert_eq!(q.tokens_today("ci", now + DAY_MS, None).await, 0);
    }
}
