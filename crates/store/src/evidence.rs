//! What backs an extraction, and what reviewers corrected (issue 21): the evidence the
//! extract stage computed for each field (written with the stage's effects, see
//! [`crate::StageEffects::evidence`]), and each field a reviewer corrected, with the words
//! of the document the value stands in. Both are sealed at rest like the extraction and
//! deleted with their message (erasure, retention), as is each corrected document's
//! embedding, kept so that few-shot extraction embeds it once
//! ([`Store::correction_embeddings`]).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::archive::{bytes_vector, vector_bytes};
use crate::audit::{AuditEvent, append_in};
use crate::crypto::{self, Column};
use crate::{Store, now_ms};

/// A reviewer's correction of one field, as entered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldCorrection {
    /// The value the reviewer gave.
    pub value: Value,
    /// What the extraction said.
    pub previous: Value,
    /// The text of the document the value stands in (the span), when it was found.
    pub quote: Option<String>,
    /// The lines of the document around the span: what a later extraction is shown.
    pub context: Option<String>,
}

/// A stored correction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Correction {
    pub id: i64,
    pub message_id: i64,
    pub field: String,
    pub reviewer: String,
    pub created_at: i64,
    #[serde(flatten)]
    pub correction: FieldCorrection,
}

impl Store {
    /// The evidence the extract stage stored for a message, if any.
    pub async fn evidence(&self, message_id: i64) -> Result<Option<Value>> {
        let row = sqlx::query("SELECT body, key_id FROM evidence WHERE message_id = $1")
            .bind(message_id)
            .fetch_optional(self.pool())
            .await?;
        let Some(r) = row else { return Ok(None) };
        let key_id: Option<String> = r.try_get("key_id")?;
        let text = crypto::open_text(
            self.keys(),
            key_id.as_deref(),
            Column::EvidenceBody,
            r.try_get("body")?,
        )?
        .unwrap_or_default();
        Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!("the evidence of message {message_id} is not JSON")
        })?))
    }

    /// Record that `reviewer` corrected `field` of a message's extraction. Returns the
    /// correction's id.
    pub async fn correct_field(
        &self,
        message_id: i64,
        field: &str,
        correction: &FieldCorrection,
        reviewer: &str,
    ) -> Result<i64> {
        self.check_writable()?;
        anyhow::ensure!(!field.trim().is_empty(), "which field is corrected?");
        let (body, key_id) = crypto::seal_text(
            self.keys(),
            Column::CorrectionBody,
            &serde_json::to_string(correction)?,
        )?;
        let mut tx = self.pool().begin().await?;
        let exists = sqlx::query("SELECT id FROM messages WHERE id = $1")
            .bind(message_id)
            .fetch_optional(&mut *tx)
            .await?;
        anyhow::ensure!(exists.is_some(), "there is no message {message_id}");
        let id: i64 = sqlx::query(
            "INSERT INTO corrections (message_id, field, body, reviewer, created_at, key_id)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(message_id)
        .bind(field)
        .bind(body)
        .bind(reviewer)
        .bind(now_ms())
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        let actor = format!("user:{reviewer}");
        append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: &actor,
                action: "review.correct_field",
                subject: &format!("message:{message_id}"),
                // Which field, never its value: the value quotes the message.
                detail: json!({"field": field, "correction": id}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The corrections of one message, oldest first.
    pub async fn corrections(&self, message_id: i64) -> Result<Vec<Correction>> {
        let rows = sqlx::query(
            "SELECT id, message_id, field, body, reviewer, created_at, key_id FROM corrections
             WHERE message_id = $1 ORDER BY id",
        )
        .bind(message_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| self.correction_row(r)).collect()
    }

    /// The most recent corrections, newest first, at most `limit`: the examples later
    /// extractions may learn from.
    pub async fn recent_corrections(&self, limit: i64) -> Result<Vec<Correction>> {
        let rows = sqlx::query(
            "SELECT id, message_id, field, body, reviewer, created_at, key_id FROM corrections
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| self.correction_row(r)).collect()
    }

    /// The embeddings by `model` kept for these corrected documents (message id, the text
    /// that is embedded now), by message: only those of the same text (a document
    /// extracted again, or corrections whose words changed, must be embedded again).
    pub async fn correction_embeddings(
        &self,
        model: &str,
        documents: &[(i64, &str)],
    ) -> Result<BTreeMap<i64, Vec<f32>>> {
        let mut found = BTreeMap::new();
        let (Some(low), Some(high)) = (
            documents.iter().map(|d| d.0).min(),
            documents.iter().map(|d| d.0).max(),
        ) else {
            return Ok(found);
        };
        let wanted: BTreeMap<i64, [u8; 32]> = documents
            .iter()
            .map(|(id, text)| (*id, Sha256::digest(text.as_bytes()).into()))
            .collect();
        let rows = sqlx::query(
            "SELECT message_id, vector, key_id FROM correction_embeddings
             WHERE model = $1 AND message_id >= $2 AND message_id <= $3",
        )
        .bind(model)
        .bind(low)
        .bind(high)
        .fetch_all(self.pool())
        .await?;
        for r in rows {
            let id: i64 = r.try_get("message_id")?;
            let Some(digest) = wanted.get(&id) else {
                continue;
            };
            let key_id: Option<String> = r.try_get("key_id")?;
            let plain = crypto::open_bytes(
                self.keys(),
                key_id.as_deref(),
                Column::CorrectionEmbedding,
                r.try_get("vector")?,
            )
            .with_context(|| format!("opening the kept embedding of message {id}"))?;
            anyhow::ensure!(
                plain.len() >= 32,
                "the kept embedding of message {id} is {} bytes: no digest",
                plain.len()
            );
            if plain[..32] == digest[..] {
                found.insert(id, bytes_vector(&plain[32..])?);
            }
        }
        Ok(found)
    }

    /// Keep `vector`, `model`'s embedding of `text` (the corrected document of message
    /// `message_id`), in place of any kept before.
    pub async fn keep_correction_embedding(
        &self,
        message_id: i64,
        model: &str,
        text: &str,
        vector: &[f32],
    ) -> Result<()> {
        self.check_writable()?;
        let mut plain: Vec<u8> = Sha256::digest(text.as_bytes()).to_vec();
        plain.extend(vector_bytes(vector));
        let (sealed, key_id) = match self.keys() {
            Some(k) => (
                k.seal(Column::CorrectionEmbedding, &plain)?,
                Some(k.current_id().to_string()),
            ),
            None => (plain, None),
        };
        sqlx::query(
            "INSERT INTO correction_embeddings (message_id, model, vector, key_id, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (message_id, model) DO UPDATE
             SET vector = excluded.vector, key_id = excluded.key_id, created_at = excluded.created_at",
        )
        .bind(message_id)
        .bind(model)
        .bind(sealed)
        .bind(key_id)
        .bind(now_ms())
        .execute(self.pool())
        .await
        .with_context(|| format!("keeping the embedding of message {message_id}"))?;
        Ok(())
    }

    fn correction_row(&self, r: &sqlx::any::AnyRow) -> Result<Correction> {
        let key_id: Option<String> = r.try_get("key_id")?;
        let text = crypto::open_text(
            self.keys(),
            key_id.as_deref(),
            Column::CorrectionBody,
            r.try_get("body")?,
        )?
        .unwrap_or_default();
        Ok(Correction {
            id: r.try_get("id")?,
            message_id: r.try_get("message_id")?,
            field: r.try_get("field")?,
            reviewer: r.try_get("reviewer")?,
            created_at: r.try_get("created_at")?,
            correction: serde_json::from_str(&text).context("a correction is not JSON")?,
        })
    }
}
