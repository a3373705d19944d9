//! The API in-process (no sockets): error shapes and statuses, auth, and — with the
//! embedded default model from `VERRE_SMOLLM2_GGUF` — generation, streaming, the queue
//! limit and cancellation when a client goes away; with all-MiniLM-L6-v2 from
//! `VERRE_MINILM_DIR`, embeddings.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use verre_engine::engine::EngineOptions;
use verre_engine::model::bert::{Embedder, cosine};
use verre_server::auth::{ApiKeys, add_key};
use verre_server::{AppState, EmbeddingModel, ServedModel, router};

mod common;
use common::{MODEL, model};
const EMBEDDING_MODEL: &str = "minilm-l6";

fn embedder() -> Option<Arc<Embedder>> {
    static EMBEDDER: OnceLock<Option<Arc<Embedder>>> = OnceLock::new();
    EMBEDDER
        .get_or_init(|| match std::env::var_os("VERRE_MINILM_DIR") {
            Some(dir) => Some(Arc::new(Embedder::load(PathBuf::from(dir)).unwrap())),
            None if std::env::var_os("CI").is_some() => {
                panic!("VERRE_MINILM_DIR must point at the minilm-l6 model directory in CI")
            }
            None => {
                eprintln!("skipped: set VERRE_MINILM_DIR to the minilm-l6 model directory");
                None
            }
        })
        .clone()
}

/// An app serving the embedded model, or `None` (test skipped) without it.
fn app_with(options: EngineOptions) -> Option<(Router, Arc<AppState>)> {
    let served = ServedModel::start(MODEL, model()?, options).unwrap();
    let state = Arc::new(AppState::with_models(vec![served], vec![], None));
    Some((router(state.clone()), state))
}

/// An app serving the embedding model, and the chat model too when `with_chat`.
fn embedding_app(with_chat: bool) -> Option<(Router, Arc<AppState>)> {
    let chat = match with_chat {
        true => vec![ServedModel::start(MODEL, model()?, EngineOptions::default()).unwrap()],
        false => vec![],
    };
    let embedding = EmbeddingModel::start(EMBEDDING_MODEL, embedder()?, 4).unwrap();
    let state = Arc::new(AppState::with_models(chat, vec![embedding], None));
    Some((router(state.clone()), state))
}

fn app() -> Option<(Router, Arc<AppState>)> {
    app_with(EngineOptions::default())
}

/// An app whose models are still loading.
fn loading_app(keys: Option<ApiKeys>) -> Router {
    router(Arc::new(AppState::new(keys)))
}

fn request(method: &str, uri: &str, body: Option<&str>, key: Option<&str>) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        r = r.header("authorization", format!("Bearer {key}"));
    }
    r.header("content-type", "application/json")
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap()
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (parts.status, parts.headers, value)
}

async fn post(app: &Router, uri: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
    call(app, request("POST", uri, Some(&body.to_string()), None)).await
}

/// An OpenAI error body: `{"error": {"message", "type", "param", "code"}}`.
fn assert_error(body: &Value, param: Option<&str>, code: Option<&str>) {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert_eq!(e["param"].as_str(), param, "{body}");
    assert_eq!(e["code"].as_str(), code, "{body}");
}

fn hi(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "temperature": 0,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// The `data:` payloads of a server-sent event stream.
fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn while_loading_health_and_api_answer_503() {
    let app = loading_app(None);
    let (status, _, body) = call(&app, request("GET", "/health", None, None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&body, None, Some("model_loading"));
    let (status, _, _) = call(&app, request("GET", "/v1/models", None, None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, _) = post(&app, "/v1/chat/completions", hi(json!({}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn api_keys_guard_v1_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    let key = add_key(&path, "test").unwrap();
    let app = loading_app(Some(ApiKeys::load(&path).unwrap()));

    let (status, _, body) = call(&app, request("GET", "/v1/models", None, None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, None, Some("invalid_api_key"));
    let (status, _, body) = call(&app, request("GET", "/v1/models", None, Some("vk-nope"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, None, Some("invalid_api_key"));
    // The right key gets through (to a server still loading).
    let (status, _, _) = call(&app, request("GET", "/v1/models", None, Some(&key))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Probes stay open.
    let (status, _, _) = call(&app, request("GET", "/metrics", None, None)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_requests_get_400_naming_the_field() {
    let app = loading_app(None);
    let bad = |body: &str| request("POST", "/v1/chat/completions", Some(body), None);
    let (status, _, body) = call(&app, bad("{\"model\": ")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, None, None);
    let (status, _, body) = post(&app, "/v1/chat/completions", hi(json!({"n": "two"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, Some("n"), None);
    let (status, _, body) = post(
        &app,
        "/v1/chat/completions",
        hi(json!({"tools": [{"type": "function"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, Some("tools[0].function"), Some("invalid_value"));
    let (status, _, body) = post(
        &app,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "x", "logit_bias": {"1": 5}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, Some("logit_bias"), Some("unsupported_parameter"));
}

#[tokio::test]
async fn unknown_routes_and_unserved_models_are_404() {
    let app = router(Arc::new(AppState::with_models(vec![], vec![], None)));
    let (status, _, body) = call(&app, request("GET", "/v2/nothing", None, None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, None, Some("not_found"));
    let (status, _, body) = post(
        &app,
        "/v1/embeddings",
        json!({"model": "minilm-l6", "input": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, Some("model"), Some("model_not_found"));
}

#[tokio::test]
async fn chat_completion_models_and_model_errors() {
    let Some((app, _)) = app() else { return };
    let (status, _, body) = post(&app, "/v1/chat/completions", hi(json!({"n": 2}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["role"], "assistant");
        assert!(
            c["message"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        );
        assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    }
    // Greedy: both choices agree.
    assert_eq!(choices[0]["message"], choices[1]["message"]);
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );

    let (status, _, body) = call(&app, request("GET", "/v1/models", None, None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"][0]["id"], MODEL);
    let (status, _, body) = call(
        &app,
        request("GET", &format!("/v1/models/{MODEL}"), None, None),
    )
    .await;
    assert_eq!(
        (status, body["object"].as_str()),
        (StatusCode::OK, Some("model"))
    );
    let (status, _, body) = call(&app, request("GET", "/v1/models/gpt-4o", None, None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, Some("model"), Some("model_not_found"));
    let (status, _, body) =
        post(&app, "/v1/chat/completions", hi(json!({"model": "gpt-4o"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, Some("model"), Some("model_not_found"));

    let (status, _, body) = post(
        &app,
        "/v1/chat/completions",
        hi(json!({"max_tokens": 1_000_000})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, Some("messages"), Some("context_length_exceeded"));
    let long = "hello ".repeat(10_000);
    let (status, _, body) = post(
        &app,
        "/v1/chat/completions",
        hi(json!({"messages": [{"role": "user", "content": long}], "max_tokens": null})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, Some("messages"), Some("context_length_exceeded"));
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let Some((app, _)) = app_with(EngineOptions {
        max_waiting: 0,
        ..Default::default()
    }) else {
        return;
    };
    let (status, headers, body) = post(&app, "/v1/chat/completions", hi(json!({}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.get("retry-after").is_some());
    assert_error(&body, None, Some("rate_limit_exceeded"));
}

#[tokio::test]
async fn streamed_chat_with_usage_and_logprobs() {
    let Some((app, _)) = app() else { return };
    let body = hi(json!({
        "stream": true, "stream_options": {"include_usage": true},
        "logprobs": true, "top_logprobs": 2,
    }));
    let (status, headers, text) = post(&app, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = sse_data(text.as_str().unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut content = String::new();
    let mut finish = None;
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c["usage"].is_null());
        let choice = &c["choices"][0];
        content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        if let Some(lp) = choice["logprobs"]["content"].as_array() {
            assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 2);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(finish.is_some());

    // The same request without streaming says the same thing.
    let mut plain = body;
    plain.as_object_mut().unwrap().remove("stream");
    plain.as_object_mut().unwrap().remove("stream_options");
    let (_, _, whole) = post(&app, "/v1/chat/completions", plain).await;
    assert_eq!(
        whole["choices"][0]["message"]["content"].as_str(),
        Some(content.as_str())
    );
    assert_eq!(whole["usage"], last["usage"]);
}

#[tokio::test]
async fn completions_echo_logprobs_and_prompt_arrays() {
    let Some((app, _)) = app() else { return };
    let (status, _, body) = post(
        &app,
        "/v1/completions",
        json!({"model": MODEL, "prompt": ["The sky is", "One, two,"], "max_tokens": 4,
               "temperature": 0, "echo": true, "logprobs": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert!(
        choices[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("The sky is")
    );
    assert!(
        choices[1]["text"]
            .as_str()
            .unwrap()
            .starts_with("One, two,")
    );
    let lp = &choices[0]["logprobs"];
    let n = lp["tokens"].as_array().unwrap().len();
    assert!(
        lp["token_logprobs"][0].is_null(),
        "the first prompt token has no logprob"
    );
    assert!(lp["token_logprobs"][1].as_f64().unwrap() <= 0.0);
    assert_eq!(lp["text_offset"].as_array().unwrap().len(), n);
    assert_eq!(lp["top_logprobs"].as_array().unwrap().len(), n);
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_generation() {
    let Some((app, state)) = app() else { return };
    let engine = state.model(MODEL).unwrap().engine.clone();
    let mut watch = engine.watch_metrics();
    let body = hi(json!({"stream": true, "max_tokens": 4000, "ignore_eos": true}));
    let response = app
        .clone()
        .oneshot(request(
            "POST",
            "/v1/chat/completions",
            Some(&body.to_string()),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // Read until a token has come through.
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data: ").count() < 3 {
        let frame = body.frame().await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
    }
    watch.wait_for(|m| m.running == 1).await.unwrap();
    let (_, _, page) = call(&app, request("GET", "/metrics", None, None)).await;
    assert!(page.as_str().unwrap().contains(&format!(
        "verre:num_requests_running{{model_name=\"{MODEL}\"}} 1"
    )));

    drop(body);
    let m = *watch.wait_for(|m| m.running == 0).await.unwrap();
    assert!(m.generation_tokens < 4000, "stopped early: {m:?}");
    let (_, _, page) = call(&app, request("GET", "/metrics", None, None)).await;
    assert!(page.as_str().unwrap().contains(&format!(
        "verre:num_requests_running{{model_name=\"{MODEL}\"}} 0"
    )));
    // Nothing more is generated for it: a new request's tokens are all that is added.
    let (_, _, answer) = post(&app, "/v1/chat/completions", hi(json!({}))).await;
    let added = answer["usage"]["completion_tokens"].as_u64().unwrap();
    let after = *watch.wait_for(|m| m.running == 0).await.unwrap();
    assert_eq!(after.generation_tokens, m.generation_tokens + added);
}

async fn embed(app: &Router, extra: Value) -> (StatusCode, Value) {
    let mut body = json!({"model": EMBEDDING_MODEL});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, _, body) = post(app, "/v1/embeddings", body).await;
    (status, body)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// What the official SDKs do with `encoding_format: "base64"`: little-endian f32s.
fn from_base64(v: &Value) -> Vec<f32> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The sentence-transformers vector of the fixture's first case.
fn reference_vector() -> (String, Vec<f32>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../engine/tests/fixtures/minilm-l6.json"
    );
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = &fixture["cases"][0];
    (
        case["text"].as_str().unwrap().to_string(),
        floats(&case["embedding"]),
    )
}

#[tokio::test]
async fn embeddings_float_and_base64_agree_and_rank_by_meaning() {
    let Some((app, _)) = embedding_app(false) else {
        return;
    };
    let (reference_text, reference) = reference_vector();
    let inputs = [
        reference_text.as_str(),
        "A fast auburn fox leapt over a sleepy hound.",
        "Invoice 2024-117: amount due EUR 1,250.00 by 30 June.",
    ];
    let (status, body) = embed(&app, json!({"input": inputs, "user": "u1"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["object"].as_str(), body["model"].as_str()),
        (Some("list"), Some(EMBEDDING_MODEL))
    );
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let vectors: Vec<Vec<f32>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(
                (d["object"].as_str(), d["index"].as_u64()),
                (Some("embedding"), Some(i as u64))
            );
            floats(&d["embedding"])
        })
        .collect();
    for v in &vectors {
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    let embedder = embedder().unwrap();
    let tokens: usize = inputs
        .iter()
        .map(|t| embedder.tokenize(t).unwrap().len())
        .sum();
    assert_eq!(body["usage"]["prompt_tokens"].as_u64(), Some(tokens as u64));
    assert_eq!(body["usage"]["total_tokens"].as_u64(), Some(tokens as u64));
    let similar = cosine(&vectors[0], &vectors[1]);
    let unrelated = cosine(&vectors[0], &vectors[2]);
    assert!(
        similar > unrelated + 0.2,
        "similar {similar}, unrelated {unrelated}"
    );
    let against_reference = cosine(&vectors[0], &reference);
    assert!(
        against_reference >= 0.9999,
        "cosine to sentence-transformers {against_reference}"
    );

    let (status, body) = embed(&app, json!({"input": inputs, "encoding_format": "base64"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (d, v) in body["data"].as_array().unwrap().iter().zip(&vectors) {
        assert_eq!(&from_base64(&d["embedding"]), v);
    }

    // Token ids are this model's, taken as given: the text's own ids give the text's vector.
    let ids = embedder.tokenize(inputs[0]).unwrap();
    let (status, body) = embed(
        &app,
        json!({"input": [ids.clone(), ids], "dimensions": 384}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(floats(&body["data"][1]["embedding"]), vectors[0]);
    // A single string and a single id array are one input each.
    let (_, body) = embed(&app, json!({"input": inputs[2]})).await;
    assert_eq!(floats(&body["data"][0]["embedding"]), vectors[2]);
    // Longer than the model takes: truncated when asked for (refused otherwise: tests/edge.rs).
    let (status, body) = embed(
        &app,
        json!({"input": "word ".repeat(1000), "truncate": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["usage"]["prompt_tokens"].as_u64(),
        Some(embedder.max_tokens() as u64)
    );

    let (_, _, metrics) = call(&app, request("GET", "/metrics", None, None)).await;
    let line = format!("verre:prompt_tokens_total{{model_name=\"{EMBEDDING_MODEL}\"}} ");
    let counted: u64 = metrics
        .as_str()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix(&line)))
        .unwrap_or_else(|| panic!("{line} missing from {metrics}"))
        .parse()
        .unwrap();
    assert!(counted >= 2 * tokens as u64 + 256, "{counted}");
}

#[tokio::test]
async fn embedding_requests_are_validated() {
    let Some((app, _)) = embedding_app(false) else {
        return;
    };
    let vocab = embedder().unwrap().vocab_size();
    let too_many: Vec<&str> = vec!["a"; 2049];
    let cases = [
        (json!({"input": ""}), "input", "invalid_value"),
        (json!({"input": []}), "input", "invalid_value"),
        (json!({"input": ["a", ""]}), "input", "invalid_value"),
        (json!({"input": [[]]}), "input", "invalid_value"),
        (json!({"input": 3}), "input", "invalid_value"),
        (json!({"input": too_many}), "input", "invalid_value"),
        (
            json!({"input": [101, vocab, 102]}),
            "input",
            "invalid_value",
        ),
        (
            json!({"input": vec![100; 257]}),
            "input",
            "context_length_exceeded",
        ),
        (
            json!({"input": "a", "encoding_format": "hex"}),
            "encoding_format",
            "invalid_value",
        ),
        (
            json!({"input": "a", "dimensions": 128}),
            "dimensions",
            "invalid_value",
        ),
        (
            json!({"input": "a", "dimensions": 0}),
            "dimensions",
            "invalid_value",
        ),
    ];
    for (extra, param, code) in cases {
        let (status, body) = embed(&app, extra.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {body}");
        assert_error(&body, Some(param), Some(code));
    }
    let (status, _, body) = post(&app, "/v1/embeddings", json!({"input": "a"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = embed(
        &app,
        json!({"model": "text-embedding-3-small", "input": "a"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, Some("model"), Some("model_not_found"));
}

#[tokio::test]
async fn chat_and_embedding_models_each_answer_their_own_endpoints() {
    let Some((app, _)) = embedding_app(true) else {
        return;
    };
    let (status, _, body) = call(&app, request("GET", "/v1/models", None, None)).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MODEL, EMBEDDING_MODEL]);
    let (status, _, body) = call(
        &app,
        request("GET", &format!("/v1/models/{EMBEDDING_MODEL}"), None, None),
    )
    .await;
    assert_eq!(
        (status, body["max_model_len"].as_u64()),
        (StatusCode::OK, Some(256))
    );

    for uri in ["/v1/chat/completions", "/v1/completions"] {
        let body = hi(json!({"model": EMBEDDING_MODEL, "prompt": "a"}));
        let (status, _, body) = post(&app, uri, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_error(&body, Some("model"), Some("model_not_supported"));
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("minilm-l6 is an embedding model"),
            "{message}"
        );
    }
    let (status, body) = embed(&app, json!({"model": MODEL, "input": "a"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, Some("model"), Some("model_not_supported"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("smollm2-135m is a chat model")
    );
    // The chat model still chats.
    let (status, _, body) = post(&app, "/v1/chat/completions", hi(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The number after `{name}{model_name="MODEL"} ` on the `/metrics` page.
async fn metric(app: &Router, name: &str) -> f64 {
    let (_, _, page) = call(app, request("GET", "/metrics", None, None)).await;
    let line = format!("{name}{{model_name=\"{MODEL}\"}} ");
    page.as_str()
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix(&line)))
        .unwrap_or_else(|| panic!("{line} missing from {page}"))
        .parse()
        .unwrap()
}

/// With a draft model (here the model drafting for itself), `/metrics` counts each
/// drafter's tokens and acceptance rate apart.
#[tokio::test]
async fn metrics_count_drafts_per_drafter() {
    let Some(model) = model() else { return };
    let options = EngineOptions {
        draft_model: Some(verre_engine::DraftModel::new(model.clone())),
        ..Default::default()
    };
    let Some((app, _)) = app_with(options) else {
        return;
    };
    let (status, _, body) = post(
        &app,
        "/v1/chat/completions",
        hi(json!({"messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 24})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, page) = call(&app, request("GET", "/metrics", None, None)).await;
    let page = page.as_str().unwrap_or_default().to_string();
    let value = |name: &str, drafter: &str| -> f64 {
        let line = format!("{name}{{model_name=\"{MODEL}\",drafter=\"{drafter}\"}} ");
        page.lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("{line} missing from {page}"))
            .parse()
            .unwrap()
    };
    let drafted = value("verre:spec_decode_drafter_draft_tokens_total", "model");
    let accepted = value("verre:spec_decode_drafter_accepted_tokens_total", "model");
    let rate = value("verre:spec_decode_drafter_acceptance_rate", "model");
    assert!(drafted > 0.0 && accepted > 0.0, "{drafted} {accepted}");
    assert!((rate - accepted / drafted).abs() < 1e-9, "{rate}");
    assert_eq!(
        value("verre:spec_decode_drafter_draft_tokens_total", "lookup"),
        0.0
    );
}

/// Copying text from the prompt is drafted and counted in `/metrics`; `"speculative":
/// false` decodes token by token, to the same answer, with nothing drafted.
#[tokio::test]
async fn speculative_drafts_are_counted_and_a_request_can_turn_them_off() {
    let Some((app, _)) = app() else { return };
    let copy = hi(json!({
        "messages": [{"role": "user", "content":
            "Repeat exactly: Invoice INV-2024-0457 from Quality Hosting AG, Uferstrasse 90, 4057 Basel, total 255.60 EUR."}],
        "max_tokens": 40,
    }));
    let (status, _, fast) = post(&app, "/v1/chat/completions", copy.clone()).await;
    assert_eq!(status, StatusCode::OK, "{fast}");
    let drafted = metric(&app, "verre:spec_decode_num_draft_tokens_total").await;
    let accepted = metric(&app, "verre:spec_decode_num_accepted_tokens_total").await;
    let rate = metric(&app, "verre:spec_decode_draft_acceptance_rate").await;
    assert!(drafted > 0.0 && accepted > 0.0, "{drafted} {accepted}");
    assert!((rate - accepted / drafted).abs() < 1e-9);

    let mut off = copy;
    off["speculative"] = json!(false);
    let (status, _, slow) = post(&app, "/v1/chat/completions", off).await;
    assert_eq!(status, StatusCode::OK, "{slow}");
    assert_eq!(
        slow["choices"][0]["message"]["content"],
        fast["choices"][0]["message"]["content"]
    );
    assert_eq!(
        metric(&app, "verre:spec_decode_num_draft_tokens_total").await,
        drafted
    );
    let (status, _, body) = post(&app, "/v1/chat/completions", hi(json!({"speculative": 1}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, Some("speculative"), None);
}
