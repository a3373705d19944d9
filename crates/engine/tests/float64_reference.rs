//! verre against an exact float64 forward pass (`scripts/reference_forward.py`) on tiny
//! seeded models of the shapes llama.cpp cannot check: sliding windows on Llama/Mistral
//! files (llama.cpp's `llama` architecture ignores `sliding_window`), interleaved windows,
//! head_dim != n_embd / n_head, RoPE base 1e9, Mistral 3's YaRN and attention temperature,
//! Gemma 3's local/global layers.
//!
//! The fixture (`tests/fixtures/float64-reference.json`) holds, per model, its sha256, a
//! seeded prompt of 96 token ids (longer than every window) and the reference's top-5
//! log-probabilities at every position. verre evaluates the prompt in one pass and again
//! in chunks of 5 tokens (windows then cross chunk and KV-block boundaries); both must
//! agree with the reference:
//! - wherever the reference's top-1 leads its top-2 by >= `CONFIDENT_GAP`, the same top-1;
//! - over the reference's top-5, |verre logprob - reference| <= `MEAN_TOLERANCE` on
//!   average and `MAX_TOLERANCE` at worst.
//!
//! The fixture also records how far the reference itself moves when a feature is dropped
//! (no window, no temperature, no YaRN, one RoPE base for Gemma's local layers); the test
//! checks those ablations lie well outside the tolerances, so passing means the feature is
//! there, not merely that the model is insensitive to it.
//!
//! The models are written by `scripts/reference_forward.py gen DIR` (seeded numpy +
//! gguf-py; scripts/test.sh runs it) and read from `VERRE_F64_MODELS_DIR`. A file whose
//! sha256 differs from the fixture's fails the test: regenerate the fixture with
//! `scripts/reference_forward.py fixture DIR crates/engine/tests/fixtures/float64-reference.json`
//! when the generator changes on purpose. Without the variable the test is skipped
//! locally and fails under CI.

use std::path::PathBuf;

use candle_core::Device;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use verre_engine::gguf::GgufFile;
use verre_engine::model::Model;
use verre_engine::sampler::{argmax, log_softmax};

const CONFIDENT_GAP: f32 = 0.25;
const MEAN_TOLERANCE: f64 = 0.05;
const MAX_TOLERANCE: f32 = 0.3;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    model: String,
    sha256: String,
    ids: Vec<u32>,
    positions: Vec<usize>,
    rows: Vec<Row>,
    #[serde(default)]
    ablations: std::collections::BTreeMap<String, Ablation>,
}

#[derive(Deserialize)]
struct Row {
    top5: Vec<(u32, f32)>,
    gap: f32,
}

#[derive(Deserialize)]
struct Ablation {
    mean: f64,
    max: f32,
}

fn models_dir() -> Option<PathBuf> {
    match std::env::var_os("VERRE_F64_MODELS_DIR") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!(
                "VERRE_F64_MODELS_DIR must point at scripts/reference_forward.py gen's output in CI"
            )
        }
        None => {
            eprintln!(
                "skipped: run `scripts/reference_forward.py gen DIR` and set VERRE_F64_MODELS_DIR=DIR (scripts/test.sh does)"
            );
            None
        }
    }
}

fn sha256_hex(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// verre's logits at every position of `ids`, fed `chunk` tokens per forward.
fn logits_in_chunks(model: &Model, ids: &[u32], chunk: usize) -> Vec<Vec<f32>> {
    let mut cache = model.new_kv_cache();
    let mut rows = Vec::with_capacity(ids.len());
    for part in ids.chunks(chunk) {
        let logits = model
            .forward_cache(&mut cache, part, true)
            .expect("forward pass");
        for r in 0..part.len() {
            rows.push(logits.row(r).to_vec());
        }
    }
    rows
}

/// (mean, max) |difference| over the reference's top-5, and the confident top-1 misses.
fn compare(positions: &[usize], rows: &[Row], logits: &[Vec<f32>]) -> (f64, f32, Vec<String>) {
    let (mut sum, mut max, mut n) = (0f64, 0f32, 0usize);
    let mut misses = Vec::new();
    for (row, &pos) in rows.iter().zip(positions) {
        let lp = log_softmax(&logits[pos]);
        for &(tok, want) in &row.top5 {
            let d = (lp[tok as usize] - want).abs();
            sum += d as f64;
            max = max.max(d);
            n += 1;
        }
        let top1 = (0..lp.len())
            .max_by(|&a, &b| lp[a].total_cmp(&lp[b]))
            .expect("non-empty vocabulary");
        if row.gap >= CONFIDENT_GAP && top1 as u32 != row.top5[0].0 {
            misses.push(format!(
                "position {pos}: verre {top1}, reference {} (gap {:.3})",
                row.top5[0].0, row.gap
            ));
        }
    }
    (sum / n as f64, max, misses)
}

#[test]
fn verre_matches_float64_reference() {
    let Some(dir) = models_dir() else { return };
    let fixture: Fixture = read_fixture("float64-reference.json");
    assert_eq!(fixture.cases.len(), 4, "the fixture covers four models");
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let path = dir.join(&case.model);
        let sha = sha256_hex(&path);
        assert_eq!(
            sha,
            case.sha256,
            "{}: the generated model differs from the one the fixture was made with \
             (numpy or gguf version, or the generator changed): regenerate the fixture",
            path.display()
        );
        let gguf = GgufFile::open(&path).expect("opening the model");
        let model = Model::load(&gguf, &Device::Cpu).expect("loading the model");

        // The fixture can tell each feature apart: dropping it moves the reference far
        // more than the tolerance allows.
        for (name, a) in &case.ablations {
            assert!(
                a.mean > 2.0 * MEAN_TOLERANCE && a.max > MAX_TOLERANCE,
                "{}: ablation {name} moves the reference by only mean {} / max {}",
                case.model,
                a.mean,
                a.max
            );
        }

        for chunk in [case.ids.len(), 5] {
            let logits = logits_in_chunks(&model, &case.ids, chunk);
            let (mean, max, misses) = compare(&case.positions, &case.rows, &logits);
            eprintln!(
                "{} (chunks of {chunk}): mean |d logprob| {mean:.4}, max {max:.4}, {} confident top-1 misses",
                case.model,
                misses.len()
            );
            if mean > MEAN_TOLERANCE || max > MAX_TOLERANCE || !misses.is_empty() {
                failures.push(format!(
                    "{} (chunks of {chunk}): mean {mean:.4} (<= {MEAN_TOLERANCE}), max {max:.4} (<= {MAX_TOLERANCE}), top-1 misses {misses:?}",
                    case.model
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "verre departs from the float64 reference:\n{}",
        failures.join("\n")
    );
}

/// A fixture of `tests/fixtures`, parsed.
fn read_fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The model at `path`, which must be the file a fixture was made with.
fn load_checked(path: &std::path::Path, sha256: &str) -> Model {
    assert_eq!(
        sha256_hex(path),
        sha256,
        "{} is not the file the fixture was made with",
        path.display()
    );
    let gguf = GgufFile::open(path).expect("opening the model");
    Model::load(&gguf, &Device::Cpu).expect("loading the model")
}

/// The real Gemma 3 270M (Q4_K_M, `verre pull gemma3-270m`) on 641 tokens of its own
/// sampled text (BOS + 640), checked at positions 0-47 and 500-640: past its 512-token
/// window, so the local layers' windows and their RoPE base of 10 000 both matter (the
/// fixture's ablations: dropping the window moves the reference by mean 0.55 / max 6.9
/// nats, one RoPE base for all layers by 1.8 / 9.9).
///
/// Made with `scripts/reference_forward.py logits MODEL --ids ... --positions
/// 0-48,500-641 --ablations tests/fixtures/gemma3-270m-float64.json`. The model comes from
/// `VERRE_GEMMA3_GGUF`; the test is skipped without it.
#[test]
fn gemma3_270m_matches_float64_reference() {
    let Some(path) = std::env::var_os("VERRE_GEMMA3_GGUF").map(PathBuf::from) else {
        eprintln!(
            "skipped: set VERRE_GEMMA3_GGUF to gemma-3-270m-q4_k_m.gguf (verre pull gemma3-270m)"
        );
        return;
    };
    let case: Case = read_fixture("gemma3-270m-float64.json");
    let model = load_checked(&path, &case.sha256);
    let logits = logits_in_chunks(&model, &case.ids, 256);
    let (mean, max, misses) = compare(&case.positions, &case.rows, &logits);
    eprintln!(
        "gemma3-270m: mean |d logprob| {mean:.4}, max {max:.4}, {} confident top-1 misses",
        misses.len()
    );
    assert!(
        mean <= GEMMA_MEAN_TOLERANCE && max <= GEMMA_MAX_TOLERANCE && misses.is_empty(),
        "gemma3-270m departs from the float64 reference: mean {mean:.4} (<= {GEMMA_MEAN_TOLERANCE}), max {max:.4} (<= {GEMMA_MAX_TOLERANCE}), misses {misses:?}"
    );
}

/// Looser than the tiny models' bounds: the real model's activations are large (embeddings
/// times sqrt(640), outliers in the residual stream), so verre's Q8 activations and f16
/// keys/values move its logits further from exact arithmetic. Measured: mean 0.087, max
/// 0.59, no confident top-1 miss; the error is the same before and after the window
/// (positions 0-47: 0.074, 512-640: 0.088), i.e. rounding, not windowing.
const GEMMA_MEAN_TOLERANCE: f64 = 0.15;
const GEMMA_MAX_TOLERANCE: f32 = 1.0;

/// The real Qwen2.5-Coder Q4_K_M files, exact forward beside llama.cpp
/// (`scripts/reference_forward.py beside-llama`): the tokens of the llama.cpp fixture
/// (`tests/fixtures/arch-qwen2.5-coder-*.json`), with the exact top-5 and the exact
/// log-probabilities of llama.cpp's top-5 tokens at every position.
#[derive(Deserialize)]
struct BesideLlama {
    sha256: String,
    llama_cpp_vs_exact: LlamaVsExact,
    cases: Vec<BesideCase>,
}

#[derive(Deserialize)]
struct LlamaVsExact {
    mean: f64,
    max: f32,
    top1_agree: usize,
    confident_rows: usize,
}

#[derive(Deserialize)]
struct BesideCase {
    name: String,
    ids: Vec<u32>,
    positions: Vec<usize>,
    rows: Vec<Row>,
    exact_at_llama_top5: Vec<Vec<(u32, f32)>>,
    llama_top5: Vec<Vec<(u32, f32)>>,
}

/// As `tests/architectures.rs` holds real quantized files: llama.cpp's own variation plus
/// a quarter, and the same top-1 where the reference leads by 0.5 or more.
const REAL_FILE_SLACK: f64 = 1.25;
const REAL_FILE_GAP: f32 = 0.5;

/// The bounds (mean 0.05, max 0.3 over the reference's top-5) are not met by
/// verre against llama.cpp on the real K-quant files (`tests/architectures.rs`), and
/// llama.cpp does not meet them against itself either. This places all three on one
/// scale: verre must be no farther from the exact model than llama.cpp is, measured the
/// same way (over llama.cpp's top-5 tokens, one forward over the same tokens), with the
/// quarter of slack `tests/architectures.rs` gives real files (`REAL_FILE_SLACK`), and
/// must pick the exact model's top-1 wherever it leads by >= `REAL_FILE_GAP`, unless
/// llama.cpp misses it there too. It prints where each stands against the bounds.
///
/// Measured (2026-12-07): the 0.5B, verre 0.0485 / 0.546, llama.cpp 0.0496 / 0.539; the
/// 1.5B, verre 0.0921 / 6.39, llama.cpp 0.0914 / 6.39. Both quantize activations to 8
/// bits per 256 values; the 1.5B's largest error, in both, is at position 0, whose hidden
/// state carries outliers in the thousands (exact top-1 16 at -0.49, both give 15).
fn check_beside_llama(var: &str, fixture_name: &str) {
    let Some(path) = std::env::var_os(var).map(PathBuf::from) else {
        eprintln!("skipped: set {var} (verre pull qwen2.5-coder-0.5b / -1.5b)");
        return;
    };
    let fx: BesideLlama = read_fixture(fixture_name);
    let model = load_checked(&path, &fx.sha256);
    let (mut sum_exact, mut max_exact, mut n_exact) = (0f64, 0f32, 0usize);
    let (mut sum_llama, mut max_llama, mut n_llama) = (0f64, 0f32, 0usize);
    let mut misses = Vec::new();
    for case in &fx.cases {
        let logits = logits_in_chunks(&model, &case.ids, case.ids.len());
        let (mean, max, _) = compare(&case.positions, &case.rows, &logits);
        let n = case.rows.len() * 5;
        sum_exact += mean * n as f64;
        n_exact += n;
        max_exact = max_exact.max(max);
        for ((&pos, row), llama) in case.positions.iter().zip(&case.rows).zip(&case.llama_top5) {
            let exact_top1 = row.top5[0].0;
            let verre_top1 = argmax(&logits[pos]);
            if row.gap >= REAL_FILE_GAP && verre_top1 != exact_top1 && llama[0].0 == exact_top1 {
                misses.push(format!(
                    "{} position {pos}: verre {verre_top1}, exact and llama.cpp {exact_top1} (gap {:.3})",
                    case.name, row.gap
                ));
            }
        }
        for (&pos, at) in case.positions.iter().zip(&case.exact_at_llama_top5) {
            let lp = log_softmax(&logits[pos]);
            for &(tok, want) in at {
                let d = (lp[tok as usize] - want).abs();
                sum_llama += d as f64;
                max_llama = max_llama.max(d);
                n_llama += 1;
            }
        }
    }
    let (mean_exact, mean_llama) = (sum_exact / n_exact as f64, sum_llama / n_llama as f64);
    let l = &fx.llama_cpp_vs_exact;
    let met = |mean: f64, max: f32| {
        if mean <= 0.05 && max <= 0.3 {
            "met"
        } else {
            "not met"
        }
    };
    eprintln!(
        "{fixture_name}: against the exact model, over llama.cpp's top-5: verre {mean_llama:.4} / {max_llama:.4} \
         (issue bounds {}), llama.cpp {:.4} / {:.4} ({}); over the exact top-5: verre {mean_exact:.4} / {max_exact:.4} \
         ({}); top-1 misses where the exact model leads by >= {REAL_FILE_GAP} and llama.cpp agrees with it: {}; \
         llama.cpp's misses where the exact model leads by >= {CONFIDENT_GAP}: {}",
        met(mean_llama, max_llama),
        l.mean,
        l.max,
        met(l.mean, l.max),
        met(mean_exact, max_exact),
        misses.len(),
        l.confident_rows - l.top1_agree,
    );
    assert!(
        mean_llama <= REAL_FILE_SLACK * l.mean
            && f64::from(max_llama) <= REAL_FILE_SLACK * f64::from(l.max)
            && misses.is_empty(),
        "{fixture_name}: verre is farther from the exact model than llama.cpp (x{REAL_FILE_SLACK}): \
         mean {mean_llama:.4} (llama.cpp {:.4}), max {max_llama:.4} (llama.cpp {:.4}), \
         top-1 misses where llama.cpp agrees with the exact model: {misses:?}",
        l.mean,
        l.max
    );
}

#[test]
fn qwen25_coder_05b_q4_k_m_is_as_near_the_exact_model_as_llama_cpp() {
    check_beside_llama("VERRE_QWEN05_GGUF", "qwen2.5-coder-0.5b-float64.json");
}

#[test]
fn qwen25_coder_15b_q4_k_m_is_as_near_the_exact_model_as_llama_cpp() {
    check_beside_llama("VERRE_QWEN15_GGUF", "qwen2.5-coder-1.5b-float64.json");
}
