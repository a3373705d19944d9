//! Who runs this step, and how many tokens each: the engine's scheduler, in the shape of
//! vLLM v1's (`vllm/v1/core/sched/scheduler.py`).
//!
//! [`Scheduler::schedule`] returns a plain plan, a [`SchedulerOutput`]: the chunk of
//! positions each sequence computes (a prompt chunk, recomputed tokens after a preemption,
//! or one decode token), the blocks they go into, the requests admitted, preempted, or
//! ended for lack of blocks. The engine's runner executes the plan (one forward, then
//! sampling) and tells the scheduler what came out ([`Scheduler::append_token`],
//! [`Scheduler::finish`]); it knows nothing about queues. Blocks are only ever taken and
//! given back through the KV manager ([`KvPool`]), by the scheduler.
//!
//! - admission: first come first served, preempted requests first, while running sequences
//!   stay under `max_running` and the pool has the blocks to start (plus a 1% reserve);
//! - the token budget of a step: every sequence in decode gets its one token, what is left
//!   of `prefill_chunk` goes to prompt chunks (chunked prefill mixed with decode);
//! - each sequence first looks its tokens up in the prefix cache; the later choices of an
//!   `n > 1` request wait for the first one's prompt, then share its blocks;
//! - when the pool is short, the request admitted last is preempted: its blocks are freed
//!   and its prompt and output recomputed when it resumes (often from the prefix cache);
//! - speculative decoding: a sequence in decode given draft tokens ([`Scheduler::set_draft`])
//!   computes its last token and the drafts in one chunk, when the blocks for them are free
//!   (drafts never preempt anyone); after the check, [`Scheduler::drop_rejected`] gives back
//!   the positions of the drafts the model did not confirm.

use std::collections::VecDeque;
use std::ops::Range;

use crate::kv::{BLOCK_TOKENS, KvPool, SeqKv};
use crate::model::SeqChunk;

/// The engine's name for a request.
pub(crate) type RequestId = u64;

/// What the scheduler needs to know of a request; the engine keeps the rest.
#[derive(Debug, Clone)]
pub(crate) struct NewRequest {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    /// Choices (sequences) of the request.
    pub n: usize,
    /// The request wants the log-probability of every prompt token: its first choice
    /// computes the whole prompt (no prefix cache) with logits for every row.
    pub prompt_logprobs: bool,
}

/// Limits the scheduler works within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchedulerConfig {
    /// Most sequences running together.
    pub max_running: usize,
    /// Most tokens in one step.
    pub token_budget: usize,
    /// A sequence's most positions (the model's context length).
    pub context_length: usize,
}

/// Why [`Scheduler::add`] refused a request: it could never run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{n} choices, at most {max_running} sequences run together")]
    TooManyChoices { n: usize, max_running: usize },
    #[error("the prompt needs {need} KV blocks, the pool has {total}")]
    TooLarge { need: usize, total: usize },
}

/// The positions one sequence computes in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScheduledChunk {
    pub request: RequestId,
    pub choice: usize,
    /// Positions of prompt-then-output this chunk computes.
    pub positions: Range<usize>,
    /// The tokens at those positions.
    pub tokens: Vec<u32>,
    /// The blocks the chunk writes into.
    pub blocks: Vec<u32>,
    /// Logits for every row (prompt log-probabilities), not only the last.
    pub all_logits: bool,
    /// The chunk reaches the end of what the sequence holds: its last row picks the next
    /// token. Otherwise more prompt (or recomputed output) is to come.
    pub samples: bool,
    /// Draft tokens at the end of `tokens` (speculative decoding): the last `draft + 1`
    /// rows each pick a token, checked against the drafts in order.
    pub draft: usize,
}

/// The plan of one step, in the order of the running requests and their choices.
#[derive(Debug, Default)]
pub(crate) struct SchedulerOutput {
    pub chunks: Vec<ScheduledChunk>,
    /// Requests that left the waiting queue this step (not resumed ones).
    pub admitted: Vec<RequestId>,
    /// Requests whose blocks were freed to make room; they resume later.
    pub preempted: Vec<RequestId>,
    /// Choices that cannot get a block even alone: they end here, as at a token limit.
    pub out_of_blocks: Vec<(RequestId, usize)>,
}

/// One choice of a running request, as the scheduler sees it.
struct Sequence {
    kv: SeqKv,
    output: Vec<u32>,
    /// The prefix cache was consulted since the sequence (re)started.
    looked_up: bool,
    finished: bool,
    /// Tokens proposed to follow the output, checked with the next decode step.
    draft: Vec<u32>,
}

struct Running {
    id: RequestId,
    prompt: Vec<u32>,
    /// Still owes its prompt log-probabilities (until its first choice samples).
    prompt_logprobs: bool,
    choices: Vec<Sequence>,
}

impl Running {
    /// Positions a choice must have computed before it samples again.
    fn target_len(&self, choice: usize) -> usize {
        self.prompt.len() + self.choices[choice].output.len()
    }

    /// Prompt then output so far: the tokens whose keys and values a choice holds.
    fn tokens_of(&self, choice: usize) -> Vec<u32> {
        let mut t = self.prompt.clone();
        t.extend_from_slice(&self.choices[choice].output);
        t
    }

    /// The token at position `p` of a choice: the prompt, then the output.
    fn token_at(&self, choice: usize, p: usize) -> u32 {
        match p.checked_sub(self.prompt.len()) {
            None => self.prompt[p],
            Some(i) => self.choices[choice].output[i],
        }
    }

    fn release(&mut self, pool: &mut KvPool) {
        for seq in &mut self.choices {
            pool.release(&mut seq.kv);
        }
    }
}

pub(crate) struct Scheduler {
    config: SchedulerConfig,
    waiting: VecDeque<NewRequest>,
    /// In order of admission: the last is the first to be preempted.
    running: Vec<Running>,
    /// Preempted requests, to resume before anyone new is admitted.
    preempted: VecDeque<Running>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            preempted: VecDeque::new(),
        }
    }

    /// Queue a request, or refuse one that could never run with this pool.
    pub fn add(&mut self, request: NewRequest, pool: &KvPool) -> Result<(), Refused> {
        let max_running = self.config.max_running;
        if request.n == 0 || request.n > max_running {
            return Err(Refused::TooManyChoices {
                n: request.n,
                max_running,
            });
        }
        let need = blocks_to_start(request.prompt.len(), &vec![0; request.n]);
        if need > pool.num_blocks() {
            return Err(Refused::TooLarge {
                need,
                total: pool.num_blocks(),
            });
        }
        self.waiting.push_back(request);
        Ok(())
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty() && self.preempted.is_empty()
    }

    #[cfg(test)]
    fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_preempted(&self) -> usize {
        self.preempted.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_running_sequences(&self) -> usize {
        self.running.iter().map(|r| r.choices.len()).sum()
    }

    /// Admit what fits, then plan the step (see the module's description).
    pub fn schedule(&mut self, pool: &mut KvPool) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        self.admit(pool, &mut out);
        self.plan(pool, &mut out);
        out
    }

    /// Preempted requests first, then waiting ones, in order, while there is room in
    /// sequences and in free blocks (with a small reserve so that what runs can grow).
    fn admit(&mut self, pool: &KvPool, out: &mut SchedulerOutput) {
        let max_running = self.config.max_running;
        let reserve = pool.num_blocks() / 100;
        // Blocks are taken when the plan is made: what this round admits counts already.
        let mut available = pool.available().saturating_sub(reserve);
        let mut sequences = self.num_running_sequences();
        while let Some(r) = self.preempted.front() {
            let outputs: Vec<usize> = r.choices.iter().map(|s| s.output.len()).collect();
            let need = blocks_to_start(r.prompt.len(), &outputs);
            if sequences + r.choices.len() > max_running || need > available {
                return;
            }
            sequences += r.choices.len();
            available -= need;
            let r = self.preempted.pop_front().expect("front exists");
            self.running.push(r);
        }
        while let Some(next) = self.waiting.front() {
            let need = blocks_to_start(next.prompt.len(), &vec![0; next.n]);
            if sequences + next.n > max_running || need > available {
                break;
            }
            sequences += next.n;
            available -= need;
            let r = self.waiting.pop_front().expect("front exists");
            out.admitted.push(r.id);
            let capacity = self.config.context_length;
            self.running.push(Running {
                id: r.id,
                choices: (0..r.n)
                    .map(|_| Sequence {
                        kv: SeqKv::new(capacity),
                        output: Vec::new(),
                        looked_up: false,
                        finished: false,
                        draft: Vec::new(),
                    })
                    .collect(),
                prompt: r.prompt,
                prompt_logprobs: r.prompt_logprobs,
            });
        }
    }

    /// One token for every sequence in decode, then prompt (or recomputed) tokens for the
    /// others within what is left of the budget. Blocks are reserved for everything
    /// planned; when the pool runs out, the request admitted last is preempted.
    fn plan(&mut self, pool: &mut KvPool, out: &mut SchedulerOutput) {
        let decodes = self
            .running
            .iter()
            .flat_map(|r| {
                r.choices.iter().enumerate().filter(move |(c, s)| {
                    !s.finished && r.target_len(*c) - s.kv.len() == 1 && !s.kv.is_empty()
                })
            })
            .map(|(_, s)| 1 + s.draft.len())
            .sum::<usize>();
        let mut prefill_budget = self.config.token_budget.saturating_sub(decodes).max(1);
        // Decode chunks with drafts: (chunk, request, choice, drafts), extended at the end.
        let mut drafts = Vec::new();
        let mut r = 0;
        while r < self.running.len() {
            let mut c = 0;
            while c < self.running[r].choices.len() {
                let req = &mut self.running[r];
                if req.choices[c].finished {
                    c += 1;
                    continue;
                }
                // Later choices of a fresh request wait for the first one's prompt, then
                // share its full blocks through the prefix cache.
                let first = &req.choices[0];
                if c > 0
                    && !req.choices[c].looked_up
                    && first.kv.len() < req.prompt.len()
                    && !first.finished
                {
                    c += 1;
                    continue;
                }
                if !req.choices[c].looked_up {
                    let tokens = req.tokens_of(c);
                    let seq = &mut req.choices[c];
                    seq.looked_up = true;
                    if !req.prompt_logprobs {
                        pool.attach_prefix(&mut seq.kv, &tokens);
                    }
                }
                let start = req.choices[c].kv.len();
                let need = req.target_len(c) - start;
                let mut draft = std::mem::take(&mut req.choices[c].draft);
                if !(need == 1 && start > 0) {
                    draft.clear(); // drafts follow a decoded token, not a prompt chunk
                }
                let take = if need == 1 && start > 0 {
                    1
                } else {
                    let t = need.min(prefill_budget);
                    prefill_budget -= t;
                    t
                };
                if take == 0 {
                    c += 1;
                    continue;
                }
                let end = start + take;
                // Blocks for the planned tokens, preempting from the back when short.
                let mut ok = pool.reserve(&mut self.running[r].choices[c].kv, end);
                while !ok && self.running.len() > r + 1 {
                    self.preempt_last(pool, out);
                    ok = pool.reserve(&mut self.running[r].choices[c].kv, end);
                }
                let req = &mut self.running[r];
                if !ok {
                    // Alone and out of blocks: this choice cannot grow any further.
                    req.choices[c].finished = true;
                    out.out_of_blocks.push((req.id, c));
                    c += 1;
                    continue;
                }
                let samples = end == req.target_len(c);
                let all_logits = start < req.prompt.len() && c == 0 && req.prompt_logprobs;
                if !draft.is_empty() {
                    drafts.push((out.chunks.len(), r, c, draft));
                }
                out.chunks.push(ScheduledChunk {
                    request: req.id,
                    choice: c,
                    positions: start..end,
                    tokens: (start..end).map(|p| req.token_at(c, p)).collect(),
                    blocks: req.choices[c].kv.blocks()
                        [start / BLOCK_TOKENS..KvPool::blocks_for(end)]
                        .to_vec(),
                    all_logits,
                    samples,
                    draft: 0,
                });
                if samples {
                    // The prompt's log-probabilities go out with this step.
                    req.prompt_logprobs = false;
                }
                c += 1;
            }
            r += 1;
        }
        // Drafts last, into blocks nobody planned above needs: they never preempt anyone.
        for (i, r, c, draft) in drafts {
            let chunk = &mut out.chunks[i];
            let kv = &mut self.running[r].choices[c].kv;
            let end = chunk.positions.end + draft.len();
            if !pool.reserve(kv, end) {
                pool.unreserve(kv, chunk.positions.end);
                continue;
            }
            chunk.positions.end = end;
            chunk.tokens.extend_from_slice(&draft);
            chunk.blocks =
                kv.blocks()[chunk.positions.start / BLOCK_TOKENS..KvPool::blocks_for(end)].to_vec();
            chunk.all_logits = true;
            chunk.draft = draft.len();
        }
    }

    /// Free the blocks of the request admitted last and queue it to resume first.
    fn preempt_last(&mut self, pool: &mut KvPool, out: &mut SchedulerOutput) {
        let mut victim = self.running.pop().expect("a request to preempt");
        victim.release(pool);
        for seq in &mut victim.choices {
            seq.looked_up = false;
        }
        tracing::debug!("preempted a request of {} tokens", victim.prompt.len());
        out.preempted.push(victim.id);
        self.preempted.push_front(victim);
    }

    /// The block tables and tokens of the plan's chunks, in order, for the forward pass
    /// (which writes the keys and values and advances each table's length).
    pub fn batch<'a>(&'a mut self, out: &'a SchedulerOutput) -> Vec<SeqChunk<'a>> {
        let mut planned = out.chunks.iter().peekable();
        let mut batch = Vec::with_capacity(out.chunks.len());
        for req in &mut self.running {
            for (c, seq) in req.choices.iter_mut().enumerate() {
                if let Some(chunk) = planned.next_if(|p| (p.request, p.choice) == (req.id, c)) {
                    batch.push(SeqChunk {
                        tokens: &chunk.tokens,
                        kv: &mut seq.kv,
                        all_logits: chunk.all_logits,
                    });
                }
            }
        }
        debug_assert!(planned.next().is_none(), "a chunk of no running sequence");
        batch
    }

    /// After the forward: name the blocks the step filled, so that later requests can
    /// share them.
    pub fn register_filled(&mut self, out: &SchedulerOutput, pool: &mut KvPool) {
        for chunk in &out.chunks {
            if chunk.positions.end / BLOCK_TOKENS == chunk.positions.start / BLOCK_TOKENS {
                continue;
            }
            let Some(req) = self.running.iter_mut().find(|r| r.id == chunk.request) else {
                continue;
            };
            let tokens = req.tokens_of(chunk.choice);
            pool.register(&mut req.choices[chunk.choice].kv, &tokens);
        }
    }

    /// The token a choice sampled: it is computed in a later step.
    pub fn append_token(&mut self, id: RequestId, choice: usize, token: u32) {
        if let Some(req) = self.running.iter_mut().find(|r| r.id == id) {
            req.choices[choice].output.push(token);
        }
    }

    /// Tokens to check after a choice's last one in its next decode step (replacing any
    /// not yet planned). Dropped if the next step is not a plain decode step.
    pub fn set_draft(&mut self, id: RequestId, choice: usize, draft: Vec<u32>) {
        if let Some(req) = self.running.iter_mut().find(|r| r.id == id) {
            req.choices[choice].draft = draft;
        }
    }

    /// After a step that checked drafts: keep the keys and values of the positions the
    /// output now confirms (all but its latest token, computed next step), give back the
    /// rest.
    pub fn drop_rejected(&mut self, id: RequestId, choice: usize, pool: &mut KvPool) {
        if let Some(req) = self.running.iter_mut().find(|r| r.id == id) {
            let confirmed = req.target_len(choice) - 1;
            let seq = &mut req.choices[choice];
            if seq.kv.len() > confirmed {
                pool.truncate(&mut seq.kv, confirmed);
            }
        }
    }

    /// A choice is done (its blocks go back at [`Scheduler::free_finished`]).
    pub fn finish(&mut self, id: RequestId, choice: usize) {
        if let Some(req) = self.running.iter_mut().find(|r| r.id == id) {
            req.choices[choice].finished = true;
        }
    }

    /// Every choice of a request is done (it failed).
    pub fn finish_request(&mut self, id: RequestId) {
        if let Some(req) = self.running.iter_mut().find(|r| r.id == id) {
            for seq in &mut req.choices {
                seq.finished = true;
            }
        }
    }

    /// Finished sequences give their blocks back (named ones stay cached); requests with
    /// every choice finished leave. Returns those.
    pub fn free_finished(&mut self, pool: &mut KvPool) -> Vec<RequestId> {
        for req in &mut self.running {
            for seq in &mut req.choices {
                if seq.finished && !seq.kv.blocks().is_empty() {
                    pool.release(&mut seq.kv);
                }
            }
        }
        let mut done = Vec::new();
        self.running.retain(|r| {
            let keep = r.choices.iter().any(|s| !s.finished);
            if !keep {
                done.push(r.id);
            }
            keep
        });
        done
    }

    /// Drop a request wherever it is (its client went away); its blocks go back. True when
    /// it was still waiting for admission.
    pub fn abort(&mut self, id: RequestId, pool: &mut KvPool) -> bool {
        if let Some(i) = self.waiting.iter().position(|r| r.id == id) {
            self.waiting.remove(i);
            return true;
        }
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            self.running.remove(i).release(pool);
        } else if let Some(i) = self.preempted.iter().position(|r| r.id == id) {
            self.preempted.remove(i);
        }
        false
    }

    /// Drop every running request (the step failed); returns them.
    pub fn abort_running(&mut self, pool: &mut KvPool) -> Vec<RequestId> {
        self.running
            .drain(..)
            .map(|mut r| {
                r.release(pool);
                r.id
            })
            .collect()
    }
}

/// Blocks a request needs to start (or resume): its tokens so far and one more, for each
/// choice; the choices of a fresh request share the prompt's full blocks.
fn blocks_to_start(prompt: usize, outputs: &[usize]) -> usize {
    let shared = prompt / BLOCK_TOKENS;
    outputs
        .iter()
        .map(|o| KvPool::blocks_for(prompt + o + 1) - shared)
        .sum::<usize>()
        + shared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_running: usize, token_budget: usize) -> SchedulerConfig {
        SchedulerConfig {
            max_running,
            token_budget,
            context_length: 4096,
        }
    }

    fn request(id: RequestId, prompt_len: usize) -> NewRequest {
        NewRequest {
            id,
            // Distinct tokens per request: no prefix is shared by accident.
            prompt: (0..prompt_len as u32)
                .map(|t| id as u32 * 10_000 + t)
                .collect(),
            n: 1,
            prompt_logprobs: false,
        }
    }

    /// What the runner does with a plan, without a model: the forward stores every
    /// planned position, then each sequence that reached its end takes a token.
    fn execute(s: &mut Scheduler, pool: &mut KvPool, out: &SchedulerOutput) {
        for chunk in s.batch(out) {
            chunk.kv.commit(chunk.tokens.len());
        }
        s.register_filled(out, pool);
        for chunk in out.chunks.iter().filter(|c| c.samples) {
            s.append_token(chunk.request, chunk.choice, 7);
        }
    }

    fn planned(out: &SchedulerOutput) -> Vec<(RequestId, Range<usize>)> {
        out.chunks
            .iter()
            .map(|c| (c.request, c.positions.clone()))
            .collect()
    }

    #[test]
    fn decodes_take_one_token_each_and_prompts_share_the_rest_of_the_budget() {
        let mut pool = KvPool::new(1, 1, 64);
        let mut s = Scheduler::new(config(4, 32));
        s.add(request(1, 10), &pool).unwrap();
        s.add(request(2, 10), &pool).unwrap();
        let out = s.schedule(&mut pool);
        assert_eq!(out.admitted, vec![1, 2]);
        assert_eq!(planned(&out), vec![(1, 0..10), (2, 0..10)]);
        assert!(out.chunks.iter().all(|c| c.samples));
        execute(&mut s, &mut pool, &out);

        // Two in decode, a long prompt arrives: 1 + 1 decode tokens, 30 prompt tokens.
        s.add(request(3, 100), &pool).unwrap();
        let out = s.schedule(&mut pool);
        assert_eq!(planned(&out), vec![(1, 10..11), (2, 10..11), (3, 0..30)]);
        assert!(!out.chunks[2].samples, "more of the prompt is to come");
        assert_eq!(out.chunks[0].tokens, vec![7]);
        assert_eq!(out.chunks[2].blocks.len(), 2);
        execute(&mut s, &mut pool, &out);
        let out = s.schedule(&mut pool);
        assert_eq!(planned(&out), vec![(1, 11..12), (2, 11..12), (3, 30..60)]);
        assert!(out.chunks.iter().map(|c| c.positions.len()).sum::<usize>() <= 32);
    }

    #[test]
    fn the_last_admitted_is_preempted_when_blocks_run_out_and_resumes_first() {
        // 6 blocks: a request of 30 prompt tokens takes 2 to start.
        let mut pool = KvPool::new(1, 1, 6);
        let mut s = Scheduler::new(config(4, 256));
        s.add(request(1, 30), &pool).unwrap();
        s.add(request(2, 30), &pool).unwrap();
        let out = s.schedule(&mut pool);
        assert_eq!(out.admitted, vec![1, 2]);
        execute(&mut s, &mut pool, &out);
        // A third one fits in the last two free blocks; decode until the pool is short.
        s.add(request(3, 30), &pool).unwrap();
        let mut preempted = Vec::new();
        for _ in 0..40 {
            let out = s.schedule(&mut pool);
            preempted.extend(out.preempted.iter().copied());
            if !preempted.is_empty() {
                // The victim is gone from the plan and holds no block.
                assert!(out.chunks.iter().all(|c| !preempted.contains(&c.request)));
                break;
            }
            execute(&mut s, &mut pool, &out);
        }
        // Request 3 was admitted last (into the two free blocks) and goes first.
        assert_eq!(preempted, vec![3]);
        assert_eq!(s.num_preempted(), 1);
        let used: usize = s
            .running
            .iter()
            .flat_map(|r| &r.choices)
            .map(|q| q.kv.blocks().len())
            .sum();
        assert_eq!(
            pool.allocator().used(),
            used,
            "the victim's blocks are free"
        );

        // Request 1 ends: the preempted one resumes before anything new and recomputes its
        // prompt and its output so far in one chunk.
        s.finish(1, 0);
        s.free_finished(&mut pool);
        s.add(request(4, 5), &pool).unwrap();
        let out = s.schedule(&mut pool);
        assert!(
            out.admitted.is_empty(),
            "4 waits behind the resumed request"
        );
        let resumed = out.chunks.iter().find(|c| c.request == 3).unwrap();
        let output = s.running.iter().find(|r| r.id == 3).unwrap().choices[0]
            .output
            .len();
        assert!(output >= 2, "3 had decoded before it was preempted");
        assert_eq!(resumed.positions.end, 30 + output);
        assert!(resumed.positions.start % BLOCK_TOKENS == 0 && resumed.samples);
        assert_eq!(s.num_waiting(), 1);
    }

    #[test]
    fn a_choice_alone_and_out_of_blocks_ends_there() {
        let mut pool = KvPool::new(1, 1, 2);
        let mut s = Scheduler::new(config(1, 256));
        s.add(request(1, 20), &pool).unwrap();
        let mut ended = Vec::new();
        for _ in 0..20 {
            let out = s.schedule(&mut pool);
            ended.extend(out.out_of_blocks.iter().copied());
            execute(&mut s, &mut pool, &out);
            s.free_finished(&mut pool);
        }
        assert_eq!(ended, vec![(1, 0)]);
        assert!(s.is_idle());
        assert_eq!(pool.allocator().used(), 0);
    }

    #[test]
    fn a_request_refused_at_admission_leaves_nothing_behind() {
        let mut pool = KvPool::new(1, 1, 4);
        let mut s = Scheduler::new(config(2, 64));
        let mut many = request(1, 8);
        many.n = 3;
        assert_eq!(
            s.add(many, &pool),
            Err(Refused::TooManyChoices {
                n: 3,
                max_running: 2
            })
        );
        assert!(matches!(
            s.add(request(2, 100), &pool),
            Err(Refused::TooLarge { total: 4, .. })
        ));
        assert!(s.is_idle());
        assert_eq!(s.num_waiting(), 0);
        let out = s.schedule(&mut pool);
        assert!(out.chunks.is_empty() && out.admitted.is_empty());
        assert_eq!(pool.allocator().used(), 0);

        // A waiting request dropped by its client leaves no count behind either, and one
        // dropped while running gives its blocks back.
        s.add(request(3, 40), &pool).unwrap();
        s.add(request(4, 40), &pool).unwrap();
        let out = s.schedule(&mut pool);
        assert_eq!(out.admitted, vec![3]);
        assert!(s.abort(4, &mut pool), "4 was waiting");
        assert!(!s.abort(3, &mut pool), "3 was running");
        assert!(s.is_idle());
        assert_eq!((s.num_waiting(), s.num_running_sequences()), (0, 0));
        assert_eq!(pool.allocator().used(), 0);
    }

    #[test]
    fn later_choices_wait_for_the_first_prompt_then_share_its_blocks() {
        let mut pool = KvPool::new(1, 1, 64);
        let mut s = Scheduler::new(config(4, 256));
        let mut r = request(1, 40);
        r.n = 3;
        s.add(r, &pool).unwrap();
        let out = s.schedule(&mut pool);
        assert_eq!(planned(&out), vec![(1, 0..40)]);
        execute(&mut s, &mut pool, &out);
        let out = s.schedule(&mut pool);
        // Choices 1 and 2 take the two full prompt blocks from the cache.
        let later: Vec<_> = out.chunks.iter().filter(|c| c.choice > 0).collect();
        assert_eq!(later.len(), 2);
        assert!(later.iter().all(|c| c.positions == (32..40) && c.samples));
        assert_eq!(pool.stats.hits, 64);
    }

    #[test]
    fn prompt_logprobs_compute_the_whole_prompt_with_every_row() {
        let mut pool = KvPool::new(1, 1, 64);
        let mut s = Scheduler::new(config(4, 16));
        s.add(request(1, 40), &pool).unwrap();
        let out = s.schedule(&mut pool);
        execute(&mut s, &mut pool, &out);
        s.finish(1, 0);
        s.free_finished(&mut pool);
        // Same prompt, but its log-probabilities are wanted: no cache, all rows.
        let mut again = request(1, 40);
        again.id = 2;
        again.prompt_logprobs = true;
        s.add(again, &pool).unwrap();
        let mut chunks: Vec<ScheduledChunk> = Vec::new();
        while !chunks.last().is_some_and(|c| c.samples) {
            let out = s.schedule(&mut pool);
            execute(&mut s, &mut pool, &out);
            chunks.extend(out.chunks);
        }
        assert_eq!(chunks[0].positions.start, 0);
        assert!(chunks.iter().all(|c| c.all_logits));
        let out = s.schedule(&mut pool);
        assert!(!out.chunks[0].all_logits, "decode steps need one row");
    }
}
