//! `POST /v1/chat/completions`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use verre_engine::engine::{EngineEvent, Usage};

use super::error::ApiError;
use super::generation::{self, ChunkWriter, Outcome, ResponseMeta, finish_reason, usage_json};
use super::logprobs;
use super::request::ChatRequest;
use crate::metrics::RequestTimer;
use crate::state::{AppState, ServedModel};

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = ChatRequest::parse(&body)?;
    let served = state.model(&req.model)?;
    let prompt_ids = served
        .model
        .chat_prompt(&req.messages)
        .map_err(|e| ApiError::invalid("messages", format!("{e:#}")))?;
    let max_tokens = generation::max_tokens(
        req.params.max_tokens,
        None,
        prompt_ids.len(),
        served.model.info().context_length,
        "messages",
    )?;
    let stream = served.engine.submit(generation::engine_request(
        prompt_ids,
        max_tokens,
        &req.params,
        false,
    ))?;
    let n = req.params.n;
    let timer = RequestTimer::start(served.latency.clone(), n);
    let events = generation::merge(vec![stream]);
    let meta = ResponseMeta::new("chatcmpl", &req.model);
    if let Some(options) = req.params.stream {
        let writer = ChatChunks {
            served,
            meta,
            n,
            logprobs: req.logprobs,
            include_usage: options.include_usage,
        };
        return Ok(generation::sse(events, writer, 1, n, timer));
    }
    let outcome = generation::collect(events, 1, n, timer).await?;
    Ok(Json(chat_response(&served, &meta, req.logprobs, outcome)).into_response())
}

fn chat_response(served: &ServedModel, meta: &ResponseMeta, logprobs: bool, out: Outcome) -> Value {
    let choices: Vec<Value> = out
        .choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let logprobs = logprobs.then(|| {
                let content: Vec<Value> = c
                    .tokens
                    .iter()
                    .map(|s| logprobs::chat_entry(&served.model.tokenizer, s))
                    .collect();
                json!({ "content": content })
            });
            json!({
                "index": index,
                "message": { "role": "assistant", "content": c.text },
                "logprobs": logprobs,
                "finish_reason": finish_reason(c.finish),
            })
        })
        .collect();
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage_json(out.usage),
    })
}

/// The chunks of a streamed chat completion.
struct ChatChunks {
    served: Arc<ServedModel>,
    meta: ResponseMeta,
    n: usize,
    logprobs: bool,
    include_usage: bool,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<Value>) -> Value {
        let mut chunk = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }
}

impl ChunkWriter for ChatChunks {
    fn start(&mut self) -> Vec<Value> {
        (0..self.n)
            .map(|index| {
                self.chunk(vec![json!({
                    "index": index,
                    "delta": { "role": "assistant", "content": "" },
                    "logprobs": null,
                    "finish_reason": null,
                })])
            })
            .collect()
    }

    fn event(&mut self, _prompt: usize, event: EngineEvent) -> Vec<Value> {
        let choice = match event {
            EngineEvent::Token {
                index,
                sampled,
                text,
            } => {
                if text.is_empty() && !self.logprobs {
                    return Vec::new();
                }
                let logprobs = self.logprobs.then(|| {
                    let entry = logprobs::chat_entry(&self.served.model.tokenizer, &sampled);
                    json!({ "content": [entry] })
                });
                json!({
                    "index": index,
                    "delta": { "content": text },
                    "logprobs": logprobs,
                    "finish_reason": null,
                })
            }
            EngineEvent::Finished { index, reason, .. } => json!({
                "index": index,
                "delta": {},
                "logprobs": null,
                "finish_reason": reason.as_str(),
            }),
            _ => return Vec::new(),
        };
        vec![self.chunk(vec![choice])]
    }

    fn usage(&mut self, usage: Usage) -> Option<Value> {
        self.include_usage.then(|| {
            let mut chunk = self.chunk(Vec::new());
            chunk["usage"] = usage_json(usage);
            chunk
        })
    }
}
