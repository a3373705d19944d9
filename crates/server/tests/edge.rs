//! The `/v1` edge as clients meet it, in-process (no sockets):
//! - tool calls clients can rely on, on the embedded model from `VERRE_SMOLLM2_GGUF`:
//!   Pydantic-style schemas with `$defs`/`$ref`, exactly one call for `required` or a named
//!   function unless `parallel_tool_calls` is true, arguments closed near the token limit,
//!   and never a partial call left in `content`.
//!
//! Model tests are skipped without the model file locally and fail without it under CI.

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
fn app() -> Option<Router> {
    let served = ServedModel::start(MODEL, model()?, EngineOptions::default()).unwrap();
    Some(router(Arc::new(AppState::with_models(
        vec![served],
        vec![],
        None,
    ))))
}

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
