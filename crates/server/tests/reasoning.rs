//! Reasoning models through `/v1/chat/completions`, on the real engine: a scripted model
//! (tests/scripted) that says `<think>Let me think</think>Paris is nice`, with `<think>`
//! and `</think>` as tokens of its vocabulary, as Qwen3's and DeepSeek-R1's are.
//! - With a Qwen3-style template the thinking goes out as `reasoning_content` and
//!   `reasoning`, whole and streamed as its own deltas, and never in `content`;
//!   `reasoning_effort: "none"` (or `chat_template_kwargs.enable_thinking: false`) closes
//!   the block in the prompt, and the model answers without thinking.
//! - With a DeepSeek-R1-style template the prompt opens the block: the output starts
//!   inside it.
//! - The token limit inside the block: reasoning only, `finish_reason: length`.
//! - A template that does not think leaves the same output in `content`, as it is.
//! - `/v1/responses` turns the thinking into a `reasoning` item.

mod scripted;

use serde_json::{Value, json};

const MODEL: &str = "thinker";
const ADDED: &[&str] = &["<think>", "</think>"];
const SCRIPT: &[&str] = &[
    "<think>", "Let", "Ġme", "Ġthink", "</think>", "Paris", "Ġis", "Ġnice",
];

/// Qwen3's generation prompt: the block is closed in the prompt when thinking is off.
const QWEN3_STYLE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>{% endif %}{% endif %}";

/// DeepSeek-R1's generation prompt opens the block.
const R1_STYLE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n<think>{% endif %}";

const PLAIN: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn app(template: &str, dir: &std::path::Path) -> Option<axum::Router> {
    let vocab = scripted::smollm2()?;
    let path = scripted::scripted_model(&vocab, ADDED, SCRIPT, template, dir);
    Some(scripted::serve(&path, MODEL))
}

fn request(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me about Paris."}],
        "temperature": 0,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

async fn chat(app: &axum::Router, extra: Value) -> Value {
    let (status, text) = scripted::post(app, "/v1/chat/completions", &request(extra)).await;
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// A streamed answer: the reasoning deltas, the content deltas, and the finish reason.
async fn stream(app: &axum::Router, extra: Value) -> (Vec<String>, Vec<String>, Value) {
    let mut extra = extra;
    extra["stream"] = json!(true);
    let (status, text) = scripted::post(app, "/v1/chat/completions", &request(extra)).await;
    assert!(status.is_success(), "{status}: {text}");
    let (mut reasoning, mut content, mut finish) = (Vec::new(), Vec::new(), Value::Null);
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        if let Some(r) = delta["reasoning_content"].as_str() {
            assert_eq!(delta["reasoning"], delta["reasoning_content"], "{chunk}");
            reasoning.push(r.to_string());
        }
        if let Some(c) = delta["content"].as_str().filter(|c| !c.is_empty()) {
            content.push(c.to_string());
        }
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
    }
    (reasoning, content, finish)
}

#[tokio::test]
async fn thinking_goes_to_reasoning_content_whole_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = app(QWEN3_STYLE, dir.path()) else {
        return;
    };
    let answer = chat(&app, json!({})).await;
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["content"], "Paris is nice", "{answer}");
    assert_eq!(message["reasoning_content"], "Let me think", "{answer}");
    assert_eq!(message["reasoning"], "Let me think", "{answer}");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    // `<think>`, "Let", " me", " think", `</think>`.
    assert_eq!(
        answer["usage"]["completion_tokens_details"]["reasoning_tokens"],
        5
    );

    let (reasoning, content, finish) = stream(&app, json!({})).await;
    assert_eq!(reasoning.concat(), "Let me think");
    assert!(
        reasoning.len() > 1,
        "reasoning streams as it comes: {reasoning:?}"
    );
    assert_eq!(content.concat(), "Paris is nice");
    assert_eq!(finish, "stop");

    // The usage chunk counts the thinking too.
    let body = request(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (_, text) = scripted::post(&app, "/v1/chat/completions", &body).await;
    let usage: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|c| c["usage"].is_object())
        .map(|c| c["usage"].clone())
        .unwrap_or_else(|| panic!("no usage chunk in {text}"));
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 5);
}

#[tokio::test]
async fn thinking_switched_off_closes_the_block_in_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = app(QWEN3_STYLE, dir.path()) else {
        return;
    };
    for extra in [
        json!({"reasoning_effort": "none"}),
        json!({"chat_template_kwargs": {"enable_thinking": false}}),
    ] {
        let answer = chat(&app, extra.clone()).await;
        let message = &answer["choices"][0]["message"];
        assert_eq!(message["content"], "Paris is nice", "{extra}: {answer}");
        assert_eq!(
            message["reasoning_content"],
            Value::Null,
            "{extra}: {answer}"
        );
    }
    // Any other effort leaves thinking on.
    let answer = chat(&app, json!({"reasoning_effort": "low"})).await;
    assert_eq!(
        answer["choices"][0]["message"]["reasoning_content"],
        "Let me think"
    );
}

#[tokio::test]
async fn a_block_the_prompt_opened_is_reasoning_from_the_first_token() {
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = app(R1_STYLE, dir.path()) else {
        return;
    };
    let answer = chat(&app, json!({})).await;
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], "Let me think", "{answer}");
    assert_eq!(message["content"], "Paris is nice", "{answer}");
    let (reasoning, content, _) = stream(&app, json!({})).await;
    assert_eq!(
        (reasoning.concat(), content.concat()),
        ("Let me think".to_string(), "Paris is nice".to_string())
    );
}

#[tokio::test]
async fn the_token_limit_inside_the_thinking_leaves_reasoning_only() {
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = app(QWEN3_STYLE, dir.path()) else {
        return;
    };
    let answer = chat(&app, json!({"max_tokens": 3})).await;
    let choice = &answer["choices"][0];
    assert_eq!(choice["message"]["reasoning_content"], "Let me", "{answer}");
    assert_eq!(choice["message"]["content"], "", "{answer}");
    assert_eq!(choice["finish_reason"], "length");
    let (reasoning, content, finish) = stream(&app, json!({"max_tokens": 3})).await;
    assert_eq!(reasoning.concat(), "Let me");
    assert!(content.is_empty(), "{content:?}");
    assert_eq!(finish, "length");
}

#[tokio::test]
async fn a_template_that_does_not_think_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = app(PLAIN, dir.path()) else {
        return;
    };
    let answer = chat(&app, json!({})).await;
    let message = &answer["choices"][0]["message"];
    assert_eq!(
        message["content"], "<think>Let me think</think>Paris is nice",
        "{answer}"
    );
    assert!(message.get("reasoning_content").is_none(), "{answer}");
    assert!(message.get("reasoning").is_none(), "{answer}");
}

#[tokio::test]
async fn the_responses_api_answers_with_a_reasoning_item() {
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = app(QWEN3_STYLE, dir.path()) else {
        return;
    };
    let body =
        json!({"model": MODEL, "input": "Tell me about Paris.", "temperature": 0, "store": false});
    let (status, text) = scripted::post(&app, "/v1/responses", &body).await;
    assert!(status.is_success(), "{status}: {text}");
    let response: Value = serde_json::from_str(&text).unwrap();
    let output = response["output"].as_array().unwrap();
    assert_eq!(output[0]["type"], "reasoning", "{response}");
    assert_eq!(
        output[0]["content"][0]["text"], "Let me think",
        "{response}"
    );
    assert_eq!(output[1]["type"], "message", "{response}");
    assert_eq!(
        output[1]["content"][0]["text"], "Paris is nice",
        "{response}"
    );
    assert_eq!(
        response["usage"]["output_tokens_details"]["reasoning_tokens"],
        5
    );
}
