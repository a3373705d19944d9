//! What chat and completions share once a request is valid: the token limit against the
//! context, the engine request, and reading the engine's events — collected into one
//! answer, or sent on as server-sent events.
//!
//! Dropping a response (the client went away) drops the engine's event streams, which
//! cancels the generation at the engine's next step.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::{Value, json};
use verre_engine::engine::{EngineEvent, EngineRequest, RequestStream, Usage};
use verre_engine::{FinishReason, GenerateRequest, Grammar, Sampled};

use super::error::ApiError;
use super::request::GenerationParams;
use crate::metrics::RequestTimer;
use crate::state::{ServedModel, unix_now};

/// The tokens to generate: the requested count if prompt and completion fit in the
/// context, else a 400 as OpenAI words it; without a request, `default` or what the
/// context leaves.
pub fn max_tokens(
    requested: Option<usize>,
    default: Option<usize>,
    prompt_tokens: usize,
    context_length: usize,
    param: &str,
) -> Result<usize, ApiError> {
    if prompt_tokens >= context_length {
        return Err(ApiError::context_length(
            param,
            format!(
                "This model's maximum context length is {context_length} tokens. However, your prompt has {prompt_tokens} tokens, which leaves no room for a completion."
            ),
        ));
    }
    let room = context_length - prompt_tokens;
    match requested {
        Some(n) if n > room => Err(ApiError::context_length(
            param,
            format!(
                "This model's maximum context length is {context_length} tokens. However, you requested {} tokens ({prompt_tokens} in the prompt, {n} for the completion). Please reduce the prompt or the completion length.",
                prompt_tokens + n
            ),
        )),
        Some(n) => Ok(n),
        None => Ok(default.unwrap_or(room).min(room)),
    }
}

pub fn engine_request(
    prompt_ids: Vec<u32>,
    max_tokens: usize,
    params: &GenerationParams,
    prompt_logprobs: bool,
    grammar: Option<Arc<Grammar>>,
) -> EngineRequest {
    EngineRequest {
        generate: GenerateRequest {
            prompt_ids,
            max_tokens,
            sampling: params.sampling.clone(),
            stop: params.stop.clone(),
            ignore_eos: params.ignore_eos,
            grammar,
        },
        n: params.n,
        prompt_logprobs,
        speculative: params.speculative,
    }
}

/// The events of one or more engine requests (a completion may carry several prompts),
/// each tagged with the index of its prompt.
pub type EventStream = BoxStream<'static, (usize, EngineEvent)>;

pub fn merge(streams: Vec<RequestStream>) -> EventStream {
    let tagged = streams
        .into_iter()
        .enumerate()
        .map(|(p, mut s)| stream::poll_fn(move |cx| s.poll_recv(cx)).map(move |ev| (p, ev)));
    stream::select_all(tagged).boxed()
}

/// `id`, `created`, `model` and `system_fingerprint` of a response: the same on every
/// chunk of a stream.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
}

impl ResponseMeta {
    /// `model` is the name the client asked for; `served` what answers it.
    pub fn new(prefix: &str, model: &str, served: &ServedModel) -> Self {
        Self {
            id: format!("{prefix}-{}", hex_id()),
            created: unix_now(),
            model: model.to_string(),
            system_fingerprint: system_fingerprint(served),
        }
    }
}

/// What produced an answer, as OpenAI's `system_fingerprint` says it: the model's name and
/// a short hash of the model file (name, size, chat template) and verre's version. Answers
/// with the same fingerprint came from the same weights under the same code.
pub fn system_fingerprint(served: &ServedModel) -> String {
    use sha2::{Digest, Sha256};
    let model = &served.model;
    let mut hash = Sha256::new();
    for part in [
        model
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        model.file_size.to_string(),
        model.template.source().to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    format!("{}-{}", served.id, &hex::encode(hash.finalize())[..10])
}

fn hex_id() -> String {
    rand::random::<[u8; 12]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

pub fn finish_reason(reason: Option<FinishReason>) -> Value {
    reason.map_or(Value::Null, |r| r.as_str().into())
}

/// A finished request: every choice, in order (`prompt * n + choice`).
pub struct Outcome {
    pub choices: Vec<ChoiceOutput>,
    pub usage: Usage,
    /// Per prompt, when asked for.
    pub prompt_logprobs: Vec<Option<Vec<Option<Sampled>>>>,
}

#[derive(Default)]
pub struct ChoiceOutput {
    pub text: String,
    pub tokens: Vec<Sampled>,
    /// Each token with the text it let out (the pieces of `text`), for parsers that also
    /// need control tokens, which let out no text.
    pub pieces: Vec<(u32, String)>,
    pub finish: Option<FinishReason>,
    /// The stop string that ended the choice, if one did.
    pub stop: Option<String>,
}

/// Read every event to the end.
pub async fn collect(
    mut events: EventStream,
    prompts: usize,
    n: usize,
    mut timer: RequestTimer,
) -> Result<Outcome, ApiError> {
    let mut out = Outcome {
        choices: (0..prompts * n).map(|_| ChoiceOutput::default()).collect(),
        usage: Usage::default(),
        prompt_logprobs: vec![None; prompts],
    };
    let mut done = 0;
    while let Some((p, event)) = events.next().await {
        match event {
            EngineEvent::Admitted { queue_time } => timer.queued(queue_time),
            EngineEvent::PromptLogprobs(lps) => out.prompt_logprobs[p] = Some(lps),
            EngineEvent::Token {
                index,
                sampled,
                text,
            } => {
                timer.token(p * n + index);
                let choice = &mut out.choices[p * n + index];
                choice.text.push_str(&text);
                choice.pieces.push((sampled.token, text));
                choice.tokens.push(sampled);
            }
            EngineEvent::Finished {
                index,
                reason,
                stop,
                ..
            } => {
                let choice = &mut out.choices[p * n + index];
                choice.finish = Some(reason);
                choice.stop = stop;
            }
            EngineEvent::Done(usage) => {
                out.usage.prompt_tokens += usage.prompt_tokens;
                out.usage.completion_tokens += usage.completion_tokens;
                done += 1;
            }
            EngineEvent::Failed(e) => return Err(ApiError::internal(e)),
        }
    }
    if done < prompts {
        return Err(ApiError::internal(
            "the engine stopped before the request was done",
        ));
    }
    timer.done();
    Ok(out)
}

/// Turns engine events into the chunks of one API's stream.
pub trait ChunkWriter: Send + 'static {
    /// Chunks before any event (chat: the assistant role of each choice).
    fn start(&mut self) -> Vec<Value>;
    /// Chunks for one event of prompt `prompt` (never `Done` or `Failed`).
    fn event(&mut self, prompt: usize, event: EngineEvent) -> Vec<Value>;
    /// The last chunk with the usage, when the client asked for it.
    fn usage(&mut self, usage: Usage) -> Option<Value>;
}

enum Phase {
    Start,
    Running,
    Ended,
}

struct SseState<W> {
    events: EventStream,
    writer: W,
    timer: RequestTimer,
    prompts: usize,
    n: usize,
    done: usize,
    usage: Usage,
    phase: Phase,
}

/// A streaming response: each chunk as a `data:` line, then `data: [DONE]`. A failure
/// midway is sent as an OpenAI error object, and the stream ends without `[DONE]`.
pub fn sse(
    events: EventStream,
    writer: impl ChunkWriter,
    prompts: usize,
    n: usize,
    timer: RequestTimer,
) -> Response {
    let state = SseState {
        events,
        writer,
        timer,
        prompts,
        n,
        done: 0,
        usage: Usage::default(),
        phase: Phase::Start,
    };
    let data = stream::unfold(state, |mut s| async move {
        let out = match s.phase {
            Phase::Start => {
                s.phase = Phase::Running;
                s.writer.start()
            }
            Phase::Running => s.next_chunks().await,
            Phase::Ended => return None,
        };
        Some((out, s))
    });
    let events = data
        .map(|chunks| {
            stream::iter(
                chunks
                    .into_iter()
                    .map(|c| Ok::<_, Infallible>(sse_event(c))),
            )
        })
        .flatten();
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn sse_event(chunk: Value) -> Event {
    match chunk {
        Value::String(s) => Event::default().data(s),
        other => Event::default().data(other.to_string()),
    }
}

impl<W: ChunkWriter> SseState<W> {
    async fn next_chunks(&mut self) -> Vec<Value> {
        match self.events.next().await {
            Some((_, EngineEvent::Done(usage))) => {
                self.usage.prompt_tokens += usage.prompt_tokens;
                self.usage.completion_tokens += usage.completion_tokens;
                self.done += 1;
                Vec::new()
            }
            Some((_, EngineEvent::Failed(e))) => {
                self.phase = Phase::Ended;
                vec![ApiError::internal(e).body()]
            }
            Some((_, EngineEvent::Admitted { queue_time })) => {
                self.timer.queued(queue_time);
                Vec::new()
            }
            Some((p, event)) => {
                if let EngineEvent::Token { index, .. } = &event {
                    self.timer.token(p * self.n + index);
                }
                self.writer.event(p, event)
            }
            None => {
                self.phase = Phase::Ended;
                if self.done < self.prompts {
                    return vec![
                        ApiError::internal("the engine stopped before the request was done").body(),
                    ];
                }
                self.timer.done();
                let mut last: Vec<Value> = self.writer.usage(self.usage).into_iter().collect();
                last.push(Value::String("[DONE]".into()));
                last
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_fit_the_context() {
        assert_eq!(max_tokens(None, None, 10, 100, "messages"), Ok(90));
        assert_eq!(max_tokens(None, Some(16), 10, 100, "prompt"), Ok(16));
        assert_eq!(max_tokens(None, Some(16), 95, 100, "prompt"), Ok(5));
        assert_eq!(max_tokens(Some(90), None, 10, 100, "messages"), Ok(90));
        let e = max_tokens(Some(91), None, 10, 100, "messages").unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert!(e.message.contains("101 tokens"), "{}", e.message);
        let e = max_tokens(None, None, 100, 100, "messages").unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (400, Some("messages"))
        );
    }
}
