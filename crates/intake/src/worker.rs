//! A worker: claims jobs from the store's queue, runs their stage, and completes or fails
//! them. Many workers (tasks, processes, machines) can share one queue.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use verre_store::{FailOutcome, Job, Store};

use crate::stages::{StageError, StageRunner, next_stage};

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Unique among the workers sharing the queue (default: host, process id and index).
    pub id: String,
    /// How long a claim holds; renewed every third of it while the stage runs, so only a
    /// dead worker's jobs change hands.
    pub lease: Duration,
    /// How often an idle worker looks for work.
    pub poll: Duration,
    /// Stop when the queue has nothing left to do (`intake run`) instead of waiting for
    /// more (`intake watch`).
    pub stop_when_idle: bool,
}

/// Distinguishes the workers of one process (several runners may share a process).
static NEXT_WORKER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl WorkerOptions {
    /// Defaults, with an id unique to this host, process and worker.
    pub fn new() -> Self {
        let index = NEXT_WORKER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        Self {
            id: format!("{host}-{}-{index}", std::process::id()),
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(100),
            stop_when_idle: true,
        }
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts of what one worker did.
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    pub completed: u64,
    pub retried: u64,
    pub quarantined: u64,
    pub lease_lost: u64,
    /// Jobs given back unfinished at shutdown.
    pub released: u64,
}

pub struct Worker {
    runner: Arc<StageRunner>,
    opts: WorkerOptions,
}

impl Worker {
    pub fn new(runner: Arc<StageRunner>, opts: WorkerOptions) -> Self {
        Self { runner, opts }
    }

    fn store(&self) -> &Store {
        &self.runner.store
    }

    /// Work until the queue is idle (with `stop_when_idle`) or forever.
    pub async fn run(&self) -> Result<WorkerStats> {
        let (_keep, stop) = tokio::sync::watch::channel(false);
        self.run_until(stop).await
    }

    /// As [`Worker::run`], until `stop` turns true: then no new job is claimed, and a stage
    /// still running is cancelled and its job released (ready again for the next worker,
    /// the attempt not counted). Nothing a cancelled stage computed was written: effects are
    /// written only when a stage completes.
    pub async fn run_until(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<WorkerStats> {
        let mut stats = WorkerStats::default();
        loop {
            if *stop.borrow() {
                return Ok(stats);
            }
            match self.store().claim(&self.opts.id, self.opts.lease).await? {
                Some(job) => {
                    let cancelled = tokio::select! {
                        r = self.run_job(job.clone(), &mut stats) => { r?; false }
                        _ = stop.wait_for(|s| *s) => true,
                    };
                    if cancelled {
                        if self.store().release(&job).await? {
                            stats.released += 1;
                        }
                        return Ok(stats);
                    }
                }
                None => {
                    if self.opts.stop_when_idle {
                        let (active, waiting) = self.store().open_jobs().await?;
                        if active == 0 && waiting == 0 {
                            return Ok(stats);
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(self.opts.poll) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(stats),
                    }
                }
            }
        }
    }

    async fn run_job(&self, job: Job, stats: &mut WorkerStats) -> Result<()> {
        let pipeline = &self.runner.pipeline;
        let backoff = Duration::from_millis(pipeline.backoff_ms);
        if job.exhausted() {
            let reason = format!(
                "the {} stage was started {} times and its worker stopped each time (lease expired)",
                job.stage, job.max_attempts
            );
            self.record(
                self.store().fail(&job, &reason, true, backoff).await?,
                stats,
            );
            return Ok(());
        }
        let renewer = {
            let store = self.store().clone();
            let job = job.clone();
            let lease = self.opts.lease;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    if !store.renew(&job, lease).await.unwrap_or(false) {
                        break;
                    }
                }
            })
        };
        let limit = pipeline.timeout(&job.stage);
        let result = match tokio::time::timeout(limit, self.runner.run(&job.stage, job.message_id))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(StageError::transient(format!(
                "the {} stage ran past its time limit of {} s ([limits] stage_timeout_s or stage_timeouts.{} in the pipeline)",
                job.stage,
                limit.as_secs(),
                job.stage
            ))),
        };
        renewer.abort();
        match result {
            Ok(effects) => {
                let next = next_stage(&job.stage);
                if self
                    .store()
                    .complete(&job, &effects, next, pipeline.max_attempts)
                    .await?
                {
                    stats.completed += 1;
                } else {
                    stats.lease_lost += 1;
                }
            }
            Err(StageError { permanent, reason }) => {
                // The reason may quote the message or the model's answer: it stays in the
                // store (`verre intake show`), out of the logs.
                tracing::info!(message = job.message_id, stage = %job.stage, permanent, "stage failed");
                self.record(
                    self.store().fail(&job, &reason, permanent, backoff).await?,
                    stats,
                );
            }
        }
        Ok(())
    }

    fn record(&self, outcome: FailOutcome, stats: &mut WorkerStats) {
        match outcome {
            FailOutcome::Retry { .. } => stats.retried += 1,
            FailOutcome::Quarantined => stats.quarantined += 1,
            FailOutcome::LeaseLost => stats.lease_lost += 1,
        }
    }
}
