//! Erasure of a data subject (GDPR Art. 17): `verre erase --subject EMAIL|NAME`.
//!
//! 1. Find the subject's messages: every message whose raw bytes, parts (headers, bodies,
//!    attachment text), stage outputs, quarantine reason or job errors (all decrypted),
//!    staged actions or review and delivery rows mention the subject — compared in Rust
//!    after Unicode case folding, white space collapsed ([`Subject::mentioned_in`]); SQL's
//!    `LIKE` is used nowhere (it folds ASCII only and sees `ann@…` in `joann@…`).
//! 2. Delete them and every row that hangs off them, table by table, as [`REGISTRY`] says;
//!    a table with a `message_id` column that the registry does not name is treated as
//!    hanging off its message too, deleted from first (so tables added later are covered
//!    without an entry).
//!    Rows that reach a message only through another table ([`Relation::Via`]:
//!    `outbox_attempts` -> `outbox`) go before that table. Rows that mention the subject
//!    without belonging to a message are deleted ([`Relation::Mentions`]) or have the
//!    mentioning columns replaced by [`ERASED`] ([`Relation::Blank`], for the cost ledger,
//!    which keeps its token counts).
//! 3. Tombstone the audit entries about those messages and their actions (`message:ID`,
//!    `action:ID`), and any whose detail mentions the subject: the detail is blanked, the
//!    chain still verifies (see [`crate::audit`]).
//! 4. Append one `gdpr.erase` entry naming the subject only by a keyed hash
//!    ([`Store::subject_hash`]), with the counts. All of the above is one transaction.
//! 5. Scan every text column of every table for the subject: anything left is reported —
//!    in [`ErasureReport::retained`] where it is kept on purpose ([`RETAINED`]: reviewer
//!    accounts, the audit log's chained `actor` and `subject`), otherwise in
//!    [`ErasureReport::residual`]: a table that needs a registry entry.
//!
//! Reviewer accounts (`users`, `sessions`) are the operator's staff, not data subjects of
//! the pipeline: erasure never removes an account (`verre users remove` does). A failed
//! login is kept only for the rate limit's window; one whose user name mentions the subject
//! is deleted (`login_failures`).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use sqlx::{Any, Row, Transaction};

use crate::crypto::{self, Column};
use crate::{AuditEvent, Backend, Store, audit, now_ms};

/// How a table's rows relate to an erased subject.
#[derive(Debug, Clone, Copy)]
pub enum Relation {
    /// Rows whose `column` holds an erased message's id: deleted with the message.
    Message(&'static str),
    /// Rows where one of these text columns mentions the subject: deleted.
    Mentions(&'static [&'static str]),
    /// These columns are set to [`ERASED`] where they mention the subject; the row stays.
    Blank(&'static [&'static str]),
    /// Rows whose `column` holds the `id` of a `parent` row that belongs to an erased
    /// message by its `message_id`: deleted (before the parent, which needs its own rule).
    Via {
        column: &'static str,
        parent: &'static str,
    },
}

/// What [`Relation::Blank`] leaves in a column that mentioned an erased subject.
pub const ERASED: &str = "[erased]";

/// Where the residual scan may find a subject on purpose, and why; reported in
/// [`ErasureReport::retained`], not as a missing registry entry.
pub const RETAINED: &[(&str, &str, &str)] = &[
    (
        "users",
        "name",
        "a reviewer account is named after the subject: remove it with `verre users remove NAME`",
    ),
    (
        "sessions",
        "user_name",
        "a session of a reviewer account named after the subject: `verre users remove NAME` ends it",
    ),
    (
        "audit_log",
        "actor",
        "an account or API key named after the subject acted: the actor is part of the hash chain and cannot be changed; rename the key or account",
    ),
    (
        "audit_log",
        "subject",
        "an audit entry is about an account, key or endpoint named after the subject: part of the hash chain, cannot be changed",
    ),
];

/// One table's part in an erasure.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub table: &'static str,
    pub relation: Relation,
}

/// What erasure does, table by table, in this order (children before their parents). A
/// table that does not exist (an older schema) is skipped. Tables with a `message_id`
/// column need no entry: unlisted ones are deleted from first (a table added later is more
/// likely to reference these than the other way round). A table whose rows relate to a
/// message only through another table (`outbox_attempts.outbox_id` -> `outbox.message_id`)
/// needs a [`Relation::Via`] entry before that table, or foreign keys stop the erasure
/// (nothing is changed then). `audit_log` is never deleted from: its entries are
/// tombstoned. `users` and `sessions` have no entry (see the module documentation).
pub const REGISTRY: &[Rule] = &[
    // Review and delivery (0003_review.sql). Attempts reach their message through the
    // outbox; the outbox references actions, so it goes before them.
    Rule {
        table: "outbox_attempts",
        relation: Relation::Via {
            column: "outbox_id",
            parent: "outbox",
        },
    },
    Rule {
        table: "outbox",
        relation: Relation::Message("message_id"),
    },
    // Evidence and reviewers' corrections (0012_evidence.sql), and the corrected
    // documents' embeddings (0013_correction_embeddings.sql).
    Rule {
        table: "correction_embeddings",
        relation: Relation::Message("message_id"),
    },
    Rule {
        table: "corrections",
        relation: Relation::Message("message_id"),
    },
    Rule {
        table: "evidence",
        relation: Relation::Message("message_id"),
    },
    Rule {
        table: "decisions",
        relation: Relation::Message("message_id"),
    },
    Rule {
        table: "drafts",
        relation: Relation::Message("message_id"),
    },
    // A gone endpoint whose URL or reason names the subject: forgetting it only means the
    // next delivery there is tried (and disabled again on another 410).
    Rule {
        table: "endpoints",
        relation: Relation::Mentions(&["url", "reason"]),
    },
    // Failed logins with the subject as user name (kept only for the rate limit's window).
    Rule {
        table: "login_failures",
        relation: Relation::Mentions(&["user_name"]),
    },
    // The cost ledger (0004_ledger.sql): an API key named after the subject loses its
    // name; the row, its tokens and its cost stay.
    Rule {
        table: "ledger",
        relation: Relation::Blank(&["api_key"]),
    },
    // Intake (0001_intake.sql).
    Rule {
        table: "pii_tags",
        relation: Relation::Message("message_id"),
    },
    Rule {
        table: "actions",
        relation: Relation::Message("message_id"),
    },
    Rule {
        table: "quarantine",
        relation: Relation::Message("message_id"),
    },
    Rule {
        table: "jobs",
        relation: Relation::Message("message_id"),
    },
    Rule {
        table: "stage_results",
        relation: Relation::Message("message_id"),
    },
    Rule {
        table: "parts",
        relation: Relation::Message("message_id"),
    },
    Rule {
        table: "messages",
        relation: Relation::Message("id"),
    },
];

/// A data subject to erase: an e-mail address or a name.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Lower case, white space collapsed: what texts are searched for.
    needle: String,
}

impl Subject {
    pub fn parse(text: &str) -> Result<Self> {
        let needle = normalize(text);
        anyhow::ensure!(
            needle.chars().count() >= 3,
            "the subject {text:?} is too short to search for: give an e-mail address or a full name"
        );
        Ok(Self { needle })
    }

    /// The normalised form searched for.
    pub fn needle(&self) -> &str {
        &self.needle
    }

    /// Whether `text` mentions the subject: an e-mail address as a whole address (erasing
    /// `ann@example.com` does not take `joann@example.com`), a name on word boundaries
    /// (`Ann Lee` is not in `Joann Leeds`), both after Unicode case folding.
    pub fn matches(&self, text: &str) -> bool {
        let text = normalize(text);
        let address = self.needle.contains('@');
        text.match_indices(self.needle.as_str()).any(|(at, found)| {
            let before = text[..at].chars().next_back();
            let mut rest = text[at + found.len()..].chars();
            let after = rest.next();
            if address {
                // `x.ann@…` and `…@example.com.au` are other addresses; a full stop that
                // ends a sentence is not part of one.
                let continues_domain = |c: char| {
                    c.is_alphanumeric()
                        || c == '-'
                        || c == '_'
                        || (c == '.' && rest.clone().next().is_some_and(char::is_alphanumeric))
                };
                !before.is_some_and(|c| c.is_alphanumeric() || "._%+-'".contains(c))
                    && !after.is_some_and(continues_domain)
            } else {
                !before.is_some_and(char::is_alphanumeric)
                    && !after.is_some_and(char::is_alphanumeric)
            }
        })
    }

    /// Whether `text`, or the strings of `text` read as JSON, mention the subject: a JSON
    /// document (an audit detail, a staged action's payload) writes a line break inside a
    /// name as `\n` and may escape letters as `\u00c9`.
    pub fn mentioned_in(&self, text: &str) -> bool {
        self.matches(text)
            || (text.contains('\\')
                && serde_json::from_str::<serde_json::Value>(text)
                    .is_ok_and(|v| self.matches(&json_strings(&v))))
    }
}

/// White space collapsed and Unicode case folded: compatibility-composed (NFKC, so a
/// decomposed `É` is the composed one), lower-cased, `ß` as `ss`.
fn normalize(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .nfkc()
        .collect::<String>()
        .to_lowercase()
        .replace('ß', "ss")
}

/// One message that goes, with what review and delivery made of it.
#[derive(Debug, Clone, Serialize)]
pub struct ErasedMessage {
    pub id: i64,
    pub source_ref: String,
    pub received_at: i64,
    /// Saved draft versions (the model's first draft counts once a person edited it).
    pub drafts: i64,
    /// `approved` or `rejected`; None while undecided.
    pub decision: Option<String>,
    /// Its outbox entries.
    pub deliveries: Vec<ErasedDelivery>,
}

/// An outbox entry that goes with its message, and its attempts.
#[derive(Debug, Clone, Serialize)]
pub struct ErasedDelivery {
    pub outbox_id: i64,
    pub kind: String,
    pub status: String,
    pub attempts: i64,
}

/// A column that still mentions the subject after erasure.
#[derive(Debug, Clone, Serialize)]
pub struct Residual {
    pub table: String,
    pub column: String,
    pub rows: i64,
    /// Why it is kept, for the columns in [`RETAINED`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// What an erasure did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ErasureReport {
    pub dry_run: bool,
    /// The keyed hash the audit log names the subject by.
    pub subject_hash: String,
    pub messages: Vec<ErasedMessage>,
    /// Rows deleted (or blanked) per table.
    pub rows: BTreeMap<String, i64>,
    /// Audit entries whose detail was blanked.
    pub tombstoned: i64,
    /// The `gdpr.erase` entry's sequence number.
    pub audit_seq: Option<i64>,
    /// Columns that still mention the subject and need a registry entry (empty after a
    /// complete erasure).
    pub residual: Vec<Residual>,
    /// Columns that still mention the subject on purpose ([`RETAINED`]), each with why.
    pub retained: Vec<Residual>,
}

/// A column of the database, as the catalog lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnInfo {
    pub table: String,
    pub column: String,
    /// The declared type, lower case (`text`, `bigint`, `blob`, `bytea`...).
    pub kind: String,
}

impl ColumnInfo {
    /// Whether the column holds text (searched for a subject by the residual scan).
    pub fn is_text(&self) -> bool {
        let k = self.kind.as_str();
        k.contains("text") || k.contains("char") || k.contains("clob") || k.contains("json")
    }

    pub fn is_binary(&self) -> bool {
        self.kind.contains("blob") || self.kind.contains("bytea")
    }
}

/// A catalog name quoted for SQL.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Every column of every table (verre's own and any other in the database/schema).
    pub async fn columns(&self) -> Result<Vec<ColumnInfo>> {
        let mut out = Vec::new();
        match self.backend {
            Backend::Sqlite => {
                let tables: Vec<String> = sqlx::query(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get("name"))
                .collect::<Result<_, _>>()?;
                for table in tables {
                    let cols = sqlx::query("SELECT name, type FROM pragma_table_info($1)")
                        .bind(&table)
                        .fetch_all(&self.pool)
                        .await?;
                    for c in cols {
                        out.push(ColumnInfo {
                            table: table.clone(),
                            column: c.try_get("name")?,
                            kind: c.try_get::<String, _>("type")?.to_lowercase(),
                        });
                    }
                }
            }
            Backend::Postgres => {
                for c in sqlx::query(
                    "SELECT CAST(table_name AS TEXT) AS t, CAST(column_name AS TEXT) AS c,
                            CAST(data_type AS TEXT) AS k
                     FROM information_schema.columns
                     WHERE table_schema = current_schema()
                     ORDER BY table_name, ordinal_position",
                )
                .fetch_all(&self.pool)
                .await?
                {
                    out.push(ColumnInfo {
                        table: c.try_get("t")?,
                        column: c.try_get("c")?,
                        kind: c.try_get::<String, _>("k")?.to_lowercase(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The keyed hash that names a subject in the audit log: HMAC-SHA256 of the normalised
    /// subject under a random key kept in this database (`gdpr_secrets`), 128 bits in hex.
    /// The same subject always gets the same hash here, so `verre audit show --subject`
    /// finds its erasure; without the database the hash cannot be tested against guesses.
    pub async fn subject_hash(&self, subject: &Subject) -> Result<String> {
        let salt = crypto::generate_key()?;
        sqlx::query(
            "INSERT INTO gdpr_secrets (name, value) VALUES ('erase_salt', $1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(salt)
        .execute(&self.pool)
        .await?;
        let salt: String = sqlx::query("SELECT value FROM gdpr_secrets WHERE name = 'erase_salt'")
            .fetch_one(&self.pool)
            .await?
            .try_get("value")?;
        let mut mac = Hmac::<Sha256>::new_from_slice(salt.as_bytes())
            .map_err(|e| anyhow::anyhow!("the erasure key: {e}"))?;
        mac.update(subject.needle.as_bytes());
        Ok(hex::encode(&mac.finalize().into_bytes()[..16]))
    }

    /// The messages that mention `subject` anywhere the store keeps their content.
    pub async fn messages_of(&self, subject: &Subject) -> Result<Vec<ErasedMessage>> {
        let mut found = Vec::new();
        let mut after = 0i64;
        loop {
            let page = sqlx::query(
                "SELECT id, source_ref, received_at, raw, key_id FROM messages WHERE id > $1 ORDER BY id LIMIT 200",
            )
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = page.last() else { break };
            after = last.try_get("id")?;
            for r in &page {
                let id: i64 = r.try_get("id")?;
                let source_ref: String = r.try_get("source_ref")?;
                let key_id: Option<String> = r.try_get("key_id")?;
                let raw = crypto::open_bytes(
                    self.keys(),
                    key_id.as_deref(),
                    Column::MessageRaw,
                    r.try_get("raw")?,
                )
                .with_context(|| format!("reading message {id} to search it"))?;
                let hit = subject.matches(&source_ref)
                    || subject.matches(&String::from_utf8_lossy(&raw))
                    || self.derived_mentions(id, subject).await?;
                if hit {
                    found.push(ErasedMessage {
                        id,
                        source_ref,
                        received_at: r.try_get("received_at")?,
                        drafts: 0,
                        decision: None,
                        deliveries: Vec::new(),
                    });
                }
            }
        }
        Ok(found)
    }

    /// Whether what the pipeline derived from a message mentions the subject.
    async fn derived_mentions(&self, id: i64, subject: &Subject) -> Result<bool> {
        for p in self.parts(id).await? {
            let texts = [p.filename, p.text, p.pages.map(|v| v.to_string())];
            if texts.iter().flatten().any(|t| subject.matches(t)) {
                return Ok(true);
            }
        }
        let outputs = sqlx::query("SELECT output, key_id FROM stage_results WHERE message_id = $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        for r in &outputs {
            let key_id: Option<String> = r.try_get("key_id")?;
            let text = crypto::open_text(
                self.keys(),
                key_id.as_deref(),
                Column::StageOutput,
                r.try_get("output")?,
            )?;
            if text.is_some_and(|t| subject.mentioned_in(&t)) {
                return Ok(true);
            }
        }
        for (sql, column) in [
            (
                "SELECT reason AS v, key_id FROM quarantine WHERE message_id = $1",
                Column::QuarantineReason,
            ),
            (
                "SELECT last_error AS v, key_id FROM jobs WHERE message_id = $1",
                Column::JobError,
            ),
            // Review and delivery: a staged action, a person's draft or reason, what went
            // out, what came back. Not who reviewed: erasing a reviewer's name must not take
            // every message they decided.
            (
                "SELECT payload AS v, key_id FROM actions WHERE message_id = $1",
                Column::ActionPayload,
            ),
            (
                "SELECT body AS v, key_id FROM drafts WHERE message_id = $1",
                Column::DraftBody,
            ),
            (
                "SELECT reason AS v, key_id FROM decisions WHERE message_id = $1",
                Column::DecisionReason,
            ),
            (
                "SELECT body AS v, key_id FROM corrections WHERE message_id = $1",
                Column::CorrectionBody,
            ),
            (
                "SELECT body AS v, key_id FROM evidence WHERE message_id = $1",
                Column::EvidenceBody,
            ),
            (
                "SELECT payload AS v, key_id FROM outbox WHERE message_id = $1",
                Column::OutboxPayload,
            ),
            (
                "SELECT last_error AS v, key_id FROM outbox WHERE message_id = $1",
                Column::OutboxError,
            ),
            (
                "SELECT t.error AS v, t.key_id FROM outbox_attempts t
                 JOIN outbox o ON o.id = t.outbox_id WHERE o.message_id = $1",
                Column::AttemptError,
            ),
        ] {
            for r in sqlx::query(sql).bind(id).fetch_all(&self.pool).await? {
                let key_id: Option<String> = r.try_get("key_id")?;
                let text =
                    crypto::open_text(self.keys(), key_id.as_deref(), column, r.try_get("v")?)?;
                if text.is_some_and(|t| subject.mentioned_in(&t)) {
                    return Ok(true);
                }
            }
        }
        // Stored in clear: where actions and deliveries go.
        for sql in [
            "SELECT target AS v FROM actions WHERE message_id = $1",
            "SELECT target AS v FROM outbox WHERE message_id = $1",
        ] {
            for r in sqlx::query(sql).bind(id).fetch_all(&self.pool).await? {
                let v: Option<String> = r.try_get("v")?;
                if v.is_some_and(|t| subject.mentioned_in(&t)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Erase a data subject (see the module documentation). With `dry_run`, count what
    /// would go and change nothing.
    pub async fn erase(
        &self,
        subject: &Subject,
        actor: &str,
        dry_run: bool,
    ) -> Result<ErasureReport> {
        let subject_hash = self.subject_hash(subject).await?;
        let mut messages = self.messages_of(subject).await?;
        let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
        let columns = self.columns().await?;
        let exists = |t: &str| columns.iter().any(|c| c.table == t);
        let rules = effective_rules(&columns);
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // A write first: on SQLite it takes the write lock before anything is read, so a
        // delivery recorded meanwhile cannot slip between what is read and what is deleted.
        sqlx::query("UPDATE audit_log SET seq = seq WHERE seq < 0")
            .execute(&mut *tx)
            .await?;
        if exists("outbox") && exists("drafts") && exists("decisions") {
            describe_review(&mut tx, &mut messages).await?;
        }
        // The audit log names actions by their own id (`delivery.sent`, `review.edit_action`):
        // read them before they go.
        let mut audit_subjects: Vec<String> =
            ids.iter().map(|id| format!("message:{id}")).collect();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT id FROM actions WHERE message_id IN ({}) ORDER BY id",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&mut *tx).await? {
                audit_subjects.push(format!("action:{}", r.try_get::<i64, _>("id")?));
            }
        }
        if !dry_run {
            // The same bytes read again (an inbox, a mail delivered twice) are not stored.
            let hashes = content_hashes(&mut tx, &ids).await?;
            crate::forget_in(&mut tx, &self.audit_key, &hashes, "erased").await?;
        }
        let mut rows = BTreeMap::new();
        for rule in &rules {
            let n = apply_rule(&mut tx, rule, &ids, Some(subject), dry_run).await?;
            if n > 0 {
                *rows.entry(rule.0.clone()).or_insert(0) += n;
            }
        }
        // Kept `/v1/responses` conversations: sealed, so opened and matched here.
        if exists("responses") {
            let n = crate::responses::erase_in(&mut tx, self.keys(), subject, dry_run).await?;
            if n > 0 {
                rows.insert("responses".to_string(), n);
            }
        }
        // Archived documents that mention the subject go whole, passages and vectors with
        // them; the same file is not archived again.
        if exists("archive_chunks") {
            let (documents, chunks, hashes) =
                crate::archive::erase_in(&mut tx, self.keys(), subject, dry_run).await?;
            if documents > 0 {
                rows.insert("archive_documents".to_string(), documents);
                rows.insert("archive_chunks".to_string(), chunks);
            }
            if !dry_run {
                crate::forget_in(&mut tx, &self.audit_key, &hashes, "erased").await?;
            }
        }
        let tombstoned = tombstone(&mut tx, &audit_subjects, subject, now, dry_run).await?;
        let mut report = ErasureReport {
            dry_run,
            subject_hash: subject_hash.clone(),
            messages,
            rows,
            tombstoned,
            audit_seq: None,
            residual: Vec::new(),
            retained: Vec::new(),
        };
        if dry_run {
            tx.rollback().await?;
            return Ok(report);
        }
        // The entries blanked just now, listed in the erasure's own entry: a tombstone no
        // `gdpr.erase` entry lists fails `verre audit verify`.
        let tombstones: Vec<i64> = sqlx::query(
            "SELECT seq FROM audit_log WHERE erased_at = $1 AND detail IS NULL ORDER BY seq",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("seq"))
        .collect::<Result<_, _>>()?;
        report.audit_seq = Some(
            audit::append_in(
                &mut tx,
                self,
                &AuditEvent {
                    actor,
                    action: "gdpr.erase",
                    subject: &format!("subject:{subject_hash}"),
                    detail: serde_json::json!({
                        "messages": report.messages.len(),
                        "rows": report.rows,
                        "tombstoned": report.tombstoned,
                        "tombstones": tombstones,
                    }),
                },
            )
            .await?,
        );
        tx.commit().await.context("committing the erasure")?;
        self.flush_deleted().await?;
        (report.retained, report.residual) = self
            .scan(subject)
            .await?
            .into_iter()
            .partition(|r| r.why.is_some());
        Ok(report)
    }

    /// On SQLite, move committed changes out of the write-ahead log into the database file
    /// and empty the log, so erased content is not left in the `-wal` file.
    pub async fn flush_deleted(&self) -> Result<()> {
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await
                .context("checkpointing the write-ahead log")?;
        }
        Ok(())
    }

    /// Every text column of every table that mentions the subject, with a row count, and
    /// why for the columns where that is expected ([`RETAINED`]).
    pub async fn scan(&self, subject: &Subject) -> Result<Vec<Residual>> {
        let mut out = Vec::new();
        for c in self.columns().await? {
            if !c.is_text() {
                continue;
            }
            // Every row is read and `Subject::matches` decides, as erasure does: SQL's
            // `LOWER`/`LIKE` fold neither Unicode nor white space.
            let sql = format!(
                "SELECT CAST({1} AS TEXT) AS v FROM {0} WHERE {1} IS NOT NULL",
                ident(&c.table),
                ident(&c.column)
            );
            // Identifiers from the database's own catalog, quoted.
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&self.pool);
            let mut n = 0i64;
            while let Some(row) = rows.try_next().await? {
                if row
                    .try_get::<Option<String>, _>("v")?
                    .is_some_and(|v| subject.mentioned_in(&v))
                {
                    n += 1;
                }
            }
            if n > 0 {
                let why = RETAINED
                    .iter()
                    .find(|(t, col, _)| *t == c.table && *col == c.column)
                    .map(|(_, _, why)| why.to_string());
                out.push(Residual {
                    table: c.table,
                    column: c.column,
                    rows: n,
                    why,
                });
            }
        }
        Ok(out)
    }
}

/// All strings of a JSON value, joined by spaces.
pub(crate) fn json_strings(v: &serde_json::Value) -> String {
    let mut out = String::new();
    fn walk(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push(' ');
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
                out.push_str(k);
                out.push(' ');
                walk(x, out)
            }),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// The registry's rules for the tables that exist, after every unlisted table that has a
/// `message_id` column.
pub fn effective_rules(columns: &[ColumnInfo]) -> Vec<(String, Relation)> {
    let exists = |t: &str| columns.iter().any(|c| c.table == t);
    let mut rules: Vec<(String, Relation)> = REGISTRY
        .iter()
        .filter(|r| exists(r.table))
        .map(|r| (r.table.to_string(), r.relation))
        .collect();
    let mut extra: Vec<&str> = columns
        .iter()
        .filter(|c| c.column == "message_id" && c.table != "audit_log")
        .map(|c| c.table.as_str())
        .filter(|t| !REGISTRY.iter().any(|r| r.table == *t))
        .collect();
    extra.dedup();
    let mut all: Vec<(String, Relation)> = extra
        .into_iter()
        .map(|t| (t.to_string(), Relation::Message("message_id")))
        .collect();
    all.append(&mut rules);
    all
}

/// The content hashes of messages, by id.
pub(crate) async fn content_hashes(
    tx: &mut Transaction<'_, Any>,
    ids: &[i64],
) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT content_hash FROM messages WHERE id IN ({})",
            placeholders(1, chunk.len())
        );
        // Only placeholders are formatted in; the ids are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&mut **tx).await? {
            out.push(r.try_get("content_hash")?);
        }
    }
    Ok(out)
}

/// Fill in each message's drafts, decision and deliveries (for the report).
async fn describe_review(
    tx: &mut Transaction<'_, Any>,
    messages: &mut [ErasedMessage],
) -> Result<()> {
    for m in messages {
        m.drafts = sqlx::query("SELECT COUNT(*) AS n FROM drafts WHERE message_id = $1")
            .bind(m.id)
            .fetch_one(&mut **tx)
            .await?
            .try_get("n")?;
        m.decision = sqlx::query("SELECT decision FROM decisions WHERE message_id = $1")
            .bind(m.id)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get("decision"))
            .transpose()?;
        m.deliveries = sqlx::query(
            "SELECT id, kind, status, attempts FROM outbox WHERE message_id = $1 ORDER BY id",
        )
        .bind(m.id)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| {
            Ok(ErasedDelivery {
                outbox_id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                status: r.try_get("status")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect::<Result<_>>()?;
    }
    Ok(())
}

/// Delete (or count, with `dry_run`) the rows a rule selects; returns how many.
pub(crate) async fn apply_rule(
    tx: &mut Transaction<'_, Any>,
    (name, relation): &(String, Relation),
    ids: &[i64],
    subject: Option<&Subject>,
    dry_run: bool,
) -> Result<i64> {
    let table = ident(name);
    let mut total = 0;
    match *relation {
        Relation::Message(_) | Relation::Via { .. } => {
            for chunk in ids.chunks(500) {
                let list = placeholders(1, chunk.len());
                let cond = match *relation {
                    Relation::Via { column, parent } => format!(
                        "{} IN (SELECT id FROM {} WHERE message_id IN ({list}))",
                        ident(column),
                        ident(parent)
                    ),
                    Relation::Message(column) => format!("{} IN ({list})", ident(column)),
                    Relation::Mentions(_) | Relation::Blank(_) => unreachable!("matched below"),
                };
                let sql = if dry_run {
                    format!("SELECT COUNT(*) AS n FROM {table} WHERE {cond}")
                } else {
                    format!("DELETE FROM {table} WHERE {cond}")
                };
                // Identifiers from the registry or the catalog, quoted; values are bound.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    q = q.bind(*id);
                }
                total += if dry_run {
                    q.fetch_one(&mut **tx).await?.try_get::<i64, _>("n")?
                } else {
                    q.execute(&mut **tx)
                        .await
                        .with_context(|| format!("erasing from {name}"))?
                        .rows_affected() as i64
                };
            }
        }
        Relation::Mentions(columns) | Relation::Blank(columns) => {
            let Some(subject) = subject else {
                return Ok(0);
            };
            let rows = mentioning_rows(tx, name, columns, subject).await?;
            if dry_run {
                return Ok(rows.len() as i64);
            }
            let rid = row_id(tx);
            for (id, matched) in &rows {
                let (sql, blank) = match relation {
                    Relation::Mentions(_) => {
                        (format!("DELETE FROM {table} WHERE {rid} = $1"), false)
                    }
                    _ => {
                        let set = matched
                            .iter()
                            .map(|&i| format!("{} = $2", ident(columns[i])))
                            .collect::<Vec<_>>()
                            .join(", ");
                        (format!("UPDATE {table} SET {set} WHERE {rid} = $1"), true)
                    }
                };
                // Identifiers from the registry, quoted; values are bound.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.clone());
                if blank {
                    q = q.bind(ERASED);
                }
                total += q
                    .execute(&mut **tx)
                    .await
                    .with_context(|| format!("erasing from {name}"))?
                    .rows_affected() as i64;
            }
        }
    }
    Ok(total)
}

/// The row identity both backends have, as text: SQLite's `rowid`, PostgreSQL's `ctid`
/// (stable within the transaction that uses it).
fn row_id(tx: &mut Transaction<'_, Any>) -> &'static str {
    match (**tx).backend_name() {
        "PostgreSQL" => "ctid::text",
        _ => "CAST(rowid AS TEXT)",
    }
}

/// The rows of `table` where one of `columns` mentions the subject, each with the indexes
/// of the columns that do. Every row is read and [`Subject::mentioned_in`] decides (whole
/// addresses, whole words, Unicode case, any white space): SQL's `LIKE` cannot.
async fn mentioning_rows(
    tx: &mut Transaction<'_, Any>,
    table: &str,
    columns: &[&str],
    subject: &Subject,
) -> Result<Vec<(String, Vec<usize>)>> {
    let rid = row_id(tx);
    let values = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("CAST({} AS TEXT) AS c{i}", ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {rid} AS rid, {values} FROM {}", ident(table));
    // Identifiers from the registry, quoted.
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut **tx);
    let mut out = Vec::new();
    while let Some(row) = rows
        .try_next()
        .await
        .with_context(|| format!("reading {table}"))?
    {
        let mut matched = Vec::new();
        for i in 0..columns.len() {
            let value: Option<String> = row.try_get(format!("c{i}").as_str())?;
            if value.is_some_and(|v| subject.mentioned_in(&v)) {
                matched.push(i);
            }
        }
        if !matched.is_empty() {
            out.push((row.try_get::<String, _>("rid")?, matched));
        }
    }
    Ok(out)
}

/// Blank the detail of the audit entries about `subjects` (`message:ID`, `action:ID`) or
/// mentioning the subject (or count them, with `dry_run`).
async fn tombstone(
    tx: &mut Transaction<'_, Any>,
    subjects: &[String],
    subject: &Subject,
    now: i64,
    dry_run: bool,
) -> Result<i64> {
    // The entries about the erased messages and actions, and those whose detail mentions
    // the subject (every detail is read; `Subject::mentioned_in` decides): each once.
    let mut seqs = std::collections::BTreeSet::new();
    {
        let mut details = sqlx::query(
            "SELECT seq, detail FROM audit_log WHERE erased_at IS NULL AND detail IS NOT NULL",
        )
        .fetch(&mut **tx);
        while let Some(row) = details.try_next().await.context("reading the audit log")? {
            let detail: Option<String> = row.try_get("detail")?;
            if detail.is_some_and(|d| subject.mentioned_in(&d)) {
                seqs.insert(row.try_get::<i64, _>("seq")?);
            }
        }
    }
    for chunk in subjects.chunks(500) {
        let sql = format!(
            "SELECT seq FROM audit_log WHERE erased_at IS NULL AND subject IN ({})",
            placeholders(1, chunk.len())
        );
        // Only placeholders are formatted in; values are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in chunk {
            q = q.bind(s.clone());
        }
        for row in q.fetch_all(&mut **tx).await? {
            seqs.insert(row.try_get::<i64, _>("seq")?);
        }
    }
    if dry_run {
        return Ok(seqs.len() as i64);
    }
    let seqs: Vec<i64> = seqs.into_iter().collect();
    let mut total = 0;
    for chunk in seqs.chunks(500) {
        let sql = format!(
            "UPDATE audit_log SET detail = NULL, erased_at = {now} WHERE erased_at IS NULL AND seq IN ({})",
            placeholders(1, chunk.len())
        );
        // Only placeholders and a number are formatted in; values are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for seq in chunk {
            q = q.bind(*seq);
        }
        total += q.execute(&mut **tx).await?.rows_affected() as i64;
    }
    Ok(total)
}
