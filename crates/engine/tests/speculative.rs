//! Speculative decoding (prompt lookup) and grammar fast-forward change how many forward
//! passes an output takes, never the output: the same tokens, token for token, greedy or
//! seeded, free or under a JSON schema, alone or batched with other requests.
//!
//! The models come from `VERRE_SMOLLM2_GGUF` and `VERRE_QWEN05_GGUF` (scripts/test.sh
//! pulls them); a test whose model is missing is skipped.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use verre_engine::engine::{
    EngineEvent, EngineHandle, EngineMetrics, EngineOptions, EngineRequest,
};
use verre_engine::{
    FinishReason, GenerateRequest, GrammarSpec, LoadedModel, Message, SamplingParams,
};

fn load(var: &str) -> Option<Arc<LoadedModel>> {
    match std::env::var_os(var) {
        Some(p) => Some(Arc::new(LoadedModel::load(PathBuf::from(p)).unwrap())),
        None => {
            eprintln!("skipped: set {var} to the model file");
            None
        }
    }
}

const INVOICE: &str = "INVOICE
Invoice number: INV-2024-0457
Date: 2024-03-18
From: Quality Hosting AG, Uferstrasse 90, 4057 Basel, Switzerland
To: Atelier Moreau SARL, 12 rue des Lilas, 69003 Lyon, France

Description                     Qty   Unit price   Amount
Managed server M (March 2024)     1     149.00 EUR   149.00 EUR
Backup storage 500 GB             2      12.50 EUR    25.00 EUR
SSL certificate (1 year)          1      39.00 EUR    39.00 EUR

Total excluding VAT: 213.00 EUR
VAT 20%: 42.60 EUR
Total due: 255.60 EUR
Payment within 30 days to IBAN CH93 0076 2011 6238 5295 7.";

fn invoice_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "invoice_number": {"type": "string"},
            "date": {"type": "string"},
            "vendor": {"type": "string"},
            "customer": {"type": "string"},
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "description": {"type": "string"},
                        "amount": {"type": "number"}
                    },
                    "required": ["description", "amount"]
                }
            },
            "total": {"type": "number"},
            "currency": {"type": "string"}
        },
        "required": ["invoice_number", "date", "vendor", "customer", "lines", "total", "currency"]
    })
}

fn chat(model: &LoadedModel, prompt: &str, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: model.chat_prompt(&[Message::new("user", prompt)]).unwrap(),
        max_tokens,
        ..Default::default()
    }
}

fn seeded(mut r: GenerateRequest, seed: u64) -> GenerateRequest {
    r.sampling = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: Some(seed),
        ..Default::default()
    };
    r
}

fn extraction(model: &LoadedModel, max_tokens: usize) -> GenerateRequest {
    let mut r = chat(
        model,
        &format!("Extract the invoice fields as JSON.\n\n{INVOICE}"),
        max_tokens,
    );
    r.grammar = Some(
        model
            .compile_grammar(&GrammarSpec::JsonSchema(invoice_schema()))
            .unwrap(),
    );
    r
}

/// The prompts every comparison runs: copying from the prompt (where drafts are right),
/// a plain question (where they are few), seeded sampling, and a schema extraction.
fn requests(model: &LoadedModel, max_tokens: usize) -> Vec<GenerateRequest> {
    let copy = format!("Repeat the following invoice word for word.\n\n{INVOICE}");
    vec![
        chat(model, &copy, max_tokens),
        chat(
            model,
            "What is the capital of France? Answer in one sentence.",
            max_tokens,
        ),
        seeded(chat(model, &copy, max_tokens), 7),
        seeded(
            chat(model, "Write a short story about a lighthouse.", max_tokens),
            11,
        ),
        extraction(model, 4 * max_tokens),
    ]
}

struct Output {
    tokens: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
}

/// Submit every request at once (they batch), wait for all, and the engine's counters.
fn run(engine: &EngineHandle, requests: Vec<EngineRequest>) -> (Vec<Output>, EngineMetrics) {
    let streams: Vec<_> = requests
        .into_iter()
        .map(|r| engine.submit(r).unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outputs = rt.block_on(async {
        let mut outputs = Vec::new();
        for mut stream in streams {
            let mut out = Output {
                tokens: Vec::new(),
                text: String::new(),
                finish: None,
            };
            while let Some(ev) = stream.recv().await {
                match ev {
                    EngineEvent::Token { sampled, text, .. } => {
                        out.tokens.push(sampled.token);
                        out.text.push_str(&text);
                    }
                    EngineEvent::Finished { reason, .. } => out.finish = Some(reason),
                    EngineEvent::Failed(e) => panic!("{e}"),
                    _ => {}
                }
            }
            outputs.push(out);
        }
        outputs
    });
    let mut watch = engine.watch_metrics();
    let metrics = *rt
        .block_on(watch.wait_for(|m| m.running == 0 && m.waiting == 0))
        .unwrap();
    (outputs, metrics)
}

fn spawn(model: &Arc<LoadedModel>, draft_tokens: usize, fast_forward: bool) -> EngineHandle {
    let options = EngineOptions {
        draft_tokens,
        grammar_fast_forward: fast_forward,
        ..Default::default()
    };
    EngineHandle::spawn(model.clone(), options).unwrap()
}

/// The same requests through an engine without speculation, one with fast-forward only and
/// one with both: the same outputs, in fewer forward passes.
fn same_outputs_fewer_steps(model: Arc<LoadedModel>, max_tokens: usize) {
    let reqs = requests(&model, max_tokens);
    let as_engine = |reqs: &[GenerateRequest]| -> Vec<EngineRequest> {
        reqs.iter().cloned().map(EngineRequest::from).collect()
    };
    let (plain, m_plain) = run(&spawn(&model, 0, false), as_engine(&reqs));
    let (ff, m_ff) = run(&spawn(&model, 0, true), as_engine(&reqs));
    let (spec, m_spec) = run(&spawn(&model, 8, true), as_engine(&reqs));
    for (i, p) in plain.iter().enumerate() {
        for (name, other) in [("fast-forward", &ff[i]), ("speculative", &spec[i])] {
            assert_eq!(
                other.tokens, p.tokens,
                "request {i} with {name}:\n{}\n--- without:\n{}",
                other.text, p.text
            );
            assert_eq!(other.text, p.text);
            assert_eq!(other.finish, p.finish, "request {i} with {name}");
        }
    }
    let extracted: serde_json::Value =
        serde_json::from_str(&plain[4].text).unwrap_or_else(|e| panic!("{e}: {}", plain[4].text));
    assert!(extracted.get("invoice_number").is_some(), "{extracted}");

    assert_eq!(
        (m_plain.draft_tokens, m_plain.accepted_draft_tokens),
        (0, 0)
    );
    assert_eq!(m_plain.generation_tokens, m_spec.generation_tokens);
    // Fast-forward alone drafts only what the schema forces: nearly all of it is taken.
    assert!(m_ff.accepted_draft_tokens > 0, "{m_ff:?}");
    assert!(
        m_ff.accepted_draft_tokens * 10 >= m_ff.draft_tokens * 9,
        "forced tokens are the model's choice too: {m_ff:?}"
    );
    assert!(m_ff.steps < m_plain.steps, "{m_ff:?} vs {m_plain:?}");
    assert!(
        m_spec.accepted_draft_tokens > m_ff.accepted_draft_tokens,
        "{m_spec:?}"
    );
    assert!(m_spec.steps < m_ff.steps, "{m_spec:?} vs {m_ff:?}");
    eprintln!(
        "{}: forward passes for {} tokens: {} plain, {} with fast-forward, {} with speculation \
         ({} of {} drafts accepted)",
        model.path.display(),
        m_plain.generation_tokens,
        m_plain.steps,
        m_ff.steps,
        m_spec.steps,
        m_spec.accepted_draft_tokens,
        m_spec.draft_tokens
    );
}

#[test]
fn smollm2_outputs_are_the_same_with_speculation_and_fast_forward() {
    let Some(model) = load("VERRE_SMOLLM2_GGUF") else {
        return;
    };
    same_outputs_fewer_steps(model, 96);
}

#[test]
fn qwen05_outputs_are_the_same_with_speculation_and_fast_forward() {
    let Some(model) = load("VERRE_QWEN05_GGUF") else {
        return;
    };
    same_outputs_fewer_steps(model, 48);
}

/// `speculative: Some(false)` on a request turns both off for it alone.
#[test]
fn a_request_can_turn_speculation_off() {
    let Some(model) = load("VERRE_SMOLLM2_GGUF") else {
        return;
    };
    let engine = spawn(&model, 8, true);
    let mut off = EngineRequest::from(extraction(&model, 120));
    off.speculative = Some(false);
    let (_, m) = run(&engine, vec![off]);
    assert_eq!(
        (m.draft_tokens, m.generation_tokens > 0),
        (0, true),
        "{m:?}"
    );
    let (_, m) = run(&engine, vec![extraction(&model, 120).into()]);
    assert!(m.draft_tokens > 0, "{m:?}");
}
