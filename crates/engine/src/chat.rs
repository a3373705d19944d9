//! Chat templates: the model's own Jinja template from `tokenizer.chat_template`, rendered
//! with minijinja the way Hugging Face renders it (trimmed blocks, Python string methods),
//! or, for files that carry none, a built-in template of the model's family: Gemma's turns
//! for Gemma, Mistral's `[INST]` otherwise.

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, format::StrftimeItems};
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

mod python;

/// Mistral's instruct format, used when a model file has no template of its own.
pub const MISTRAL_FALLBACK: &str = "\
{%- if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set msgs = messages[1:] %}\
{%- else %}{% set system = '' %}{% set msgs = messages %}{% endif %}\
{{- bos_token }}\
{%- for m in msgs %}\
{%- if m['role'] == 'user' %}{% if loop.first and system %}[INST] {{ system }}\n\n{{ m['content'] }} [/INST]{% else %}[INST] {{ m['content'] }} [/INST]{% endif %}\
{%- elif m['role'] == 'assistant' %}{{ ' ' ~ m['content'] ~ eos_token }}\
{%- else %}{{ raise_exception('Mistral instruct format has no role ' ~ m['role']) }}{% endif %}\
{%- endfor %}";

/// Gemma's turn format (`<start_of_turn>user` / `model`, `<end_of_turn>`), for Gemma files
/// without a template of their own (the pretrained 270M). Gemma has no system role: a system
/// message is put at the head of the first user turn.
pub const GEMMA_FALLBACK: &str = "\
{{- bos_token }}\
{%- if messages and messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] ~ '\n\n' %}{% set msgs = messages[1:] %}\
{%- else %}{% set prefix = '' %}{% set msgs = messages %}{% endif %}\
{%- for m in msgs %}\
{%- if m['role'] == 'user' %}<start_of_turn>user\n{% if loop.first %}{{ prefix }}{% endif %}{{ m['content'] | trim }}<end_of_turn>{{ '\n' }}\
{%- elif m['role'] == 'assistant' %}<start_of_turn>model\n{{ m['content'] | trim }}<end_of_turn>{{ '\n' }}\
{%- else %}{{ raise_exception('Gemma turn format has no role ' ~ m['role']) }}{% endif %}\
{%- endfor %}\
{%- if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// The built-in template for a model of `architecture` whose file carries none.
pub fn fallback_template(architecture: &str) -> &'static str {
    if architecture.starts_with("gemma") {
        GEMMA_FALLBACK
    } else {
        MISTRAL_FALLBACK
    }
}

/// One chat message. Content is plain text here; the API layer flattens content parts.
/// Tool calls and tool results carry the fields Hugging Face chat templates read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant's calls, OpenAI-shaped (`[{"id", "type": "function", "function":
    /// {"name", "arguments"}}]`) with `arguments` as a JSON object, as templates expect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A tool result: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

/// Work a template may do in one rendering, in minijinja "fuel" (about one unit per
/// instruction). The largest real templates (Kimi, gpt-oss, Devstral with tools) use well
/// under 1% of it; a template from a model file is untrusted input, and nested loops over
/// `range(10**6)` would otherwise hold a thread for hours.
pub const RENDER_FUEL: u64 = 20_000_000;

pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    /// True when the model file had no template and the Mistral fallback is in use.
    pub is_fallback: bool,
    bos_token: String,
    eos_token: String,
}

/// Where `strftime_now` reads the time.
#[derive(Clone, Copy)]
enum Clock {
    System,
    /// Seconds since the Unix epoch (UTC): reproducible renderings.
    Fixed(u64),
}

impl Clock {
    fn unix_secs(self) -> u64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            Clock::Fixed(secs) => secs,
        }
    }
}

impl ChatTemplate {
    /// Compile a template. `source` is `None` when the model has no template: Mistral's
    /// `[INST]` format is used.
    pub fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> Result<Self> {
        Self::build(
            source,
            MISTRAL_FALLBACK,
            bos_token,
            eos_token,
            Clock::System,
        )
    }

    /// As [`ChatTemplate::new`], with the built-in template of the model's family
    /// ([`fallback_template`]) when the file has none.
    pub fn for_architecture(
        source: Option<&str>,
        architecture: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self> {
        let fallback = fallback_template(architecture);
        Self::build(source, fallback, bos_token, eos_token, Clock::System)
    }

    /// As [`ChatTemplate::new`], with `strftime_now` fixed at `unix_secs` (UTC), so that a
    /// template that prints today's date renders the same every day.
    pub fn with_fixed_clock(
        source: Option<&str>,
        bos_token: &str,
        eos_token: &str,
        unix_secs: u64,
    ) -> Result<Self> {
        Self::build(
            source,
            MISTRAL_FALLBACK,
            bos_token,
            eos_token,
            Clock::Fixed(unix_secs),
        )
    }

    fn build(
        source: Option<&str>,
        fallback: &str,
        bos_token: &str,
        eos_token: &str,
        clock: Clock,
    ) -> Result<Self> {
        let is_fallback = source.is_none();
        let source = source.unwrap_or(fallback).to_string();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", move |fmt: String| {
            strftime(&fmt, clock.unix_secs())
        });
        env.add_filter("tojson", python::tojson);
        env.add_filter("string", python::string_filter);
        env.add_test("iterable", python::is_iterable);
        env.set_formatter(python::format);
        // minijinja folds constants while compiling, and its arithmetic can panic there too.
        let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            env.add_template_owned("chat", without_generation_tags(&source))
        }))
        .unwrap_or_else(|panic| Err(panicked(panic.as_ref())));
        compiled.context("compiling the model's chat template")?;
        Ok(Self {
            env,
            source,
            is_fallback,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Render a conversation to the prompt text. With `add_generation_prompt` the text ends
    /// where the assistant's answer begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Render with tool definitions (OpenAI-shaped `[{"type": "function", "function":
    /// {...}}]`) passed to the template as `tools`, as Hugging Face does (`tools` and
    /// `documents` are none when absent, not undefined).
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_with_kwargs(
            messages,
            tools,
            &serde_json::Map::new(),
            add_generation_prompt,
        )
    }

    /// As [`ChatTemplate::render_with_tools`], with more variables for the template (the
    /// `chat_template_kwargs` of vLLM and transformers, such as Qwen3's `enable_thinking`).
    /// They cannot replace the variables named above.
    pub fn render_with_kwargs(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        kwargs: &serde_json::Map<String, serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| anyhow!("{e}"))?;
        let ctx = context! {
            messages => messages,
            tools => tools.map(Value::from_serialize),
            documents => Value::from(()),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            ..Value::from_serialize(kwargs)
        };
        let mut out = CappedOutput::default();
        // minijinja panics on some arithmetic (a sequence repeated past usize): an error.
        let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tmpl.render_captured_to(ctx, &mut out).map(|_| ())
        }))
        .unwrap_or_else(|panic| Err(panicked(panic.as_ref())));
        if out.overflowed {
            bail!(
                "rendering chat template: the prompt would be over {MAX_PROMPT_BYTES} bytes; a template that writes this much is broken or hostile"
            );
        }
        rendered.map_err(|e| match e.kind() {
            ErrorKind::OutOfFuel => anyhow!(
                "rendering chat template: the template did more work than allowed ({RENDER_FUEL} steps); a template that loops this much is broken or hostile"
            ),
            _ => anyhow!("rendering chat template: {}", error_chain(&e)),
        })?;
        String::from_utf8(out.bytes).context("rendering chat template: the text is not UTF-8")
    }

    /// The template's source text (to tell which tool-call format a model was taught).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template renders tool definitions and tool messages itself.
    pub fn handles_tools(&self) -> bool {
        self.source.contains("tools") && self.source.contains("tool_calls")
    }
}

/// The longest prompt a template may write: far past any context window. Fuel counts a
/// template's steps, not what one step writes (`{{ messages * 99999999 }}` is one step).
pub const MAX_PROMPT_BYTES: usize = 8 << 20;

/// Where a rendering writes: refuses to grow past [`MAX_PROMPT_BYTES`].
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_PROMPT_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("the prompt is too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A panic inside minijinja, as its error.
fn panicked(panic: &(dyn std::any::Any + Send)) -> Error {
    let why = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or(panic.downcast_ref::<&str>().copied())
        .unwrap_or("panic");
    Error::new(
        ErrorKind::InvalidOperation,
        format!("the template engine failed: {why}"),
    )
}

/// An error and its causes on one line (minijinja's alternate form would also dump the
/// template's variables, the whole conversation, into the message).
fn error_chain(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// transformers marks the assistant's part of a template with `{% generation %}` ...
/// `{% endgeneration %}` (to compute a training mask); when rendering, the block is just
/// its body. minijinja has no such tag: the markers become an always-true `if`, keeping
/// their whitespace control.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        // The `%}` that closes this tag starts after its `{%` (in `{%}` they overlap).
        let Some(close) = tag[2..].find("%}").map(|c| c + 2) else {
            break;
        };
        let inner = &tag[2..close];
        let (open_trim, body) = match inner.strip_prefix(['-', '+']) {
            Some(body) => (&inner[..1], body),
            None => ("", inner),
        };
        let (body, close_trim) = match body.strip_suffix(['-', '+']) {
            Some(body) => (body, &inner[inner.len() - 1..]),
            None => (body, ""),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => out.push_str(&format!("{{%{open_trim} {r} {close_trim}%}}")),
            None => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out
}

/// A UTC time formatted as Python's `strftime` does, for templates such as Llama 3.2's that
/// print today's date; a format with an unknown `%` directive is a template error.
fn strftime(fmt: &str, secs: u64) -> Result<String, Error> {
    let error = |why: &str| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now({fmt:?}): {why}"),
        )
    };
    let items = StrftimeItems::new(fmt)
        .parse()
        .map_err(|_| error("not a format Python's strftime knows"))?;
    let when = i64::try_from(secs)
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or_else(|| error("the clock is out of range"))?;
    Ok(when.format_with_items(items.iter()).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(Some(CHATML), "<s>", "</s>").unwrap();
        let out = t.render(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t.render(&[Message::new("user", "Hi")], false).unwrap();
        assert!(!out.contains("assistant"));
    }

    #[test]
    fn gemma_files_without_a_template_get_gemma_turns() {
        let t = ChatTemplate::for_architecture(None, "gemma3", "<bos>", "<eos>").unwrap();
        assert!(t.is_fallback);
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", "Hi "),
            Message::new("assistant", "Hello!"),
            Message::new("user", "Bye"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        // Other families keep the Mistral fallback; a file's own template always wins.
        let llama = ChatTemplate::for_architecture(None, "llama", "<s>", "</s>").unwrap();
        assert!(
            llama
                .render(&[Message::new("user", "Hi")], true)
                .unwrap()
                .contains("[INST]")
        );
        let own = ChatTemplate::for_architecture(Some(CHATML), "gemma3", "<s>", "</s>").unwrap();
        assert!(!own.is_fallback);
    }

    #[test]
    fn mistral_fallback_folds_the_system_prompt_into_the_first_turn() {
        let t = ChatTemplate::new(None, "<s>", "</s>").unwrap();
        assert!(t.is_fallback);
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
            Message::new("user", "Bye"),
        ];
        let out = t.render(&msgs, true).unwrap();
        assert_eq!(
            out,
            "<s>[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] Bye [/INST]"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip().upper() }}";
        let t = ChatTemplate::new(Some(src), "", "").unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false).unwrap(),
            "HI"
        );
        let err = t
            .render(&[Message::new("assistant", "x")], false)
            .unwrap_err();
        assert!(format!("{err:#}").contains("first must be user"), "{err:#}");
    }

    /// A model file's template is untrusted: one that loops (almost) for ever must fail
    /// fast with a message that says why, not hold a thread.
    #[test]
    fn a_template_that_loops_for_ever_errors_out_in_bounded_time() {
        let src = "{% for a in range(100000) %}{% for b in range(100000) %}{% set c = a * b %}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(Some(src), "", "").unwrap();
        let start = std::time::Instant::now();
        let err = t.render(&[Message::new("user", "hi")], true).unwrap_err();
        let took = start.elapsed();
        assert!(
            format!("{err:#}").contains("more work than allowed"),
            "{err:#}"
        );
        // 10^10 iterations would take hours; the cap stops it within seconds even in a
        // debug build.
        assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
        eprintln!("stopped after {took:?}");
    }

    #[test]
    fn real_conversations_stay_far_below_the_fuel_cap() {
        // A long conversation with tools (the largest real templates use about 4,000 steps
        // for six messages and two tools).
        let src = "{% for m in messages %}{% for t in tools %}{{ t | tojson }}{% endfor %}{{ m.role }}: {{ m.content | trim }}\n{% endfor %}";
        let t = ChatTemplate::new(Some(src), "", "").unwrap();
        let messages: Vec<Message> = (0..500)
            .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "some text"))
            .collect();
        let tools = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        assert!(t.render_with_tools(&messages, Some(&tools), true).is_ok());
    }

    #[test]
    fn template_kwargs_reach_the_template_and_cannot_replace_its_variables() {
        let src = "{{ messages[0].content }}{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}";
        let t = ChatTemplate::new(Some(src), "", "").unwrap();
        let hi = [Message::new("user", "hi")];
        let off: serde_json::Map<_, _> =
            serde_json::json!({"enable_thinking": false, "messages": []})
                .as_object()
                .unwrap()
                .clone();
        assert_eq!(
            t.render_with_kwargs(&hi, None, &off, true).unwrap(),
            "hi<think></think>"
        );
        assert_eq!(t.render(&hi, true).unwrap(), "hi");
    }

    #[test]
    fn a_broken_template_is_an_error_not_a_panic() {
        assert!(ChatTemplate::new(Some("{% for x in %}"), "", "").is_err());
        // Found by fuzzing (fuzz/regressions/template/): a `{%` whose `%` also starts `%}`.
        for src in ["{%}", "a {%} b {% endgeneration %}", "{%-}", "{%+%}"] {
            let _ = ChatTemplate::new(Some(src), "", "");
        }
    }

    /// Found by fuzzing (fuzz/regressions/template/): a sequence repeated past `usize`
    /// panics minijinja (an overflow), and one repeated less writes gigabytes in one step
    /// (fuel counts steps). Both are errors.
    #[test]
    fn a_repeated_sequence_is_an_error_not_a_panic_or_gigabytes() {
        let hi = [
            Message::new("user", "hi"),
            Message::new("assistant", "hello"),
        ];
        for src in [
            "{{ messages * 999999999 * 999999999 * 999999999 }}",
            "{{ [1, 2] * 999999999 * 999999999 * 999999999 }}",
            "{{ messages * 200000 }}",
            "{{ (messages * 99999999) | tojson }}",
        ] {
            let t = ChatTemplate::new(Some(src), "", "").unwrap();
            assert!(t.render(&hi, true).is_err(), "{src}");
        }
    }

    /// Found by fuzzing (fuzz/regressions/template/): each `tojson` of a string escapes its
    /// quotes, so fifty in a row grow a value past any memory; fuel counts filters, not bytes.
    /// Past its cap, `tojson` is an error.
    #[test]
    fn chained_tojson_is_capped_not_a_memory_exhaustion() {
        let src = format!("{{{{ true{} }}}}", " | tojson".repeat(60));
        let t = ChatTemplate::new(Some(&src), "", "").unwrap();
        let e = t.render(&[Message::new("user", "hi")], true).unwrap_err();
        assert!(format!("{e:#}").contains("tojson"), "{e:#}");
        let wide =
            ChatTemplate::new(Some("{{ messages | tojson(indent=999999999) }}"), "", "").unwrap();
        assert!(wide.render(&[Message::new("user", "hi")], true).is_err());
    }

    /// `strftime_now(fmt)` rendered with the clock fixed at `unix_secs`.
    fn strftime_now(fmt: &str, unix_secs: u64) -> Result<String> {
        let source = format!("{{{{ strftime_now({fmt:?}) }}}}");
        ChatTemplate::with_fixed_clock(Some(&source), "", "", unix_secs)?.render(&[], false)
    }

    #[test]
    fn strftime_now_prints_utc_dates() {
        assert_eq!(strftime_now("%Y-%m-%d", 0).unwrap(), "1970-01-01");
        assert_eq!(
            strftime_now("%d %b %Y", 20_819 * 86_400).unwrap(),
            "01 Jan 2027"
        );
        assert_eq!(
            strftime_now("%B %d, %Y %H:%M:%S %%", 11_016 * 86_400 + 3723).unwrap(),
            "February 29, 2000 01:02:03 %"
        );
        // As Python's strftime on Linux: weekdays and unpadded days (Llama 3.1's "26 Jul 2024").
        assert_eq!(
            strftime_now("%A %-d %B %Y", 1_741_064_767).unwrap(),
            "Tuesday 4 March 2025"
        );
    }

    #[test]
    fn strftime_now_refuses_a_format_it_does_not_know() {
        let err = strftime_now("%Q", 0).unwrap_err();
        assert!(format!("{err:#}").contains("%Q"), "{err:#}");
    }
}
