//! The engine loop: every running request decoded together, on a thread of its own.
//!
//! Callers [`EngineHandle::submit`] a request and read its events from a [`RequestStream`]:
//! a text delta with each token, one `Finished` per choice, then `Done` with the usage.
//! Each step of the loop:
//!
//! 1. **schedule** — take in new submissions, drop requests whose receiver is gone (their
//!    caches are freed), admit waiting requests first come first served while there is room,
//!    and plan one forward pass: a prompt chunk for each sequence still in prefill (at most
//!    `prefill_chunk` prompt tokens in all) and one token for each sequence in decode;
//! 2. **forward** — one batched pass over the weights for the whole plan;
//! 3. **sample** — pick the next token of every sequence whose prompt is done;
//! 4. **emit** — send each request its events and publish the counters.
//!
//! The plan is plain data and the step that executes it knows nothing about queues, so the
//! paged KV cache and the token-budget scheduler (preemption, prefix sharing) can replace
//! `Scheduler::plan` and the per-sequence caches without changing the loop's shape.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll};
use std::thread;

use anyhow::Result;
use tokio::sync::{mpsc as tokio_mpsc, watch};

use crate::EngineError;
use crate::constraint::Constraint;
use crate::generate::{FinishReason, GenerateRequest, LoadedModel, PREFILL_CHUNK, StopMatcher};
use crate::kv::KvCache;
use crate::model::{Logits, SeqChunk};
use crate::sampler::{Sampled, Sampler, log_softmax, top_n};
use crate::tokenizer::StreamDecoder;

/// Limits of one engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most sequences decoded together (a request with `n` choices takes `n`).
    pub max_running: usize,
    /// Most requests waiting for room; past that, `submit` answers [`SubmitError::QueueFull`].
    pub max_waiting: usize,
    /// Most prompt tokens processed in one step, over all sequences in prefill, so that a
    /// long prompt does not stall everyone else's stream.
    pub prefill_chunk: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_running: 8,
            max_waiting: 64,
            prefill_chunk: PREFILL_CHUNK,
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
}

impl From<GenerateRequest> for EngineRequest {
    fn from(generate: GenerateRequest) -> Self {
        Self {
            generate,
            n: 1,
            prompt_logprobs: false,
        }
    }
}

/// What a request hears from the engine, in order.
#[derive(Debug, Clone)]
pub enum EngineEvent {
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
    /// Submitted, not yet admitted: the bound that turns into `QueueFull`.
    waiting: AtomicUsize,
    metrics: watch::Sender<EngineMetrics>,
}

struct Submission {
    request: EngineRequest,
    events: tokio_mpsc::UnboundedSender<EngineEvent>,
}

impl EngineHandle {
    /// Start the engine thread for a model.
    pub fn spawn(model: Arc<LoadedModel>, options: EngineOptions) -> Result<Self> {
        anyhow::ensure!(options.max_running >= 1, "max_running must be at least 1");
        anyhow::ensure!(
            options.prefill_chunk >= 1,
            "prefill_chunk must be at least 1"
        );
        let (submissions, inbox) = mpsc::channel();
        let shared = Arc::new(Shared {
            options,
            context_length: model.info().context_length,
            waiting: AtomicUsize::new(0),
            metrics: watch::Sender::new(EngineMetrics::default()),
        });
        let engine_shared = shared.clone();
        thread::Builder::new()
            .name("verre-engine".into())
            .spawn(move || EngineLoop::new(&model, engine_shared, inbox).run())?;
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
            .send(Submission { request, events })
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
        if prompt_tokens >= context_length {
            return Err(EngineError::ContextLength {
                prompt_tokens,
                context_length,
            });
        }
        Ok(())
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

/// One request being decoded: its prompt, its choices and where its events go.
struct Running<'m> {
    events: tokio_mpsc::UnboundedSender<EngineEvent>,
    prompt: Vec<u32>,
    /// Generated tokens per choice, at most; already capped by the context.
    max_tokens: usize,
    ignore_eos: bool,
    /// Filled during prefill when the request asked for prompt log-probabilities.
    prompt_logprobs: Option<Vec<Option<Sampled>>>,
    choices: Vec<Sequence<'m>>,
    /// Ended with an error (already sent); its remaining chunks are skipped.
    failed: bool,
}

/// One choice of a request: its cache and the state of its output.
struct Sequence<'m> {
    kv: KvCache,
    output: Vec<u32>,
    sampler: Sampler,
    decoder: StreamDecoder<'m>,
    stops: StopMatcher,
    /// The grammar the output must follow (structured outputs).
    constraint: Option<Constraint>,
    finished: bool,
}

/// The tokens one sequence adds in a step: positions `positions` of prompt-then-output.
struct PlannedChunk {
    request: usize,
    choice: usize,
    positions: Range<usize>,
    tokens: Vec<u32>,
    /// Logits for every row (prompt log-probabilities), not only the last.
    all_logits: bool,
}

/// What one forward pass carries, in the order of the running requests and choices.
struct StepPlan {
    chunks: Vec<PlannedChunk>,
}

/// Decides who runs: admission from the waiting queue and the plan of each step.
struct Scheduler {
    waiting: VecDeque<Submission>,
    options: EngineOptions,
}

impl Scheduler {
    /// Requests to admit now, first come first served, while `running_sequences` leaves
    /// room.
    fn admit(&mut self, mut running_sequences: usize) -> Vec<Submission> {
        let mut admitted = Vec::new();
        while let Some(next) = self.waiting.front() {
            if running_sequences + next.request.n > self.options.max_running {
                break;
            }
            running_sequences += next.request.n;
            admitted.extend(self.waiting.pop_front());
        }
        admitted
    }

    /// One chunk per unfinished sequence: its next prompt tokens (within the step's
    /// prefill budget) or its last sampled token.
    fn plan(&self, running: &[Running<'_>]) -> StepPlan {
        let mut prefill_budget = self.options.prefill_chunk;
        let mut chunks = Vec::new();
        for (r, req) in running.iter().enumerate() {
            for (c, seq) in req.choices.iter().enumerate() {
                if seq.finished {
                    continue;
                }
                let start = seq.kv.len();
                let in_prefill = start < req.prompt.len();
                let end = if in_prefill {
                    let take = prefill_budget.min(req.prompt.len() - start);
                    prefill_budget -= take;
                    start + take
                } else {
                    start + 1
                };
                if end == start {
                    continue;
                }
                let tokens = (start..end).map(|p| token_at(req, seq, p)).collect();
                chunks.push(PlannedChunk {
                    request: r,
                    choice: c,
                    positions: start..end,
                    tokens,
                    all_logits: in_prefill && c == 0 && req.prompt_logprobs.is_some(),
                });
            }
        }
        StepPlan { chunks }
    }
}

/// The token at position `p` of a sequence: the prompt, then the output.
fn token_at(req: &Running<'_>, seq: &Sequence<'_>, p: usize) -> u32 {
    match p.checked_sub(req.prompt.len()) {
        None => req.prompt[p],
        Some(i) => seq.output[i],
    }
}

struct EngineLoop<'m> {
    model: &'m LoadedModel,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Submission>,
    inbox_open: bool,
    scheduler: Scheduler,
    running: Vec<Running<'m>>,
    metrics: EngineMetrics,
}

impl<'m> EngineLoop<'m> {
    fn new(model: &'m LoadedModel, shared: Arc<Shared>, inbox: mpsc::Receiver<Submission>) -> Self {
        let options = shared.options.clone();
        Self {
            model,
            shared,
            inbox,
            inbox_open: true,
            scheduler: Scheduler {
                waiting: VecDeque::new(),
                options,
            },
            running: Vec::new(),
            metrics: EngineMetrics::default(),
        }
    }

    fn run(mut self) {
        while self.receive() {
            self.cancel_dropped();
            self.admit();
            let plan = self.scheduler.plan(&self.running);
            if !plan.chunks.is_empty() {
                match self.forward(&plan) {
                    Ok(logits) => self.sample_and_emit(&plan, &logits),
                    Err(e) => self.fail_all(&format!("{e:#}")),
                }
                self.metrics.steps += 1;
            }
            self.running
                .retain(|r| r.choices.iter().any(|s| !s.finished));
            self.publish();
        }
    }

    /// Take new submissions; wait for one when there is nothing else to do. False when
    /// every handle is gone and no work is left.
    fn receive(&mut self) -> bool {
        let idle = self.running.is_empty() && self.scheduler.waiting.is_empty();
        if idle {
            if !self.inbox_open {
                return false;
            }
            match self.inbox.recv() {
                Ok(s) => self.scheduler.waiting.push_back(s),
                Err(_) => return false,
            }
        }
        loop {
            match self.inbox.try_recv() {
                Ok(s) => self.scheduler.waiting.push_back(s),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.inbox_open = false;
                    return true;
                }
            }
        }
    }

    /// Requests whose receiver was dropped stop here; their caches go with them.
    fn cancel_dropped(&mut self) {
        self.running.retain(|r| !r.events.is_closed());
        let waiting = self.scheduler.waiting.len();
        self.scheduler.waiting.retain(|s| !s.events.is_closed());
        let dropped = waiting - self.scheduler.waiting.len();
        self.shared.waiting.fetch_sub(dropped, Ordering::AcqRel);
    }

    fn admit(&mut self) {
        let running_sequences = self.running.iter().map(|r| r.choices.len()).sum();
        let admitted = self.scheduler.admit(running_sequences);
        self.shared
            .waiting
            .fetch_sub(admitted.len(), Ordering::AcqRel);
        for s in admitted {
            self.metrics.prompt_tokens += s.request.generate.prompt_ids.len() as u64;
            self.running.push(self.start(s));
        }
    }

    fn start(&self, s: Submission) -> Running<'m> {
        let EngineRequest {
            generate: g,
            n,
            prompt_logprobs,
        } = s.request;
        let choices = (0..n)
            .map(|i| {
                let mut sampling = g.sampling.clone();
                sampling.seed = sampling.seed.map(|seed| seed.wrapping_add(i as u64));
                Sequence {
                    kv: self.model.new_kv_cache(),
                    output: Vec::new(),
                    sampler: Sampler::new(sampling),
                    decoder: StreamDecoder::new(&self.model.tokenizer, true),
                    stops: StopMatcher::new(&g.stop),
                    constraint: g.grammar.as_ref().map(|g| g.start()),
                    finished: false,
                }
            })
            .collect();
        Running {
            events: s.events,
            max_tokens: g
                .max_tokens
                .min(self.shared.context_length - g.prompt_ids.len()),
            prompt_logprobs: prompt_logprobs.then(|| vec![None]),
            prompt: g.prompt_ids,
            ignore_eos: g.ignore_eos,
            choices,
            failed: false,
        }
    }

    /// One batched pass over the weights for every chunk of the plan. The token masks of
    /// constrained sequences that sample in this step are computed meanwhile: they need
    /// the tokens so far, not the logits.
    fn forward(&mut self, plan: &StepPlan) -> Result<Logits> {
        let model = self.model;
        let mut planned = plan.chunks.iter().peekable();
        let mut batch = Vec::with_capacity(plan.chunks.len());
        let mut constraints = Vec::new();
        for (r, req) in self.running.iter_mut().enumerate() {
            let prompt_len = req.prompt.len();
            for (c, seq) in req.choices.iter_mut().enumerate() {
                if let Some(chunk) = planned.next_if(|p| (p.request, p.choice) == (r, c)) {
                    let Sequence { kv, constraint, .. } = seq;
                    batch.push(SeqChunk {
                        tokens: &chunk.tokens,
                        kv,
                        all_logits: chunk.all_logits,
                    });
                    if chunk.positions.end >= prompt_len {
                        constraints.extend(constraint.as_mut());
                    }
                }
            }
        }
        if constraints.is_empty() {
            return model.model.forward(&mut batch);
        }
        let (logits, ()) = rayon::join(
            || model.model.forward(&mut batch),
            || {
                for c in constraints {
                    // An error shows again, for this request only, when the mask is applied.
                    let _ = c.compute_mask();
                }
            },
        );
        logits
    }

    fn sample_and_emit(&mut self, plan: &StepPlan, logits: &Logits) {
        let eog = self.model.tokenizer.eog_ids();
        let mut masked = Vec::new();
        for (row, chunk) in plan.chunks.iter().enumerate() {
            let req = &mut self.running[chunk.request];
            if req.failed {
                continue;
            }
            if chunk.all_logits {
                record_prompt_logprobs(req, chunk, logits, row);
            }
            if chunk.positions.end < req.prompt.len() {
                continue; // more prompt to go
            }
            if let Some(lps) = req.prompt_logprobs.take() {
                // The prompt is done: its log-probabilities go out before any token.
                let _ = req.events.send(EngineEvent::PromptLogprobs(lps));
            }
            let seq = &mut req.choices[chunk.choice];
            let (event, finish) = if req.max_tokens == 0 {
                (None, Some(FinishReason::Length))
            } else {
                let sampled = match seq.constraint.as_mut() {
                    None => seq
                        .sampler
                        .sample(logits.last_row(row), &req.prompt, &seq.output),
                    Some(c) => {
                        masked.clear();
                        masked.extend_from_slice(logits.last_row(row));
                        if let Err(e) = c.apply_mask(&mut masked) {
                            fail_request(req, &format!("constrained decoding failed: {e:#}"));
                            continue;
                        }
                        seq.sampler.sample(&masked, &req.prompt, &seq.output)
                    }
                };
                self.metrics.generation_tokens += 1;
                let grammar_done = match seq.constraint.as_mut().map(|c| {
                    c.commit(sampled.token)?;
                    anyhow::Ok(c.is_finished())
                }) {
                    None => false,
                    Some(Ok(done)) => done,
                    Some(Err(e)) => {
                        fail_request(req, &format!("constrained decoding failed: {e:#}"));
                        continue;
                    }
                };
                let ignore_eos = req.ignore_eos && seq.constraint.is_none();
                let (text, finish) =
                    seq.accept(sampled.token, eog, ignore_eos, req.max_tokens, grammar_done);
                (Some((sampled, text)), finish)
            };
            if let Some((sampled, text)) = event {
                let _ = req.events.send(EngineEvent::Token {
                    index: chunk.choice,
                    sampled,
                    text,
                });
            }
            if let Some(reason) = finish {
                seq.finished = true;
                let _ = req.events.send(EngineEvent::Finished {
                    index: chunk.choice,
                    reason,
                    completion_tokens: seq.output.len(),
                });
                if req.choices.iter().all(|s| s.finished) {
                    let _ = req.events.send(EngineEvent::Done(Usage {
                        prompt_tokens: req.prompt.len(),
                        completion_tokens: req.choices.iter().map(|s| s.output.len()).sum(),
                    }));
                }
            }
        }
    }

    fn fail_all(&mut self, error: &str) {
        tracing::error!("engine step failed: {error}");
        for req in self.running.drain(..) {
            let _ = req.events.send(EngineEvent::Failed(error.to_string()));
        }
    }

    fn publish(&mut self) {
        self.metrics.running = self.running.len();
        self.metrics.running_sequences = self.running.iter().map(|r| r.choices.len()).sum();
        self.metrics.waiting = self.shared.waiting.load(Ordering::Acquire);
        self.shared.metrics.send_replace(self.metrics);
    }
}

/// End one request with an error; the others go on.
fn fail_request(req: &mut Running<'_>, error: &str) {
    tracing::warn!("request failed: {error}");
    req.failed = true;
    for seq in &mut req.choices {
        seq.finished = true;
    }
    let _ = req.events.send(EngineEvent::Failed(error.to_string()));
}

impl Sequence<'_> {
    /// Take a sampled token: the text it lets out, and whether the choice ends here (an
    /// end-of-generation token, a stop string, a complete grammar, or the token limit) —
    /// as [`LoadedModel::generate`] decides it.
    fn accept(
        &mut self,
        token: u32,
        eog_ids: &[u32],
        ignore_eos: bool,
        max_tokens: usize,
        grammar_done: bool,
    ) -> (String, Option<FinishReason>) {
        self.output.push(token);
        let eog = !ignore_eos && eog_ids.contains(&token);
        // A token that the tokenizer cannot decode shows as nothing rather than ending the
        // stream; detokenizing known ids does not fail in practice.
        let piece = if eog {
            String::new()
        } else {
            self.decoder.push(token).unwrap_or_default()
        };
        let (mut text, hit_stop) = self.stops.push(&piece);
        if eog || hit_stop {
            return (text, Some(FinishReason::Stop));
        }
        if grammar_done {
            // Complete under its grammar: what is held back cannot become a stop string.
            let tail = self.decoder.finish();
            text.push_str(&self.stops.push(&tail).0);
            text.push_str(&self.stops.flush());
            return (text, Some(FinishReason::Stop));
        }
        if self.output.len() >= max_tokens {
            let tail = self.decoder.finish();
            text.push_str(&self.stops.push(&tail).0);
            text.push_str(&self.stops.flush());
            return (text, Some(FinishReason::Length));
        }
        (text, None)
    }
}

/// Prompt log-probabilities from the rows of a prompt chunk: row `i` predicts the token at
/// position `start + i + 1`.
fn record_prompt_logprobs(
    req: &mut Running<'_>,
    chunk: &PlannedChunk,
    logits: &Logits,
    row: usize,
) {
    let top_logprobs = req.choices[0].sampler.params().top_logprobs;
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
    fn batched_requests_match_single_request_generation() {
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
        for (p, stream) in prompts.iter().zip(streams) {
            let got = collect(stream, 1);
            let want = model.generate(&request(&model, p, 24), |_| true).unwrap();
            assert_eq!(got.text[0], want.text, "{p}");
            assert_eq!(got.tokens[0], want.token_ids, "{p}");
            assert_eq!(got.finish[0], Some(want.finish_reason));
            assert_eq!(
                got.usage,
                Some(Usage {
                    prompt_tokens: want.prompt_tokens,
                    completion_tokens: want.completion_tokens
                })
            );
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
        };
        assert!(matches!(
            engine.submit(many),
            Err(SubmitError::Invalid(EngineError::InvalidParameter(_)))
        ));
    }
}
