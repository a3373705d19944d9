//! Encryption at rest: AES-256-GCM over the columns that hold message content — a
//! message's raw bytes, a part's text and pages, a stage's output, a quarantine reason and a
//! job's last error (both may quote the message or the model's answer).
//!
//! The data keys come from the environment: `VERRE_DATA_KEY` (keys inline),
//! `VERRE_DATA_KEY_FILE` (a file of keys, one a line, `#` comments), or a systemd
//! credential named `verre-data-keys` (`LoadCredential=`, found in
//! `$CREDENTIALS_DIRECTORY`), so the keys need not sit beside the database. A key is 32 bytes
//! written as 64 hex digits. The first key is the current one, used for every new value;
//! the others stay readable, so a rotation can re-encrypt row by row ([`crate::Store::rekey`])
//! while the old key still opens what is not done yet.
//!
//! Each encrypted row stores the id of its key (`key_id`: a hash of the key, never the
//! key). A value is `nonce (12 bytes) || ciphertext || tag (16 bytes)`, with a fresh random
//! nonce each time; text columns hold it in base64. The associated data names the column,
//! so a value copied into another column does not open.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use sqlx::Row;

/// The variable holding data keys inline (hex, separated by commas or white space).
pub const KEY_ENV: &str = "VERRE_DATA_KEY";
/// The variable naming a file of data keys.
pub const KEY_FILE_ENV: &str = "VERRE_DATA_KEY_FILE";

/// The systemd credential holding a file of data keys (`LoadCredential=verre-data-keys:PATH`).
pub const KEY_CREDENTIAL: &str = "verre-data-keys";

/// The data key file systemd passed as the credential [`KEY_CREDENTIAL`], if any.
pub fn credential_key_file() -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty())?;
    let path = Path::new(&dir).join(KEY_CREDENTIAL);
    path.is_file().then_some(path)
}

const NONCE_LEN: usize = 12;

/// Which column a sealed value belongs to: its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    MessageRaw,
    PartText,
    PartPages,
    StageOutput,
    /// A kept response's conversation (`responses.input`).
    ResponseInput,
    /// A kept response's object (`responses.body`).
    ResponseBody,
    QuarantineReason,
    JobError,
    /// A review draft (`drafts.body`).
    DraftBody,
    /// A staged action's payload (`actions.payload`).
    ActionPayload,
    /// A rejection reason (`decisions.reason`).
    DecisionReason,
    /// What a delivery sends (`outbox.payload`).
    OutboxPayload,
    /// A delivery's last error (`outbox.last_error`).
    OutboxError,
    /// A delivery attempt's error (`outbox_attempts.error`).
    AttemptError,
    /// An extraction's evidence (`evidence.body`).
    EvidenceBody,
    /// A reviewer's correction of a field (`corrections.body`).
    CorrectionBody,
    /// A corrected document's embedding (`correction_embeddings.vector`).
    CorrectionEmbedding,
    /// The file name an archived document was added from (`archive_documents.name`).
    ArchiveName,
    /// An archived passage (`archive_chunks.text`).
    ArchiveText,
    /// An archived passage's embedding (`archive_chunks.vector`).
    ArchiveVector,
}

impl Column {
    fn aad(self) -> &'static [u8] {
        match self {
            Column::MessageRaw => b"verre:messages.raw",
            Column::PartText => b"verre:parts.text",
            Column::PartPages => b"verre:parts.pages",
            Column::StageOutput => b"verre:stage_results.output",
            Column::ResponseInput => b"verre:responses.input",
            Column::ResponseBody => b"verre:responses.body",
            Column::QuarantineReason => b"verre:quarantine.reason",
            Column::JobError => b"verre:jobs.last_error",
            Column::DraftBody => b"verre:drafts.body",
            Column::ActionPayload => b"verre:actions.payload",
            Column::DecisionReason => b"verre:decisions.reason",
            Column::OutboxPayload => b"verre:outbox.payload",
            Column::OutboxError => b"verre:outbox.last_error",
            Column::AttemptError => b"verre:outbox_attempts.error",
            Column::EvidenceBody => b"verre:evidence.body",
            Column::CorrectionBody => b"verre:corrections.body",
            Column::CorrectionEmbedding => b"verre:correction_embeddings.vector",
            Column::ArchiveName => b"verre:archive_documents.name",
            Column::ArchiveText => b"verre:archive_chunks.text",
            Column::ArchiveVector => b"verre:archive_chunks.vector",
        }
    }
}

struct DataKey {
    id: String,
    cipher: Aes256Gcm,
}

/// The data keys: the current one first, then older ones still readable.
pub struct Keyring {
    keys: Vec<DataKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

/// The id stored with each row: the first 16 hex digits of a hash of the key.
pub fn key_id(key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"verre data key id\0");
    h.update(key);
    hex::encode(&h.finalize()[..8])
}

/// A new random key, as the 64 hex digits a key file or `VERRE_DATA_KEY` holds.
pub fn generate_key() -> Result<String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("reading random bytes: {e}"))?;
    Ok(hex::encode(key))
}

impl Keyring {
    /// Keys from text: hex keys separated by commas, white space or lines; `#` starts a
    /// comment. `origin` names the text in errors. Empty text is an error.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut keys: Vec<DataKey> = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            for word in line.split(|c: char| c == ',' || c.is_whitespace()) {
                if word.is_empty() {
                    continue;
                }
                let bytes = hex::decode(word).ok().filter(|b| b.len() == 32);
                let Some(bytes) = bytes else {
                    bail!(
                        "{origin}: a data key must be 64 hex digits (32 bytes); `verre gdpr keygen` makes one"
                    );
                };
                let key: [u8; 32] = bytes.try_into().expect("checked length");
                let id = key_id(&key);
                if keys.iter().any(|k| k.id == id) {
                    continue;
                }
                keys.push(DataKey {
                    id,
                    cipher: Aes256Gcm::new(&key.into()),
                });
            }
        }
        if keys.is_empty() {
            bail!("{origin} holds no data key");
        }
        Ok(Self { keys })
    }

    /// Read a key file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the data key file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The keys the environment names (`VERRE_DATA_KEY`, else `VERRE_DATA_KEY_FILE`, else
    /// the systemd credential [`KEY_CREDENTIAL`]), or None when there are none: data is
    /// then stored in clear.
    pub fn from_env() -> Result<Option<Self>> {
        if let Ok(text) = std::env::var(KEY_ENV)
            && !text.trim().is_empty()
        {
            return Self::parse(&text, KEY_ENV).map(Some);
        }
        if let Some(path) = std::env::var_os(KEY_FILE_ENV).filter(|p| !p.is_empty()) {
            return Self::from_file(Path::new(&path))
                .with_context(|| format!("{KEY_FILE_ENV} names it"))
                .map(Some);
        }
        if let Some(path) = credential_key_file() {
            return Self::from_file(&path)
                .with_context(|| format!("the systemd credential {KEY_CREDENTIAL}"))
                .map(Some);
        }
        Ok(None)
    }

    /// The id of the key new values are sealed with.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Encrypt with the current key: `nonce || ciphertext || tag`.
    pub fn seal(&self, column: Column, plain: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("reading random bytes: {e}"))?;
        let ct = self.keys[0]
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: column.aad(),
                },
            )
            .map_err(|_| anyhow::anyhow!("encrypting {column:?}"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypt a value sealed with key `id`.
    pub fn open(&self, id: &str, column: Column, sealed: &[u8]) -> Result<Vec<u8>> {
        let Some(key) = self.keys.iter().find(|k| k.id == id) else {
            bail!(
                "the data was encrypted with key {id}, which is not among the configured keys ({}): add it to {KEY_ENV} or {KEY_FILE_ENV}",
                self.ids().join(", ")
            );
        };
        if sealed.len() < NONCE_LEN + 16 {
            bail!("an encrypted {column:?} value is truncated");
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        key.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: column.aad(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "an encrypted {column:?} value does not open with key {id}: altered or corrupted"
                )
            })
    }

    /// Seal text for a text column: base64 of the sealed bytes.
    pub fn seal_text(&self, column: Column, plain: &str) -> Result<String> {
        Ok(base64::engine::general_purpose::STANDARD.encode(self.seal(column, plain.as_bytes())?))
    }

    pub fn open_text(&self, id: &str, column: Column, sealed: &str) -> Result<String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .with_context(|| format!("an encrypted {column:?} value is not base64"))?;
        String::from_utf8(self.open(id, column, &bytes)?)
            .with_context(|| format!("a decrypted {column:?} value is not UTF-8"))
    }
}

/// Decrypt with an optional keyring: a row without a key id is in clear.
pub(crate) fn open_bytes(
    keys: Option<&Keyring>,
    key_id: Option<&str>,
    column: Column,
    value: Vec<u8>,
) -> Result<Vec<u8>> {
    match (key_id, keys) {
        (None, _) => Ok(value),
        (Some(id), Some(k)) => k.open(id, column, &value),
        (Some(id), None) => Err(no_key(id)),
    }
}

pub(crate) fn open_text(
    keys: Option<&Keyring>,
    key_id: Option<&str>,
    column: Column,
    value: Option<String>,
) -> Result<Option<String>> {
    match (value, key_id, keys) {
        (None, _, _) => Ok(None),
        (Some(v), None, _) => Ok(Some(v)),
        (Some(v), Some(id), Some(k)) => k.open_text(id, column, &v).map(Some),
        (Some(_), Some(id), None) => Err(no_key(id)),
    }
}

/// Seal text with the current key when a keyring is configured: the value to store and its
/// key id (NULL: in clear).
pub(crate) fn seal_text(
    keys: Option<&Keyring>,
    column: Column,
    plain: &str,
) -> Result<(String, Option<String>)> {
    match keys {
        Some(k) => Ok((
            k.seal_text(column, plain)?,
            Some(k.current_id().to_string()),
        )),
        None => Ok((plain.to_string(), None)),
    }
}

/// [`seal_text`] for an optional value: a missing value stays NULL.
pub(crate) fn seal_opt(
    keys: Option<&Keyring>,
    column: Column,
    plain: Option<&str>,
) -> Result<Option<String>> {
    plain
        .map(|p| seal_text(keys, column, p).map(|(v, _)| v))
        .transpose()
}

/// The key id new values are sealed with (None: stored in clear).
pub(crate) fn current_key_id(keys: Option<&Keyring>) -> Option<String> {
    keys.map(|k| k.current_id().to_string())
}

fn no_key(id: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "this data is encrypted (key {id}) and no data key is configured: set {KEY_ENV} or {KEY_FILE_ENV}"
    )
}

/// What [`Store::rekey`] re-encrypted.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RekeyReport {
    /// The key everything is now encrypted with.
    pub key_id: String,
    pub messages: i64,
    pub parts: i64,
    pub stage_results: i64,
    /// Kept `/v1/responses` responses.
    pub responses: i64,
    pub quarantine: i64,
    pub jobs: i64,
    /// Review drafts.
    pub drafts: i64,
    /// Staged actions.
    pub actions: i64,
    /// Decisions (a rejection's reason).
    pub decisions: i64,
    /// Deliveries (payload and last error).
    pub outbox: i64,
    /// Delivery attempts (their errors).
    pub outbox_attempts: i64,
    /// Extraction evidence.
    pub evidence: i64,
    /// Reviewers' corrections of fields.
    pub corrections: i64,
    /// Corrected documents' embeddings.
    pub correction_embeddings: i64,
    /// Archived documents (their names).
    pub archive_documents: i64,
    /// Archived passages (text and vector).
    pub archive_chunks: i64,
}

/// How a row of an encrypted table is found again.
enum RowKey {
    Integer,
    Text,
}

/// An encrypted column: sealed bytes (BLOB) or sealed text (base64 in TEXT).
struct EncryptedColumn {
    name: &'static str,
    column: Column,
    bytes: bool,
}

/// A table whose columns are sealed under the row's `key_id`.
struct EncryptedTable {
    name: &'static str,
    key: &'static [(&'static str, RowKey)],
    columns: &'static [EncryptedColumn],
    /// A further condition on the rows to re-encrypt.
    only: &'static str,
    /// Rows per transaction.
    batch: u32,
    /// Where [`RekeyReport`] counts the table's rows.
    count: fn(&mut RekeyReport) -> &mut i64,
}

/// Every encrypted table, in the order `rekey` walks them.
const ENCRYPTED: &[EncryptedTable] = &[
    EncryptedTable {
        name: "messages",
        key: &[("id", RowKey::Integer)],
        columns: &[EncryptedColumn {
            name: "raw",
            column: Column::MessageRaw,
            bytes: true,
        }],
        // A purged mail has nothing left to encrypt.
        only: " AND raw_purged_at IS NULL",
        batch: 100,
        count: |r| &mut r.messages,
    },
    EncryptedTable {
        name: "parts",
        key: &[("id", RowKey::Integer)],
        columns: &[
            EncryptedColumn {
                name: "text",
                column: Column::PartText,
                bytes: false,
            },
            EncryptedColumn {
                name: "pages",
                column: Column::PartPages,
                bytes: false,
            },
        ],
        only: "",
        batch: 200,
        count: |r| &mut r.parts,
    },
    EncryptedTable {
        name: "stage_results",
        key: &[("message_id", RowKey::Integer), ("stage", RowKey::Text)],
        columns: &[EncryptedColumn {
            name: "output",
            column: Column::StageOutput,
            bytes: false,
        }],
        only: "",
        batch: 200,
        count: |r| &mut r.stage_results,
    },
    EncryptedTable {
        name: "responses",
        key: &[("id", RowKey::Text)],
        columns: &[
            EncryptedColumn {
                name: "input",
                column: Column::ResponseInput,
                bytes: false,
            },
            EncryptedColumn {
                name: "body",
                column: Column::ResponseBody,
                bytes: false,
            },
        ],
        only: "",
        batch: 200,
        count: |r| &mut r.responses,
    },
    EncryptedTable {
        name: "quarantine",
        key: &[("message_id", RowKey::Integer)],
        columns: &[EncryptedColumn {
            name: "reason",
            column: Column::QuarantineReason,
            bytes: false,
        }],
        only: "",
        batch: 200,
        count: |r| &mut r.quarantine,
    },
    EncryptedTable {
        name: "jobs",
        key: &[("id", RowKey::Integer)],
        columns: &[EncryptedColumn {
            name: "last_error",
            column: Column::JobError,
            bytes: false,
        }],
        // A job that never failed has nothing to encrypt.
        only: " AND last_error IS NOT NULL",
        batch: 200,
        count: |r| &mut r.jobs,
    },
    EncryptedTable {
        name: "drafts",
        key: &[
            ("message_id", RowKey::Integer),
            ("version", RowKey::Integer),
        ],
        columns: &[EncryptedColumn {
            name: "body",
            column: Column::DraftBody,
            bytes: false,
        }],
        only: "",
        batch: 200,
        count: |r| &mut r.drafts,
    },
    EncryptedTable {
        name: "actions",
        key: &[("id", RowKey::Integer)],
        columns: &[EncryptedColumn {
            name: "payload",
            column: Column::ActionPayload,
            bytes: false,
        }],
        only: "",
        batch: 200,
        count: |r| &mut r.actions,
    },
    EncryptedTable {
        name: "decisions",
        key: &[("message_id", RowKey::Integer)],
        columns: &[EncryptedColumn {
            name: "reason",
            column: Column::DecisionReason,
            bytes: false,
        }],
        // An approval has no reason to encrypt.
        only: " AND reason IS NOT NULL",
        batch: 200,
        count: |r| &mut r.decisions,
    },
    EncryptedTable {
        name: "outbox",
        key: &[("id", RowKey::Integer)],
        columns: &[
            EncryptedColumn {
                name: "payload",
                column: Column::OutboxPayload,
                bytes: false,
            },
            EncryptedColumn {
                name: "last_error",
                column: Column::OutboxError,
                bytes: false,
            },
        ],
        only: "",
        batch: 200,
        count: |r| &mut r.outbox,
    },
    EncryptedTable {
        name: "outbox_attempts",
        key: &[("id", RowKey::Integer)],
        columns: &[EncryptedColumn {
            name: "error",
            column: Column::AttemptError,
            bytes: false,
        }],
        // An attempt that succeeded has no error to encrypt.
        only: " AND error IS NOT NULL",
        batch: 200,
        count: |r| &mut r.outbox_attempts,
    },
    EncryptedTable {
        name: "evidence",
        key: &[("message_id", RowKey::Integer)],
        columns: &[EncryptedColumn {
            name: "body",
            column: Column::EvidenceBody,
            bytes: false,
        }],
        only: "",
        batch: 200,
        count: |r| &mut r.evidence,
    },
    EncryptedTable {
        name: "corrections",
        key: &[("id", RowKey::Integer)],
        columns: &[EncryptedColumn {
            name: "body",
            column: Column::CorrectionBody,
            bytes: false,
        }],
        only: "",
        batch: 200,
        count: |r| &mut r.corrections,
    },
    EncryptedTable {
        name: "correction_embeddings",
        key: &[("message_id", RowKey::Integer), ("model", RowKey::Text)],
        columns: &[EncryptedColumn {
            name: "vector",
            column: Column::CorrectionEmbedding,
            bytes: true,
        }],
        only: "",
        batch: 200,
        count: |r| &mut r.correction_embeddings,
    },
    EncryptedTable {
        name: "archive_documents",
        key: &[("id", RowKey::Integer)],
        columns: &[EncryptedColumn {
            name: "name",
            column: Column::ArchiveName,
            bytes: false,
        }],
        only: "",
        batch: 200,
        count: |r| &mut r.archive_documents,
    },
    EncryptedTable {
        name: "archive_chunks",
        key: &[("id", RowKey::Integer)],
        columns: &[
            EncryptedColumn {
                name: "text",
                column: Column::ArchiveText,
                bytes: false,
            },
            EncryptedColumn {
                name: "vector",
                column: Column::ArchiveVector,
                bytes: true,
            },
        ],
        only: "",
        batch: 200,
        count: |r| &mut r.archive_chunks,
    },
];

impl crate::Store {
    /// Encrypt with the current key every row stored in clear or under another key, a
    /// batch per transaction: interrupted, it can simply run again. Old keys must stay
    /// configured until it has finished.
    pub async fn rekey(&self) -> Result<RekeyReport> {
        let Some(keys) = self.keys() else {
            bail!(
                "no data key is configured: set {KEY_ENV} or {KEY_FILE_ENV} (`verre gdpr keygen` makes a key)"
            );
        };
        let current = keys.current_id().to_string();
        let mut report = RekeyReport {
            key_id: current.clone(),
            ..Default::default()
        };
        for table in ENCRYPTED {
            *(table.count)(&mut report) = self.rekey_table(keys, &current, table).await?;
        }
        self.flush_deleted().await?;
        Ok(report)
    }

    /// Re-encrypt one table's rows that are in clear or under another key than `current`,
    /// a batch per transaction; the number of rows re-encrypted.
    async fn rekey_table(
        &self,
        keys: &Keyring,
        current: &str,
        table: &EncryptedTable,
    ) -> Result<i64> {
        let key_names: Vec<&str> = table.key.iter().map(|(name, _)| *name).collect();
        let columns: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
        let select = format!(
            "SELECT {}, {}, key_id FROM {} WHERE (key_id IS NULL OR key_id <> $1){} ORDER BY {} LIMIT {}",
            key_names.join(", "),
            columns.join(", "),
            table.name,
            table.only,
            key_names.join(", "),
            table.batch
        );
        let n = columns.len();
        let update = format!(
            "UPDATE {} SET {}, key_id = ${} WHERE {}",
            table.name,
            (1..=n)
                .map(|i| format!("{} = ${i}", columns[i - 1]))
                .collect::<Vec<_>>()
                .join(", "),
            n + 1,
            (1..=key_names.len())
                .map(|i| format!("{} = ${}", key_names[i - 1], n + 1 + i))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        let mut done = 0;
        loop {
            let rows = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
                .bind(current)
                .fetch_all(self.pool())
                .await?;
            if rows.is_empty() {
                return Ok(done);
            }
            let mut tx = self.pool().begin().await?;
            for r in &rows {
                let key_id: Option<String> = r.try_get("key_id")?;
                let key_id = key_id.as_deref();
                let mut query = sqlx::query(sqlx::AssertSqlSafe(update.clone()));
                let mut row_key = Vec::new();
                for (name, kind) in table.key {
                    row_key.push(match kind {
                        RowKey::Integer => r.try_get::<i64, _>(*name)?.to_string(),
                        RowKey::Text => r.try_get::<String, _>(*name)?,
                    });
                }
                let what = || format!("re-encrypting {} {}", table.name, row_key.join(" "));
                for c in table.columns {
                    query = if c.bytes {
                        let value: Option<Vec<u8>> = r.try_get(c.name)?;
                        let plain = value
                            .map(|v| open_bytes(Some(keys), key_id, c.column, v))
                            .transpose()
                            .with_context(what)?;
                        query.bind(plain.map(|p| keys.seal(c.column, &p)).transpose()?)
                    } else {
                        let plain = open_text(Some(keys), key_id, c.column, r.try_get(c.name)?)
                            .with_context(what)?;
                        query.bind(plain.map(|p| keys.seal_text(c.column, &p)).transpose()?)
                    };
                }
                query = query.bind(current);
                for ((_, kind), value) in table.key.iter().zip(&row_key) {
                    query = match kind {
                        RowKey::Integer => query.bind(value.parse::<i64>()?),
                        RowKey::Text => query.bind(value.clone()),
                    };
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            done += rows.len() as i64;
        }
    }

    /// The key ids rows are encrypted with now, and how many rows each.
    pub async fn key_usage(&self) -> Result<Vec<(Option<String>, i64)>> {
        let mut usage: Vec<(Option<String>, i64)> = Vec::new();
        for table in ENCRYPTED {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT key_id, COUNT(*) AS n FROM {} WHERE 1 = 1{} GROUP BY key_id",
                table.name, table.only
            )))
            .fetch_all(self.pool())
            .await?;
            for r in rows {
                let id: Option<String> = r.try_get("key_id")?;
                let n: i64 = r.try_get("n")?;
                match usage.iter_mut().find(|u| u.0 == id) {
                    Some(u) => u.1 += n,
                    None => usage.push((id, n)),
                }
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_refuses_the_wrong_key_or_column() {
        let k1 = generate_key().unwrap();
        let k2 = generate_key().unwrap();
        let old = Keyring::parse(&k1, "t").unwrap();
        let both = Keyring::parse(&format!("{k2}\n# old\n{k1}\n"), "t").unwrap();
        assert_eq!(both.ids().len(), 2);
        assert_ne!(both.current_id(), old.current_id());
        let sealed = old.seal(Column::MessageRaw, b"Bonjour Jean").unwrap();
        assert!(!sealed.windows(4).any(|w| w == b"Jean"));
        // An old key stays readable through the new keyring.
        let opened = both
            .open(old.current_id(), Column::MessageRaw, &sealed)
            .unwrap();
        assert_eq!(opened, b"Bonjour Jean");
        assert!(
            both.open(old.current_id(), Column::PartText, &sealed)
                .is_err()
        );
        let only_new = Keyring::parse(&k2, "t").unwrap();
        let e = only_new
            .open(old.current_id(), Column::MessageRaw, &sealed)
            .unwrap_err();
        assert!(e.to_string().contains(old.current_id()), "{e}");
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(
            old.open(old.current_id(), Column::MessageRaw, &tampered)
                .is_err()
        );
        // Two seals of one value differ (fresh nonces).
        assert_ne!(
            sealed,
            old.seal(Column::MessageRaw, b"Bonjour Jean").unwrap()
        );
    }

    #[test]
    fn bad_keys_are_refused_clearly() {
        assert!(Keyring::parse("", "VERRE_DATA_KEY").is_err());
        let e = Keyring::parse("abcd", "VERRE_DATA_KEY").unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
    }
}
