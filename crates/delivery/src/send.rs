//! One delivery attempt over HTTP: the body as it was approved, signed, with the same
//! message id on every attempt.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::retry::{self, Attempt, Outcome};
use crate::webhook::WebhookSecret;

/// A webhook to send (or send again).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `webhook-id`: the idempotency key, the same on every attempt.
    pub id: String,
    pub url: String,
    /// The JSON body, byte for byte as signed.
    pub body: Vec<u8>,
    /// Attempts already made.
    pub attempts: usize,
}

pub struct Sender {
    client: reqwest::Client,
}

impl Sender {
    /// A client that follows no redirects (a redirect could leave the allowed hosts),
    /// takes no proxy from the environment (`HTTPS_PROXY` would send mail content to a
    /// host the operator never named as a target) and gives up on a target after
    /// `timeout`.
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("verre/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }

    /// Make one attempt and say what comes next. Never panics on a bad target.
    pub async fn attempt(&self, delivery: &Delivery, secret: &WebhookSecret) -> (Attempt, Outcome) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = secret.sign(&delivery.id, now, &delivery.body);
        let sent = self
            .client
            .post(&delivery.url)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .body(delivery.body.clone())
            .send()
            .await;
        let attempt = match sent {
            Ok(resp) => Attempt::Status {
                code: resp.status().as_u16(),
                retry_after: resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry::parse_retry_after(v, now)),
            },
            Err(e) => Attempt::NoAnswer(without_url(&e)),
        };
        let outcome = retry::next(delivery.attempts + 1, &attempt);
        (attempt, outcome)
    }
}

/// reqwest's error text without the URL (it may carry a token in its query).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}
