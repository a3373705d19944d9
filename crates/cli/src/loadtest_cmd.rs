//! `verre loadtest`: a load generator for any OpenAI-compatible server (verre or a peer).
//! Many clients stream chat completions at once; the report gives time to first token,
//! inter-token latency, end-to-end latency and throughput. A run is bounded in requests and
//! in time, and a failed request is counted, never retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Args)]
pub struct LoadtestArgs {
    /// The server: `http://HOST:PORT` (with or without `/v1`) or the full
    /// `.../v1/chat/completions` URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Model name sent in each request.
    #[arg(short, long)]
    pub model: String,
    /// Requests in flight at once.
    #[arg(short, long, default_value_t = 8)]
    pub concurrency: usize,
    /// Requests measured (after the warm-up).
    #[arg(short = 'n', long, default_value_t = 32)]
    pub requests: usize,
    /// Prompt length in tokens, roughly: the server's tokenizer decides the exact count,
    /// which the report gives.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Most tokens generated per request (`max_tokens`).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Every prompt starts with the same prefix of about this many tokens (of the
    /// --prompt-tokens), to exercise prefix caching.
    #[arg(long, default_value_t = 0)]
    pub shared_prefix: usize,
    /// Send the same prompt in every request.
    #[arg(long)]
    pub repeat_prompt: bool,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Ask the server to generate past end-of-sequence, so that every request makes
    /// --max-tokens tokens (`ignore_eos`, which verre, vLLM and llama-server understand).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Sampling seed sent with each request; it also picks the prompts' words.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Requests sent before the measured ones and left out of the report.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Stop the measured requests after this many seconds; those still running are cut
    /// and counted as such.
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Give up on one request after this many seconds (counted as a timeout).
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn loadtest(args: LoadtestArgs) -> Result<()> {
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    ensure!(args.requests > 0, "--requests must be at least 1");
    ensure!(args.max_tokens > 0, "--max-tokens must be at least 1");
    ensure!(args.prompt_tokens > 0, "--prompt-tokens must be at least 1");
    ensure!(
        args.shared_prefix <= args.prompt_tokens,
        "--shared-prefix ({}) must not exceed --prompt-tokens ({})",
        args.shared_prefix,
        args.prompt_tokens
    );
    ensure!(
        args.duration > 0.0 && args.duration.is_finite(),
        "--duration must be a positive number of seconds"
    );
    ensure!(
        args.timeout > 0.0 && args.timeout.is_finite(),
        "--timeout must be a positive number of seconds"
    );
    let endpoint = chat_endpoint(&args.url)?;
    // One thread is plenty for hundreds of streams, and leaves the cores to a server under
    // test on the same machine.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(run(&args, endpoint))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if report.ok == 0 {
        bail!(
            "no request succeeded ({} sent){}",
            report.sent,
            report
                .error_samples
                .first()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// The chat-completions URL for what the user gave as `--url`.
fn chat_endpoint(url: &str) -> Result<String> {
    let url = url.trim_end_matches('/');
    ensure!(
        url.starts_with("http://") || url.starts_with("https://"),
        "--url must start with http:// or https://, got {url:?}"
    );
    Ok(if url.ends_with("/chat/completions") {
        url.to_string()
    } else if url.ends_with("/v1") {
        format!("{url}/chat/completions")
    } else {
        format!("{url}/v1/chat/completions")
    })
}

/// Everything a worker needs to send request number `i`.
struct Target {
    client: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
    prompts: Prompts,
    model: String,
    max_tokens: usize,
    temperature: f32,
    ignore_eos: bool,
    seed: Option<u64>,
    timeout: Duration,
}

impl Target {
    fn body(&self, i: usize) -> Vec<u8> {
        let mut body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompts.prompt(i)}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if self.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        if let Some(seed) = self.seed {
            body["seed"] = json!(seed);
        }
        body.to_string().into_bytes()
    }
}

async fn run(args: &LoadtestArgs, endpoint: String) -> Result<Report> {
    let client = reqwest::Client::builder()
        .retry(reqwest::retry::never())
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let target = Arc::new(Target {
        client,
        endpoint,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        prompts: Prompts {
            tokens: args.prompt_tokens,
            shared_prefix: args.shared_prefix,
            repeat: args.repeat_prompt,
            seed: args.seed.unwrap_or(0),
        },
        model: args.model.clone(),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        ignore_eos: args.ignore_eos,
        seed: args.seed,
        timeout: Duration::from_secs_f64(args.timeout),
    });
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((args.warmup + args.requests) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} requests, {elapsed}")
            .expect("a valid progress template"),
    );
    if args.warmup > 0 {
        bar.set_prefix("warm-up");
        // Warm-up requests are bounded by --timeout each, not by --duration.
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let warm = run_phase(&target, 0, args.warmup, args.concurrency, far, &bar).await;
        let failed = warm.iter().filter(|s| s.outcome != Outcome::Ok).count();
        if failed > 0 {
            bar.suspend(|| {
                eprintln!(
                    "loadtest: {failed} of {} warm-up requests failed",
                    args.warmup
                )
            });
        }
    }
    bar.set_prefix("measure");
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let samples = run_phase(
        &target,
        args.warmup,
        args.requests,
        args.concurrency,
        deadline,
        &bar,
    )
    .await;
    let wall = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(Report::new(args, &target.endpoint, &samples, wall))
}

/// Sends requests `first..first + count` from `concurrency` workers; none starts after
/// `deadline`, and any still running then is cut.
async fn run_phase(
    target: &Arc<Target>,
    first: usize,
    count: usize,
    concurrency: usize,
    deadline: Instant,
    bar: &ProgressBar,
) -> Vec<Sample> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.min(count))
        .map(|_| {
            let (target, next, bar) = (target.clone(), next.clone(), bar.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || Instant::now() >= deadline {
                        return samples;
                    }
                    samples.push(send(&target, first + i, deadline).await);
                    bar.inc(1);
                }
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(count);
    for worker in workers {
        // A worker only panics on a bug; its requests are then missing from the report.
        if let Ok(mut s) = worker.await {
            samples.append(&mut s);
        }
    }
    samples
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// The server answered with this non-2xx status (429 is reported as rejected).
    Status(u16),
    /// No answer within --timeout.
    Timeout,
    /// Still running when --duration ran out.
    Cut,
    /// Could not connect, or the connection broke.
    Connection,
    /// The stream was malformed, carried an error, or ended without `[DONE]`.
    Stream,
}

/// What one request measured. Times in seconds.
#[derive(Debug)]
struct Sample {
    outcome: Outcome,
    error: Option<String>,
    ttft: Option<f64>,
    /// Gaps between consecutive content chunks.
    gaps: Vec<f64>,
    e2e: f64,
    prompt_tokens: Option<u64>,
    /// From the server's usage, else (and while streaming) the number of content chunks.
    completion_tokens: u64,
    usage_reported: bool,
}

async fn send(target: &Target, i: usize, run_deadline: Instant) -> Sample {
    let start = Instant::now();
    let request_deadline = start + target.timeout;
    let mut sample = Sample {
        outcome: Outcome::Ok,
        error: None,
        ttft: None,
        gaps: Vec::new(),
        e2e: 0.0,
        prompt_tokens: None,
        completion_tokens: 0,
        usage_reported: false,
    };
    let limit = request_deadline.min(run_deadline);
    let streamed = tokio::time::timeout_at(limit.into(), stream(target, i, start, &mut sample));
    let result = match streamed.await {
        Ok(result) => result,
        Err(_) if run_deadline <= request_deadline => Err((Outcome::Cut, None)),
        Err(_) => Err((
            Outcome::Timeout,
            Some(format!("no complete answer within {:?}", target.timeout)),
        )),
    };
    sample.e2e = start.elapsed().as_secs_f64();
    if let Err((outcome, error)) = result {
        sample.outcome = outcome;
        sample.error = error;
    }
    sample
}

type Failure = (Outcome, Option<String>);

/// Sends request `i` and reads its stream into `sample`.
async fn stream(
    target: &Target,
    i: usize,
    start: Instant,
    sample: &mut Sample,
) -> Result<(), Failure> {
    let mut request = target
        .client
        .post(&target.endpoint)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(target.body(i));
    if let Some(key) = &target.api_key {
        request = request.bearer_auth(key);
    }
    let connection = |e: reqwest::Error| (Outcome::Connection, Some(format!("{e:#}")));
    let response = request.send().await.map_err(connection)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err((
            Outcome::Status(status.as_u16()),
            Some(format!("HTTP {status}: {}", clip(&body))),
        ));
    }
    let stream_error = |message: String| (Outcome::Stream, Some(message));
    let mut bytes = response.bytes_stream();
    let mut lines = SseLines::default();
    let mut last_chunk: Option<Instant> = None;
    let mut usage = None;
    while let Some(piece) = bytes.next().await {
        let piece = piece.map_err(connection)?;
        let now = Instant::now();
        for data in lines.push(&piece) {
            if data == "[DONE]" {
                if let Some(Usage { completion, .. }) = usage {
                    sample.completion_tokens = completion;
                }
                sample.prompt_tokens = usage.map(|u| u.prompt);
                sample.usage_reported = usage.is_some();
                return Ok(());
            }
            let event: Value = serde_json::from_str(&data)
                .map_err(|e| stream_error(format!("unreadable chunk ({e}): {}", clip(&data))))?;
            let chunk = read_chunk(&event);
            if let Some(message) = chunk.error {
                return Err(stream_error(format!("error in stream: {}", clip(&message))));
            }
            if chunk.content {
                match last_chunk {
                    None => sample.ttft = Some((now - start).as_secs_f64()),
                    Some(prev) => sample.gaps.push((now - prev).as_secs_f64()),
                }
                last_chunk = Some(now);
                sample.completion_tokens += 1;
            }
            usage = chunk.usage.or(usage);
        }
    }
    Err(stream_error("the stream ended without [DONE]".into()))
}

fn clip(text: &str) -> String {
    const MAX: usize = 300;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Splits a server-sent event stream into the payloads of its `data:` lines, however the
/// bytes are cut into pieces on the wire.
#[derive(Default)]
struct SseLines {
    pending: Vec<u8>,
}

impl SseLines {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut payloads = Vec::new();
        let mut start = 0;
        while let Some(len) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + len];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(data) = line.strip_prefix(b"data:") {
                let data = data.strip_prefix(b" ").unwrap_or(data);
                payloads.push(String::from_utf8_lossy(data).into_owned());
            }
            start += len + 1;
        }
        self.pending.drain(..start);
        payloads
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Usage {
    prompt: u64,
    completion: u64,
}

/// What one streamed chat chunk carries for the measurement.
#[derive(Debug, PartialEq)]
struct ChunkInfo {
    /// Some generated text (answer or reasoning) arrived.
    content: bool,
    usage: Option<Usage>,
    error: Option<String>,
}

fn read_chunk(event: &Value) -> ChunkInfo {
    let error = event.get("error").map(|e| match e["message"].as_str() {
        Some(m) => m.to_string(),
        None => e.to_string(),
    });
    let text = |delta: &Value, field: &str| delta[field].as_str().is_some_and(|s| !s.is_empty());
    let content = event["choices"].as_array().is_some_and(|choices| {
        choices.iter().any(|c| {
            let delta = &c["delta"];
            text(delta, "content") || text(delta, "reasoning_content")
        })
    });
    let usage = event["usage"].as_object().and_then(|u| {
        Some(Usage {
            prompt: u.get("prompt_tokens")?.as_u64()?,
            completion: u.get("completion_tokens")?.as_u64()?,
        })
    });
    ChunkInfo {
        content,
        usage,
        error,
    }
}

/// Deterministic prompts of about `tokens` tokens each: common English words, which most
/// BPE vocabularies hold as one token with their leading space, in sentences of ten.
struct Prompts {
    tokens: usize,
    shared_prefix: usize,
    repeat: bool,
    seed: u64,
}

const WORDS: &[&str] = &[
    "time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child", "world",
    "school", "state", "family", "student", "group", "country", "problem", "hand", "part", "place",
    "case", "week", "company", "system", "program", "question", "work", "number", "night", "point",
    "home", "water", "room", "mother", "area", "money", "story", "fact", "month", "lot", "right",
    "study", "book", "eye", "job", "word", "business", "issue", "side", "kind", "head", "house",
    "service", "friend", "father", "power", "hour", "game", "line", "end", "member", "law", "car",
    "city", "name", "team", "minute", "idea", "body", "back", "parent", "face", "level", "office",
    "door", "health", "person", "art", "war", "history", "party", "result", "change", "morning",
    "reason", "research", "girl", "moment", "air", "teacher", "force", "music", "river", "green",
    "small", "large", "old", "new", "good", "long", "little", "great", "high", "open", "red",
    "blue", "black", "white", "early", "late", "young", "strong", "free", "full", "clear",
    "simple", "short", "light", "dark", "warm", "cold", "fast", "slow", "north", "south", "east",
    "west", "table", "window", "garden",
];

impl Prompts {
    fn prompt(&self, i: usize) -> String {
        let i = if self.repeat { 0 } else { i as u64 };
        let mut text = String::new();
        if self.shared_prefix > 0 {
            // The shared prefix never depends on i, and request salts never reach u64::MAX.
            words(&mut text, self.shared_prefix, self.seed ^ u64::MAX);
        }
        words(&mut text, self.tokens - self.shared_prefix, self.seed ^ i);
        text
    }
}

/// Appends about `tokens` tokens of words chosen by `salt`.
fn words(text: &mut String, tokens: usize, salt: u64) {
    let mut state = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut n = 0;
    while n < tokens {
        // Every eleventh token is a full stop: sentences of ten words.
        if n % 11 == 10 {
            text.push('.');
        } else {
            let word = WORDS[(splitmix64(&mut state) % WORDS.len() as u64) as usize];
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(word);
        }
        n += 1;
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mean, extremes and percentiles of a set of samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Distribution {
    count: usize,
    mean: f64,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Distribution {
    /// None for no samples; NaNs are a caller's bug and sort last.
    fn of(mut xs: Vec<f64>) -> Option<Self> {
        if xs.is_empty() {
            return None;
        }
        xs.sort_by(f64::total_cmp);
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        Some(Self {
            count: xs.len(),
            mean: r(xs.iter().sum::<f64>() / xs.len() as f64),
            min: r(xs[0]),
            p50: r(percentile(&xs, 50.0)),
            p90: r(percentile(&xs, 90.0)),
            p99: r(percentile(&xs, 99.0)),
            max: r(xs[xs.len() - 1]),
        })
    }
}

/// The p-th percentile (0..=100) of sorted, non-empty samples, interpolating linearly
/// between the two nearest ranks (numpy's default).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// The outcome of a run, as printed.
#[derive(Debug, Serialize)]
struct Report {
    url: String,
    model: String,
    concurrency: usize,
    requests: usize,
    warmup: usize,
    prompt_tokens_target: usize,
    shared_prefix: usize,
    repeat_prompt: bool,
    max_tokens: usize,
    ignore_eos: bool,
    /// Measured requests started (fewer than `requests` when --duration ran out).
    sent: usize,
    ok: usize,
    /// Answered 429 Too Many Requests.
    rejected: usize,
    /// Other failures by kind: an HTTP status, "timeout", "connection" or "stream".
    errors: BTreeMap<String, usize>,
    /// Still running when --duration ran out.
    cut: usize,
    wall_seconds: f64,
    requests_per_second: f64,
    /// Completion tokens of the successful requests, and the tokens streamed so far by
    /// those cut at --duration, over the wall time.
    output_tokens_per_second: f64,
    prompt_tokens_per_second: f64,
    /// Means over the successful requests; prompt tokens as the server counted them.
    prompt_tokens_mean: Option<f64>,
    completion_tokens_mean: Option<f64>,
    /// Successful requests whose stream ended with a usage chunk (the others' completion
    /// tokens are counted as content chunks).
    usage_reported: usize,
    /// Successful requests that made fewer than `max_tokens` tokens (stopped at
    /// end-of-sequence or a stop string; with --ignore-eos, a server ignoring the field).
    short: usize,
    ttft_ms: Option<Distribution>,
    /// Time between consecutive content chunks, over all successful requests.
    itl_ms: Option<Distribution>,
    /// Per request: (end-to-end - TTFT) / (completion tokens - 1).
    tpot_ms: Option<Distribution>,
    e2e_ms: Option<Distribution>,
    /// The first few distinct error messages.
    error_samples: Vec<String>,
}

impl Report {
    fn new(args: &LoadtestArgs, endpoint: &str, samples: &[Sample], wall: f64) -> Self {
        let ok: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.outcome == Outcome::Ok)
            .collect();
        let mut errors = BTreeMap::new();
        let mut error_samples: Vec<String> = Vec::new();
        let (mut rejected, mut cut) = (0, 0);
        for s in samples {
            match &s.outcome {
                Outcome::Ok => {}
                Outcome::Status(429) => rejected += 1,
                Outcome::Cut => cut += 1,
                other => {
                    let kind = match other {
                        Outcome::Status(code) => code.to_string(),
                        Outcome::Timeout => "timeout".into(),
                        Outcome::Connection => "connection".into(),
                        _ => "stream".into(),
                    };
                    *errors.entry(kind).or_insert(0) += 1;
                }
            }
            if let Some(e) = &s.error
                && error_samples.len() < 5
                && !error_samples.contains(e)
            {
                error_samples.push(e.clone());
            }
        }
        let ms = |xs: Vec<f64>| Distribution::of(xs.into_iter().map(|x| x * 1e3).collect());
        let completion: u64 = ok.iter().map(|s| s.completion_tokens).sum();
        let streamed_when_cut: u64 = samples
            .iter()
            .filter(|s| s.outcome == Outcome::Cut)
            .map(|s| s.completion_tokens)
            .sum();
        let prompt_counted: Vec<u64> = ok.iter().filter_map(|s| s.prompt_tokens).collect();
        let prompt: u64 = prompt_counted.iter().sum();
        let mean = |sum: u64, n: usize| (n > 0).then(|| round2(sum as f64 / n as f64));
        let per_second = |x: f64| if wall > 0.0 { round2(x / wall) } else { 0.0 };
        Report {
            url: endpoint.to_string(),
            model: args.model.clone(),
            concurrency: args.concurrency,
            requests: args.requests,
            warmup: args.warmup,
            prompt_tokens_target: args.prompt_tokens,
            shared_prefix: args.shared_prefix,
            repeat_prompt: args.repeat_prompt,
            max_tokens: args.max_tokens,
            ignore_eos: args.ignore_eos,
            sent: samples.len(),
            ok: ok.len(),
            rejected,
            errors,
            cut,
            wall_seconds: round2(wall),
            requests_per_second: per_second(ok.len() as f64),
            output_tokens_per_second: per_second((completion + streamed_when_cut) as f64),
            prompt_tokens_per_second: per_second(prompt as f64),
            prompt_tokens_mean: mean(prompt, prompt_counted.len()),
            completion_tokens_mean: mean(completion, ok.len()),
            usage_reported: ok.iter().filter(|s| s.usage_reported).count(),
            short: ok
                .iter()
                .filter(|s| s.completion_tokens < args.max_tokens as u64)
                .count(),
            ttft_ms: ms(ok.iter().filter_map(|s| s.ttft).collect()),
            itl_ms: ms(ok.iter().flat_map(|s| s.gaps.iter().copied()).collect()),
            tpot_ms: ms(ok
                .iter()
                .filter(|s| s.completion_tokens > 1)
                .filter_map(|s| Some((s.e2e - s.ttft?) / (s.completion_tokens - 1) as f64))
                .collect()),
            e2e_ms: ms(ok.iter().map(|s| s.e2e).collect()),
            error_samples,
        }
    }

    fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let prompt = match self.prompt_tokens_mean {
            Some(n) => format!(
                "~{} tokens (server counted {n:.1})",
                self.prompt_tokens_target
            ),
            None => format!("~{} tokens", self.prompt_tokens_target),
        };
        let mut shape = format!(
            "{} requests, concurrency {}, prompt {prompt}, max_tokens {}",
            self.requests, self.concurrency, self.max_tokens
        );
        if self.ignore_eos {
            shape.push_str(", ignore_eos");
        }
        if self.repeat_prompt {
            shape.push_str(", same prompt");
        } else if self.shared_prefix > 0 {
            write!(shape, ", shared prefix ~{}", self.shared_prefix).unwrap();
        }
        if self.warmup > 0 {
            write!(shape, ", {} warm-up", self.warmup).unwrap();
        }
        writeln!(out, "{} ({})", self.url, self.model).unwrap();
        writeln!(out, "{shape}").unwrap();
        let errors: usize = self.errors.values().sum();
        write!(
            out,
            "requests:   {} ok, {} rejected (429), {errors} errors",
            self.ok, self.rejected
        )
        .unwrap();
        if !self.errors.is_empty() {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            write!(out, " ({})", kinds.join(", ")).unwrap();
        }
        if self.cut > 0 || self.sent < self.requests {
            write!(
                out,
                ", {} cut and {} not sent at --duration",
                self.cut,
                self.requests - self.sent
            )
            .unwrap();
        }
        writeln!(out, "; {:.2} s", self.wall_seconds).unwrap();
        write!(
            out,
            "throughput: {:.2} req/s, {:.1} output tok/s, {:.1} prompt tok/s",
            self.requests_per_second, self.output_tokens_per_second, self.prompt_tokens_per_second
        )
        .unwrap();
        if let Some(n) = self.completion_tokens_mean {
            write!(out, " ({n:.1} output tokens/request").unwrap();
            if self.usage_reported < self.ok {
                write!(
                    out,
                    ", {} without usage: chunks counted",
                    self.ok - self.usage_reported
                )
                .unwrap();
            }
            out.push(')');
        }
        out.push('\n');
        if self.short > 0 && self.ignore_eos {
            writeln!(
                out,
                "note: {} requests made fewer than {} tokens despite --ignore-eos",
                self.short, self.max_tokens
            )
            .unwrap();
        }
        writeln!(
            out,
            "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "mean", "p50", "p90", "p99", "max"
        )
        .unwrap();
        for (name, d) in [
            ("TTFT", &self.ttft_ms),
            ("ITL", &self.itl_ms),
            ("TPOT", &self.tpot_ms),
            ("end-to-end", &self.e2e_ms),
        ] {
            match d {
                Some(d) => writeln!(
                    out,
                    "{name:<14} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                    d.mean, d.p50, d.p90, d.p99, d.max
                ),
                None => writeln!(out, "{name:<14} {:>9}", "-"),
            }
            .unwrap();
        }
        for e in &self.error_samples {
            writeln!(out, "error: {e}").unwrap();
        }
        out
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.0), 1.0);
        assert_eq!(percentile(&xs, 100.0), 100.0);
        assert!((percentile(&xs, 50.0) - 50.5).abs() < 1e-9);
        assert!((percentile(&xs, 99.0) - 99.01).abs() < 1e-9);
        assert!((percentile(&xs, 90.0) - 90.1).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[1.0, 3.0], 50.0), 2.0);
    }

    #[test]
    fn distribution_sorts_and_summarises() {
        assert_eq!(Distribution::of(vec![]), None);
        let d = Distribution::of(vec![5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(
            (d.count, d.min, d.max, d.mean, d.p50),
            (5, 1.0, 5.0, 3.0, 3.0)
        );
        assert!(d.p50 <= d.p90 && d.p90 <= d.p99 && d.p99 <= d.max);
        // One slow outlier among many fast samples moves p99 and the mean, not p50.
        let mut xs = vec![10.0; 999];
        xs.push(10_000.0);
        let d = Distribution::of(xs).unwrap();
        assert_eq!(d.p50, 10.0);
        assert_eq!(d.p90, 10.0);
        assert!(d.mean > 19.0 && d.mean < 20.1, "{d:?}");
        assert_eq!(d.max, 10_000.0);
    }

    #[test]
    fn sse_lines_survive_any_split() {
        let wire =
            b"data: {\"a\":1}\r\n\r\n: keep-alive\n\nevent: x\ndata:{\"b\":2}\n\ndata: [DONE]\n\n";
        let whole = SseLines::default().push(wire);
        assert_eq!(whole, vec![r#"{"a":1}"#, r#"{"b":2}"#, "[DONE]"]);
        for cut in 0..wire.len() {
            let mut lines = SseLines::default();
            let mut got = lines.push(&wire[..cut]);
            got.extend(lines.push(&wire[cut..]));
            assert_eq!(got, whole, "split at {cut}");
        }
        // A line without its newline yet is held back.
        assert!(SseLines::default().push(b"data: {\"a\"").is_empty());
    }

    #[test]
    fn chunks_are_read_for_content_usage_and_errors() {
        let c = read_chunk(&json!({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}));
        assert_eq!((c.content, c.usage, c.error), (true, None, None));
        // The role-only first chunk and an empty delta carry no text.
        let c = read_chunk(&json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]}));
        assert!(!c.content);
        let c = read_chunk(&json!({"choices": [{"delta": {"reasoning_content": "hmm"}}]}));
        assert!(c.content);
        let c = read_chunk(
            &json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}),
        );
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt: 12,
                completion: 5
            })
        );
        assert!(!c.content);
        let c = read_chunk(&json!({"error": {"message": "out of memory", "type": "server_error"}}));
        assert_eq!(c.error.as_deref(), Some("out of memory"));
    }

    #[test]
    fn prompts_are_deterministic_and_share_what_they_should() {
        let p = |shared_prefix, repeat, seed| Prompts {
            tokens: 200,
            shared_prefix,
            repeat,
            seed,
        };
        let plain = p(0, false, 0);
        assert_eq!(plain.prompt(3), p(0, false, 0).prompt(3));
        assert_ne!(plain.prompt(3), plain.prompt(4));
        assert_ne!(plain.prompt(3), p(0, false, 1).prompt(3));
        // About one token per word or full stop.
        let text = plain.prompt(0);
        let pieces = text.split_whitespace().count() + text.matches('.').count();
        assert!((190..=210).contains(&pieces), "{pieces} pieces: {text}");

        let same = p(0, true, 0);
        assert_eq!(same.prompt(1), same.prompt(99));

        let prefixed = p(150, false, 0);
        let (a, b) = (prefixed.prompt(1), prefixed.prompt(2));
        let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        assert!(common > 600 && a != b, "common prefix {common} bytes");
        let all = p(200, false, 0);
        assert_eq!(all.prompt(1), all.prompt(2));
    }

    #[test]
    fn url_forms_all_reach_chat_completions() {
        for url in [
            "http://127.0.0.1:8000",
            "http://127.0.0.1:8000/",
            "http://127.0.0.1:8000/v1",
            "http://127.0.0.1:8000/v1/chat/completions",
        ] {
            assert_eq!(
                chat_endpoint(url).unwrap(),
                "http://127.0.0.1:8000/v1/chat/completions"
            );
        }
        assert!(chat_endpoint("127.0.0.1:8000").is_err());
    }

    fn sample(outcome: Outcome, tokens: u64, ttft: f64, e2e: f64) -> Sample {
        Sample {
            outcome,
            error: None,
            ttft: Some(ttft),
            gaps: vec![(e2e - ttft) / (tokens - 1) as f64; tokens as usize - 1],
            e2e,
            prompt_tokens: Some(100),
            completion_tokens: tokens,
            usage_reported: true,
        }
    }

    #[test]
    fn report_counts_outcomes_and_rates() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadtestArgs,
        }
        let args = Cli::parse_from(["verre", "-m", "m", "-n", "6", "--ignore-eos"]).args;
        let mut samples = vec![
            sample(Outcome::Ok, 11, 0.1, 1.1),
            sample(Outcome::Ok, 21, 0.3, 2.3),
            sample(Outcome::Status(429), 2, 0.0, 0.0),
            sample(Outcome::Status(500), 2, 0.0, 0.0),
            sample(Outcome::Timeout, 2, 0.0, 0.0),
            sample(Outcome::Cut, 2, 0.0, 0.0),
        ];
        samples[3].error = Some("HTTP 500: boom".into());
        let r = Report::new(&args, "http://x/v1/chat/completions", &samples, 4.0);
        assert_eq!((r.sent, r.ok, r.rejected, r.cut), (6, 2, 1, 1));
        assert_eq!(
            r.errors,
            BTreeMap::from([("500".to_string(), 1), ("timeout".to_string(), 1)])
        );
        assert_eq!(r.requests_per_second, 0.5);
        // 32 tokens from the successful requests and 2 streamed by the cut one, in 4 s.
        assert_eq!(r.output_tokens_per_second, 8.5);
        assert_eq!(r.prompt_tokens_per_second, 50.0);
        assert_eq!(r.completion_tokens_mean, Some(16.0));
        // Both made fewer than the default --max-tokens 128.
        assert_eq!(r.short, 2);
        let ttft = r.ttft_ms.as_ref().unwrap();
        assert_eq!((ttft.min, ttft.max), (100.0, 300.0));
        let tpot = r.tpot_ms.as_ref().unwrap();
        assert_eq!((tpot.min, tpot.max), (100.0, 100.0));
        assert_eq!(r.itl_ms.as_ref().unwrap().count, 30);
        assert_eq!(r.error_samples, vec!["HTTP 500: boom".to_string()]);
        let table = r.table();
        assert!(
            table.contains("note: 2 requests made fewer than 128 tokens despite --ignore-eos"),
            "{table}"
        );
        assert!(
            table.contains("2 ok, 1 rejected (429), 2 errors (500: 1, timeout: 1)"),
            "{table}"
        );
    }
}
