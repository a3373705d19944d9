//! The engine loop: every running request decoded together, on a thread of its own.
//!
//! Callers [`EngineHandle::submit`] a request and read its events from a [`RequestStream`]:
//! a text delta with each token, one `Finished` per choice, then `Done` with the usage.
//! [`EngineHandle::generate`] does that for one request from a plain thread (a terminal
//! command, a test). Each step of the loop:
//!
//! 1. **schedule** — the scheduler (`scheduler.rs`) admits waiting requests and returns the
//!    step's plan: which sequences compute which positions into which blocks, who was
//!    preempted, who ran out of blocks;
//! 2. **execute** — one batched forward over the plan (the token masks of constrained
//!    sequences computed beside it), then a token for every sequence that reached its end,
//!    or several where drafts were checked (speculative decoding, below);
//! 3. **update** — the scheduler hears the tokens and the finished choices, names the
//!    blocks the step filled and gives back finished sequences' blocks;
//! 4. **emit** — each request's events on its channel, and the counters.
//!
//! The scheduler owns the queues and the block tables and alone asks the KV manager
//! ([`KvPool`]) for blocks; this loop owns each request's output side (`Decoding`:
//! sampling, grammar, stop strings, text) and knows nothing about queues.
//!
//! **Speculative decoding.** After a sequence takes a token, its output side drafts the
//! tokens likely to follow: under a grammar, those the grammar forces (fast-forward: the
//! keys, quotes and punctuation of a JSON schema), then those found by prompt lookup
//! (`draft.rs`), as far as the grammar allows. The next step computes the last token and
//! the drafts in one chunk with logits for every row. Row `i` then goes through the same
//! `Decoding::step` as a plain decode step would, on exactly the context a plain step would
//! see if drafts `..i` are right: the token it picks is kept, and the check goes on to the
//! next row only while the picked token is the draft. So the output is the one decoding
//! token by token gives — greedy, under a grammar (its mask applies at every row), and
//! seeded sampling too, token for token: the sampler draws the same uniform per token, and
//! with a drafter that proposes one token `d` with certainty (q = one-hot) this is the
//! rejection sampling of Leviathan et al. (2023): `d` is kept with probability `p(d)`, and
//! when it is not, the token drawn is distributed as `p` without `d`, renormalised. The keys
//! and values of rejected drafts are dropped (`Scheduler::drop_rejected`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{mpsc as tokio_mpsc, watch};

use crate::EngineError;
use crate::constraint::Constraint;
use crate::decoding::Decoding;
use crate::draft::{DraftJob, DraftModel, DraftSeq, ModelDrafter, Proposal};
use crate::generate::{FinishReason, GenerateRequest, LoadedModel, PREFILL_CHUNK};
use crate::kv::{KvCacheType, KvPool};
use crate::model::Logits;
use crate::sampler::{Sampled, log_softmax, top_n};
use crate::scheduler::{
    NewRequest, RequestId, ScheduledChunk, Scheduler, SchedulerConfig, SchedulerOutput,
};

/// Default KV cache budget: pages become resident only as blocks are first written.
pub const DEFAULT_KV_CACHE_MB: usize = 1024;

/// Default most tokens drafted by prompt lookup per sequence and step.
pub const DEFAULT_DRAFT_TOKENS: usize = 8;

/// Limits of one engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most sequences decoded together (a request with `n` choices takes `n`).
    pub max_running: usize,
    /// Most requests waiting for room; past that, `submit` answers [`SubmitError::QueueFull`].
    pub max_waiting: usize,
    /// Most tokens processed in one step (decode tokens first, then prompt chunks), so
    /// that a long prompt does not stall everyone else's stream.
    pub prefill_chunk: usize,
    /// Memory for the paged KV cache; the pool has as many blocks as fit.
    pub kv_cache_bytes: usize,
    /// Speculative decoding by prompt lookup: most tokens drafted per sequence and step
    /// (0 = off). Exact: the output is the same with or without.
    pub draft_tokens: usize,
    /// Under a grammar, draft the tokens it forces (checked in the same forward).
    pub grammar_fast_forward: bool,
    /// How the cache stores keys and values: q8_0 fits 1.9x the positions of f16 in the
    /// same memory.
    pub kv_cache_type: KvCacheType,
    /// A smaller model with the same tokenizer that drafts up to `draft_tokens` tokens per
    /// step (free text, and structured outputs where prompt lookup finds nothing). Its KV
    /// pool has as many blocks as the target's.
    pub draft_model: Option<DraftModel>,
}

impl EngineOptions {
    /// With speculative decoding and grammar fast-forward on (the defaults), or both off.
    pub fn speculative(self, on: bool) -> Self {
        let defaults = Self::default();
        Self {
            draft_tokens: if on { defaults.draft_tokens } else { 0 },
            grammar_fast_forward: on && defaults.grammar_fast_forward,
            draft_model: if on { self.draft_model } else { None },
            ..self
        }
    }

    /// One request at a time with room for a whole context: a terminal command
    /// (`verre run`), a benchmark, or the reference a batched run is compared with.
    pub fn one_at_a_time(model: &LoadedModel) -> Self {
        Self::one_at_a_time_as(model, KvCacheType::F16).expect("an f16 cache fits every model")
    }

    /// The same with the KV cache stored as `kind`.
    /// `kind` must fit the model ([`crate::model::Model::kv_layout`]).
    pub fn one_at_a_time_as(model: &LoadedModel, kind: KvCacheType) -> Result<Self> {
        let layout = model.model.kv_layout(kind)?;
        Ok(Self {
            max_running: 1,
            max_waiting: 1,
            kv_cache_bytes: KvPool::blocks_for(model.info().context_length) * layout.block_bytes(),
            kv_cache_type: kind,
            ..Self::default()
        })
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_running: 8,
            max_waiting: 64,
            prefill_chunk: PREFILL_CHUNK,
            kv_cache_bytes: DEFAULT_KV_CACHE_MB << 20,
            draft_tokens: DEFAULT_DRAFT_TOKENS,
            grammar_fast_forward: true,
            kv_cache_type: KvCacheType::default(),
            draft_model: None,
        }
    }
}

/// A generation request with the options that only the engine serves.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub generate: GenerateRequest,
    /// Independent completions of the same prompt; choice `i` of a seeded request uses
    /// seed `seed + i`, so the choices differ and each is reproducible.
    pub n: usize,
    /// Report the log-probability of every prompt token (a completion's `echo`).
    pub prompt_logprobs: bool,
    /// Speculative decoding and grammar fast-forward for this request: `None` takes the
    /// engine's options, `Some(false)` turns both off, `Some(true)` on.
    pub speculative: Option<bool>,
}

impl From<GenerateRequest> for EngineRequest {
    fn from(generate: GenerateRequest) -> Self {
        Self {
            generate,
            n: 1,
            prompt_logprobs: false,
            speculative: None,
        }
    }
}

/// What a request hears from the engine, in order.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// Once, when the request leaves the waiting queue.
    Admitted { queue_time: Duration },
    /// Once, before any token, when asked for: each prompt token with its log-probability
    /// (and top alternatives); the first token has none.
    PromptLogprobs(Vec<Option<Sampled>>),
    /// A token of choice `index` and the text it completed (may be empty while a
    /// multi-byte character or a possible stop string is held back).
    Token {
        index: usize,
        sampled: Sampled,
        text: String,
    },
    /// Choice `index` ended.
    Finished {
        index: usize,
        reason: FinishReason,
        completion_tokens: usize,
        /// Under a grammar: the time each token's mask took (benchmarks).
        mask_times: Vec<Duration>,
        /// The stop string that ended the choice (`reason` is `Stop`), if one did.
        stop: Option<String>,
    },
    /// Every choice ended; the last event.
    Done(Usage),
    /// The engine failed while running this request; the last event.
    Failed(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Tokens generated over all choices.
    pub completion_tokens: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the engine is busy: {0} requests are already waiting")]
    QueueFull(usize),
    #[error(transparent)]
    Invalid(#[from] EngineError),
    #[error("the engine has stopped")]
    Stopped,
}

/// Counters of one engine, as of its last step (`waiting` is live).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineMetrics {
    /// Requests being decoded.
    pub running: usize,
    /// Sequences being decoded (`running` counts a request of `n` choices once).
    pub running_sequences: usize,
    /// Requests submitted and not admitted yet.
    pub waiting: usize,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// Forward passes run.
    pub steps: u64,
    /// KV blocks referenced by running sequences, and in the pool.
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    /// Prompt tokens looked up in the prefix cache, and found there.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Requests preempted (blocks freed, tokens recomputed later) for lack of KV blocks.
    pub preemptions: u64,
    /// Speculative decoding: tokens drafted (forced by a grammar or found by prompt
    /// lookup) and checked, and those the model confirmed.
    pub draft_tokens: u64,
    pub accepted_draft_tokens: u64,
    /// Of those, the tokens a draft model wrote (the rest are forced by a grammar or
    /// found by prompt lookup), and those confirmed.
    pub model_draft_tokens: u64,
    pub model_accepted_draft_tokens: u64,
}

/// One finished generation, as [`EngineHandle::generate`] collects it.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Log-probability of each generated token, in order.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From admission to the first token.
    pub prefill_ms: f64,
    /// Everything after the first token.
    pub decode_ms: f64,
    /// Under a grammar: the time each token mask took.
    pub mask_times: Vec<Duration>,
}

impl Generation {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        per_second(self.prompt_tokens, self.prefill_ms)
    }

    /// Tokens after the first, over the time after the first.
    pub fn decode_tokens_per_second(&self) -> f64 {
        per_second(self.completion_tokens.saturating_sub(1), self.decode_ms)
    }
}

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

fn millis_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The events of one request. Dropping it cancels the request at the engine's next step.
pub struct RequestStream {
    events: tokio_mpsc::UnboundedReceiver<EngineEvent>,
}

impl RequestStream {
    pub async fn recv(&mut self) -> Option<EngineEvent> {
        self.events.recv().await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<EngineEvent>> {
        self.events.poll_recv(cx)
    }
}

/// A running engine. Cheap to clone; the engine thread ends when every handle is dropped
/// and its last request is done.
#[derive(Clone)]
pub struct EngineHandle {
    submissions: mpsc::Sender<Submission>,
    shared: Arc<Shared>,
}

struct Shared {
    options: EngineOptions,
    context_length: usize,
    /// Blocks in the KV pool.
    kv_blocks: usize,
    /// Token ids must be below this (the embedding table's size).
    vocab_size: usize,
    /// Submitted, not yet admitted: the bound that turns into `QueueFull`.
    waiting: AtomicUsize,
    metrics: watch::Sender<EngineMetrics>,
}

struct Submission {
    request: EngineRequest,
    events: tokio_mpsc::UnboundedSender<EngineEvent>,
    submitted: Instant,
}

impl EngineHandle {
    /// Start the engine thread for a model.
    pub fn spawn(model: Arc<LoadedModel>, options: EngineOptions) -> Result<Self> {
        anyhow::ensure!(options.max_running >= 1, "max_running must be at least 1");
        anyhow::ensure!(
            options.prefill_chunk >= 1,
            "prefill_chunk must be at least 1"
        );
        let block_bytes = model.model.kv_layout(options.kv_cache_type)?.block_bytes();
        let kv_blocks = options.kv_cache_bytes / block_bytes;
        anyhow::ensure!(
            kv_blocks >= 1,
            "the KV cache budget of {} bytes holds no block of {block_bytes} bytes",
            options.kv_cache_bytes,
        );
        let draft = options.draft_model.clone();
        if let Some(d) = &draft {
            d.check_vocabulary(&model)?;
        }
        let (submissions, inbox) = mpsc::channel();
        let shared = Arc::new(Shared {
            kv_blocks,
            vocab_size: model.info().vocab_size,
            options,
            context_length: model.info().context_length,
            waiting: AtomicUsize::new(0),
            metrics: watch::Sender::new(EngineMetrics::default()),
        });
        let engine_shared = shared.clone();
        thread::Builder::new()
            .name("verre-engine".into())
            .spawn(move || {
                let drafter = draft.as_ref().map(|d| &**d.model());
                EngineLoop::new(&model, drafter, engine_shared, inbox).run()
            })?;
        Ok(Self {
            submissions,
            shared,
        })
    }

    /// Queue a request. Checks it first: an invalid request or a full queue is refused
    /// here, never half-run.
    pub fn submit(&self, request: EngineRequest) -> Result<RequestStream, SubmitError> {
        self.validate(&request)?;
        let max_waiting = self.shared.options.max_waiting;
        self.shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < max_waiting).then_some(w + 1)
            })
            .map_err(SubmitError::QueueFull)?;
        let (events, rx) = tokio_mpsc::unbounded_channel();
        if self
            .submissions
            .send(Submission {
                request,
                events,
                submitted: Instant::now(),
            })
            .is_err()
        {
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Stopped);
        }
        Ok(RequestStream { events: rx })
    }

    fn validate(&self, request: &EngineRequest) -> Result<(), EngineError> {
        let max_running = self.shared.options.max_running;
        if request.n == 0 || request.n > max_running {
            return Err(EngineError::InvalidParameter(format!(
                "n must be between 1 and {max_running}"
            )));
        }
        let g = &request.generate;
        g.sampling
            .validate()
            .map_err(EngineError::InvalidParameter)?;
        let (prompt_tokens, context_length) = (g.prompt_ids.len(), self.shared.context_length);
        if prompt_tokens == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        // Checked here, not in the forward pass, where it would fail every request batched
        // with this one.
        let vocab = self.shared.vocab_size;
        if let Some(bad) = g.prompt_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidParameter(format!(
                "token id {bad} is outside the model's vocabulary of {vocab} tokens"
            )));
        }
        if prompt_tokens >= context_length {
            return Err(EngineError::ContextLength {
                prompt_tokens,
                context_length,
            });
        }
        let blocks = KvPool::blocks_for(prompt_tokens + 1);
        if blocks > self.shared.kv_blocks {
            return Err(EngineError::InvalidParameter(format!(
                "the prompt of {prompt_tokens} tokens needs {blocks} KV cache blocks; the cache holds {} (raise --kv-cache-mb)",
                self.shared.kv_blocks
            )));
        }
        Ok(())
    }

    /// Submit one request and wait for its answer, from a thread that is not running an
    /// async runtime (a terminal command, a test). `on_text` sees the text of each token
    /// as it comes; returning `false` cancels the request (finish reason `Cancelled`).
    /// A refused request is an [`EngineError`] when it is invalid.
    pub fn generate(
        &self,
        request: GenerateRequest,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let prompt_tokens = request.prompt_ids.len();
        let mut stream = self.submit(request.into()).map_err(|e| match e {
            // The caller can downcast to the `EngineError` itself.
            SubmitError::Invalid(e) => anyhow::Error::new(e),
            e => anyhow::Error::new(e),
        })?;
        let mut g = Generation {
            text: String::new(),
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            finish_reason: FinishReason::Length,
            prompt_tokens,
            completion_tokens: 0,
            prefill_ms: 0.0,
            decode_ms: 0.0,
            mask_times: Vec::new(),
        };
        let mut admitted = Instant::now();
        let mut first_token = None;
        loop {
            let Some(event) = stream.events.blocking_recv() else {
                anyhow::bail!("the engine stopped before the request was done");
            };
            match event {
                EngineEvent::Admitted { .. } => admitted = Instant::now(),
                EngineEvent::PromptLogprobs(_) => {}
                EngineEvent::Token { sampled, text, .. } => {
                    if first_token.is_none() {
                        g.prefill_ms = millis_since(admitted);
                        first_token = Some(Instant::now());
                    }
                    g.token_ids.push(sampled.token);
                    g.logprobs.push(sampled.logprob);
                    g.text.push_str(&text);
                    if !on_text(&text) {
                        // Dropping the stream cancels the request at the engine's next step.
                        g.finish_reason = FinishReason::Cancelled;
                        break;
                    }
                }
                EngineEvent::Finished {
                    reason, mask_times, ..
                } => {
                    g.finish_reason = reason;
                    g.mask_times = mask_times;
                }
                EngineEvent::Done(_) => break,
                EngineEvent::Failed(e) => anyhow::bail!("{e}"),
            }
        }
        g.completion_tokens = g.token_ids.len();
        if let Some(t) = first_token {
            g.decode_ms = millis_since(t);
        }
        Ok(g)
    }

    /// The counters now.
    pub fn metrics(&self) -> EngineMetrics {
        let mut m = *self.shared.metrics.borrow();
        m.waiting = self.shared.waiting.load(Ordering::Acquire);
        m
    }

    /// A receiver that sees the counters change after every step (tests await it).
    pub fn watch_metrics(&self) -> watch::Receiver<EngineMetrics> {
        self.shared.metrics.subscribe()
    }

    pub fn options(&self) -> &EngineOptions {
        &self.shared.options
    }
}

/// A request the engine has taken in: where its events go, and the output side of each
/// choice. The scheduler keeps what decides who runs (tokens, blocks, queues).
struct Request<'m> {
    events: tokio_mpsc::UnboundedSender<EngineEvent>,
    prompt: Vec<u32>,
    /// Generated tokens per choice, at most; already capped by the context.
    max_tokens: usize,
    /// Filled during prefill when the request asked for prompt log-probabilities.
    prompt_logprobs: Option<Vec<Option<Sampled>>>,
    choices: Vec<Choice<'m>>,
    /// Ended with an error (already sent); its remaining chunks are skipped.
    failed: bool,
    /// Most tokens drafted by prompt lookup per step, and whether forced tokens are
    /// drafted: this request's speculative decoding.
    draft_tokens: usize,
    fast_forward: bool,
}

struct Choice<'m> {
    dec: Decoding<'m>,
    finished: bool,
    /// Most tokens prompt lookup may draft next: halved when a draft is rejected, doubled
    /// (up to the request's `draft_tokens`) when one is taken whole, so that a sequence
    /// whose guesses keep failing spends little compute on them.
    lookup_cap: usize,
    /// With a draft model: this sequence in it, and what it proposed for the next check.
    /// (It drafts up to `draft_tokens`, while it is confident: `draft.rs`.)
    draft_seq: Option<DraftSeq>,
    proposed: Option<Proposed>,
}

/// A draft checked at the next step, beyond its tokens: where the draft model's part
/// starts, and for a sampling request the distributions its guesses were drawn from.
struct Proposed {
    /// The output length the draft follows (it is void once the output moved on).
    at: usize,
    /// Tokens before the model's (forced by the grammar).
    model_from: usize,
    len: usize,
    q: Vec<Option<Vec<f32>>>,
    /// The grammar cut the draft at a guess drawn from this distribution: the row after
    /// the draft checks that rejected guess.
    rejected_q: Option<Vec<f32>>,
}

/// The engine's thread: schedule, execute (forward, sample), update, emit.
struct EngineLoop<'m> {
    model: &'m LoadedModel,
    drafter: Option<ModelDrafter<'m>>,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Submission>,
    inbox_open: bool,
    scheduler: Scheduler,
    pool: KvPool,
    next_id: RequestId,
    /// Submitted, waiting in the scheduler's queue.
    pending: HashMap<RequestId, Submission>,
    /// Admitted (running or preempted).
    requests: HashMap<RequestId, Request<'m>>,
    metrics: EngineMetrics,
}

impl<'m> EngineLoop<'m> {
    fn new(
        model: &'m LoadedModel,
        draft_model: Option<&'m LoadedModel>,
        shared: Arc<Shared>,
        inbox: mpsc::Receiver<Submission>,
    ) -> Self {
        let options = &shared.options;
        let scheduler = Scheduler::new(SchedulerConfig {
            max_running: options.max_running,
            token_budget: options.prefill_chunk,
            context_length: shared.context_length,
        });
        let pool = model
            .model
            .new_kv_pool_as(options.kv_cache_type, shared.kv_blocks)
            .expect("the KV cache type was checked against the model in spawn");
        let drafter = draft_model.map(|d| {
            let pool = d.model.new_kv_pool(shared.kv_blocks);
            ModelDrafter::new(d, pool, shared.vocab_size, options.prefill_chunk)
        });
        Self {
            model,
            drafter,
            shared,
            inbox,
            inbox_open: true,
            scheduler,
            pool,
            next_id: 0,
            pending: HashMap::new(),
            requests: HashMap::new(),
            metrics: EngineMetrics::default(),
        }
    }

    fn run(mut self) {
        while self.receive() {
            self.cancel_dropped();
            let plan = self.scheduler.schedule(&mut self.pool);
            self.start_admitted(&plan);
            if !plan.chunks.is_empty() {
                match self.forward(&plan) {
                    Ok(logits) => {
                        self.scheduler.register_filled(&plan, &mut self.pool);
                        self.sample_and_emit(&plan, &logits);
                    }
                    Err(e) => self.fail_all(&format!("{e:#}")),
                }
                self.metrics.steps += 1;
            }
            for id in self.scheduler.free_finished(&mut self.pool) {
                self.forget(id);
            }
            self.publish();
        }
    }

    /// Take new submissions; wait for one when there is nothing else to do. False when
    /// every handle is gone and no work is left.
    fn receive(&mut self) -> bool {
        if self.scheduler.is_idle() {
            if !self.inbox_open {
                return false;
            }
            match self.inbox.recv() {
                Ok(s) => self.take(s),
                Err(_) => return false,
            }
        }
        loop {
            match self.inbox.try_recv() {
                Ok(s) => self.take(s),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.inbox_open = false;
                    return true;
                }
            }
        }
    }

    /// Queue a submission with the scheduler. `submit` has checked it already; one the
    /// scheduler still refuses fails alone.
    fn take(&mut self, submission: Submission) {
        let id = self.next_id;
        self.next_id += 1;
        let request = NewRequest {
            id,
            prompt: submission.request.generate.prompt_ids.clone(),
            n: submission.request.n,
            prompt_logprobs: submission.request.prompt_logprobs,
        };
        match self.scheduler.add(request, &self.pool) {
            Ok(()) => {
                self.pending.insert(id, submission);
            }
            Err(e) => {
                self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
                let _ = submission.events.send(EngineEvent::Failed(e.to_string()));
            }
        }
    }

    /// Requests whose receiver was dropped stop here; their blocks go back to the pool.
    fn cancel_dropped(&mut self) {
        let dropped: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, s)| s.events.is_closed())
            .map(|(id, _)| *id)
            .chain(
                self.requests
                    .iter()
                    .filter(|(_, r)| r.events.is_closed())
                    .map(|(id, _)| *id),
            )
            .collect();
        for id in dropped {
            if self.scheduler.abort(id, &mut self.pool) {
                self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            self.pending.remove(&id);
            self.forget(id);
        }
    }

    /// A request leaves: its sequences' blocks in the draft model go back.
    fn forget(&mut self, id: RequestId) -> Option<Request<'m>> {
        let mut req = self.requests.remove(&id)?;
        if let Some(drafter) = self.drafter.as_mut() {
            for choice in &mut req.choices {
                if let Some(seq) = choice.draft_seq.as_mut() {
                    drafter.release(seq);
                }
            }
        }
        Some(req)
    }

    /// Requests the scheduler admitted get their output side and hear `Admitted`; choices
    /// it ended for lack of blocks hear `Finished`.
    fn start_admitted(&mut self, plan: &SchedulerOutput) {
        for id in &plan.admitted {
            let Some(s) = self.pending.remove(id) else {
                continue;
            };
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
            self.metrics.prompt_tokens += s.request.generate.prompt_ids.len() as u64;
            let _ = s.events.send(EngineEvent::Admitted {
                queue_time: s.submitted.elapsed(),
            });
            let request = self.start(s);
            self.requests.insert(*id, request);
        }
        self.metrics.preemptions += plan.preempted.len() as u64;
        for &(id, c) in &plan.out_of_blocks {
            if let Some(req) = self.requests.get_mut(&id) {
                finish_out_of_blocks(req, c);
            }
        }
    }

    fn start(&self, s: Submission) -> Request<'m> {
        let EngineRequest {
            generate: g,
            n,
            prompt_logprobs,
            speculative,
        } = s.request;
        let options = &self.shared.options;
        let (draft_tokens, fast_forward) = match speculative {
            None => (options.draft_tokens, options.grammar_fast_forward),
            Some(false) => (0, false),
            Some(true) => (options.draft_tokens.max(1), true),
        };
        let max_tokens = g
            .max_tokens
            .min(self.shared.context_length - g.prompt_ids.len());
        let draft_capacity = self
            .drafter
            .as_ref()
            .filter(|_| draft_tokens > 0)
            .map(|d| d.context_length().min(self.shared.context_length));
        let choices = (0..n)
            .map(|i| {
                let mut sampling = g.sampling.clone();
                sampling.seed = sampling.seed.map(|seed| seed.wrapping_add(i as u64));
                Choice {
                    draft_seq: draft_capacity.map(|cap| DraftSeq::new(cap, &sampling)),
                    dec: Decoding::new(&self.model.tokenizer, &g, sampling, max_tokens),
                    finished: false,
                    lookup_cap: draft_tokens,
                    proposed: None,
                }
            })
            .collect();
        Request {
            events: s.events,
            max_tokens,
            prompt_logprobs: prompt_logprobs.then(|| vec![None]),
            prompt: g.prompt_ids,
            choices,
            failed: false,
            draft_tokens,
            fast_forward,
        }
    }

    /// One batched pass over the weights for every chunk of the plan. The token masks of
    /// constrained sequences that sample in this step are computed meanwhile: they need
    /// the tokens so far, not the logits.
    fn forward(&mut self, plan: &SchedulerOutput) -> Result<Logits> {
        let mut sampling: Vec<(RequestId, usize)> = plan
            .chunks
            .iter()
            .filter(|c| c.samples)
            .map(|c| (c.request, c.choice))
            .collect();
        sampling.sort_unstable();
        let constraints: Vec<&mut Constraint> = self
            .requests
            .iter_mut()
            .flat_map(|(id, req)| {
                req.choices
                    .iter_mut()
                    .enumerate()
                    .map(move |(c, choice)| (*id, c, choice))
            })
            .filter(|(id, c, _)| sampling.binary_search(&(*id, *c)).is_ok())
            .filter_map(|(_, _, choice)| choice.dec.constraint.as_mut())
            .collect();
        let model = &self.model.model;
        let pool = &mut self.pool;
        let mut batch = self.scheduler.batch(plan);
        if constraints.is_empty() {
            return model.forward(pool, &mut batch);
        }
        let (logits, ()) = rayon::join(
            || model.forward(pool, &mut batch),
            || {
                for c in constraints {
                    // An error shows again, for this request only, when the mask is applied.
                    let _ = c.compute_mask();
                }
            },
        );
        logits
    }

    fn sample_and_emit(&mut self, plan: &SchedulerOutput, logits: &Logits) {
        // Sequences the draft model writes for after this step: (request, choice, the
        // tokens forced before its part).
        let mut for_the_model = Vec::new();
        for (row, chunk) in plan.chunks.iter().enumerate() {
            let Some(req) = self.requests.get_mut(&chunk.request) else {
                continue;
            };
            if req.failed {
                continue;
            }
            if chunk.all_logits && chunk.draft == 0 {
                record_prompt_logprobs(req, chunk, logits, row);
            }
            if !chunk.samples {
                continue; // more prompt (or recomputed output) to go
            }
            if let Some(lps) = req.prompt_logprobs.take() {
                // The prompt is done: its log-probabilities go out before any token.
                let _ = req.events.send(EngineEvent::PromptLogprobs(lps));
            }
            let choice = &mut req.choices[chunk.choice];
            if req.max_tokens == 0 {
                finish_choice(req, chunk.choice, FinishReason::Length);
                self.scheduler.finish(chunk.request, chunk.choice);
                continue;
            }
            // The rows that pick tokens: the last one, or with drafts the last `draft + 1`.
            let first = logits.rows[row].end - 1 - chunk.draft;
            let drafted = &chunk.tokens[chunk.tokens.len() - chunk.draft..];
            let proposed = choice
                .proposed
                .take()
                .filter(|p| p.at == choice.dec.output.len() && p.len == chunk.draft);
            let mut finish = None;
            let mut accepted: usize = 0;
            for i in 0..=chunk.draft {
                // A draft model's guess drawn from q is checked against q (sampling).
                let check = proposed.as_ref().and_then(|p| match p.q.get(i) {
                    Some(q) => q.as_deref().map(|q| (Some(drafted[i]), q)),
                    None => p.rejected_q.as_deref().map(|q| (None, q)),
                });
                let step = match choice.dec.step(logits.row(first + i), &req.prompt, check) {
                    Ok(step) => step,
                    Err(e) => {
                        fail_request(req, &format!("constrained decoding failed: {e:#}"));
                        self.scheduler.finish_request(chunk.request);
                        break;
                    }
                };
                let token = step.sampled.token;
                self.metrics.generation_tokens += 1;
                self.scheduler
                    .append_token(chunk.request, chunk.choice, token);
                let _ = req.events.send(EngineEvent::Token {
                    index: chunk.choice,
                    sampled: step.sampled,
                    text: step.text,
                });
                if step.finish.is_some() {
                    finish = step.finish;
                    break;
                }
                match drafted.get(i) {
                    Some(&d) if d == token => accepted += 1,
                    _ => break,
                }
            }
            if req.failed {
                continue;
            }
            self.metrics.draft_tokens += chunk.draft as u64;
            self.metrics.accepted_draft_tokens += accepted as u64;
            let choice = &mut req.choices[chunk.choice];
            let by_model = proposed.as_ref().map_or(0, |p| p.len - p.model_from);
            if by_model > 0 {
                let model_from = chunk.draft - by_model;
                let confirmed = accepted.saturating_sub(model_from);
                self.metrics.model_draft_tokens += by_model as u64;
                self.metrics.model_accepted_draft_tokens += confirmed as u64;
            } else if chunk.draft > 0 {
                choice.lookup_cap = if accepted == chunk.draft {
                    (choice.lookup_cap * 2).clamp(1, req.draft_tokens.max(1))
                } else {
                    (choice.lookup_cap / 2).max(1)
                };
            }
            if chunk.draft > 0 {
                self.scheduler
                    .drop_rejected(chunk.request, chunk.choice, &mut self.pool);
            }
            if let (Some(drafter), Some(seq)) = (self.drafter.as_mut(), choice.draft_seq.as_mut()) {
                if finish.is_some() {
                    drafter.release(seq);
                } else if seq.len() > req.prompt.len() {
                    // Its cache keeps exactly the accepted tokens.
                    let mut confirmed = req.prompt.clone();
                    confirmed.extend_from_slice(&choice.dec.output);
                    drafter.keep_confirmed(seq, &confirmed);
                }
            }
            match finish {
                Some(reason) => {
                    finish_choice(req, chunk.choice, reason);
                    self.scheduler.finish(chunk.request, chunk.choice);
                }
                None if req.draft_tokens > 0 || req.fast_forward => {
                    let choice = &mut req.choices[chunk.choice];
                    let lookup = choice.lookup_cap.min(req.draft_tokens);
                    let (draft, forced) = choice.dec.draft(&req.prompt, lookup, req.fast_forward);
                    // The drafter: prompt lookup where it finds a match under a grammar
                    // (copying from the document), the draft model everywhere else.
                    let found = draft.len() > forced;
                    let model =
                        choice.draft_seq.is_some() && !(found && choice.dec.constraint.is_some());
                    if model {
                        let mut forced_tokens = draft;
                        forced_tokens.truncate(forced);
                        for_the_model.push((chunk.request, chunk.choice, forced_tokens));
                    } else {
                        self.scheduler.set_draft(chunk.request, chunk.choice, draft);
                    }
                }
                None => {}
            }
        }
        if !for_the_model.is_empty() {
            self.draft_with_model(for_the_model);
        }
    }

    /// The draft model writes on after each sequence's output and forced tokens, all of
    /// them batched; each draft goes to the scheduler for the next step's check. A draft
    /// model that fails drafts nothing (the target decodes on without).
    fn draft_with_model(&mut self, wants: Vec<(RequestId, usize, Vec<u32>)>) {
        let Some(drafter) = self.drafter.as_mut() else {
            return;
        };
        let mut by_request: HashMap<RequestId, Vec<(usize, usize)>> = HashMap::new();
        for (i, (id, c, _)) in wants.iter().enumerate() {
            by_request.entry(*id).or_default().push((*c, i));
        }
        // Jobs in the order of `wants`.
        let mut jobs: Vec<Option<DraftJob<'_>>> = wants.iter().map(|_| None).collect();
        for (id, req) in self.requests.iter_mut() {
            let Some(wanted) = by_request.get(id) else {
                continue;
            };
            let draft_tokens = req.draft_tokens;
            let prompt = &req.prompt;
            for (c, choice) in req.choices.iter_mut().enumerate() {
                let Some(&(_, i)) = wanted.iter().find(|(wc, _)| *wc == c) else {
                    continue;
                };
                let forced = &wants[i].2;
                let mut context = prompt.clone();
                context.extend_from_slice(&choice.dec.output);
                context.extend_from_slice(forced);
                let max = draft_tokens;
                let seq = choice
                    .draft_seq
                    .as_mut()
                    .expect("wanted only with a draft seq");
                jobs[i] = Some(DraftJob {
                    seq,
                    context,
                    prompt_len: prompt.len(),
                    max,
                });
            }
        }
        let asked: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].is_some()).collect();
        let mut jobs: Vec<DraftJob<'_>> = jobs.into_iter().flatten().collect();
        let proposals = match drafter.propose(&mut jobs) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("the draft model failed, decoding on without it: {e:#}");
                for job in &mut jobs {
                    drafter.release(job.seq);
                }
                Vec::new()
            }
        };
        drop(jobs);
        let mut by_want: Vec<Option<Proposal>> = wants.iter().map(|_| None).collect();
        for (i, p) in asked.into_iter().zip(proposals) {
            by_want[i] = Some(p);
        }
        for (i, (id, c, forced)) in wants.into_iter().enumerate() {
            let (Some(req), Some(proposal)) = (self.requests.get_mut(&id), by_want[i].take())
            else {
                continue;
            };
            let choice = &mut req.choices[c];
            let model_from = forced.len();
            let mut draft = forced;
            draft.extend_from_slice(&proposal.tokens);
            let mut q: Vec<Option<Vec<f32>>> = vec![None; model_from];
            q.extend(proposal.q);
            let grammar_cut = choice.dec.fit_draft(&mut draft);
            let rejected_q = if grammar_cut {
                q.get_mut(draft.len()).and_then(Option::take)
            } else {
                None
            };
            q.truncate(draft.len());
            choice.proposed = Some(Proposed {
                at: choice.dec.output.len(),
                model_from: model_from.min(draft.len()),
                len: draft.len(),
                q,
                rejected_q,
            });
            self.scheduler.set_draft(id, c, draft);
        }
    }

    fn fail_all(&mut self, error: &str) {
        tracing::error!("engine step failed: {error}");
        for id in self.scheduler.abort_running(&mut self.pool) {
            if let Some(req) = self.forget(id) {
                let _ = req.events.send(EngineEvent::Failed(error.to_string()));
            }
        }
    }

    fn publish(&mut self) {
        self.metrics.running = self.scheduler.num_running();
        self.metrics.running_sequences = self.scheduler.num_running_sequences();
        self.metrics.waiting =
            self.shared.waiting.load(Ordering::Acquire) + self.scheduler.num_preempted();
        self.metrics.kv_blocks_used = self.pool.allocator().used();
        self.metrics.kv_blocks_total = self.pool.num_blocks();
        self.metrics.prefix_cache_queries = self.pool.stats.queries;
        self.metrics.prefix_cache_hits = self.pool.stats.hits;
        self.shared.metrics.send_replace(self.metrics);
    }
}

/// A choice that cannot get a block even with nothing else running ends here, as if it had
/// reached its token limit.
fn finish_out_of_blocks(req: &mut Request<'_>, c: usize) {
    let choice = &mut req.choices[c];
    choice.finished = true;
    let text = choice.dec.flush();
    tracing::warn!(
        "the KV cache is full: a sequence of {} tokens ends early ({} bytes of held-back text dropped)",
        req.prompt.len() + choice.dec.output.len(),
        text.len()
    );
    let _ = req.events.send(EngineEvent::Finished {
        index: c,
        reason: FinishReason::Length,
        completion_tokens: choice.dec.output.len(),
        mask_times: choice.dec.mask_times(),
        stop: None,
    });
    send_done_if_complete(req);
}

/// A choice ended: `Finished`, and `Done` if it was the last.
fn finish_choice(req: &mut Request<'_>, c: usize, reason: FinishReason) {
    let choice = &mut req.choices[c];
    choice.finished = true;
    let _ = req.events.send(EngineEvent::Finished {
        index: c,
        reason,
        completion_tokens: choice.dec.output.len(),
        mask_times: choice.dec.mask_times(),
        stop: choice.dec.stop_string().map(str::to_string),
    });
    send_done_if_complete(req);
}

/// `Done` once every choice has finished.
fn send_done_if_complete(req: &Request<'_>) {
    if req.choices.iter().all(|s| s.finished) {
        let _ = req.events.send(EngineEvent::Done(Usage {
            prompt_tokens: req.prompt.len(),
            completion_tokens: req.choices.iter().map(|s| s.dec.output.len()).sum(),
        }));
    }
}

/// End one request with an error; the others go on.
fn fail_request(req: &mut Request<'_>, error: &str) {
    tracing::warn!("request failed: {error}");
    req.failed = true;
    for choice in &mut req.choices {
        choice.finished = true;
    }
    let _ = req.events.send(EngineEvent::Failed(error.to_string()));
}

/// Prompt log-probabilities from the rows of a prompt chunk: row `i` predicts the token at
/// position `start + i + 1`.
fn record_prompt_logprobs(
    req: &mut Request<'_>,
    chunk: &ScheduledChunk,
    logits: &Logits,
    row: usize,
) {
    let top_logprobs = req.choices[0].dec.sampler.params().top_logprobs;
    let Some(lps) = req.prompt_logprobs.as_mut() else {
        return;
    };
    for (i, logits_row) in logits.rows[row].clone().enumerate() {
        let next = chunk.positions.start + i + 1;
        let Some(&token) = req.prompt.get(next) else {
            break;
        };
        let lp = log_softmax(logits.row(logits_row));
        lps.push(Some(Sampled {
            token,
            logprob: lp[token as usize],
            top: top_n(&lp, top_logprobs),
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::SamplingParams;
    use crate::kv::BLOCK_TOKENS;

    fn model() -> Option<Arc<LoadedModel>> {
        let Some(path) = std::env::var_os("VERRE_SMOLLM2_GGUF").map(PathBuf::from) else {
            eprintln!("skipped: set VERRE_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf");
            return None;
        };
        Some(Arc::new(LoadedModel::load(path).unwrap()))
    }

    fn request(model: &LoadedModel, prompt: &str, max_tokens: usize) -> GenerateRequest {
        GenerateRequest {
            prompt_ids: model
                .chat_prompt(&[crate::Message::new("user", prompt)])
                .unwrap(),
            max_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            grammar: None,
        }
    }

    /// What a lone run of `req` gives, worked out without the engine: the model's plain
    /// forward over a cache of its own and the sampler, token by token. Covers what these
    /// tests ask for (greedy or seeded sampling, EOS, the token limit), not grammars or
    /// stop strings.
    fn reference(model: &LoadedModel, req: &GenerateRequest) -> (Vec<u32>, FinishReason) {
        assert!(req.grammar.is_none() && req.stop.is_empty());
        let mut kv = model.new_kv_cache();
        let mut logits = model.prefill(&mut kv, &req.prompt_ids).unwrap();
        let mut sampler = crate::Sampler::new(req.sampling.clone());
        let mut output = Vec::new();
        while output.len() < req.max_tokens {
            let token = sampler.sample(&logits, &req.prompt_ids, &output).token;
            output.push(token);
            if !req.ignore_eos && model.tokenizer.eog_ids().contains(&token) {
                return (output, FinishReason::Stop);
            }
            logits = model
                .model
                .forward_cache(&mut kv, &[token], false)
                .unwrap()
                .last_row(0)
                .to_vec();
        }
        (output, FinishReason::Length)
    }

    struct Collected {
        text: Vec<String>,
        tokens: Vec<Vec<u32>>,
        finish: Vec<Option<FinishReason>>,
        usage: Option<Usage>,
        prompt_logprobs: Option<Vec<Option<Sampled>>>,
    }

    fn collect(mut stream: RequestStream, n: usize) -> Collected {
        let mut c = Collected {
            text: vec![String::new(); n],
            tokens: vec![Vec::new(); n],
            finish: vec![None; n],
            usage: None,
            prompt_logprobs: None,
        };
        while let Some(ev) = stream.events.blocking_recv() {
            match ev {
                EngineEvent::Admitted { .. } => {}
                EngineEvent::PromptLogprobs(lps) => c.prompt_logprobs = Some(lps),
                EngineEvent::Token {
                    index,
                    sampled,
                    text,
                } => {
                    assert!(c.finish[index].is_none(), "token after finish");
                    c.text[index].push_str(&text);
                    c.tokens[index].push(sampled.token);
                }
                EngineEvent::Finished { index, reason, .. } => c.finish[index] = Some(reason),
                EngineEvent::Done(u) => c.usage = Some(u),
                EngineEvent::Failed(e) => panic!("{e}"),
            }
        }
        c
    }

    #[test]
    fn batched_requests_match_the_plain_forward_and_a_lone_run() {
        let Some(model) = model() else { return };
        let engine = EngineHandle::spawn(model.clone(), EngineOptions::default()).unwrap();
        let prompts = [
            "What is the capital of France?",
            "Count to five.",
            "Say hi.",
        ];
        let streams: Vec<_> = prompts
            .iter()
            .map(|p| engine.submit(request(&model, p, 24).into()).unwrap())
            .collect();
        let lone =
            EngineHandle::spawn(model.clone(), EngineOptions::one_at_a_time(&model)).unwrap();
        for (p, stream) in prompts.iter().zip(streams) {
            let got = collect(stream, 1);
            let r = request(&model, p, 24);
            let (tokens, finish) = reference(&model, &r);
            assert_eq!(got.tokens[0], tokens, "{p}");
            assert_eq!(got.finish[0], Some(finish));
            assert_eq!(
                got.usage,
                Some(Usage {
                    prompt_tokens: r.prompt_ids.len(),
                    completion_tokens: tokens.len()
                })
            );
            let alone = lone.generate(r, |_| true).unwrap();
            assert_eq!(got.text[0], alone.text, "{p}");
            assert_eq!(alone.token_ids, tokens, "{p}");
        }
    }

    #[test]
    fn n_choices_with_a_seed_differ_and_reproduce() {
        let Some(model) = model() else { return };
        let engine = EngineHandle::spawn(model.clone(), EngineOptions::default()).unwrap();
        let mut g = request(&model, "Tell me a story.", 16);
        g.sampling.temperature = 1.0;
        g.sampling.seed = Some(42);
        let req = EngineRequest {
            generate: g,
            n: 2,
            prompt_logprobs: false,
            speculative: None,
        };
        let a = collect(engine.submit(req.clone()).unwrap(), 2);
        let b = collect(engine.submit(req).unwrap(), 2);
        assert_eq!(a.tokens, b.tokens);
        assert_ne!(a.tokens[0], a.tokens[1]);
        let usage = a.usage.unwrap();
        assert_eq!(
            usage.completion_tokens,
            a.tokens[0].len() + a.tokens[1].len()
        );
    }

    #[test]
    fn prompt_logprobs_cover_every_prompt_token_across_chunks() {
        let Some(model) = model() else { return };
        let options = EngineOptions {
            prefill_chunk: 7,
            ..Default::default()
        };
        let engine = EngineHandle::spawn(model.clone(), options).unwrap();
        let mut g = request(&model, "The quick brown fox jumps over the lazy dog.", 0);
        g.sampling.top_logprobs = 2;
        let prompt = g.prompt_ids.clone();
        let c = collect(
            engine
                .submit(EngineRequest {
                    generate: g,
                    n: 1,
                    prompt_logprobs: true,
                    speculative: None,
                })
                .unwrap(),
            1,
        );
        let lps = c.prompt_logprobs.unwrap();
        assert_eq!(lps.len(), prompt.len());
        assert!(lps[0].is_none());
        for (lp, &t) in lps[1..].iter().zip(&prompt[1..]) {
            let lp = lp.as_ref().unwrap();
            assert_eq!(lp.token, t);
            assert!(lp.logprob <= 0.0 && lp.top.len() == 2);
        }
        assert_eq!(c.finish[0], Some(FinishReason::Length));
        assert!(c.tokens[0].is_empty());
    }

    #[test]
    fn a_dropped_stream_is_cancelled_and_freed() {
        let Some(model) = model() else { return };
        let engine = EngineHandle::spawn(model.clone(), EngineOptions::default()).unwrap();
        let mut g = request(&model, "Write a long essay about the sea.", 10_000);
        g.ignore_eos = true;
        let mut stream = engine.submit(g.into()).unwrap();
        let mut watch = engine.watch_metrics();
        assert!(matches!(
            stream.events.blocking_recv(),
            Some(EngineEvent::Admitted { .. })
        ));
        assert!(matches!(
            stream.events.blocking_recv(),
            Some(EngineEvent::Token { .. })
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(watch.wait_for(|m| m.running == 1)).unwrap();
        drop(stream);
        rt.block_on(watch.wait_for(|m| m.running == 0)).unwrap();
        let after = engine.metrics().generation_tokens;
        // A later request runs alone: the cancelled one produces nothing more.
        let c = collect(engine.submit(request(&model, "Hi", 4).into()).unwrap(), 1);
        let m = rt
            .block_on(watch.wait_for(|m| m.running == 0))
            .map(|m| *m)
            .unwrap();
        assert_eq!(m.generation_tokens, after + c.tokens[0].len() as u64);
    }

    /// `generate` streams text to its callback; `false` from it (a closed pipe) cancels the
    /// request, which the engine then frees.
    #[test]
    fn generate_streams_and_a_callback_can_cancel() {
        let Some(model) = model() else { return };
        let engine =
            EngineHandle::spawn(model.clone(), EngineOptions::one_at_a_time(&model)).unwrap();
        let mut streamed = String::new();
        let done = engine
            .generate(request(&model, "Count to five.", 12), |t| {
                streamed.push_str(t);
                true
            })
            .unwrap();
        assert_eq!(streamed, done.text);
        assert_eq!(done.completion_tokens, done.token_ids.len());
        assert_eq!(done.logprobs.len(), done.token_ids.len());
        let mut calls = 0;
        let mut r = request(&model, "Write a long essay about the sea.", 10_000);
        r.ignore_eos = true;
        let cut = engine
            .generate(r, |_| {
                calls += 1;
                calls < 3
            })
            .unwrap();
        assert_eq!(cut.finish_reason, FinishReason::Cancelled);
        assert_eq!(cut.token_ids.len(), 3);
        let m = idle_metrics(&engine);
        assert_eq!((m.running, m.kv_blocks_used), (0, 0));
    }

    #[test]
    fn a_full_queue_refuses_and_bad_requests_are_invalid() {
        let Some(model) = model() else { return };
        let options = EngineOptions {
            max_waiting: 0,
            ..Default::default()
        };
        let engine = EngineHandle::spawn(model.clone(), options).unwrap();
        let g = request(&model, "Hi", 4);
        assert!(matches!(
            engine.submit(g.clone().into()),
            Err(SubmitError::QueueFull(0))
        ));
        let mut too_long = g.clone();
        too_long.prompt_ids = vec![1; model.info().context_length];
        assert!(matches!(
            engine.submit(too_long.into()),
            Err(SubmitError::Invalid(EngineError::ContextLength { .. }))
        ));
        let many = EngineRequest {
            generate: g,
            n: 99,
            prompt_logprobs: false,
            speculative: None,
        };
        assert!(matches!(
            engine.submit(many),
            Err(SubmitError::Invalid(EngineError::InvalidParameter(_)))
        ));
    }

    #[test]
    fn out_of_vocabulary_prompt_ids_are_refused_at_submission() {
        let Some(model) = model() else { return };
        let engine = EngineHandle::spawn(model.clone(), EngineOptions::default()).unwrap();
        let vocab = model.info().vocab_size as u32;
        let mut r = request(&model, "hi", 4);
        r.prompt_ids.push(vocab);
        match engine.submit(r.into()) {
            Err(SubmitError::Invalid(EngineError::InvalidParameter(m))) => {
                assert!(m.contains(&vocab.to_string()), "{m}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted an id outside the vocabulary"),
        }
    }

    /// Waits until the engine has published a step with nothing running.
    fn idle_metrics(engine: &EngineHandle) -> EngineMetrics {
        let mut rx = engine.watch_metrics();
        loop {
            let m = *rx.borrow_and_update();
            if m.running == 0 && m.waiting == 0 {
                return m;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(rx.changed()).unwrap();
        }
    }

    /// A pool too small for everyone at once: requests wait for blocks, the last admitted
    /// are preempted and recomputed, and every answer is still the one a lone run gives —
    /// greedy and seeded alike.
    #[test]
    fn preemption_recomputes_to_the_same_answers() {
        let Some(model) = model() else { return };
        let options = EngineOptions {
            kv_cache_bytes: 14
                * model
                    .model
                    .kv_layout(KvCacheType::F16)
                    .unwrap()
                    .block_bytes(),
            max_running: 4,
            ..Default::default()
        };
        let engine = EngineHandle::spawn(model.clone(), options).unwrap();
        let prompts = [
            "Write a short poem about the sea.",
            "List three fruits.",
            "Explain what a compiler does.",
            "Tell me a joke about cats.",
        ];
        let requests: Vec<GenerateRequest> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut r = request(&model, p, 56);
                r.ignore_eos = true;
                if i % 2 == 1 {
                    r.sampling = SamplingParams {
                        temperature: 0.8,
                        seed: Some(i as u64),
                        ..Default::default()
                    };
                }
                r
            })
            .collect();
        let streams: Vec<_> = requests
            .iter()
            .map(|r| engine.submit(r.clone().into()).unwrap())
            .collect();
        for (r, stream) in requests.iter().zip(streams) {
            let got = collect(stream, 1);
            assert_eq!(got.tokens[0], reference(&model, r).0);
        }
        let m = idle_metrics(&engine);
        assert!(m.preemptions > 0, "the pool was meant to run out: {m:?}");
        assert_eq!(m.kv_blocks_used, 0, "blocks leaked: {m:?}");
        assert_eq!(m.kv_blocks_total, 14);
    }

    /// The same long prompt twice: the second is served from the prefix cache (all but
    /// the last partial block), with the same answer.
    #[test]
    fn a_repeated_long_prompt_is_served_from_the_prefix_cache() {
        let Some(model) = model() else { return };
        let engine = EngineHandle::spawn(model.clone(), EngineOptions::default()).unwrap();
        let doc = "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(40);
        let r = request(&model, &format!("{doc}\nSummarise this."), 8);
        let prompt = r.prompt_ids.len();
        assert!(prompt > 400);
        let first = collect(engine.submit(r.clone().into()).unwrap(), 1);
        let m1 = idle_metrics(&engine);
        let second = collect(engine.submit(r.clone().into()).unwrap(), 1);
        let m2 = idle_metrics(&engine);
        assert_eq!(first.tokens, second.tokens);
        let hits = m2.prefix_cache_hits - m1.prefix_cache_hits;
        assert!(
            hits as f64 >= 0.9 * prompt as f64,
            "{hits} of {prompt} prompt tokens from the cache"
        );
        assert_eq!(
            m2.prefix_cache_queries - m1.prefix_cache_queries,
            prompt as u64
        );
    }

    /// The choices of one request share the prompt's blocks instead of each computing it.
    #[test]
    fn n_choices_share_the_prompt_blocks() {
        let Some(model) = model() else { return };
        let engine = EngineHandle::spawn(model.clone(), EngineOptions::default()).unwrap();
        let mut r = request(&model, &"Tell me about the history of Lyon. ".repeat(10), 4);
        r.sampling = SamplingParams {
            temperature: 1.0,
            seed: Some(3),
            ..Default::default()
        };
        let prompt = r.prompt_ids.len();
        let got = collect(
            engine
                .submit(EngineRequest {
                    generate: r,
                    n: 3,
                    prompt_logprobs: false,
                    speculative: None,
                })
                .unwrap(),
            3,
        );
        assert!(got.finish.iter().all(Option::is_some));
        let m = idle_metrics(&engine);
        let shareable = (prompt - 1) / BLOCK_TOKENS * BLOCK_TOKENS;
        assert!(
            m.prefix_cache_hits >= 2 * shareable as u64,
            "{} hits, {shareable} shareable tokens per extra choice",
            m.prefix_cache_hits
        );
        assert_eq!(m.kv_blocks_used, 0);
    }
}
