//! `verre loadtest` end to end against a fake OpenAI streaming server on 127.0.0.1, inside
//! the test: known chunk counts and delays, 429s, streams without usage, broken streams,
//! slow streams for the time limits. No model is needed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Delay before the first content chunk, and between the following ones.
const TTFT: Duration = Duration::from_millis(30);
const ITL: Duration = Duration::from_millis(10);

/// The fake server; its behaviour is picked by the request's `model`:
/// - `steady`: TTFT then one content chunk per ITL, up to max_tokens, then usage; every
///   fifth request (the 4th, 9th, ...) is answered 429;
/// - `no-usage`: the same stream without the usage chunk, never 429;
/// - `broken`: even requests get a 500, odd ones a stream that stops before `[DONE]`;
/// - `slow`: one chunk every 100 ms;
/// - `auth`: like `steady` without 429s, but only with `Authorization: Bearer sekrit`.
struct Fake {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
}

impl Fake {
    fn start() -> Self {
        let received = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let state = received.clone();
        // The server outlives the test's synchronous `Command` calls on its own runtime; the
        // thread ends with the test process.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = Router::new()
                    .route("/v1/chat/completions", post(chat))
                    .with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().expect("fake server address");
        Fake { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

async fn chat(
    State(received): State<Arc<AtomicUsize>>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let n = received.fetch_add(1, Ordering::SeqCst);
    let body = body.0;
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let well_formed = body["stream"] == json!(true)
        && body["stream_options"]["include_usage"] == json!(true)
        && body["messages"][0]["role"] == "user"
        && body["max_tokens"].as_u64().is_some();
    if !well_formed {
        return error(StatusCode::BAD_REQUEST, "malformed request");
    }
    let max_tokens = body["max_tokens"].as_u64().unwrap() as usize;
    let prompt = body["messages"][0]["content"].as_str().unwrap_or_default();
    // One token per word or full stop: what the loadtest's prompts aim at.
    let prompt_tokens = prompt.split_whitespace().count() + prompt.matches('.').count();
    match model.as_str() {
        "steady" if n % 5 == 3 => error(StatusCode::TOO_MANY_REQUESTS, "queue full"),
        "steady" | "no-usage" => stream(
            max_tokens,
            TTFT,
            ITL,
            model == "steady",
            true,
            prompt_tokens,
        ),
        "auth"
            if headers
                .get("authorization")
                .is_some_and(|v| v == "Bearer sekrit") =>
        {
            stream(max_tokens, TTFT, ITL, true, true, prompt_tokens)
        }
        "auth" => error(StatusCode::UNAUTHORIZED, "bad key"),
        "broken" if n % 2 == 0 => error(StatusCode::INTERNAL_SERVER_ERROR, "boom"),
        "broken" => stream(max_tokens, TTFT, ITL, true, false, prompt_tokens),
        "slow" => {
            let step = Duration::from_millis(100);
            stream(max_tokens, step, step, true, true, prompt_tokens)
        }
        _ => error(StatusCode::NOT_FOUND, "no such model"),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "fake", "param": null, "code": null}});
    (status, axum::Json(body)).into_response()
}

/// A chat stream: a role chunk at once, `tokens` content chunks (the first after `ttft`,
/// each next after `itl`), a finish chunk, optionally usage, optionally `[DONE]`.
fn stream(
    tokens: usize,
    ttft: Duration,
    itl: Duration,
    usage: bool,
    done: bool,
    prompt_tokens: usize,
) -> Response {
    let chunk = |delta: Value, finish: Value| json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    let mut events = vec![(
        Duration::ZERO,
        chunk(json!({"role": "assistant", "content": ""}), Value::Null).to_string(),
    )];
    for i in 0..tokens {
        let delay = if i == 0 { ttft } else { itl };
        events.push((
            delay,
            chunk(json!({"content": format!(" w{i}")}), Value::Null).to_string(),
        ));
    }
    events.push((
        Duration::ZERO,
        chunk(json!({}), json!("length")).to_string(),
    ));
    if usage {
        let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens});
        events.push((
            Duration::ZERO,
            json!({"choices": [], "usage": usage}).to_string(),
        ));
    }
    if done {
        events.push((Duration::ZERO, "[DONE]".to_string()));
    }
    let body = futures_util::stream::iter(events).then(|(delay, data)| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(format!("data: {data}\n\n"))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

fn loadtest(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_verre"))
        .arg("loadtest")
        .args(["--url", url])
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("running verre loadtest")
}

fn report(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ms(r: &Value, metric: &str, stat: &str) -> f64 {
    r[metric][stat]
        .as_f64()
        .unwrap_or_else(|| panic!("{metric}.{stat} missing in {r}"))
}

#[test]
fn counts_requests_rejections_and_latencies() {
    let fake = Fake::start();
    let o = loadtest(
        &fake.url(),
        &[
            "-m",
            "steady",
            "-c",
            "4",
            "-n",
            "20",
            "--warmup",
            "2",
            "--max-tokens",
            "8",
            "--prompt-tokens",
            "64",
            "--ignore-eos",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&o);
    // 22 requests reached the server (2 warm-up, none retried); requests 3, 8, 13 and 18
    // (0-based) were refused with 429, all after the warm-up.
    assert_eq!(fake.received(), 22);
    assert_eq!(r["sent"], 20);
    assert_eq!(r["ok"], 16);
    assert_eq!(r["rejected"], 4);
    assert_eq!(r["errors"], json!({}));
    assert_eq!(r["cut"], 0);
    assert_eq!(r["usage_reported"], 16);
    assert_eq!(r["completion_tokens_mean"], 8.0);
    assert_eq!(r["short"], 0);
    let prompt = r["prompt_tokens_mean"].as_f64().unwrap();
    assert!((58.0..=70.0).contains(&prompt), "prompt tokens {prompt}");

    // Latencies: never below what the server waited, percentiles in order; the upper
    // bounds only catch gross errors (the machine may be busy).
    for metric in ["ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"] {
        let (min, p50, p90, p99, max) = (
            ms(&r, metric, "min"),
            ms(&r, metric, "p50"),
            ms(&r, metric, "p90"),
            ms(&r, metric, "p99"),
            ms(&r, metric, "max"),
        );
        assert!(
            min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
            "{metric}: {r}"
        );
    }
    assert_eq!(r["ttft_ms"]["count"], 16);
    assert_eq!(r["itl_ms"]["count"], 16 * 7);
    assert!(ms(&r, "ttft_ms", "min") >= 29.0, "{r}");
    assert!(ms(&r, "ttft_ms", "p50") < 1000.0, "{r}");
    let itl = ms(&r, "itl_ms", "p50");
    assert!((5.0..200.0).contains(&itl), "ITL p50 {itl}");
    assert!(ms(&r, "tpot_ms", "p50") >= 9.0, "{r}");
    assert!(ms(&r, "e2e_ms", "min") >= 29.0 + 7.0 * 9.0, "{r}");

    // Rates agree with the counts and the wall time.
    let wall = r["wall_seconds"].as_f64().unwrap();
    let tps = r["output_tokens_per_second"].as_f64().unwrap();
    assert!(
        wall > 0.0 && (tps * wall - 128.0).abs() < 2.0,
        "{tps} tok/s over {wall} s"
    );
    let rps = r["requests_per_second"].as_f64().unwrap();
    assert!((rps * wall - 16.0).abs() < 0.5, "{rps} req/s over {wall} s");
}

#[test]
fn human_table_and_streams_without_usage() {
    let fake = Fake::start();
    let o = loadtest(
        &fake.url(),
        &["-m", "no-usage", "-c", "2", "-n", "4", "--max-tokens", "5"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("4 ok, 0 rejected (429), 0 errors"),
        "{table}"
    );
    // Without usage the completion tokens are the content chunks.
    assert!(
        table.contains("5.0 output tokens/request, 4 without usage"),
        "{table}"
    );
    for row in ["TTFT", "ITL", "TPOT", "end-to-end"] {
        assert!(table.lines().any(|l| l.starts_with(row)), "{row}: {table}");
    }

    let o = loadtest(
        &fake.url(),
        &["-m", "no-usage", "-n", "2", "--max-tokens", "5", "--json"],
    );
    let r = report(&o);
    assert_eq!(
        (r["ok"].as_u64(), r["usage_reported"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(r["completion_tokens_mean"], 5.0);
    assert_eq!(r["prompt_tokens_mean"], Value::Null);
}

#[test]
fn server_errors_are_counted_and_do_not_stop_the_run() {
    let fake = Fake::start();
    let o = loadtest(
        &fake.url(),
        &[
            "-m",
            "broken",
            "-c",
            "3",
            "-n",
            "10",
            "--max-tokens",
            "3",
            "--json",
        ],
    );
    // Every request failed: the report is still printed, then the exit says so.
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("error: no request succeeded (10 sent)"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"));
    let r = report(&o);
    assert_eq!(fake.received(), 10);
    assert_eq!(r["ok"], 0);
    assert_eq!(r["errors"], json!({"500": 5, "stream": 5}));
    assert_eq!(r["ttft_ms"], Value::Null);
    let samples = r["error_samples"].to_string();
    assert!(
        samples.contains("boom") && samples.contains("without [DONE]"),
        "{samples}"
    );
}

#[test]
fn api_key_comes_from_the_flag_or_the_environment() {
    let fake = Fake::start();
    let o = loadtest(
        &fake.url(),
        &["-m", "auth", "-n", "2", "--max-tokens", "2", "--json"],
    );
    assert_eq!(report(&o)["errors"], json!({"401": 2}));
    let o = loadtest(
        &fake.url(),
        &[
            "-m",
            "auth",
            "-n",
            "2",
            "--max-tokens",
            "2",
            "--api-key",
            "sekrit",
            "--json",
        ],
    );
    assert_eq!(report(&o)["ok"], 2, "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_verre"))
        .args(["loadtest", "--url", &format!("{}/v1", fake.url())])
        .args(["-m", "auth", "-n", "2", "--max-tokens", "2", "--json"])
        .env("OPENAI_API_KEY", "sekrit")
        .output()
        .unwrap();
    assert_eq!(report(&o)["ok"], 2, "{}", stderr(&o));
}

#[test]
fn duration_and_timeout_bound_the_run() {
    let fake = Fake::start();
    // Each request takes ~0.5 s (5 chunks, 100 ms apart); 1000 of them would take minutes.
    let t = Instant::now();
    let o = loadtest(
        &fake.url(),
        &[
            "-m",
            "slow",
            "-c",
            "2",
            "-n",
            "1000",
            "--max-tokens",
            "5",
            "--duration",
            "1.2",
            "--json",
        ],
    );
    let elapsed = t.elapsed();
    let r = report(&o);
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    let wall = r["wall_seconds"].as_f64().unwrap();
    assert!((1.1..5.0).contains(&wall), "wall {wall}");
    let (sent, ok, cut) = (
        r["sent"].as_u64().unwrap(),
        r["ok"].as_u64().unwrap(),
        r["cut"].as_u64().unwrap(),
    );
    assert!(sent < 20 && cut >= 1 && ok + cut == sent, "{r}");
    assert_eq!(fake.received() as u64, sent);

    // A request that outlives --timeout is an error, not a hang.
    let o = loadtest(
        &fake.url(),
        &[
            "-m",
            "slow",
            "-c",
            "2",
            "-n",
            "2",
            "--max-tokens",
            "50",
            "--timeout",
            "0.3",
            "--json",
        ],
    );
    let r = report(&o);
    assert_eq!(r["errors"], json!({"timeout": 2}));
    assert!(r["wall_seconds"].as_f64().unwrap() < 3.0, "{r}");
}

#[test]
fn bad_arguments_and_unreachable_servers_fail_cleanly() {
    let clean_failure = |o: &Output, needle: &str| {
        let err = stderr(o);
        assert!(!o.status.success() && !err.contains("panicked"), "{err}");
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    };
    let url = "http://127.0.0.1:9";
    clean_failure(
        &loadtest(url, &["-m", "x", "--shared-prefix", "200"]),
        "--shared-prefix",
    );
    clean_failure(&loadtest(url, &["-m", "x", "-c", "0"]), "--concurrency");
    clean_failure(&loadtest("127.0.0.1:8000", &["-m", "x"]), "http://");

    // A port nobody listens on: every request is a connection error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = loadtest(
        &format!("http://127.0.0.1:{port}"),
        &["-m", "x", "-n", "3", "--json"],
    );
    clean_failure(&o, "no request succeeded");
    assert_eq!(report(&o)["errors"], json!({"connection": 3}));
}
