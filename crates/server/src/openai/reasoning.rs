//! Reasoning models: the thinking a model writes before its answer, taken out of `content`
//! and sent as `reasoning_content` (and `reasoning`, the newer name vLLM and Ollama use).
//!
//! Two tag pairs are known, told by the chat template (and the vocabulary, where the tags
//! are control tokens that decode to no text):
//! - `<think>` ... `</think>`: DeepSeek-R1 and its distills, Qwen3, QwQ, SmolLM3 and most
//!   others. Some templates open the block in the generation prompt (`<think>\n` after the
//!   assistant's turn begins), so the output starts inside it.
//! - `[THINK]` ... `[/THINK]`: Mistral's reasoning models (Magistral, Ministral 3
//!   Reasoning).
//!
//! A block counts only at the start of the output (after whitespace), or from the start
//! when the prompt opened it: a model that does not think, or writes the tag inside its
//! answer, is left alone. Whitespace around the thinking and before the answer is the
//! template's layout and is dropped.
//!
//! `reasoning_effort` and `chat_template_kwargs.enable_thinking` map to the template's own
//! switch where it has one ([`template_kwargs`]); a template without one renders as it
//! always does — the request is accepted, as vLLM accepts it.

use serde_json::{Map, Value};
use verre_engine::LoadedModel;

use super::error::ApiError;

/// A model's reasoning tags, and their ids where they are single tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasoningTags {
    pub open: &'static str,
    pub close: &'static str,
    open_token: Option<u32>,
    close_token: Option<u32>,
}

const THINK: (&str, &str) = ("<think>", "</think>");
const MISTRAL_THINK: (&str, &str) = ("[THINK]", "[/THINK]");

impl ReasoningTags {
    /// The tags of a model that thinks; `None` for one that does not.
    pub fn for_model(model: &LoadedModel) -> Option<Self> {
        Self::for_template(model.template.source(), |piece| {
            model.tokenizer.token_id(piece)
        })
    }

    /// The tags a template writes or reads; `token_id` finds a tag in the vocabulary.
    pub fn for_template(source: &str, token_id: impl Fn(&str) -> Option<u32>) -> Option<Self> {
        let (open, close) = [MISTRAL_THINK, THINK]
            .into_iter()
            .find(|(open, close)| source.contains(open) || source.contains(close))?;
        Some(Self {
            open,
            close,
            open_token: token_id(open),
            close_token: token_id(close),
        })
    }

    /// Whether a rendered prompt leaves the model inside a block: the generation prompt
    /// opened one and did not close it (DeepSeek-R1's `<｜Assistant｜><think>\n`).
    pub fn opened_by(&self, prompt: &str) -> bool {
        prompt.trim_end().ends_with(self.open)
    }

    /// The text a token stands for: a tag that is a control token decodes to nothing.
    fn text_of<'a>(&self, token: u32, text: &'a str) -> &'a str {
        if !text.is_empty() {
            return text;
        }
        if Some(token) == self.open_token {
            self.open
        } else if Some(token) == self.close_token {
            self.close
        } else {
            text
        }
    }
}

/// What `reasoning_effort` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningEffort {
    None,
    Minimal,
    Low,
    Medium,
    High,
}

impl ReasoningEffort {
    pub fn parse(value: &Value) -> Result<Self, ApiError> {
        match value.as_str() {
            Some("none") => Ok(Self::None),
            Some("minimal") => Ok(Self::Minimal),
            Some("low") => Ok(Self::Low),
            Some("medium") => Ok(Self::Medium),
            Some("high") => Ok(Self::High),
            _ => Err(ApiError::invalid(
                "reasoning_effort",
                format!(
                    "reasoning_effort must be one of none, minimal, low, medium, high; got {value}"
                ),
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Minimal => "minimal",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

/// Template variables a client may not set through `chat_template_kwargs`: the ones the
/// server passes itself.
pub const RESERVED_TEMPLATE_VARIABLES: &[&str] = &[
    "messages",
    "tools",
    "documents",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
];

/// The variables to render a template with: the client's `chat_template_kwargs`, plus the
/// template's thinking switch where it has one — `enable_thinking` (Qwen3, SmolLM3,
/// DeepSeek-R1 as llama.cpp ships it) and `reasoning_effort` (gpt-oss).
///
/// `enable_thinking` is true unless `reasoning_effort` is `none`, the client set it, or
/// the output is `constrained` by a grammar (a schema or a required call leaves no room
/// for thinking: the prompt closes the block where the template can).
pub fn template_kwargs(
    source: &str,
    effort: Option<ReasoningEffort>,
    client: &Map<String, Value>,
    constrained: bool,
) -> Map<String, Value> {
    let mut kwargs = client.clone();
    if source.contains("enable_thinking") && !kwargs.contains_key("enable_thinking") {
        let think = effort != Some(ReasoningEffort::None) && !constrained;
        kwargs.insert("enable_thinking".into(), Value::Bool(think));
    }
    if let Some(effort) = effort
        && source.contains("reasoning_effort")
        && !kwargs.contains_key("reasoning_effort")
    {
        kwargs.insert("reasoning_effort".into(), effort.as_str().into());
    }
    kwargs
}

/// A piece of output, once told apart.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Reasoning(String),
    Content(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing but whitespace yet: a block may still open.
    Start,
    /// Inside a block.
    Thinking,
    /// The block closed: whitespace before the answer is dropped.
    Closed,
    /// The answer.
    Answer,
}

/// Splits a model's output as it comes, token by token, into reasoning and content. Text
/// that may be part of a tag is held back until it is known, so a tag split over tokens
/// never reaches either side.
pub struct ReasoningSplitter {
    tags: ReasoningTags,
    phase: Phase,
    buffer: String,
    /// Reasoning has gone out (leading whitespace is dropped until it has).
    reasoned: bool,
    /// Tokens spent thinking, tags included.
    tokens: usize,
    /// A tool call's marker (its text and token) ends the thinking: a call written inside
    /// a block that was never closed is still a call.
    call_marker: Option<(&'static str, Option<u32>)>,
}

impl ReasoningSplitter {
    /// `inside`: the prompt opened the block ([`ReasoningTags::opened_by`]).
    pub fn new(tags: ReasoningTags, inside: bool) -> Self {
        Self {
            tags,
            phase: if inside {
                Phase::Thinking
            } else {
                Phase::Start
            },
            buffer: String::new(),
            reasoned: false,
            tokens: 0,
            call_marker: None,
        }
    }

    /// End the thinking where a tool call's marker appears.
    pub fn ending_at_call(mut self, marker: &'static str, token: Option<u32>) -> Self {
        self.call_marker = Some((marker, token));
        self
    }

    /// One token of output and the text it let out. Each token of the answer comes back
    /// as content as it came; a `Content("")` is a control token's own (empty) text, which
    /// a tool-call parser reads by its id.
    pub fn push(&mut self, token: u32, text: &str) -> Vec<Piece> {
        if self.phase == Phase::Answer {
            return vec![Piece::Content(text.to_string())];
        }
        let thinking_before = self.phase == Phase::Thinking;
        let text = self.tags.text_of(token, text);
        let out = if text.is_empty() {
            self.control_token(token)
        } else {
            self.buffer.push_str(text);
            self.advance()
        };
        // The tags count as thinking, as the tokens between them do.
        if thinking_before || self.phase == Phase::Thinking {
            self.tokens += 1;
        }
        out
    }

    /// Tokens spent thinking so far (OpenAI's `reasoning_tokens`).
    pub fn reasoning_tokens(&self) -> usize {
        self.tokens
    }

    /// A token without text that is not a reasoning tag. Only a tool call's marker means
    /// anything here: it starts the answer, and ends a block it is written in. (Other
    /// tokens let out no text while a character or a stop string is incomplete.)
    fn control_token(&mut self, token: u32) -> Vec<Piece> {
        if self.call_marker.is_none_or(|(_, id)| id != Some(token)) {
            return Vec::new();
        }
        let mut out = match self.phase {
            Phase::Thinking => self.release_reasoning(self.buffer.len()),
            Phase::Start => content(std::mem::take(&mut self.buffer)),
            Phase::Closed | Phase::Answer => Vec::new(),
        };
        self.buffer.clear();
        self.phase = Phase::Answer;
        out.push(Piece::Content(String::new()));
        out
    }

    /// The end of the output: what is held back goes out. A block that never closed (the
    /// token limit cut the thinking) is reasoning, without the start of a closing tag.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buffer);
        match self.phase {
            Phase::Start | Phase::Answer => content(rest),
            Phase::Closed => content(rest.trim_start().to_string()),
            Phase::Thinking => {
                let cut = partial_suffix(&rest, self.tags.close);
                self.buffer = rest[..rest.len() - cut].to_string();
                let end = self.buffer.trim_end().len();
                let out = self.release_reasoning(end);
                self.buffer.clear();
                out
            }
        }
    }

    fn advance(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        loop {
            match self.phase {
                Phase::Start => {
                    let rest = self.buffer.trim_start();
                    if let Some(after) = rest.strip_prefix(self.tags.open) {
                        self.buffer = after.to_string();
                        self.phase = Phase::Thinking;
                    } else if self.tags.open.starts_with(rest) {
                        return out; // whitespace, or the start of the tag
                    } else {
                        self.phase = Phase::Answer;
                        out.extend(content(std::mem::take(&mut self.buffer)));
                        return out;
                    }
                }
                Phase::Thinking => {
                    let close = self.buffer.find(self.tags.close);
                    let call = self
                        .call_marker
                        .and_then(|(marker, _)| self.buffer.find(marker));
                    let close_first = match (close, call) {
                        (Some(at), call) => call.is_none_or(|c| at <= c),
                        (None, _) => false,
                    };
                    match (close, call) {
                        (Some(at), _) if close_first => {
                            let end = self.buffer[..at].trim_end().len();
                            out.extend(self.release_reasoning(end));
                            self.buffer.drain(..at - end + self.tags.close.len());
                            self.phase = Phase::Closed;
                        }
                        (_, Some(at)) => {
                            let end = self.buffer[..at].trim_end().len();
                            out.extend(self.release_reasoning(end));
                            self.buffer.drain(..at - end);
                            self.phase = Phase::Answer;
                            out.extend(content(std::mem::take(&mut self.buffer)));
                            return out;
                        }
                        _ => {
                            let held = partial_suffix(&self.buffer, self.tags.close).max(
                                self.call_marker
                                    .map_or(0, |(m, _)| partial_suffix(&self.buffer, m)),
                            );
                            let ready = self.buffer.len() - held;
                            // Whitespace before a closing tag is layout: held until text follows.
                            let ready = self.buffer[..ready].trim_end().len();
                            out.extend(self.release_reasoning(ready));
                            return out;
                        }
                    }
                }
                Phase::Closed => {
                    let answer = self.buffer.trim_start();
                    if answer.is_empty() {
                        self.buffer.clear();
                        return out;
                    }
                    let answer = answer.to_string();
                    self.buffer.clear();
                    self.phase = Phase::Answer;
                    out.extend(content(answer));
                    return out;
                }
                Phase::Answer => {
                    out.extend(content(std::mem::take(&mut self.buffer)));
                    return out;
                }
            }
        }
    }

    /// The first `end` bytes of the buffer go out as reasoning (less leading whitespace
    /// while none has gone out yet).
    fn release_reasoning(&mut self, end: usize) -> Vec<Piece> {
        let mut text: String = self.buffer.drain(..end).collect();
        if !self.reasoned {
            text = text.trim_start().to_string();
        }
        if text.is_empty() {
            return Vec::new();
        }
        self.reasoned = true;
        vec![Piece::Reasoning(text)]
    }
}

fn content(text: String) -> Vec<Piece> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![Piece::Content(text)]
    }
}

/// Bytes at the end of `text` that could be the start of `tag`.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn think() -> ReasoningTags {
        ReasoningTags::for_template("{{ '<think>' }}", |_| None).unwrap()
    }

    /// Reasoning and content of `pieces` pushed one by one (token ids all 0).
    fn split(tags: ReasoningTags, inside: bool, pieces: &[&str]) -> (String, String) {
        let mut s = ReasoningSplitter::new(tags, inside);
        let mut out: Vec<Piece> = pieces.iter().flat_map(|p| s.push(0, p)).collect();
        out.extend(s.finish());
        join(out)
    }

    fn join(pieces: Vec<Piece>) -> (String, String) {
        let (mut reasoning, mut content) = (String::new(), String::new());
        for p in pieces {
            match p {
                Piece::Reasoning(t) => reasoning.push_str(&t),
                Piece::Content(t) => content.push_str(&t),
            }
        }
        (reasoning, content)
    }

    /// `text` cut in two at every byte boundary, and in three at every pair.
    fn every_split(tags: ReasoningTags, inside: bool, text: &str) -> Vec<(String, String)> {
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let mut all = Vec::new();
        for &a in &cuts {
            for &b in cuts.iter().filter(|&&b| b >= a) {
                all.push(split(tags, inside, &[&text[..a], &text[a..b], &text[b..]]));
            }
        }
        all
    }

    #[test]
    fn a_block_at_the_start_is_reasoning_at_every_split_point() {
        let text = "<think>\nThe user greets me.\n</think>\n\nHello! ✓";
        for got in every_split(think(), false, text) {
            assert_eq!(got, ("The user greets me.".into(), "Hello! ✓".into()));
        }
    }

    #[test]
    fn a_block_the_prompt_opened_ends_at_the_closing_tag() {
        let text = "Two plus two.\n</think>\n\n4";
        for got in every_split(think(), true, text) {
            assert_eq!(got, ("Two plus two.".into(), "4".into()));
        }
    }

    #[test]
    fn mistral_tags_as_text_and_as_control_tokens() {
        let tags = ReasoningTags::for_template("[THINK]x[/THINK]", |_| None).unwrap();
        assert_eq!((tags.open, tags.close), ("[THINK]", "[/THINK]"));
        for got in every_split(tags, false, "[THINK]Hmm.[/THINK]Yes.") {
            assert_eq!(got, ("Hmm.".into(), "Yes.".into()));
        }
        // Control tokens decode to no text: their ids stand for the tags.
        let ids = |p: &str| match p {
            "[THINK]" => Some(34),
            "[/THINK]" => Some(35),
            _ => None,
        };
        let tags = ReasoningTags::for_template("[THINK]", ids).unwrap();
        let mut s = ReasoningSplitter::new(tags, false);
        let mut out = Vec::new();
        for (token, text) in [(34, ""), (7, "Hmm"), (8, "."), (35, ""), (9, "Yes")] {
            out.extend(s.push(token, text));
        }
        out.extend(s.finish());
        assert_eq!(join(out), ("Hmm.".into(), "Yes".into()));
    }

    #[test]
    fn thinking_tokens_are_counted_with_their_tags() {
        let mut s = ReasoningSplitter::new(think(), false);
        for piece in ["\n", "<think>", "a", "b", "</think>", "\n", "c", "d"] {
            s.push(0, piece);
        }
        assert_eq!(s.reasoning_tokens(), 4);
        let mut s = ReasoningSplitter::new(think(), true);
        for piece in ["a", "</think>", "c"] {
            s.push(0, piece);
        }
        assert_eq!(s.reasoning_tokens(), 2);
        let mut s = ReasoningSplitter::new(think(), false);
        s.push(0, "plain");
        assert_eq!(s.reasoning_tokens(), 0);
    }

    #[test]
    fn a_model_that_does_not_think_is_untouched() {
        for text in [
            "\n\nHello <think> there",
            "Hi</think>",
            "<thin",
            " <b>bold</b>",
            "",
        ] {
            for got in every_split(think(), false, text) {
                assert_eq!(got, (String::new(), text.to_string()), "{text:?}");
            }
        }
        assert!(ReasoningTags::for_template("{{ messages }}", |_| None).is_none());
    }

    #[test]
    fn an_unclosed_block_cut_by_the_limit_is_reasoning_only() {
        assert_eq!(
            split(think(), false, &["<think>", "Let me", " see", "</th"]),
            ("Let me see".into(), String::new())
        );
        assert_eq!(
            split(think(), true, &["Still", " thinking\n"]),
            ("Still thinking".into(), String::new())
        );
        // Nothing at all yet.
        assert_eq!(
            split(think(), true, &["\n"]),
            (String::new(), String::new())
        );
    }

    #[test]
    fn whitespace_inside_the_thinking_is_kept_and_streams_before_the_close() {
        let mut s = ReasoningSplitter::new(think(), false);
        assert_eq!(s.push(0, "<think>\n"), vec![]);
        assert_eq!(s.push(0, "a"), vec![Piece::Reasoning("a".into())]);
        // Trailing whitespace waits: it may be the layout before `</think>`.
        assert_eq!(s.push(0, "\n\n"), vec![]);
        assert_eq!(s.push(0, "b"), vec![Piece::Reasoning("\n\nb".into())]);
        assert_eq!(s.push(0, "\n</think>\n\n"), vec![]);
        assert_eq!(s.push(0, "c"), vec![Piece::Content("c".into())]);
        // In the answer, each token comes back as it is, empty or not.
        assert_eq!(s.push(5, ""), vec![Piece::Content(String::new())]);
        assert_eq!(s.finish(), vec![]);
    }

    #[test]
    fn a_tool_call_ends_the_thinking() {
        let text = "<think>I should call it.<tool_call>\n{\"name\": \"f\"}\n</tool_call>";
        for inside in [false, true] {
            let text = if inside { &text[7..] } else { text };
            let cuts: Vec<usize> = (0..=text.len()).collect();
            for &a in &cuts {
                let mut s =
                    ReasoningSplitter::new(think(), inside).ending_at_call("<tool_call>", None);
                let mut out = s.push(0, &text[..a]);
                out.extend(s.push(0, &text[a..]));
                out.extend(s.finish());
                assert_eq!(
                    join(out),
                    (
                        "I should call it.".into(),
                        "<tool_call>\n{\"name\": \"f\"}\n</tool_call>".into()
                    ),
                    "{a}"
                );
            }
        }
        // A call marker that is a control token (Mistral's `[TOOL_CALLS]`) also ends it.
        let tags = ReasoningTags::for_template("[THINK]", |_| None).unwrap();
        let mut s = ReasoningSplitter::new(tags, false).ending_at_call("[TOOL_CALLS]", Some(9));
        let mut out = s.push(1, "[THINK]hm");
        out.extend(s.push(9, ""));
        out.extend(s.push(2, "f"));
        assert_eq!(
            out,
            vec![
                Piece::Reasoning("hm".into()),
                Piece::Content(String::new()),
                Piece::Content("f".into())
            ]
        );
        // Without thinking, the marker starts the answer.
        let mut s = ReasoningSplitter::new(tags, false).ending_at_call("[TOOL_CALLS]", Some(9));
        let mut out = s.push(1, "\n");
        out.extend(s.push(9, ""));
        assert_eq!(
            out,
            vec![Piece::Content("\n".into()), Piece::Content(String::new())]
        );
    }

    #[test]
    fn the_prompt_opens_a_block_when_it_ends_inside_one() {
        let tags = think();
        assert!(tags.opened_by("<｜Assistant｜><think>\n"));
        assert!(!tags.opened_by("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
        assert!(!tags.opened_by("<|im_start|>assistant\n"));
    }

    #[test]
    fn thinking_switches_follow_the_template() {
        let qwen3 = "{%- if enable_thinking is defined and enable_thinking is false %}";
        let none = Map::new();
        let kwargs = |src, effort, constrained| template_kwargs(src, effort, &none, constrained);
        assert_eq!(
            kwargs(qwen3, None, false).get("enable_thinking"),
            Some(&Value::Bool(true))
        );
        assert_eq!(
            kwargs(qwen3, Some(ReasoningEffort::None), false).get("enable_thinking"),
            Some(&Value::Bool(false))
        );
        assert_eq!(
            kwargs(qwen3, Some(ReasoningEffort::High), true).get("enable_thinking"),
            Some(&Value::Bool(false))
        );
        // A template without a switch gets nothing.
        assert!(kwargs("{{ messages }}", Some(ReasoningEffort::None), false).is_empty());
        // gpt-oss reads the effort itself.
        let gpt_oss = "Reasoning: {{ reasoning_effort }}";
        assert_eq!(
            kwargs(gpt_oss, Some(ReasoningEffort::Low), false).get("reasoning_effort"),
            Some(&Value::from("low"))
        );
        // The client's own value wins.
        let mut client = Map::new();
        client.insert("enable_thinking".into(), Value::Bool(false));
        assert_eq!(
            template_kwargs(qwen3, Some(ReasoningEffort::High), &client, false)
                .get("enable_thinking"),
            Some(&Value::Bool(false))
        );
    }

    #[test]
    fn real_templates_are_told_apart() {
        let Some(dir) = std::env::var_os("VERRE_LLAMA_TEMPLATES_DIR") else {
            eprintln!("skipped: set VERRE_LLAMA_TEMPLATES_DIR (scripts/test.sh does)");
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let tags = |name: &str| {
            let source =
                std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            ReasoningTags::for_template(&source, |_| None).map(|t| t.open)
        };
        assert_eq!(tags("Qwen-Qwen3-0.6B.jinja"), Some("<think>"));
        assert_eq!(
            tags("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"),
            Some("<think>")
        );
        assert_eq!(
            tags("mistralai-Ministral-3-14B-Reasoning-2512.jinja"),
            Some("[THINK]")
        );
        assert_eq!(tags("Qwen-Qwen2.5-7B-Instruct.jinja"), None);
        assert_eq!(tags("meta-llama-Llama-3.1-8B-Instruct.jinja"), None);

        // The switch reaches the real templates: Qwen3 closes an empty block in the prompt
        // when thinking is off; DeepSeek-R1 (as llama.cpp ships it) opens the block in the
        // prompt when it is on.
        let opened = |name: &str, effort| {
            let source = std::fs::read_to_string(dir.join(name)).unwrap();
            let t = ReasoningTags::for_template(&source, |_| None).unwrap();
            let template = verre_engine::ChatTemplate::new(Some(&source), "<s>", "</s>").unwrap();
            let kwargs = template_kwargs(&source, effort, &Map::new(), false);
            let messages = [verre_engine::Message::new("user", "hi")];
            let prompt = template
                .render_with_kwargs(&messages, None, &kwargs, true)
                .unwrap();
            (t.opened_by(&prompt), prompt.trim_end().ends_with(t.close))
        };
        let qwen3 = "Qwen-Qwen3-0.6B.jinja";
        assert_eq!(opened(qwen3, None), (false, false));
        assert_eq!(opened(qwen3, Some(ReasoningEffort::None)), (false, true));
        let r1 = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja";
        assert_eq!(opened(r1, None), (true, false));
        assert_eq!(opened(r1, Some(ReasoningEffort::None)), (false, true));
    }
}
