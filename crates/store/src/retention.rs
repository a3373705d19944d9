//! Retention (GDPR Art. 5(1)(e), storage limitation): `[retention]` in verre.toml, enforced
//! by [`purge`] (`verre purge`, and `verre up` on a schedule).
//!
//! - `raw_days`: a finished message's raw bytes (the e-mail or PDF as received) are removed
//!   that many days after it arrived; its parts, extraction and actions stay.
//! - `extracted_days`: a finished message and everything derived from it (parts, stage
//!   results, staged actions, PII tags, jobs, quarantine) are deleted.
//!   Responses kept by `/v1/responses` are deleted that many days after they were made.
//! - `archive_days`: a document added to the archive (`verre archive add`) is deleted with
//!   its passages and vectors that many days after it was added.
//! - `audit_days`: audit entries older than that are removed from the start of the chain;
//!   a checkpoint (the last removed entry's sequence number and hash) and an `audit.purge`
//!   entry let the rest still verify.
//!
//! Messages still in the pipeline (`pending`), still to review, or with a delivery still
//! to make are never purged ([`FINISHED`]). Each purge writes a
//! `retention.purge` audit entry with its counts, in the same transaction.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::Row;

use crate::erase::{apply_rule, content_hashes, effective_rules};
use crate::{AuditEvent, Store, audit, forget_in, now_ms};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Messages retention may remove: out of the pipeline, and either quarantined or decided
/// by a reviewer with every delivery finished (sent, failed or gone). A message still to
/// review, or with a reply or webhook still to send, stays whatever its age.
const FINISHED: &str = "status <> 'pending' AND (status = 'quarantined' OR (\
    EXISTS (SELECT 1 FROM decisions d WHERE d.message_id = messages.id) \
    AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.message_id = messages.id AND o.status = 'pending')))";

/// How long each kind of data is kept, in days (None keeps it forever): verre.toml's
/// `[retention]`, as verre-config parses it.
pub use verre_config::Retention;

/// What a purge removed (or, with `dry_run`, would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    pub dry_run: bool,
    /// Messages whose raw bytes were removed.
    pub raw_purged: i64,
    /// Messages deleted with everything derived from them.
    pub messages_deleted: i64,
    /// Rows deleted per table by `extracted_days`.
    pub rows: BTreeMap<String, i64>,
    /// Audit entries removed from the start of the chain.
    pub audit_removed: i64,
    /// The sequence number the chain now starts after.
    pub audit_checkpoint: Option<i64>,
}

/// Apply `retention` now: the function `verre purge` and `verre up`'s schedule call.
pub async fn purge(store: &Store, retention: &Retention, dry_run: bool) -> Result<PurgeReport> {
    store.purge_at(retention, now_ms(), dry_run).await
}

impl Store {
    /// Apply `retention` as of `now` (Unix ms).
    pub async fn purge_at(
        &self,
        retention: &Retention,
        now: i64,
        dry_run: bool,
    ) -> Result<PurgeReport> {
        let cutoff = |days: u32| now - days as i64 * DAY_MS;
        let mut report = PurgeReport {
            dry_run,
            ..Default::default()
        };
        let mut tx = self.pool.begin().await?;
        // A write first: on SQLite it takes the write lock before anything is read.
        sqlx::query("UPDATE audit_log SET seq = seq WHERE seq < 0")
            .execute(&mut *tx)
            .await?;

        // Messages deleted below; their raw bytes are not counted again as purged.
        let mut deleted: Vec<i64> = Vec::new();
        if let Some(days) = retention.extracted_days {
            let ids: Vec<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM messages WHERE received_at < $1 AND {FINISHED} ORDER BY id"
            )))
            .bind(cutoff(days))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
            report.messages_deleted = ids.len() as i64;
            if !ids.is_empty() {
                if !dry_run {
                    // Read again from an inbox or a source, the same bytes are not stored.
                    let hashes = content_hashes(&mut tx, &ids).await?;
                    forget_in(&mut tx, &self.audit_key, &hashes, "purged").await?;
                }
                let columns = self.columns().await?;
                for rule in effective_rules(&columns) {
                    let n = apply_rule(&mut tx, &rule, &ids, None, dry_run).await?;
                    if n > 0 {
                        report.rows.insert(rule.0.clone(), n);
                    }
                }
            }
            deleted = ids;
            // Kept `/v1/responses` conversations age out with the extracted data.
            let n = crate::responses::purge_in(&mut tx, cutoff(days), dry_run).await?;
            if n > 0 {
                report.rows.insert("responses".to_string(), n);
            }
        }

        if let Some(days) = retention.archive_days {
            let (documents, chunks) =
                crate::archive::purge_in(&mut tx, cutoff(days), dry_run).await?;
            if documents > 0 {
                report
                    .rows
                    .insert("archive_documents".to_string(), documents);
                report.rows.insert("archive_chunks".to_string(), chunks);
            }
        }

        if let Some(days) = retention.raw_days {
            // The same messages in a dry run and in the real one: not those deleted above
            // (a dry run deletes nothing, so they would still be found here).
            let ids: Vec<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM messages WHERE received_at < $1 AND raw_purged_at IS NULL AND {FINISHED} ORDER BY id"
            )))
            .bind(cutoff(days))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<Vec<i64>, _>>()?
            .into_iter()
            .filter(|id| deleted.binary_search(id).is_err())
            .collect();
            report.raw_purged = ids.len() as i64;
            if !dry_run && !ids.is_empty() {
                let hashes = content_hashes(&mut tx, &ids).await?;
                forget_in(&mut tx, &self.audit_key, &hashes, "purged").await?;
                for chunk in ids.chunks(500) {
                    let sql = format!(
                        "UPDATE messages SET raw = $1, key_id = NULL, raw_purged_at = $2 WHERE id IN ({})",
                        (3..3 + chunk.len())
                            .map(|i| format!("${i}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    // Only placeholders are formatted in; the values are bound.
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(Vec::<u8>::new())
                        .bind(now);
                    for id in chunk {
                        q = q.bind(*id);
                    }
                    q.execute(&mut *tx)
                        .await
                        .context("removing raw messages past raw_days")?;
                }
            }
        }

        if !dry_run
            && (report.raw_purged > 0 || report.messages_deleted > 0 || !report.rows.is_empty())
        {
            audit::append_in(
                &mut tx,
                self,
                &AuditEvent {
                    actor: "system:retention",
                    action: "retention.purge",
                    subject: "",
                    detail: serde_json::json!({
                        "raw_days": retention.raw_days,
                        "extracted_days": retention.extracted_days,
                        "raw_purged": report.raw_purged,
                        "messages_deleted": report.messages_deleted,
                        "rows": report.rows,
                    }),
                },
            )
            .await?;
        }

        if let Some(days) = retention.audit_days {
            let last = sqlx::query(
                "SELECT seq, hash FROM audit_log WHERE at < $1 ORDER BY seq DESC LIMIT 1",
            )
            .bind(cutoff(days))
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(last) = last {
                let seq: i64 = last.try_get("seq")?;
                let hash: String = last.try_get("hash")?;
                report.audit_checkpoint = Some(seq);
                report.audit_removed = if dry_run {
                    sqlx::query("SELECT COUNT(*) AS n FROM audit_log WHERE seq <= $1")
                        .bind(seq)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("n")?
                } else {
                    let removed = sqlx::query("DELETE FROM audit_log WHERE seq <= $1")
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected() as i64;
                    sqlx::query(
                        "INSERT INTO audit_checkpoint (seq, hash, removed, at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(seq)
                    .bind(&hash)
                    .bind(removed)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    audit::append_in(
                        &mut tx,
                        self,
                        &AuditEvent {
                            actor: "system:retention",
                            action: "audit.purge",
                            subject: "",
                            detail: serde_json::json!({
                                "audit_days": days,
                                "through_seq": seq,
                                "through_hash": hash,
                                "removed": removed,
                            }),
                        },
                    )
                    .await?;
                    removed
                };
            }
        }

        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await.context("committing the purge")?;
            self.flush_deleted().await?;
        }
        Ok(report)
    }
}
