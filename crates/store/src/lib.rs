//! verre's persistence: SQLite by default (`$VERRE_HOME/verre.db`), PostgreSQL at scale.
//!
//! Holds the intake pipeline's durable state: each raw message once (by content hash), its
//! parsed parts, the job queue that moves it from stage to stage, each stage's result,
//! quarantine, staged actions and PII tags. Both backends go through sqlx's `Any` driver
//! with the same SQL (positional `$N` parameters work on both); where they differ (claiming
//! a job: `FOR UPDATE SKIP LOCKED` on PostgreSQL) the backend picks its statement.
//!
//! Exactly-once effects: a stage computes without writing, then [`Store::complete`] writes
//! its effects, marks its job done and enqueues the next stage in one transaction, guarded
//! by the lease. A worker killed mid-stage leaves no effect; its lease expires and another
//! worker runs the stage again.

pub mod archive;
pub mod audit;
pub mod audit_key;
pub mod crypto;
pub mod erase;
pub mod evidence;
pub mod ledger;
mod migrate;
pub mod outbox;
mod queue;
pub mod responses;
pub mod retention;
pub mod review;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crypto::Column;

pub use audit::{AuditEntry, AuditEvent, AuditProblem, AuditReport};
pub use audit_key::AuditKey;
pub use crypto::{Keyring, RekeyReport};
pub use erase::{ErasureReport, Subject};
pub use evidence::{Correction, FieldCorrection};
pub use queue::{FailOutcome, Job, NewAction, NewPart, PiiTag, StageEffects};
pub use responses::StoredResponse;
pub use retention::{PurgeReport, Retention};

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool to verre's database, migrated and ready.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Data keys for encryption at rest (docs/GDPR.md); None: content is stored in clear.
    keys: Option<Arc<Keyring>>,
    /// True when opened without keys on a database that holds encrypted rows: writing
    /// content would then store it in clear, so writes are refused.
    needs_key: bool,
    /// The key kept outside the database: audit chain, forgotten content.
    audit_key: Arc<AuditKey>,
    /// Where each audit entry's hash is also appended (`VERRE_AUDIT_SINK_FILE`).
    audit_sink: Option<Arc<std::path::PathBuf>>,
}

/// Unix time in milliseconds, the unit of every timestamp in the store.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The hex SHA-256 a raw message is deduplicated by.
pub fn content_hash(raw: &[u8]) -> String {
    hex::encode(Sha256::digest(raw))
}

/// The result of storing one raw message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub message_id: i64,
    /// False when the same bytes were stored before (nothing was enqueued again).
    pub new: bool,
}

/// What [`Store::ingest_unless_forgotten`] did with one raw message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    Stored(Ingested),
    /// The same bytes were erased or purged before ([`Store::forget`]): not stored again.
    Forgotten,
}

/// One stored message, without its raw bytes.
#[derive(Debug, Clone, Serialize)]
pub struct MessageRow {
    pub id: i64,
    pub content_hash: String,
    pub source: String,
    pub source_ref: String,
    pub size: i64,
    /// `pending`, `processed` or `quarantined`.
    pub status: String,
    pub received_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartRow {
    pub idx: i64,
    pub kind: String,
    pub filename: Option<String>,
    pub content_type: String,
    pub size: i64,
    pub supported: bool,
    pub note: Option<String>,
    pub text: Option<String>,
    /// JSON array of page texts, for documents with pages (PDF).
    pub pages: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageResultRow {
    pub stage: String,
    pub output: serde_json::Value,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub worker: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub message_id: i64,
    pub stage: String,
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_after: i64,
    pub lease_owner: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantineRow {
    pub message_id: i64,
    pub stage: String,
    pub reason: String,
    pub attempts: i64,
    pub created_at: i64,
    pub source_ref: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub target: String,
    pub payload: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PiiTagRow {
    pub part_idx: Option<i64>,
    pub kind: String,
    pub start: i64,
    pub end: i64,
}

/// Everything the store knows about one message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageDetail {
    pub message: MessageRow,
    pub parts: Vec<PartRow>,
    pub jobs: Vec<JobRow>,
    pub results: Vec<StageResultRow>,
    pub quarantine: Option<QuarantineRow>,
    pub actions: Vec<ActionRow>,
    pub pii_tags: Vec<PiiTagRow>,
}

/// Message counts by status, and tokens spent, over the whole store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub messages: i64,
    pub pending: i64,
    pub processed: i64,
    pub quarantined: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

impl Store {
    /// Connect to `url` (`sqlite://PATH`, `postgres://...`) and apply pending migrations.
    /// A SQLite file is created if missing.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            anyhow::bail!(
                "unsupported database URL {url:?}: expected sqlite://PATH or postgres://..."
            )
        };
        let connect_url = match backend {
            Backend::Sqlite if !url.contains('?') && !url.contains(":memory:") => {
                format!("{url}?mode=rwc")
            }
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Readers never wait for the writer; writers wait (not fail) for each other.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 30000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        // Deleted content is overwritten, not left in free pages (erasure).
                        sqlx::query("PRAGMA secure_delete = ON")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect_url)
            .await
            .with_context(|| format!("connecting to {}", redact(url)))?;
        let keys = Keyring::from_env()?.map(Arc::new);
        let mut store = Store {
            pool,
            backend,
            keys,
            needs_key: false,
            audit_key: Arc::new(AuditKey::ephemeral()?),
            audit_sink: audit::sink_from_env().map(Arc::new),
        };
        migrate::run(&store)
            .await
            .with_context(|| format!("migrating {}", redact(url)))?;
        store.audit_key = Arc::new(
            store
                .load_audit_key(url)
                .await
                .context("loading the audit key")?,
        );
        store.needs_key = store.keys.is_none() && store.holds_encrypted().await?;
        Ok(store)
    }

    /// The default database: `sqlite://$VERRE_HOME/verre.db`.
    pub async fn open_in_home(home: &Path) -> Result<Self> {
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        Self::open(&format!("sqlite://{}", home.join("verre.db").display())).await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Use these data keys instead of the environment's (None: store content in clear).
    pub async fn with_keys(mut self, keys: Option<Keyring>) -> Result<Self> {
        self.keys = keys.map(Arc::new);
        self.needs_key = self.keys.is_none() && self.holds_encrypted().await?;
        Ok(self)
    }

    /// Also write each audit entry's head to this file (instead of
    /// `$VERRE_AUDIT_SINK_FILE`; None: nowhere).
    pub fn with_audit_sink(mut self, sink: Option<std::path::PathBuf>) -> Self {
        self.audit_sink = sink.map(Arc::new);
        self
    }

    /// The file audit heads are exported to, if any.
    pub fn audit_sink(&self) -> Option<&Path> {
        self.audit_sink.as_deref().map(|p| p.as_path())
    }

    /// Whether any message is stored encrypted.
    async fn holds_encrypted(&self) -> Result<bool> {
        Ok(
            sqlx::query("SELECT id FROM messages WHERE key_id IS NOT NULL LIMIT 1")
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Refuse to write content in clear into a database that holds encrypted content.
    fn check_writable(&self) -> Result<()> {
        anyhow::ensure!(
            !self.needs_key,
            "this database holds encrypted messages and no data key is configured: set {} or {} (writing now would store content in clear)",
            crypto::KEY_ENV,
            crypto::KEY_FILE_ENV
        );
        Ok(())
    }

    /// The data keys content is encrypted with, if any.
    pub fn keys(&self) -> Option<&Keyring> {
        self.keys.as_deref()
    }

    /// Store a raw message once, keyed by its content hash, and enqueue `first_stage` for it
    /// in the same transaction. Storing the same bytes again changes nothing; bytes that
    /// were erased or purged before are refused with an error (sources read through
    /// [`Store::ingest_unless_forgotten`] count them instead).
    pub async fn ingest(
        &self,
        source: &str,
        source_ref: &str,
        raw: &[u8],
        first_stage: &str,
        max_attempts: u32,
    ) -> Result<Ingested> {
        match self
            .ingest_unless_forgotten(source, source_ref, raw, first_stage, max_attempts)
            .await?
        {
            IngestOutcome::Stored(i) => Ok(i),
            IngestOutcome::Forgotten => anyhow::bail!(
                "message {source_ref}: these bytes were erased or purged before and are not stored again"
            ),
        }
    }

    /// As [`Store::ingest`], telling bytes that were erased or purged before
    /// ([`IngestOutcome::Forgotten`]) from the rest.
    pub async fn ingest_unless_forgotten(
        &self,
        source: &str,
        source_ref: &str,
        raw: &[u8],
        first_stage: &str,
        max_attempts: u32,
    ) -> Result<IngestOutcome> {
        self.check_writable()?;
        let hash = content_hash(raw);
        let now = now_ms();
        let (stored, key_id) = match self.keys() {
            Some(k) => (
                k.seal(crypto::Column::MessageRaw, raw)?,
                Some(k.current_id().to_string()),
            ),
            None => (raw.to_vec(), None),
        };
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO messages (content_hash, source, source_ref, raw, size, status, received_at, key_id)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7)
             ON CONFLICT (content_hash) DO NOTHING RETURNING id",
        )
        .bind(&hash)
        .bind(source)
        .bind(source_ref)
        .bind(stored)
        .bind(raw.len() as i64)
        .bind(now)
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await
        .with_context(|| format!("storing message {source_ref}"))?;
        let Some(row) = inserted else {
            tx.rollback().await?;
            let id: i64 = sqlx::query("SELECT id FROM messages WHERE content_hash = $1")
                .bind(&hash)
                .fetch_one(&self.pool)
                .await?
                .try_get("id")?;
            return Ok(IngestOutcome::Stored(Ingested {
                message_id: id,
                new: false,
            }));
        };
        // Checked under the write lock the insert took: an erasure that commits first is seen.
        let forgotten = sqlx::query("SELECT hash FROM forgotten WHERE hash = $1")
            .bind(self.audit_key.forgotten_hash(&hash))
            .fetch_optional(&mut *tx)
            .await?;
        if forgotten.is_some() {
            tx.rollback().await?;
            return Ok(IngestOutcome::Forgotten);
        }
        let id: i64 = row.try_get("id")?;
        queue::enqueue(&mut tx, id, first_stage, max_attempts, now).await?;
        audit::append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: "system:intake",
                action: "intake.ingest",
                subject: &format!("message:{id}"),
                detail: serde_json::json!({
                    "source": source, "source_ref": source_ref, "size": raw.len(),
                    "encrypted": self.keys.is_some(),
                }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(IngestOutcome::Stored(Ingested {
            message_id: id,
            new: true,
        }))
    }

    /// Remember raw messages (by [`content_hash`]) as erased or purged, so the same bytes
    /// are never stored again. Each is kept as an HMAC under the audit key
    /// ([`AuditKey::forgotten_hash`]), never as content. Returns how many were new.
    pub async fn forget(&self, content_hashes: &[String], reason: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let n = forget_in(&mut tx, &self.audit_key, content_hashes, reason).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Whether these bytes were erased or purged before.
    pub async fn is_forgotten(&self, content_hash: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT hash FROM forgotten WHERE hash = $1")
            .bind(self.audit_key.forgotten_hash(content_hash))
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// The bytes of a message as received (decrypted when stored encrypted).
    pub async fn raw_message(&self, id: i64) -> Result<Vec<u8>> {
        self.raw_message_kept(id).await?.with_context(|| {
            format!(
                "the raw bytes of message {id} were removed by retention ([retention] raw_days)"
            )
        })
    }

    /// As [`Store::raw_message`], with `None` when retention removed the raw bytes (the
    /// message and what was derived from it may still be there).
    pub async fn raw_message_kept(&self, id: i64) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT raw, key_id, raw_purged_at FROM messages WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .with_context(|| format!("no message {id}"))?;
        if row.try_get::<Option<i64>, _>("raw_purged_at")?.is_some() {
            return Ok(None);
        }
        let key_id: Option<String> = row.try_get("key_id")?;
        crypto::open_bytes(
            self.keys(),
            key_id.as_deref(),
            crypto::Column::MessageRaw,
            row.try_get("raw")?,
        )
        .map(Some)
        .with_context(|| format!("reading message {id}"))
    }

    /// A stage output as stored, decrypted.
    fn open_output(&self, r: &AnyRow) -> Result<serde_json::Value> {
        let key_id: Option<String> = r.try_get("key_id")?;
        let text = crypto::open_text(
            self.keys(),
            key_id.as_deref(),
            crypto::Column::StageOutput,
            Some(r.try_get("output")?),
        )?
        .unwrap_or_default();
        Ok(serde_json::from_str(&text)?)
    }

    pub async fn message(&self, id: i64) -> Result<Option<MessageRow>> {
        let row = sqlx::query(
            "SELECT id, content_hash, source, source_ref, size, status, received_at, finished_at
             FROM messages WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| message_row(&r)).transpose()
    }

    /// The output a stage stored for a message, if it ran.
    pub async fn stage_output(
        &self,
        message_id: i64,
        stage: &str,
    ) -> Result<Option<serde_json::Value>> {
        let row = sqlx::query(
            "SELECT output, key_id FROM stage_results WHERE message_id = $1 AND stage = $2",
        )
        .bind(message_id)
        .bind(stage)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| self.open_output(&r)).transpose()
    }

    pub async fn parts(&self, message_id: i64) -> Result<Vec<PartRow>> {
        let rows = sqlx::query(
            "SELECT idx, kind, filename, content_type, size, supported, note, text, pages, key_id
             FROM parts WHERE message_id = $1 ORDER BY idx",
        )
        .bind(message_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let key_id: Option<String> = r.try_get("key_id")?;
                let key_id = key_id.as_deref();
                let keys = self.keys();
                let text = crypto::open_text(keys, key_id, Column::PartText, r.try_get("text")?)?;
                let pages =
                    crypto::open_text(keys, key_id, Column::PartPages, r.try_get("pages")?)?;
                Ok(PartRow {
                    idx: r.try_get("idx")?,
                    kind: r.try_get("kind")?,
                    filename: r.try_get("filename")?,
                    content_type: r.try_get("content_type")?,
                    size: r.try_get("size")?,
                    supported: r.try_get::<i64, _>("supported")? != 0,
                    note: r.try_get("note")?,
                    text,
                    pages: pages.map(|p| serde_json::from_str(&p)).transpose()?,
                })
            })
            .collect()
    }

    /// Everything known about one message, or `None` if there is no such message.
    pub async fn detail(&self, id: i64) -> Result<Option<MessageDetail>> {
        let Some(message) = self.message(id).await? else {
            return Ok(None);
        };
        let parts = self.parts(id).await?;
        let jobs = sqlx::query(
            "SELECT id, message_id, stage, state, attempts, max_attempts, run_after, lease_owner, last_error, key_id
             FROM jobs WHERE message_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| job_row(self.keys(), r))
        .collect::<Result<Vec<_>>>()?;
        let results = sqlx::query(
            "SELECT stage, output, key_id, prompt_tokens, completion_tokens, worker, created_at
             FROM stage_results WHERE message_id = $1 ORDER BY created_at",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(StageResultRow {
                stage: r.try_get("stage")?,
                output: self.open_output(r)?,
                prompt_tokens: r.try_get("prompt_tokens")?,
                completion_tokens: r.try_get("completion_tokens")?,
                worker: r.try_get("worker")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let quarantine = self
            .quarantined()
            .await?
            .into_iter()
            .find(|q| q.message_id == id);
        let actions = sqlx::query(
            "SELECT id, name, kind, target, payload, key_id, status FROM actions WHERE message_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| action_row(self.keys(), r))
        .collect::<Result<Vec<_>>>()?;
        let pii_tags = sqlx::query(
            "SELECT part_idx, kind, span_start, span_end FROM pii_tags WHERE message_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(PiiTagRow {
                part_idx: r.try_get("part_idx")?,
                kind: r.try_get("kind")?,
                start: r.try_get("span_start")?,
                end: r.try_get("span_end")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(Some(MessageDetail {
            message,
            parts,
            jobs,
            results,
            quarantine,
            actions,
            pii_tags,
        }))
    }

    /// Quarantined messages, oldest first.
    pub async fn quarantined(&self) -> Result<Vec<QuarantineRow>> {
        let rows = sqlx::query(
            "SELECT q.message_id, q.stage, q.reason, q.key_id, q.attempts, q.created_at, m.source_ref
             FROM quarantine q JOIN messages m ON m.id = q.message_id ORDER BY q.created_at, q.message_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QuarantineRow {
                    message_id: r.try_get("message_id")?,
                    stage: r.try_get("stage")?,
                    reason: crypto::open_text(
                        self.keys(),
                        r.try_get::<Option<String>, _>("key_id")?.as_deref(),
                        crypto::Column::QuarantineReason,
                        r.try_get("reason")?,
                    )?
                    .unwrap_or_default(),
                    attempts: r.try_get("attempts")?,
                    created_at: r.try_get("created_at")?,
                    source_ref: r.try_get("source_ref")?,
                })
            })
            .collect()
    }

    /// Put a quarantined message back on the queue at the stage that failed, with its
    /// attempts reset. Errors if the message is not in quarantine.
    pub async fn retry_quarantined(&self, message_id: i64) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let removed = sqlx::query("DELETE FROM quarantine WHERE message_id = $1")
            .bind(message_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        anyhow::ensure!(removed == 1, "message {message_id} is not in quarantine");
        sqlx::query(
            "UPDATE jobs SET state = 'ready', attempts = 0, run_after = $2, lease_owner = NULL,
                 lease_expires = NULL, updated_at = $2
             WHERE message_id = $1 AND state = 'failed'",
        )
        .bind(message_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE messages SET status = 'pending', finished_at = NULL WHERE id = $1")
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        audit::append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: "cli",
                action: "intake.retry",
                subject: &format!("message:{message_id}"),
                detail: serde_json::json!({"from": "quarantine"}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Counts over the whole store.
    pub async fn totals(&self) -> Result<Totals> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n,
                 CAST(COALESCE(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0) AS BIGINT) AS pending,
                 CAST(COALESCE(SUM(CASE WHEN status = 'processed' THEN 1 ELSE 0 END), 0) AS BIGINT) AS processed,
                 CAST(COALESCE(SUM(CASE WHEN status = 'quarantined' THEN 1 ELSE 0 END), 0) AS BIGINT) AS quarantined
             FROM messages",
        )
        .fetch_one(&self.pool)
        .await?;
        let t = sqlx::query(
            "SELECT CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS p,
                    CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS c FROM stage_results",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Totals {
            messages: r.try_get("n")?,
            pending: r.try_get("pending")?,
            processed: r.try_get("processed")?,
            quarantined: r.try_get("quarantined")?,
            prompt_tokens: t.try_get("p")?,
            completion_tokens: t.try_get("c")?,
        })
    }

    /// Status of each of the given messages (for a run's progress and summary).
    pub async fn statuses(&self, ids: &[i64]) -> Result<Vec<(i64, String)>> {
        let mut out = Vec::with_capacity(ids.len());
        // Chunked: both backends cap the number of bound parameters.
        for chunk in ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, status FROM messages WHERE id IN ({})",
                placeholders.join(", ")
            );
            // Only generated placeholders are formatted in; the values are bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push((r.try_get("id")?, r.try_get("status")?));
            }
        }
        Ok(out)
    }

    /// Outputs of one stage over the given messages.
    pub async fn stage_outputs(
        &self,
        ids: &[i64],
        stage: &str,
    ) -> Result<Vec<(i64, serde_json::Value, i64, i64)>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let placeholders: Vec<String> =
                (2..=chunk.len() + 1).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT message_id, output, key_id, prompt_tokens, completion_tokens FROM stage_results
                 WHERE stage = $1 AND message_id IN ({})",
                placeholders.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(stage);
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push((
                    r.try_get("message_id")?,
                    self.open_output(&r)?,
                    r.try_get("prompt_tokens")?,
                    r.try_get("completion_tokens")?,
                ));
            }
        }
        Ok(out)
    }

    /// Tokens spent on the given messages, all stages.
    pub async fn tokens_for(&self, ids: &[i64]) -> Result<(i64, i64)> {
        let mut p = 0;
        let mut c = 0;
        for stage in ["extract", "draft"] {
            for (_, _, pt, ct) in self.stage_outputs(ids, stage).await? {
                p += pt;
                c += ct;
            }
        }
        Ok((p, c))
    }
}

/// [`Store::forget`] inside the caller's transaction (erasure, retention).
pub(crate) async fn forget_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key: &AuditKey,
    content_hashes: &[String],
    reason: &str,
) -> Result<u64> {
    let now = now_ms();
    let mut n = 0;
    for h in content_hashes {
        n += sqlx::query(
            "INSERT INTO forgotten (hash, reason, at) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(key.forgotten_hash(h))
        .bind(reason)
        .bind(now)
        .execute(&mut **tx)
        .await
        .context("remembering forgotten content")?
        .rows_affected();
    }
    Ok(n)
}

fn message_row(r: &AnyRow) -> Result<MessageRow> {
    Ok(MessageRow {
        id: r.try_get("id")?,
        content_hash: r.try_get("content_hash")?,
        source: r.try_get("source")?,
        source_ref: r.try_get("source_ref")?,
        size: r.try_get("size")?,
        status: r.try_get("status")?,
        received_at: r.try_get("received_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

/// A staged action's payload, decrypted (the row has `payload` and `key_id`).
fn action_payload(keys: Option<&Keyring>, r: &AnyRow) -> Result<String> {
    let key_id: Option<String> = r.try_get("key_id")?;
    Ok(crypto::open_text(
        keys,
        key_id.as_deref(),
        crypto::Column::ActionPayload,
        Some(r.try_get("payload")?),
    )?
    .unwrap_or_default())
}

fn action_row(keys: Option<&Keyring>, r: &AnyRow) -> Result<ActionRow> {
    Ok(ActionRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        target: r.try_get("target")?,
        payload: action_payload(keys, r)?,
        status: r.try_get("status")?,
    })
}

fn job_row(keys: Option<&Keyring>, r: &AnyRow) -> Result<JobRow> {
    Ok(JobRow {
        id: r.try_get("id")?,
        message_id: r.try_get("message_id")?,
        stage: r.try_get("stage")?,
        state: r.try_get("state")?,
        attempts: r.try_get("attempts")?,
        max_attempts: r.try_get("max_attempts")?,
        run_after: r.try_get("run_after")?,
        lease_owner: r.try_get("lease_owner")?,
        last_error: crypto::open_text(
            keys,
            r.try_get::<Option<String>, _>("key_id")?.as_deref(),
            crypto::Column::JobError,
            r.try_get("last_error")?,
        )?,
    })
}

/// A database URL fit for messages: the password, if any, replaced.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

/// A business database URL opened read-only: on PostgreSQL every transaction starts
/// read-only (`default_transaction_read_only`), so a lookup cannot write, whatever its SQL;
/// a SQLite file is opened with `mode=ro` (any `mode` the URL gave is replaced). Pair it with
/// [`read_only_session`], which also stops SQLite writing other files (`VACUUM INTO`, an
/// attached database). Other URLs are returned as they are.
pub fn read_only_url(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        return format!("{url}{separator}options%5Bdefault_transaction_read_only%5D=on");
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.contains(":memory:") {
            return url.to_string();
        }
        let mut params: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("mode="))
            .collect();
        params.push("mode=ro");
        return format!("sqlite:{path}?{}", params.join("&"));
    }
    url.to_string()
}

/// What a read-only business database connection runs first: on SQLite `PRAGMA query_only`,
/// so that no statement writes any file (a connection opened `mode=ro` may still copy the
/// database with `VACUUM INTO` or write a database it attaches). Nothing on PostgreSQL.
pub async fn read_only_session(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    if conn.backend_name() == "SQLite" {
        sqlx::query("PRAGMA query_only = ON").execute(conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_databases_on_postgres_open_read_only() {
        assert_eq!(
            read_only_url("postgres://u@h/crm"),
            "postgres://u@h/crm?options%5Bdefault_transaction_read_only%5D=on"
        );
        assert_eq!(
            read_only_url("postgresql://u@h/crm?sslmode=require"),
            "postgresql://u@h/crm?sslmode=require&options%5Bdefault_transaction_read_only%5D=on"
        );
        assert_eq!(read_only_url("sqlite://crm.db"), "sqlite://crm.db?mode=ro");
        assert_eq!(
            read_only_url("sqlite:///srv/crm.db?mode=rwc&cache=shared"),
            "sqlite:///srv/crm.db?cache=shared&mode=ro"
        );
        assert_eq!(read_only_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}

/// Helpers for tests of this crate and the crates above it.
pub mod testing {
    /// A fresh, empty PostgreSQL database named after `name` and this process, on the
    /// server `VERRE_TEST_POSTGRES_URL` points at (an admin URL such as
    /// `postgres://postgres@127.0.0.1:5433/postgres`; scripts/ci-services.sh starts one).
    /// None when the variable is unset, except under CI, where that is a failure.
    pub async fn postgres_url(name: &str) -> Option<String> {
        let admin = match std::env::var("VERRE_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => u,
            _ if std::env::var_os("CI").is_some() => {
                panic!(
                    "VERRE_TEST_POSTGRES_URL must be set in CI (scripts/ci-services.sh starts PostgreSQL)"
                )
            }
            _ => {
                eprintln!(
                    "skipped PostgreSQL: set VERRE_TEST_POSTGRES_URL (scripts/ci-services.sh)"
                );
                return None;
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "a plain database name"
        );
        let db = format!("verre_test_{name}_{}", std::process::id());
        let base = admin
            .rsplit_once('/')
            .expect("a database URL")
            .0
            .to_string();
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("connecting to {admin}: {e}"));
        for sql in [
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("CREATE DATABASE {db}"),
        ] {
            // A checked identifier (above), not message data.
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .expect("creating the test database");
        }
        Some(format!("{base}/{db}"))
    }
}
