//! The audit log: append-only, each entry chained to the one before.
//!
//! An entry's `hash` is an HMAC-SHA256, under the audit key kept outside the database
//! ([`crate::audit_key`]), over its sequence number, time, actor, action, subject, the
//! SHA-256 of its detail, and the previous entry's hash — each field length-prefixed so no
//! two different entries serialise alike. Each entry records the key's id (`key_id`).
//! Editing, removing or reordering an entry breaks the chain at that point, which
//! [`Store::audit_verify`] reports; without the key, nobody can recompute the chain so that
//! it verifies again. Entries written before the chain was keyed are plain SHA-256 over the
//! same fields (`key_id` NULL) and still verify; none may follow the point the key file
//! records (`keyed-after`), so a chain rewritten as plain SHA-256 is caught.
//!
//! Erasure (GDPR Art. 17) blanks an entry's `detail` and sets `erased_at`: a tombstone. The
//! chain covers `detail_hash`, not the detail itself, so a tombstoned log still verifies —
//! if a later `gdpr.erase` entry lists the tombstone (`detail.tombstones`); a detail blanked
//! any other way fails verification.
//!
//! Retention ([`crate::retention`]) may remove the oldest entries: it leaves a checkpoint
//! (the last removed entry's sequence number and hash) and appends an `audit.purge` entry
//! recording the same, so verification starts from the checkpoint and the checkpoint is
//! itself covered by the chain.
//!
//! What the chain alone cannot show: entries cut from the end (the rest still verifies), or
//! a whole chain recomputed by someone who holds the key. Export the head: each append
//! also writes `{"seq", "hash", "at"}` as a line to `$VERRE_AUDIT_SINK_FILE` when set
//! ([`Store::audit_check_sink`] compares), and `verre audit verify` records the head in a
//! file ([`Store::audit_check_head`]).
//!
//! Appends are serialised: on PostgreSQL by a transaction-scoped advisory lock, on SQLite by
//! the database's single write lock, taken by the append's first statement.

use anyhow::{Context, Result};
use hmac::Mac;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Any, AnyConnection, Row, Transaction};

use crate::{AuditKey, Backend, Store, now_ms};

/// A file each appended entry's sequence number and hash are also written to, one JSON
/// line each: a copy of the head outside the database.
pub const AUDIT_SINK_ENV: &str = "VERRE_AUDIT_SINK_FILE";

pub(crate) fn sink_from_env() -> Option<std::path::PathBuf> {
    std::env::var_os(AUDIT_SINK_ENV)
        .filter(|p| !p.is_empty())
        .map(Into::into)
}

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Arbitrary, fixed: the advisory lock appends hold on PostgreSQL.
const PG_AUDIT_LOCK: i64 = 0x7665_7272_655f_6175;

/// What happened, by whom, to what. `detail` is metadata (ids, counts, reasons); content
/// goes in only where the operator configured it.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    /// Who acted: `user:NAME`, `key:NAME`, `cli`, `system:intake`, `system:delivery`...
    pub actor: &'a str,
    /// A dotted verb: `api.chat`, `intake.extract`, `review.approve`, `delivery.sent`,
    /// `gdpr.erase`...
    pub action: &'a str,
    /// What it concerns: `message:12`, `action:7`, `key:ops`, `subject:<hash>`; may be empty.
    pub subject: &'a str,
    pub detail: Value,
}

/// One stored entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// None once erased (a tombstone).
    pub detail: Option<Value>,
    pub detail_hash: String,
    pub prev_hash: String,
    pub hash: String,
    pub erased_at: Option<i64>,
    /// The id of the audit key `hash` is an HMAC under; None for plain SHA-256 entries
    /// written before the chain was keyed.
    pub key_id: Option<String>,
}

/// The outcome of checking the whole chain.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub entries: i64,
    pub tombstones: i64,
    /// The sequence number of the last entry (that of the checkpoint when none is left).
    pub head_seq: i64,
    /// The last entry's hash: record it elsewhere to detect truncation of the tail.
    pub head: String,
    /// The last entry removed by retention, if any: the chain starts after it.
    pub checkpoint: Option<AuditCheckpoint>,
    /// Empty when the chain is intact.
    pub problems: Vec<AuditProblem>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Where a retention purge cut the log: its last removed entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditCheckpoint {
    pub seq: i64,
    pub hash: String,
    pub removed: i64,
    pub at: i64,
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, Serialize)]
pub struct AuditProblem {
    pub seq: i64,
    pub reason: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SHA-256 recorded for a detail value (its compact JSON text).
pub fn detail_hash(detail_json: &str) -> String {
    sha256_hex(detail_json.as_bytes())
}

/// Feed an entry's fields, each length-prefixed, to `update`.
fn encode_entry(fields: [&str; 7], mut update: impl FnMut(&[u8])) {
    for field in fields {
        update(&(field.len() as u64).to_be_bytes());
        update(field.as_bytes());
    }
}

/// The chained hash of one entry, plain SHA-256: entries written before the chain was
/// keyed.
#[allow(clippy::too_many_arguments)]
pub fn entry_hash(
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail_hash: &str,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    let (seq, at) = (seq.to_string(), at.to_string());
    encode_entry(
        [&seq, &at, actor, action, subject, detail_hash, prev_hash],
        |b| h.update(b),
    );
    hex::encode(h.finalize())
}

/// The chained hash of one entry, HMAC-SHA256 under the audit key.
#[allow(clippy::too_many_arguments)]
pub fn keyed_entry_hash(
    key: &AuditKey,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail_hash: &str,
    prev_hash: &str,
) -> String {
    let mut mac = key.chain_mac();
    let (seq, at) = (seq.to_string(), at.to_string());
    encode_entry(
        [&seq, &at, actor, action, subject, detail_hash, prev_hash],
        |b| mac.update(b),
    );
    hex::encode(mac.finalize().into_bytes())
}

/// Append `event` inside the caller's transaction, so the entry commits (or not) with the
/// change it records. On SQLite the transaction must not have only read so far (its first
/// statement should be a write, or this append); returns the entry's sequence number.
pub async fn append_in(
    tx: &mut Transaction<'_, Any>,
    store: &Store,
    event: &AuditEvent<'_>,
) -> Result<i64> {
    append_conn(tx, store, event).await
}

async fn append_conn(
    conn: &mut AnyConnection,
    store: &Store,
    event: &AuditEvent<'_>,
) -> Result<i64> {
    match store.backend {
        Backend::Postgres => {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_AUDIT_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        Backend::Sqlite => {
            // A write first: takes SQLite's write lock before the head is read.
            sqlx::query("UPDATE audit_log SET seq = seq WHERE seq < 0")
                .execute(&mut *conn)
                .await?;
        }
    }
    let head = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    // An empty log continues from its retention checkpoint, if entries were purged.
    let head = match head {
        Some(r) => Some(r),
        None => {
            sqlx::query("SELECT seq, hash FROM audit_checkpoint ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    let (prev_seq, prev_hash) = match head {
        Some(r) => (r.try_get::<i64, _>("seq")?, r.try_get::<String, _>("hash")?),
        None => (0, GENESIS.to_string()),
    };
    let seq = prev_seq + 1;
    let at = now_ms();
    let detail = serde_json::to_string(&event.detail)?;
    let dhash = detail_hash(&detail);
    let key = store.audit_key();
    let hash = keyed_entry_hash(
        key,
        seq,
        at,
        event.actor,
        event.action,
        event.subject,
        &dhash,
        &prev_hash,
    );
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, subject, detail, detail_hash, prev_hash, hash, key_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(seq)
    .bind(at)
    .bind(event.actor)
    .bind(event.action)
    .bind(event.subject)
    .bind(detail)
    .bind(dhash)
    .bind(prev_hash)
    .bind(&hash)
    .bind(key.id())
    .execute(&mut *conn)
    .await
    .context("appending to the audit log")?;
    if let Some(sink) = &store.audit_sink {
        export_head(sink, seq, &hash, at)?;
    }
    Ok(seq)
}

/// Append one entry's head to the sink file. Written before the entry's transaction
/// commits: an append whose transaction fails leaves a line that a later append with the
/// same sequence number supersedes (see [`Store::audit_check_sink`]).
fn export_head(sink: &std::path::Path, seq: i64, hash: &str, at: i64) -> Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let line = serde_json::json!({"seq": seq, "hash": hash, "at": at}).to_string() + "\n";
    options
        .open(sink)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .with_context(|| {
            format!(
                "writing the audit head to {} ({AUDIT_SINK_ENV})",
                sink.display()
            )
        })
}

fn entry_from_row(r: &sqlx::any::AnyRow) -> Result<AuditEntry> {
    let detail: Option<String> = r.try_get("detail")?;
    Ok(AuditEntry {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        subject: r.try_get("subject")?,
        detail: detail.map(|d| serde_json::from_str(&d).unwrap_or(Value::String(d))),
        detail_hash: r.try_get("detail_hash")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        erased_at: r.try_get("erased_at")?,
        key_id: r.try_get("key_id")?,
    })
}

impl Store {
    /// Append one entry in its own transaction; returns its sequence number.
    pub async fn audit(&self, event: AuditEvent<'_>) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let seq = append_in(&mut tx, self, &event).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Entries in order, newest last; `after` is exclusive, `limit` caps the count.
    pub async fn audit_entries(&self, after: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        sqlx::query(
            "SELECT seq, at, actor, action, subject, detail, detail_hash, prev_hash, hash, erased_at, key_id
             FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(entry_from_row)
        .collect()
    }

    /// Walk the whole chain and report every place it does not hold: a gap or reordering
    /// in the sequence, a `prev_hash` that is not the previous entry's hash, a hash that does
    /// not match the entry's fields, a detail that does not match its hash, a blanked detail
    /// without a tombstone.
    pub async fn audit_verify(&self) -> Result<AuditReport> {
        let checkpoint = self.audit_checkpoint().await?;
        let mut report = AuditReport {
            entries: 0,
            tombstones: 0,
            head_seq: 0,
            head: GENESIS.to_string(),
            checkpoint: checkpoint.clone(),
            problems: Vec::new(),
        };
        let (mut expected_seq, mut prev_hash) = match &checkpoint {
            Some(c) => (c.seq + 1, c.hash.clone()),
            None => (1, GENESIS.to_string()),
        };
        let mut after = expected_seq - 1;
        // Entries at or before the checkpoint should be gone; any left is reported.
        if let Some(c) = &checkpoint {
            let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_log WHERE seq <= $1")
                .bind(c.seq)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
            if left > 0 {
                report.problems.push(AuditProblem {
                    seq: c.seq,
                    reason: format!(
                        "{left} entries at or before the retention checkpoint are still present"
                    ),
                });
            }
        }
        let mut purge_recorded = false;
        let key = self.audit_key();
        // Once an entry is keyed, or past the point the key file records, every later one
        // must be.
        let mut keyed_from: Option<i64> = key.keyed_after().map(|n| n + 1);
        // Tombstones, and the ones a later `gdpr.erase` entry lists.
        let mut tombstones: Vec<(i64, i64)> = Vec::new();
        let mut covered: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();
        // `gdpr.erase` entries written before they listed their tombstones: (seq, at).
        let mut unlisted_erasures: Vec<(i64, i64)> = Vec::new();
        loop {
            let page = self.audit_entries(after, 2000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in page {
                report.entries += 1;
                let mut problem =
                    |reason: String| report.problems.push(AuditProblem { seq: e.seq, reason });
                if e.seq != expected_seq {
                    problem(format!(
                        "sequence jumps from {} to {}: entries removed",
                        expected_seq - 1,
                        e.seq
                    ));
                }
                if e.prev_hash != prev_hash {
                    problem("prev_hash is not the previous entry's hash".into());
                }
                let fields = (
                    e.seq,
                    e.at,
                    e.actor.as_str(),
                    e.action.as_str(),
                    e.subject.as_str(),
                    e.detail_hash.as_str(),
                    e.prev_hash.as_str(),
                );
                match e.key_id.as_deref() {
                    None => {
                        if keyed_from.is_some_and(|from| e.seq >= from) {
                            problem(
                                "a plain SHA-256 hash where the chain is keyed: the entry was rewritten by someone without the audit key".into(),
                            );
                        } else if entry_hash(
                            fields.0, fields.1, fields.2, fields.3, fields.4, fields.5, fields.6,
                        ) != e.hash
                        {
                            problem("the entry's fields do not match its hash: edited".into());
                        }
                    }
                    Some(id) if id != key.id() => problem(format!(
                        "keyed with audit key {id}, not the configured one ({}): give verre that key ({})",
                        key.id(),
                        key.path()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "in memory".into())
                    )),
                    Some(_) => {
                        keyed_from.get_or_insert(e.seq);
                        if keyed_entry_hash(
                            key, fields.0, fields.1, fields.2, fields.3, fields.4, fields.5,
                            fields.6,
                        ) != e.hash
                        {
                            problem("the entry's fields do not match its hash: edited".into());
                        }
                    }
                }
                match (&e.detail, e.erased_at) {
                    (Some(d), _) => {
                        if detail_hash(&serde_json::to_string(d)?) != e.detail_hash {
                            problem("the detail does not match its hash: edited".into());
                        }
                    }
                    (None, Some(at)) => {
                        report.tombstones += 1;
                        tombstones.push((e.seq, at));
                    }
                    (None, None) => problem("the detail was removed without a tombstone".into()),
                }
                if let ("gdpr.erase", Some(d)) = (e.action.as_str(), &e.detail) {
                    match d.get("tombstones").and_then(Value::as_array) {
                        Some(list) => covered
                            .extend(list.iter().filter_map(Value::as_i64).filter(|s| *s < e.seq)),
                        None => unlisted_erasures.push((e.seq, e.at)),
                    }
                }
                if let (Some(c), "audit.purge", Some(d)) =
                    (&checkpoint, e.action.as_str(), &e.detail)
                    && d["through_seq"].as_i64() == Some(c.seq)
                    && d["through_hash"].as_str() == Some(c.hash.as_str())
                {
                    purge_recorded = true;
                }
                expected_seq = e.seq + 1;
                prev_hash = e.hash.clone();
            }
        }
        for (seq, erased_at) in tombstones {
            // An erasure from before the entries listed their tombstones covers those
            // blanked up to when it was recorded.
            let legacy = || {
                unlisted_erasures
                    .iter()
                    .any(|(e_seq, e_at)| *e_seq > seq && *e_at >= erased_at)
            };
            if !covered.contains(&seq) && !legacy() {
                report.problems.push(AuditProblem {
                    seq,
                    reason: "the detail was blanked as a tombstone, but no later gdpr.erase entry records it: erased outside verre erase".into(),
                });
            }
        }
        if let Some(c) = &checkpoint
            && !purge_recorded
        {
            report.problems.push(AuditProblem {
                seq: c.seq,
                reason: "the retention checkpoint is not recorded by an audit.purge entry in the chain: entries removed outside verre purge".into(),
            });
        }
        report.head_seq = expected_seq - 1;
        report.head = prev_hash;
        Ok(report)
    }

    /// The newest retention checkpoint, if entries were ever purged.
    pub async fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>> {
        let row = sqlx::query(
            "SELECT seq, hash, removed, at FROM audit_checkpoint ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(AuditCheckpoint {
                seq: r.try_get("seq")?,
                hash: r.try_get("hash")?,
                removed: r.try_get("removed")?,
                at: r.try_get("at")?,
            })
        })
        .transpose()
    }

    /// Check a head recorded earlier (sequence number and hash from [`AuditReport`])
    /// against the log now: the entry must still be there with the same hash, or have been
    /// removed by a recorded retention purge. Catches a tail cut off, and a chain rewritten
    /// from that entry on, since the head was recorded.
    pub async fn audit_check_head(&self, seq: i64, hash: &str) -> Result<Vec<AuditProblem>> {
        let mut problems = Vec::new();
        if seq == 0 {
            return Ok(problems);
        }
        let row = sqlx::query("SELECT hash FROM audit_log WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => {
                if r.try_get::<String, _>("hash")? != hash {
                    problems.push(AuditProblem {
                        seq,
                        reason: "the entry recorded as the head at the last check has a different hash now: the log was rewritten".into(),
                    });
                }
            }
            None => {
                let checkpoint = self.audit_checkpoint().await?;
                match checkpoint {
                    Some(c) if c.seq > seq => {}
                    Some(c) if c.seq == seq && c.hash == hash => {}
                    _ => problems.push(AuditProblem {
                        seq,
                        reason: format!(
                            "entry {seq}, the head at the last check, is gone and no retention purge removed it: entries were cut from the end"
                        ),
                    }),
                }
            }
        }
        Ok(problems)
    }

    /// Check the heads exported to a sink file ([`AUDIT_SINK_ENV`]) against the log: every
    /// entry exported must still be there with the same hash, or have been removed by a
    /// recorded retention purge. For a sequence number exported twice (an append whose
    /// transaction failed, then the next one), the later line counts. A missing file has
    /// nothing to check.
    pub async fn audit_check_sink(&self, sink: &std::path::Path) -> Result<Vec<AuditProblem>> {
        let text = match std::fs::read_to_string(sink) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", sink.display())),
        };
        let mut exported = std::collections::BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not JSON", sink.display(), n + 1))?;
            let (Some(seq), Some(hash)) = (v["seq"].as_i64(), v["hash"].as_str()) else {
                anyhow::bail!("{} line {}: expected seq and hash", sink.display(), n + 1);
            };
            exported.insert(seq, hash.to_string());
        }
        let purged_through = self.audit_checkpoint().await?.map(|c| c.seq).unwrap_or(0);
        let mut problems = Vec::new();
        let mut after = purged_through;
        loop {
            let page = self.audit_entries(after, 2000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in page {
                if let Some(hash) = exported.remove(&e.seq)
                    && hash != e.hash
                {
                    problems.push(AuditProblem {
                        seq: e.seq,
                        reason: format!(
                            "the hash differs from the one exported to {} when the entry was written: the log was rewritten",
                            sink.display()
                        ),
                    });
                }
            }
        }
        for seq in exported.into_keys().filter(|s| *s > purged_through) {
            problems.push(AuditProblem {
                seq,
                reason: format!(
                    "exported to {} but not in the log: entries were cut from the end (or the last append failed and nothing was written since)",
                    sink.display()
                ),
            });
        }
        Ok(problems)
    }

    /// Entries matching a filter, oldest first: `subjects` (any of them; empty: all) and an
    /// `action` prefix (`intake.`, `gdpr.erase`); at most `limit`, the newest ones.
    pub async fn audit_find(
        &self,
        subjects: &[String],
        action: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        let mut sql = String::from(
            "SELECT seq, at, actor, action, subject, detail, detail_hash, prev_hash, hash, erased_at, key_id
             FROM audit_log WHERE 1 = 1",
        );
        let mut n = 0;
        if !subjects.is_empty() {
            let ph: Vec<String> = subjects
                .iter()
                .map(|_| {
                    n += 1;
                    format!("${n}")
                })
                .collect();
            sql.push_str(&format!(" AND subject IN ({})", ph.join(", ")));
        }
        if action.is_some() {
            n += 1;
            sql.push_str(&format!(" AND action LIKE ${n}"));
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", n + 1));
        // Only generated placeholders are formatted in; the values are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in subjects {
            q = q.bind(s);
        }
        if let Some(a) = action {
            q = q.bind(format!("{}%", a.replace('%', "")));
        }
        let mut entries = q
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>>>()?;
        entries.reverse();
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_home(dir.path()).await.unwrap();
        (dir, store)
    }

    async fn fill(store: &Store, n: usize) {
        for i in 0..n {
            store
                .audit(AuditEvent {
                    actor: "user:alice",
                    action: "review.approve",
                    subject: &format!("message:{i}"),
                    detail: json!({"n": i}),
                })
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn an_untouched_chain_verifies() {
        let (_d, store) = store().await;
        let empty = store.audit_verify().await.unwrap();
        assert!(empty.ok() && empty.entries == 0 && empty.head == GENESIS);
        fill(&store, 5).await;
        let r = store.audit_verify().await.unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.entries, 5);
        assert_ne!(r.head, GENESIS);
    }

    #[tokio::test]
    async fn edits_removals_and_reorders_are_detected() {
        for tamper in [
            "UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 3",
            "UPDATE audit_log SET detail = '{\"n\":99}' WHERE seq = 2",
            "UPDATE audit_log SET at = at + 1 WHERE seq = 4",
            "DELETE FROM audit_log WHERE seq = 3",
            "UPDATE audit_log SET detail = NULL WHERE seq = 1",
            // Swap entries 2 and 3 wholesale (keeping each row's own hash).
            "UPDATE audit_log SET seq = -2 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 3;
             UPDATE audit_log SET seq = 3 WHERE seq = -2",
        ] {
            let (_d, store) = store().await;
            fill(&store, 5).await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(tamper.to_string()))
                .execute(store.pool())
                .await
                .unwrap();
            let r = store.audit_verify().await.unwrap();
            assert!(!r.ok(), "not detected: {tamper}");
        }
    }

    #[tokio::test]
    async fn a_tombstone_verifies_only_when_an_erasure_lists_it() {
        let (_d, store) = store().await;
        fill(&store, 3).await;
        store
            .audit(AuditEvent {
                actor: "key:ops",
                action: "api.chat",
                subject: "",
                detail: json!({"content": "hello from jeanne.martin@example.fr"}),
            })
            .await
            .unwrap();
        let r = store
            .erase(
                &crate::Subject::parse("jeanne.martin@example.fr").unwrap(),
                "cli",
                false,
            )
            .await
            .unwrap();
        assert_eq!(r.tombstoned, 1);
        let v = store.audit_verify().await.unwrap();
        assert!(v.ok(), "{:?}", v.problems);
        assert_eq!(v.tombstones, 1);
        // Blanked by hand, as someone with write access to the database would.
        sqlx::query("UPDATE audit_log SET detail = NULL, erased_at = 1 WHERE seq = 2")
            .execute(store.pool())
            .await
            .unwrap();
        let v = store.audit_verify().await.unwrap();
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert_eq!(v.problems[0].seq, 2);
        assert!(
            v.problems[0].reason.contains("gdpr.erase"),
            "{:?}",
            v.problems
        );
    }

    /// Recompute the chain from `from` on as plain SHA-256, as someone without the key
    /// would, after editing entry `from`'s actor.
    async fn rewrite_plain(store: &Store, from: i64, keep_key_id: bool) {
        sqlx::query("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = $1")
            .bind(from)
            .execute(store.pool())
            .await
            .unwrap();
        let entries = store.audit_entries(0, 100).await.unwrap();
        let mut prev = entries
            .iter()
            .find(|e| e.seq == from - 1)
            .map(|e| e.hash.clone())
            .unwrap_or_else(|| GENESIS.to_string());
        for e in entries.iter().filter(|e| e.seq >= from) {
            let hash = entry_hash(
                e.seq,
                e.at,
                &e.actor,
                &e.action,
                &e.subject,
                &e.detail_hash,
                &prev,
            );
            let sql = if keep_key_id {
                "UPDATE audit_log SET hash = $1, prev_hash = $2 WHERE seq = $3"
            } else {
                "UPDATE audit_log SET hash = $1, prev_hash = $2, key_id = NULL WHERE seq = $3"
            };
            sqlx::query(sql)
                .bind(&hash)
                .bind(&prev)
                .bind(e.seq)
                .execute(store.pool())
                .await
                .unwrap();
            prev = hash;
        }
    }

    #[tokio::test]
    async fn a_chain_rewritten_with_plain_sha256_is_detected() {
        for (from, keep_key_id) in [(3, false), (3, true), (1, false)] {
            let (_d, store) = store().await;
            fill(&store, 5).await;
            assert!(store.audit_verify().await.unwrap().ok());
            let keyed: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE key_id IS NOT NULL")
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
            assert_eq!(keyed, 5, "every new entry is keyed");
            rewrite_plain(&store, from, keep_key_id).await;
            let r = store.audit_verify().await.unwrap();
            assert!(
                !r.ok(),
                "a plain rewrite from entry {from} (key id kept: {keep_key_id}) passed"
            );
        }
    }

    #[tokio::test]
    async fn a_chain_from_before_the_key_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open_in_home(dir.path()).await.unwrap();
            // Entries as an older verre wrote them: plain SHA-256, no key id.
            let mut prev = GENESIS.to_string();
            for seq in 1..=3 {
                let dhash = detail_hash("null");
                let hash = entry_hash(seq, 1000 + seq, "cli", "test", "", &dhash, &prev);
                sqlx::query(
                    "INSERT INTO audit_log (seq, at, actor, action, subject, detail, detail_hash, prev_hash, hash)
                     VALUES ($1, $2, 'cli', 'test', '', 'null', $3, $4, $5)",
                )
                .bind(seq)
                .bind(1000 + seq)
                .bind(&dhash)
                .bind(&prev)
                .bind(&hash)
                .execute(store.pool())
                .await
                .unwrap();
                prev = hash;
            }
        }
        // The key is made when this verre first opens the database: after entry 3.
        std::fs::remove_file(dir.path().join("audit-key")).unwrap();
        let store = Store::open_in_home(dir.path()).await.unwrap();
        assert_eq!(store.audit_key().keyed_after(), Some(3));
        fill(&store, 2).await;
        let r = store.audit_verify().await.unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.entries, 5);

        // Another key (the file replaced): the keyed entries do not verify.
        let key_file = dir.path().join("audit-key");
        let original = std::fs::read_to_string(&key_file).unwrap();
        std::fs::write(&key_file, "ab".repeat(32) + "\n").unwrap();
        let other = Store::open_in_home(dir.path()).await.unwrap();
        let r = other.audit_verify().await.unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| p.reason.contains("not the configured one")),
            "{:?}",
            r.problems
        );
        std::fs::write(&key_file, original).unwrap();

        // Rewritten as plain SHA-256 after the point the key file records: caught.
        rewrite_plain(&store, 4, false).await;
        assert!(!store.audit_verify().await.unwrap().ok());
    }

    #[tokio::test]
    async fn the_sink_catches_a_cut_tail_and_a_rewrite() {
        let (dir, store) = store().await;
        let sink = dir.path().join("audit.sink");
        let store = store.with_audit_sink(Some(sink.clone()));
        fill(&store, 4).await;
        assert_eq!(std::fs::read_to_string(&sink).unwrap().lines().count(), 4);
        assert!(store.audit_check_sink(&sink).await.unwrap().is_empty());
        sqlx::query("DELETE FROM audit_log WHERE seq = 4")
            .execute(store.pool())
            .await
            .unwrap();
        assert!(
            store.audit_verify().await.unwrap().ok(),
            "the chain alone cannot tell"
        );
        let problems = store.audit_check_sink(&sink).await.unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].seq, 4);
        // Appending again reuses seq 4: the later line counts.
        fill(&store, 1).await;
        assert!(store.audit_check_sink(&sink).await.unwrap().is_empty());
        sqlx::query("UPDATE audit_log SET hash = 'x' WHERE seq = 2")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(store.audit_check_sink(&sink).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn concurrent_appends_stay_one_chain() {
        let (_d, store) = store().await;
        let mut tasks = Vec::new();
        for t in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    store
                        .audit(AuditEvent {
                            actor: "system:test",
                            action: "test",
                            subject: &format!("t{t}:{i}"),
                            detail: json!(null),
                        })
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let r = store.audit_verify().await.unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.entries, 40);
    }
}
