//! The fuzz targets: each reads untrusted bytes the way verre does, and answers a short
//! class of its outcome (a new class keeps the input). A panic is a finding; so is an
//! assertion here, where a target checks a property (the SSE framer gives the same events
//! however the bytes arrive; a request parser refuses bad input with a 400, never a 500).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use verre_engine::gguf::GgufFile;
use verre_engine::model::llama::LlamaConfig;
use verre_engine::tokenizer::Tokenizer;
use verre_engine::{ChatTemplate, Message};
use verre_intake::isolation::{ChildParser, MailParser, ParserLimits};
use verre_intake::parse::{DocumentText, ParseError, parse_mail_reading};
use verre_intake::pipeline::Pipeline;
use verre_server::openai::request::{ChatRequest, CompletionRequest, EmbeddingRequest};
use verre_server::sse;

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    /// What it reads, for `--list`.
    pub about: &'static str,
    /// Tokens the mutator inserts: words of the input's format.
    pub tokens: &'static [&'static [u8]],
    /// Mutants are cut to this length.
    pub max_len: usize,
    pub run: fn(&[u8]) -> String,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "gguf",
        about: "a GGUF file: header, metadata, model configuration, tokenizer (crates/engine/src/gguf.rs)",
        tokens: &[
            b"GGUF",
            b"general.architecture",
            b"general.alignment",
            b"llama",
            b"tokenizer.ggml.tokens",
            b"tokenizer.ggml.merges",
            b"tokenizer.ggml.model",
            b"gpt2",
            b"tokenizer.ggml.token_type",
            b"llama.embedding_length",
            b"llama.attention.head_count",
            b"llama.block_count",
            b"tokenizer.chat_template",
            b"\x08\x00\x00\x00",
            b"\x09\x00\x00\x00",
            b"\xff\xff\xff\xff\xff\xff\xff\x7f",
        ],
        max_len: 1 << 16,
        run: gguf,
    },
    Target {
        name: "mime",
        about: "a raw mail's MIME structure and parts, documents left unread (crates/intake/src/parse.rs)",
        tokens: MIME_TOKENS,
        max_len: 1 << 16,
        run: mime,
    },
    Target {
        name: "mime-child",
        about: "a raw mail with its documents (PDFs) through the child-process parser (crates/intake/src/isolation.rs)",
        tokens: MIME_TOKENS,
        max_len: 1 << 17,
        run: mime_child,
    },
    Target {
        name: "pipeline",
        about: "a pipeline file (TOML, templates, routes; crates/intake/src/pipeline.rs)",
        tokens: &[
            b"[extract]",
            b"[[route]]",
            b"[[action]]",
            b"[crossref]",
            b"[[crossref.lookup]]",
            b"[draft]",
            b"[limits]",
            b"[[labels]]",
            b"name = ",
            b"when = ",
            b"schema = ",
            b"{{ ",
            b" }}",
            b"{% for x in message %}",
            b"{% endfor %}",
            b"\"\"\"",
            b"'''",
            b"= [",
            b"= {",
            b"kind = \"webhook\"",
            b"kind = \"reply\"",
        ],
        max_len: 1 << 14,
        run: pipeline,
    },
    Target {
        name: "template",
        about: "a model's chat template rendered with a conversation and tools (crates/engine/src/chat.rs)",
        tokens: &[
            b"{{ ",
            b" }}",
            b"{% ",
            b" %}",
            b"{%- for m in messages %}",
            b"{% endfor %}",
            b"{% if ",
            b"{% endif %}",
            b"{% set x = ",
            b"{% macro f() %}",
            b"{% endmacro %}",
            b"messages",
            b"message['content']",
            b"tools",
            b" | tojson",
            b" * 999999999",
            b"range(999999999)",
            b"raise_exception('x')",
            b"strftime_now('%Y')",
            b".split(",
            b".upper()",
            b" ~ ",
            b"loop.index",
            b"namespace(",
            b"{{ f() }}",
            b"[0]",
        ],
        max_len: 1 << 13,
        run: template,
    },
    Target {
        name: "openai",
        about: "an OpenAI request body: chat, completions, embeddings (crates/server/src/openai/request.rs)",
        tokens: &[
            b"\"model\"",
            b"\"messages\"",
            b"\"role\"",
            b"\"content\"",
            b"\"tools\"",
            b"\"tool_choice\"",
            b"\"response_format\"",
            b"\"json_schema\"",
            b"\"max_tokens\"",
            b"\"temperature\"",
            b"\"logprobs\"",
            b"\"top_logprobs\"",
            b"\"stream\"",
            b"\"stream_options\"",
            b"\"stop\"",
            b"\"n\"",
            b"\"input\"",
            b"\"prompt\"",
            b"\"seed\"",
            b"\"logit_bias\"",
            b"\"\\ud83d\"",
            b"1e999",
            b"-0",
            b"null",
            b"[[[[[[[[",
            b"{\"a\":",
        ],
        max_len: 1 << 14,
        run: openai,
    },
    Target {
        name: "sse",
        about: "an upstream's server-sent event stream, framed in any chunking (crates/server/src/sse.rs)",
        tokens: &[
            b"data: ",
            b"data:",
            b"event: ",
            b": keep-alive",
            b"\r\n",
            b"\n\n",
            b"\r\r",
            b"\r\n\r\n",
            b"[DONE]",
            b"{\"choices\":[]}",
        ],
        max_len: 1 << 12,
        run: sse_framing,
    },
];

const MIME_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"Content-Type: ",
    b"multipart/mixed; boundary=\"b\"",
    b"multipart/alternative; boundary=b",
    b"--b\r\n",
    b"--b--\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Disposition: attachment; filename=\"a.pdf\"\r\n",
    b"application/pdf",
    b"message/rfc822",
    b"text/html; charset=utf-8",
    b"=?utf-8?b?w4k=?=",
    b"=?iso-8859-1?q?=E9?=",
    b"=C3=A9",
    b"=\r\n",
    b"From: ",
    b"Reply-To: ",
    b"Authentication-Results: mx; dmarc=pass\r\n",
    b"%PDF-1.4\n",
    b"/Filter /FlateDecode",
    b"/Type /XObject /Subtype /Form",
    b"stream\n",
    b"endstream",
    b" 0 R",
];

/// The first words of a message, digits as `#`: an outcome class.
fn class(prefix: &str, message: &str) -> String {
    let words: Vec<String> = message
        .split_whitespace()
        .take(6)
        .map(|w| {
            w.chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .take(24)
                .collect()
        })
        .collect();
    format!("{prefix}:{}", words.join(" "))
}

fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

fn gguf(data: &[u8]) -> String {
    thread_local! {
        static PATH: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    }
    // verre reads models from files (memory-mapped): the input is one.
    let path = PATH.with(|p| {
        p.borrow_mut()
            .get_or_insert_with(|| {
                scratch_dir().join(format!("model-{:?}.gguf", std::thread::current().id()))
            })
            .clone()
    });
    std::fs::write(&path, data).expect("writing the scratch model file");
    let file = match GgufFile::open(&path) {
        Ok(f) => f,
        Err(e) => return class("open", &format!("{:#}", e.root_cause())),
    };
    let mut out = format!("open:ok:{}", file.metadata().len().min(8));
    match file.architecture() {
        Ok(arch) => match LlamaConfig::from_gguf(&file, &arch) {
            Ok(_) => out.push_str(":config"),
            Err(e) => out.push_str(&class(":config", &e.to_string())),
        },
        Err(e) => out.push_str(&class(":arch", &e.to_string())),
    }
    match Tokenizer::from_gguf_metadata(file.metadata()) {
        Ok(t) => {
            out.push_str(":tokenizer");
            if let Ok(ids) = t.encode("Hello wörld <s> \u{1F600}", true, true) {
                let _ = t.decode(&ids, false);
                let _ = t.decode(&[0, 1, 2, u32::MAX], true);
            }
        }
        Err(e) => out.push_str(&class(":tokenizer", &e.to_string())),
    }
    out
}

fn mime(raw: &[u8]) -> String {
    let parsed = parse_mail_reading(raw, &mut |_, _| DocumentText::Unreadable("not read".into()));
    match parsed {
        Ok(mail) => {
            let kinds: Vec<&str> = mail.parts.iter().map(|p| p.kind.as_str()).collect();
            format!(
                "ok:{}",
                kinds.join(",").chars().take(40).collect::<String>()
            )
        }
        Err(e) => class("err", &e.to_string()),
    }
}

fn mime_child(raw: &[u8]) -> String {
    static PARSER: OnceLock<MailParser> = OnceLock::new();
    let parser = PARSER.get_or_init(|| {
        MailParser::Child(ChildParser {
            program: std::env::current_exe().expect("the fuzz binary's path"),
            limits: ParserLimits {
                memory_bytes: 512 << 20,
                cpu_seconds: 5,
                timeout: Duration::from_secs(10),
            },
        })
    });
    match parser.parse(raw) {
        Ok(mail) => {
            let notes: Vec<String> = mail
                .parts
                .iter()
                .filter_map(|p| p.note.as_deref())
                .map(|n| class("note", n))
                .collect();
            format!("ok:{}:{}", mail.parts.len().min(4), notes.join(","))
        }
        Err(ParseError::Unreadable(why)) => class("unreadable", &why),
        Err(e) => class("err", &e.to_string()),
    }
}

fn pipeline(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    match Pipeline::parse(Path::new("fuzz/pipeline.toml"), &text) {
        Ok(p) => format!("ok:{}", p.routes.len().min(4)),
        Err(e) => class("err", &e.reason),
    }
}

fn template(source: &[u8]) -> String {
    let source = String::from_utf8_lossy(source);
    let template = match ChatTemplate::with_fixed_clock(Some(&source), "<s>", "</s>", 0) {
        Ok(t) => t,
        Err(e) => return class("compile", &format!("{e:#}")),
    };
    let messages = [
        Message::new("system", "You are terse."),
        Message::new("user", "Hello {{ 7 * 7 }} {% raw %}"),
        Message::new("assistant", "Hi."),
        Message::new("user", "Again \u{1F600}"),
    ];
    let tools = serde_json::json!([{"type": "function", "function": {
        "name": "lookup", "description": "Find a customer.",
        "parameters": {"type": "object", "properties": {"email": {"type": "string"}}}}}]);
    let plain = template.render(&messages, true);
    let with_tools = template.render_with_tools(&messages, Some(&tools), false);
    match (plain, with_tools) {
        (Ok(a), Ok(_)) => format!("ok:{}", a.len().min(1)),
        (Err(e), _) | (_, Err(e)) => class("render", &format!("{e:#}")),
    }
}

fn openai(body: &[u8]) -> String {
    let mut out = String::new();
    for (what, result) in [
        ("chat", ChatRequest::parse(body).map(|_| ())),
        ("completion", CompletionRequest::parse(body).map(|_| ())),
        ("embedding", EmbeddingRequest::parse(body).map(|_| ())),
    ] {
        match result {
            Ok(()) => out.push_str(&format!("{what}:ok ")),
            Err(e) => {
                // Bad input is the client's: a 400 with a message, never a 500.
                assert!(
                    e.status.is_client_error(),
                    "{what}: bad input answered {}: {}",
                    e.status,
                    e.body()
                );
                out.push_str(&class(what, &e.message));
                out.push(' ');
            }
        }
    }
    out
}

/// The events of a whole stream, each with its data.
fn events(stream: &[u8]) -> Vec<(Vec<u8>, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some(end) = sse::event_end(rest) {
        assert!(
            end > 0 && end <= rest.len(),
            "event_end {end} of {}",
            rest.len()
        );
        out.push((rest[..end].to_vec(), sse::event_data(&rest[..end])));
        rest = &rest[end..];
    }
    out
}

fn sse_framing(stream: &[u8]) -> String {
    let whole = events(stream);
    // The same bytes arriving in chunks of 1 to 7 bytes frame the same events.
    let mut buffer = Vec::new();
    let mut chunked = Vec::new();
    for (i, chunk) in stream.chunks(1 + stream.len() % 7).enumerate() {
        buffer.extend_from_slice(chunk);
        while let Some(end) = sse::event_end(&buffer) {
            let event: Vec<u8> = buffer.drain(..end).collect();
            let data = sse::event_data(&event);
            chunked.push((event, data));
        }
        let _ = i;
    }
    assert_eq!(whole, chunked, "the chunking changed the events");
    format!(
        "events:{}:{}",
        whole.len().min(4),
        whole.iter().filter(|(_, d)| d.is_some()).count().min(4)
    )
}
