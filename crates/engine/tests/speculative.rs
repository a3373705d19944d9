//! Speculative decoding (prompt lookup) and grammar fast-forward change how many forward
//! passes an output takes, never the output: the same tokens, token for token, greedy or
//! seeded, free or under a JSON schema, alone or batched with other requests.
//!
//! The models come from `VERRE_SMOLLM2_GGUF` and `VERRE_QWEN05_GGUF` (scripts/test.sh
//! pulls them); a test whose model is missing is skipped.

use std::sync::Arc;

use serde_json::json;
use verre_engine::engine::{
    EngineEvent, EngineHandle, EngineMetrics, EngineOptions, EngineRequest,
};
use verre_engine::{
    DraftModel, FinishReason, GenerateRequest, GrammarSpec, LoadedModel, Message, SamplingParams,
};

mod common;
use common::load;

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

/// An engine with `draft` drafting for `target`.
fn spawn_drafted(target: &Arc<LoadedModel>, draft: &Arc<LoadedModel>) -> EngineHandle {
    let options = EngineOptions {
        draft_model: Some(DraftModel::new(draft.clone())),
        ..Default::default()
    };
    EngineHandle::spawn(target.clone(), options).unwrap()
}

/// Greedy requests, batched: free chat, copying, and a schema extraction (where the draft
/// model writes where prompt lookup finds nothing, its guesses cut where the grammar
/// forbids them).
fn greedy_requests(model: &LoadedModel, max_tokens: usize) -> Vec<GenerateRequest> {
    vec![
        chat(
            model,
            "Write a Python function that checks whether a number is prime.",
            max_tokens,
        ),
        chat(
            model,
            "What is the capital of France? Answer in one sentence.",
            max_tokens,
        ),
        chat(
            model,
            &format!("Repeat the following invoice word for word.\n\n{INVOICE}"),
            max_tokens,
        ),
        extraction(model, 3 * max_tokens),
    ]
}

/// The draft model's drafts change the forward passes, never a greedy output.
fn a_draft_model_keeps_greedy_outputs(
    target: Arc<LoadedModel>,
    draft: Arc<LoadedModel>,
    max_tokens: usize,
) -> (EngineMetrics, EngineMetrics) {
    let reqs: Vec<EngineRequest> = greedy_requests(&target, max_tokens)
        .into_iter()
        .map(EngineRequest::from)
        .collect();
    let (plain, m_plain) = run(&spawn(&target, 0, false), reqs.clone());
    let (drafted, m) = run(&spawn_drafted(&target, &draft), reqs);
    for (i, (p, d)) in plain.iter().zip(&drafted).enumerate() {
        assert_eq!(
            d.tokens, p.tokens,
            "request {i} with the draft model:\n{}\n--- without:\n{}",
            d.text, p.text
        );
        assert_eq!((&d.text, d.finish), (&p.text, p.finish), "request {i}");
    }
    assert!(m.model_draft_tokens > 0, "{m:?}");
    assert_eq!(m.generation_tokens, m_plain.generation_tokens);
    eprintln!(
        "{} drafting for {}: {} forward passes for {} tokens ({} without); the model drafted {} \
         tokens, {} accepted",
        draft.path.display(),
        target.path.display(),
        m.steps,
        m.generation_tokens,
        m_plain.steps,
        m.model_draft_tokens,
        m.model_accepted_draft_tokens,
    );
    (m_plain, m)
}

/// A model drafting for itself guesses what it will write: nearly every draft is taken.
#[test]
fn smollm2_drafting_for_itself_is_accepted_and_changes_nothing() {
    let Some(model) = load("VERRE_SMOLLM2_GGUF") else {
        return;
    };
    let (m_plain, m) = a_draft_model_keeps_greedy_outputs(model.clone(), model, 64);
    assert!(
        m.model_accepted_draft_tokens * 100 >= m.model_draft_tokens * 95,
        "a model drafting for itself: {m:?}"
    );
    assert!(m.steps * 2 < m_plain.steps, "{m:?} vs {m_plain:?}");
}

/// qwen2.5-coder-0.5b drafting for qwen2.5-coder-1.5b (the pair the docs name).
#[test]
fn qwen05_drafting_for_qwen15_changes_no_greedy_output() {
    let (Some(target), Some(draft)) = (load("VERRE_QWEN15_GGUF"), load("VERRE_QWEN05_GGUF")) else {
        return;
    };
    let (m_plain, m) = a_draft_model_keeps_greedy_outputs(target, draft, 48);
    assert!(m.steps < m_plain.steps, "{m:?} vs {m_plain:?}");
}

/// A drafter with another vocabulary is refused, naming both files.
#[test]
fn a_draft_model_with_another_vocabulary_is_refused() {
    let (Some(target), Some(draft)) = (load("VERRE_QWEN05_GGUF"), load("VERRE_SMOLLM2_GGUF"))
    else {
        return;
    };
    let options = EngineOptions {
        draft_model: Some(DraftModel::new(draft.clone())),
        ..Default::default()
    };
    let e = match EngineHandle::spawn(target.clone(), options) {
        Ok(_) => panic!("SmolLM2 accepted as a drafter for Qwen"),
        Err(e) => e.to_string(),
    };
    for path in [&draft.path, &target.path] {
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
}

/// Seeded sampling with a draft model is distributed as without it: the second and third
/// tokens of 400 seeded answers, with and without, compared by a two-sample chi-square
/// test (p < 0.001). Token for token they may differ: a guess is kept with probability
/// min(1, p/q), not by drawing from p.
#[test]
fn sampling_with_a_draft_model_is_distributed_as_without() {
    let Some(model) = load("VERRE_SMOLLM2_GGUF") else {
        return;
    };
    let n = 400u64;
    let reqs: Vec<EngineRequest> = (0..n)
        .map(|seed| {
            let mut r = chat(&model, "Name an animal and say one thing about it.", 3);
            r.sampling = SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                ..Default::default()
            };
            r.into()
        })
        .collect();
    let counts = |engine: &EngineHandle| {
        let mut counts = std::collections::HashMap::<(usize, u32), u64>::new();
        let mut metrics = EngineMetrics::default();
        for batch in reqs.chunks(32) {
            let (outs, m) = run(engine, batch.to_vec());
            metrics = m;
            for out in outs {
                for (pos, &t) in out.tokens.iter().enumerate().skip(1) {
                    *counts.entry((pos, t)).or_default() += 1;
                }
            }
        }
        (counts, metrics)
    };
    let (plain, _) = counts(&spawn(&model, 0, false));
    let (drafted, m) = counts(&spawn_drafted(&model, &model));
    assert!(m.model_draft_tokens > 100, "{m:?}");
    // Categories seen at least 10 times in all; the rarer ones pooled per position.
    let mut keys: Vec<(usize, u32)> = plain.keys().chain(drafted.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    let mut cells: Vec<(u64, u64)> = Vec::new();
    let mut pooled = std::collections::HashMap::<usize, (u64, u64)>::new();
    for k in keys {
        let (a, b) = (
            plain.get(&k).copied().unwrap_or(0),
            drafted.get(&k).copied().unwrap_or(0),
        );
        if a + b >= 10 {
            cells.push((a, b));
        } else {
            let p = pooled.entry(k.0).or_default();
            *p = (p.0 + a, p.1 + b);
        }
    }
    cells.extend(pooled.into_values().filter(|(a, b)| a + b > 0));
    let chi2: f64 = cells
        .iter()
        .map(|&(a, b)| (a as f64 - b as f64).powi(2) / (a + b) as f64)
        .sum();
    // Two positions, each a distribution: cells - 2 degrees of freedom; the 0.001 quantile
    // of chi-square is under df + 3.5 sqrt(2 df) + 6 for these df.
    let df = (cells.len() - 2) as f64;
    let bound = df + 3.5 * (2.0 * df).sqrt() + 6.0;
    assert!(
        chi2 < bound,
        "chi2 {chi2} over {} cells (bound {bound})",
        cells.len()
    );
    eprintln!(
        "chi2 {chi2:.1} over {} cells (bound {bound:.1}); {m:?}",
        cells.len()
    );
}
