//! The gateway against real upstreams on loopback: fake OpenAI-compatible servers (one that
//! answers and streams, one that answers 500, a port that refuses connections), a second
//! verre serving the embedded model when `VERRE_SMOLLM2_GGUF` is set, and a trap: a
//! socket configured as a backend the egress policy does not allow, which must see no
//! connection and no byte in any test.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use verre_engine::LoadedModel;
use verre_engine::engine::EngineOptions;
use verre_server::config::GatewayConfig;
use verre_server::gateway::Gateway;
use verre_server::gateway::policy::Policy;
use verre_server::{AppState, ServedModel, router};

/// Bound for anything a test awaits.
const PATIENCE: Duration = Duration::from_secs(20);

// ---- the trap ----

static TRAP_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
static TRAP_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The trap's address: a plain socket on its own thread that counts what reaches it.
fn trap() -> SocketAddr {
    static ADDRESS: OnceLock<SocketAddr> = OnceLock::new();
    *ADDRESS.get_or_init(|| {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                TRAP_CONNECTIONS.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buffer = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buffer) {
                        if n == 0 {
                            break;
                        }
                        TRAP_BYTES.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        address
    })
}

fn assert_trap_untouched() {
    assert_eq!(
        TRAP_CONNECTIONS.load(Ordering::SeqCst),
        0,
        "the trap was connected to"
    );
    assert_eq!(
        TRAP_BYTES.load(Ordering::SeqCst),
        0,
        "the trap received bytes"
    );
}

/// A `[[backend]]` for the trap, in a jurisdiction the tests' policy does not allow. It is
/// tried first (priority 0) for the models it lists.
fn trap_backend(models: &str) -> String {
    format!(
        "[[backend]]\nname = \"trap\"\nkind = \"openai\"\nurl = \"http://{}/v1\"\njurisdiction = \"US-VA\"\npriority = 0\nmodels = {models}\n",
        trap()
    )
}

// ---- fake upstreams ----

struct Fake {
    name: String,
    requests: AtomicUsize,
    /// The `model` of each request received.
    models: Mutex<Vec<String>>,
    /// The last user message of each request received.
    prompts: Mutex<Vec<String>>,
    /// A stream waits for a permit between its first and second chunk.
    gate: Semaphore,
    /// Answer 500 to everything while set.
    down: AtomicBool,
    /// Health probes (`GET /v1/models`) received, each announced.
    probes: AtomicUsize,
    probed: Notify,
}

impl Fake {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            requests: AtomicUsize::new(0),
            models: Mutex::default(),
            prompts: Mutex::default(),
            gate: Semaphore::new(0),
            down: AtomicBool::new(false),
            probes: AtomicUsize::new(0),
            probed: Notify::new(),
        })
    }
}

async fn fake_chat(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    fake.requests.fetch_add(1, Ordering::SeqCst);
    if fake.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let body: Value = serde_json::from_slice(&body).unwrap();
    let model = body["model"].as_str().unwrap_or_default().to_string();
    fake.models.lock().unwrap().push(model.clone());
    let prompt = body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    fake.prompts.lock().unwrap().push(prompt.clone());
    if let Some(echo) = prompt.strip_prefix("echo: ") {
        return echo_answer(echo, &model, body["stream"] == true);
    }
    if body["stream"] == true {
        let chunk = |text: &str| {
            let c = json!({ "object": "chat.completion.chunk", "model": model, "choices": [{ "index": 0, "delta": { "content": text } }] });
            Bytes::from(format!("data: {c}\n\n"))
        };
        let mut chunks = vec![chunk("chunk-1"), chunk("chunk-2")];
        // As vLLM: the usage in a last chunk without choices, when asked for.
        if body["stream_options"]["include_usage"] == true {
            let c = json!({ "object": "chat.completion.chunk", "model": model, "choices": [],
                "usage": { "prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6 } });
            chunks.push(Bytes::from(format!("data: {c}\n\n")));
        }
        chunks.push(Bytes::from("data: [DONE]\n\n"));
        let stream = futures_util::stream::unfold((0, fake.clone()), move |(i, fake)| {
            let chunks = chunks.clone();
            async move {
                if i == 1 {
                    fake.gate.acquire().await.unwrap().forget();
                }
                let chunk = chunks.get(i)?.clone();
                Some((Ok::<_, std::io::Error>(chunk), (i + 1, fake)))
            }
        });
        return (
            [(header::CONTENT_TYPE, "text/event-stream")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    axum::Json(json!({
        "object": "chat.completion",
        "model": model,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": format!("from {}", fake.name) }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5 },
    }))
    .into_response()
}

/// The prompt back as content and as a tool call's arguments; streamed in pieces of 5
/// bytes, which split placeholders.
fn echo_answer(echo: &str, model: &str, stream: bool) -> Response {
    let arguments = json!({ "text": echo }).to_string();
    if !stream {
        return axum::Json(json!({
            "object": "chat.completion",
            "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": echo, "tool_calls": [
                { "id": "call_1", "type": "function", "function": { "name": "say", "arguments": arguments } },
            ] }, "finish_reason": "tool_calls" }],
        }))
        .into_response();
    }
    let mut events = String::new();
    let delta = |d: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({ "object": "chat.completion.chunk", "choices": [{ "index": 0, "delta": d, "finish_reason": finish }] })
        )
    };
    for piece in echo.as_bytes().chunks(5) {
        events += &delta(
            json!({ "content": std::str::from_utf8(piece).unwrap() }),
            Value::Null,
        );
    }
    for piece in arguments.as_bytes().chunks(5) {
        let call =
            json!({ "index": 0, "function": { "arguments": std::str::from_utf8(piece).unwrap() } });
        events += &delta(json!({ "tool_calls": [call] }), Value::Null);
    }
    events += &delta(json!({}), json!("tool_calls"));
    events += "data: [DONE]\n\n";
    ([(header::CONTENT_TYPE, "text/event-stream")], events).into_response()
}

async fn fake_models(State(fake): State<Arc<Fake>>) -> Response {
    fake.probes.fetch_add(1, Ordering::SeqCst);
    fake.probed.notify_waiters();
    if fake.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    axum::Json(json!({ "object": "list", "data": [] })).into_response()
}

/// Counts what is not a health probe.
async fn failing(State(fake): State<Arc<Fake>>, request: axum::extract::Request) -> StatusCode {
    if request.uri().path() == "/v1/models" {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    fake.requests.fetch_add(1, Ordering::SeqCst);
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// A fake upstream that answers; its URL and its counters.
async fn good(name: &str) -> (String, Arc<Fake>) {
    let fake = Fake::new(name);
    let app = Router::new()
        .route("/v1/chat/completions", post(fake_chat))
        .route("/v1/models", get(fake_models))
        .with_state(fake.clone());
    (format!("http://{}/v1", serve(app).await), fake)
}

/// A fake upstream that answers 500 to everything.
async fn broken() -> (String, Arc<Fake>) {
    let fake = Fake::new("broken");
    let app = Router::new().fallback(failing).with_state(fake.clone());
    (format!("http://{}/v1", serve(app).await), fake)
}

/// A loopback URL on which nothing listens.
fn refusing() -> String {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}/v1")
}

fn backend(name: &str, url: &str, models: &str, extra: &str) -> String {
    format!(
        "[[backend]]\nname = \"{name}\"\nkind = \"openai\"\nurl = \"{url}\"\njurisdiction = \"EU-DE\"\nmodels = {models}\n{extra}\n"
    )
}

/// A gateway over `backends` (TOML) behind the EU-only policy. The config is loaded under
/// a policy that also allows the trap's US label, then the policy is swapped: that is how
/// a backend the policy refuses can be configured at all, to show the check at request
/// time (the refusal at load has its own test).
async fn gateway(backends: &str) -> String {
    gateway_probing_every(60.0, backends).await
}

async fn gateway_probing_every(interval_s: f64, backends: &str) -> String {
    let text = format!(
        "[policy]\nallow_jurisdictions = [\"EU\", \"US\"]\n[gateway]\nhealth_check_interval_s = {interval_s}\nconnect_timeout_s = 2\nfirst_byte_timeout_s = 10\n{backends}"
    );
    let mut config = GatewayConfig::parse(&text, "test.toml").unwrap();
    config.policy = Policy::new(vec!["EU".into()], vec![]);
    let gateway = Arc::new(Gateway::new(&config).unwrap());
    gateway.spawn_health_checks();
    let state = AppState::with_models(vec![], vec![], None).with_gateway(gateway);
    format!("http://{}", serve(router(Arc::new(state))).await)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

/// A POST of `body` as JSON.
fn post_json(url: String, body: &Value) -> reqwest::RequestBuilder {
    client()
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
}

async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

async fn chat(base: &str, model: &str) -> (StatusCode, HashMap<String, String>, Value) {
    let body = json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] });
    let response = post_json(format!("{base}/v1/chat/completions"), &body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    (status, headers, json_of(response).await)
}

// ---- tests ----

#[tokio::test]
async fn routes_by_name_and_alias_and_lists_the_union() {
    let (a_url, a) = good("a").await;
    let (b_url, b) = good("b").await;
    let base = gateway(&format!(
        "{}{}{}",
        backend(
            "A",
            &a_url,
            r#"[{ name = "alpha", upstream = "org/Alpha-7B", aliases = ["al"] }]"#,
            ""
        ),
        backend("B", &b_url, r#"["beta"]"#, ""),
        trap_backend(r#"["alpha", "beta"]"#),
    ))
    .await;

    let (status, headers, body) = chat(&base, "al").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "from a");
    assert_eq!(headers["x-verre-backend"], "A");
    assert_eq!(
        *a.models.lock().unwrap(),
        ["org/Alpha-7B"],
        "sent under the upstream's name"
    );

    let (status, _, body) = chat(&base, "beta").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["choices"][0]["message"]["content"], "from b");
    assert_eq!(*b.models.lock().unwrap(), ["beta"]);

    let (status, _, body) = chat(&base, "gamma").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "model_not_found");

    let models = json_of(
        client()
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "al", "beta"]);
    assert_trap_untouched();
}

#[tokio::test]
async fn fails_over_on_refused_connections_and_500s() {
    let (good_url, good_fake) = good("good").await;
    let (broken_url, broken_fake) = broken().await;
    let base = gateway(&format!(
        "{}{}{}{}",
        backend("refusing", &refusing(), r#"["m"]"#, "priority = 1"),
        backend("broken", &broken_url, r#"["m"]"#, "priority = 1"),
        backend("good", &good_url, r#"["m"]"#, "priority = 2"),
        trap_backend(r#"["m"]"#),
    ))
    .await;
    for _ in 0..4 {
        let (status, headers, body) = chat(&base, "m").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(headers["x-verre-backend"], "good");
    }
    assert_eq!(good_fake.requests.load(Ordering::SeqCst), 4);
    // A backend that failed is skipped afterwards (until a health check or the cooldown).
    assert_eq!(broken_fake.requests.load(Ordering::SeqCst), 1);
    assert_trap_untouched();
}

#[tokio::test]
async fn all_backends_failing_is_502_then_503() {
    let (broken_url, _) = broken().await;
    let base = gateway(&format!(
        "{}{}",
        backend("broken", &broken_url, r#"["x"]"#, ""),
        backend("refusing", &refusing(), r#"["x"]"#, ""),
    ))
    .await;
    let (status, _, body) = chat(&base, "x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "bad_gateway");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("broken: answered 500") && message.contains("refusing:"),
        "{message}"
    );

    let (status, _, body) = chat(&base, "x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "no_healthy_backend");
    assert_trap_untouched();
}

#[tokio::test]
async fn streams_pass_through_as_they_arrive() {
    let (url, fake) = good("s").await;
    let base = gateway(&format!(
        "{}{}",
        backend("s", &url, r#"["s"]"#, ""),
        trap_backend(r#"["s"]"#)
    ))
    .await;
    let body =
        json!({ "model": "s", "stream": true, "messages": [{ "role": "user", "content": "hi" }] });
    let mut response = post_json(format!("{base}/v1/chat/completions"), &body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    // The upstream holds its second chunk until the first has come out of the gateway.
    let mut seen = String::new();
    while !seen.contains("chunk-1") {
        let chunk = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .expect("the first chunk did not come through on its own")
            .unwrap()
            .expect("the stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("chunk-2"));
    fake.gate.add_permits(1);
    while let Some(chunk) = tokio::time::timeout(PATIENCE, response.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let one = seen.find("chunk-1").unwrap();
    let two = seen.find("chunk-2").unwrap();
    let done = seen.find("data: [DONE]").unwrap();
    assert!(one < two && two < done, "{seen}");
    assert_trap_untouched();
}

#[tokio::test]
async fn weights_share_the_load() {
    let (heavy_url, heavy) = good("heavy").await;
    let (light_url, light) = good("light").await;
    let base = gateway(&format!(
        "{}{}",
        backend("heavy", &heavy_url, r#"["w"]"#, "weight = 4"),
        backend("light", &light_url, r#"["w"]"#, "weight = 1"),
    ))
    .await;
    for _ in 0..100 {
        assert_eq!(chat(&base, "w").await.0, StatusCode::OK);
    }
    let (h, l) = (
        heavy.requests.load(Ordering::SeqCst),
        light.requests.load(Ordering::SeqCst),
    );
    assert_eq!(h + l, 100);
    // Expected 80/20; the bounds are many standard deviations (4) wide.
    assert!((60..=96).contains(&h), "heavy {h}, light {l}");
    assert_trap_untouched();
}

#[tokio::test]
async fn the_egress_policy_refuses_at_load_and_at_request_time() {
    let text = format!(
        "[policy]\nallow_jurisdictions = [\"EU\"]\n\n{}",
        trap_backend(r#"["t"]"#)
    );
    let e = format!(
        "{:#}",
        GatewayConfig::parse(&text, "verre.toml").unwrap_err()
    );
    assert!(
        e.starts_with("verre.toml:4: ") && e.contains("US-VA") && e.contains("trap"),
        "{e}"
    );

    let base = gateway(&trap_backend(r#"["t"]"#)).await;
    let (status, _, body) = chat(&base, "t").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "egress_refused");
    assert_trap_untouched();
}

#[tokio::test]
async fn keys_are_limited_to_their_models_and_rate() {
    let (url, _) = good("k").await;
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    let limited = verre_server::auth::add_key(&keys_file, "limited").unwrap();
    let free = verre_server::auth::add_key(&keys_file, "free").unwrap();
    let text = format!(
        "[policy]\nallow_jurisdictions = [\"EU\"]\n{}{}[[key]]\nname = \"limited\"\nmodels = [\"one\"]\nrequests_per_minute = 2\n",
        backend("k1", &url, r#"["one"]"#, ""),
        backend("k2", &url, r#"["two"]"#, ""),
    );
    let config = GatewayConfig::parse(&text, "test.toml").unwrap();
    let keys = verre_server::auth::ApiKeys::load(&keys_file).unwrap();
    let state = AppState::with_models(vec![], vec![], Some(keys))
        .with_gateway(Arc::new(Gateway::new(&config).unwrap()));
    let base = format!("http://{}", serve(router(Arc::new(state))).await);
    let ask = |key: String, model: &'static str| {
        let base = base.clone();
        async move {
            post_json(
                format!("{base}/v1/chat/completions"),
                &json!({ "model": model, "messages": [] }),
            )
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .status()
        }
    };
    assert_eq!(ask(limited.clone(), "two").await, StatusCode::FORBIDDEN);
    let models = client()
        .get(format!("{base}/v1/models"))
        .bearer_auth(&limited)
        .send()
        .await
        .unwrap();
    let models = json_of(models).await;
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "{models}");
    assert_eq!(models["data"][0]["id"], "one");
    assert_eq!(ask(free.clone(), "two").await, StatusCode::OK);
    let first = ask(limited.clone(), "one").await;
    let second = ask(limited.clone(), "one").await;
    let third = ask(limited.clone(), "one").await;
    assert_eq!(first, StatusCode::OK);
    // Two per calendar minute: a minute that turns between the calls lets one more in.
    assert!(
        second == StatusCode::TOO_MANY_REQUESTS || third == StatusCode::TOO_MANY_REQUESTS,
        "{second} {third}"
    );
    for _ in 0..3 {
        assert_eq!(
            ask(free.clone(), "one").await,
            StatusCode::OK,
            "other keys are not limited"
        );
    }
}

/// A second verre serving the embedded model, behind the gateway under another name.
#[tokio::test]
async fn a_second_verre_behind_the_gateway() {
    let Some(path) = std::env::var_os("VERRE_SMOLLM2_GGUF") else {
        eprintln!("skipped: set VERRE_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf");
        return;
    };
    let model = Arc::new(LoadedModel::load(PathBuf::from(path)).unwrap());
    let served = ServedModel::start("smollm2-135m", model, EngineOptions::default()).unwrap();
    let upstream = AppState::with_models(vec![served], vec![], None);
    let upstream = format!("http://{}/v1", serve(router(Arc::new(upstream))).await);
    let base = gateway(&format!(
        "{}{}",
        backend(
            "other-verre",
            &upstream,
            r#"[{ name = "tiny", upstream = "smollm2-135m" }]"#,
            ""
        ),
        trap_backend(r#"["tiny"]"#),
    ))
    .await;
    let request = json!({
        "model": "tiny", "max_tokens": 8, "temperature": 0, "stream": true,
        "messages": [{ "role": "user", "content": "Say hello." }],
    });
    let mut response = post_json(format!("{base}/v1/chat/completions"), &request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let first: Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(first["model"], "smollm2-135m");
    assert!(events.len() > 3, "{text}");
    assert_trap_untouched();
}

#[tokio::test]
async fn personal_data_stays_home_unless_a_backend_is_local() {
    let (remote_url, remote) = good("remote").await;
    let (trusted_url, trusted) = good("trusted").await;
    let base = gateway(&format!(
        "{}{}",
        backend("remote", &remote_url, r#"["far"]"#, ""),
        backend(
            "trusted",
            &trusted_url,
            r#"["near"]"#,
            "pseudonymize = false"
        ),
    ))
    .await;
    let text = "echo: Write to jean.dupont@example.fr, IBAN FR14 2004 1010 0505 0001 3M02 606.";
    let ask = |model: &'static str, stream: bool| {
        post_json(
            format!("{base}/v1/chat/completions"),
            &json!({ "model": model, "stream": stream, "messages": [{ "role": "user", "content": text }] }),
        )
        .send()
    };
    let echo = &text["echo: ".len()..];

    let answer = json_of(ask("far", false).await.unwrap()).await;
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["content"], echo, "{answer}");
    let arguments: Value = serde_json::from_str(
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(arguments["text"], echo);

    let mut response = ask("far", true).await.unwrap();
    let mut events = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        events.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (mut content, mut arguments) = (String::new(), String::new());
    for data in events.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        let delta = &chunk["choices"][0]["delta"];
        content += delta["content"].as_str().unwrap_or_default();
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            arguments += call["function"]["arguments"].as_str().unwrap_or_default();
        }
    }
    assert_eq!(content, echo, "{events}");
    let arguments: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(arguments["text"], echo);

    for prompt in remote.prompts.lock().unwrap().iter() {
        assert!(
            !prompt.contains("jean.dupont") && !prompt.contains("FR14"),
            "{prompt}"
        );
        assert!(
            prompt.contains("<EMAIL_1>") && prompt.contains("<IBAN_1>"),
            "{prompt}"
        );
    }
    let answer = json_of(ask("near", false).await.unwrap()).await;
    assert_eq!(answer["choices"][0]["message"]["content"], echo);
    assert_eq!(
        *trusted.prompts.lock().unwrap(),
        [text],
        "pseudonymize = false sends it as it is"
    );
    assert_trap_untouched();
}

#[tokio::test]
async fn messages_reach_a_remote_backend_as_pseudonymized_chat() {
    let (remote_url, remote) = good("remote").await;
    let base = gateway(&backend("remote", &remote_url, r#"["far"]"#, "")).await;
    let text = "echo: Write to jean.dupont@example.fr, IBAN FR14 2004 1010 0505 0001 3M02 606.";
    let echo = &text["echo: ".len()..];
    let ask = |stream: bool| {
        post_json(
            format!("{base}/v1/messages"),
            &json!({ "model": "far", "max_tokens": 64, "stream": stream,
                     "messages": [{ "role": "user", "content": text }] }),
        )
        .header("anthropic-version", "2023-06-01")
        .send()
    };
    let response = ask(false).await.unwrap();
    assert_eq!(response.headers()["x-verre-backend"], "remote");
    let message = json_of(response).await;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(
        message["content"][0],
        json!({ "type": "text", "text": echo })
    );
    assert_eq!(message["content"][1]["type"], "tool_use");
    assert_eq!(message["content"][1]["input"]["text"], echo);
    assert_eq!(message["stop_reason"], "tool_use");

    let mut response = ask(true).await.unwrap();
    let mut events = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        events.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (mut content, mut arguments) = (String::new(), String::new());
    for data in events.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let event: Value = serde_json::from_str(data).unwrap();
        let delta = &event["delta"];
        content += delta["text"].as_str().unwrap_or_default();
        arguments += delta["partial_json"].as_str().unwrap_or_default();
    }
    assert_eq!(content, echo, "{events}");
    let arguments: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(arguments["text"], echo);
    assert!(events.contains("event: message_stop"), "{events}");

    // The backend got chat completions, with the personal data replaced.
    assert_eq!(remote.prompts.lock().unwrap().len(), 2);
    for prompt in remote.prompts.lock().unwrap().iter() {
        assert!(
            !prompt.contains("jean.dupont") && prompt.contains("<EMAIL_1>"),
            "{prompt}"
        );
    }
    assert_trap_untouched();
}

/// Waits until `fake` has seen `n` more health probes.
async fn probes(fake: &Fake, n: usize) {
    let target = fake.probes.load(Ordering::SeqCst) + n;
    tokio::time::timeout(PATIENCE, async {
        while fake.probes.load(Ordering::SeqCst) < target {
            let notified = fake.probed.notified();
            if fake.probes.load(Ordering::SeqCst) >= target {
                break;
            }
            notified.await;
        }
    })
    .await
    .expect("no health probe came");
}

#[tokio::test]
async fn health_checks_take_a_backend_out_and_bring_it_back() {
    let (url, flaky) = good("flaky").await;
    let base = gateway_probing_every(
        0.05,
        &format!(
            "{}{}",
            backend("flaky", &url, r#"["h"]"#, ""),
            trap_backend(r#"["h"]"#)
        ),
    )
    .await;
    flaky.down.store(true, Ordering::SeqCst);
    probes(&flaky, 2).await;
    let (status, _, body) = chat(&base, "h").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        flaky.requests.load(Ordering::SeqCst),
        0,
        "a backend down is not sent requests"
    );

    flaky.down.store(false, Ordering::SeqCst);
    // The second probe starts after the first one's answer was taken in.
    probes(&flaky, 2).await;
    let (status, _, body) = chat(&base, "h").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Probes went on all along; none went to the trap, which the policy refuses.
    assert_trap_untouched();
}

// ---- the ledger, tokens per day, usage ----

/// A gateway over `backends` (TOML, EU-only policy, `extra` appended: keys, [cost]) that
/// keeps its ledger in `db`, with the API keys of `keys_file`. The state is returned too,
/// to flush the ledger.
async fn gateway_with_ledger(
    backends: &str,
    extra: &str,
    db: &std::path::Path,
    keys_file: Option<&std::path::Path>,
) -> (String, Arc<AppState>, verre_store::Store) {
    let text = format!(
        "[policy]\nallow_jurisdictions = [\"EU\"]\n[gateway]\nhealth_check_interval_s = 60\n{backends}{extra}"
    );
    let config = GatewayConfig::parse(&text, "test.toml").unwrap();
    let store = verre_store::Store::open_in_home(db).await.unwrap();
    let keys = keys_file.map(|f| verre_server::auth::ApiKeys::load(f).unwrap());
    let state = AppState::with_models(vec![], vec![], keys)
        .with_gateway(Arc::new(Gateway::new(&config).unwrap()))
        .with_ledger(verre_server::ledger::Ledger {
            writer: verre_store::ledger::LedgerWriter::spawn(store.clone()),
            audit: config.audit.clone(),
        })
        .with_store(store.clone());
    let state = Arc::new(state);
    let base = format!("http://{}", serve(router(state.clone())).await);
    (base, state, store)
}

async fn flush(state: &AppState) {
    state.ledger().unwrap().writer.flush().await;
}

/// Every ledger row, oldest first.
async fn ledger_rows(store: &verre_store::Store) -> Vec<Value> {
    use sqlx::Row;
    sqlx::query(
        "SELECT api_key, endpoint, model, backend, local, status, prompt_tokens, completion_tokens
         FROM ledger ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| {
        json!({
            "key": r.get::<String, _>("api_key"),
            "endpoint": r.get::<String, _>("endpoint"),
            "model": r.get::<String, _>("model"),
            "backend": r.get::<String, _>("backend"),
            "local": r.get::<i64, _>("local"),
            "status": r.get::<i64, _>("status"),
            "prompt": r.get::<i64, _>("prompt_tokens"),
            "completion": r.get::<i64, _>("completion_tokens"),
        })
    })
    .collect()
}

async fn read_all(response: reqwest::Response) -> String {
    String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn the_ledger_records_upstream_calls_and_refusals() {
    let (url, fake) = good("up").await;
    // Its streams do not wait between chunks.
    fake.gate.add_permits(100);
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    let ops = verre_server::auth::add_key(&keys_file, "ops").unwrap();
    let ci = verre_server::auth::add_key(&keys_file, "ci").unwrap();
    let (base, state, store) = gateway_with_ledger(
        &backend("up", &url, r#"["m"]"#, ""),
        "[[key]]\nname = \"ops\"\nadmin = true\n[[key]]\nname = \"ci\"\nmodels = [\"other\"]\n",
        dir.path(),
        Some(&keys_file),
    )
    .await;
    let ask = |key: &str, body: Value| {
        post_json(format!("{base}/v1/chat/completions"), &body).bearer_auth(key.to_string())
    };
    let hi = json!([{ "role": "user", "content": "hi" }]);

    let answer = ask(&ops, json!({ "model": "m", "messages": hi }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    json_of(answer).await;

    // Streamed without asking for usage: the ledger has it, the client does not.
    let streamed = ask(
        &ops,
        json!({ "model": "m", "stream": true, "messages": hi }),
    )
    .send()
    .await
    .unwrap();
    let text = read_all(streamed).await;
    assert!(
        text.contains("chunk-2") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert!(!text.contains("prompt_tokens"), "{text}");

    // Asked for: passed through as it came.
    let body = json!({ "model": "m", "stream": true, "stream_options": { "include_usage": true }, "messages": hi });
    let text = read_all(ask(&ops, body).send().await.unwrap()).await;
    assert!(text.contains(r#""prompt_tokens":4"#), "{text}");

    // A model the key may not use: refused, and recorded.
    let refused = ask(&ci, json!({ "model": "m", "messages": hi }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(json_of(refused).await["error"]["code"], "model_not_allowed");

    flush(&state).await;
    let rows = ledger_rows(&store).await;
    let expect = |key: &str, backend: &str, local: i64, status: i64, p: i64, c: i64| {
        json!({ "key": key, "endpoint": "chat", "model": "m", "backend": backend, "local": local,
                "status": status, "prompt": p, "completion": c })
    };
    assert_eq!(
        rows,
        [
            expect("ops", "up", 0, 200, 3, 2),
            expect("ops", "up", 0, 200, 4, 2),
            expect("ops", "up", 0, 200, 4, 2),
            expect("ci", "", 0, 403, 0, 0),
        ]
    );
    let audit = store.audit_entries(0, 100).await.unwrap();
    assert_eq!(audit.len(), 4);
    assert!(audit.iter().all(|e| e.action == "api.chat"));
    assert_eq!(audit[0].actor, "key:ops");
    assert_eq!(audit[3].actor, "key:ci");
    let detail = audit[0].detail.as_ref().unwrap().to_string();
    assert!(
        !detail.contains("hi") && !detail.contains("from up"),
        "metadata only: {detail}"
    );

    // Usage: an admin sees every key, another key only its own.
    let usage = |key: &str, query: &str| {
        client()
            .get(format!("{base}/v1/verre/usage{query}"))
            .bearer_auth(key.to_string())
            .send()
    };
    let all = json_of(usage(&ops, "?by=key").await.unwrap()).await;
    assert_eq!(all["total"]["requests"], 4, "{all}");
    assert_eq!(all["total"]["prompt_tokens"], 11);
    assert_eq!(all["groups"][0]["group"], "ops");
    assert_eq!(all["groups"][1]["group"], "ci");
    assert_eq!(all["currencies"]["list_prices"], "USD");
    // All 15 tokens of ops at GPT-4 Turbo: (11 × $10 + 6 × $30) / 1M.
    let usd = all["total"]["api_equivalent"][0]["usd"].as_f64().unwrap();
    assert!((usd - 290e-6).abs() < 1e-12, "{usd}");
    let own = json_of(usage(&ci, "").await.unwrap()).await;
    assert_eq!(own["total"]["requests"], 1, "{own}");
    assert_eq!(own["total"]["errors"], 1);
    let other = usage(&ci, "?key=ops").await.unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let bad = usage(&ops, "?by=colour").await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let anonymous = client()
        .get(format!("{base}/v1/verre/usage"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tokens_per_day_are_refused_with_429_across_a_restart() {
    let (url, fake) = good("t").await;
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    let small = verre_server::auth::add_key(&keys_file, "small").unwrap();
    let free = verre_server::auth::add_key(&keys_file, "free").unwrap();
    let config = (
        backend("t", &url, r#"["m"]"#, ""),
        "[[key]]\nname = \"small\"\ntokens_per_day = 5\n",
    );
    let ask = |base: &str, key: &str| {
        post_json(
            format!("{base}/v1/chat/completions"),
            &json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }),
        )
        .bearer_auth(key.to_string())
        .send()
    };
    let (base, state, _) =
        gateway_with_ledger(&config.0, config.1, dir.path(), Some(&keys_file)).await;
    // 3 + 2 tokens: the day's 5 are used.
    assert_eq!(ask(&base, &small).await.unwrap().status(), StatusCode::OK);
    let refused = ask(&base, &small).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(
        json_of(refused).await["error"]["code"],
        "rate_limit_exceeded"
    );
    assert_eq!(ask(&base, &free).await.unwrap().status(), StatusCode::OK);
    flush(&state).await;

    // A new server on the same database remembers.
    let (base, _, _) = gateway_with_ledger(&config.0, config.1, dir.path(), Some(&keys_file)).await;
    let before = fake.requests.load(Ordering::SeqCst);
    let refused = ask(&base, &small).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let message = json_of(refused).await["error"]["message"].to_string();
    assert!(message.contains("used 5 of its 5 tokens"), "{message}");
    assert_eq!(ask(&base, &free).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        fake.requests.load(Ordering::SeqCst),
        before + 1,
        "a refused request never reaches the upstream"
    );
}

/// Local requests (the embedded model, no gateway) are recorded with the engine's counts.
#[tokio::test]
async fn the_ledger_records_local_calls() {
    let Some(path) = std::env::var_os("VERRE_SMOLLM2_GGUF") else {
        eprintln!("skipped: set VERRE_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = verre_store::Store::open_in_home(dir.path()).await.unwrap();
    let model = Arc::new(LoadedModel::load(PathBuf::from(path)).unwrap());
    let served = ServedModel::start("smollm2-135m", model, EngineOptions::default()).unwrap();
    let state = AppState::with_models(vec![served], vec![], None)
        .with_ledger(verre_server::ledger::Ledger {
            writer: verre_store::ledger::LedgerWriter::spawn(store.clone()),
            audit: Default::default(),
        })
        .with_store(store.clone());
    let state = Arc::new(state);
    let base = format!("http://{}", serve(router(state.clone())).await);
    let request = |stream: bool| {
        json!({
            "model": "smollm2-135m", "max_tokens": 6, "temperature": 0, "stream": stream,
            "messages": [{ "role": "user", "content": "Say hello." }],
        })
    };
    let answer = json_of(
        post_json(format!("{base}/v1/chat/completions"), &request(false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let text = read_all(
        post_json(format!("{base}/v1/chat/completions"), &request(true))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        text.ends_with("data: [DONE]\n\n") && !text.contains("prompt_tokens"),
        "{text}"
    );
    flush(&state).await;
    let rows = ledger_rows(&store).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(
            (&row["backend"], &row["local"], &row["status"], &row["key"]),
            (&json!("local"), &json!(1), &json!(200), &json!(""))
        );
        assert_eq!(row["prompt"], answer["usage"]["prompt_tokens"], "{row}");
        assert_eq!(
            row["completion"], answer["usage"]["completion_tokens"],
            "{row}"
        );
    }
    let audit = store.audit_entries(0, 10).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0].actor, "anonymous");
}

// ---- hostile request bodies (issue 18, items 2 and 4) ----

/// An upstream that records every request body as it arrived, on chat, completions and
/// embeddings, and answers each (streamed when asked) with a fixed text.
struct Recorder {
    bodies: Mutex<Vec<(String, Vec<u8>)>>,
}

async fn record_request(
    State(recorder): State<Arc<Recorder>>,
    request: axum::extract::Request,
) -> Response {
    let path = request.uri().path().to_string();
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();
    recorder
        .bodies
        .lock()
        .unwrap()
        .push((path.clone(), body.to_vec()));
    if path.ends_with("/embeddings") {
        return axum::Json(json!({ "object": "list", "data": [{ "object": "embedding", "index": 0, "embedding": [0.5] }],
            "usage": { "prompt_tokens": 1, "total_tokens": 1 } }))
        .into_response();
    }
    let streamed = serde_json::from_slice::<Value>(&body).is_ok_and(|b| b["stream"] == true)
        || body.windows(14).any(|w| w == b"\"stream\":true,");
    if streamed {
        let chunk = json!({ "object": "chat.completion.chunk", "choices": [{ "index": 0, "delta": { "content": "ok" }, "text": "ok", "finish_reason": "stop" }] });
        return (
            [(header::CONTENT_TYPE, "text/event-stream")],
            format!("data: {chunk}\n\ndata: [DONE]\n\n"),
        )
            .into_response();
    }
    axum::Json(
        json!({ "object": "chat.completion", "choices": [{ "index": 0, "text": "ok",
        "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" }] }),
    )
    .into_response()
}

async fn recorder() -> (String, Arc<Recorder>) {
    let recorder = Arc::new(Recorder {
        bodies: Mutex::default(),
    });
    let app = Router::new()
        .route(
            "/v1/models",
            get(|| async { axum::Json(json!({ "data": [] })) }),
        )
        .fallback(record_request)
        .with_state(recorder.clone());
    (format!("http://{}/v1", serve(app).await), recorder)
}

/// A person's name, email, phone number and IBAN, as a client would send them.
const PERSONAL: &str = "Jean Dupont writes from jean.dupont@example.fr, phone +33 6 12 34 56 78, IBAN FR14 2004 1010 0505 0001 3M02 606";
const CLEAR: [&str; 4] = ["Dupont", "jean.dupont@", "12 34 56 78", "FR14"];

fn assert_no_personal_data(what: &str, sent: &[u8]) {
    let sent = String::from_utf8_lossy(sent);
    for clear in CLEAR {
        assert!(
            !sent.contains(clear),
            "{what}: {clear:?} reached the upstream: {sent}"
        );
    }
}

fn path_of(endpoint: &str) -> &'static str {
    match endpoint {
        "chat" => "/v1/chat/completions",
        "completions" => "/v1/completions",
        _ => "/v1/embeddings",
    }
}

/// The request of `endpoint` (chat, completions, embeddings) with [`PERSONAL`] in its text
/// and `hostile` (raw JSON text) as one more member of the body.
fn hostile_body(endpoint: &str, stream: bool, hostile: &[u8]) -> Vec<u8> {
    let text = match endpoint {
        "chat" => format!(r#""messages": [{{"role": "user", "content": "{PERSONAL}"}}]"#),
        "completions" => format!(r#""prompt": "{PERSONAL}""#),
        _ => format!(r#""input": ["{PERSONAL}"]"#),
    };
    let stream = match endpoint {
        "embeddings" => String::new(),
        _ => format!(r#""stream": {stream}, "#),
    };
    let mut body = format!(r#"{{"model": "far", {stream}{text}, "#).into_bytes();
    body.extend_from_slice(hostile);
    body.push(b'}');
    body
}

#[tokio::test]
async fn a_body_that_cannot_be_pseudonymised_is_refused_never_forwarded() {
    let (url, recorder) = recorder().await;
    let base = gateway(&backend("remote", &url, r#"["far"]"#, "")).await;
    let nested = format!(
        r#""metadata": {{"deep": {}1{}}}"#,
        "[".repeat(130),
        "]".repeat(130)
    );
    let hostile: [(&str, Vec<u8>); 4] = [
        // A JS client cutting an emoji in half.
        ("lone surrogate", br#""user": "abc \ud83d""#.to_vec()),
        ("raw 0xff byte", b"\"user\": \"abc \xff\"".to_vec()),
        ("130 levels of nesting", nested.into_bytes()),
        ("1e999", br#""metadata": {"score": 1e999}"#.to_vec()),
    ];
    for endpoint in ["chat", "completions", "embeddings"] {
        for stream in [false, true] {
            if endpoint == "embeddings" && stream {
                continue;
            }
            for (what, member) in &hostile {
                let body = hostile_body(endpoint, stream, member);
                let response = client()
                    .post(format!("{base}{}", path_of(endpoint)))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let text = read_all(response).await;
                let case = format!("{endpoint}, stream {stream}, {what}");
                assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {text}");
                let error: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    error["error"]["type"], "invalid_request_error",
                    "{case}: {text}"
                );
                // Refused by the edge, which parses each body once (serde reads none of
                // these), or else by the pseudonymiser: never forwarded either way.
                let message = error["error"]["message"].as_str().unwrap_or("");
                assert!(
                    error["error"]["code"] == "cannot_pseudonymize"
                        || message.contains("not valid JSON"),
                    "{case}: {text}"
                );
                let sent = recorder.bodies.lock().unwrap().clone();
                for (path, body) in &sent {
                    assert_no_personal_data(&format!("{case} ({path})"), body);
                }
                assert!(
                    sent.is_empty(),
                    "{case}: forwarded {} request(s)",
                    sent.len()
                );
            }
        }
    }
}

#[tokio::test]
async fn every_text_field_is_pseudonymised_and_the_rewritten_body_is_what_goes() {
    let (url, recorder) = recorder().await;
    let base = gateway(&backend("remote", &url, r#"["far"]"#, "")).await;
    let tool = json!({ "type": "function", "function": {
        "name": "send_mail",
        "description": format!("Mails the customer. {PERSONAL}"),
        "parameters": { "type": "object", "properties": { "to": { "type": "string",
            "description": format!("for instance {PERSONAL}"), "enum": ["jean.dupont@example.fr"] } },
            "required": ["to"] },
    } });
    let chat = json!({
        "model": "far",
        "user": "jean.dupont@example.fr",
        "metadata": { "customer": PERSONAL },
        "tools": [tool],
        "response_format": { "type": "json_schema", "json_schema": { "name": "reply",
            "schema": { "type": "object", "description": PERSONAL } } },
        "messages": [
            { "role": "system", "content": [{ "type": "text", "text": PERSONAL }] },
            { "role": "user", "name": "Jean_Dupont", "content": PERSONAL },
            { "role": "assistant", "content": null, "tool_calls": [{ "id": "call_1", "type": "function",
                "function": { "name": "send_mail", "arguments": json!({ "to": PERSONAL }).to_string() } }] },
            { "role": "tool", "tool_call_id": "call_1", "content": PERSONAL },
        ],
    });
    let bodies = [
        ("chat", chat),
        (
            "completions",
            json!({ "model": "far", "prompt": [PERSONAL, PERSONAL], "suffix": PERSONAL, "user": PERSONAL }),
        ),
        (
            "embeddings",
            json!({ "model": "far", "input": PERSONAL, "user": PERSONAL }),
        ),
    ];
    for (endpoint, body) in &bodies {
        // Pretty-printed with a duplicate key inside a message: what goes is the parsed,
        // rewritten body, never the bytes as they came.
        let mut text = serde_json::to_string_pretty(body).unwrap();
        if *endpoint == "chat" {
            text = text.replacen(
                "\"role\": \"user\",",
                &format!("\"role\": \"user\", \"content\": \"{PERSONAL}\","),
                1,
            );
        }
        let response = client()
            .post(format!("{base}{}", path_of(endpoint)))
            .header(header::CONTENT_TYPE, "application/json")
            .body(text)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{endpoint}");
        read_all(response).await;
    }
    let sent = recorder.bodies.lock().unwrap().clone();
    assert_eq!(sent.len(), 3);
    for (path, body) in &sent {
        assert_no_personal_data(path, body);
        let forwarded: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            body,
            &serde_json::to_vec(&forwarded).unwrap(),
            "{path}: the forwarded body is the re-serialised one"
        );
    }
    let chat: Value = serde_json::from_slice(&sent[0].1).unwrap();
    // Structure stays: roles, ids, tool names, schema keywords.
    assert_eq!(chat["messages"][1]["role"], "user");
    assert_eq!(chat["messages"][3]["tool_call_id"], "call_1");
    assert_eq!(chat["tools"][0]["function"]["name"], "send_mail");
    assert_eq!(
        chat["tools"][0]["function"]["parameters"]["required"][0],
        "to"
    );
    assert_eq!(chat["response_format"]["json_schema"]["name"], "reply");
    assert!(
        chat["messages"][1]["name"]
            .as_str()
            .unwrap()
            .starts_with("<PERSON_"),
        "{chat}"
    );
}

#[tokio::test]
async fn the_audit_says_whether_a_call_was_pseudonymised() {
    let (url, _recorder) = recorder().await;
    let dir = tempfile::tempdir().unwrap();
    let (base, state, store) = gateway_with_ledger(
        &format!(
            "{}{}",
            backend("remote", &url, r#"["far"]"#, ""),
            backend("trusted", &url, r#"["near"]"#, "pseudonymize = false"),
        ),
        "",
        dir.path(),
        None,
    )
    .await;
    for model in ["far", "near"] {
        let body = json!({ "model": model, "messages": [{ "role": "user", "content": PERSONAL }] });
        let response = post_json(format!("{base}/v1/chat/completions"), &body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        read_all(response).await;
    }
    let refused = client()
        .post(format!("{base}/v1/chat/completions"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(hostile_body("chat", false, br#""user": "\ud83d""#))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    flush(&state).await;
    let audit = store.audit_entries(0, 10).await.unwrap();
    let details: Vec<Value> = audit.iter().map(|e| e.detail.clone().unwrap()).collect();
    assert_eq!(details.len(), 3, "{details:?}");
    assert_eq!(details[0]["pseudonymized"], true, "{}", details[0]);
    assert_eq!(details[1]["pseudonymized"], false, "{}", details[1]);
    assert_eq!(details[2]["pseudonymized"], false, "{}", details[2]);
    assert_eq!(details[2]["status"], 400, "{}", details[2]);
}

#[tokio::test]
async fn a_duplicate_top_level_key_is_refused_before_the_key_limits() {
    let (url, fake) = good("d").await;
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    let limited = verre_server::auth::add_key(&keys_file, "limited").unwrap();
    let text = format!(
        "[policy]\nallow_jurisdictions = [\"EU\"]\n{}{}[[key]]\nname = \"limited\"\nmodels = [\"one\"]\n",
        backend("d1", &url, r#"["one"]"#, ""),
        backend("d2", &url, r#"["two"]"#, ""),
    );
    let config = GatewayConfig::parse(&text, "test.toml").unwrap();
    let keys = verre_server::auth::ApiKeys::load(&keys_file).unwrap();
    let state = AppState::with_models(vec![], vec![], Some(keys))
        .with_gateway(Arc::new(Gateway::new(&config).unwrap()));
    let base = format!("http://{}", serve(router(Arc::new(state))).await);
    let bodies = [
        r#"{"model": "one", "messages": [{"role": "user", "content": "hi"}], "model": "two"}"#,
        r#"{"model": "two", "messages": [], "model": "one"}"#,
        // The same key spelled with an escape.
        r#"{"model": "one", "messages": [], "mod\u0065l": "two"}"#,
        r#"{"model": "one", "messages": [], "stream": false, "stream": true}"#,
    ];
    for body in bodies {
        let response = client()
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&limited)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer = read_all(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let error: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{answer}");
        assert_eq!(error["error"]["code"], "duplicate_key", "{answer}");
        assert!(error["error"]["param"].is_string(), "{answer}");
    }
    assert_eq!(
        fake.requests.load(Ordering::SeqCst),
        0,
        "nothing was forwarded"
    );
}

// ---- the Responses API through the gateway ----

/// An upstream that serves `/v1/responses` itself: its input back as the answer's text.
async fn fake_responses(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    fake.requests.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&body).unwrap();
    let model = body["model"].as_str().unwrap_or_default().to_string();
    fake.models.lock().unwrap().push(model.clone());
    let input = body["input"].as_str().unwrap_or_default().to_string();
    fake.prompts.lock().unwrap().push(input.clone());
    if body["stream"] == true {
        // The input back in deltas of 5 bytes, which split placeholders.
        let mut events = String::new();
        let mut event = |e: Value| {
            events += &format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap());
        };
        for piece in input.as_bytes().chunks(5) {
            let delta = std::str::from_utf8(piece).unwrap();
            event(
                json!({ "type": "response.output_text.delta", "item_id": "msg_1",
                "output_index": 0, "content_index": 0, "delta": delta, "logprobs": [] }),
            );
        }
        event(
            json!({ "type": "response.output_text.done", "item_id": "msg_1",
            "output_index": 0, "content_index": 0, "text": input, "logprobs": [] }),
        );
        event(
            json!({ "type": "response.completed", "response": { "id": "resp_up",
            "output": [{ "type": "message", "content": [{ "type": "output_text", "text": input }] }],
            "usage": { "input_tokens": 7, "output_tokens": 3, "total_tokens": 10 } } }),
        );
        return ([(header::CONTENT_TYPE, "text/event-stream")], events).into_response();
    }
    axum::Json(json!({
        "id": "resp_up", "object": "response", "created_at": 1, "status": "completed", "model": model,
        "output": [{ "type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{ "type": "output_text", "text": input, "annotations": [] }] }],
        "usage": { "input_tokens": 7, "output_tokens": 3, "total_tokens": 10 },
    }))
    .into_response()
}

async fn good_with_responses(name: &str) -> (String, Arc<Fake>) {
    let fake = Fake::new(name);
    let app = Router::new()
        .route("/v1/chat/completions", post(fake_chat))
        .route("/v1/responses", post(fake_responses))
        .route("/v1/models", get(fake_models))
        .with_state(fake.clone());
    (format!("http://{}/v1", serve(app).await), fake)
}

#[tokio::test]
async fn a_response_for_a_remote_model_is_a_pseudonymised_chat_completion_in_the_ledger() {
    let (url, fake) = good("up").await;
    let dir = tempfile::tempdir().unwrap();
    let (base, state, store) =
        gateway_with_ledger(&backend("up", &url, r#"["m"]"#, ""), "", dir.path(), None).await;
    let input = format!("echo: {PERSONAL}");
    let answer = post_json(
        format!("{base}/v1/responses"),
        &json!({ "model": "m", "input": input }),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let response = json_of(answer).await;
    assert_eq!(response["object"], "response", "{response}");
    // What left had no personal data; what came back has it again, text and arguments.
    let sent = fake.prompts.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].contains("jean.dupont@example.fr"), "{sent:?}");
    assert_eq!(response["output"][0]["content"][0]["text"], PERSONAL);
    let arguments: Value =
        serde_json::from_str(response["output"][1]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["text"], PERSONAL, "{response}");

    // Streamed: the events carry the restored text.
    let answer = post_json(
        format!("{base}/v1/responses"),
        &json!({ "model": "m", "input": input, "stream": true }),
    )
    .send()
    .await
    .unwrap();
    let text = read_all(answer).await;
    let completed: Value = text
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .find(|e| e["type"] == "response.completed")
        .unwrap_or_else(|| panic!("no response.completed in {text}"));
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"],
        PERSONAL
    );

    // The ledger has the two chat completions, not the Responses calls on top.
    flush(&state).await;
    let rows = ledger_rows(&store).await;
    let endpoints: Vec<&str> = rows
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(endpoints, ["chat", "chat"], "{rows:?}");
    assert_eq!(rows[0]["backend"], "up");
}

#[tokio::test]
async fn a_backend_that_serves_responses_gets_them_passed_through() {
    let (url, fake) = good_with_responses("up").await;
    let dir = tempfile::tempdir().unwrap();
    let (base, state, store) = gateway_with_ledger(
        &backend(
            "up",
            &url,
            r#"[{ name = "m", upstream = "big" }]"#,
            "responses = true",
        ),
        "",
        dir.path(),
        None,
    )
    .await;
    let answer = post_json(
        format!("{base}/v1/responses"),
        &json!({ "model": "m", "input": PERSONAL }),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["x-verre-backend"], "up");
    let response = json_of(answer).await;
    assert_eq!(response["id"], "resp_up", "passed through: {response}");
    assert_eq!(response["output"][0]["content"][0]["text"], PERSONAL);
    assert_eq!(*fake.models.lock().unwrap(), ["big"]);
    let sent = fake.prompts.lock().unwrap().clone();
    assert!(!sent[0].contains("jean.dupont@example.fr"), "{sent:?}");

    // Streamed: the deltas put together, the done text and the final response restored.
    let answer = post_json(
        format!("{base}/v1/responses"),
        &json!({ "model": "m", "input": PERSONAL, "stream": true }),
    )
    .send()
    .await
    .unwrap();
    let text = read_all(answer).await;
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, PERSONAL, "{text}");
    let done = events
        .iter()
        .find(|e| e["type"] == "response.output_text.done")
        .unwrap();
    assert_eq!(done["text"], PERSONAL);
    let completed = events
        .iter()
        .find(|e| e["type"] == "response.completed")
        .unwrap();
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"],
        PERSONAL
    );
    assert!(text.contains("event: response.completed\n"), "{text}");

    flush(&state).await;
    let rows = ledger_rows(&store).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row["endpoint"], "responses");
        assert_eq!(
            (row["prompt"].clone(), row["completion"].clone()),
            (json!(7), json!(3))
        );
    }
}

#[tokio::test]
async fn messages_are_in_the_ledger_and_audit_log_as_chat_under_the_callers_key() {
    let (url, fake) = good("up").await;
    fake.gate.add_permits(100);
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    let ops = verre_server::auth::add_key(&keys_file, "ops").unwrap();
    let (base, state, store) = gateway_with_ledger(
        &backend("up", &url, r#"["m"]"#, ""),
        "",
        dir.path(),
        Some(&keys_file),
    )
    .await;
    for stream in [false, true] {
        let body = json!({ "model": "m", "max_tokens": 8, "stream": stream,
                           "messages": [{ "role": "user", "content": "hi" }] });
        let response = post_json(format!("{base}/v1/messages"), &body)
            .header("x-api-key", ops.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        read_all(response).await;
    }
    flush(&state).await;
    let rows = ledger_rows(&store).await;
    let row = |p: i64, c: i64| {
        json!({ "key": "ops", "endpoint": "chat", "model": "m", "backend": "up", "local": 0,
                "status": 200, "prompt": p, "completion": c })
    };
    assert_eq!(rows, [row(3, 2), row(4, 2)]);
    let audit = store.audit_entries(0, 100).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert!(
        audit
            .iter()
            .all(|e| e.action == "api.chat" && e.actor == "key:ops")
    );
}

/// `[pii] ner_model`: a named-entity model adds the names of persons that the rules miss
/// (names outside the lexicon with no title, greeting or label around them). The model
/// directory comes from `VERRE_RAMPART_DIR` (scripts/test.sh pulls `rampart-ner`).
#[tokio::test]
async fn a_person_model_pseudonymises_names_the_rules_miss() {
    let Some(dir) = std::env::var_os("VERRE_RAMPART_DIR") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "VERRE_RAMPART_DIR must be set in CI"
        );
        eprintln!("skipped: set VERRE_RAMPART_DIR to the rampart-ner model directory");
        return;
    };
    let text = "Please forward the file to Ngozi Okafor before noon. Yesterday Dmitri Volkov \
                confirmed the delivery date; Okafor has the invoice.";
    let chat = json!({ "model": "far", "messages": [{ "role": "user", "content": text }] });
    let config_text = format!(
        "[policy]\nallow_jurisdictions = [\"EU\"]\n{}",
        backend("remote", "URL", r#"["far"]"#, "")
    );

    let mut sent = Vec::new();
    for with_model in [false, true] {
        let (url, recorder) = recorder().await;
        let config = GatewayConfig::parse(&config_text.replace("URL", &url), "test.toml").unwrap();
        let mut gateway = Gateway::new(&config).unwrap();
        if with_model {
            let model = verre_engine::model::ner::TokenClassifier::load(&dir).unwrap();
            gateway = gateway.with_person_model(Arc::new(
                verre_server::gateway::pii::PersonModel::new(model, config.pii.ner_threshold),
            ));
        }
        let state = AppState::with_models(vec![], vec![], None).with_gateway(Arc::new(gateway));
        let base = format!("http://{}", serve(router(Arc::new(state))).await);
        let response = post_json(format!("{base}/v1/chat/completions"), &chat)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        read_all(response).await;
        let bodies = recorder.bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 1);
        sent.push(String::from_utf8(bodies[0].1.clone()).unwrap());
    }
    // The rules alone leave these names in clear: that is what the model is for.
    assert!(sent[0].contains("Okafor"), "{}", sent[0]);
    for clear in ["Ngozi", "Okafor", "Dmitri", "Volkov"] {
        assert!(
            !sent[1].contains(clear),
            "{clear} reached the upstream: {}",
            sent[1]
        );
    }
    // The rest of the sentence is sent as it was.
    assert!(
        sent[1].contains("confirmed the delivery date"),
        "{}",
        sent[1]
    );
}
