//! The delivery worker: claims due outbox rows, makes one attempt each (a signed webhook,
//! or a reply over SMTP), records it, and schedules the next by the retry schedule —
//! `failed` after the last, kept and shown, never dropped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::sync::watch;
use verre_delivery::mail::{Mailer, Reply};
use verre_delivery::retry::{self, Attempt, Outcome};
use verre_delivery::{Delivery, Sender};
use verre_store::outbox::{AttemptRecord, DeliveryResult, OutboxEntry};
use verre_store::{Store, now_ms};

use super::settings::{DeliverySettings, ReviewSettings};

/// Longer than any one attempt may take, so a live worker keeps its row.
const LEASE: Duration = Duration::from_secs(120);
/// The longest the worker sleeps without looking at the outbox.
const IDLE_POLL: Duration = Duration::from_secs(1);

pub struct Deliverer {
    store: Store,
    settings: Arc<DeliverySettings>,
    sender: Sender,
    mailer: Option<Mailer>,
    name: String,
}

impl Deliverer {
    pub fn new(store: Store, settings: Arc<DeliverySettings>) -> Result<Self> {
        let timeout = if settings.timeout.is_zero() {
            Duration::from_secs(10)
        } else {
            settings.timeout
        };
        let mailer = settings
            .smtp
            .as_ref()
            .map(Mailer::new)
            .transpose()
            .context("setting up the SMTP relay for replies")?;
        Ok(Self {
            store,
            sender: Sender::new(timeout)?,
            mailer,
            settings,
            name: format!("delivery-{}-{}", std::process::id(), rand::random::<u32>()),
        })
    }

    /// Claim and deliver one due row; false when none was due.
    pub async fn run_once(&self) -> Result<bool> {
        let Some(entry) = self.store.claim_delivery(&self.name, LEASE).await? else {
            return Ok(false);
        };
        let record = match entry.kind.as_str() {
            "webhook" => self.webhook(&entry).await,
            "reply" => self.reply(&entry).await,
            other => final_failure(format!("unknown action kind {other:?}")),
        };
        match &record.result {
            DeliveryResult::Sent => tracing::info!(
                outbox = entry.id,
                webhook_id = entry.webhook_id,
                "delivered"
            ),
            // The error may name the recipient (an SMTP answer, an address refused): it
            // stays in the outbox, shown to reviewers, out of the logs.
            other => tracing::warn!(
                outbox = entry.id,
                attempt = entry.attempts,
                status = record.response_status,
                "delivery not done: {other:?}"
            ),
        }
        if !self.store.record_delivery(&entry, &record).await? {
            tracing::warn!(
                outbox = entry.id,
                "lost the delivery's lease before recording it"
            );
        }
        Ok(true)
    }

    /// Deliver until `stop` turns true: whatever is due, then sleep until the next row
    /// falls due, an approval wakes the worker, or a second passes.
    pub async fn run(self, settings: ReviewSettings, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            match self.run_once().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::error!("delivery worker: {e:#}"),
            }
            let wait = match self.store.next_delivery_due().await {
                Ok(Some(due)) => Duration::from_millis((due - now_ms()).clamp(0, 1000) as u64),
                _ => IDLE_POLL,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = settings.wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn webhook(&self, entry: &OutboxEntry) -> AttemptRecord {
        match self.store.endpoint_gone(&entry.target).await {
            Ok(true) => {
                return AttemptRecord {
                    response_status: None,
                    error: Some("the endpoint answered 410 Gone before and is disabled".into()),
                    result: DeliveryResult::Gone,
                };
            }
            Ok(false) => {}
            Err(e) => return retry_later(entry, format!("reading the endpoint's status: {e:#}")),
        }
        // The policy may have changed since the approval: checked before every connection.
        let target = match self.settings.webhook_target(&entry.target) {
            Ok(t) => t,
            Err(why) => return final_failure(format!("refused by the egress policy: {why}")),
        };
        let delivery = Delivery {
            id: entry.webhook_id.clone(),
            url: entry.target.clone(),
            body: entry.payload.clone().into_bytes(),
            attempts: (entry.attempts - 1).max(0) as usize,
        };
        let (attempt, outcome) = self.sender.attempt(&delivery, &target.secret).await;
        let (status, error) = match &attempt {
            Attempt::Status { code, .. } if (200..300).contains(code) => (Some(*code as i64), None),
            Attempt::Status { code, .. } => (Some(*code as i64), Some(format!("HTTP {code}"))),
            Attempt::NoAnswer(why) => (None, Some(why.clone())),
        };
        AttemptRecord {
            response_status: status,
            error,
            result: result_of(outcome),
        }
    }

    async fn reply(&self, entry: &OutboxEntry) -> AttemptRecord {
        let Some(mailer) = &self.mailer else {
            return final_failure("no [delivery.smtp] relay is configured".into());
        };
        let payload: Value = match serde_json::from_str(&entry.payload) {
            Ok(p) => p,
            Err(e) => return final_failure(format!("the reply's payload is not JSON: {e}")),
        };
        let field = |k: &str| payload[k].as_str().unwrap_or("").to_string();
        let in_reply_to = match self.store.raw_message_kept(entry.message_id).await {
            Ok(Some(raw)) => mail_parser::MessageParser::default()
                .parse(&raw)
                .and_then(|m| m.message_id().map(|id| format!("<{id}>"))),
            // Removed by retention: the reply goes out, not threaded.
            Ok(None) => None,
            Err(e) => return retry_later(entry, format!("reading the original message: {e:#}")),
        };
        let reply = Reply {
            to: field("to"),
            subject: field("subject"),
            body: field("body"),
            in_reply_to,
            // Stable across attempts: a repeat after a crash carries the same Message-ID.
            message_id: Some(format!("<{}@{}>", entry.webhook_id, mailer.domain())),
        };
        match mailer.send(&reply).await {
            Ok(_) => AttemptRecord {
                response_status: Some(250),
                error: None,
                result: DeliveryResult::Sent,
            },
            Err(e) => retry_later(entry, format!("{e:#}")),
        }
    }
}

fn result_of(outcome: Outcome) -> DeliveryResult {
    match outcome {
        Outcome::Delivered => DeliveryResult::Sent,
        Outcome::RetryAfter(d) => DeliveryResult::RetryAt(now_ms() + d.as_millis() as i64),
        Outcome::Failed(_) => DeliveryResult::Failed,
        Outcome::EndpointGone => DeliveryResult::Gone,
    }
}

/// The schedule's next step after a failed attempt without an HTTP answer.
fn retry_later(entry: &OutboxEntry, why: String) -> AttemptRecord {
    let outcome = retry::next(
        entry.attempts.max(1) as usize,
        &Attempt::NoAnswer(why.clone()),
    );
    AttemptRecord {
        response_status: None,
        error: Some(why),
        result: result_of(outcome),
    }
}

fn final_failure(why: String) -> AttemptRecord {
    AttemptRecord {
        response_status: None,
        error: Some(why),
        result: DeliveryResult::Failed,
    }
}

/// Start delivering from `store`'s outbox on this runtime until `stop` turns true.
pub fn spawn(store: Store, settings: ReviewSettings, stop: watch::Receiver<bool>) -> Result<()> {
    let deliverer = Deliverer::new(store, settings.delivery.clone())?;
    tokio::spawn(deliverer.run(settings, stop));
    Ok(())
}
