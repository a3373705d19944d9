//! Where responses are kept: in the store when the server has one (sealed, erased,
//! purged and audited with the rest: verre-store's `responses` module), else in a bounded
//! map in memory, lost on restart. Also the background responses still running, so that
//! `cancel` can stop them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::http::StatusCode;
use serde_json::json;
use tokio::task::AbortHandle;
use verre_store::{AuditEvent, Store, StoredResponse};

use super::super::error::ApiError;

/// Most responses kept in memory without a store; the oldest goes first.
pub const MEMORY_LIMIT: usize = 1000;

/// How often a running background response notes in the store that it is still running.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// A background response with no heartbeat for this long was being made by a server that
/// stopped (a restart, a crash): it is `failed`, not `in_progress` for ever.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// The error an interrupted background response ends with.
pub const INTERRUPTED: &str = "The server making this background response stopped before it \
finished (a restart or a crash). Send the request again.";

#[derive(Default)]
pub struct KeptResponses {
    memory: Mutex<VecDeque<StoredResponse>>,
    running: Mutex<HashMap<String, AbortHandle>>,
}

/// The audit log's actor for an API key's name, as the ledger writes it.
pub fn actor(api_key: &str) -> String {
    match api_key {
        "" => "anonymous".to_string(),
        key => format!("key:{key}"),
    }
}

fn storage_error(e: anyhow::Error) -> ApiError {
    ApiError::internal(format!("keeping responses: {e:#}"))
}

/// The 404 for a response that is not kept (or is another key's).
pub fn not_found(id: &str, param: Option<&str>) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("Response with id '{id}' not found."),
        kind: "invalid_request_error",
        param: param.map(str::to_string),
        code: Some("not_found"),
    }
}

impl KeptResponses {
    /// Keep `response` (or replace the one kept under its id).
    pub async fn put(
        &self,
        store: Option<&Store>,
        response: StoredResponse,
    ) -> Result<(), ApiError> {
        if let Some(store) = store {
            return store.put_response(&response).await.map_err(storage_error);
        }
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        match memory.iter_mut().find(|r| r.id == response.id) {
            Some(kept) => *kept = response,
            None => {
                if memory.len() >= MEMORY_LIMIT {
                    memory.pop_front();
                }
                memory.push_back(response);
            }
        }
        Ok(())
    }

    /// The response `id` as `api_key` may see it: another key's is not found.
    pub async fn get(
        &self,
        store: Option<&Store>,
        id: &str,
        api_key: &str,
    ) -> Result<Option<StoredResponse>, ApiError> {
        let kept = match store {
            Some(store) => {
                let mut kept = store.response(id).await.map_err(storage_error)?;
                if kept.as_ref().is_some_and(|r| self.is_orphan(r)) {
                    let cutoff = verre_store::now_ms() - LEASE.as_millis() as i64;
                    let failed = store
                        .fail_stale_responses(cutoff, Some(id), INTERRUPTED)
                        .await
                        .map_err(storage_error)?;
                    if !failed.is_empty() {
                        tracing::warn!("background response {id}: its server stopped; failed");
                        kept = store.response(id).await.map_err(storage_error)?;
                    }
                }
                kept
            }
            None => {
                let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
                memory.iter().find(|r| r.id == id).cloned()
            }
        };
        Ok(kept.filter(|r| r.api_key == api_key))
    }

    /// Delete the response `id` of `api_key`; false if it has none by that id.
    pub async fn delete(
        &self,
        store: Option<&Store>,
        id: &str,
        api_key: &str,
    ) -> Result<bool, ApiError> {
        if self.get(store, id, api_key).await?.is_none() {
            return Ok(false);
        }
        self.stop(id);
        match store {
            Some(store) => {
                let deleted = store.delete_response(id).await.map_err(storage_error)?;
                audit(store, api_key, "api.responses.delete", id, json!({})).await;
                Ok(deleted)
            }
            None => {
                let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
                memory.retain(|r| r.id != id);
                Ok(true)
            }
        }
    }

    /// A background response not ended that this server is not making: another server may
    /// be (its heartbeat says), or the one that was stopped.
    fn is_orphan(&self, response: &StoredResponse) -> bool {
        matches!(response.status.as_str(), "queued" | "in_progress")
            && !self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&response.id)
    }

    /// Note a background response's task, to stop it on `cancel`.
    pub fn running(&self, id: &str, task: AbortHandle) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(id.to_string(), task);
    }

    /// The background response `id` ended on its own.
    pub fn ended(&self, id: &str) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.remove(id);
    }

    /// Stop the background response `id`; false if it was not running.
    pub fn stop(&self, id: &str) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.remove(id) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}

/// An audit entry about a kept response. A failure is logged: the response is served and
/// kept either way, as the ledger's entries are.
pub async fn audit(
    store: &Store,
    api_key: &str,
    action: &str,
    id: &str,
    detail: serde_json::Value,
) {
    let actor = actor(api_key);
    let subject = format!("response:{id}");
    let event = AuditEvent {
        actor: &actor,
        action,
        subject: &subject,
        detail,
    };
    if let Err(e) = store.audit(event).await {
        tracing::error!("auditing {action} of {id}: {e:#}");
    }
}
