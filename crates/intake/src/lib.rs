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
pub mod imap;
pub mod isolation;
pub mod parse;
pub mod pdf;
pub mod pipeline;
pub mod source;
pub mod stages;
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

/// Store every message of a source (each once, by content hash) and enqueue its parse
/// stage. Returns the distinct message ids in source order (a message that appears twice
/// in the source, or was stored by an earlier run, is listed once), and how many were new.
pub async fn ingest(
    store: &Store,
    source: &Source,
    max_attempts: u32,
) -> Result<(Vec<i64>, usize)> {
    let mails = source.read().await?;
    let name = source.describe();
    let mut ids = Vec::with_capacity(mails.len());
    let mut new = 0;
    for m in mails {
        let r = store
            .ingest(&name, &m.source_ref, &m.bytes, STAGES[0], max_attempts)
            .await?;
        new += r.new as usize;
        if !ids.contains(&r.message_id) {
            ids.push(r.message_id);
        }
    }
    Ok((ids, new))
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
