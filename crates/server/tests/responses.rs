//! The Responses API in-process (issue 19, item 1): plain text, `text.format` under
//! constrained decoding, a function call and its output through `previous_response_id`,
//! the typed stream events, what is kept and what is not, delete, background and cancel,
//! and erasure of a kept response. Needs the embedded default model from
//! `VERRE_SMOLLM2_GGUF` (skipped without it, except in CI).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use verre_engine::engine::EngineOptions;
use verre_server::{AppState, ServedModel, router};
use verre_store::Store;

mod common;
use common::{MODEL, app, model};

/// An app serving the model that keeps responses in `store`.
fn app_with_store(store: Store) -> Option<Router> {
    let served = ServedModel::start(MODEL, model()?, EngineOptions::default()).unwrap();
    let state = AppState::with_models(vec![served], vec![], None).with_store(store);
    Some(router(Arc::new(state)))
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn create(app: &Router, body: Value) -> Value {
    let (status, response) = call(app, "POST", "/v1/responses", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    response
}

/// The text of a response's message items.
fn text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap())
        .filter_map(|c| c["text"].as_str())
        .collect()
}

#[tokio::test]
async fn plain_text_is_a_message_item_and_is_kept() {
    let Some(app) = app() else { return };
    let response = create(
        &app,
        json!({
            "model": MODEL,
            "instructions": "Answer in one short sentence.",
            "input": "What is the capital of France?",
            "max_output_tokens": 24,
            "temperature": 0,
            "metadata": {"ticket": "42"},
        }),
    )
    .await;
    assert!(
        response["id"].as_str().unwrap().starts_with("resp_"),
        "{response}"
    );
    assert_eq!(response["object"], "response");
    assert!(response["created_at"].is_u64());
    assert!(
        matches!(
            response["status"].as_str(),
            Some("completed" | "incomplete")
        ),
        "{response}"
    );
    assert_eq!(response["model"], MODEL);
    assert_eq!(response["instructions"], "Answer in one short sentence.");
    assert_eq!(response["metadata"], json!({"ticket": "42"}));
    assert_eq!(response["store"], true);
    let message = &response["output"][0];
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["content"][0]["type"], "output_text");
    assert_eq!(message["content"][0]["annotations"], json!([]));
    assert!(!text(&response).is_empty(), "{response}");
    let usage = &response["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["output_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap())
    );
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 0);
    if response["status"] == "incomplete" {
        assert_eq!(
            response["incomplete_details"]["reason"],
            "max_output_tokens"
        );
    }

    let id = response["id"].as_str().unwrap();
    let (status, kept) = call(&app, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kept, response);
    let (status, items) = call(
        &app,
        "GET",
        &format!("/v1/responses/{id}/input_items"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{items}");
    assert_eq!(items["object"], "list");
    assert_eq!(items["data"][0]["role"], "user");
    assert_eq!(
        items["data"][0]["content"][0],
        json!({"type": "input_text", "text": "What is the capital of France?"})
    );
}

#[tokio::test]
async fn a_json_schema_format_yields_valid_json() {
    let Some(app) = app() else { return };
    let response = create(
        &app,
        json!({
            "model": MODEL,
            "input": "Is the sky blue? Answer as JSON.",
            "text": {"format": {
                "type": "json_schema",
                "name": "answer",
                "strict": true,
                "schema": {
                    "type": "object",
                    "properties": {"yes": {"type": "boolean"}},
                    "required": ["yes"],
                    "additionalProperties": false,
                },
            }},
            "max_output_tokens": 40,
        }),
    )
    .await;
    assert_eq!(response["status"], "completed", "{response}");
    assert_eq!(response["text"]["format"]["name"], "answer");
    let answer: Value = serde_json::from_str(&text(&response))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {response}"));
    assert!(answer["yes"].is_boolean(), "{answer}");
    assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
}

#[tokio::test]
async fn a_function_call_and_its_output_go_on_through_previous_response_id() {
    let Some(app) = app() else { return };
    let tools = json!([{
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": false,
        },
        "strict": true,
    }]);
    let first = create(
        &app,
        json!({
            "model": MODEL,
            "input": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": tools,
            "tool_choice": {"type": "function", "name": "get_weather"},
            "max_output_tokens": 60,
        }),
    )
    .await;
    assert_eq!(first["tools"], tools);
    let calls: Vec<&Value> = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .collect();
    assert_eq!(calls.len(), 1, "{first}");
    let call = calls[0];
    assert_eq!(call["name"], "get_weather");
    assert!(call["id"].as_str().unwrap().starts_with("fc_"));
    let call_id = call["call_id"].as_str().unwrap();
    assert!(!call_id.is_empty());
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].is_string(), "{arguments}");

    let second = create(
        &app,
        json!({
            "model": MODEL,
            "previous_response_id": first["id"],
            "input": [{"type": "function_call_output", "call_id": call_id, "output": "sunny, 24 C"}],
            "tools": tools,
            "max_output_tokens": 30,
        }),
    )
    .await;
    assert_eq!(second["previous_response_id"], first["id"]);
    assert!(
        matches!(second["status"].as_str(), Some("completed" | "incomplete")),
        "{second}"
    );
    // The conversation the second answered: the question, the call, its output.
    let id = second["id"].as_str().unwrap();
    let (_, items) = call_items(&app, id).await;
    let kinds: Vec<&str> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["message", "function_call", "function_call_output"],
        "{items}"
    );
    assert_eq!(items["data"][1]["call_id"], call_id);
}

async fn call_items(app: &Router, id: &str) -> (StatusCode, Value) {
    call(
        app,
        "GET",
        &format!("/v1/responses/{id}/input_items?order=asc"),
        None,
    )
    .await
}

/// `(event name, data)` of each server-sent event.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| e.contains("data:"))
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default()
                .to_string();
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or_default();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_stream_sends_the_typed_events_in_order() {
    let Some(app) = app() else { return };
    let (status, body) = call(
        &app,
        "POST",
        "/v1/responses",
        Some(json!({
            "model": MODEL,
            "input": "Say hello.",
            "stream": true,
            "max_output_tokens": 12,
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events = sse_events(body.as_str().unwrap());
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "the event name is its type");
        assert_eq!(data["sequence_number"], i, "{data}");
    }
    let kinds: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = kinds
        .iter()
        .filter(|k| **k == "response.output_text.delta")
        .count();
    assert!(deltas > 0, "{kinds:?}");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]);
    let last = *kinds.last().unwrap();
    assert!(
        matches!(last, "response.completed" | "response.incomplete"),
        "{kinds:?}"
    );
    expected.push(last);
    assert_eq!(kinds, expected);

    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    let done = &events[events.len() - 1].1["response"];
    assert_eq!(text(done), streamed);
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    assert!(
        done["usage"]["output_tokens"].as_u64().unwrap() > 0,
        "{done}"
    );
    // Kept as it ended.
    let id = done["id"].as_str().unwrap();
    let (status, kept) = call(&app, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&kept, done);
}

#[tokio::test]
async fn store_false_is_not_kept_and_delete_removes() {
    let Some(app) = app() else { return };
    let unkept = create(
        &app,
        json!({"model": MODEL, "input": "Hi", "store": false, "max_output_tokens": 4}),
    )
    .await;
    assert_eq!(unkept["store"], false);
    let id = unkept["id"].as_str().unwrap();
    let (status, e) = call(&app, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(e["error"]["code"], "not_found");
    let (status, e) = call(
        &app,
        "POST",
        "/v1/responses",
        Some(json!({"model": MODEL, "input": "And?", "previous_response_id": id})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(e["error"]["param"], "previous_response_id");

    let kept = create(
        &app,
        json!({"model": MODEL, "input": "Hi", "max_output_tokens": 4}),
    )
    .await;
    let id = kept["id"].as_str().unwrap();
    let (status, deleted) = call(&app, "DELETE", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        deleted,
        json!({"id": id, "object": "response", "deleted": true})
    );
    let (status, _) = call(&app, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, "DELETE", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_requests_get_openai_shaped_errors() {
    let Some(app) = app() else { return };
    let cases = [
        (
            json!({"model": MODEL, "input": "hi", "tools": [{"type": "file_search"}]}),
            StatusCode::BAD_REQUEST,
            Some("tools[0].type"),
        ),
        (
            json!({"model": "nope", "input": "hi"}),
            StatusCode::NOT_FOUND,
            Some("model"),
        ),
        (
            json!({"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}),
            StatusCode::BAD_REQUEST,
            Some("text.format"),
        ),
        (
            // Chat's context check, its `messages` named as this request's `input`.
            json!({"model": MODEL, "input": "hi", "max_output_tokens": 100000000}),
            StatusCode::BAD_REQUEST,
            Some("input"),
        ),
    ];
    for (body, status, param) in cases {
        let (got, e) = call(&app, "POST", "/v1/responses", Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {e}");
        assert_eq!(e["error"]["param"].as_str(), param, "{body}: {e}");
        assert!(e["error"]["message"].is_string(), "{e}");
    }
}

/// Read a response until `done` says it is, within a minute.
async fn wait_for(app: &Router, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (_, response) = call(app, "GET", &format!("/v1/responses/{id}"), None).await;
            if done(&response) {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the background response did not end")
}

#[tokio::test]
async fn a_background_response_runs_and_one_can_be_cancelled() {
    let Some(app) = app() else { return };
    let queued = create(
        &app,
        json!({"model": MODEL, "input": "Hi", "background": true, "max_output_tokens": 4}),
    )
    .await;
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["background"], true);
    let id = queued["id"].as_str().unwrap();
    let ended = wait_for(&app, id, |r| {
        !matches!(r["status"].as_str(), Some("queued" | "in_progress"))
    })
    .await;
    assert!(
        matches!(ended["status"].as_str(), Some("completed" | "incomplete")),
        "{ended}"
    );
    assert!(!text(&ended).is_empty(), "{ended}");

    // A long one, cancelled at once.
    let long = create(
        &app,
        json!({"model": MODEL, "input": "Tell a very long story.", "background": true, "max_output_tokens": 4000}),
    )
    .await;
    let id = long["id"].as_str().unwrap();
    let (status, e) = call(
        &app,
        "POST",
        "/v1/responses",
        Some(json!({"model": MODEL, "input": "And?", "previous_response_id": id})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "still running: {e}");
    assert_eq!(e["error"]["param"], "previous_response_id");
    let (status, cancelled) = call(&app, "POST", &format!("/v1/responses/{id}/cancel"), None).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let (_, kept) = call(&app, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(kept["status"], "cancelled");

    // Only background responses can be cancelled.
    let plain = create(
        &app,
        json!({"model": MODEL, "input": "Hi", "max_output_tokens": 2}),
    )
    .await;
    let id = plain["id"].as_str().unwrap();
    let (status, e) = call(&app, "POST", &format!("/v1/responses/{id}/cancel"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
}

#[tokio::test]
async fn a_kept_response_is_audited_and_erased_with_its_subject() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    let Some(app) = app_with_store(store.clone()) else {
        return;
    };
    let response = create(
        &app,
        json!({
            "model": MODEL,
            "input": "Write a greeting to jeanne.martin@example.fr.",
            "max_output_tokens": 8,
        }),
    )
    .await;
    let id = response["id"].as_str().unwrap();
    let (status, _) = call(&app, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let audit = store.audit_entries(0, 100).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "api.responses.create" && e.subject == format!("response:{id}")),
        "{audit:?}"
    );

    let subject = verre_store::erase::Subject::parse("jeanne.martin@example.fr").unwrap();
    let report = store.erase(&subject, "cli", false).await.unwrap();
    assert_eq!(report.rows.get("responses"), Some(&1), "{report:?}");
    assert!(report.residual.is_empty(), "{:?}", report.residual);
    let (status, _) = call(&app, "GET", &format!("/v1/responses/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_kept_response_is_its_api_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    let alice = verre_server::auth::add_key(&keys_file, "alice").unwrap();
    let bob = verre_server::auth::add_key(&keys_file, "bob").unwrap();
    let keys = verre_server::auth::ApiKeys::load(&keys_file).unwrap();
    let Some(model) = model() else { return };
    let served = ServedModel::start(MODEL, model, EngineOptions::default()).unwrap();
    let app = router(Arc::new(AppState::with_models(
        vec![served],
        vec![],
        Some(keys),
    )));
    let as_key = |method: &str, uri: &str, key: &str, body: Option<Value>| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .unwrap()
    };
    let send = |request: Request<Body>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    let body = json!({"model": MODEL, "input": "Hi", "max_output_tokens": 2});
    let (status, response) = send(as_key("POST", "/v1/responses", &alice, Some(body))).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let uri = format!("/v1/responses/{}", response["id"].as_str().unwrap());
    for method in ["GET", "DELETE"] {
        let (status, e) = send(as_key(method, &uri, &bob, None)).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{method} by another key: {e}"
        );
    }
    let continued =
        json!({"model": MODEL, "input": "And?", "previous_response_id": response["id"]});
    let (status, _) = send(as_key("POST", "/v1/responses", &bob, Some(continued))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, kept) = send(as_key("GET", &uri, &alice, None)).await;
    assert_eq!((status, &kept["id"]), (StatusCode::OK, &response["id"]));
}

/// A background response whose server stopped (a restart: its task is gone, its heartbeat
/// stale) is `failed` with an error when read, not `in_progress` for ever; one whose
/// heartbeat is recent (another server may be making it) is left as it is.
#[tokio::test]
async fn a_background_response_whose_server_stopped_fails_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    let Some(app) = app_with_store(store.clone()) else {
        return;
    };
    // As the stopped server left them: written, then no more heartbeats.
    let left = |id: &str| verre_store::StoredResponse {
        id: id.to_string(),
        api_key: String::new(),
        model: MODEL.to_string(),
        status: "in_progress".to_string(),
        created_at: verre_store::now_ms(),
        input: json!([{"type": "message", "role": "user", "content": "Hi"}]),
        body: json!({"id": id, "object": "response", "status": "in_progress", "background": true, "output": []}),
    };
    for id in ["resp_stopped", "resp_elsewhere"] {
        store.put_response(&left(id)).await.unwrap();
    }
    let long_ago = verre_store::now_ms() - 10 * 60 * 1000;
    store
        .touch_response("resp_stopped", long_ago)
        .await
        .unwrap();

    let (status, stopped) = call(&app, "GET", "/v1/responses/resp_stopped", None).await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    assert_eq!(stopped["status"], "failed", "{stopped}");
    assert_eq!(stopped["error"]["code"], "server_error", "{stopped}");
    assert!(
        stopped["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stopped")
    );
    // Kept so: read again straight from the store.
    let kept = store.response("resp_stopped").await.unwrap().unwrap();
    assert_eq!(
        (kept.status.as_str(), &kept.body["status"]),
        ("failed", &json!("failed"))
    );

    let (_, elsewhere) = call(&app, "GET", "/v1/responses/resp_elsewhere", None).await;
    assert_eq!(elsewhere["status"], "in_progress", "{elsewhere}");
    // A response that ended is not touched by a late heartbeat, nor failed.
    let (_, again) = call(&app, "GET", "/v1/responses/resp_stopped", None).await;
    assert_eq!(again["status"], "failed");
}
