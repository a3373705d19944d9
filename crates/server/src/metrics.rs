//! `/metrics` in the Prometheus text format, with vLLM's metric shapes under the `verre:`
//! prefix (`vllm:time_to_first_token_seconds` is `verre:time_to_first_token_seconds`, with
//! the same buckets and the same `model_name` label), so vLLM's dashboards adapt by a rename.
//!
//! Counters and gauges come from each engine; latency histograms are measured here, where
//! the tokens leave for the client. Embedding models count their input tokens in
//! `verre:prompt_tokens_total` and appear in no other family.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use verre_engine::engine::EngineMetrics;

use crate::state::Models;

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// A Prometheus histogram: cumulative bucket counts, a sum and a count.
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Default, Clone)]
struct HistogramState {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len() + 1],
                sum: 0.0,
            }),
        }
    }

    pub fn observe(&self, value: Duration) {
        let v = value.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.counts[bucket] += 1;
        s.sum += v;
    }

    pub fn count(&self) -> u64 {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.counts.iter().sum()
    }

    /// The samples of this histogram (the family's HELP and TYPE lines come before).
    fn render(&self, out: &mut String, name: &str, label: &str) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut cumulative = 0;
        for (i, count) in s.counts.iter().enumerate() {
            cumulative += count;
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{label},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{{label}}} {}", s.sum);
        let _ = writeln!(out, "{name}_count{{{label}}} {cumulative}");
    }
}

/// Latency histograms of one model.
pub struct RequestLatency {
    pub time_to_first_token: Histogram,
    pub inter_token: Histogram,
    pub end_to_end: Histogram,
    pub queue_time: Histogram,
}

impl Default for RequestLatency {
    fn default() -> Self {
        Self {
            time_to_first_token: Histogram::new(TTFT_BUCKETS),
            inter_token: Histogram::new(ITL_BUCKETS),
            end_to_end: Histogram::new(E2E_BUCKETS),
            queue_time: Histogram::new(E2E_BUCKETS),
        }
    }
}

/// Times one request as its tokens go out: the first token of any choice, the gaps
/// between the tokens of each choice, and the whole request when it is done.
pub struct RequestTimer {
    latency: Arc<RequestLatency>,
    start: Instant,
    first_seen: bool,
    /// When each choice's last token went out.
    last: Vec<Option<Instant>>,
}

impl RequestTimer {
    pub fn start(latency: Arc<RequestLatency>, choices: usize) -> Self {
        Self {
            latency,
            start: Instant::now(),
            first_seen: false,
            last: vec![None; choices],
        }
    }

    pub fn token(&mut self, choice: usize) {
        let now = Instant::now();
        if !self.first_seen {
            self.first_seen = true;
            self.latency.time_to_first_token.observe(now - self.start);
        }
        if let Some(slot) = self.last.get_mut(choice) {
            if let Some(previous) = *slot {
                self.latency.inter_token.observe(now - previous);
            }
            *slot = Some(now);
        }
    }

    /// The time one engine request waited before it was admitted.
    pub fn queued(&self, wait: Duration) {
        self.latency.queue_time.observe(wait);
    }

    pub fn done(&self) {
        self.latency.end_to_end.observe(self.start.elapsed());
    }
}

/// The whole `/metrics` page.
pub fn render(all: &Models) -> String {
    let mut out = String::new();
    let label = |id: &str| format!("model_name=\"{}\"", escape_label(id));
    let models = &all.chat;
    let labels: Vec<String> = models.iter().map(|m| label(&m.id)).collect();
    let embedding_labels: Vec<String> = all.embedding.iter().map(|m| label(&m.id)).collect();
    let engines: Vec<EngineMetrics> = models.iter().map(|m| m.engine.metrics()).collect();
    // Chat models' values first, then (prompt tokens only) the embedding models'.
    let mut family = |name: &str, kind: &str, help: &str, values: Vec<u64>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (label, value) in labels.iter().chain(&embedding_labels).zip(values) {
            let _ = writeln!(out, "{name}{{{label}}} {value}");
        }
    };
    family(
        "verre:num_requests_running",
        "gauge",
        "Number of requests being decoded.",
        engines.iter().map(|m| m.running as u64).collect(),
    );
    family(
        "verre:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be admitted.",
        engines.iter().map(|m| m.waiting as u64).collect(),
    );
    family(
        "verre:prompt_tokens_total",
        "counter",
        "Number of prompt tokens processed.",
        engines
            .iter()
            .map(|m| m.prompt_tokens)
            .chain(
                all.embedding
                    .iter()
                    .map(|m| m.prompt_tokens.load(Ordering::Relaxed)),
            )
            .collect(),
    );
    family(
        "verre:generation_tokens_total",
        "counter",
        "Number of tokens generated.",
        engines.iter().map(|m| m.generation_tokens).collect(),
    );
    family(
        "verre:prefix_cache_queries_total",
        "counter",
        "Prompt tokens looked up in the prefix cache.",
        engines.iter().map(|m| m.prefix_cache_queries).collect(),
    );
    family(
        "verre:prefix_cache_hits_total",
        "counter",
        "Prompt tokens found in the prefix cache (not recomputed).",
        engines.iter().map(|m| m.prefix_cache_hits).collect(),
    );
    family(
        "verre:num_preemptions_total",
        "counter",
        "Requests preempted for lack of KV cache blocks (recomputed later).",
        engines.iter().map(|m| m.preemptions).collect(),
    );
    family(
        "verre:spec_decode_num_draft_tokens_total",
        "counter",
        "Draft tokens checked by speculative decoding (prompt lookup and grammar-forced tokens).",
        engines.iter().map(|m| m.draft_tokens).collect(),
    );
    family(
        "verre:spec_decode_num_accepted_tokens_total",
        "counter",
        "Draft tokens the model confirmed (each saved a forward pass).",
        engines.iter().map(|m| m.accepted_draft_tokens).collect(),
    );
    let _ = writeln!(
        out,
        "# HELP verre:kv_cache_usage_perc KV cache usage: share of blocks in use, 1 means 100 percent.\n# TYPE verre:kv_cache_usage_perc gauge"
    );
    for (m, label) in engines.iter().zip(&labels) {
        let usage = if m.kv_blocks_total == 0 {
            0.0
        } else {
            m.kv_blocks_used as f64 / m.kv_blocks_total as f64
        };
        let _ = writeln!(out, "verre:kv_cache_usage_perc{{{label}}} {usage}");
    }
    let _ = writeln!(
        out,
        "# HELP verre:spec_decode_draft_acceptance_rate Share of draft tokens accepted, 1 means 100 percent (0 before any draft).\n# TYPE verre:spec_decode_draft_acceptance_rate gauge"
    );
    for (m, label) in engines.iter().zip(&labels) {
        let rate = if m.draft_tokens == 0 {
            0.0
        } else {
            m.accepted_draft_tokens as f64 / m.draft_tokens as f64
        };
        let _ = writeln!(
            out,
            "verre:spec_decode_draft_acceptance_rate{{{label}}} {rate}"
        );
    }
    // Per drafter: a draft model, or prompt lookup with the tokens a grammar forces.
    type PerDrafter = fn(u64, u64) -> f64;
    let per_drafter: [(&str, &str, &str, PerDrafter); 3] = [
        (
            "verre:spec_decode_drafter_draft_tokens_total",
            "counter",
            "Draft tokens checked, by drafter (model: a draft model; lookup: prompt lookup and grammar-forced tokens).",
            |drafted, _| drafted as f64,
        ),
        (
            "verre:spec_decode_drafter_accepted_tokens_total",
            "counter",
            "Draft tokens confirmed, by drafter.",
            |_, accepted| accepted as f64,
        ),
        (
            "verre:spec_decode_drafter_acceptance_rate",
            "gauge",
            "Share of a drafter's tokens accepted, 1 means 100 percent (0 before any draft).",
            |drafted, accepted| {
                if drafted == 0 {
                    0.0
                } else {
                    accepted as f64 / drafted as f64
                }
            },
        ),
    ];
    for (name, kind, help, value) in per_drafter {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (m, label) in engines.iter().zip(&labels) {
            let by_model = (m.model_draft_tokens, m.model_accepted_draft_tokens);
            let by_lookup = (
                m.draft_tokens - m.model_draft_tokens,
                m.accepted_draft_tokens - m.model_accepted_draft_tokens,
            );
            for (drafter, (drafted, accepted)) in [("model", by_model), ("lookup", by_lookup)] {
                let v = value(drafted, accepted);
                let _ = writeln!(out, "{name}{{{label},drafter=\"{drafter}\"}} {v}");
            }
        }
    }
    let mut histograms = |name: &str, help: &str, pick: fn(&RequestLatency) -> &Histogram| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (model, label) in models.iter().zip(&labels) {
            pick(&model.latency).render(&mut out, name, label);
        }
    };
    histograms(
        "verre:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        |l| &l.time_to_first_token,
    );
    histograms(
        "verre:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        |l| &l.inter_token,
    );
    histograms(
        "verre:request_queue_time_seconds",
        "Histogram of time spent waiting for admission in seconds.",
        |l| &l.queue_time,
    );
    histograms(
        "verre:e2e_request_latency_seconds",
        "Histogram of end-to-end request latency in seconds.",
        |l| &l.end_to_end,
    );
    out
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        for ms in [50, 500, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        h.render(&mut out, "x", "model_name=\"m\"");
        assert!(
            out.contains("x_bucket{model_name=\"m\",le=\"0.1\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{model_name=\"m\",le=\"1\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{model_name=\"m\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_count{model_name=\"m\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{model_name=\"m\"} 5.55\n"), "{out}");
    }
}
