//! The API in-process (no sockets): error shapes and statuses, auth, and — with the
//! embedded default model from `VERRE_SMOLLM2_GGUF` — generation, streaming, the queue
//! limit and cancellation when a client goes away.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use verre_engine::LoadedModel;
use verre_engine::engine::EngineOptions;
use verre_server::auth::{ApiKeys, add_key};
use verre_server::{AppState, ServedModel, router};

const MODEL: &str = "smollm2-135m";

fn model() -> Option<Arc<LoadedModel>> {
    static MODEL: OnceLock<Option<Arc<LoadedModel>>> = OnceLock::new();
    MODEL
        .get_or_init(|| match std::env::var_os("VERRE_SMOLLM2_GGUF") {
            Some(path) => Some(Arc::new(LoadedModel::load(PathBuf::from(path)).unwrap())),
            None if std::env::var_os("CI").is_some() => {
                panic!("VERRE_SMOLLM2_GGUF must point at the model file in CI")
            }
            None => {
                eprintln!("skipped: set VERRE_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf");
                None
            }
        })
        .clone()
}

/// An app serving the embedded model, or `None` (test skipped) without it.
fn app_with(options: EngineOptions) -> Option<(Router, Arc<AppState>)> {
    let served = ServedModel::start(MODEL, model()?, options).unwrap();
    let state = Arc::new(AppState::with_models(vec![served], None));
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
    assert_error(&body, Some("tools"), Some("unsupported_parameter"));
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
async fn unknown_routes_and_embeddings_are_404() {
    let app = loading_app(None);
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
