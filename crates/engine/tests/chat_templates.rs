//! verre's chat-template rendering against Python jinja2 as Hugging Face transformers
//! renders templates, on every real template of llama.cpp's `models/templates/` (Mistral
//! Small 3.2, Mistral Nemo, Ministral 3, Devstral, Qwen2.5, Llama 3.x, DeepSeek R1
//! distills, Gemma, and the rest of that folder).
//!
//! The fixture (`tests/fixtures/chat-templates.json`, made by
//! `scripts/render_chat_templates.py`) holds, per template file (keyed by its SHA-256),
//! jinja2's rendering of each scenario: plain chat, a finished conversation, tools offered,
//! a tool call with its result (Mistral's 9-character call ids), parallel calls and an
//! answer, and OpenAI-style ids that Mistral's templates refuse. Each must render to the
//! same text, or fail in both; an error raised by the template itself
//! (`raise_exception`) must carry the same message. The few places where verre renders
//! and jinja2 fails are listed in `KNOWN_DIFFERENCES` with the reason.
//!
//! The templates come from `VERRE_LLAMA_TEMPLATES_DIR` (scripts/test.sh extracts them
//! from the llama-cpp-python 0.3.36 sdist). Without it the test is skipped locally and
//! fails under CI.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use verre_engine::{ChatTemplate, Message};

/// The fixture's fixed clock for `strftime_now`: 2025-03-04T05:06:07.
const FIXTURE_NOW_UNIX: u64 = 1_741_064_767;

/// (template file, scenario, why): where verre cannot or should not render as jinja2 does.
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[
    (NONE_LOOP_COHERE, "chat", NONE_LOOP),
    (NONE_LOOP_COHERE, "no_system_finished", NONE_LOOP),
    (NONE_LOOP_HERMES2, "chat", NONE_LOOP),
    (NONE_LOOP_HERMES2, "no_system_finished", NONE_LOOP),
    (NONE_LOOP_HERMES3, "chat", NONE_LOOP),
    (NONE_LOOP_HERMES3, "no_system_finished", NONE_LOOP),
    (GENERATOR, "tools_offered", GENERATOR_WHY),
    (GENERATOR, "tool_call_and_result", GENERATOR_WHY),
    (GENERATOR, "parallel_calls_then_answer", GENERATOR_WHY),
    (GENERATOR, "openai_call_ids", GENERATOR_WHY),
    (MARKUP, "tools_offered", MARKUP_WHY),
    (MARKUP, "tool_call_and_result", MARKUP_WHY),
    (MARKUP, "parallel_calls_then_answer", MARKUP_WHY),
    (MARKUP, "openai_call_ids", MARKUP_WHY),
];
const NONE_LOOP_COHERE: &str = "CohereForAI-c4ai-command-r-plus-tool_use.jinja";
const NONE_LOOP_HERMES2: &str = "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja";
const NONE_LOOP_HERMES3: &str = "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja";
const NONE_LOOP: &str = "`{% for tool in tools %}` with no tools: Python cannot iterate None and \
     fails; minijinja iterates none as an empty list and renders the conversation without tools";
const GENERATOR: &str = "llama-cpp-deepseek-r1.jinja";
const GENERATOR_WHY: &str = "`tools | map(...) | tojson`: Python's `map` filter gives a generator \
     that json.dumps refuses; minijinja's gives a list, which verre writes as JSON";
const MARKUP: &str = "meetkai-functionary-medium-v3.1.jinja";
const MARKUP_WHY: &str = "`\"...\"|safe + text`: jinja2's Markup HTML-escapes a plain string added \
     to it (`&#34;` for quotes in tool descriptions and JSON); minijinja concatenates as written";

#[derive(Deserialize)]
struct Fixture {
    now: String,
    bos_token: String,
    eos_token: String,
    scenarios: Vec<Scenario>,
    templates: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Scenario {
    name: String,
    messages: Vec<Value>,
    tools: Option<Value>,
    add_generation_prompt: bool,
}

#[derive(Deserialize)]
struct Entry {
    file: String,
    renders: BTreeMap<String, Expected>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expected {
    Text(String),
    Error(String),
}

fn templates_dir() -> Option<PathBuf> {
    match std::env::var_os("VERRE_LLAMA_TEMPLATES_DIR") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("VERRE_LLAMA_TEMPLATES_DIR must point at llama.cpp's models/templates in CI")
        }
        None => {
            eprintln!(
                "skipped: set VERRE_LLAMA_TEMPLATES_DIR to llama.cpp's models/templates (scripts/test.sh does)"
            );
            None
        }
    }
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/chat-templates.json"
    );
    let text = std::fs::read_to_string(path).expect("reading the chat-template fixture");
    serde_json::from_str(&text).expect("parsing the chat-template fixture")
}

/// The scenario's messages as verre's API layer builds them. Re-serialized, they must be
/// the fixture's JSON exactly, or the two renderers would not see the same input.
fn messages(scenario: &Scenario) -> Vec<Message> {
    scenario
        .messages
        .iter()
        .map(|m| {
            let message: Message = serde_json::from_value(m.clone())
                .unwrap_or_else(|e| panic!("{}: message {m}: {e}", scenario.name));
            assert_eq!(
                serde_json::to_value(&message).unwrap(),
                *m,
                "{}: a message field verre does not carry",
                scenario.name
            );
            message
        })
        .collect()
}

/// Where two renderings part, with some context on each side.
fn first_difference(want: &str, got: &str) -> String {
    let at = want
        .char_indices()
        .zip(got.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| want.len().min(got.len()));
    let at = (0..=at)
        .rev()
        .find(|&i| want.is_char_boundary(i) && got.is_char_boundary(i))
        .unwrap_or(0);
    let window = |s: &str| {
        let start = (0..=at.saturating_sub(60))
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        let end = (at + 80).min(s.len());
        let end = (end..=s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(s.len());
        s[start..end].to_string()
    };
    format!(
        "differs at byte {at} (lengths {} vs {}):\n      jinja2: {:?}\n       verre: {:?}",
        want.len(),
        got.len(),
        window(want),
        window(got)
    )
}

#[test]
fn every_llama_cpp_template_renders_as_jinja2_does() {
    let Some(dir) = templates_dir() else {
        return;
    };
    let fixture = fixture();
    assert_eq!(fixture.now, "2025-03-04T05:06:07", "the fixture's clock");

    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jinja"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .jinja file in {}", dir.display());

    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    let mut known_seen = BTreeSet::new();
    let (mut identical, mut both_refuse) = (0, 0);
    for path in &files {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let sha = hex(&Sha256::digest(&bytes));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(entry) = fixture.templates.get(&sha) else {
            failures.push(format!(
                "{name}: not in the fixture (sha256 {sha}); run scripts/render_chat_templates.py"
            ));
            continue;
        };
        seen.insert(sha.clone());
        let source = String::from_utf8(bytes).expect("templates are UTF-8");
        let template = ChatTemplate::with_fixed_clock(
            Some(&source),
            &fixture.bos_token,
            &fixture.eos_token,
            FIXTURE_NOW_UNIX,
        );
        for scenario in &fixture.scenarios {
            let want = entry
                .renders
                .get(&scenario.name)
                .unwrap_or_else(|| panic!("{}: no rendering of {}", entry.file, scenario.name));
            let got = template
                .as_ref()
                .map_err(|e| format!("{e:#}"))
                .and_then(|t| {
                    t.render_with_tools(
                        &messages(scenario),
                        scenario.tools.as_ref(),
                        scenario.add_generation_prompt,
                    )
                    .map_err(|e| format!("{e:#}"))
                });
            let case = format!("{name} / {}", scenario.name);
            let known = KNOWN_DIFFERENCES
                .iter()
                .find(|(f, s, _)| *f == name && *s == scenario.name);
            let mismatch = match (want, got) {
                (Expected::Text(want), Ok(got)) if *want == got => {
                    identical += 1;
                    None
                }
                (Expected::Text(want), Ok(got)) => Some(first_difference(want, &got)),
                (Expected::Text(_), Err(e)) => Some(format!("jinja2 renders, verre fails: {e}")),
                (Expected::Error(py), Ok(_)) => Some(format!("jinja2 fails ({py}), verre renders")),
                (Expected::Error(py), Err(e)) => match py.strip_prefix("TemplateError: ") {
                    // The template's own refusal must read the same.
                    Some(message) if !e.contains(message) => Some(format!(
                        "both fail, with different messages:\n      jinja2: {message}\n       verre: {e}"
                    )),
                    _ => {
                        eprintln!(
                            "refused by both, {case}:\n      jinja2: {py}\n       verre: {e}"
                        );
                        both_refuse += 1;
                        None
                    }
                },
            };
            match (mismatch, known) {
                (None, _) => {}
                (Some(m), Some((_, _, why))) => {
                    known_seen.insert((name.clone(), scenario.name.clone()));
                    eprintln!("known difference, {case}: {why}\n    {m}");
                }
                (Some(m), None) => failures.push(format!("{case}: {m}")),
            }
        }
    }
    for (sha, entry) in &fixture.templates {
        if !seen.contains(sha) {
            failures.push(format!(
                "{}: in the fixture (sha256 {sha}) but not in {}",
                entry.file,
                dir.display()
            ));
        }
    }
    for (file, scenario, _) in KNOWN_DIFFERENCES {
        if !known_seen.contains(&(file.to_string(), scenario.to_string())) {
            failures.push(format!(
                "{file} / {scenario}: listed as a known difference but no longer differs"
            ));
        }
    }
    eprintln!(
        "{} templates x {} scenarios: {identical} identical, {both_refuse} refused by both, {} known differences, {} failures",
        files.len(),
        fixture.scenarios.len(),
        known_seen.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} renderings differ from jinja2:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
