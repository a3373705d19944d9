//! `POST /v1/completions`: the legacy text completion API.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use verre_engine::engine::{EngineEvent, Usage};

use super::error::ApiError;
use super::generation::{self, ChunkWriter, Outcome, ResponseMeta, finish_reason, usage_json};
use super::logprobs::CompletionLogprobs;
use super::request::{CompletionRequest, Prompt};
use super::structured;
use crate::metrics::RequestTimer;
use crate::state::{AppState, ServedModel};

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;

/// A prompt ready for the engine, with the text that `echo` gives back.
struct PromptInput {
    ids: Vec<u32>,
    text: String,
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = CompletionRequest::parse(&body)?;
    let served = state.model(&req.model)?;
    let prompts = req
        .prompts
        .iter()
        .map(|p| prompt_input(&served, p))
        .collect::<Result<Vec<_>, _>>()?;
    let prompt_logprobs = req.echo && req.logprobs.is_some();
    let grammar = structured::compile(
        &served.model,
        structured::response_format_spec(&req.response_format),
        "response_format",
    )
    .await?;
    let context_length = served.model.info().context_length;
    let mut streams = Vec::with_capacity(prompts.len());
    for p in &prompts {
        let max_tokens = generation::max_tokens(
            req.params.max_tokens,
            Some(DEFAULT_MAX_TOKENS),
            p.ids.len(),
            context_length,
            "prompt",
        )?;
        let request = generation::engine_request(
            p.ids.clone(),
            max_tokens,
            &req.params,
            prompt_logprobs,
            grammar.clone(),
        );
        // A refusal drops the streams already submitted, which cancels them.
        streams.push(served.engine.submit(request)?);
    }
    let n = req.params.n;
    let timer = RequestTimer::start(served.latency.clone(), prompts.len() * n);
    let events = generation::merge(streams);
    let meta = ResponseMeta::new("cmpl", &req.model, &served);
    if let Some(options) = req.params.stream {
        let writer = CompletionChunks {
            logprobs: vec![CompletionLogprobs::default(); prompts.len() * n],
            served,
            meta,
            n,
            echo: req.echo,
            with_logprobs: req.logprobs.is_some(),
            include_usage: options.include_usage,
            prompts,
        };
        let count = writer.prompts.len();
        return Ok(generation::sse(events, writer, count, n, timer));
    }
    let outcome = generation::collect(events, prompts.len(), n, timer).await?;
    Ok(Json(completion_response(&served, &meta, &req, &prompts, outcome)).into_response())
}

fn prompt_input(served: &ServedModel, prompt: &Prompt) -> Result<PromptInput, ApiError> {
    let bad = |e: anyhow::Error| ApiError::invalid("prompt", format!("{e:#}"));
    match prompt {
        Prompt::Text(text) => Ok(PromptInput {
            ids: served.model.encode_prompt(text).map_err(bad)?,
            text: text.clone(),
        }),
        Prompt::Tokens(ids) => {
            let vocab = served.model.info().vocab_size;
            if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("token id {t} is outside the vocabulary (0..{vocab})"),
                ));
            }
            Ok(PromptInput {
                text: served.model.tokenizer.decode(ids, false).map_err(bad)?,
                ids: ids.clone(),
            })
        }
    }
}

fn completion_response(
    served: &ServedModel,
    meta: &ResponseMeta,
    req: &CompletionRequest,
    prompts: &[PromptInput],
    out: Outcome,
) -> Value {
    let tokenizer = &served.model.tokenizer;
    let n = req.params.n;
    let choices: Vec<Value> = out
        .choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let p = index / n;
            let mut text = if req.echo {
                prompts[p].text.clone()
            } else {
                String::new()
            };
            text.push_str(&c.text);
            let logprobs = req.logprobs.map(|_| {
                let mut lp = CompletionLogprobs::default();
                if let (true, Some(prompt_lps)) = (req.echo, &out.prompt_logprobs[p]) {
                    for (&id, s) in prompts[p].ids.iter().zip(prompt_lps) {
                        lp.push(tokenizer, id, s.as_ref());
                    }
                }
                for s in &c.tokens {
                    lp.push(tokenizer, s.token, Some(s));
                }
                lp.take()
            });
            json!({
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason(c.finish),
            })
        })
        .collect();
    json!({
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.system_fingerprint,
        "choices": choices,
        "usage": usage_json(out.usage),
    })
}

/// The chunks of a streamed completion.
struct CompletionChunks {
    served: Arc<ServedModel>,
    meta: ResponseMeta,
    n: usize,
    prompts: Vec<PromptInput>,
    echo: bool,
    with_logprobs: bool,
    include_usage: bool,
    /// Per choice: offsets keep counting across chunks.
    logprobs: Vec<CompletionLogprobs>,
}

impl CompletionChunks {
    fn chunk(&self, index: usize, text: &str, logprobs: Option<Value>, finish: Value) -> Value {
        let mut chunk = json!({
            "id": self.meta.id,
            "object": "text_completion",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": self.meta.system_fingerprint,
            "choices": [{
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish,
            }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }
}

impl ChunkWriter for CompletionChunks {
    fn start(&mut self) -> Vec<Value> {
        // With logprobs the echoed prompt waits for its log-probabilities.
        if !self.echo || self.with_logprobs {
            return Vec::new();
        }
        (0..self.prompts.len() * self.n)
            .map(|index| self.chunk(index, &self.prompts[index / self.n].text, None, Value::Null))
            .collect()
    }

    fn event(&mut self, prompt: usize, event: EngineEvent) -> Vec<Value> {
        let served = self.served.clone();
        let tokenizer = &served.model.tokenizer;
        match event {
            EngineEvent::PromptLogprobs(lps) if self.echo => {
                let mut chunks = Vec::with_capacity(self.n);
                for index in prompt * self.n..(prompt + 1) * self.n {
                    let lp = &mut self.logprobs[index];
                    for (&id, s) in self.prompts[prompt].ids.iter().zip(&lps) {
                        lp.push(tokenizer, id, s.as_ref());
                    }
                    let logprobs = Some(lp.take());
                    chunks.push(self.chunk(
                        index,
                        &self.prompts[prompt].text,
                        logprobs,
                        Value::Null,
                    ));
                }
                chunks
            }
            EngineEvent::Token {
                index,
                sampled,
                text,
            } => {
                let index = prompt * self.n + index;
                let logprobs = self.with_logprobs.then(|| {
                    let lp = &mut self.logprobs[index];
                    lp.push(tokenizer, sampled.token, Some(&sampled));
                    lp.take()
                });
                if text.is_empty() && logprobs.is_none() {
                    return Vec::new();
                }
                vec![self.chunk(index, &text, logprobs, Value::Null)]
            }
            EngineEvent::Finished { index, reason, .. } => {
                vec![self.chunk(prompt * self.n + index, "", None, reason.as_str().into())]
            }
            _ => Vec::new(),
        }
    }

    fn usage(&mut self, usage: Usage) -> Option<Value> {
        self.include_usage.then(|| {
            json!({
                "id": self.meta.id,
                "object": "text_completion",
                "created": self.meta.created,
                "model": self.meta.model,
                "choices": [],
                "usage": usage_json(usage),
            })
        })
    }
}
