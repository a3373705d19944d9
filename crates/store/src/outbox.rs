//! The outbox: approved actions waiting to be delivered, claimed under a lease like jobs.
//!
//! Rows are written by [`Store::approve`] in the approval's own transaction. A delivery
//! worker claims a due row (`pending`, `next_attempt_at` reached, no live lease; on
//! PostgreSQL with `FOR UPDATE SKIP LOCKED`), makes one attempt, and records it with
//! [`Store::record_delivery`]: `sent`, back to `pending` for a later attempt, `failed`
//! after the last one, or `gone` when the endpoint answered 410. A worker that dies
//! mid-attempt leaves its lease to expire; the row is claimed again with the same
//! `webhook_id`, which receivers use to drop a repeat.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::json;
use sqlx::Row;

use crate::audit::{AuditEvent, append_in};
use crate::crypto::{self, Column, Keyring};
use crate::queue::LeaseClaim;
use crate::{Store, now_ms};

/// A claimed delivery. Only `worker` may record its attempt, while its lease holds.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub action_id: i64,
    pub message_id: i64,
    /// `webhook-id`: the same on every attempt.
    pub webhook_id: String,
    /// `webhook` or `reply`.
    pub kind: String,
    pub target: String,
    pub payload: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    pub worker: String,
}

/// An outbox row as the review UI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxRow {
    pub id: i64,
    pub action_id: i64,
    pub message_id: i64,
    pub webhook_id: String,
    pub kind: String,
    pub target: String,
    pub payload: String,
    /// `pending`, `sent`, `failed` or `gone`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub last_status: Option<i64>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

/// One recorded attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub attempt: i64,
    pub at: i64,
    pub response_status: Option<i64>,
    pub error: Option<String>,
}

/// What became of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    Sent,
    /// Try again at this time (Unix ms).
    RetryAt(i64),
    /// The attempts are used up (or the delivery cannot succeed): kept as `failed`.
    Failed,
    /// The endpoint answered 410: it is disabled, and this delivery stops.
    Gone,
}

/// One attempt, as the worker saw it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The HTTP status (webhooks) or SMTP reply code, when there was an answer.
    pub response_status: Option<i64>,
    pub error: Option<String>,
    pub result: DeliveryResult,
}

const DELIVERY_CLAIM: LeaseClaim = LeaseClaim {
    table: "outbox",
    set: "",
    claimable: "status = 'pending' AND next_attempt_at <= $3
        AND (lease_expires IS NULL OR lease_expires < $3)",
    order: "next_attempt_at, id",
    returning: "id, action_id, message_id, webhook_id, kind, target, payload, key_id, attempts",
};

const OUTBOX_COLUMNS: &str =
    "id, action_id, message_id, webhook_id, kind, target, payload, status, attempts,
     next_attempt_at, last_error, last_status, created_at, sent_at, key_id";

impl Store {
    /// Claim the most overdue delivery for `worker`, leased for `lease`. The claim counts
    /// as an attempt, so a delivery that kills its worker every time still runs out.
    pub async fn claim_delivery(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<OutboxEntry>> {
        let row = self
            .claim_lease(&DELIVERY_CLAIM, worker, lease)
            .await
            .context("claiming a delivery")?;
        row.map(|r| {
            Ok(OutboxEntry {
                id: r.try_get("id")?,
                action_id: r.try_get("action_id")?,
                message_id: r.try_get("message_id")?,
                webhook_id: r.try_get("webhook_id")?,
                kind: r.try_get("kind")?,
                target: r.try_get("target")?,
                payload: crypto::open_text(
                    self.keys(),
                    r.try_get::<Option<String>, _>("key_id")?.as_deref(),
                    Column::OutboxPayload,
                    Some(r.try_get("payload")?),
                )?
                .unwrap_or_default(),
                attempts: r.try_get("attempts")?,
                worker: worker.to_string(),
            })
        })
        .transpose()
    }

    /// The earliest time a pending delivery falls due (Unix ms), if any is pending.
    pub async fn next_delivery_due(&self) -> Result<Option<i64>> {
        let r = sqlx::query(
            "SELECT MIN(CASE WHEN lease_expires IS NOT NULL AND lease_expires > next_attempt_at
                             THEN lease_expires ELSE next_attempt_at END) AS due
             FROM outbox WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(r.try_get("due")?)
    }

    /// Record an attempt and its result, release the lease, and audit a final result
    /// (`delivery.sent`, `delivery.failed`, `delivery.gone`). False (nothing written) when
    /// the worker no longer held the lease.
    pub async fn record_delivery(
        &self,
        entry: &OutboxEntry,
        record: &AttemptRecord,
    ) -> Result<bool> {
        let now = now_ms();
        let (status, next) = match record.result {
            DeliveryResult::Sent => ("sent", now),
            DeliveryResult::RetryAt(at) => ("pending", at),
            DeliveryResult::Failed => ("failed", now),
            DeliveryResult::Gone => ("gone", now),
        };
        // The row's values share one key id: the payload is sealed again with the error.
        let keys = self.keys();
        let key_id = crypto::current_key_id(keys);
        let payload = crypto::seal_text(keys, Column::OutboxPayload, &entry.payload)?.0;
        let error = crypto::seal_opt(keys, Column::OutboxError, record.error.as_deref())?;
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query(
            "UPDATE outbox SET status = $3, next_attempt_at = $4, last_error = $5, last_status = $6,
                 lease_owner = NULL, lease_expires = NULL, updated_at = $7,
                 sent_at = CASE WHEN $3 = 'sent' THEN $7 ELSE sent_at END,
                 payload = $8, key_id = $9
             WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
        )
        .bind(entry.id)
        .bind(&entry.worker)
        .bind(status)
        .bind(next)
        .bind(error)
        .bind(record.response_status)
        .bind(now)
        .bind(payload)
        .bind(key_id.clone())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if held != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO outbox_attempts (outbox_id, attempt, at, response_status, error, key_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(entry.id)
        .bind(entry.attempts)
        .bind(now)
        .bind(record.response_status)
        .bind(crypto::seal_opt(
            keys,
            Column::AttemptError,
            record.error.as_deref(),
        )?)
        .bind(record.error.as_ref().and(key_id))
        .execute(&mut *tx)
        .await?;
        if record.result == DeliveryResult::Gone {
            sqlx::query(
                "INSERT INTO endpoints (url, status, reason, updated_at) VALUES ($1, 'gone', $2, $3)
                 ON CONFLICT (url) DO UPDATE SET status = 'gone', reason = $2, updated_at = $3",
            )
            .bind(&entry.target)
            .bind(format!("410 Gone on delivery {}", entry.webhook_id))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if status != "pending" {
            sqlx::query("UPDATE actions SET status = $2 WHERE id = $1")
                .bind(entry.action_id)
                .bind(status)
                .execute(&mut *tx)
                .await?;
            append_in(
                &mut tx,
                self,
                &AuditEvent {
                    actor: "system:delivery",
                    action: &format!("delivery.{status}"),
                    subject: &format!("action:{}", entry.action_id),
                    detail: json!({
                        "message": entry.message_id,
                        "outbox": entry.id,
                        "webhook_id": entry.webhook_id,
                        "kind": entry.kind,
                        "attempts": entry.attempts,
                        "response_status": record.response_status,
                        "error": record.error,
                    }),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Whether a 410 disabled this webhook URL.
    pub async fn endpoint_gone(&self, url: &str) -> Result<bool> {
        let r = sqlx::query("SELECT status FROM endpoints WHERE url = $1")
            .bind(url)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some())
    }

    /// Disabled endpoints: (url, reason, since).
    pub async fn gone_endpoints(&self) -> Result<Vec<(String, Option<String>, i64)>> {
        sqlx::query("SELECT url, reason, updated_at FROM endpoints ORDER BY url")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("url")?,
                    r.try_get("reason")?,
                    r.try_get("updated_at")?,
                ))
            })
            .collect()
    }

    /// Re-enable an endpoint a 410 disabled.
    pub async fn enable_endpoint(&self, url: &str, user: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("DELETE FROM endpoints WHERE url = $1")
            .bind(url)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            bail!("{url} is not disabled");
        }
        append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: &format!("user:{user}"),
                action: "delivery.enable_endpoint",
                subject: &format!("endpoint:{url}"),
                detail: json!(null),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Put a failed (or gone) delivery back in the outbox with its attempts reset; the
    /// `webhook_id` stays, so a receiver that got it before can tell.
    pub async fn retry_delivery(&self, outbox_id: i64, user: &str) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $2, updated_at = $2
             WHERE id = $1 AND status IN ('failed', 'gone') RETURNING action_id, target, kind",
        )
        .bind(outbox_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            bail!("delivery {outbox_id} is not failed: nothing to retry");
        };
        let target: String = row.try_get("target")?;
        let gone = sqlx::query("SELECT url FROM endpoints WHERE url = $1")
            .bind(&target)
            .fetch_optional(&mut *tx)
            .await?;
        if gone.is_some() {
            bail!("{target} answered 410 Gone and is disabled: re-enable it first");
        }
        let action_id: i64 = row.try_get("action_id")?;
        sqlx::query("UPDATE actions SET status = 'approved' WHERE id = $1")
            .bind(action_id)
            .execute(&mut *tx)
            .await?;
        append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: &format!("user:{user}"),
                action: "delivery.retry",
                subject: &format!("action:{action_id}"),
                detail: json!({"outbox": outbox_id}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A message's deliveries.
    pub async fn deliveries(&self, message_id: i64) -> Result<Vec<OutboxRow>> {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE message_id = $1 ORDER BY id");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(message_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| outbox_row(self.keys(), r))
            .collect()
    }

    /// Deliveries in one status (`failed` for the UI's list of what needs a person).
    pub async fn deliveries_with_status(&self, status: &str) -> Result<Vec<OutboxRow>> {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE status = $1 ORDER BY id");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(status)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| outbox_row(self.keys(), r))
            .collect()
    }

    /// A delivery's attempts, first first.
    pub async fn delivery_attempts(&self, outbox_id: i64) -> Result<Vec<AttemptRow>> {
        sqlx::query(
            "SELECT attempt, at, response_status, error, key_id FROM outbox_attempts
             WHERE outbox_id = $1 ORDER BY id",
        )
        .bind(outbox_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(AttemptRow {
                attempt: r.try_get("attempt")?,
                at: r.try_get("at")?,
                response_status: r.try_get("response_status")?,
                error: crypto::open_text(
                    self.keys(),
                    r.try_get::<Option<String>, _>("key_id")?.as_deref(),
                    Column::AttemptError,
                    r.try_get("error")?,
                )?,
            })
        })
        .collect()
    }
}

fn outbox_row(keys: Option<&Keyring>, r: &sqlx::any::AnyRow) -> Result<OutboxRow> {
    let key_id: Option<String> = r.try_get("key_id")?;
    let key_id = key_id.as_deref();
    Ok(OutboxRow {
        id: r.try_get("id")?,
        action_id: r.try_get("action_id")?,
        message_id: r.try_get("message_id")?,
        webhook_id: r.try_get("webhook_id")?,
        kind: r.try_get("kind")?,
        target: r.try_get("target")?,
        payload: crypto::open_text(keys, key_id, Column::OutboxPayload, r.try_get("payload")?)?
            .unwrap_or_default(),
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_error: crypto::open_text(keys, key_id, Column::OutboxError, r.try_get("last_error")?)?,
        last_status: r.try_get("last_status")?,
        created_at: r.try_get("created_at")?,
        sent_at: r.try_get("sent_at")?,
    })
}
