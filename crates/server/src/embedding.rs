//! One embedding model behind the API: the BERT encoder on a thread of its own, fed through a
//! bounded queue so that HTTP never waits on the forward and a flood of requests gets 429.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use anyhow::{Context, Result};
use tokio::sync::oneshot;
use verre_engine::model::bert::{BATCH_SEQUENCES, Embedder};

use crate::openai::error::ApiError;
use crate::openai::request::Prompt;
use crate::state::unix_now;

/// One input's unit-length vector and the tokens it took (after truncation).
pub struct Embedding {
    pub vector: Vec<f32>,
    pub tokens: usize,
}

/// A batch of inputs and where its vectors go.
struct Job {
    inputs: Vec<Prompt>,
    /// Cut inputs longer than the model takes, rather than refuse them.
    truncate: bool,
    reply: oneshot::Sender<Result<Vec<Embedding>, ApiError>>,
}

/// The refusal of an input longer than the model takes.
pub fn too_long(model: &str, index: usize, max_tokens: usize) -> ApiError {
    ApiError::context_length(
        "input",
        format!(
            "input[{index}] is longer than the {max_tokens} tokens {model} takes; shorten it, \
             or send `\"truncate\": true` to embed its first {max_tokens} tokens"
        ),
    )
}

pub struct EmbeddingModel {
    /// The name clients put in `model`.
    pub id: String,
    pub embedder: Arc<Embedder>,
    /// Unix time it was loaded (`created` in `/v1/models`).
    pub created: u64,
    /// Input tokens embedded so far (`verre:prompt_tokens_total`).
    pub prompt_tokens: Arc<AtomicU64>,
    jobs: SyncSender<Job>,
}

impl EmbeddingModel {
    /// Start the model's thread, with room for `max_waiting` requests behind the running one.
    pub fn start(id: &str, embedder: Arc<Embedder>, max_waiting: usize) -> Result<Self> {
        let (jobs, queue) = sync_channel(max_waiting);
        let prompt_tokens = Arc::new(AtomicU64::new(0));
        let (worker_embedder, worker_tokens) = (embedder.clone(), prompt_tokens.clone());
        let worker_id = id.to_string();
        std::thread::Builder::new()
            .name(format!("verre-embed-{id}"))
            .spawn(move || work(&worker_id, &worker_embedder, &worker_tokens, &queue))
            .with_context(|| format!("starting the thread of embedding model {id}"))?;
        Ok(Self {
            id: id.to_string(),
            embedder,
            created: unix_now(),
            prompt_tokens,
            jobs,
        })
    }

    /// Embed validated inputs (token ids in range), in order. An input longer than the
    /// model takes is refused, or cut to its limit when `truncate`.
    pub async fn embed(
        &self,
        inputs: Vec<Prompt>,
        truncate: bool,
    ) -> Result<Vec<Embedding>, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job {
                inputs,
                truncate,
                reply,
            })
            .map_err(|e| match e {
                TrySendError::Full(_) => ApiError::queue_full(format!(
                    "embedding model {} has too many requests waiting; retry shortly",
                    self.id
                )),
                TrySendError::Disconnected(_) => {
                    ApiError::internal(format!("embedding model {} has stopped", self.id))
                }
            })?;
        answer
            .await
            .map_err(|_| ApiError::internal(format!("embedding model {} has stopped", self.id)))?
    }
}

/// The model's thread: one job at a time until the model is dropped.
fn work(id: &str, embedder: &Embedder, prompt_tokens: &AtomicU64, queue: &Receiver<Job>) {
    let max_tokens = embedder.max_tokens();
    while let Ok(job) = queue.recv() {
        let result = embed_job(id, embedder, max_tokens, &job);
        // Only a request that was answered counts its tokens.
        if let Ok(out) = &result {
            let tokens: usize = out.iter().map(|e| e.tokens).sum();
            prompt_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        }
        let _ = job.reply.send(result);
    }
}

/// Every input tokenized and checked against the model's limit first (a refused request
/// costs no embedding), then embedded.
fn embed_job(
    id: &str,
    embedder: &Embedder,
    max_tokens: usize,
    job: &Job,
) -> Result<Vec<Embedding>, ApiError> {
    let failed = |e: anyhow::Error| ApiError::internal(format!("embedding failed: {e:#}"));
    let mut tokenized = Vec::with_capacity(job.inputs.len());
    for (i, input) in job.inputs.iter().enumerate() {
        let (ids, cut) = match input {
            Prompt::Text(text) => embedder.tokenize_truncated(text).map_err(failed)?,
            Prompt::Tokens(ids) => (
                ids[..ids.len().min(max_tokens)].to_vec(),
                ids.len() > max_tokens,
            ),
        };
        if cut && !job.truncate {
            return Err(too_long(id, i, max_tokens));
        }
        tokenized.push(ids);
    }
    let mut out = Vec::with_capacity(tokenized.len());
    for batch in tokenized.chunks(BATCH_SEQUENCES) {
        // A client that went away wants nothing more.
        if job.reply.is_closed() {
            return Err(ApiError::internal("the client went away"));
        }
        let vectors = embedder.embed_batch(batch).map_err(failed)?;
        out.extend(
            vectors
                .into_iter()
                .zip(batch)
                .map(|(vector, ids)| Embedding {
                    vector,
                    tokens: ids.len(),
                }),
        );
    }
    Ok(out)
}
