//! The `/v1` edge as clients meet it, in-process (no sockets):
//! - tool calls clients can rely on, on the embedded model from `VERRE_SMOLLM2_GGUF`:
//!   Pydantic-style schemas with `$defs`/`$ref`, exactly one call for `required` or a named
//!   function unless `parallel_tool_calls` is true, arguments closed near the token limit,
//!   and never a partial call left in `content`.
//!
//! - browsers and untrusted peers: CORS for the origins `[http] cors_origins` lists
//!   (preflight before the key check), the loopback guard of a server without keys (JSON
//!   content type, loopback `Host`), `/metrics` keyed for remote peers, keys as `x-api-key`,
//!   OpenAI-shaped 405s;
//! - answers: `system_fingerprint`, chat logprobs that match the text (no final
//!   `<|im_end|>`), embeddings over the model's limit refused unless `truncate: true`
//!   (all-MiniLM-L6-v2 from `VERRE_MINILM_DIR`).
//!
//! Model tests are skipped without the model files locally and fail without them under CI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use verre_engine::model::bert::Embedder;
use verre_server::auth::{ApiKeys, add_key};
use verre_server::config::GatewayConfig;
use verre_server::gateway::Gateway;
use verre_server::{AppState, EmbeddingModel, router};

mod common;
use common::{MODEL, app};

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (parts.status, parts.headers, value)
}

async fn post(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, _, body) = call(app, req).await;
    (status, body)
}

fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

/// What `pydantic_function_tool(Person)` sends for a model nesting another.
fn person_tool() -> Value {
    json!({ "type": "function", "function": {
        "name": "record_person",
        "description": "Record a person and their home address.",
        "parameters": {
            "$defs": { "Addr": {
                "type": "object", "title": "Addr",
                "properties": {
                    "city": { "type": "string", "title": "City" },
                    "zip": { "type": "string", "title": "Zip" }
                },
                "required": ["city", "zip"]
            }},
            "type": "object", "title": "Person",
            "properties": {
                "name": { "type": "string", "title": "Name" },
                "home": { "$ref": "#/$defs/Addr" }
            },
            "required": ["name", "home"]
        }
    }})
}

fn weather_tools() -> Value {
    json!([
        { "type": "function", "function": {
            "name": "get_weather", "description": "Current weather in a city.",
            "parameters": { "type": "object",
                "properties": { "city": { "type": "string" } }, "required": ["city"] } } },
        { "type": "function", "function": {
            "name": "get_time", "description": "Current time in a time zone.",
            "parameters": { "type": "object",
                "properties": { "tz": { "type": "string" } }, "required": ["tz"] } } }
    ])
}

/// The one choice's message and finish reason.
fn only_choice(body: &Value) -> (&Value, &str) {
    let choices = body["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 1, "{body}");
    (
        &choices[0]["message"],
        choices[0]["finish_reason"].as_str().unwrap_or(""),
    )
}

/// Each call's name and parsed arguments.
fn calls(message: &Value) -> Vec<(String, Value)> {
    message["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    assert_eq!(c["type"], "function", "{c}");
                    assert!(c["id"].as_str().is_some_and(|id| !id.is_empty()), "{c}");
                    let args = c["function"]["arguments"]
                        .as_str()
                        .expect("arguments string");
                    let args: Value = serde_json::from_str(args)
                        .unwrap_or_else(|e| panic!("arguments are not JSON ({e}): {args}"));
                    (c["function"]["name"].as_str().unwrap().to_string(), args)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Content holds no call text, whole or partial.
fn assert_no_call_text(message: &Value) {
    let content = message["content"].as_str().unwrap_or("");
    assert!(
        !content.contains("<tool_call>") && !content.contains("tool_call"),
        "call text left in content: {message}"
    );
}

/// Keys of an object, all of them among `allowed`.
fn assert_keys_within(value: &Value, allowed: &[&str]) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    for key in object.keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "invented key {key:?} in {value}"
        );
    }
}

#[tokio::test]
async fn nested_pydantic_schemas_work_forced_required_and_auto() {
    let Some(app) = app() else { return };
    let prompt = "Record Ann Weber, who lives at 3 Rue de Lyon in Paris, zip 75001.";
    for choice in [
        json!({ "type": "function", "function": { "name": "record_person" } }),
        json!("required"),
    ] {
        let (status, body) = post(
            &app,
            "/v1/chat/completions",
            json!({ "model": MODEL, "messages": user(prompt), "tools": [person_tool()],
                    "tool_choice": choice, "temperature": 0, "max_tokens": 120 }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{choice}: {body}");
        let (message, finish) = only_choice(&body);
        assert_eq!(finish, "tool_calls", "{body}");
        let calls = calls(message);
        assert_eq!(calls.len(), 1, "{body}");
        let (name, args) = &calls[0];
        assert_eq!(name, "record_person");
        // Valid under the nested schema, with no invented keys.
        assert_keys_within(args, &["name", "home"]);
        assert!(args["name"].is_string(), "{args}");
        assert_keys_within(&args["home"], &["city", "zip"]);
        assert!(
            args["home"]["city"].is_string() && args["home"]["zip"].is_string(),
            "{args}"
        );
        assert_no_call_text(message);
    }
    // Auto: the model may call or answer; either way the request is served.
    let (status, body) = post(
        &app,
        "/v1/chat/completions",
        json!({ "model": MODEL, "messages": user(prompt), "tools": [person_tool()],
                "tool_choice": "auto", "temperature": 0, "max_tokens": 60 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn required_and_named_calls_are_exactly_one_call() {
    let Some(app) = app() else { return };
    let prompts = [
        "What is the weather like in Paris right now?",
        "Tell me the weather in Berlin and in Rome, and the time in Tokyo.",
        "I need the time in Europe/Zurich.",
        "Check the weather for Lisbon please, then again for Lisbon.",
        "hello",
    ];
    for (i, prompt) in prompts.iter().enumerate() {
        let choice = match i % 2 {
            0 => json!("required"),
            _ => json!({ "type": "function", "function": { "name": "get_weather" } }),
        };
        let (status, body) = post(
            &app,
            "/v1/chat/completions",
            json!({ "model": MODEL, "messages": user(prompt), "tools": weather_tools(),
                    "tool_choice": choice, "temperature": 0.8, "seed": i, "max_tokens": 200 }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{prompt}: {body}");
        let (message, finish) = only_choice(&body);
        assert_eq!(finish, "tool_calls", "{prompt}: {body}");
        let calls = calls(message);
        assert_eq!(calls.len(), 1, "{prompt}: {body}");
        let (name, args) = &calls[0];
        match name.as_str() {
            "get_weather" => assert_keys_within(args, &["city"]),
            "get_time" => assert_keys_within(args, &["tz"]),
            other => panic!("unknown function {other}"),
        }
        assert!(message["content"].is_null(), "{body}");
    }

    // Streamed: one call, `tool_calls` at the end, no call text as content.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({ "model": MODEL, "messages": user(prompts[1]), "tools": weather_tools(),
                    "tool_choice": "required", "temperature": 0, "max_tokens": 200,
                    "stream": true })
            .to_string(),
        ))
        .unwrap();
    let (status, _, body) = call(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("an event stream");
    let mut content = String::new();
    let mut call_indexes = Vec::new();
    let mut finish = None;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(line).unwrap();
        let choice = &chunk["choices"][0];
        if let Some(c) = choice["delta"]["content"].as_str() {
            content.push_str(c);
        }
        for c in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if c.get("id").is_some() {
                call_indexes.push(c["index"].as_u64().unwrap());
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(call_indexes, [0], "{text}");
    assert_eq!(finish.as_deref(), Some("tool_calls"), "{text}");
    assert!(!content.contains("tool_call"), "{content}");

    // Asked for: several calls may come, never the same call twice.
    let (status, body) = post(
        &app,
        "/v1/chat/completions",
        json!({ "model": MODEL, "messages": user(prompts[3]), "tools": weather_tools(),
                "tool_choice": "required", "parallel_tool_calls": true, "temperature": 0,
                "max_tokens": 200 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (message, _) = only_choice(&body);
    let calls = calls(message);
    assert!(!calls.is_empty(), "{body}");
    for (i, a) in calls.iter().enumerate() {
        assert!(!calls[i + 1..].contains(a), "a repeated call: {body}");
    }
    assert_no_call_text(message);
}

#[tokio::test]
async fn a_forced_call_near_the_token_limit_closes_or_says_length() {
    let Some(app) = app() else { return };
    let tool = json!({ "type": "function", "function": {
        "name": "write_note",
        "parameters": { "type": "object",
            "properties": { "title": { "type": "string" }, "body": { "type": "string" } },
            "required": ["title", "body"] } } });
    // The smallest call takes about 35 tokens with SmolLM2's vocabulary.
    for max_tokens in [24, 32, 40, 48, 64] {
        let (status, body) = post(
            &app,
            "/v1/chat/completions",
            json!({ "model": MODEL, "tools": [tool],
                    "messages": user("Write a long note about the history of Paris, in detail."),
                    "tool_choice": { "type": "function", "function": { "name": "write_note" } },
                    "temperature": 0, "max_tokens": max_tokens }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (message, finish) = only_choice(&body);
        assert_no_call_text(message);
        let calls = calls(message);
        if max_tokens < 36 {
            // No room for a whole call: the answer says so, and shows no partial call.
            assert_eq!(finish, "length", "max_tokens {max_tokens}: {body}");
            continue;
        }
        // The arguments were closed in time: a whole call, not a cut one.
        assert_eq!(finish, "tool_calls", "max_tokens {max_tokens}: {body}");
        assert_eq!(calls.len(), 1, "{body}");
        assert_keys_within(&calls[0].1, &["title", "body"]);
    }
}

// --- Browsers and untrusted peers -------------------------------------------------------

/// A server still loading its models (the edge answers before any model is needed), with
/// API keys when `keys` and `verre.toml` text `config`. Returns the app and the key.
fn edge_app(keys: bool, config: &str) -> (Router, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    let key = add_key(&path, "test").unwrap();
    let keys = keys.then(|| ApiKeys::load(&path).unwrap());
    let gateway = Gateway::new(&GatewayConfig::parse(config, "verre.toml").unwrap()).unwrap();
    let state = AppState::new(keys).with_gateway(Arc::new(gateway));
    (router(Arc::new(state)), key, dir)
}

const APP_ORIGIN: &str = "https://app.example";
const CORS_CONFIG: &str = "[http]\ncors_origins = [\"https://app.example\"]\n";

fn build(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        r = r.header(*name, *value);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

/// The request as it arrives over a connection from `peer`.
fn from_peer(mut req: Request<Body>, peer: [u8; 4]) -> Request<Body> {
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((peer, 40000))));
    req
}

fn assert_error_code(body: &Value, code: &str) {
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

fn preflight(origin: &str) -> Request<Body> {
    build(
        "OPTIONS",
        "/v1/chat/completions",
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type, x-api-key, openai-organization, x-stainless-os, x-evil",
            ),
        ],
        "",
    )
}

#[tokio::test]
async fn cors_preflight_is_answered_before_the_key_for_listed_origins_only() {
    let (app, key, _dir) = edge_app(true, CORS_CONFIG);
    let (status, headers, _) = call(&app, preflight(APP_ORIGIN)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers["access-control-allow-origin"], APP_ORIGIN);
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    for h in [
        "authorization",
        "content-type",
        "x-api-key",
        "openai-organization",
        "x-stainless-os",
    ] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    assert!(!allowed.contains("x-evil"), "{allowed}");

    // The request itself still needs the key; its answer carries the origin.
    let get = |key: Option<&str>| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut headers = vec![("origin", APP_ORIGIN)];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        build("GET", "/v1/models", &headers, "")
    };
    let (status, headers, _) = call(&app, get(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["access-control-allow-origin"], APP_ORIGIN);
    let (status, headers, _) = call(&app, get(Some(&key))).await;
    assert_eq!(status, StatusCode::OK, "past the key");
    assert_eq!(headers["access-control-allow-origin"], APP_ORIGIN);

    // Another origin gets no CORS headers, and no preflight answer.
    let (status, headers, _) = call(&app, preflight("https://evil.example")).await;
    assert_ne!(status, StatusCode::NO_CONTENT);
    assert!(!headers.contains_key("access-control-allow-origin"));
    assert!(!headers.contains_key("access-control-allow-headers"));

    // None listed (the default): no CORS at all.
    let (app, _, _dir) = edge_app(true, "");
    let (status, headers, _) = call(&app, preflight(APP_ORIGIN)).await;
    assert_ne!(status, StatusCode::NO_CONTENT);
    assert!(!headers.contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn keys_are_taken_as_x_api_key_too() {
    let (app, key, _dir) = edge_app(true, "");
    let with = |value: &str| build("GET", "/v1/models", &[("x-api-key", value)], "");
    let (status, _, _) = call(&app, with(&key)).await;
    assert_eq!(status, StatusCode::OK, "past the key");
    let (status, _, body) = call(&app, with("vk-nope")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error_code(&body, "invalid_api_key");
}

#[tokio::test]
async fn method_not_allowed_has_an_openai_body() {
    let (app, _, _dir) = edge_app(false, "");
    for (method, uri, allow) in [
        ("GET", "/v1/chat/completions", "POST"),
        ("DELETE", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
    ] {
        let (status, headers, body) = call(&app, build(method, uri, &[], "")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert_error_code(&body, "method_not_allowed");
        assert!(
            headers["allow"].to_str().unwrap().contains(allow),
            "{headers:?}"
        );
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
}

#[tokio::test]
async fn metrics_need_a_key_from_other_machines() {
    let (app, key, _dir) = edge_app(true, "");
    let metrics = |auth: Option<String>, peer: [u8; 4]| {
        let mut headers = Vec::new();
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        from_peer(build("GET", "/metrics", &headers, ""), peer)
    };
    let (status, _, body) = call(&app, metrics(None, [192, 0, 2, 7])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error_code(&body, "invalid_api_key");
    let (status, _, _) = call(&app, metrics(Some("Bearer vk-nope".into()), [192, 0, 2, 7])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&app, metrics(Some(format!("Bearer {key}")), [192, 0, 2, 7])).await;
    assert_eq!(status, StatusCode::OK);
    // This machine reads them without a key.
    let (status, _, _) = call(&app, metrics(None, [127, 0, 0, 1])).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn loopback_without_keys_refuses_what_a_web_page_can_send() {
    let (app, _, _dir) = edge_app(false, "");
    let body = json!({ "model": MODEL, "messages": user("hi") }).to_string();
    let post_with = |headers: &[(&str, &str)]| {
        from_peer(
            build("POST", "/v1/chat/completions", headers, &body),
            [127, 0, 0, 1],
        )
    };
    // A cross-origin form or fetch without a preflight: text/plain, or no type at all.
    for headers in [
        vec![("host", "localhost:8080"), ("content-type", "text/plain")],
        vec![
            ("host", "127.0.0.1:8080"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        vec![("host", "localhost:8080")],
    ] {
        let (status, _, answer) = call(&app, post_with(&headers)).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{headers:?}");
        assert_error_code(&answer, "unsupported_media_type");
    }
    // DNS rebinding: the page's own name in Host.
    for host in ["evil.example:8080", "evil.example", "192.168.1.10:8080"] {
        let (status, _, answer) = call(
            &app,
            post_with(&[("host", host), ("content-type", "application/json")]),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
        assert_error_code(&answer, "host_not_allowed");
        let (status, _, _) = call(
            &app,
            from_peer(
                build("GET", "/v1/models", &[("host", host)], ""),
                [127, 0, 0, 1],
            ),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "GET with {host}");
    }
    // What a real client sends passes (to a server still loading).
    for host in ["localhost:8080", "127.0.0.1:8080", "[::1]:8080"] {
        let (status, _, _) = call(
            &app,
            post_with(&[
                ("host", host),
                ("content-type", "application/json; charset=utf-8"),
            ]),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{host}");
    }
    // With keys, the key is the guard: no Host or type check.
    let (app, key, _dir) = edge_app(true, "");
    let auth = format!("Bearer {key}");
    let (status, _, _) = call(
        &app,
        from_peer(
            build(
                "GET",
                "/v1/models",
                &[("host", "verre.example"), ("authorization", &auth)],
                "",
            ),
            [127, 0, 0, 1],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

// --- Answers ----------------------------------------------------------------------------

#[tokio::test]
async fn fingerprints_and_logprobs_that_match_the_text() {
    let Some(app) = app() else { return };
    let ask = json!({ "model": MODEL, "messages": user("Say hello."), "temperature": 0,
                      "max_tokens": 60, "logprobs": true });
    let (status, body) = post(&app, "/v1/chat/completions", ask.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fingerprint = body["system_fingerprint"].as_str().expect("a fingerprint");
    assert!(fingerprint.starts_with("smollm2-135m-"), "{fingerprint}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let bytes: Vec<u8> = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| {
            t["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
        })
        .collect();
    assert_eq!(String::from_utf8_lossy(&bytes), content, "{body}");

    // Streamed: the same fingerprint on every chunk, and no logprobs past the text.
    let mut streamed = ask;
    streamed["stream"] = json!(true);
    let req = build(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        &streamed.to_string(),
    );
    let (_, _, text) = call(&app, req).await;
    let mut bytes = Vec::new();
    let mut content = String::new();
    for line in text.as_str().unwrap().lines() {
        let Some(data) = line.strip_prefix("data: ").filter(|d| *d != "[DONE]") else {
            continue;
        };
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert_eq!(chunk["system_fingerprint"], fingerprint, "{chunk}");
        let choice = &chunk["choices"][0];
        content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        for t in choice["logprobs"]["content"]
            .as_array()
            .into_iter()
            .flatten()
        {
            bytes.extend(
                t["bytes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_u64().unwrap() as u8),
            );
        }
    }
    assert_eq!(String::from_utf8_lossy(&bytes), content);

    // Completions carry it too.
    let (_, body) = post(
        &app,
        "/v1/completions",
        json!({ "model": MODEL, "prompt": "Hello", "max_tokens": 2 }),
    )
    .await;
    assert_eq!(body["system_fingerprint"], fingerprint, "{body}");
}

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

#[tokio::test]
async fn embeddings_over_the_limit_are_refused_unless_truncation_is_asked_for() {
    let Some(embedder) = embedder() else { return };
    let limit = embedder.max_tokens();
    let model = EmbeddingModel::start("minilm-l6", embedder, 4).unwrap();
    let app = router(Arc::new(AppState::with_models(vec![], vec![model], None)));
    let long = "word ".repeat(limit * 2);
    let ids: Vec<u32> = vec![1000; limit + 1];
    for input in [json!(long), json!(["short", long]), json!(ids)] {
        let ask = json!({ "model": "minilm-l6", "input": input });
        let (status, body) = post(&app, "/v1/embeddings", ask.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_error_code(&body, "context_length_exceeded");
        assert_eq!(body["error"]["param"], "input");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&limit.to_string()) && message.contains("truncate"),
            "{message}"
        );

        let mut cut = ask;
        cut["truncate"] = json!(true);
        let (status, body) = post(&app, "/v1/embeddings", cut).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let last = body["data"].as_array().unwrap().len() - 1;
        assert!(body["data"][last]["embedding"].as_array().unwrap().len() > 100);
    }
    // Within the limit, nothing changes.
    let (status, _) = post(
        &app,
        "/v1/embeddings",
        json!({ "model": "minilm-l6", "input": "word ".repeat(limit / 2) }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

// --- Upstream answers ---------------------------------------------------------------------

/// An OpenAI-compatible upstream whose answers are larger than verre takes: 33 MiB of
/// content, whole or streamed.
async fn huge_upstream() -> SocketAddr {
    async fn answer(body: axum::body::Bytes) -> axum::response::Response {
        use axum::response::IntoResponse;
        let request: Value = serde_json::from_slice(&body).unwrap();
        let content = "x".repeat(33 << 20);
        if request["stream"] == json!(true) {
            let chunk = |text: &str| {
                format!(
                    "data: {}\n\n",
                    json!({ "choices": [{ "index": 0, "delta": { "content": text } }] })
                )
            };
            let events: Vec<Result<String, std::convert::Infallible>> = content
                .as_bytes()
                .chunks(1 << 20)
                .map(|piece| Ok(chunk(std::str::from_utf8(piece).unwrap())))
                .collect();
            return (
                [("content-type", "text/event-stream")],
                Body::from_stream(futures_util::stream::iter(events)),
            )
                .into_response();
        }
        axum::Json(
            json!({ "object": "chat.completion", "choices": [{ "index": 0,
            "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }] }),
        )
        .into_response()
    }
    let app = Router::new().route("/v1/chat/completions", axum::routing::post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[tokio::test]
async fn upstream_answers_are_read_up_to_32_mib() {
    let upstream = huge_upstream().await;
    let backend = |name: &str, pseudonymize: bool| {
        format!(
            "[[backend]]\nname = \"{name}\"\nkind = \"openai\"\nurl = \"http://{upstream}/v1\"\njurisdiction = \"EU\"\npseudonymize = {pseudonymize}\nmodels = [\"{name}\"]\n"
        )
    };
    let config = format!(
        "[policy]\nallow_jurisdictions = [\"EU\"]\n[gateway]\nhealth_check_interval_s = 0\n{}{}",
        backend("plain", false),
        backend("masked", true)
    );
    let gateway = Gateway::new(&GatewayConfig::parse(&config, "verre.toml").unwrap()).unwrap();
    let app = router(Arc::new(
        AppState::with_models(vec![], vec![], None).with_gateway(Arc::new(gateway)),
    ));
    for model in ["plain", "masked"] {
        let ask =
            json!({ "model": model, "messages": user("Write a lot to jean.dupont@example.fr.") });
        let (status, body) = post(&app, "/v1/chat/completions", ask.clone()).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{model}");
        assert_error_code(&body, "bad_gateway");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("32 MiB"),
            "{body}"
        );

        // Streamed: what arrived within the cap, then an error event, then the end.
        let mut streamed = ask;
        streamed["stream"] = json!(true);
        let req = build(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            &streamed.to_string(),
        );
        let response = app.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            bytes.len() <= (32 << 20) + 4096,
            "{model}: {} bytes",
            bytes.len()
        );
        let text = String::from_utf8_lossy(&bytes);
        let last = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .next_back()
            .unwrap();
        let last: Value = serde_json::from_str(last).unwrap();
        assert_error_code(&last, "bad_gateway");
    }
}
