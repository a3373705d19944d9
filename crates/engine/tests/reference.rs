//! verre against llama.cpp on the embedded default model (SmolLM2-135M-Instruct Q4_1).
//!
//! The fixture (`tests/fixtures/smollm2-135m.json`, made by `scripts/gen_fixtures.py`)
//! holds, per chat prompt, llama.cpp's rendered prompt, its token ids, its 64 greedy tokens
//! and its top-5 log-probabilities at each of those steps. verre is fed the prompt plus
//! the reference's greedy tokens in one pass (teacher forcing) and must agree:
//! - the chat template renders the same text and the tokenizer gives the same ids;
//! - wherever llama.cpp's top-1 leads its top-2 by >= `CONFIDENT_GAP` nats, verre's top-1
//!   is the same;
//! - over the reference's top-5 tokens, |verre logprob - llama.cpp logprob| stays within
//!   `MEAN_TOLERANCE` on average and `MAX_TOLERANCE` at worst.
//!
//! Why these bounds and not tighter ones: on this model llama.cpp does not agree with
//! itself more closely. Evaluating the same fixture tokens in one pass instead of token by
//! token (the fixture's schedule) moves llama.cpp's own top-5 logprobs by mean 0.082 /
//! max 0.727 nats, and with flash attention on by mean 0.103 / max 1.086 (measured with
//! llama-cpp-python 0.3.36 on this machine; SmolLM2's activations have large outliers, so
//! the per-block Q8 quantization of activations amplifies tiny rounding differences).
//! verre (its own kernels, quantizing activations as llama.cpp does) measures mean 0.100 /
//! max 0.806 and 407 of 407 top-1 agreements at gaps >= 0.25 (earlier builds flipped one
//! at a gap of 0.29, hence the test's margin at 0.5).
//!
//! Greedy text is not compared free-running: quantized kernels that sum in a different
//! order flip near-ties, after which two correct engines legitimately part ways.
//!
//! The model file comes from `VERRE_SMOLLM2_GGUF` (scripts/test.sh pulls it). Without it
//! the test is skipped locally and fails under CI.

use std::path::PathBuf;

use serde::Deserialize;
use verre_engine::kv::{KvCacheType, SeqKv};
use verre_engine::model::SeqChunk;
use verre_engine::sampler::log_softmax;
use verre_engine::{LoadedModel, Message};

/// Where llama.cpp's top-1 leads by at least this much, verre must pick the same token.
const CONFIDENT_GAP: f32 = 0.5;
/// Bounds on |verre - llama.cpp| over the reference's top-5 logprobs (see the module doc).
const MEAN_TOLERANCE: f64 = 0.12;
const MAX_TOLERANCE: f32 = 1.0;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<Message>,
    prompt_text: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    /// Per step: the reference's five most likely (token, logprob).
    top5: Vec<Vec<(u32, f32)>>,
}

fn model_path() -> Option<PathBuf> {
    match std::env::var_os("VERRE_SMOLLM2_GGUF") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("VERRE_SMOLLM2_GGUF must point at the model file in CI")
        }
        None => {
            eprintln!(
                "skipped: set VERRE_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (scripts/test.sh does)"
            );
            None
        }
    }
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2-135m.json"
    );
    let text = std::fs::read_to_string(path).expect("reading the reference fixture");
    serde_json::from_str(&text).expect("parsing the reference fixture")
}

#[test]
fn chat_template_and_tokenizer_match_llama_cpp() {
    let Some(path) = model_path() else { return };
    let model = LoadedModel::load(&path).unwrap();
    let fx = fixture();
    assert!(fx.cases.len() >= 5);
    assert!(
        fx.cases.iter().any(|c| !c.prompt_text.is_ascii()),
        "at least one non-ASCII prompt"
    );
    for case in &fx.cases {
        let text = model.template.render(&case.messages, true).unwrap();
        assert_eq!(
            text, case.prompt_text,
            "{}: rendered chat template differs",
            case.name
        );
        let ids = model.chat_prompt(&case.messages).unwrap();
        assert_eq!(
            ids, case.prompt_ids,
            "{}: prompt token ids differ",
            case.name
        );
    }
}

#[test]
fn logits_match_llama_cpp_under_teacher_forcing() {
    teacher_forced_within_bounds(KvCacheType::F16);
}

/// The same bounds with keys and values stored as q8_0 (issue 20: a quantized KV cache).
/// Not met on this model yet: mean 0.109 (bound 0.12), max 1.19 (bound 1.0), no top-1 flip
/// at a gap >= 0.5 — SmolLM2 is the model whose logits llama.cpp's own flash attention moves
/// by max 1.09. The Qwen2.5 files meet their bounds at q8_0 (tests/architectures.rs).
#[test]
#[ignore = "q8_0 on SmolLM2-135M: max |Δ logprob| 1.19 > 1.0 (issue 20 item 3, open)"]
fn q8_0_kv_cache_stays_within_the_teacher_forced_bounds() {
    teacher_forced_within_bounds(KvCacheType::Q8_0);
}

fn teacher_forced_within_bounds(kv_type: KvCacheType) {
    let Some(path) = model_path() else { return };
    let model = LoadedModel::load(&path).unwrap();
    eprintln!("KV cache: {kv_type}");
    let fx = fixture();
    let (mut n_diffs, mut sum_diff, mut max_diff) = (0usize, 0f64, 0f32);
    let (mut confident, mut agree_confident, mut agree_all, mut steps) = (0, 0, 0, 0);
    let mut flips = Vec::new();
    for case in &fx.cases {
        let steps_here = case.greedy_ids.len();
        assert_eq!(case.top5.len(), steps_here, "{}: fixture rows", case.name);
        // Prompt plus every reference token but the last: the logits at the prompt's last
        // position and after each reference token are the 64 predictions.
        let mut tokens = case.prompt_ids.clone();
        tokens.extend_from_slice(&case.greedy_ids[..steps_here - 1]);
        let mut kv = model.model.new_kv_cache_as(kv_type).unwrap();
        let logits = model.model.forward_cache(&mut kv, &tokens, true).unwrap();
        let first = case.prompt_ids.len() - 1;
        let mut case_max = 0f32;
        for (step, ref_top) in case.top5.iter().enumerate() {
            let lp = log_softmax(logits.row(first + step));
            let ours = verre_engine::sampler::argmax(&lp);
            let gap = ref_top[0].1 - ref_top[1].1;
            steps += 1;
            agree_all += usize::from(ours == ref_top[0].0);
            if gap >= 0.25 {
                confident += 1;
                agree_confident += usize::from(ours == ref_top[0].0);
            }
            if gap >= CONFIDENT_GAP && ours != ref_top[0].0 {
                flips.push(format!("{} step {step} (gap {gap:.3})", case.name));
            }
            for &(id, ref_lp) in ref_top {
                let d = (lp[id as usize] - ref_lp).abs();
                sum_diff += d as f64;
                n_diffs += 1;
                max_diff = max_diff.max(d);
                case_max = case_max.max(d);
            }
        }
        eprintln!("{:<24} max |Δlogprob| {case_max:.4}", case.name);
    }
    let mean = sum_diff / n_diffs as f64;
    eprintln!(
        "top-5 |Δlogprob|: mean {mean:.4}, max {max_diff:.4} over {n_diffs}; top-1 agreement {agree_all}/{steps} \
         ({agree_confident}/{confident} where the reference's gap >= 0.25)"
    );
    assert!(
        flips.is_empty(),
        "verre's top-1 differs where llama.cpp's top-1 leads by >= {CONFIDENT_GAP}: {flips:?}"
    );
    assert!(
        mean <= MEAN_TOLERANCE,
        "mean |Δlogprob| {mean:.4} > {MEAN_TOLERANCE}"
    );
    assert!(
        max_diff <= MAX_TOLERANCE,
        "max |Δlogprob| {max_diff:.4} > {MAX_TOLERANCE}"
    );
}

#[test]
fn batched_forward_equals_one_sequence_at_a_time() {
    let Some(path) = model_path() else { return };
    let model = LoadedModel::load(&path).unwrap();
    let a = model.encode_prompt("The capital of France is").unwrap();
    let b = model
        .encode_prompt("Once upon a time, in a land far away, there lived")
        .unwrap();
    let single = |toks: &[u32]| {
        let mut kv = model.new_kv_cache();
        let l = model.model.forward_cache(&mut kv, toks, false).unwrap();
        l.last_row(0).to_vec()
    };
    let (la, lb) = (single(&a), single(&b));
    // Both in one pool, as the engine runs them.
    let mut pool = model.model.new_kv_pool(64);
    let ctx = model.info().context_length;
    let (mut ka, mut kb) = (SeqKv::new(ctx), SeqKv::new(ctx));
    let both = model
        .model
        .forward(
            &mut pool,
            &mut [
                SeqChunk {
                    tokens: &a,
                    kv: &mut ka,
                    all_logits: false,
                },
                SeqChunk {
                    tokens: &b,
                    kv: &mut kb,
                    all_logits: false,
                },
            ],
        )
        .unwrap();
    let close = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        close(both.last_row(0), &la) < 1e-3,
        "sequence 0 differs when batched"
    );
    assert!(
        close(both.last_row(1), &lb) < 1e-3,
        "sequence 1 differs when batched"
    );
    assert_eq!(ka.len(), a.len());
    assert_eq!(kb.len(), b.len());
}

#[test]
fn incremental_decode_equals_one_pass() {
    let Some(path) = model_path() else { return };
    let model = LoadedModel::load(&path).unwrap();
    let ids = model
        .encode_prompt("Les Misérables was written by Victor Hugo in")
        .unwrap();
    let mut kv = model.new_kv_cache();
    let full = model.model.forward_cache(&mut kv, &ids, true).unwrap();
    let mut kv = model.new_kv_cache();
    let split = ids.len() / 2;
    model
        .model
        .forward_cache(&mut kv, &ids[..split], false)
        .unwrap();
    for (i, &t) in ids[split..].iter().enumerate() {
        let step = model.model.forward_cache(&mut kv, &[t], false).unwrap();
        let want = full.row(split + i);
        let diff = step
            .last_row(0)
            .iter()
            .zip(want)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < 1e-2,
            "position {}: cached decode differs from one pass by {diff}",
            split + i
        );
    }
}
