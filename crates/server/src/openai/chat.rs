//! `POST /v1/chat/completions`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use verre_engine::engine::{EngineEvent, Usage};

use super::error::ApiError;
use super::generation::{self, ChunkWriter, Outcome, ResponseMeta, finish_reason, usage_json};
use super::logprobs;
use super::request::{ChatRequest, ToolChoice};
use super::structured;
use super::tools::{self, ToolCallParser, ToolDelta, ToolFormat};
use crate::metrics::RequestTimer;
use crate::state::{AppState, ServedModel};
use verre_engine::tokenizer::Tokenizer;
use verre_engine::{FinishReason, GrammarSpec, Message};

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = ChatRequest::parse(&body)?;
    let served = state.model(&req.model)?;
    let tool_format = ToolFormat::for_model(&served.model);
    let (messages, tools_value) =
        tools::prepare_prompt(&served.model, &req.messages, &req.tools, &req.tool_choice);
    let prompt_ids = render_prompt(served.clone(), messages, tools_value).await?;
    // A required call is constrained by the tools' schemas; otherwise the response format
    // (if any) constrains the answer.
    let (spec, param) = match tools::call_grammar(
        tool_format,
        &req.tools,
        &req.tool_choice,
        req.parallel_tool_calls,
    ) {
        Some(lark) => (Some(GrammarSpec::ToolCalls(lark)), "tools"),
        None => (
            structured::response_format_spec(&req.response_format),
            "response_format",
        ),
    };
    let grammar = structured::compile(&served.model, spec, param).await?;
    let parse_tools =
        (!req.tools.is_empty() && req.tool_choice != ToolChoice::None).then_some(CallReading {
            format: tool_format,
            constrained: param == "tools",
        });
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
        grammar,
    ))?;
    let n = req.params.n;
    let timer = RequestTimer::start(served.latency.clone(), n);
    let events = generation::merge(vec![stream]);
    let meta = ResponseMeta::new("chatcmpl", &req.model, &served);
    if let Some(options) = req.params.stream {
        let writer = ChatChunks {
            served,
            meta,
            n,
            logprobs: req.logprobs,
            include_usage: options.include_usage,
            parsers: parse_tools
                .map(|r| (0..n).map(|_| r.parser()).collect())
                .unwrap_or_default(),
        };
        return Ok(generation::sse(events, writer, 1, n, timer));
    }
    let outcome = generation::collect(events, 1, n, timer).await?;
    Ok(Json(chat_response(
        &served,
        &meta,
        req.logprobs,
        parse_tools,
        outcome,
    ))
    .into_response())
}

/// How long a chat template may take to render before the request fails. The template's
/// fuel cap bounds its work; this bounds the time of what a step can do that fuel does
/// not see (a huge string built in one step).
const TEMPLATE_TIME_LIMIT: Duration = Duration::from_secs(5);

/// The prompt's token ids. The template comes from the model file — untrusted input — so
/// it renders on a blocking thread, not on the async runtime's workers, and within a time
/// limit.
async fn render_prompt(
    served: Arc<ServedModel>,
    messages: Vec<Message>,
    tools: Option<Value>,
) -> Result<Vec<u32>, ApiError> {
    let render = tokio::task::spawn_blocking(move || {
        served
            .model
            .chat_prompt_with_tools(&messages, tools.as_ref())
    });
    match tokio::time::timeout(TEMPLATE_TIME_LIMIT, render).await {
        Ok(Ok(Ok(ids))) => Ok(ids),
        Ok(Ok(Err(e))) => Err(ApiError::invalid("messages", format!("{e:#}"))),
        Ok(Err(e)) => Err(ApiError::internal(format!(
            "rendering the chat template: {e}"
        ))),
        Err(_) => Err(ApiError::invalid(
            "messages",
            format!(
                "rendering the model's chat template took more than {} seconds; the template is broken or hostile",
                TEMPLATE_TIME_LIMIT.as_secs()
            ),
        )),
    }
}

/// How tool calls are read from a request's output.
#[derive(Debug, Clone, Copy)]
struct CallReading {
    format: ToolFormat,
    /// The calls were constrained (`required` or a named function): a repeated call is
    /// dropped.
    constrained: bool,
}

impl CallReading {
    fn parser(self) -> ToolCallParser {
        let parser = ToolCallParser::new(self.format);
        if self.constrained {
            parser.distinct()
        } else {
            parser
        }
    }
}

/// A choice's text split into content and tool calls.
fn split_tool_calls(reading: CallReading, c: &generation::ChoiceOutput) -> (String, Vec<Value>) {
    let mut parser = reading.parser();
    let mut deltas: Vec<ToolDelta> = c
        .pieces
        .iter()
        .flat_map(|(token, text)| parser.push(*token, text))
        .collect();
    deltas.extend(parser.finish(c.finish == Some(FinishReason::Length)));
    let mut content = String::new();
    let mut calls = Vec::new();
    for d in deltas {
        match d {
            ToolDelta::Content(t) => content.push_str(&t),
            ToolDelta::Call(call) => calls.push(call.to_json()),
        }
    }
    (content, calls)
}

/// The end-of-generation token that closed the answer (`<|im_end|>`): it is not in the
/// text, so it is not in the log-probabilities either.
fn is_unseen_end(tokenizer: &Tokenizer, token: u32, text: &str) -> bool {
    text.is_empty() && tokenizer.eog_ids().contains(&token)
}

/// OpenAI's finish reason: `tool_calls` when the model stopped after calling.
fn chat_finish_reason(reason: Option<FinishReason>, calls: usize) -> Value {
    match reason {
        Some(FinishReason::Stop) if calls > 0 => "tool_calls".into(),
        other => finish_reason(other),
    }
}

fn chat_response(
    served: &ServedModel,
    meta: &ResponseMeta,
    logprobs: bool,
    tools: Option<CallReading>,
    out: Outcome,
) -> Value {
    let choices: Vec<Value> = out
        .choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let logprobs = logprobs.then(|| {
                let tokenizer = &served.model.tokenizer;
                let content: Vec<Value> = c
                    .tokens
                    .iter()
                    .zip(&c.pieces)
                    .filter(|(_, (token, text))| !is_unseen_end(tokenizer, *token, text))
                    .map(|(s, _)| logprobs::chat_entry(tokenizer, s))
                    .collect();
                json!({ "content": content })
            });
            let (content, calls) = match tools {
                Some(reading) => split_tool_calls(reading, &c),
                None => (c.text.clone(), Vec::new()),
            };
            let mut message = json!({ "role": "assistant", "content": content });
            if !calls.is_empty() {
                if content.trim().is_empty() {
                    message["content"] = Value::Null;
                }
                message["tool_calls"] = Value::Array(calls.clone());
            }
            json!({
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": chat_finish_reason(c.finish, calls.len()),
            })
        })
        .collect();
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.system_fingerprint,
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
    /// One per choice when tool calls are parsed from the output.
    parsers: Vec<ToolCallParser>,
}

impl ChatChunks {
    /// Chunks for what a choice's tool-call parser let out.
    fn tool_chunks(&self, index: usize, deltas: Vec<ToolDelta>, calls_before: usize) -> Vec<Value> {
        let mut call_index = calls_before;
        let mut chunks = Vec::new();
        for d in deltas {
            match d {
                ToolDelta::Content(text) => chunks.push(self.chunk(vec![json!({
                    "index": index,
                    "delta": { "content": text },
                    "logprobs": null,
                    "finish_reason": null,
                })])),
                ToolDelta::Call(call) => {
                    // As OpenAI streams a call: id and name first, then the arguments.
                    chunks.push(self.chunk(vec![json!({
                        "index": index,
                        "delta": { "tool_calls": [{
                            "index": call_index,
                            "id": call.id,
                            "type": "function",
                            "function": { "name": call.name, "arguments": "" },
                        }]},
                        "logprobs": null,
                        "finish_reason": null,
                    })]));
                    chunks.push(self.chunk(vec![json!({
                        "index": index,
                        "delta": { "tool_calls": [{
                            "index": call_index,
                            "function": { "arguments": call.arguments },
                        }]},
                        "logprobs": null,
                        "finish_reason": null,
                    })]));
                    call_index += 1;
                }
            }
        }
        chunks
    }

    fn chunk(&self, choices: Vec<Value>) -> Value {
        let mut chunk = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": self.meta.system_fingerprint,
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
        if !self.parsers.is_empty() {
            return self.tool_event(event);
        }
        let choice = match event {
            EngineEvent::Token {
                index,
                sampled,
                text,
            } => {
                let tokenizer = &self.served.model.tokenizer;
                if text.is_empty()
                    && (!self.logprobs || is_unseen_end(tokenizer, sampled.token, &text))
                {
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
        self.usage_chunk(usage)
    }
}

impl ChatChunks {
    /// An event of a request whose output may hold tool calls.
    fn tool_event(&mut self, event: EngineEvent) -> Vec<Value> {
        match event {
            EngineEvent::Token {
                index,
                sampled,
                text,
            } => {
                let before = self.parsers[index].calls();
                let deltas = self.parsers[index].push(sampled.token, &text);
                self.tool_chunks(index, deltas, before)
            }
            EngineEvent::Finished { index, reason, .. } => {
                let before = self.parsers[index].calls();
                let deltas = self.parsers[index].finish(reason == FinishReason::Length);
                let mut chunks = self.tool_chunks(index, deltas, before);
                let calls = self.parsers[index].calls();
                chunks.push(self.chunk(vec![json!({
                    "index": index,
                    "delta": {},
                    "logprobs": null,
                    "finish_reason": chat_finish_reason(Some(reason), calls),
                })]));
                chunks
            }
            _ => Vec::new(),
        }
    }

    fn usage_chunk(&mut self, usage: Usage) -> Option<Value> {
        self.include_usage.then(|| {
            let mut chunk = self.chunk(Vec::new());
            chunk["usage"] = usage_json(usage);
            chunk
        })
    }
}
