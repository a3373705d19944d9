//! Choosing the next token from a row of logits: penalties, temperature, top-k, top-p,
//! min-p, a seeded random draw, and log-probabilities for the caller.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick tokens. `temperature == 0` is greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability adds up to `top_p` (1.0 = off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0.0 = off).
    pub min_p: f32,
    /// llama.cpp/HF repetition penalty over the prompt and the output (1.0 = off).
    pub repetition_penalty: f32,
    /// OpenAI presence penalty over the output tokens (0.0 = off).
    pub presence_penalty: f32,
    /// OpenAI frequency penalty over the output tokens (0.0 = off).
    pub frequency_penalty: f32,
    /// Same seed, same prompt, same parameters: same tokens.
    pub seed: Option<u64>,
    /// How many alternatives to report with each token's log-probability (0 = none).
    pub top_logprobs: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            top_logprobs: 0,
        }
    }
}

impl SamplingParams {
    /// Reject values that make no sense, with the parameter's name.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |name: &str, why: &str| Err(format!("{name} {why}"));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", "must be > 0");
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad("presence_penalty", "must be in [-2, 2]");
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad("frequency_penalty", "must be in [-2, 2]");
        }
        if self.top_logprobs > 20 {
            return bad("top_logprobs", "must be at most 20");
        }
        Ok(())
    }

    /// Temperatures this small divide logits into infinities; they mean greedy anyway.
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }
}

/// A chosen token with its log-probability under the model and, on request, the most
/// likely alternatives (both from the raw model distribution, before any penalty).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Scratch reused between calls: (token, logit) candidates.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            candidates: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick the next token. `prompt` and `output` are the tokens so far, for the penalties.
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], output: &[u32]) -> Sampled {
        let p = &self.params;
        // log p(i) = logit(i) - log_norm: one pass over the vocabulary, no vector of logprobs.
        let log_norm = log_normalizer(logits);
        let top = if p.top_logprobs > 0 {
            let mut top = top_n(logits, p.top_logprobs);
            top.iter_mut().for_each(|(_, l)| *l -= log_norm);
            top
        } else {
            Vec::new()
        };

        let logits_raw = logits;
        let mut adjusted;
        let logits = if self.has_penalties() {
            adjusted = logits.to_vec();
            apply_penalties(&mut adjusted, p, prompt, output);
            &adjusted[..]
        } else {
            logits
        };

        let token = if p.is_greedy() {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        Sampled {
            token,
            logprob: logits_raw[token as usize] - log_norm,
            top,
        }
    }

    fn has_penalties(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0
    }

    /// Temperature, then top-k, top-p and min-p filters, then a draw from what is left.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let probs = self.filtered(logits);
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, &pr) in probs.iter().enumerate() {
            if r < pr {
                return self.candidates[i].0;
            }
            r -= pr;
        }
        self.candidates[probs.len() - 1].0
    }

    /// The tokens [`Sampler::draw`] picks from, most likely first, in `self.candidates`,
    /// and their probabilities (in the same order, not renormalised after the filters).
    fn filtered(&mut self, logits: &[f32]) -> Vec<f32> {
        let p = &self.params;
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l / p.temperature)),
        );
        // Sorted by logit, most likely first; ties by id so the order is reproducible.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit);

        let max = c[0].1;
        let mut probs: Vec<f32> = c.iter().map(|&(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);

        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, &pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&pr| pr >= floor).count().max(1));
        }
        probs.truncate(keep);
        probs
    }

    /// The distribution [`Sampler::sample`] draws the next token from (penalties and
    /// filters applied), as a row of probabilities over the vocabulary; greedy: all on
    /// the argmax.
    pub(crate) fn distribution(
        &mut self,
        logits: &[f32],
        prompt: &[u32],
        output: &[u32],
    ) -> Vec<f32> {
        let mut adjusted = logits.to_vec();
        if self.has_penalties() {
            apply_penalties(&mut adjusted, &self.params, prompt, output);
        }
        let mut dist = vec![0.0; logits.len()];
        if self.params.is_greedy() {
            dist[argmax(&adjusted) as usize] = 1.0;
            return dist;
        }
        let probs = self.filtered(&adjusted);
        let total: f32 = probs.iter().sum();
        for (&(t, _), pr) in self.candidates.iter().zip(probs) {
            dist[t as usize] = pr / total;
        }
        dist
    }

    /// A token drawn from `dist` (a row of probabilities) with this sampler's random
    /// stream: how a draft model proposes a token when the request samples.
    pub(crate) fn draw_from(&mut self, dist: &[f32]) -> u32 {
        let total: f32 = dist.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        let mut last = 0;
        for (t, &pr) in dist.iter().enumerate() {
            if pr > 0.0 {
                if r < pr {
                    return t as u32;
                }
                r -= pr;
                last = t;
            }
        }
        last as u32
    }

    /// Speculative sampling (Leviathan et al. 2023, Chen et al. 2023) of a token some
    /// drafter drew from `q`: the draft `proposal` is kept with probability
    /// `min(1, p/q)`, where `p` is the distribution [`Sampler::sample`] draws from;
    /// otherwise (or with no proposal: a draft known to be rejected) the token comes from
    /// `norm(max(0, p - q))`. Over the drafter's draws the token is distributed as `p`.
    pub(crate) fn sample_against(
        &mut self,
        logits: &[f32],
        prompt: &[u32],
        output: &[u32],
        proposal: Option<u32>,
        q: &[f32],
    ) -> Sampled {
        let p = self.distribution(logits, prompt, output);
        let q_of = |t: usize| q.get(t).copied().unwrap_or(0.0);
        let kept = proposal.filter(|&d| {
            let (pd, qd) = (p[d as usize], q_of(d as usize));
            self.rng.random::<f32>() * qd < pd
        });
        let token = kept.unwrap_or_else(|| {
            let residual: Vec<f32> = p
                .iter()
                .enumerate()
                .map(|(t, &pt)| (pt - q_of(t)).max(0.0))
                .collect();
            // p == q (to rounding): nothing is left over, and p itself is the answer.
            if residual.iter().sum::<f32>() > 1e-6 {
                self.draw_from(&residual)
            } else {
                self.draw_from(&p)
            }
        });
        self.sampled(logits, token)
    }

    /// `token` with its log-probability under the raw logits and the top alternatives.
    fn sampled(&self, logits: &[f32], token: u32) -> Sampled {
        let log_norm = log_normalizer(logits);
        let n = self.params.top_logprobs;
        let mut top = if n > 0 { top_n(logits, n) } else { Vec::new() };
        top.iter_mut().for_each(|(_, l)| *l -= log_norm);
        Sampled {
            token,
            logprob: logits[token as usize] - log_norm,
            top,
        }
    }
}

fn apply_penalties(logits: &mut [f32], p: &SamplingParams, prompt: &[u32], output: &[u32]) {
    if p.repetition_penalty != 1.0 {
        let mut seen = vec![false; logits.len()];
        for &t in prompt.iter().chain(output) {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (l, s) in logits.iter_mut().zip(seen) {
            if s {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, n) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.presence_penalty + p.frequency_penalty * n as f32;
            }
        }
    }
}

/// The index of the largest value; the lowest index among equals.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// Natural-log probabilities of a row of logits.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let log_norm = log_normalizer(logits);
    logits.iter().map(|&l| l - log_norm).collect()
}

/// `log(sum(exp(logits)))`, computed stably (max subtracted) with an f64 sum.
pub fn log_normalizer(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    max + sum.ln() as f32
}

/// The `n` largest values with their indices, largest first (ties: lower index first).
pub fn top_n(xs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<(u32, f32)> = xs.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
    let n = n.min(idx.len());
    if n == 0 {
        return Vec::new();
    }
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    idx.select_nth_unstable_by(n - 1, cmp);
    idx.truncate(n);
    idx.sort_unstable_by(cmp);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            seed: Some(7),
            ..Default::default()
        };
        f(&mut p);
        p
    }

    #[test]
    fn greedy_takes_the_argmax_and_reports_its_logprob() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let s = Sampler::new(params(|p| p.top_logprobs = 2)).sample(&logits, &[], &[]);
        assert_eq!(s.token, 1);
        let lp = log_softmax(&logits);
        assert!((s.logprob - lp[1]).abs() < 1e-6);
        assert_eq!(s.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let lp = log_softmax(&[1.0, 2.0, 3.0, -5.0]);
        let total: f32 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(|p| {
                p.temperature = 1.0;
                p.seed = Some(seed)
            }));
            (0..64)
                .map(|_| s.sample(&logits, &[], &[]).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.5, 0.4, 3.0, 0.1];
        let mut s = Sampler::new(params(|p| {
            p.temperature = 5.0;
            p.top_k = 1
        }));
        for _ in 0..50 {
            assert_eq!(s.sample(&logits, &[], &[]).token, 2);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // Token 0 holds ~88% of the mass; top_p 0.5 and min_p 0.5 both leave only it.
        let logits = [4.0, 2.0, 1.0, 0.0];
        for p in [
            params(|p| {
                p.temperature = 1.0;
                p.top_p = 0.5
            }),
            params(|p| {
                p.temperature = 1.0;
                p.min_p = 0.5
            }),
        ] {
            let mut s = Sampler::new(p);
            for _ in 0..50 {
                assert_eq!(s.sample(&logits, &[], &[]).token, 0);
            }
        }
    }

    #[test]
    fn penalties_steer_away_from_seen_tokens() {
        let logits = [1.0, 0.9, 0.0];
        let mut s = Sampler::new(params(|p| p.presence_penalty = 0.5));
        assert_eq!(s.sample(&logits, &[], &[0]).token, 1);
        let mut s = Sampler::new(params(|p| p.repetition_penalty = 1.5));
        assert_eq!(s.sample(&logits, &[0], &[]).token, 1);
        let mut s = Sampler::new(params(|p| p.frequency_penalty = 0.06));
        assert_eq!(
            s.sample(&logits, &[], &[0]).token,
            0,
            "one occurrence costs only 0.06"
        );
        assert_eq!(s.sample(&logits, &[], &[0, 0]).token, 1, "two cost 0.12");
    }

    /// The engine checks a draft token `d` by sampling the row as usual and keeping `d`
    /// when the sample is `d` (engine.rs, speculative decoding). Over many seeds that is
    /// the rejection sampling of Leviathan et al. for a drafter certain of `d`: `d` kept
    /// with probability p(d), and otherwise a token distributed as p without `d`,
    /// renormalised. Checked here against those two laws (4 sigma, chi-square p < 0.001).
    #[test]
    fn checking_a_draft_by_sampling_is_rejection_sampling() {
        let logits = [1.0, 0.2, 2.0, -0.5, 0.7, 1.5];
        let draft = 2usize;
        let p: Vec<f64> = log_softmax(&logits)
            .iter()
            .map(|l| (*l as f64).exp())
            .collect();
        let n = 20_000;
        let mut rejected = [0usize; 6];
        let mut kept = 0;
        for seed in 0..n {
            let mut s = Sampler::new(params(|q| {
                q.temperature = 1.0;
                q.seed = Some(seed)
            }));
            match s.sample(&logits, &[], &[]).token as usize {
                t if t == draft => kept += 1,
                t => rejected[t] += 1,
            }
        }
        let rate = kept as f64 / n as f64;
        let sigma = (p[draft] * (1.0 - p[draft]) / n as f64).sqrt();
        assert!(
            (rate - p[draft]).abs() < 4.0 * sigma,
            "kept {rate}, p(d) = {}",
            p[draft]
        );
        let misses = (n - kept) as f64;
        let residual = 1.0 - p[draft];
        let chi2: f64 = (0..6)
            .filter(|&t| t != draft)
            .map(|t| {
                let expected = misses * p[t] / residual;
                (rejected[t] as f64 - expected).powi(2) / expected
            })
            .sum();
        // 4 degrees of freedom: chi-square above 18.47 has probability 0.001.
        assert!(chi2 < 18.47, "chi2 {chi2}: {rejected:?}");
    }

    /// A drafter that proposes tokens from its own distribution `q`, checked with
    /// [`Sampler::sample_against`]: the tokens come out distributed as `p`, whatever `q`
    /// (chi-square over 20,000 seeds, p < 0.001), and a draft `q` equal to `p` is always
    /// kept.
    #[test]
    fn speculative_sampling_against_a_draft_distribution_gives_p() {
        let logits = [1.0, 0.2, 2.0, -0.5, 0.7, 1.5];
        let p: Vec<f64> = log_softmax(&logits)
            .iter()
            .map(|l| (*l as f64).exp())
            .collect();
        // A drafter far from p: most of its mass on token 3, which p finds unlikely.
        let q = [0.05f32, 0.05, 0.1, 0.6, 0.1, 0.1];
        let n = 20_000u64;
        let mut counts = [0usize; 6];
        for seed in 0..n {
            let mut drafter = Sampler::new(params(|s| {
                s.temperature = 1.0;
                s.seed = Some(seed ^ 0x5eed)
            }));
            let d = drafter.draw_from(&q);
            let mut s = Sampler::new(params(|s| {
                s.temperature = 1.0;
                s.seed = Some(seed)
            }));
            counts[s.sample_against(&logits, &[], &[], Some(d), &q).token as usize] += 1;
        }
        let chi2: f64 = (0..6)
            .map(|t| {
                let expected = n as f64 * p[t];
                (counts[t] as f64 - expected).powi(2) / expected
            })
            .sum();
        // 5 degrees of freedom: chi-square above 20.52 has probability 0.001.
        assert!(chi2 < 20.52, "chi2 {chi2}: {counts:?}");
        // Without the residual (a rejected draft resampled from p) token 3 would be
        // over-represented: the test can tell.
        let mut s = Sampler::new(params(|s| s.temperature = 1.0));
        let exact: Vec<f32> = p.iter().map(|&x| x as f32).collect();
        for d in 0..6 {
            assert_eq!(
                s.sample_against(&logits, &[], &[], Some(d), &exact).token,
                d
            );
        }
    }

    #[test]
    fn the_distribution_is_what_sample_draws_from() {
        let logits = [4.0, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(params(|p| {
            p.temperature = 1.0;
            p.top_p = 0.9
        }));
        let d = s.distribution(&logits, &[], &[]);
        assert!((d.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(d[3], 0.0, "top_p cuts the tail: {d:?}");
        let mut g = Sampler::new(params(|_| {}));
        assert_eq!(g.distribution(&logits, &[], &[]), vec![1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn validate_names_the_bad_parameter() {
        let e = params(|p| p.top_p = 0.0).validate().unwrap_err();
        assert!(e.starts_with("top_p"), "{e}");
        let e = params(|p| p.temperature = -1.0).validate().unwrap_err();
        assert!(e.starts_with("temperature"), "{e}");
    }
}
