//! The durable job queue: one job per (message, stage), claimed under a lease.
//!
//! States: `ready` (waiting for `run_after`), `leased` (a worker holds it until
//! `lease_expires`), `done`, `failed` (past its attempts; the message is in quarantine).
//! A lease that expires (its worker died) makes the job claimable again; the claim counts
//! as an attempt, so a message that kills its worker every time still ends in quarantine.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use serde_json::json;

use crate::crypto::Column;
use crate::{AuditEvent, Backend, Store, audit, now_ms};

/// A claimed job. Only the worker named in `worker` may complete or fail it, and only
/// while its lease holds.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub message_id: i64,
    pub stage: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    pub max_attempts: i64,
    pub worker: String,
}

impl Job {
    /// True when this claim came after the last allowed attempt (earlier workers died
    /// holding the lease): the job must go to quarantine without running.
    pub fn exhausted(&self) -> bool {
        self.attempts > self.max_attempts
    }
}

/// A parsed part of a message (body or attachment) to store. Serialisable: the parser
/// child process of verre-intake sends parts to its parent as JSON.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NewPart {
    pub idx: i64,
    /// `text`, `html`, `attachment`.
    pub kind: String,
    pub filename: Option<String>,
    pub content_type: String,
    pub size: i64,
    /// False for content kept but not read (an image, an archive, an unreadable PDF).
    pub supported: bool,
    pub note: Option<String>,
    pub text: Option<String>,
    pub pages: Option<Vec<String>>,
}

/// A span of PII in a message's text: `part_idx` names the part (None: the headers),
/// `start..end` are byte offsets into that part's stored text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PiiTag {
    pub part_idx: Option<i64>,
    pub kind: String,
    pub start: i64,
    pub end: i64,
}

/// An action staged for review (never executed here).
#[derive(Debug, Clone)]
pub struct NewAction {
    pub name: String,
    /// `reply` or `webhook`.
    pub kind: String,
    pub target: String,
    pub payload: String,
}

/// What a stage produced, written atomically with the job's completion.
#[derive(Debug, Clone, Default)]
pub struct StageEffects {
    pub output: serde_json::Value,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub parts: Vec<NewPart>,
    pub pii_tags: Vec<PiiTag>,
    pub actions: Vec<NewAction>,
    /// What backs the extraction (the extract stage's evidence): replaces any earlier; an
    /// `extract` stage completed without it removes the earlier.
    pub evidence: Option<serde_json::Value>,
}

/// What [`Store::fail`] did with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back on the queue; runs again after the backoff.
    Retry { run_after: i64 },
    /// Past its attempts (or failed permanently): the message is in quarantine.
    Quarantined,
    /// This worker no longer held the lease; someone else owns the job now.
    LeaseLost,
}

pub(crate) async fn enqueue(
    tx: &mut Transaction<'_, Any>,
    message_id: i64,
    stage: &str,
    max_attempts: u32,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO jobs (message_id, stage, state, attempts, max_attempts, run_after, created_at, updated_at)
         VALUES ($1, $2, 'ready', 0, $3, $4, $4, $4)
         ON CONFLICT (message_id, stage) DO NOTHING",
    )
    .bind(message_id)
    .bind(stage)
    .bind(max_attempts as i64)
    .bind(now)
    .execute(&mut **tx)
    .await
    .with_context(|| format!("enqueueing {stage} for message {message_id}"))?;
    Ok(())
}

/// A lease claim on a table with `id`, `lease_owner`, `lease_expires`, `attempts` and
/// `updated_at`: the first claimable row in `order` is leased to a worker, and the claim counts
/// as an attempt. The job queue and the outbox both claim this way.
pub(crate) struct LeaseClaim {
    pub table: &'static str,
    /// Further assignments made by a claim, each followed by a comma.
    pub set: &'static str,
    /// Which rows may be claimed; `$3` is now.
    pub claimable: &'static str,
    pub order: &'static str,
    pub returning: &'static str,
}

impl Store {
    /// Lease the first claimable row to `worker` for `lease`. SQLite runs one writer at a
    /// time, so the statement is atomic as it is; PostgreSQL's claimers lock the row they
    /// pick and skip rows others hold (`FOR UPDATE SKIP LOCKED`).
    pub(crate) async fn claim_lease(
        &self,
        claim: &LeaseClaim,
        worker: &str,
        lease: Duration,
    ) -> sqlx::Result<Option<AnyRow>> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let LeaseClaim {
            table,
            set,
            claimable,
            order,
            returning,
        } = claim;
        let sql = format!(
            "UPDATE {table} SET {set} lease_owner = $1, lease_expires = $2,
                 attempts = attempts + 1, updated_at = $3
             WHERE id = (SELECT id FROM {table} WHERE {claimable} ORDER BY {order} LIMIT 1{lock})
             RETURNING {returning}"
        );
        let now = now_ms();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(worker)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
    }
}

const JOB_CLAIM: LeaseClaim = LeaseClaim {
    table: "jobs",
    set: "state = 'leased',",
    claimable: "(state = 'ready' AND run_after <= $3) OR (state = 'leased' AND lease_expires < $3)",
    order: "run_after, id",
    returning: "id, message_id, stage, attempts, max_attempts",
};

impl Store {
    /// Claim the oldest runnable job (ready and due, or leased with an expired lease) for
    /// `worker`, leased for `lease`. On PostgreSQL concurrent claimers skip each other's
    /// rows (`FOR UPDATE SKIP LOCKED`); SQLite has one writer at a time.
    pub async fn claim(&self, worker: &str, lease: Duration) -> Result<Option<Job>> {
        let row = self
            .claim_lease(&JOB_CLAIM, worker, lease)
            .await
            .context("claiming a job")?;
        row.map(|r| {
            Ok(Job {
                id: r.try_get("id")?,
                message_id: r.try_get("message_id")?,
                stage: r.try_get("stage")?,
                attempts: r.try_get("attempts")?,
                max_attempts: r.try_get("max_attempts")?,
                worker: worker.to_string(),
            })
        })
        .transpose()
    }

    /// Give a claimed job back unfinished (the worker is shutting down): it is ready again at
    /// once and the interrupted attempt is not counted. Returns false if the lease was
    /// already lost.
    pub async fn release(&self, job: &Job) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE jobs SET state = 'ready', lease_owner = NULL, lease_expires = NULL,
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, run_after = $3,
                 updated_at = $3
             WHERE id = $1 AND lease_owner = $2 AND state = 'leased'",
        )
        .bind(job.id)
        .bind(&job.worker)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .context("releasing a job")?
        .rows_affected();
        Ok(n == 1)
    }

    /// Extend a job's lease (a long stage, e.g. a slow model, calls this periodically).
    pub async fn renew(&self, job: &Job, lease: Duration) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE jobs SET lease_expires = $3 WHERE id = $1 AND lease_owner = $2 AND state = 'leased'",
        )
        .bind(job.id)
        .bind(&job.worker)
        .bind(now_ms() + lease.as_millis() as i64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Write a stage's effects, mark its job done and enqueue `next` (or, with `None`, mark
    /// the message processed), all in one transaction. Returns false (and writes nothing)
    /// if the worker lost its lease meanwhile.
    pub async fn complete(
        &self,
        job: &Job,
        effects: &StageEffects,
        next: Option<&str>,
        next_max_attempts: u32,
    ) -> Result<bool> {
        self.check_writable()?;
        let now = now_ms();
        let keys = self.keys();
        let seal = |column: Column, text: Option<&str>| -> Result<Option<String>> {
            match (text, keys) {
                (Some(t), Some(k)) => k.seal_text(column, t).map(Some),
                (t, _) => Ok(t.map(str::to_string)),
            }
        };
        let key_id = keys.map(|k| k.current_id().to_string());
        let output = seal(Column::StageOutput, Some(&effects.output.to_string()))?;
        let mut parts = Vec::with_capacity(effects.parts.len());
        for p in &effects.parts {
            let pages = p.pages.as_ref().map(serde_json::to_string).transpose()?;
            parts.push((
                p,
                seal(Column::PartText, p.text.as_deref())?,
                seal(Column::PartPages, pages.as_deref())?,
            ));
        }
        let evidence = effects
            .evidence
            .as_ref()
            .map(|e| seal(Column::EvidenceBody, Some(&e.to_string())))
            .transpose()?
            .flatten();
        let mut tx = self.pool.begin().await?;
        // The guard comes first: it is also the write that takes SQLite's lock.
        let held = sqlx::query(
            "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_expires = NULL, updated_at = $3
             WHERE id = $1 AND lease_owner = $2 AND state = 'leased'",
        )
        .bind(job.id)
        .bind(&job.worker)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if held != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let ctx = || {
            format!(
                "storing the {} result of message {}",
                job.stage, job.message_id
            )
        };
        sqlx::query(
            "INSERT INTO stage_results (message_id, stage, output, prompt_tokens, completion_tokens, worker, created_at, key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(job.message_id)
        .bind(&job.stage)
        .bind(output)
        .bind(effects.prompt_tokens)
        .bind(effects.completion_tokens)
        .bind(&job.worker)
        .bind(now)
        .bind(&key_id)
        .execute(&mut *tx)
        .await
        .with_context(ctx)?;
        for (p, text, pages) in parts {
            sqlx::query(
                "INSERT INTO parts (message_id, idx, kind, filename, content_type, size, supported, note, text, pages, key_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(job.message_id)
            .bind(p.idx)
            .bind(&p.kind)
            .bind(&p.filename)
            .bind(&p.content_type)
            .bind(p.size)
            .bind(p.supported as i64)
            .bind(&p.note)
            .bind(text)
            .bind(pages)
            .bind(&key_id)
            .execute(&mut *tx)
            .await
            .with_context(ctx)?;
        }
        for t in &effects.pii_tags {
            sqlx::query(
                "INSERT INTO pii_tags (message_id, part_idx, kind, span_start, span_end) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(job.message_id)
            .bind(t.part_idx)
            .bind(&t.kind)
            .bind(t.start)
            .bind(t.end)
            .execute(&mut *tx)
            .await
            .with_context(ctx)?;
        }
        // An extraction run again (rerun, a lost lease) replaces what the last run found:
        // evidence of an earlier extraction would back values that are no longer there.
        if job.stage == "extract" || evidence.is_some() {
            sqlx::query("DELETE FROM evidence WHERE message_id = $1")
                .bind(job.message_id)
                .execute(&mut *tx)
                .await
                .with_context(ctx)?;
        }
        if let Some(body) = evidence {
            sqlx::query(
                "INSERT INTO evidence (message_id, body, key_id, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(job.message_id)
            .bind(body)
            .bind(&key_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .with_context(ctx)?;
        }
        for a in &effects.actions {
            sqlx::query(
                "INSERT INTO actions (message_id, name, kind, target, payload, status, created_at, key_id)
                 VALUES ($1, $2, $3, $4, $5, 'staged', $6, $7)",
            )
            .bind(job.message_id)
            .bind(&a.name)
            .bind(&a.kind)
            .bind(&a.target)
            .bind(crate::crypto::seal_text(self.keys(), crate::crypto::Column::ActionPayload, &a.payload)?.0)
            .bind(now)
            .bind(crate::crypto::current_key_id(self.keys()))
            .execute(&mut *tx)
            .await
            .with_context(ctx)?;
        }
        match next {
            Some(stage) => enqueue(&mut tx, job.message_id, stage, next_max_attempts, now).await?,
            None => {
                sqlx::query(
                    "UPDATE messages SET status = 'processed', finished_at = $2 WHERE id = $1",
                )
                .bind(job.message_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        // Last, so that PostgreSQL's audit lock is held only until the commit just below.
        audit::append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: "system:intake",
                action: &format!("intake.{}", job.stage),
                subject: &format!("message:{}", job.message_id),
                detail: json!({
                    "outcome": "done",
                    "worker": job.worker,
                    "attempt": job.attempts,
                    "next": next,
                    "prompt_tokens": effects.prompt_tokens,
                    "completion_tokens": effects.completion_tokens,
                    "parts": effects.parts.len(),
                    "pii_tags": effects.pii_tags.len(),
                    "actions": effects.actions.iter().map(|a| &a.name).collect::<Vec<_>>(),
                }),
            },
        )
        .await
        .with_context(ctx)?;
        tx.commit().await.with_context(ctx)?;
        Ok(true)
    }

    /// Record a failed attempt. With attempts left (and `permanent` false) the job goes back
    /// on the queue after `backoff * 2^(attempts-1)`; otherwise the message goes to
    /// quarantine with the stage and `reason`.
    pub async fn fail(
        &self,
        job: &Job,
        reason: &str,
        permanent: bool,
        backoff: Duration,
    ) -> Result<FailOutcome> {
        self.check_writable()?;
        let now = now_ms();
        // The reason may quote the message or the model's answer: sealed like the content,
        // and kept out of the audit log (which has its length only).
        let (error, reason_stored, key_id) = match self.keys() {
            Some(k) => (
                k.seal_text(Column::JobError, reason)?,
                k.seal_text(Column::QuarantineReason, reason)?,
                Some(k.current_id().to_string()),
            ),
            None => (reason.to_string(), reason.to_string(), None),
        };
        let mut tx = self.pool.begin().await?;
        let terminal = permanent || job.attempts >= job.max_attempts;
        let run_after = if terminal {
            now
        } else {
            let factor = 1i64 << (job.attempts - 1).clamp(0, 16);
            now + backoff.as_millis() as i64 * factor
        };
        let held = sqlx::query(
            "UPDATE jobs SET state = $3, run_after = $4, lease_owner = NULL, lease_expires = NULL,
                 last_error = $5, key_id = $7, updated_at = $6
             WHERE id = $1 AND lease_owner = $2 AND state = 'leased'",
        )
        .bind(job.id)
        .bind(&job.worker)
        .bind(if terminal { "failed" } else { "ready" })
        .bind(run_after)
        .bind(error)
        .bind(now)
        .bind(key_id.clone())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if held != 1 {
            tx.rollback().await?;
            return Ok(FailOutcome::LeaseLost);
        }
        let event = |outcome: &str| {
            json!({
                "outcome": outcome,
                "worker": job.worker,
                "attempt": job.attempts,
                "max_attempts": job.max_attempts,
                "permanent": permanent,
                "reason_chars": reason.chars().count(),
            })
        };
        let action = format!("intake.{}", job.stage);
        let subject = format!("message:{}", job.message_id);
        if !terminal {
            audit::append_in(
                &mut tx,
                self,
                &AuditEvent {
                    actor: "system:intake",
                    action: &action,
                    subject: &subject,
                    detail: event("retry"),
                },
            )
            .await?;
            tx.commit().await?;
            return Ok(FailOutcome::Retry { run_after });
        }
        sqlx::query(
            "INSERT INTO quarantine (message_id, stage, reason, attempts, created_at, key_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(job.message_id)
        .bind(&job.stage)
        .bind(reason_stored)
        .bind(job.attempts)
        .bind(now)
        .bind(key_id)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("quarantining message {}", job.message_id))?;
        sqlx::query("UPDATE messages SET status = 'quarantined', finished_at = $2 WHERE id = $1")
            .bind(job.message_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        audit::append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: "system:intake",
                action: &action,
                subject: &subject,
                detail: event("quarantined"),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(FailOutcome::Quarantined)
    }

    /// Jobs not yet finished: (runnable now or leased, waiting for a backoff).
    pub async fn open_jobs(&self) -> Result<(i64, i64)> {
        let now = now_ms();
        let r = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN state = 'leased' OR run_after <= $1 THEN 1 ELSE 0 END), 0) AS BIGINT) AS active,
                    CAST(COALESCE(SUM(CASE WHEN state = 'ready' AND run_after > $1 THEN 1 ELSE 0 END), 0) AS BIGINT) AS waiting
             FROM jobs WHERE state IN ('ready', 'leased')",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get("active")?, r.try_get("waiting")?))
    }
}
