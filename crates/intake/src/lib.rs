//! verre's intake pipeline: mail and PDFs in, strictly validated JSON, cross-references and
//! staged actions out.
//!
//! `source -> (store: message once, by hash) -> parse -> extract -> crossref -> route ->
//! draft -> stage`. Each stage is a job in the store's durable queue ([`verre_store`]); a
//! worker claims a job under a lease, computes the stage, and writes its effects with the
//! job's completion in one transaction. What the pipeline does is declared in a TOML file
//! ([`pipeline::Pipeline`], docs/INTAKE.md).

pub mod backend;
pub mod demo;
pub mod document;
pub mod evidence;
pub mod fewshot;
pub mod imap;
pub mod inbox;
pub mod isolation;
pub mod merge;
pub mod parse;
pub mod pdf;
pub mod pipeline;
pub mod source;
pub mod stages;
pub mod summary;
pub mod worker;

use std::sync::Arc;

use anyhow::Result;
pub use backend::{
    BoxFuture, CompleteRequest, Completion, ExtractError, ExtractRequest, Extraction, ModelApi,
    ModelCallError, StubBackend,
};
pub use isolation::MailParser;
pub use pipeline::{Pipeline, PipelineError};
pub use source::{RawMail, Source};
pub use stages::{PiiSpan, PiiTagger, STAGES, StageRunner};
pub use worker::{Worker, WorkerOptions, WorkerStats};

use verre_store::Store;

/// The key of the extract stage's output that holds what verre knows of the document
/// rather than what the model extracted: each value's page (`sources`), the pages not
/// read and why (`unread`), how many chunks were read. Templates never see it (`extract`
/// is the schema's fields); review shows it.
pub const DOCUMENT_KEY: &str = "_document";

/// What one read of a source stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// The distinct message ids, in source order (a message that appears twice, or was
    /// stored by an earlier read, is listed once); not the forgotten ones.
    pub ids: Vec<i64>,
    /// How many were stored for the first time.
    pub new: usize,
    /// How many were refused because the same bytes were erased or purged before.
    pub forgotten: usize,
    /// Inbox files deleted once stored ([`inbox::take_inbox`]; 0 for other sources).
    pub taken: usize,
}

/// Store every message of a source (each once, by content hash) and enqueue its parse
/// stage. Returns the distinct message ids in source order (a message that appears twice
/// in the source, or was stored by an earlier run, is listed once), and how many were new.
/// Bytes erased or purged before are skipped ([`ingest_source`] counts them). The source
/// is not modified.
pub async fn ingest(
    store: &Store,
    source: &Source,
    max_attempts: u32,
) -> Result<(Vec<i64>, usize)> {
    let r = ingest_source(store, source, max_attempts).await?;
    Ok((r.ids, r.new))
}

/// As [`ingest`], with the forgotten messages counted.
pub async fn ingest_source(
    store: &Store,
    source: &Source,
    max_attempts: u32,
) -> Result<IngestReport> {
    let mails = source.read().await?;
    let name = source.describe();
    let mut report = IngestReport::default();
    for m in mails {
        match store
            .ingest_unless_forgotten(&name, &m.source_ref, &m.bytes, STAGES[0], max_attempts)
            .await?
        {
            verre_store::IngestOutcome::Stored(r) => {
                report.new += r.new as usize;
                if !report.ids.contains(&r.message_id) {
                    report.ids.push(r.message_id);
                }
            }
            verre_store::IngestOutcome::Forgotten => report.forgotten += 1,
        }
    }
    Ok(report)
}

/// Work the queue with `workers` workers in this process while `read` brings new mail in
/// every `poll` (a source read, an inbox taken), until `stop` turns true: then no job is
/// claimed any more, a stage still running is cancelled and its job released for the next
/// worker. `verre up` and `verre intake watch` run their intake this way. A worker that
/// fails stops the others, and its error is the result.
pub async fn watch<F, Fut>(
    runner: Arc<StageRunner>,
    workers: usize,
    lease: std::time::Duration,
    poll: std::time::Duration,
    mut read: F,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<WorkerStats>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (stop_workers, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let mut opts = WorkerOptions::new();
        opts.lease = lease;
        opts.stop_when_idle = false;
        let worker = Worker::new(runner.clone(), opts);
        let stopped = stopped.clone();
        tasks.push(tokio::spawn(async move { worker.run_until(stopped).await }));
    }
    loop {
        read().await;
        if tasks.iter().any(|t| t.is_finished()) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let _ = stop_workers.send(true);
    let mut total = WorkerStats::default();
    let mut failed = None;
    for t in tasks {
        match t.await? {
            Ok(s) => {
                total.completed += s.completed;
                total.retried += s.retried;
                total.quarantined += s.quarantined;
                total.lease_lost += s.lease_lost;
                total.released += s.released;
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    match failed {
        Some(e) => Err(e.context("an intake worker stopped")),
        None => Ok(total),
    }
}

/// Run `workers` workers in this process until the queue is idle.
pub async fn run_until_idle(
    runner: Arc<StageRunner>,
    workers: usize,
    lease: std::time::Duration,
) -> Result<WorkerStats> {
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let mut opts = WorkerOptions::new();
        opts.lease = lease;
        let worker = Worker::new(runner.clone(), opts);
        tasks.push(tokio::spawn(async move { worker.run().await }));
    }
    let mut total = WorkerStats::default();
    for t in tasks {
        let s = t.await??;
        total.completed += s.completed;
        total.retried += s.retried;
        total.quarantined += s.quarantined;
        total.lease_lost += s.lease_lost;
    }
    Ok(total)
}
