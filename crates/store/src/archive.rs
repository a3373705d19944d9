//! The archive's documents and passages (`verre archive`, crates/archive): each document
//! once by content hash, its passages with their page and embedding.
//!
//! A passage's text and vector and a document's name are personal data like a message's
//! text: sealed at rest under the data keys ([`crate::crypto`], covered by `rekey`); a
//! document is erased whole when its name or any of its passages mentions the subject
//! ([`erase_in`], opened and matched in Rust since a sealed column cannot be searched in
//! SQL), its content hash then forgotten so the same file is not added again; retention
//! deletes documents added more than `archive_days` ago ([`purge_in`]). Adding and removing
//! are audited (`archive.add`, `archive.remove`).

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;
use sqlx::{Any, Row, Transaction};

use crate::crypto::{self, Column, Keyring};
use crate::erase::Subject;
use crate::{AuditEvent, Store, audit, now_ms};

/// A document about to be added.
#[derive(Debug, Clone)]
pub struct NewDocument {
    /// Hex SHA-256 of the file's bytes ([`crate::content_hash`]).
    pub content_hash: String,
    /// The file name it was added from.
    pub name: String,
    /// `pdf`, `eml`, `text` or `markdown`.
    pub kind: String,
    pub pages: i64,
    /// The embedding model its vectors come from.
    pub model: String,
    pub dimensions: i64,
}

/// A passage about to be added: its page (from 1) and unit-length embedding.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub page: i64,
    pub text: String,
    pub vector: Vec<f32>,
}

/// One archived document.
#[derive(Debug, Clone, Serialize)]
pub struct ArchivedDocument {
    pub id: i64,
    pub content_hash: String,
    pub name: String,
    pub kind: String,
    pub pages: i64,
    pub chunks: i64,
    pub model: String,
    pub added_at: i64,
}

/// One archived passage, opened.
#[derive(Debug, Clone)]
pub struct ArchivedChunk {
    pub id: i64,
    pub document_id: i64,
    pub idx: i64,
    pub page: i64,
    pub text: String,
    pub vector: Vec<f32>,
}

/// What [`Store::archive_add`] did with a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveAdded {
    Added(i64),
    /// The same bytes are archived already, under this id.
    Exists(i64),
    /// The same bytes were erased before: not stored again.
    Forgotten,
}

/// Vectors are stored as little-endian f32s.
pub(crate) fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn bytes_vector(b: &[u8]) -> Result<Vec<f32>> {
    anyhow::ensure!(
        b.len().is_multiple_of(4),
        "a stored vector of {} bytes is not f32s",
        b.len()
    );
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

impl Store {
    /// Add a document and its passages in one transaction, with an `archive.add` audit
    /// entry by `actor`. The same bytes twice add nothing; bytes erased before are refused.
    pub async fn archive_add(
        &self,
        doc: &NewDocument,
        chunks: &[NewChunk],
        actor: &str,
    ) -> Result<ArchiveAdded> {
        self.check_writable()?;
        if self.is_forgotten(&doc.content_hash).await? {
            return Ok(ArchiveAdded::Forgotten);
        }
        let keys = self.keys();
        let key_id = crypto::current_key_id(keys);
        let (name, _) = crypto::seal_text(keys, Column::ArchiveName, &doc.name)?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO archive_documents (content_hash, name, kind, pages, model, dimensions, added_at, key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (content_hash) DO NOTHING RETURNING id",
        )
        .bind(&doc.content_hash)
        .bind(name)
        .bind(&doc.kind)
        .bind(doc.pages)
        .bind(&doc.model)
        .bind(doc.dimensions)
        .bind(now_ms())
        .bind(key_id.clone())
        .fetch_optional(&mut *tx)
        .await
        .context("storing an archived document")?;
        let Some(row) = inserted else {
            tx.rollback().await?;
            let id: i64 = sqlx::query("SELECT id FROM archive_documents WHERE content_hash = $1")
                .bind(&doc.content_hash)
                .fetch_one(&self.pool)
                .await?
                .try_get("id")?;
            return Ok(ArchiveAdded::Exists(id));
        };
        let id: i64 = row.try_get("id")?;
        for (idx, chunk) in chunks.iter().enumerate() {
            let (text, _) = crypto::seal_text(keys, Column::ArchiveText, &chunk.text)?;
            let vector = match keys {
                Some(k) => k.seal(Column::ArchiveVector, &vector_bytes(&chunk.vector))?,
                None => vector_bytes(&chunk.vector),
            };
            sqlx::query(
                "INSERT INTO archive_chunks (document_id, idx, page, text, vector, key_id)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(idx as i64)
            .bind(chunk.page)
            .bind(text)
            .bind(vector)
            .bind(key_id.clone())
            .execute(&mut *tx)
            .await
            .with_context(|| format!("storing passage {idx} of an archived document"))?;
        }
        audit::append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor,
                action: "archive.add",
                subject: &format!("archive:{id}"),
                detail: json!({"kind": doc.kind, "pages": doc.pages, "chunks": chunks.len(), "model": doc.model}),
            },
        )
        .await?;
        tx.commit()
            .await
            .context("committing an archived document")?;
        Ok(ArchiveAdded::Added(id))
    }

    /// Every archived document, oldest first, names opened.
    pub async fn archive_documents(&self) -> Result<Vec<ArchivedDocument>> {
        let rows = sqlx::query(
            "SELECT d.id, d.content_hash, d.name, d.kind, d.pages, d.model, d.added_at, d.key_id,
                    (SELECT COUNT(*) FROM archive_chunks c WHERE c.document_id = d.id) AS chunks
             FROM archive_documents d ORDER BY d.id",
        )
        .fetch_all(&self.pool)
        .await
        .context("reading the archived documents")?;
        rows.iter()
            .map(|r| {
                let key_id: Option<String> = r.try_get("key_id")?;
                Ok(ArchivedDocument {
                    id: r.try_get("id")?,
                    content_hash: r.try_get("content_hash")?,
                    name: crypto::open_text(
                        self.keys(),
                        key_id.as_deref(),
                        Column::ArchiveName,
                        r.try_get("name")?,
                    )?
                    .unwrap_or_default(),
                    kind: r.try_get("kind")?,
                    pages: r.try_get("pages")?,
                    chunks: r.try_get("chunks")?,
                    model: r.try_get("model")?,
                    added_at: r.try_get("added_at")?,
                })
            })
            .collect()
    }

    /// Every archived passage, opened, in document then passage order: what the
    /// in-process index is built from.
    pub async fn archive_chunks(&self) -> Result<Vec<ArchivedChunk>> {
        let rows = sqlx::query(
            "SELECT id, document_id, idx, page, text, vector, key_id FROM archive_chunks
             ORDER BY document_id, idx",
        )
        .fetch_all(&self.pool)
        .await
        .context("reading the archived passages")?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                let key_id: Option<String> = r.try_get("key_id")?;
                let key_id = key_id.as_deref();
                let text =
                    crypto::open_text(self.keys(), key_id, Column::ArchiveText, r.try_get("text")?)
                        .with_context(|| format!("opening archived passage {id}"))?
                        .unwrap_or_default();
                let vector = crypto::open_bytes(
                    self.keys(),
                    key_id,
                    Column::ArchiveVector,
                    r.try_get("vector")?,
                )
                .with_context(|| format!("opening archived passage {id}'s vector"))?;
                Ok(ArchivedChunk {
                    id,
                    document_id: r.try_get("document_id")?,
                    idx: r.try_get("idx")?,
                    page: r.try_get("page")?,
                    text,
                    vector: bytes_vector(&vector)?,
                })
            })
            .collect()
    }

    /// (passages, highest passage id): changes whenever a document is added or removed,
    /// so an index built over the passages knows when it is stale.
    pub async fn archive_fingerprint(&self) -> Result<(i64, i64)> {
        let r =
            sqlx::query("SELECT COUNT(*) AS n, COALESCE(MAX(id), 0) AS last FROM archive_chunks")
                .fetch_one(&self.pool)
                .await
                .context("counting the archived passages")?;
        Ok((r.try_get("n")?, r.try_get("last")?))
    }

    /// Remove an archived document and its passages (`archive.remove` audited); false if
    /// there was none.
    pub async fn archive_remove(&self, id: i64, actor: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let n = delete_documents(&mut tx, &[id]).await?;
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        audit::append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor,
                action: "archive.remove",
                subject: &format!("archive:{id}"),
                detail: json!({}),
            },
        )
        .await?;
        tx.commit().await?;
        self.flush_deleted().await?;
        Ok(true)
    }
}

/// Delete documents and their passages; how many documents went.
async fn delete_documents(tx: &mut Transaction<'_, Any>, ids: &[i64]) -> Result<i64> {
    let mut n = 0;
    for id in ids {
        sqlx::query("DELETE FROM archive_chunks WHERE document_id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await
            .context("deleting archived passages")?;
        n += sqlx::query("DELETE FROM archive_documents WHERE id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await
            .context("deleting an archived document")?
            .rows_affected() as i64;
    }
    Ok(n)
}

/// Delete (or count, with `dry_run`) the archived documents whose name or any passage
/// mentions the subject, with all their passages and vectors; their content hashes are
/// returned for the caller to forget. A passage that cannot be opened (its key is gone)
/// fails the erasure rather than stay unchecked. Returns (documents, passages, hashes).
pub(crate) async fn erase_in(
    tx: &mut Transaction<'_, Any>,
    keys: Option<&Keyring>,
    subject: &Subject,
    dry_run: bool,
) -> Result<(i64, i64, Vec<String>)> {
    let mut hit: Vec<i64> = Vec::new();
    for r in sqlx::query("SELECT id, name, key_id FROM archive_documents ORDER BY id")
        .fetch_all(&mut **tx)
        .await
        .context("reading the archived documents")?
    {
        let id: i64 = r.try_get("id")?;
        let key_id: Option<String> = r.try_get("key_id")?;
        let name = crypto::open_text(
            keys,
            key_id.as_deref(),
            Column::ArchiveName,
            r.try_get("name")?,
        )
        .with_context(|| format!("opening archived document {id} to check it for the subject"))?
        .unwrap_or_default();
        if subject.matches(&name) {
            hit.push(id);
        }
    }
    for r in sqlx::query("SELECT id, document_id, text, key_id FROM archive_chunks ORDER BY id")
        .fetch_all(&mut **tx)
        .await
        .context("reading the archived passages")?
    {
        let document: i64 = r.try_get("document_id")?;
        if hit.contains(&document) {
            continue;
        }
        let key_id: Option<String> = r.try_get("key_id")?;
        let text = crypto::open_text(
            keys,
            key_id.as_deref(),
            Column::ArchiveText,
            r.try_get("text")?,
        )
        .with_context(|| {
            format!(
                "opening archived passage {} to check it for the subject",
                r.try_get::<i64, _>("id").unwrap_or(0)
            )
        })?
        .unwrap_or_default();
        if subject.matches(&text) {
            hit.push(document);
        }
    }
    hit.sort_unstable();
    hit.dedup();
    let mut chunks = 0;
    let mut hashes = Vec::with_capacity(hit.len());
    for id in &hit {
        chunks += sqlx::query("SELECT COUNT(*) AS n FROM archive_chunks WHERE document_id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?
            .try_get::<i64, _>("n")?;
        hashes.push(
            sqlx::query("SELECT content_hash FROM archive_documents WHERE id = $1")
                .bind(id)
                .fetch_one(&mut **tx)
                .await?
                .try_get("content_hash")?,
        );
    }
    if !dry_run {
        delete_documents(tx, &hit).await?;
    }
    Ok((hit.len() as i64, chunks, hashes))
}

/// Delete (or count, with `dry_run`) the archived documents added before `cutoff` (Unix
/// ms), with their passages; returns (documents, passages).
pub(crate) async fn purge_in(
    tx: &mut Transaction<'_, Any>,
    cutoff: i64,
    dry_run: bool,
) -> Result<(i64, i64)> {
    let ids: Vec<i64> = sqlx::query("SELECT id FROM archive_documents WHERE added_at < $1")
        .bind(cutoff)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    let mut chunks = 0;
    for id in &ids {
        chunks += sqlx::query("SELECT COUNT(*) AS n FROM archive_chunks WHERE document_id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?
            .try_get::<i64, _>("n")?;
    }
    if !dry_run {
        delete_documents(tx, &ids).await?;
    }
    Ok((ids.len() as i64, chunks))
}
