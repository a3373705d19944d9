//! Draft tokens for speculative decoding: the engine checks every drafted token against the
//! model in a single forward and keeps only what the model would have produced itself.
//!
//! - **Prompt lookup**: the tokens that followed the last time the sequence's latest few
//!   tokens appeared earlier in it (its prompt or its own output). Extraction copies invoice
//!   numbers, names and amounts out of the document, so these guesses are often right.
//! - **A draft model**: a smaller model with the same tokenizer (qwen2.5-coder-0.5b for
//!   qwen2.5-coder-1.5b) writes a few tokens ahead from a paged KV cache of its own, all
//!   sequences batched. Greedy requests get its greedy guesses; sampling requests get
//!   tokens drawn from its own distribution `q`, which the engine then checks by
//!   speculative sampling ([`crate::Sampler`]'s `sample_against`).

use std::fmt;
use std::sync::Arc;

use anyhow::{Result, bail};

use crate::generate::LoadedModel;
use crate::kv::{KvPool, SeqKv};
use crate::model::SeqChunk;
use crate::sampler::{Sampler, SamplingParams};

/// Longest and shortest tail looked up, in tokens: a longer match is a better guess, a
/// one-token match too often a wrong one.
const MAX_NGRAM: usize = 4;
const MIN_NGRAM: usize = 2;

/// Up to `max` tokens that followed the latest earlier occurrence of `context`'s last
/// `MAX_NGRAM` tokens (or fewer, down to `MIN_NGRAM`), the longest tail that occurs first.
/// Empty when no tail of that length occurs earlier.
pub(crate) fn prompt_lookup(context: &[u32], max: usize) -> Vec<u32> {
    if max == 0 {
        return Vec::new();
    }
    let len = context.len();
    for n in (MIN_NGRAM..=MAX_NGRAM.min(len.saturating_sub(1))).rev() {
        let tail = &context[len - n..];
        // Latest occurrence first: an earlier start `i` whose match ends before the tail.
        let found = (0..len - n)
            .rev()
            .find(|&i| &context[i..i + n] == tail)
            .map(|i| i + n);
        if let Some(next) = found {
            return context[next..(next + max).min(len)].to_vec();
        }
    }
    Vec::new()
}

/// A smaller model that drafts for a larger one with the same tokenizer
/// ([`crate::EngineOptions::draft_model`]). Cheap to clone.
#[derive(Clone)]
pub struct DraftModel {
    model: Arc<LoadedModel>,
}

impl fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DraftModel({})", self.model.path.display())
    }
}

/// Text both tokenizers must split into the same ids: words, code, digits, accents.
const VOCABULARY_PROBE: &str = "Invoice INV-2024-0457, total 1'255.60 EUR (TVA 20 %), \
     fn main() { println!(\"héllo wörld\"); } // 東京 🚀\n\tdone.";

impl DraftModel {
    pub fn new(model: Arc<LoadedModel>) -> Self {
        Self { model }
    }

    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    /// Refuse a drafter whose tokens are not the target's: the same pieces under the same
    /// ids (one vocabulary may extend the other), the same end-of-generation tokens, and
    /// the same ids for the same text.
    pub fn check_vocabulary(&self, target: &LoadedModel) -> Result<()> {
        let (t, d) = (&target.tokenizer, &self.model.tokenizer);
        let names = || {
            format!(
                "the draft model {} cannot draft for {}",
                self.model.path.display(),
                target.path.display()
            )
        };
        let shared = t.vocab_size().min(d.vocab_size());
        if let Some(id) = (0..shared).find(|&i| t.pieces()[i] != d.pieces()[i]) {
            bail!(
                "{}: their vocabularies differ (token {id} is {:?} for the model, {:?} for the draft model)",
                names(),
                t.pieces()[id],
                d.pieces()[id]
            );
        }
        if t.eog_ids() != d.eog_ids() {
            bail!(
                "{}: their end-of-generation tokens differ ({:?} and {:?})",
                names(),
                t.eog_ids(),
                d.eog_ids()
            );
        }
        let (a, b) = (
            t.encode(VOCABULARY_PROBE, true, true)?,
            d.encode(VOCABULARY_PROBE, true, true)?,
        );
        if a != b {
            bail!(
                "{}: their tokenizers split the same text differently",
                names()
            );
        }
        Ok(())
    }
}

/// One sequence in the draft model: its place in the draft model's cache, the tokens whose
/// keys and values that holds, and the sampler its proposals are drawn with.
pub(crate) struct DraftSeq {
    kv: SeqKv,
    held: Vec<u32>,
    sampler: Sampler,
}

/// Seeds the draft model's random stream apart from the target's (same seed, another
/// stream), so that a seeded request stays reproducible.
const DRAFT_SEED_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

impl DraftSeq {
    pub fn new(capacity: usize, sampling: &SamplingParams) -> Self {
        let mut sampling = sampling.clone();
        sampling.seed = sampling.seed.map(|s| s ^ DRAFT_SEED_SALT);
        Self {
            kv: SeqKv::new(capacity),
            held: Vec::new(),
            sampler: Sampler::new(sampling),
        }
    }

    /// Positions the draft model's cache holds for this sequence.
    pub fn len(&self) -> usize {
        self.kv.len()
    }
}

/// What the draft model is asked for one sequence.
pub(crate) struct DraftJob<'a> {
    pub seq: &'a mut DraftSeq,
    /// Prompt, output, then any tokens already drafted (forced by a grammar): the draft
    /// model writes on from there.
    pub context: Vec<u32>,
    pub prompt_len: usize,
    /// Most tokens to propose.
    pub max: usize,
}

/// The draft model's guesses for one sequence and, when the request samples, the
/// distribution each was drawn from (`None`: greedy, its argmax).
#[derive(Debug, Default)]
pub(crate) struct Proposal {
    pub tokens: Vec<u32>,
    pub q: Vec<Option<Vec<f32>>>,
}

/// The draft model at work in the engine: the model and the pool of its KV blocks.
pub(crate) struct ModelDrafter<'m> {
    model: &'m LoadedModel,
    pool: KvPool,
    /// Ids it may propose: those the target knows too.
    vocab: usize,
    /// Most tokens of one sequence per forward while it catches up (a prompt).
    chunk: usize,
}

impl<'m> ModelDrafter<'m> {
    pub fn new(model: &'m LoadedModel, pool: KvPool, target_vocab: usize, chunk: usize) -> Self {
        let vocab = target_vocab
            .min(model.info().vocab_size)
            .min(model.tokenizer.vocab_size());
        Self {
            model,
            pool,
            vocab,
            chunk,
        }
    }

    pub fn context_length(&self) -> usize {
        self.model.info().context_length
    }

    /// Keep only the keys and values of `confirmed`'s leading tokens (the output the
    /// target accepted): what the draft model holds beyond them was a rejected guess.
    pub fn keep_confirmed(&mut self, seq: &mut DraftSeq, confirmed: &[u32]) {
        let keep = common_prefix(&seq.held, confirmed);
        self.pool.truncate(&mut seq.kv, keep);
        seq.held.truncate(keep);
    }

    /// The sequence is done: its blocks go back.
    pub fn release(&mut self, seq: &mut DraftSeq) {
        self.pool.release(&mut seq.kv);
        seq.held.clear();
    }

    /// Up to `max` tokens for every job, all sequences batched: first each catches up on
    /// the context its cache lacks, then one token per forward. A sequence that lacks more
    /// than a chunk computes one chunk and drafts nothing this time. A sequence
    /// stops at an end-of-generation token. A sequence whose blocks cannot be had gets
    /// none (its cache is emptied, to be rebuilt later): drafts never take room from the
    /// target.
    pub fn propose(&mut self, jobs: &mut [DraftJob<'_>]) -> Result<Vec<Proposal>> {
        let mut proposals: Vec<Proposal> = jobs.iter().map(|_| Proposal::default()).collect();
        for job in jobs.iter_mut() {
            if job.context.is_empty() || job.max == 0 {
                job.max = 0;
                continue;
            }
            // At least the last context token is computed: its logits give the first guess.
            let keep = common_prefix(&job.seq.held, &job.context).min(job.context.len() - 1);
            self.pool.truncate(&mut job.seq.kv, keep);
            job.seq.held.truncate(keep);
            let end = job.context.len() + job.max - 1;
            if end > job.seq.kv.capacity() || !self.pool.reserve(&mut job.seq.kv, end) {
                self.release(job.seq);
                job.max = 0;
            }
        }
        // A sequence far behind (a long prompt) catches up by one chunk per step, without
        // logits, and drafts once it is close: one step never stalls the others' streams
        // for more than a chunk of the draft model, as chunked prefill does for the target.
        let chunk = self.chunk;
        let mut batch: Vec<SeqChunk<'_>> = jobs
            .iter_mut()
            .filter(|j| j.max > 0 && j.context.len() - j.seq.kv.len() > chunk)
            .map(|j| {
                j.max = 0;
                let start = j.seq.kv.len();
                j.seq
                    .held
                    .extend_from_slice(&j.context[start..start + chunk]);
                SeqChunk {
                    tokens: &j.context[start..start + chunk],
                    kv: &mut j.seq.kv,
                    all_logits: false,
                }
            })
            .collect();
        if !batch.is_empty() {
            self.model.model.forward(&mut self.pool, &mut batch)?;
        }
        // The rest of each context; its last row is the first guess's distribution.
        let active: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].max > 0).collect();
        if active.is_empty() {
            return Ok(proposals);
        }
        let mut batch: Vec<SeqChunk<'_>> = jobs
            .iter_mut()
            .filter(|j| j.max > 0)
            .map(|j| {
                let start = j.seq.kv.len();
                j.seq.held.extend_from_slice(&j.context[start..]);
                SeqChunk {
                    tokens: &j.context[start..],
                    kv: &mut j.seq.kv,
                    all_logits: false,
                }
            })
            .collect();
        let mut logits = self.model.model.forward(&mut self.pool, &mut batch)?;
        drop(batch);
        let mut rows: Vec<(usize, usize)> =
            active.iter().enumerate().map(|(r, &j)| (j, r)).collect();
        let eog = self.model.tokenizer.eog_ids();
        loop {
            // Each active sequence takes a guess from its row.
            let mut next = Vec::new();
            for &(j, row) in &rows {
                let job = &mut jobs[j];
                let row = &logits.last_row(row)[..self.vocab];
                let mut context = job.context.clone();
                context.extend_from_slice(&proposals[j].tokens);
                let (prompt, output) = context.split_at(job.prompt_len);
                let sampler = &mut job.seq.sampler;
                let (token, q, confidence) = if sampler.params().is_greedy() {
                    let sampled = sampler.sample(row, prompt, output);
                    (sampled.token, None, sampled.logprob.exp())
                } else {
                    let q = sampler.distribution(row, prompt, output);
                    let token = sampler.draw_from(&q);
                    let confidence = q[token as usize];
                    (token, Some(q), confidence)
                };
                let p = &mut proposals[j];
                p.tokens.push(token);
                p.q.push(q);
                // A guess the draft model is unsure of is likely the last one taken:
                // computing it to guess further would mostly be wasted.
                let sure = confidence >= MIN_CONFIDENCE;
                if sure && p.tokens.len() < job.max && !eog.contains(&token) {
                    next.push(j);
                }
            }
            if next.is_empty() {
                return Ok(proposals);
            }
            // ...and computes it, for the next one.
            let last: Vec<[u32; 1]> = next
                .iter()
                .map(|&j| [*proposals[j].tokens.last().expect("a guess was taken")])
                .collect();
            let mut batch: Vec<SeqChunk<'_>> = Vec::with_capacity(next.len());
            let mut pick = next.iter().peekable();
            for (j, job) in jobs.iter_mut().enumerate() {
                if pick.next_if(|&&n| n == j).is_some() {
                    let t = &last[batch.len()];
                    job.seq.held.push(t[0]);
                    batch.push(SeqChunk {
                        tokens: t,
                        kv: &mut job.seq.kv,
                        all_logits: false,
                    });
                }
            }
            logits = self.model.model.forward(&mut self.pool, &mut batch)?;
            rows = next.into_iter().enumerate().map(|(r, j)| (j, r)).collect();
        }
    }
}

/// The draft model drafts on after a guess only while the guess had at least this
/// probability under it (llama.cpp's `--draft-p-min`, 0.75 there): each further guess costs
/// a forward of the draft model. 0.5 drafted fastest for qwen2.5-coder-0.5b and 1.5B on two
/// chat prompts, of 0.3, 0.5, 0.75 and 0.9 (docs/PERFORMANCE.md).
const MIN_CONFIDENCE: f32 = 0.5;

/// Length of the longest common prefix.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> Option<LoadedModel> {
        let Some(path) = std::env::var_os("VERRE_SMOLLM2_GGUF") else {
            eprintln!("skipped: set VERRE_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf");
            return None;
        };
        Some(LoadedModel::load(path).unwrap())
    }

    /// After a check rejects part of a draft, the draft model's cache holds exactly the
    /// accepted tokens, and drafts on from there as a fresh cache of the same tokens does.
    #[test]
    fn the_draft_cache_is_cut_back_to_the_accepted_tokens() {
        let Some(model) = smollm2() else { return };
        let prompt = model
            .encode_prompt("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,")
            .unwrap();
        let greedy = SamplingParams::default();
        let mut drafter = ModelDrafter::new(&model, model.model.new_kv_pool(64), 1 << 20, 7);
        let mut seq = DraftSeq::new(model.info().context_length, &greedy);
        // Chunks of 7: the prompt is caught up on over a few calls, drafting nothing.
        let mut calls = 0;
        let first = loop {
            calls += 1;
            let p = drafter
                .propose(&mut [DraftJob {
                    seq: &mut seq,
                    context: prompt.clone(),
                    prompt_len: prompt.len(),
                    max: 6,
                }])
                .unwrap()
                .remove(0);
            if !p.tokens.is_empty() || calls > prompt.len() {
                break p;
            }
        };
        assert_eq!(calls, prompt.len().div_ceil(7), "one chunk per call");
        assert!(first.tokens.len() >= 3, "{first:?}");
        // The target took the first two guesses, then another token.
        let mut accepted = prompt.clone();
        accepted.extend_from_slice(&first.tokens[..2]);
        accepted.push(first.tokens[2].wrapping_add(1) % 1000);
        drafter.keep_confirmed(&mut seq, &accepted);
        assert_eq!(seq.len(), prompt.len() + 2);
        assert_eq!(seq.held, accepted[..seq.len()]);
        let ask = |drafter: &mut ModelDrafter<'_>, seq: &mut DraftSeq| {
            drafter
                .propose(&mut [DraftJob {
                    seq,
                    context: accepted.clone(),
                    prompt_len: prompt.len(),
                    max: 5,
                }])
                .unwrap()
                .remove(0)
                .tokens
        };
        let resumed = ask(&mut drafter, &mut seq);
        let mut fresh_drafter =
            ModelDrafter::new(&model, model.model.new_kv_pool(64), 1 << 20, 512);
        let mut fresh = DraftSeq::new(model.info().context_length, &greedy);
        assert_eq!(resumed, ask(&mut fresh_drafter, &mut fresh));
        drafter.release(&mut seq);
        assert_eq!(drafter.pool.allocator().used(), 0);
    }

    #[test]
    fn the_tokens_after_the_latest_match_of_the_longest_tail_are_drafted() {
        // "... 7 8 9 | 1 2 3 4 5 | 7 8 9": the tail 7 8 9 was followed by 1 2 3.
        let ctx = [7, 8, 9, 1, 2, 3, 4, 5, 7, 8, 9];
        assert_eq!(prompt_lookup(&ctx, 3), vec![1, 2, 3]);
        assert_eq!(prompt_lookup(&ctx, 100), vec![1, 2, 3, 4, 5, 7, 8, 9]);
        // Two earlier matches: the latest one wins.
        let ctx = [5, 6, 1, 9, 9, 5, 6, 2, 0, 5, 6];
        assert_eq!(prompt_lookup(&ctx, 2), vec![2, 0]);
        // The longer tail wins over a later shorter one: 4 5 6 -> 7, though 5 6 -> 3 is later.
        let ctx = [4, 5, 6, 7, 1, 5, 6, 3, 4, 5, 6];
        assert_eq!(prompt_lookup(&ctx, 1), vec![7]);
    }

    #[test]
    fn no_match_or_no_room_drafts_nothing() {
        assert!(prompt_lookup(&[1, 2, 3, 4, 5], 4).is_empty());
        // A one-token tail is not looked up.
        assert!(prompt_lookup(&[1, 2, 3, 1], 4).is_empty());
        assert!(prompt_lookup(&[1, 2, 1, 2], 0).is_empty());
        assert!(prompt_lookup(&[], 4).is_empty());
        assert!(prompt_lookup(&[3], 4).is_empty());
        // A run of one token: the tail overlaps its own match and still drafts.
        assert_eq!(prompt_lookup(&[0, 0, 0, 0], 2), vec![0]);
    }
}
