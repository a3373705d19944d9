//! The output side of one sequence in the engine: pick a token from the logits (under the
//! grammar, if any), then decide what text it lets out and whether the output ends there.

use std::time::Duration;

use anyhow::Result;

use crate::constraint::Constraint;
use crate::draft::prompt_lookup;
use crate::generate::{FinishReason, GenerateRequest};
use crate::sampler::{Sampled, Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// The longest cycle [`loop_continuation`] looks for, in tokens.
const MAX_LOOP_PERIOD: usize = 12;

/// The token that would make the output repeat its latest cycle once more, when the output
/// already ends with that cycle repeated: 8 times for a one-token cycle (runs of one digit
/// or character token are legitimate for a while), 4 times for longer ones.
fn loop_continuation(output: &[u32]) -> Option<u32> {
    (1..=MAX_LOOP_PERIOD).find_map(|period| {
        let repeats = if period == 1 { 8 } else { 4 };
        let span = period * repeats;
        let tail = output.get(output.len().checked_sub(span)?..)?;
        (period..span)
            .all(|i| tail[i] == tail[i - period])
            .then(|| output[output.len() - period])
    })
}

/// Under a grammar, rule out the token that would continue a tight loop (a small model
/// repeating `NANANA` inside a string, or the same array item, until the token limit cuts
/// the output and it no longer validates), provided the grammar allows some other token.
/// The model then takes its next choice, usually the closing quote or bracket. Outputs stay
/// valid: only tokens the grammar allows remain.
fn break_loop(masked: &mut [f32], output: &[u32]) {
    let Some(token) = loop_continuation(output) else {
        return;
    };
    let t = token as usize;
    let others = masked
        .iter()
        .enumerate()
        .any(|(i, l)| i != t && *l != f32::NEG_INFINITY);
    if others && t < masked.len() {
        masked[t] = f32::NEG_INFINITY;
    }
}

/// How many tokens before the limit a JSON output starts closing what it has open (a
/// quarter of the budget, 8 to 64 tokens).
fn closing_margin(max_tokens: usize) -> usize {
    (max_tokens / 4).clamp(8, 64)
}

/// One step's result: the token, the text it completed (may be empty while a multi-byte
/// character or a possible stop string is held back), and the end of the output if it is
/// reached.
pub(crate) struct Step {
    pub sampled: Sampled,
    pub text: String,
    pub finish: Option<FinishReason>,
}

pub(crate) struct Decoding<'t> {
    pub output: Vec<u32>,
    pub sampler: Sampler,
    decoder: StreamDecoder<'t>,
    stops: StopMatcher,
    /// The grammar the output must follow (structured outputs).
    pub constraint: Option<Constraint>,
    eog: &'t [u32],
    ignore_eos: bool,
    max_tokens: usize,
    /// Logits with the grammar's mask applied (reused between steps).
    masked: Vec<f32>,
}

impl<'t> Decoding<'t> {
    /// `max_tokens` is already capped by the room left in the context.
    pub fn new(
        tokenizer: &'t Tokenizer,
        req: &GenerateRequest,
        sampling: SamplingParams,
        max_tokens: usize,
    ) -> Self {
        Self {
            output: Vec::new(),
            sampler: Sampler::new(sampling),
            // The output continues the prompt's text (a first `▁word` keeps its space
            // after prompt text).
            decoder: StreamDecoder::continuing(tokenizer, true, &req.prompt_ids),
            stops: StopMatcher::new(&req.stop),
            constraint: req.grammar.as_ref().map(|g| g.start()),
            eog: tokenizer.eog_ids(),
            // A grammar decides where the output ends: end tokens are never ignored then.
            ignore_eos: req.ignore_eos && req.grammar.is_none(),
            max_tokens,
            masked: Vec::new(),
        }
    }

    /// Choose the next token from `logits` and take it. An error (a grammar that allows no
    /// token) ends this sequence only. With a draft model's guess, when the request samples,
    /// `check` is the guess (`None`: one known to be rejected) and the distribution `q` it
    /// was drawn from; the token then comes from speculative sampling, distributed as a
    /// plain step's. Greedy steps ignore it (the guess is kept when it is the argmax).
    pub fn step(
        &mut self,
        logits: &[f32],
        prompt: &[u32],
        check: Option<(Option<u32>, &[f32])>,
    ) -> Result<Step> {
        let check = check.filter(|_| !self.sampler.params().is_greedy());
        let logits = match self.constraint.as_mut() {
            None => logits,
            Some(c) => {
                self.masked.clear();
                self.masked.extend_from_slice(logits);
                c.apply_mask(&mut self.masked)?;
                break_loop(&mut self.masked, &self.output);
                if self.output.len() + closing_margin(self.max_tokens) >= self.max_tokens {
                    c.close_json(&mut self.masked);
                }
                &self.masked
            }
        };
        let sampled = match check {
            None => self.sampler.sample(logits, prompt, &self.output),
            Some((guess, q)) => self
                .sampler
                .sample_against(logits, prompt, &self.output, guess, q),
        };
        let grammar_done = match self.constraint.as_mut() {
            Some(c) => {
                c.commit(sampled.token)?;
                c.is_finished()
            }
            None => false,
        };
        let (text, finish) = self.accept(sampled.token, grammar_done);
        Ok(Step {
            sampled,
            text,
            finish,
        })
    }

    /// Tokens to check in the next forward along with the last one (speculative decoding):
    /// under a grammar, the tokens it forces, then up to `lookup` tokens found by prompt
    /// lookup, as far as [`Decoding::fit_draft`] keeps them. Nothing is committed: the
    /// engine verifies each with [`Decoding::step`] on its own row. Also returns how many
    /// lead tokens are forced ones.
    pub fn draft(
        &mut self,
        prompt: &[u32],
        lookup: usize,
        fast_forward: bool,
    ) -> (Vec<u32>, usize) {
        let mut draft = match self.constraint.as_mut() {
            Some(c) if fast_forward => c.forced_tokens(),
            _ => Vec::new(),
        };
        let forced = draft.len();
        if lookup > 0 {
            let mut context = Vec::with_capacity(prompt.len() + self.output.len() + draft.len());
            context.extend_from_slice(prompt);
            context.extend_from_slice(&self.output);
            context.extend_from_slice(&draft);
            draft.extend(prompt_lookup(&context, lookup));
        }
        self.fit_draft(&mut draft);
        (draft, forced)
    }

    /// Cut a draft to what is worth checking: never past the token limit, under a grammar
    /// only what it allows, otherwise nothing after an end token (it ends the output).
    /// True when the grammar cut it: the first token dropped is one the model cannot pick.
    pub fn fit_draft(&mut self, draft: &mut Vec<u32>) -> bool {
        // Row i of the check picks token `output.len() + 1 + i`; the last row is a bonus.
        let room = self.max_tokens.saturating_sub(self.output.len() + 1);
        draft.truncate(room);
        match self.constraint.as_mut() {
            Some(c) => {
                let allowed = c.allowed_prefix(draft);
                let forbidden = draft.get(allowed).is_some_and(|t| !self.eog.contains(t));
                draft.truncate(allowed);
                forbidden
            }
            None => {
                // An end token ends the output: nothing after it is worth computing.
                if let Some(end) = draft.iter().position(|t| self.eog.contains(t)) {
                    draft.truncate(end + 1);
                }
                false
            }
        }
    }

    /// The text a token lets out, and whether the output ends here: an end-of-generation
    /// token, a stop string, a complete grammar, or the token limit.
    fn accept(&mut self, token: u32, grammar_done: bool) -> (String, Option<FinishReason>) {
        self.output.push(token);
        let eog = !self.ignore_eos && self.eog.contains(&token);
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
        if grammar_done || self.output.len() >= self.max_tokens {
            // Nothing held back can become a stop string now.
            text.push_str(&self.flush());
            let reason = if grammar_done {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            return (text, Some(reason));
        }
        (text, None)
    }

    /// Text still held back (a partial character or a possible stop string), let out at
    /// an end that is not a stop.
    pub fn flush(&mut self) -> String {
        let tail = self.decoder.finish();
        let mut text = self.stops.push(&tail).0;
        text.push_str(&self.stops.flush());
        text
    }

    /// The stop string that ended the output, if one did.
    pub fn stop_string(&self) -> Option<&str> {
        self.stops.matched()
    }

    /// Under a grammar: the time each token's mask took so far.
    pub fn mask_times(&self) -> Vec<Duration> {
        self.constraint
            .as_ref()
            .map(|c| c.mask_times().to_vec())
            .unwrap_or_default()
    }
}

/// Finds stop strings in streamed text. Text that might be the start of a stop string is
/// held back until it is known not to be.
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stopped: bool,
    /// The stop string that was reached.
    matched: Option<String>,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            emitted: 0,
            stopped: false,
            matched: None,
        }
    }

    /// Add text; returns what may be shown now and whether a stop string was reached.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        let search_from = self.emitted;
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| (i + search_from, s))
            })
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = hit {
            self.matched = Some(stop.clone());
            self.text.truncate(at);
            self.stopped = true;
            let out = self.text[self.emitted..].to_string();
            self.emitted = self.text.len();
            return (out, true);
        }
        let held = self.held_back();
        let upto = self.text.len() - held;
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        (out, false)
    }

    /// The stop string that ended the text, once one has.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// Release whatever was held back (the generation ended without a stop string).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    /// Length of the longest suffix of the text that is a proper prefix of a stop string.
    fn held_back(&self) -> usize {
        let mut held = 0;
        for s in &self.stops {
            for (i, _) in self.text[self.emitted..].char_indices() {
                let suffix = &self.text[self.emitted + i..];
                if suffix.len() < s.len() && s.starts_with(suffix) {
                    held = held.max(suffix.len());
                    break;
                }
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tight_loops_are_found_and_ordinary_repetition_is_not() {
        // "NA" x4 (period 2): the next "N" would repeat it again.
        assert_eq!(loop_continuation(&[9, 5, 6, 5, 6, 5, 6, 5, 6]), Some(5));
        // A three-token array item repeated four times.
        let item = [11, 12, 13];
        let out: Vec<u32> = [1]
            .iter()
            .chain(item.iter().cycle().take(12))
            .copied()
            .collect();
        assert_eq!(loop_continuation(&out), Some(11));
        // One token seven times is not yet a loop; eight times is.
        assert_eq!(loop_continuation(&[3, 7, 7, 7, 7, 7, 7, 7]), None);
        assert_eq!(loop_continuation(&[3, 7, 7, 7, 7, 7, 7, 7, 7]), Some(7));
        // Three repeats of a longer cycle, or varied JSON, are left alone.
        assert_eq!(loop_continuation(&[1, 2, 1, 2, 1, 2]), None);
        assert_eq!(loop_continuation(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), None);
        assert_eq!(loop_continuation(&[]), None);
    }

    #[test]
    fn the_loop_token_is_ruled_out_only_when_another_is_allowed() {
        let out = [5, 6, 5, 6, 5, 6, 5, 6];
        let mut logits = vec![f32::NEG_INFINITY; 8];
        logits[5] = 3.0;
        logits[2] = 1.0;
        break_loop(&mut logits, &out);
        assert_eq!(logits[5], f32::NEG_INFINITY);
        assert_eq!(logits[2], 1.0);
        // The grammar allows only the loop token: it stays (never an empty mask).
        let mut only = vec![f32::NEG_INFINITY; 8];
        only[5] = 3.0;
        break_loop(&mut only, &out);
        assert_eq!(only[5], 3.0);
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, String) {
        let mut m = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut shown = String::new();
        let mut hit = false;
        for p in pieces {
            let (t, h) = m.push(p);
            shown.push_str(&t);
            if h {
                hit = true;
                break;
            }
        }
        if !hit {
            shown.push_str(&m.flush());
        }
        (shown, hit, m.text)
    }

    #[test]
    fn stop_string_split_across_pieces_is_never_shown() {
        let (shown, hit, text) = run(&["\nUser:"], &["Hello", "\nUs", "er:", " more"]);
        assert!(hit);
        assert_eq!(shown, "Hello");
        assert_eq!(text, "Hello");
    }

    #[test]
    fn near_miss_is_released() {
        let (shown, hit, text) = run(&["STOP"], &["a ST", "OP", ""]);
        assert!(hit);
        assert_eq!((shown.as_str(), text.as_str()), ("a ", "a "));
        let (shown, hit, _) = run(&["STOP"], &["a ST", "ONE"]);
        assert!(!hit);
        assert_eq!(shown, "a STONE");
    }

    #[test]
    fn the_stop_string_reached_first_is_named() {
        let stops = ["END".to_string(), "\n\n".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("one\n"), ("one".to_string(), false));
        assert_eq!(m.matched(), None);
        assert_eq!(m.push("\nEND"), (String::new(), true));
        assert_eq!(m.matched(), Some("\n\n"));
        let mut m = StopMatcher::new(&stops);
        m.push("xEND\n\n");
        assert_eq!(m.matched(), Some("END"));
    }

    #[test]
    fn held_back_text_is_flushed_at_the_end_and_multibyte_is_safe() {
        let (shown, hit, _) = run(&["éé"], &["café"]);
        assert!(!hit);
        assert_eq!(shown, "café");
    }
}
