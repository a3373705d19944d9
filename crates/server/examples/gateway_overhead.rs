//! Gateway overhead: the latency verre adds in front of an OpenAI-compatible upstream.
//!
//! A fake upstream on loopback answers every streamed chat completion at once (`--chunks`
//! SSE events and, when asked, a usage chunk), so the model's speed does not hide the
//! gateway's. `--concurrency` clients stream from it directly and through a verre gateway
//! (routing, egress policy, key check, ledger on a SQLite file, audit entry per call), in
//! alternating rounds so that a busy machine slows both alike. Per request: time to the
//! first chunk and to the end of the stream. Prints p50 and p99 of each and what the
//! gateway adds.
//!
//! ```text
//! cargo run -p verre-server --example gateway_overhead \
//!     --config 'profile.dev.package.verre-server.opt-level=3' \
//!     --config 'profile.dev.package.verre-store.opt-level=3' -- --concurrency 32
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};
use verre_server::config::GatewayConfig;
use verre_server::gateway::Gateway;
use verre_server::{AppState, router};

struct Options {
    concurrency: usize,
    requests: usize,
    rounds: usize,
    chunks: usize,
    /// Pause between chunks, as a model's decode steps; 0 answers at once.
    interval_ms: u64,
    /// Serve without the ledger (to see what it costs).
    ledger: bool,
}

fn options() -> Options {
    let mut o = Options {
        concurrency: 32,
        requests: 4000,
        rounds: 8,
        chunks: 16,
        interval_ms: 0,
        ledger: true,
    };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--no-ledger") {
        o.ledger = false;
        args.remove(i);
    }
    for pair in args.chunks(2) {
        let value = || -> usize {
            pair.get(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", pair[0]))
        };
        match pair[0].as_str() {
            "--concurrency" => o.concurrency = value(),
            "--requests" => o.requests = value(),
            "--rounds" => o.rounds = value(),
            "--chunks" => o.chunks = value(),
            "--interval-ms" => o.interval_ms = value() as u64,
            other => panic!(
                "unknown option {other}; options: --concurrency N --requests N --rounds N --chunks N --interval-ms N --no-ledger"
            ),
        }
    }
    o
}

async fn fake_chat(chunks: usize, interval_ms: u64, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut events = Vec::new();
    for i in 0..chunks {
        let chunk = json!({ "object": "chat.completion.chunk", "model": "m",
            "choices": [{ "index": 0, "delta": { "content": format!("tok{i} ") }, "finish_reason": null }] });
        events.push(format!("data: {chunk}\n\n"));
    }
    if request["stream_options"]["include_usage"] == true {
        let usage = json!({ "object": "chat.completion.chunk", "model": "m", "choices": [],
            "usage": { "prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks } });
        events.push(format!("data: {usage}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    let sse = [(header::CONTENT_TYPE, "text/event-stream")];
    if interval_ms == 0 {
        return (sse, Body::from(events.concat())).into_response();
    }
    // The first chunk at once, then one per interval, as a model's decode steps; the
    // usage and `[DONE]` right after the last (as vLLM sends them).
    let paced = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(i, event)| async move {
            if (1..chunks).contains(&i) {
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
            Ok::<_, std::io::Error>(Bytes::from(event))
        },
    );
    (sse, Body::from_stream(paced)).into_response()
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// Time to the first chunk and to the end of one streamed request.
async fn one(client: &reqwest::Client, url: &str, key: &str) -> (Duration, Duration) {
    let body = json!({ "model": "m", "stream": true, "max_tokens": 16,
        "messages": [{ "role": "user", "content": "How far is it to Frankfurt?" }] });
    let start = Instant::now();
    let response = client
        .post(url)
        .bearer_auth(key)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("sending");
    assert!(response.status().is_success(), "{}", response.status());
    let mut stream = response.bytes_stream();
    let mut first = None;
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("reading");
        first.get_or_insert_with(|| start.elapsed());
        text.extend_from_slice(&chunk);
    }
    assert!(text.ends_with(b"data: [DONE]\n\n"), "a whole stream");
    (first.unwrap_or_default(), start.elapsed())
}

/// `requests` requests over `concurrency` clients; every request's two times.
async fn batch(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    concurrency: usize,
    requests: usize,
) -> Vec<(Duration, Duration)> {
    let per_client = requests.div_ceil(concurrency);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.to_string(), key.to_string());
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    times.push(one(&client, &url, &key).await);
                }
                times
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let o = options();
    let upstream = Router::new()
        .route(
            "/v1/chat/completions",
            post(move |body: Bytes| fake_chat(o.chunks, o.interval_ms, body)),
        )
        .route(
            "/v1/models",
            get(|| async { axum::Json(json!({ "object": "list", "data": [] })) }),
        );
    let upstream = serve(upstream).await;

    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    let key = verre_server::auth::add_key(&keys_file, "bench").unwrap();
    let config = GatewayConfig::parse(
        &format!(
            "[policy]\nallow_jurisdictions = [\"EU\"]\n[[backend]]\nname = \"up\"\nkind = \"openai\"\nurl = \"http://{upstream}/v1\"\njurisdiction = \"EU-DE\"\npseudonymize = false\nmodels = [\"m\"]\n[[key]]\nname = \"bench\"\nmodels = [\"m\"]\n"
        ),
        "bench.toml",
    )
    .unwrap();
    let store = verre_store::Store::open_in_home(dir.path()).await.unwrap();
    let mut state = AppState::with_models(
        vec![],
        vec![],
        Some(verre_server::auth::ApiKeys::load(&keys_file).unwrap()),
    )
    .with_gateway(Arc::new(Gateway::new(&config).unwrap()));
    if o.ledger {
        state = state.with_ledger(verre_server::ledger::Ledger {
            writer: verre_store::ledger::LedgerWriter::spawn(store.clone()),
            audit: config.audit.clone(),
        });
    }
    let state = state.with_store(store.clone());
    let state = Arc::new(state);
    let gateway = serve(router(state.clone())).await;

    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(o.concurrency * 2)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let direct_url = format!("http://{upstream}/v1/chat/completions");
    let gateway_url = format!("http://{gateway}/v1/chat/completions");
    // Warm both paths (connections, the ledger's first writes).
    batch(&client, &direct_url, &key, o.concurrency, o.concurrency * 4).await;
    batch(
        &client,
        &gateway_url,
        &key,
        o.concurrency,
        o.concurrency * 4,
    )
    .await;

    let per_round = (o.requests / o.rounds).max(o.concurrency);
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for _ in 0..o.rounds {
        direct.extend(batch(&client, &direct_url, &key, o.concurrency, per_round).await);
        through.extend(batch(&client, &gateway_url, &key, o.concurrency, per_round).await);
    }
    let elapsed = started.elapsed();
    if let Some(ledger) = state.ledger() {
        ledger.writer.flush().await;
    }
    let recorded = store
        .ledger_usage(&Default::default())
        .await
        .unwrap()
        .rows
        .iter()
        .map(|r| r.requests)
        .sum::<u64>();

    println!(
        "gateway overhead: {} streamed requests each way, {} concurrent, {} chunks per answer ({}), {} rounds, ledger {}, {:.1} s",
        direct.len(),
        o.concurrency,
        o.chunks,
        match o.interval_ms {
            0 => "at once".to_string(),
            ms => format!("{ms} ms apart"),
        },
        o.rounds,
        if o.ledger { "on" } else { "off" },
        elapsed.as_secs_f64()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p99 ms", "mean ms", "max ms"
    );
    let mut summary = Vec::new();
    for (what, pick) in [("first chunk", 0usize), ("whole stream", 1usize)] {
        let mut rows = Vec::new();
        for (path, samples) in [("direct", &direct), ("through verre", &through)] {
            let mut times: Vec<Duration> = samples
                .iter()
                .map(|t| if pick == 0 { t.0 } else { t.1 })
                .collect();
            times.sort();
            let mean = times.iter().sum::<Duration>() / times.len() as u32;
            let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
            println!(
                "{:<22} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                format!("{what}, {path}"),
                ms(p50),
                ms(p99),
                ms(mean),
                ms(*times.last().unwrap())
            );
            rows.push((p50, p99));
        }
        let added_p50 = ms(rows[1].0) - ms(rows[0].0);
        let added_p99 = ms(rows[1].1) - ms(rows[0].1);
        println!(
            "{:<22} {:>10.3} {:>10.3}",
            format!("{what}, added"),
            added_p50,
            added_p99
        );
        summary.push((what, added_p50, added_p99));
    }
    println!(
        "ledger rows written: {recorded} (gateway requests incl. warm-up: {})",
        through.len() + o.concurrency * 4
    );
    let (_, p50, p99) = summary[1];
    println!(
        "target (whole stream): p50 < 1 ms added: {}; p99 < 5 ms added: {}",
        if p50 < 1.0 { "met" } else { "missed" },
        if p99 < 5.0 { "met" } else { "missed" }
    );
}
