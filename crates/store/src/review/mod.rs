//! Human review: the queue, draft versions, and (in submodules) reviewer accounts with their
//! sessions and failed logins (`accounts`) and the actions and decisions on messages
//! (`decisions`).
//!
//! A decision is written with everything it causes in one transaction: approving records
//! the decision, marks the staged actions approved, puts one outbox row per action (see
//! [`crate::outbox`]) and appends to the audit log — so a crash between approval and
//! sending still sends, once. Passwords arrive here already hashed (argon2, by the server);
//! session tokens are stored as their SHA-256 only.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{Any, Row, Transaction};

use crate::audit::{AuditEvent, append_in};
use crate::crypto::{self, Column, Keyring};
use crate::{MessageRow, Store, now_ms};

mod accounts;
mod decisions;

use decisions::undecided_guard;

pub use accounts::{
    LoginLimits, LoginRefusal, LoginReservation, ROLES, Session, User, session_token_hash,
};
pub use decisions::{Approval, ChangedSinceConfirmed, staged_digest};

#[derive(Debug, Clone, Serialize)]
pub struct DraftVersion {
    pub version: i64,
    pub body: String,
    /// `model` for the drafting model's text, else `user:NAME`.
    pub author: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// `approved`, `rejected` or `filed`.
    pub decision: String,
    pub reviewer: String,
    pub reason: Option<String>,
    pub decided_at: i64,
}

/// Where a message stands for review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// The pipeline is still working on it.
    InProgress,
    Quarantined,
    /// Processed and not yet decided.
    ToReview,
    Approved,
    Rejected,
    /// Decided with nothing to send: the pipeline staged no action (the "nothing to send"
    /// lane), and a reviewer filed it.
    Filed,
}

impl ReviewStatus {
    pub const ALL: [ReviewStatus; 6] = [
        ReviewStatus::ToReview,
        ReviewStatus::Approved,
        ReviewStatus::Rejected,
        ReviewStatus::Filed,
        ReviewStatus::InProgress,
        ReviewStatus::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::InProgress => "in_progress",
            ReviewStatus::Quarantined => "quarantined",
            ReviewStatus::ToReview => "to_review",
            ReviewStatus::Approved => "approved",
            ReviewStatus::Rejected => "rejected",
            ReviewStatus::Filed => "filed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn of(message_status: &str, decision: Option<&str>) -> Self {
        match (decision, message_status) {
            (Some("approved"), _) => ReviewStatus::Approved,
            (Some("filed"), _) => ReviewStatus::Filed,
            (Some(_), _) => ReviewStatus::Rejected,
            (None, "processed") => ReviewStatus::ToReview,
            (None, "quarantined") => ReviewStatus::Quarantined,
            (None, _) => ReviewStatus::InProgress,
        }
    }

    /// The SQL condition selecting this status (over `m` messages, `d` decisions).
    fn condition(self) -> &'static str {
        match self {
            ReviewStatus::InProgress => "d.decision IS NULL AND m.status = 'pending'",
            ReviewStatus::Quarantined => "d.decision IS NULL AND m.status = 'quarantined'",
            ReviewStatus::ToReview => "d.decision IS NULL AND m.status = 'processed'",
            ReviewStatus::Approved => "d.decision = 'approved'",
            ReviewStatus::Rejected => "d.decision = 'rejected'",
            ReviewStatus::Filed => "d.decision = 'filed'",
        }
    }
}

/// Which messages the review queue lists.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    /// None: every status.
    pub status: Option<ReviewStatus>,
    /// An extraction label and the value it must have, e.g. (`threat_level`, `high`).
    pub label: Option<(String, String)>,
    pub limit: usize,
}

/// One line of the review queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueItem {
    pub message: MessageRow,
    pub status: ReviewStatus,
    /// The validated extraction, when the stage ran.
    pub extract: Option<Value>,
    /// The route taken.
    pub route: Option<String>,
    pub actions: i64,
    pub decision: Option<Decision>,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The message's body text as its reply action will carry it after the draft changed from
/// `old` to `new`: the old draft replaced where the reply quotes it, else the new draft.
fn body_with_draft(body: &str, old: &str, new: &str) -> String {
    if !old.is_empty() && body.contains(old) {
        body.replace(old, new)
    } else {
        new.to_string()
    }
}

impl Store {
    // --- the queue ------------------------------------------------------------------

    /// A fingerprint of what the queue's ranking reads, from cheap aggregates: messages
    /// (ingested, their status), jobs (a stage ran or was re-run), stage results, actions,
    /// decisions (made or undone). Equal fingerprints: the ranking computed for one still
    /// holds, but for the time waited.
    pub async fn queue_state(&self) -> Result<Vec<i64>> {
        let row = sqlx::query(
            "SELECT
               (SELECT COUNT(*) FROM messages) AS messages,
               (SELECT COALESCE(MAX(id), 0) FROM messages) AS last_message,
               (SELECT COALESCE(MAX(finished_at), 0) FROM messages) AS finished,
               (SELECT COUNT(*) FROM messages WHERE status = 'processed') AS processed,
               (SELECT COUNT(*) FROM jobs) AS jobs,
               (SELECT COALESCE(MAX(updated_at), 0) FROM jobs) AS jobs_at,
               (SELECT COUNT(*) FROM stage_results) AS results,
               (SELECT COALESCE(MAX(created_at), 0) FROM stage_results) AS results_at,
               (SELECT COUNT(*) FROM actions WHERE status = 'staged') AS staged,
               (SELECT COUNT(*) FROM decisions) AS decisions,
               (SELECT COALESCE(MAX(decided_at), 0) FROM decisions) AS decided_at",
        )
        .fetch_one(&self.pool)
        .await?;
        [
            "messages",
            "last_message",
            "finished",
            "processed",
            "jobs",
            "jobs_at",
            "results",
            "results_at",
            "staged",
            "decisions",
            "decided_at",
        ]
        .iter()
        .map(|c| Ok(row.try_get::<i64, _>(*c)?))
        .collect()
    }

    /// A message's parts as the triage reads them: (kind, text), in order; the per-page
    /// texts of attachments (`pages`) are neither read nor decrypted.
    pub async fn triage_parts(&self, message_id: i64) -> Result<Vec<(String, Option<String>)>> {
        sqlx::query("SELECT kind, text, key_id FROM parts WHERE message_id = $1 ORDER BY idx")
            .bind(message_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                let key_id: Option<String> = r.try_get("key_id")?;
                let text = crypto::open_text(
                    self.keys(),
                    key_id.as_deref(),
                    Column::PartText,
                    r.try_get("text")?,
                )?;
                Ok((r.try_get("kind")?, text))
            })
            .collect()
    }

    /// Messages for review, newest first, filtered by review status and extraction label.
    pub async fn review_queue(&self, filter: &QueueFilter) -> Result<Vec<QueueItem>> {
        let condition = filter.status.map_or("1 = 1", ReviewStatus::condition);
        // A fixed condition from the enum above; no value is formatted into the SQL.
        let sql = format!(
            "SELECT m.id, m.content_hash, m.source, m.source_ref, m.size, m.status, m.received_at,
                    m.finished_at, d.decision, d.reviewer, d.reason, d.key_id AS decision_key_id, d.decided_at,
                    e.output AS extract, e.key_id AS extract_key, r.output AS route,
                    r.key_id AS route_key,
                    (SELECT COUNT(*) FROM actions a WHERE a.message_id = m.id) AS n_actions
             FROM messages m
             LEFT JOIN decisions d ON d.message_id = m.id
             LEFT JOIN stage_results e ON e.message_id = m.id AND e.stage = 'extract'
             LEFT JOIN stage_results r ON r.message_id = m.id AND r.stage = 'route'
             WHERE {condition}
             ORDER BY m.id DESC"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .context("reading the review queue")?;
        let mut items = Vec::new();
        for r in &rows {
            let extract = self.open_stage_output(r, "extract", "extract_key")?;
            if let Some((label, value)) = &filter.label {
                let found = extract
                    .as_ref()
                    .and_then(|e| e.get(label))
                    .is_some_and(|v| v.as_str().map_or(v.to_string(), str::to_string) == *value);
                if !found {
                    continue;
                }
            }
            let route = self
                .open_stage_output(r, "route", "route_key")?
                .and_then(|v| v["route"].as_str().map(str::to_string));
            let message = crate::message_row(r)?;
            let decision = decision_from(self.keys(), r)?;
            items.push(QueueItem {
                status: ReviewStatus::of(
                    &message.status,
                    decision.as_ref().map(|d| d.decision.as_str()),
                ),
                message,
                extract,
                route,
                actions: r.try_get("n_actions")?,
                decision,
            });
            if filter.limit > 0 && items.len() >= filter.limit {
                break;
            }
        }
        Ok(items)
    }

    pub async fn decision(&self, message_id: i64) -> Result<Option<Decision>> {
        let row = sqlx::query(
            "SELECT decision, reviewer, reason, key_id AS decision_key_id, decided_at
             FROM decisions WHERE message_id = $1",
        )
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => decision_from(self.keys(), &r),
            None => Ok(None),
        }
    }

    pub async fn review_status(&self, message_id: i64) -> Result<Option<ReviewStatus>> {
        let Some(m) = self.message(message_id).await? else {
            return Ok(None);
        };
        let d = self.decision(message_id).await?;
        Ok(Some(ReviewStatus::of(
            &m.status,
            d.as_ref().map(|d| d.decision.as_str()),
        )))
    }

    // --- drafts ---------------------------------------------------------------------

    /// The draft's versions, oldest first. The drafting model's text is version 1 once a
    /// person saved an edit; before that it is the only version (0, not yet stored).
    pub async fn drafts(&self, message_id: i64) -> Result<Vec<DraftVersion>> {
        let rows = sqlx::query(
            "SELECT version, body, key_id, author, created_at FROM drafts WHERE message_id = $1 ORDER BY version",
        )
        .bind(message_id)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(self.model_draft(message_id).await?.into_iter().collect());
        }
        rows.iter()
            .map(|r| {
                Ok(DraftVersion {
                    version: r.try_get("version")?,
                    body: draft_body(self.keys(), r)?,
                    author: r.try_get("author")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// A stage output read from `column` of a joined row (None when the stage has not run),
    /// decrypted with the key `key_column` names when encryption at rest is on.
    fn open_stage_output(
        &self,
        r: &sqlx::any::AnyRow,
        column: &str,
        key_column: &str,
    ) -> Result<Option<Value>> {
        let key_id: Option<String> = r.try_get(key_column)?;
        let text: Option<String> = r.try_get(column)?;
        let text = crate::crypto::open_text(
            self.keys(),
            key_id.as_deref(),
            crate::crypto::Column::StageOutput,
            text,
        )?;
        text.map(|t| serde_json::from_str(&t).context("a stage output is not JSON"))
            .transpose()
    }

    async fn model_draft(&self, message_id: i64) -> Result<Option<DraftVersion>> {
        let row = sqlx::query(
            "SELECT output, key_id, created_at FROM stage_results WHERE message_id = $1 AND stage = 'draft'",
        )
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let output = self
            .open_stage_output(&r, "output", "key_id")?
            .unwrap_or_default();
        Ok(output["draft"].as_str().map(|text| DraftVersion {
            version: 0,
            body: text.to_string(),
            author: "model".into(),
            created_at: r.try_get("created_at").unwrap_or(0),
        }))
    }

    /// Save a new version of the draft (a person's edit), while the message is undecided.
    /// Staged reply actions follow the draft: where a reply's body quotes the previous
    /// draft, that text is replaced by the new one; otherwise the body becomes the draft.
    /// Returns the new version number.
    pub async fn save_draft(&self, message_id: i64, body: &str, user: &str) -> Result<i64> {
        let model = self.model_draft(message_id).await?;
        let mut tx = self.pool.begin().await?;
        // First statement is a write: it takes SQLite's lock before anything is read.
        undecided_guard(&mut tx, message_id).await?;
        // What was approved so far is not what will be sent any more.
        sqlx::query("DELETE FROM approvals WHERE message_id = $1")
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        let last = sqlx::query(
            "SELECT version, body, key_id FROM drafts WHERE message_id = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(message_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (mut version, previous) = match last {
            Some(r) => (
                r.try_get::<i64, _>("version")?,
                draft_body(self.keys(), &r)?,
            ),
            None => (
                0,
                model.as_ref().map(|m| m.body.clone()).unwrap_or_default(),
            ),
        };
        if version == 0
            && let Some(m) = &model
        {
            version = 1;
            insert_draft(
                &mut tx,
                self.keys(),
                message_id,
                1,
                &m.body,
                "model",
                m.created_at,
            )
            .await?;
        }
        version += 1;
        let author = format!("user:{user}");
        insert_draft(
            &mut tx,
            self.keys(),
            message_id,
            version,
            body,
            &author,
            now_ms(),
        )
        .await?;
        let replies = sqlx::query(
            "SELECT id, payload, key_id FROM actions WHERE message_id = $1 AND kind = 'reply' AND status = 'staged'",
        )
        .bind(message_id)
        .fetch_all(&mut *tx)
        .await?;
        for r in replies {
            let id: i64 = r.try_get("id")?;
            let mut payload: Value =
                serde_json::from_str(&crate::action_payload(self.keys(), &r)?)?;
            let old_body = payload["body"].as_str().unwrap_or("").to_string();
            payload["body"] = body_with_draft(&old_body, &previous, body).into();
            let (sealed, key_id) =
                crypto::seal_text(self.keys(), Column::ActionPayload, &payload.to_string())?;
            sqlx::query("UPDATE actions SET payload = $2, key_id = $3 WHERE id = $1")
                .bind(id)
                .bind(sealed)
                .bind(key_id)
                .execute(&mut *tx)
                .await?;
        }
        append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: &author,
                action: "review.edit_draft",
                subject: &format!("message:{message_id}"),
                detail: json!({"version": version, "chars": body.chars().count()}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(version)
    }
}

/// A draft row's body, decrypted.
fn draft_body(keys: Option<&Keyring>, r: &sqlx::any::AnyRow) -> Result<String> {
    let key_id: Option<String> = r.try_get("key_id")?;
    Ok(crypto::open_text(
        keys,
        key_id.as_deref(),
        Column::DraftBody,
        Some(r.try_get("body")?),
    )?
    .unwrap_or_default())
}

#[allow(clippy::too_many_arguments)]
async fn insert_draft(
    tx: &mut Transaction<'_, Any>,
    keys: Option<&Keyring>,
    message_id: i64,
    version: i64,
    body: &str,
    author: &str,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO drafts (message_id, version, body, author, created_at, key_id)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(message_id)
    .bind(version)
    .bind(crypto::seal_text(keys, Column::DraftBody, body)?.0)
    .bind(author)
    .bind(at)
    .bind(crypto::current_key_id(keys))
    .execute(&mut **tx)
    .await
    .with_context(|| format!("saving draft version {version} of message {message_id}"))?;
    Ok(())
}

fn decision_from(keys: Option<&Keyring>, r: &sqlx::any::AnyRow) -> Result<Option<Decision>> {
    let decision: Option<String> = r.try_get("decision")?;
    let Some(decision) = decision else {
        return Ok(None);
    };
    Ok(Some(Decision {
        decision,
        reviewer: r.try_get("reviewer")?,
        reason: crypto::open_text(
            keys,
            r.try_get::<Option<String>, _>("decision_key_id")?
                .as_deref(),
            Column::DecisionReason,
            r.try_get("reason")?,
        )?,
        decided_at: r.try_get("decided_at")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_follows_the_draft() {
        assert_eq!(
            body_with_draft("Hello,\nold text\n-- team", "old text", "new text"),
            "Hello,\nnew text\n-- team"
        );
        assert_eq!(body_with_draft("hand-edited", "old", "new"), "new");
        assert_eq!(body_with_draft("anything", "", "new"), "new");
    }

    #[test]
    fn statuses_round_trip() {
        for s in ReviewStatus::ALL {
            assert_eq!(ReviewStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ReviewStatus::of("processed", None), ReviewStatus::ToReview);
        assert_eq!(
            ReviewStatus::of("processed", Some("rejected")),
            ReviewStatus::Rejected
        );
    }
}
