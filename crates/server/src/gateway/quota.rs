//! Per-key limits from `[[key]]`: the models a key may use and its requests per minute.
//!
//! Counters live in memory: a restart forgets them. They move to verre-store with the
//! cost ledger, which is also what will count tokens for `tokens_per_day`.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::StatusCode;

use crate::config::KeyLimits;
use crate::openai::error::ApiError;
use crate::state::unix_now;

pub struct Quotas {
    limits: HashMap<String, KeyLimits>,
    /// Per key: the minute (unix time / 60) being counted and its requests so far.
    minutes: Mutex<HashMap<String, (u64, u32)>>,
}

impl Quotas {
    pub fn new(limits: HashMap<String, KeyLimits>) -> Self {
        Self {
            limits,
            minutes: Mutex::default(),
        }
    }

    /// Let a request from `key` for `model` (known to the gateway as `canonical`) in, and
    /// count it; or say why not. Requests without a key (no keys file) have no limits.
    pub fn admit(
        &self,
        key: Option<&str>,
        model: &str,
        canonical: Option<&str>,
    ) -> Result<(), ApiError> {
        self.admit_at(key, model, canonical, unix_now() / 60)
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

    fn admit_at(
        &self,
        key: Option<&str>,
        model: &str,
        canonical: Option<&str>,
        minute: u64,
    ) -> Result<(), ApiError> {
        let Some((key, limits)) = key.and_then(|k| self.limits.get_key_value(k)) else {
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
            let counter = minutes.entry(key.clone()).or_insert((minute, 0));
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
            tokens_per_day: None,
        };
        let q = Quotas::new(HashMap::from([("ci".to_string(), limits)]));
        assert!(
            q.admit_at(None, "large", None, 7).is_ok(),
            "no key, no limits"
        );
        assert!(
            q.admit_at(Some("other"), "large", None, 7).is_ok(),
            "a key without limits"
        );
        let e = q.admit_at(Some("ci"), "large", None, 7).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(
            q.admit_at(Some("ci"), "alias-of-small", Some("small"), 7)
                .is_ok()
        );
        assert!(q.admit_at(Some("ci"), "small", None, 7).is_ok());
        let e = q.admit_at(Some("ci"), "small", None, 7).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            q.admit_at(Some("ci"), "small", None, 8).is_ok(),
            "a new minute"
        );
    }
}
