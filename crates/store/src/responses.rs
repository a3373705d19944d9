//! Responses kept for the Responses API (`POST /v1/responses` with `store: true`): read
//! back by `GET /v1/responses/{id}`, continued by `previous_response_id`, deleted by
//! `DELETE`, updated while a background response runs.
//!
//! A response's conversation and answer are personal data like a message's text: sealed at
//! rest under the data keys ([`crate::crypto`], covered by `rekey`), deleted by erasure
//! when they mention the subject (opened and matched in [`erase_in`], since a sealed
//! column cannot be searched in SQL), and by retention past `extracted_days`
//! ([`purge_in`]). The server audits each create and delete.

use anyhow::{Context, Result};
use serde_json::Value;
use sqlx::{Any, Row, Transaction};

use crate::crypto::{self, Column, Keyring};
use crate::erase::Subject;
use crate::{Store, now_ms};

/// One kept response.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// `resp_...`
    pub id: String,
    /// The name of the API key that made it (`""` without keys).
    pub api_key: String,
    pub model: String,
    /// `queued`, `in_progress`, `completed`, `incomplete`, `failed` or `cancelled`.
    pub status: String,
    /// Unix ms.
    pub created_at: i64,
    /// The whole conversation it answered, as Responses input items (a JSON array).
    pub input: Value,
    /// The response object as the API returns it.
    pub body: Value,
}

impl Store {
    /// Keep `response`, or replace the one kept under its id (a background response as it
    /// runs and ends).
    pub async fn put_response(&self, response: &StoredResponse) -> Result<()> {
        self.check_writable()?;
        let keys = self.keys();
        let seal = |column: Column, value: &Value| -> Result<String> {
            let text = value.to_string();
            match keys {
                Some(k) => k.seal_text(column, &text),
                None => Ok(text),
            }
        };
        let input = seal(Column::ResponseInput, &response.input)?;
        let body = seal(Column::ResponseBody, &response.body)?;
        sqlx::query(
            "INSERT INTO responses (id, api_key, model, status, created_at, updated_at, input, body, key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET status = $4, updated_at = $6, input = $7, body = $8, key_id = $9",
        )
        .bind(&response.id)
        .bind(&response.api_key)
        .bind(&response.model)
        .bind(&response.status)
        .bind(response.created_at)
        .bind(now_ms())
        .bind(input)
        .bind(body)
        .bind(keys.map(|k| k.current_id().to_string()))
        .execute(&self.pool)
        .await
        .with_context(|| format!("keeping the response {}", response.id))?;
        Ok(())
    }

    /// The response kept under `id`, if any.
    pub async fn response(&self, id: &str) -> Result<Option<StoredResponse>> {
        let row = sqlx::query(
            "SELECT id, api_key, model, status, created_at, input, body, key_id FROM responses WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .with_context(|| format!("reading the response {id}"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let key_id: Option<String> = row.try_get("key_id")?;
        let open = |name: &str, column: Column| -> Result<Value> {
            let text = crypto::open_text(
                self.keys(),
                key_id.as_deref(),
                column,
                Some(row.try_get::<String, _>(name)?),
            )?
            .unwrap_or_default();
            serde_json::from_str(&text).with_context(|| format!("the response {id}'s {name}"))
        };
        Ok(Some(StoredResponse {
            id: row.try_get("id")?,
            api_key: row.try_get("api_key")?,
            model: row.try_get("model")?,
            status: row.try_get("status")?,
            created_at: row.try_get("created_at")?,
            input: open("input", Column::ResponseInput)?,
            body: open("body", Column::ResponseBody)?,
        }))
    }

    /// Note that the background response `id` is still being made (its heartbeat): its
    /// `updated_at` becomes `at_ms`. A response that already ended is left alone.
    pub async fn touch_response(&self, id: &str, at_ms: i64) -> Result<()> {
        self.check_writable()?;
        sqlx::query(
            "UPDATE responses SET updated_at = $2 WHERE id = $1 AND status IN ('queued', 'in_progress')",
        )
        .bind(id)
        .bind(at_ms)
        .execute(&self.pool)
        .await
        .with_context(|| format!("noting the response {id} as running"))?;
        Ok(())
    }

    /// Background responses (`queued` or `in_progress`) whose last heartbeat is older than
    /// `cutoff_ms` — the server making them stopped — become `failed` with `message` as
    /// their error (`only`: just that one). Returns the ids failed.
    pub async fn fail_stale_responses(
        &self,
        cutoff_ms: i64,
        only: Option<&str>,
        message: &str,
    ) -> Result<Vec<String>> {
        self.check_writable()?;
        let rows = sqlx::query(
            "SELECT id FROM responses WHERE status IN ('queued', 'in_progress') AND updated_at < $1",
        )
        .bind(cutoff_ms)
        .fetch_all(&self.pool)
        .await
        .context("reading the background responses")?;
        let mut failed = Vec::new();
        for row in rows {
            let id: String = row.try_get("id")?;
            if only.is_some_and(|only| only != id) {
                continue;
            }
            let Some(mut kept) = self.response(&id).await? else {
                continue;
            };
            // Another server may have ended it since the query above.
            if !matches!(kept.status.as_str(), "queued" | "in_progress") {
                continue;
            }
            if let Some(body) = kept.body.as_object_mut() {
                body.insert("status".into(), "failed".into());
                body.insert(
                    "error".into(),
                    serde_json::json!({"code": "server_error", "message": message}),
                );
            }
            // Both columns sealed again under the current key, as `put_response` does.
            let keys = self.keys();
            let seal = |column: Column, value: &Value| -> Result<String> {
                let text = value.to_string();
                match keys {
                    Some(k) => k.seal_text(column, &text),
                    None => Ok(text),
                }
            };
            let input = seal(Column::ResponseInput, &kept.input)?;
            let body = seal(Column::ResponseBody, &kept.body)?;
            // Only if it is still stale: the server making it may have ended it meanwhile.
            let done = sqlx::query(
                "UPDATE responses SET status = 'failed', input = $2, body = $3, key_id = $4, updated_at = $5
                 WHERE id = $1 AND status IN ('queued', 'in_progress') AND updated_at < $6",
            )
            .bind(&id)
            .bind(input)
            .bind(body)
            .bind(keys.map(|k| k.current_id().to_string()))
            .bind(now_ms())
            .bind(cutoff_ms)
            .execute(&self.pool)
            .await
            .with_context(|| format!("failing the interrupted response {id}"))?;
            if done.rows_affected() == 0 {
                continue;
            }
            failed.push(id);
        }
        Ok(failed)
    }

    /// Delete the response kept under `id`; false if there was none.
    pub async fn delete_response(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM responses WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .with_context(|| format!("deleting the response {id}"))?;
        Ok(done.rows_affected() > 0)
    }
}

/// Delete (or count, with `dry_run`) the kept responses whose conversation or answer
/// mentions the subject, opening sealed ones with `keys`. A response that cannot be opened
/// (its key is gone) fails the erasure rather than stay unchecked.
pub(crate) async fn erase_in(
    tx: &mut Transaction<'_, Any>,
    keys: Option<&Keyring>,
    subject: &Subject,
    dry_run: bool,
) -> Result<i64> {
    let rows = sqlx::query("SELECT id, input, body, key_id FROM responses")
        .fetch_all(&mut **tx)
        .await
        .context("reading the kept responses")?;
    let mut ids = Vec::new();
    for row in rows {
        let id: String = row.try_get("id")?;
        let key_id: Option<String> = row.try_get("key_id")?;
        let mut mentions = false;
        for (name, column) in [
            ("input", Column::ResponseInput),
            ("body", Column::ResponseBody),
        ] {
            let text = crypto::open_text(
                keys,
                key_id.as_deref(),
                column,
                row.try_get::<Option<String>, _>(name)?,
            )
            .with_context(|| format!("opening the response {id} to check it for the subject"))?
            .unwrap_or_default();
            // Matched on the strings of the JSON, not its escaped text.
            let strings = serde_json::from_str::<Value>(&text)
                .map(|v| crate::erase::json_strings(&v))
                .unwrap_or(text);
            mentions |= subject.matches(&strings);
        }
        if mentions {
            ids.push(id);
        }
    }
    if !dry_run {
        for id in &ids {
            sqlx::query("DELETE FROM responses WHERE id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await
                .context("erasing a kept response")?;
        }
    }
    Ok(ids.len() as i64)
}

/// Delete (or count, with `dry_run`) the kept responses created before `cutoff` (Unix ms).
pub(crate) async fn purge_in(
    tx: &mut Transaction<'_, Any>,
    cutoff: i64,
    dry_run: bool,
) -> Result<i64> {
    if dry_run {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM responses WHERE created_at < $1")
            .bind(cutoff)
            .fetch_one(&mut **tx)
            .await?
            .try_get("n")?;
        return Ok(n);
    }
    let done = sqlx::query("DELETE FROM responses WHERE created_at < $1")
        .bind(cutoff)
        .execute(&mut **tx)
        .await
        .context("removing kept responses past extracted_days")?;
    Ok(done.rows_affected() as i64)
}
