//! `POST /v1/chat/completions`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use verre_engine::engine::{EngineEvent, Usage};

use super::body::ApiBody;
use super::error::ApiError;
use super::generation::{self, ChunkWriter, Outcome, ResponseMeta, finish_reason, usage_json};
use super::logprobs;
use super::reasoning::{self, Piece, ReasoningSplitter, ReasoningTags};
use super::request::{ChatRequest, ToolChoice};
use super::structured;
use super::tools::{self, ToolCall, ToolCallParser, ToolDelta, ToolFormat};
use crate::metrics::RequestTimer;
use crate::state::{AppState, ServedModel};
use verre_engine::tokenizer::Tokenizer;
use verre_engine::{FinishReason, GrammarSpec, Message};

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: ApiBody,
) -> Result<Response, ApiError> {
    let req = ChatRequest::from_object(body.object())?;
    let served = state.model(&req.model)?;
    let tool_format = ToolFormat::for_model(&served.model);
    let (spec, param) = grammar_spec(tool_format, &req);
    let constrained = spec.is_some();
    let prompt = chat_prompt(&served, &req, constrained).await?;
    let grammar = structured::compile(&served.model, spec, param).await?;
    let calls =
        (!req.tools.is_empty() && req.tool_choice != ToolChoice::None).then(|| CallReading {
            format: tool_format,
            tools: req.tools.iter().map(|t| t.name.clone()).collect(),
        });
    // Under a grammar the whole output is the answer the grammar shapes.
    let thinking = ReasoningTags::for_model(&served.model)
        .filter(|_| !constrained)
        .map(|tags| Thinking {
            tags,
            inside: tags.opened_by(&prompt.text),
        });
    let reading = OutputReading { thinking, calls };
    let max_tokens = generation::max_tokens(
        req.params.max_tokens,
        None,
        prompt.ids.len(),
        served.model.info().context_length,
        "messages",
    )?;
    let stream = served.engine.submit(generation::engine_request(
        prompt.ids,
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
            readers: match reading.is_plain() {
                true => Vec::new(),
                false => (0..n).map(|_| reading.reader()).collect(),
            },
            pending_logprobs: vec![Vec::new(); n],
        };
        return Ok(generation::sse(events, writer, 1, n, timer));
    }
    let outcome = generation::collect(events, 1, n, timer).await?;
    Ok(Json(chat_response(
        &served,
        &meta,
        req.logprobs,
        reading,
        outcome,
    ))
    .into_response())
}

/// What constrains the output, and the field that asked for it: a required call is
/// constrained by the tools' schemas; otherwise the response format (if any) constrains
/// the answer.
fn grammar_spec(tool_format: ToolFormat, req: &ChatRequest) -> (Option<GrammarSpec>, &'static str) {
    match tools::call_grammar(
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
    }
}

/// The request's prompt: its messages and tools through the model's template, with the
/// template's thinking switch set.
async fn chat_prompt(
    served: &Arc<ServedModel>,
    req: &ChatRequest,
    constrained: bool,
) -> Result<Prompt, ApiError> {
    let (messages, tools_value) =
        tools::prepare_prompt(&served.model, &req.messages, &req.tools, &req.tool_choice);
    let kwargs = reasoning::template_kwargs(
        served.model.template.source(),
        req.reasoning_effort,
        &req.template_kwargs,
        constrained,
    );
    render_prompt(served.clone(), messages, tools_value, kwargs).await
}

/// The number of prompt tokens a chat request has on a model of this process (Anthropic's
/// `count_tokens`).
pub async fn prompt_tokens(
    served: &Arc<ServedModel>,
    req: &ChatRequest,
) -> Result<usize, ApiError> {
    let (spec, _) = grammar_spec(ToolFormat::for_model(&served.model), req);
    Ok(chat_prompt(served, req, spec.is_some()).await?.ids.len())
}

/// How long a chat template may take to render before the request fails. The template's
/// fuel cap bounds its work; this bounds the time of what a step can do that fuel does
/// not see (a huge string built in one step).
const TEMPLATE_TIME_LIMIT: Duration = Duration::from_secs(5);

/// A rendered prompt: its text and its token ids.
struct Prompt {
    text: String,
    ids: Vec<u32>,
}

/// The prompt. The template comes from the model file — untrusted input — so it renders
/// on a blocking thread, not on the async runtime's workers, and within a time limit.
async fn render_prompt(
    served: Arc<ServedModel>,
    messages: Vec<Message>,
    tools: Option<Value>,
    kwargs: Map<String, Value>,
) -> Result<Prompt, ApiError> {
    let render = tokio::task::spawn_blocking(move || {
        let model = &served.model;
        let text = model
            .template
            .render_with_kwargs(&messages, tools.as_ref(), &kwargs, true)?;
        let ids = model.encode_prompt(&text)?;
        anyhow::Ok(Prompt { text, ids })
    });
    match tokio::time::timeout(TEMPLATE_TIME_LIMIT, render).await {
        Ok(Ok(Ok(prompt))) => Ok(prompt),
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
#[derive(Debug, Clone)]
struct CallReading {
    format: ToolFormat,
    /// The declared tools' names: an answer that is nothing but a call to one of them is
    /// that call, markers or not.
    tools: Arc<[String]>,
}

impl CallReading {
    /// A call repeated with the same name and arguments in one answer is dropped, whatever
    /// the tool choice: a client would run it twice.
    fn parser(&self) -> ToolCallParser {
        ToolCallParser::new(self.format)
            .distinct()
            .bare_calls(self.tools.to_vec())
    }
}

/// A model that thinks: its tags, and whether the prompt opened a block.
#[derive(Debug, Clone, Copy)]
struct Thinking {
    tags: ReasoningTags,
    inside: bool,
}

/// How a request's output is read: thinking apart from the answer, tool calls out of it.
#[derive(Debug, Clone)]
struct OutputReading {
    thinking: Option<Thinking>,
    calls: Option<CallReading>,
}

impl OutputReading {
    /// The output is the content as it is.
    fn is_plain(&self) -> bool {
        self.thinking.is_none() && self.calls.is_none()
    }

    fn reader(&self) -> OutputReader {
        let thinking = self.thinking.map(|t| {
            let splitter = ReasoningSplitter::new(t.tags, t.inside);
            match &self.calls {
                Some(calls) => {
                    let (marker, token) = calls.format.call_marker();
                    splitter.ending_at_call(marker, token)
                }
                None => splitter,
            }
        });
        OutputReader {
            thinking,
            calls: self.calls.as_ref().map(CallReading::parser),
        }
    }
}

/// What a choice's output holds, as it is read.
#[derive(Debug, Clone, PartialEq)]
enum OutputDelta {
    Reasoning(String),
    Content(String),
    Call(ToolCall),
}

impl From<ToolDelta> for OutputDelta {
    fn from(d: ToolDelta) -> Self {
        match d {
            ToolDelta::Content(t) => OutputDelta::Content(t),
            ToolDelta::Call(c) => OutputDelta::Call(c),
        }
    }
}

/// No token: text a reader lets out later than the token that brought it.
const NO_TOKEN: u32 = u32::MAX;

/// Reads one choice's output token by token: the thinking first, then tool calls out of
/// the answer.
struct OutputReader {
    thinking: Option<ReasoningSplitter>,
    calls: Option<ToolCallParser>,
}

impl OutputReader {
    fn push(&mut self, token: u32, text: &str) -> Vec<OutputDelta> {
        match &mut self.thinking {
            Some(splitter) => {
                let pieces = splitter.push(token, text);
                self.answer(token, pieces)
            }
            None => match &mut self.calls {
                Some(parser) => parser
                    .push(token, text)
                    .into_iter()
                    .map(Into::into)
                    .collect(),
                None => vec![OutputDelta::Content(text.to_string())],
            },
        }
    }

    /// The end of the output; `cut`: the token limit ended it.
    fn finish(&mut self, cut: bool) -> Vec<OutputDelta> {
        let pieces = self
            .thinking
            .as_mut()
            .map(ReasoningSplitter::finish)
            .unwrap_or_default();
        let mut out = self.answer(NO_TOKEN, pieces);
        if let Some(parser) = &mut self.calls {
            out.extend(parser.finish(cut).into_iter().map(OutputDelta::from));
        }
        out
    }

    /// The splitter's pieces on to the tool-call parser. An empty piece is a control
    /// token's own text, which the parser reads by its id.
    fn answer(&mut self, token: u32, pieces: Vec<Piece>) -> Vec<OutputDelta> {
        let mut out = Vec::new();
        for piece in pieces {
            match (piece, &mut self.calls) {
                (Piece::Reasoning(t), _) => out.push(OutputDelta::Reasoning(t)),
                (Piece::Content(t), Some(parser)) => {
                    let token = if t.is_empty() { token } else { NO_TOKEN };
                    out.extend(parser.push(token, &t).into_iter().map(OutputDelta::from));
                }
                (Piece::Content(t), None) if !t.is_empty() => out.push(OutputDelta::Content(t)),
                (Piece::Content(_), None) => {}
            }
        }
        out
    }

    fn calls(&self) -> usize {
        self.calls.as_ref().map_or(0, ToolCallParser::calls)
    }

    fn reasoning_tokens(&self) -> usize {
        self.thinking
            .as_ref()
            .map_or(0, ReasoningSplitter::reasoning_tokens)
    }
}

/// The usage, with the tokens spent thinking when the model thinks (OpenAI's
/// `completion_tokens_details.reasoning_tokens`).
fn chat_usage(usage: Usage, reasoning_tokens: Option<usize>) -> Value {
    let mut json = usage_json(usage);
    if let Some(tokens) = reasoning_tokens {
        json["completion_tokens_details"] = json!({ "reasoning_tokens": tokens });
    }
    json
}

/// A choice's output read whole.
#[derive(Default)]
struct ReadOutput {
    reasoning: String,
    content: String,
    calls: Vec<Value>,
    reasoning_tokens: usize,
}

/// A choice's text read whole: reasoning, content and tool calls.
fn read_output(reading: &OutputReading, c: &generation::ChoiceOutput) -> ReadOutput {
    let mut reader = reading.reader();
    let mut deltas: Vec<OutputDelta> = c
        .pieces
        .iter()
        .flat_map(|(token, text)| reader.push(*token, text))
        .collect();
    deltas.extend(reader.finish(c.finish == Some(FinishReason::Length)));
    let mut out = ReadOutput {
        reasoning_tokens: reader.reasoning_tokens(),
        ..ReadOutput::default()
    };
    for d in deltas {
        match d {
            OutputDelta::Reasoning(t) => out.reasoning.push_str(&t),
            OutputDelta::Content(t) => out.content.push_str(&t),
            OutputDelta::Call(call) => out.calls.push(call.to_json()),
        }
    }
    out
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
    reading: OutputReading,
    out: Outcome,
) -> Value {
    let mut reasoning_tokens = 0;
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
            let ReadOutput {
                reasoning,
                content,
                calls,
                reasoning_tokens: tokens,
            } = match reading.is_plain() {
                true => ReadOutput {
                    content: c.text.clone(),
                    ..ReadOutput::default()
                },
                false => read_output(&reading, &c),
            };
            reasoning_tokens += tokens;
            let mut message = json!({ "role": "assistant", "content": content });
            if reading.thinking.is_some() {
                let reasoning = (!reasoning.is_empty()).then_some(reasoning);
                message["reasoning_content"] = json!(reasoning);
                message["reasoning"] = json!(reasoning);
            }
            if !calls.is_empty() {
                if content.trim().is_empty() {
                    message["content"] = Value::Null;
                }
                message["tool_calls"] = Value::Array(calls.clone());
            }
            let mut choice = json!({
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": chat_finish_reason(c.finish, calls.len()),
            });
            if let Some(stop) = c.stop {
                choice["stop_reason"] = stop.into();
            }
            choice
        })
        .collect();
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.system_fingerprint,
        "choices": choices,
        "usage": chat_usage(out.usage, reading.thinking.map(|_| reasoning_tokens)),
    })
}

/// The chunks of a streamed chat completion.
struct ChatChunks {
    served: Arc<ServedModel>,
    meta: ResponseMeta,
    n: usize,
    logprobs: bool,
    include_usage: bool,
    /// One per choice when the output is read (thinking, tool calls); none when it is the
    /// content as it is.
    readers: Vec<OutputReader>,
    /// Per choice, log-probabilities of tokens whose text a reader holds back: they go out
    /// with the next chunk of the choice.
    pending_logprobs: Vec<Vec<Value>>,
}

impl ChatChunks {
    /// Chunks for what a choice's reader let out.
    fn delta_chunks(
        &mut self,
        index: usize,
        deltas: Vec<OutputDelta>,
        calls_before: usize,
    ) -> Vec<Value> {
        let mut call_index = calls_before;
        let mut chunks = Vec::new();
        for d in deltas {
            match d {
                OutputDelta::Reasoning(text) => chunks.push(self.choice_chunk(
                    index,
                    json!({ "reasoning_content": text, "reasoning": text }),
                )),
                OutputDelta::Content(text) => {
                    chunks.push(self.choice_chunk(index, json!({ "content": text })))
                }
                OutputDelta::Call(call) => {
                    // As OpenAI streams a call: id and name first, then the arguments.
                    chunks.push(self.choice_chunk(
                        index,
                        json!({ "tool_calls": [{
                            "index": call_index,
                            "id": call.id,
                            "type": "function",
                            "function": { "name": call.name, "arguments": "" },
                        }]}),
                    ));
                    chunks.push(self.choice_chunk(
                        index,
                        json!({ "tool_calls": [{
                            "index": call_index,
                            "function": { "arguments": call.arguments },
                        }]}),
                    ));
                    call_index += 1;
                }
            }
        }
        chunks
    }

    /// A chunk with one choice's delta, and the log-probabilities waiting for it.
    fn choice_chunk(&mut self, index: usize, delta: Value) -> Value {
        let logprobs = match std::mem::take(&mut self.pending_logprobs[index]) {
            entries if entries.is_empty() => Value::Null,
            entries => json!({ "content": entries }),
        };
        self.chunk(vec![json!({
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": null,
        })])
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

    /// The last chunk of a choice.
    fn finish_chunk(&mut self, index: usize, reason: Value, stop: Option<String>) -> Value {
        let logprobs = match std::mem::take(&mut self.pending_logprobs[index]) {
            entries if entries.is_empty() => Value::Null,
            entries => json!({ "content": entries }),
        };
        let mut choice = json!({
            "index": index,
            "delta": {},
            "logprobs": logprobs,
            "finish_reason": reason,
        });
        if let Some(stop) = stop {
            choice["stop_reason"] = stop.into();
        }
        self.chunk(vec![choice])
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
        if !self.readers.is_empty() {
            return self.reader_event(event);
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
            EngineEvent::Finished {
                index,
                reason,
                stop,
                ..
            } => return vec![self.finish_chunk(index, reason.as_str().into(), stop)],
            _ => return Vec::new(),
        };
        vec![self.chunk(vec![choice])]
    }

    fn usage(&mut self, usage: Usage) -> Option<Value> {
        self.usage_chunk(usage)
    }
}

impl ChatChunks {
    /// An event of a request whose output is read (thinking, tool calls).
    fn reader_event(&mut self, event: EngineEvent) -> Vec<Value> {
        match event {
            EngineEvent::Token {
                index,
                sampled,
                text,
            } => {
                let tokenizer = &self.served.model.tokenizer;
                if self.logprobs && !is_unseen_end(tokenizer, sampled.token, &text) {
                    let entry = logprobs::chat_entry(tokenizer, &sampled);
                    self.pending_logprobs[index].push(entry);
                }
                let before = self.readers[index].calls();
                let deltas = self.readers[index].push(sampled.token, &text);
                self.delta_chunks(index, deltas, before)
            }
            EngineEvent::Finished {
                index,
                reason,
                stop,
                ..
            } => {
                let before = self.readers[index].calls();
                let deltas = self.readers[index].finish(reason == FinishReason::Length);
                let mut chunks = self.delta_chunks(index, deltas, before);
                let calls = self.readers[index].calls();
                let reason = chat_finish_reason(Some(reason), calls);
                chunks.push(self.finish_chunk(index, reason, stop));
                chunks
            }
            _ => Vec::new(),
        }
    }

    fn usage_chunk(&mut self, usage: Usage) -> Option<Value> {
        self.include_usage.then(|| {
            let mut chunk = self.chunk(Vec::new());
            let thinking = self.readers.iter().any(|r| r.thinking.is_some());
            let tokens = self
                .readers
                .iter()
                .map(OutputReader::reasoning_tokens)
                .sum();
            chunk["usage"] = chat_usage(usage, thinking.then_some(tokens));
            chunk
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::tools::Mistral;

    /// Everything a reader lets out for `pieces` (token id, text), then at the end.
    fn read(reading: OutputReading, pieces: &[(u32, &str)]) -> Vec<OutputDelta> {
        let mut reader = reading.reader();
        let mut out: Vec<OutputDelta> = pieces
            .iter()
            .flat_map(|(token, text)| reader.push(*token, text))
            .collect();
        out.extend(reader.finish(false));
        out
    }

    fn reasoning_of(deltas: &[OutputDelta]) -> String {
        deltas
            .iter()
            .filter_map(|d| match d {
                OutputDelta::Reasoning(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    fn calls_of(deltas: &[OutputDelta]) -> Vec<(String, String)> {
        deltas
            .iter()
            .filter_map(|d| match d {
                OutputDelta::Call(c) => Some((c.name.clone(), c.arguments.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tool_calls_after_or_inside_the_thinking_still_parse() {
        let tags = ReasoningTags::for_template("<think>", |_| None).unwrap();
        let reading = |inside| OutputReading {
            thinking: Some(Thinking { tags, inside }),
            calls: Some(CallReading {
                format: ToolFormat::Hermes,
                tools: Arc::from(["get_weather".to_string()]),
            }),
        };
        let call = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let after = format!("<think>I need f.</think>\n\n{call}");
        let inside = format!("I need f.{call}");
        for (text, opened) in [(after.as_str(), false), (inside.as_str(), true)] {
            // Token by token, a few bytes each.
            let pieces: Vec<(u32, &str)> = text
                .as_bytes()
                .chunks(3)
                .map(|c| (1, std::str::from_utf8(c).unwrap()))
                .collect();
            let deltas = read(reading(opened), &pieces);
            assert_eq!(reasoning_of(&deltas), "I need f.", "{text}");
            assert_eq!(
                calls_of(&deltas),
                vec![("f".to_string(), "{\"a\":1}".to_string())],
                "{text}"
            );
            assert!(
                !deltas.iter().any(|d| matches!(d, OutputDelta::Content(_))),
                "{deltas:?}"
            );
        }
    }

    #[test]
    fn a_repeated_call_is_dropped_under_auto_too() {
        let reading = OutputReading {
            thinking: None,
            calls: Some(CallReading {
                format: ToolFormat::Hermes,
                tools: Arc::from(["get_weather".to_string()]),
            }),
        };
        let call = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let other = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 2}}\n</tool_call>";
        let text = format!("{call}\n{call}\n{other}");
        let pieces: Vec<(u32, &str)> = text
            .as_bytes()
            .chunks(5)
            .map(|c| (1, std::str::from_utf8(c).unwrap()))
            .collect();
        let deltas = read(reading, &pieces);
        assert_eq!(
            calls_of(&deltas),
            vec![
                ("f".to_string(), "{\"a\":1}".to_string()),
                ("f".to_string(), "{\"a\":2}".to_string())
            ]
        );
    }

    #[test]
    fn mistral_thinking_then_a_call_by_control_tokens() {
        let ids = |p: &str| match p {
            "[THINK]" => Some(34),
            "[/THINK]" => Some(35),
            _ => None,
        };
        let tags = ReasoningTags::for_template("[THINK]", ids).unwrap();
        let format = ToolFormat::Mistral(Mistral {
            name_args: true,
            calls_token: Some(9),
            args_token: Some(32),
            ..Mistral::default()
        });
        let reading = OutputReading {
            thinking: Some(Thinking {
                tags,
                inside: false,
            }),
            calls: Some(CallReading {
                format,
                tools: Arc::from(["get_weather".to_string()]),
            }),
        };
        let deltas = read(
            reading,
            &[
                (34, ""),
                (1, "Call f."),
                (35, ""),
                (9, ""),
                (2, "f"),
                (32, ""),
                (3, "{\"a\": 1}"),
            ],
        );
        assert_eq!(reasoning_of(&deltas), "Call f.");
        assert_eq!(
            calls_of(&deltas),
            vec![("f".to_string(), "{\"a\":1}".to_string())]
        );
    }
}
