//! Greedy decoding of a prompt gives the same tokens, with bit-identical log-probabilities,
//! whatever else the engine is doing: alone in a fresh engine, after requests that left
//! its prefix in the prefix cache (so only a suffix is prefilled, in other chunks), batched
//! with other requests, with speculation (prompt lookup, grammar fast-forward) on or off,
//! in smaller prefill chunks, under a JSON schema or free. One level down, a forward pass
//! gives each row bit-identical logits however the prompt is cut into chunks, whatever
//! other sequences share the batch and however many threads run it.
//!
//! The models come from `VERRE_SMOLLM2_GGUF`, `VERRE_QWEN05_GGUF` and `VERRE_QWEN15_GGUF`
//! (scripts/test.sh pulls them); a test whose model is missing is skipped.

use std::sync::Arc;

use serde_json::json;
use verre_engine::engine::{EngineEvent, EngineHandle, EngineOptions, EngineRequest};
use verre_engine::kv::SeqKv;
use verre_engine::model::SeqChunk;
use verre_engine::{GenerateRequest, GrammarSpec, LoadedModel, Message};

mod common;
use common::load;

const SYSTEM: &str = "You are an accounts-payable clerk. You read an invoice and copy its key \
                      fields exactly as they are printed, in the JSON form asked for.";

/// An invoice long enough (600-700 tokens) that its prompt is prefilled in several chunks
/// and its attention reads more than one widened block of keys.
fn invoice(customer: &str) -> String {
    let mut s = String::from(
        "[attachment invoice-5.pdf]\n[page 1]\nINVOICE\nInvoice number: INV-2024-0457\n\
         Date: 2024-03-18\nFrom: Quality Hosting AG, Uferstrasse 90, 4057 Basel, Switzerland\n",
    );
    s.push_str(&format!(
        "To: {customer}\n\nDescription   Qty   Unit price   Amount\n"
    ));
    for i in 1..=24 {
        s.push_str(&format!(
            "Managed server M{i} (March 2024)   {}   {}.50 EUR   {}.00 EUR\n",
            i % 3 + 1,
            40 + i,
            (i % 3 + 1) * (40 + i)
        ));
    }
    s.push_str(
        "Total excluding VAT: 2,213.00 EUR\nVAT 20%: 442.60 EUR\nTotal due: 2,655.60 EUR\n\
         Payment within 30 days to IBAN CH93 0076 2011 6238 5295 7, BIC UBSWCHZH80A.\n\
         Quality Hosting AG, CHE-123.456.789 MWST, www.qualityhosting.ch",
    );
    s
}

fn schema() -> serde_json::Value {
    let text = json!({"type": ["string", "null"]});
    json!({
        "type": "object",
        "properties": {
            "invoice_number": {"type": "string"},
            "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
            "amount": {"type": "number"},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "issuer": {"type": "string"},
            "partner_street": text, "partner_zip": text, "partner_city": text,
            "vat": text, "iban": text, "bic": text
        },
        "required": ["invoice_number", "date", "amount", "currency", "issuer", "partner_street",
                     "partner_zip", "partner_city", "vat", "iban", "bic"]
    })
}

fn prompt(model: &LoadedModel, customer: &str, ask: &str) -> Vec<u32> {
    let user = format!("{}\n\n{ask}", invoice(customer));
    model
        .chat_prompt(&[Message::new("system", SYSTEM), Message::new("user", &user)])
        .unwrap()
}

const EXTRACT: &str = "From the invoice above, give its fields as JSON.";

/// The request under test: a greedy extraction under a JSON schema, or free text.
fn request(model: &LoadedModel, constrained: bool, max_tokens: usize) -> GenerateRequest {
    let ask = if constrained {
        EXTRACT
    } else {
        "Who issued this invoice, and what is its total? Answer in two sentences."
    };
    GenerateRequest {
        prompt_ids: prompt(
            model,
            "Atelier Moreau SARL, 12 rue des Lilas, 69003 Lyon",
            ask,
        ),
        max_tokens,
        grammar: constrained.then(|| {
            model
                .compile_grammar(&GrammarSpec::JsonSchema(schema()))
                .unwrap()
        }),
        ..Default::default()
    }
}

/// Other work for the engine: the same invoice for another customer (its prompt shares
/// the system prompt and the invoice's head with the request's, so it fills the prefix
/// cache up to a block boundary inside the document), and an unrelated question.
fn others(model: &LoadedModel, max_tokens: usize) -> Vec<GenerateRequest> {
    let other = |prompt_ids| GenerateRequest {
        prompt_ids,
        max_tokens,
        ..Default::default()
    };
    vec![
        other(prompt(
            model,
            "Boulangerie Petit, 3 place Bellecour, 69002 Lyon",
            EXTRACT,
        )),
        other(
            model
                .chat_prompt(&[Message::new("user", "Write a haiku about invoices.")])
                .unwrap(),
        ),
    ]
}

/// Tokens and log-probabilities (as bits) of each request, submitted together.
fn run(engine: &EngineHandle, requests: &[GenerateRequest]) -> Vec<Vec<(u32, u32)>> {
    let streams: Vec<_> = requests
        .iter()
        .map(|r| engine.submit(EngineRequest::from(r.clone())).unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut outputs = Vec::new();
        for mut stream in streams {
            let mut out = Vec::new();
            while let Some(ev) = stream.recv().await {
                match ev {
                    EngineEvent::Token { sampled, .. } => {
                        out.push((sampled.token, sampled.logprob.to_bits()))
                    }
                    EngineEvent::Failed(e) => panic!("{e}"),
                    _ => {}
                }
            }
            outputs.push(out);
        }
        outputs
    })
}

fn engine(model: &Arc<LoadedModel>, speculative: bool, prefill_chunk: usize) -> EngineHandle {
    let options = EngineOptions {
        prefill_chunk,
        ..EngineOptions::default().speculative(speculative)
    };
    EngineHandle::spawn(model.clone(), options).unwrap()
}

/// The request's greedy output in every engine state named in the module's comment.
fn same_greedy_output_whatever_the_engine_does(
    model: Arc<LoadedModel>,
    constrained: bool,
    max_tokens: usize,
) {
    let req = request(&model, constrained, max_tokens);
    let others = others(&model, max_tokens / 4);
    let text = |out: &[(u32, u32)]| {
        let ids: Vec<u32> = out.iter().map(|t| t.0).collect();
        model.tokenizer.decode(&ids, false).unwrap_or_default()
    };
    let alone = run(&engine(&model, false, 512), std::slice::from_ref(&req)).remove(0);
    assert!(!alone.is_empty());
    let mut cases: Vec<(&str, Vec<(u32, u32)>)> = Vec::new();
    for speculative in [false, true] {
        let e = engine(&model, speculative, 512);
        // The other customer's invoice first: the request then finds its head cached.
        run(&e, &others[..1]);
        cases.push((
            "after a shared prefix",
            run(&e, std::slice::from_ref(&req)).remove(0),
        ));
        // Its own prompt is cached now, but for the last block.
        cases.push((
            "after itself",
            run(&e, std::slice::from_ref(&req)).remove(0),
        ));
        let mut batch = others.clone();
        batch.insert(1, req.clone());
        cases.push(("batched with others", run(&e, &batch).remove(1)));
        let small_chunks = engine(&model, speculative, 96);
        cases.push(("in chunks of 96", run(&small_chunks, &batch).remove(1)));
        for (name, out) in cases.drain(..) {
            assert!(
                out == alone,
                "{} (speculative {speculative}, constrained {constrained}) {name}: {:?}\n--- alone: {:?}",
                model.path.display(),
                text(&out),
                text(&alone)
            );
        }
    }
    eprintln!("{}: {:?}", model.path.display(), text(&alone));
}

#[test]
fn smollm2_greedy_extraction_is_the_same_whatever_the_engine_does() {
    let Some(model) = load("VERRE_SMOLLM2_GGUF") else {
        return;
    };
    same_greedy_output_whatever_the_engine_does(model, true, 160);
}

#[test]
fn smollm2_greedy_text_is_the_same_whatever_the_engine_does() {
    let Some(model) = load("VERRE_SMOLLM2_GGUF") else {
        return;
    };
    same_greedy_output_whatever_the_engine_does(model, false, 48);
}

#[test]
fn qwen15_greedy_extraction_is_the_same_whatever_the_engine_does() {
    let Some(model) = load("VERRE_QWEN15_GGUF") else {
        return;
    };
    // Fewer tokens: the 1.5B decodes slowly in a test build.
    same_greedy_output_whatever_the_engine_does(model, true, 48);
}

/// Last-row logits of `prompt` fed in pieces ending at `splits` (then the rest), each
/// forward shared with `others`' prompts, on a pool of `threads` threads.
fn last_logits(
    model: &LoadedModel,
    prompt: &[u32],
    splits: &[usize],
    others: &[&[u32]],
    threads: usize,
) -> Vec<f32> {
    let m = &model.model;
    let pool_threads = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool_threads.install(|| {
        let mut pool = m.new_kv_pool(256);
        let mut seq = SeqKv::new(4096);
        let mut at = 0;
        let mut last = Vec::new();
        for end in splits.iter().copied().chain([prompt.len()]) {
            let mut other_seqs: Vec<SeqKv> = others.iter().map(|_| SeqKv::new(4096)).collect();
            let mut batch = vec![SeqChunk {
                tokens: &prompt[at..end],
                kv: &mut seq,
                all_logits: false,
            }];
            for (tokens, kv) in others.iter().zip(other_seqs.iter_mut()) {
                batch.push(SeqChunk {
                    tokens,
                    kv,
                    all_logits: true,
                });
            }
            last = m
                .forward(&mut pool, &mut batch)
                .unwrap()
                .last_row(0)
                .to_vec();
            for s in &mut other_seqs {
                pool.release(s);
            }
            at = end;
        }
        last
    })
}

/// One forward's logits do not depend on chunking, batch or threads, bit for bit.
fn forward_is_invariant(model: Arc<LoadedModel>) {
    let p = prompt(
        &model,
        "Atelier Moreau SARL, 12 rue des Lilas, 69003 Lyon",
        EXTRACT,
    );
    let other = prompt(
        &model,
        "Boulangerie Petit, 3 place Bellecour, 69002 Lyon",
        EXTRACT,
    );
    let n = p.len();
    assert!(n > 512, "the prompt is {n} tokens");
    let whole = last_logits(&model, &p, &[], &[], 2);
    // (what, where the prompt is cut, the other prompts in each forward, threads)
    type Case<'a> = (&'a str, &'a [usize], &'a [&'a [u32]], usize);
    let cases: [Case<'_>; 7] = [
        ("cut at a block boundary", &[256], &[], 2),
        ("cut inside a block", &[37, 300], &[], 2),
        (
            "the last tokens one at a time",
            &[n - 3, n - 2, n - 1],
            &[],
            2,
        ),
        ("batched with a prompt", &[], &[&other], 2),
        ("decoded beside one token", &[n - 1], &[&other[..1]], 2),
        ("on one thread", &[], &[], 1),
        ("on three threads", &[n - 1], &[&other[..5]], 3),
    ];
    for (name, splits, others, threads) in cases {
        let got = last_logits(&model, &p, splits, others, threads);
        let differ = got
            .iter()
            .zip(&whole)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{}: {name}: {differ} logits differ",
            model.path.display()
        );
    }
}

#[test]
fn smollm2_forward_is_the_same_however_it_is_cut_batched_or_threaded() {
    let Some(model) = load("VERRE_SMOLLM2_GGUF") else {
        return;
    };
    forward_is_invariant(model);
}

#[test]
fn qwen15_forward_is_the_same_however_it_is_cut_batched_or_threaded() {
    let Some(model) = load("VERRE_QWEN15_GGUF") else {
        return;
    };
    forward_is_invariant(model);
}
