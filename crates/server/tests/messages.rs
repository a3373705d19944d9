//! Anthropic's Messages API in-process, on the real engine: with SmolLM2 from
//! `VERRE_SMOLLM2_GGUF`, a text answer, the stream's events in order, `max_tokens` and
//! `stop_sequences` as stop reasons, a `tool_use` forced with `tool_choice: any` and the
//! `tool_result` round trip, `count_tokens`, and errors in Anthropic's shape; with the
//! scripted thinking model (tests/scripted), `thinking` blocks whole and streamed.

mod scripted;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use verre_server::auth::{ApiKeys, add_key};
use verre_server::{AppState, router};

mod common;
use common::{MODEL, app};

/// POST to `/v1/messages` with the headers Anthropic's SDK sends.
async fn post(app: &Router, uri: &str, body: &Value, key: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01");
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let request = request.body(Body::from(body.to_string())).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn message(app: &Router, body: Value) -> Value {
    let (status, text) = post(app, "/v1/messages", &body, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn hi(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "max_tokens": 24,
        "temperature": 0,
        "system": "You are a helpful assistant.",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// A stream's events (name, data), each checked to say its own type.
async fn events(app: &Router, body: Value) -> Vec<(String, Value)> {
    let (status, text) = post(app, "/v1/messages", &body, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str::<Value>(d).unwrap());
            }
        }
        let (name, data) = (name.expect("event name"), data.expect("event data"));
        assert_eq!(data["type"], name.as_str(), "{block}");
        events.push((name, data));
    }
    events
}

/// The text of a message's text blocks.
fn text_of(message: &Value) -> String {
    message["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "text")
        .map(|b| b["text"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_text_message() {
    let Some(app) = app() else { return };
    let m = message(&app, hi(json!({}))).await;
    assert_eq!(
        (m["type"].as_str(), m["role"].as_str()),
        (Some("message"), Some("assistant"))
    );
    assert!(m["id"].as_str().unwrap().starts_with("msg_"), "{m}");
    assert_eq!(m["model"], MODEL);
    assert_eq!(m["content"][0]["type"], "text", "{m}");
    assert!(!text_of(&m).is_empty(), "{m}");
    assert!(
        matches!(m["stop_reason"].as_str(), Some("end_turn" | "max_tokens")),
        "{m}"
    );
    assert_eq!(m["stop_sequence"], Value::Null);
    assert!(m["usage"]["input_tokens"].as_u64().unwrap() > 10, "{m}");
    assert!(m["usage"]["output_tokens"].as_u64().unwrap() > 0, "{m}");
    // A plain string system prompt and one of text blocks render the same.
    let blocks = message(
        &app,
        hi(json!({"system": [{"type": "text", "text": "You are a helpful assistant."}]})),
    )
    .await;
    assert_eq!(text_of(&blocks), text_of(&m));
}

#[tokio::test]
async fn a_stream_sends_its_events_in_order() {
    let Some(app) = app() else { return };
    let whole = message(&app, hi(json!({}))).await;
    let events = events(&app, hi(json!({"stream": true}))).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "ping", "content_block_start"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(
        names[3..names.len() - 3]
            .iter()
            .all(|n| *n == "content_block_delta"),
        "{names:?}"
    );
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["content"], json!([]));
    assert_eq!(
        events[2].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, text_of(&whole));
    let delta = &events[names.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], whole["stop_reason"]);
    assert_eq!(delta["usage"], whole["usage"]);
}

#[tokio::test]
async fn max_tokens_and_stop_sequences_are_stop_reasons() {
    let Some(app) = app() else { return };
    let m = message(&app, hi(json!({"max_tokens": 3}))).await;
    assert_eq!(m["stop_reason"], "max_tokens", "{m}");
    assert_eq!(m["usage"]["output_tokens"], 3);

    // Stop at a word the model says (greedy: it says the same again).
    let whole = text_of(&message(&app, hi(json!({}))).await);
    let word = whole
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("two words in {whole:?}"))
        .to_string();
    let stopped = message(&app, hi(json!({"stop_sequences": ["NEVER SAID", word]}))).await;
    assert_eq!(stopped["stop_reason"], "stop_sequence", "{stopped}");
    assert_eq!(stopped["stop_sequence"], word.as_str());
    assert_eq!(text_of(&stopped), whole[..whole.find(&word).unwrap()]);
    let events = events(&app, hi(json!({"stop_sequences": [word], "stream": true}))).await;
    let delta = &events[events.len() - 2].1["delta"];
    assert_eq!(delta["stop_reason"], "stop_sequence");
    assert_eq!(delta["stop_sequence"], word.as_str());
}

fn weather_tools() -> Value {
    json!({
        "tools": [{
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }],
        "tool_choice": {"type": "any"},
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    })
}

#[tokio::test]
async fn a_forced_tool_use_and_its_result_round_trip() {
    let Some(app) = app() else { return };
    let m = message(&app, hi(weather_tools())).await;
    assert_eq!(m["stop_reason"], "tool_use", "{m}");
    let call = m["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap_or_else(|| panic!("no tool_use in {m}"))
        .clone();
    assert!(call["id"].as_str().unwrap().starts_with("toolu_"), "{call}");
    assert_eq!(call["name"], "get_weather");
    assert!(call["input"]["city"].is_string(), "{call}");

    // The call and its result go back; the model answers in text.
    let mut next = hi(json!({
        "tools": weather_tools()["tools"],
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": m["content"]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call["id"], "content": "18 degrees and sunny"}
            ]}
        ]
    }));
    next["max_tokens"] = json!(16);
    let answer = message(&app, next).await;
    assert!(
        matches!(
            answer["stop_reason"].as_str(),
            Some("end_turn" | "max_tokens" | "tool_use")
        ),
        "{answer}"
    );
    assert!(
        answer["usage"]["input_tokens"].as_u64().unwrap()
            > m["usage"]["input_tokens"].as_u64().unwrap()
    );

    // Streamed: a tool_use block whose input arrives as JSON deltas.
    let mut streamed = hi(weather_tools());
    streamed["stream"] = json!(true);
    let events = events(&app, streamed).await;
    let start = events
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .unwrap_or_else(|| panic!("no tool_use block in {events:?}"));
    assert_eq!(start.1["content_block"]["name"], "get_weather");
    let index = &start.1["index"];
    let json: String = events
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && &d["index"] == index)
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_string())
        .collect();
    let input: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(input, call["input"]);
    assert_eq!(
        events[events.len() - 2].1["delta"]["stop_reason"],
        "tool_use"
    );
}

#[tokio::test]
async fn count_tokens_counts_the_prompt_as_served() {
    let Some(app) = app() else { return };
    let m = message(&app, hi(json!({}))).await;
    let mut body = hi(json!({}));
    body.as_object_mut().unwrap().remove("max_tokens");
    let (status, text) = post(&app, "/v1/messages/count_tokens", &body, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let count: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(count["input_tokens"], m["usage"]["input_tokens"]);
}

/// `{"type": "error", "error": {"type": kind, "message"}}`.
fn assert_anthropic_error(text: &str, kind: &str) -> String {
    let body: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body["type"], "error", "{text}");
    assert_eq!(body["error"]["type"], kind, "{text}");
    body["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn errors_take_anthropics_shape() {
    // Refused before any model is needed.
    let loading = router(Arc::new(AppState::new(None)));
    let mut no_max = hi(json!({}));
    no_max.as_object_mut().unwrap().remove("max_tokens");
    for (body, says) in [
        (no_max, "max_tokens"),
        (
            hi(json!({"messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
            ]}]})),
            "image",
        ),
        (
            hi(json!({"tool_choice": {"type": "sometimes"}})),
            "tool_choice",
        ),
    ] {
        let (status, text) = post(&loading, "/v1/messages", &body, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let message = assert_anthropic_error(&text, "invalid_request_error");
        assert!(message.contains(says), "{message}");
    }
    let request = Request::builder()
        .method("POST")
        .uri("/v1/messages")
        .header("content-type", "application/json")
        .body(Body::from("{\"model\": "))
        .unwrap();
    let response = loading.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_anthropic_error(&String::from_utf8_lossy(&bytes), "invalid_request_error");

    // The API keys answer in Anthropic's shape on this path.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    let key = add_key(&path, "test").unwrap();
    let guarded = router(Arc::new(AppState::new(Some(ApiKeys::load(&path).unwrap()))));
    let (status, text) = post(&guarded, "/v1/messages", &hi(json!({})), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_anthropic_error(&text, "authentication_error");
    let (status, text) = post(&guarded, "/v1/messages", &hi(json!({})), Some(&key)).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the key passes: {text}"
    );
    assert_anthropic_error(&text, "overloaded_error");

    // From the chat path: an unknown model, a prompt longer than the context.
    let Some(app) = app() else { return };
    let (status, text) = post(&app, "/v1/messages", &hi(json!({"model": "nope"})), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_anthropic_error(&text, "not_found_error");
    let (status, text) = post(
        &app,
        "/v1/messages",
        &hi(json!({"max_tokens": 1_000_000})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = assert_anthropic_error(&text, "invalid_request_error");
    assert!(message.contains("context length"), "{message}");
}

const THINKING_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>{% endif %}{% endif %}";

#[tokio::test]
async fn a_thinking_model_answers_with_thinking_blocks() {
    let Some(vocab) = scripted::smollm2() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = scripted::scripted_model(
        &vocab,
        &["<think>", "</think>"],
        &[
            "<think>", "Let", "Ġme", "Ġthink", "</think>", "Paris", "Ġis", "Ġnice",
        ],
        THINKING_TEMPLATE,
        dir.path(),
    );
    let app = scripted::serve(&path, MODEL);
    let m = message(&app, hi(json!({}))).await;
    assert_eq!(
        m["content"],
        json!([
            {"type": "thinking", "thinking": "Let me think", "signature": ""},
            {"type": "text", "text": "Paris is nice"}
        ]),
        "{m}"
    );
    assert_eq!(m["stop_reason"], "end_turn");

    let off = message(&app, hi(json!({"thinking": {"type": "disabled"}}))).await;
    assert_eq!(
        off["content"],
        json!([{"type": "text", "text": "Paris is nice"}]),
        "{off}"
    );

    let events = events(
        &app,
        hi(json!({"stream": true, "thinking": {"type": "enabled", "budget_tokens": 1024}})),
    )
    .await;
    let blocks: Vec<(String, String)> = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            let delta = &d["delta"];
            let kind = delta["type"].as_str().unwrap().to_string();
            let text = delta["thinking"]
                .as_str()
                .or(delta["text"].as_str())
                .unwrap()
                .to_string();
            (kind, text)
        })
        .collect();
    let thinking: String = blocks
        .iter()
        .filter(|(k, _)| k == "thinking_delta")
        .map(|(_, t)| t.as_str())
        .collect();
    let text: String = blocks
        .iter()
        .filter(|(k, _)| k == "text_delta")
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(
        (thinking.as_str(), text.as_str()),
        ("Let me think", "Paris is nice")
    );
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| &d["content_block"]["type"])
        .collect();
    assert_eq!(starts, [&json!("thinking"), &json!("text")]);
}
