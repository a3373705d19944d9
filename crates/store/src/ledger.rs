//! The cost ledger: one row per API request (chat, completions, embeddings) with its key,
//! model, backend, status, tokens and latency — never its content. `verre cost`,
//! `GET /v1/verre/usage` and the `tokens_per_day` quota read it.
//!
//! Requests are recorded off the request path: [`LedgerWriter::record`] puts the entry on a
//! bounded channel and returns; one task writes what has queued up in one transaction,
//! together with each call's audit entry (`api.chat`, actor `key:NAME`), so the ledger and
//! the audit log agree.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::Store;
use crate::audit::{AuditEvent, append_in};

/// Entries waiting to be written; past this, new ones are dropped (and counted), never
/// waited for.
const QUEUE: usize = 16_384;
/// Most entries in one transaction.
const MAX_BATCH: usize = 512;

/// One API request, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    /// When the request came in, Unix ms.
    pub at: i64,
    /// The API key's name; empty when the server runs without keys.
    pub api_key: String,
    /// `chat`, `completions` or `embeddings`.
    pub endpoint: String,
    /// The model as the client named it.
    pub model: String,
    /// The backend that answered (`local` without a gateway config); empty when the
    /// request was refused before a backend was chosen.
    pub backend: String,
    /// Whether that backend runs on hardware the operator controls.
    pub local: bool,
    pub status: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Until the response headers were sent.
    pub first_byte_ms: u64,
    /// Until the last byte of the answer was sent (or the client went away).
    pub latency_ms: u64,
}

/// What goes into the audit log alongside a ledger entry.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiAudit {
    None,
    /// Metadata only: the ledger entry's fields.
    Metadata,
    /// Metadata and the request's content (`[audit] content = true`).
    WithContent(Value),
}

/// A ledger entry and its audit entry.
#[derive(Debug, Clone)]
pub struct ApiCall {
    pub entry: LedgerEntry,
    pub audit: ApiAudit,
    /// Whether the request's personal data was replaced before it left for the backend.
    pub pseudonymized: bool,
}

impl ApiCall {
    /// The audit entry's actor: `key:NAME`, or `anonymous` without keys.
    fn actor(&self) -> String {
        match self.entry.api_key.as_str() {
            "" => "anonymous".to_string(),
            key => format!("key:{key}"),
        }
    }

    fn audit_detail(&self) -> Value {
        let e = &self.entry;
        let mut detail = json!({
            "model": e.model,
            "backend": e.backend,
            "status": e.status,
            "prompt_tokens": e.prompt_tokens,
            "completion_tokens": e.completion_tokens,
            "latency_ms": e.latency_ms,
            "pseudonymized": self.pseudonymized,
        });
        if let ApiAudit::WithContent(content) = &self.audit {
            detail["content"] = content.clone();
        }
        detail
    }
}

/// Which column `verre cost --by` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Key,
    Model,
    Backend,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            GroupBy::Key => "api_key",
            GroupBy::Model => "model",
            GroupBy::Backend => "backend",
        }
    }
}

/// A slice of the ledger to sum up.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    /// Inclusive, Unix ms.
    pub since: Option<i64>,
    /// Exclusive, Unix ms.
    pub until: Option<i64>,
    /// One row per value of this column (and per `local`); `None`: one row per `local`.
    pub by: Option<GroupBy>,
    /// Only this key's requests.
    pub api_key: Option<String>,
}

/// Sums over the requests of one group, split by whether they were served locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// The group's key, model or backend; empty without `by`.
    pub group: String,
    pub local: bool,
    pub requests: u64,
    /// Requests answered with a status of 400 or more.
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The rows of a [`UsageQuery`] and the time span they cover.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub rows: Vec<UsageRow>,
    /// The first and last request's `at`, when there were any.
    pub first_at: Option<i64>,
    pub last_at: Option<i64>,
}

impl Store {
    /// Write ledger entries (and their audit entries) in one transaction.
    pub async fn insert_api_calls(&self, calls: &[ApiCall]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for call in calls {
            let e = &call.entry;
            sqlx::query(
                "INSERT INTO ledger (at, api_key, endpoint, model, backend, local, status,
                     prompt_tokens, completion_tokens, first_byte_ms, latency_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(e.at)
            .bind(&e.api_key)
            .bind(&e.endpoint)
            .bind(&e.model)
            .bind(&e.backend)
            .bind(i64::from(e.local))
            .bind(i64::from(e.status))
            .bind(e.prompt_tokens as i64)
            .bind(e.completion_tokens as i64)
            .bind(e.first_byte_ms as i64)
            .bind(e.latency_ms as i64)
            .execute(&mut *tx)
            .await
            .context("writing to the ledger")?;
        }
        for call in calls {
            if call.audit == ApiAudit::None {
                continue;
            }
            let actor = call.actor();
            let action = format!("api.{}", call.entry.endpoint);
            let subject = format!("model:{}", call.entry.model);
            let event = AuditEvent {
                actor: &actor,
                action: &action,
                subject: &subject,
                detail: call.audit_detail(),
            };
            append_in(&mut tx, self, &event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Tokens (prompt and completion) `api_key` used in requests that came in from
    /// `from` (inclusive) to `before` (exclusive), Unix ms.
    pub async fn ledger_tokens(&self, api_key: &str, from: i64, before: i64) -> Result<u64> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS tokens
             FROM ledger WHERE api_key = $1 AND at >= $2 AND at < $3",
        )
        .bind(api_key)
        .bind(from)
        .bind(before)
        .fetch_one(&self.pool)
        .await
        .context("reading the ledger")?;
        Ok(sum(&row, "tokens")? as u64)
    }

    /// Sums over the ledger, grouped as `query` says, largest groups first.
    pub async fn ledger_usage(&self, query: &UsageQuery) -> Result<Usage> {
        let mut filters = vec!["at >= $1".to_string(), "at < $2".to_string()];
        if query.api_key.is_some() {
            filters.push("api_key = $3".to_string());
        }
        let group = query.by.map_or("''", GroupBy::column);
        // PostgreSQL does not group by a constant.
        let group_by = match query.by {
            Some(by) => format!("{}, local", by.column()),
            None => "local".to_string(),
        };
        // `group` is one of four fixed column names, never input.
        let sql = format!(
            "SELECT {group} AS grp, local, COUNT(*) AS requests,
                 CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT) AS errors,
                 CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens,
                 CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens,
                 MIN(at) AS first_at, MAX(at) AS last_at
             FROM ledger WHERE {} GROUP BY {group_by}",
            filters.join(" AND ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query.since.unwrap_or(i64::MIN))
            .bind(query.until.unwrap_or(i64::MAX));
        if let Some(key) = &query.api_key {
            q = q.bind(key);
        }
        let mut usage = Usage::default();
        for r in q
            .fetch_all(&self.pool)
            .await
            .context("reading the ledger")?
        {
            let first: i64 = sum(&r, "first_at")?;
            let last: i64 = sum(&r, "last_at")?;
            usage.first_at = Some(usage.first_at.map_or(first, |f| f.min(first)));
            usage.last_at = Some(usage.last_at.map_or(last, |l| l.max(last)));
            usage.rows.push(UsageRow {
                group: r.try_get("grp")?,
                local: sum(&r, "local")? != 0,
                requests: sum(&r, "requests")? as u64,
                errors: sum(&r, "errors")? as u64,
                prompt_tokens: sum(&r, "prompt_tokens")? as u64,
                completion_tokens: sum(&r, "completion_tokens")? as u64,
            });
        }
        usage.rows.sort_by(|a, b| {
            (b.prompt_tokens + b.completion_tokens)
                .cmp(&(a.prompt_tokens + a.completion_tokens))
                .then(b.requests.cmp(&a.requests))
                .then(a.group.cmp(&b.group))
                .then(a.local.cmp(&b.local))
        });
        Ok(usage)
    }
}

/// An integer column or aggregate (sums are cast to BIGINT: PostgreSQL's `SUM` of a
/// `BIGINT` is a `NUMERIC`, which the `Any` driver does not read).
fn sum(row: &sqlx::any::AnyRow, column: &str) -> Result<i64> {
    row.try_get(column)
        .with_context(|| format!("reading the ledger's {column}"))
}

enum Message {
    Call(Box<ApiCall>),
    Flush(oneshot::Sender<()>),
}

/// The ledger's writer: a bounded queue and the task that empties it into the store.
pub struct LedgerWriter {
    queue: mpsc::Sender<Message>,
    dropped: AtomicU64,
}

impl LedgerWriter {
    /// Start the writing task on the current tokio runtime.
    pub fn spawn(store: Store) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store, rx));
        Arc::new(Self {
            queue,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queue a call to be written; never waits. A full queue (the database has stalled)
    /// drops it, logs, and counts it in [`LedgerWriter::dropped`].
    pub fn record(&self, call: ApiCall) {
        if self.queue.try_send(Message::Call(Box::new(call))).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(dropped = n, "the ledger queue is full: entries are lost");
            }
        }
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Wait until everything queued before this call is written (or given up on).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_batches(store: Store, mut rx: mpsc::Receiver<Message>) {
    let mut batch: Vec<ApiCall> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Call(call) => batch.push(*call),
                Message::Flush(done) => waiting.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            write_with_retries(&store, &batch).await;
            batch.clear();
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// A failed write is tried twice more (the database may be restarting), then given up
/// with an error in the log.
async fn write_with_retries(store: &Store, batch: &[ApiCall]) {
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=3 {
        match store.insert_api_calls(batch).await {
            Ok(()) => return,
            Err(e) if attempt < 3 => {
                tracing::warn!("writing {} ledger entries: {e:#}; retrying", batch.len());
                tokio::time::sleep(delay).await;
                delay *= 10;
            }
            Err(e) => {
                tracing::error!("writing {} ledger entries: {e:#}; lost", batch.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, model: &str, local: bool, at: i64, status: u16, p: u64, c: u64) -> ApiCall {
        ApiCall {
            entry: LedgerEntry {
                at,
                api_key: key.into(),
                endpoint: "chat".into(),
                model: model.into(),
                backend: if local { "box" } else { "far" }.into(),
                local,
                status,
                prompt_tokens: p,
                completion_tokens: c,
                first_byte_ms: 1,
                latency_ms: 2,
            },
            audit: ApiAudit::Metadata,
            pseudonymized: false,
        }
    }

    async fn sums(store: &Store) {
        let writer = LedgerWriter::spawn(store.clone());
        writer.record(entry("alice", "small", true, 1_000, 200, 10, 5));
        writer.record(entry("alice", "large", false, 2_000, 200, 100, 50));
        writer.record(entry("bob", "small", true, 3_000, 429, 0, 0));
        writer.record(entry("bob", "small", true, 4_000, 200, 7, 3));
        writer.flush().await;

        assert_eq!(store.ledger_tokens("alice", 0, 10_000).await.unwrap(), 165);
        assert_eq!(store.ledger_tokens("alice", 0, 2_000).await.unwrap(), 15);
        assert_eq!(store.ledger_tokens("bob", 3_500, 10_000).await.unwrap(), 10);
        assert_eq!(store.ledger_tokens("carol", 0, 10_000).await.unwrap(), 0);

        let by_key = store
            .ledger_usage(&UsageQuery {
                by: Some(GroupBy::Key),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            (by_key.first_at, by_key.last_at),
            (Some(1_000), Some(4_000))
        );
        let row = |group: &str, local: bool| {
            by_key
                .rows
                .iter()
                .find(|r| r.group == group && r.local == local)
                .cloned()
                .unwrap()
        };
        assert_eq!(row("alice", false).prompt_tokens, 100);
        assert_eq!(row("alice", true).completion_tokens, 5);
        let bob = row("bob", true);
        assert_eq!((bob.requests, bob.errors, bob.prompt_tokens), (2, 1, 7));
        assert_eq!(by_key.rows[0].group, "alice", "largest first");

        let bobs = store
            .ledger_usage(&UsageQuery {
                since: Some(2_500),
                api_key: Some("bob".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(bobs.rows.len(), 1);
        assert_eq!(bobs.rows[0].group, "");
        assert_eq!(bobs.rows[0].requests, 2);

        let audit = store.audit_entries(0, 100).await.unwrap();
        assert_eq!(audit.len(), 4);
        assert_eq!(audit[0].actor, "key:alice");
        assert_eq!(audit[0].action, "api.chat");
        assert_eq!(audit[0].subject, "model:small");
        assert_eq!(audit[0].detail.as_ref().unwrap()["prompt_tokens"], 10);
        assert!(store.audit_verify().await.unwrap().ok());
    }

    #[tokio::test]
    async fn records_sum_up_by_group_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_home(dir.path()).await.unwrap();
        sums(&store).await;
    }

    #[tokio::test]
    async fn records_sum_up_by_group_on_postgres() {
        let Some(url) = crate::testing::postgres_url("ledger_sums").await else {
            return;
        };
        let store = Store::open(&url).await.unwrap();
        sums(&store).await;
    }

    #[tokio::test]
    async fn no_audit_entry_when_not_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_home(dir.path()).await.unwrap();
        let mut call = entry("", "m", true, 5, 200, 1, 1);
        call.audit = ApiAudit::None;
        let mut with_content = entry("", "m", true, 6, 200, 1, 1);
        with_content.audit = ApiAudit::WithContent(json!({ "messages": ["hi"] }));
        store.insert_api_calls(&[call, with_content]).await.unwrap();
        let audit = store.audit_entries(0, 10).await.unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].actor, "anonymous");
        assert_eq!(
            audit[0].detail.as_ref().unwrap()["content"]["messages"][0],
            "hi"
        );
    }
}
