//! verre against llama.cpp on every architecture it runs, one fixture per model file.
//!
//! The fixtures (`tests/fixtures/arch-*.json`, made by `scripts/gen_arch_fixtures.py`) hold,
//! per prompt, llama.cpp's tokens (prompt and a short greedy continuation) and, for every
//! position, its top-5 log-probabilities when all the tokens are evaluated in one batch.
//! verre runs the same tokens in one forward with logits for every position, the same
//! schedule, and must agree within the bounds of issue 2:
//! - wherever llama.cpp's top-1 leads its top-2 by >= `CONFIDENT_GAP`, the same top-1;
//! - |verre logprob - llama.cpp logprob| over the reference's top-5: mean <=
//!   `MEAN_TOLERANCE`, max <= `MAX_TOLERANCE`;
//! - the prompt text tokenizes to llama.cpp's ids (real models: the chat template renders
//!   llama.cpp's text first).
//!
//! The random-weight models come from `scripts/gen_arch_models.py` (deterministic; each
//! fixture pins its file's sha256, so a generator that drifts fails here, loudly):
//! `VERRE_ARCH_MODELS_DIR` names their directory (scripts/test.sh: target/arch-models).
//! The real Qwen2.5-Coder files come from `VERRE_QWEN15_GGUF` and `VERRE_QWEN05_GGUF`.
//! A test whose variable is unset is skipped with a message (the models directory is
//! required under CI); a variable that is set must point at the right file.
//!
//! The reference is llama.cpp with the weights in their GGUF layout (no CPU-specific
//! repacking). Each fixture also records what these bounds can see: llama.cpp against
//! itself (one pass vs token by token; its repacked-weight kernels, its default on AVX-512
//! machines) and llama.cpp with one feature dropped (no sliding window, no attention
//! temperature, no YaRN). The test prints them beside verre's figures.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use verre_engine::kv::KvCacheType;
use verre_engine::sampler::{argmax, log_softmax};
use verre_engine::{LoadedModel, Message};

/// The issue's bounds. Where llama.cpp's top-1 leads by at least this much, verre must
/// pick the same token.
const CONFIDENT_GAP: f32 = 0.25;
/// Bounds on |verre - llama.cpp| over the reference's top-5 logprobs, over all rows.
const MEAN_TOLERANCE: f64 = 0.05;
const MAX_TOLERANCE: f32 = 0.3;

/// Real quantized files (the Qwen2.5 Q4_K_M models): llama.cpp does not agree with itself
/// within the bounds above — its default AVX-512 path (weights repacked) and its plain path
/// differ on these files by mean 0.048-0.070, max 0.52-0.53 (recorded in each fixture as
/// `llama_cpp_repacked`). verre is held to that variation with a quarter of slack, and to
/// the same top-1 wherever llama.cpp's lead is 0.5 or more; the report says whether the
/// issue's bounds were met. `tests/float64_reference.rs` puts both beside an exact forward
/// of the same files: llama.cpp is 0.050 / 0.54 (0.5B) and 0.091 / 6.4 (1.5B) from it,
/// verre as far, so no engine that rounds differently from llama.cpp meets 0.05 / 0.3 here.
const REAL_FILE_GAP: f32 = 0.5;
const REAL_FILE_SLACK: f64 = 1.25;

#[derive(Deserialize)]
struct Fixture {
    model_file: String,
    model_sha256: String,
    architecture: String,
    window: Option<usize>,
    llama_cpp_self: Option<Stats>,
    llama_cpp_repacked: Option<Stats>,
    #[serde(default)]
    ablations: serde_json::Map<String, serde_json::Value>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Stats {
    mean: f64,
    max: f64,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prompt_text: String,
    /// Real models: the conversation the prompt was rendered from.
    messages: Option<Vec<Message>>,
    prompt_ids: Vec<u32>,
    continuation_ids: Vec<u32>,
    /// Per position: the reference's five most likely next tokens (id, logprob).
    top5: Vec<Vec<(u32, f32)>>,
}

/// Where a fixture's model file comes from.
enum Source {
    /// A file named by the fixture in the directory of generated models.
    ModelsDir,
    /// A real model file named by this environment variable.
    File(&'static str),
}

const MODELS_DIR_VAR: &str = "VERRE_ARCH_MODELS_DIR";

fn fixture(name: &str) -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("arch-{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The model file for a fixture, or `None` (with a message) when its variable is unset.
fn model_path(fx: &Fixture, source: &Source) -> Option<PathBuf> {
    let (var, path) = match source {
        Source::ModelsDir => (
            MODELS_DIR_VAR,
            std::env::var_os(MODELS_DIR_VAR).map(|d| PathBuf::from(d).join(&fx.model_file)),
        ),
        Source::File(var) => (*var, std::env::var_os(var).map(PathBuf::from)),
    };
    let Some(path) = path else {
        if matches!(source, Source::ModelsDir) && std::env::var_os("CI").is_some() {
            panic!("{MODELS_DIR_VAR} must name the generated models in CI (scripts/test.sh)");
        }
        eprintln!(
            "SKIPPED {}: {var} is not set (scripts/test.sh sets {MODELS_DIR_VAR}; see \
             tests/fixtures/README.md)",
            fx.model_file
        );
        return None;
    };
    assert!(
        path.is_file(),
        "{var} is set but {} does not exist",
        path.display()
    );
    let sha = sha256_file(&path);
    assert_eq!(
        sha,
        fx.model_sha256,
        "{} is not the file the fixture was made from (sha256 {sha}, fixture {}): \
         regenerate the models with scripts/gen_arch_models.py, or the fixtures with \
         scripts/gen_arch_fixtures.py if the generator changed on purpose",
        path.display(),
        fx.model_sha256
    );
    Some(path)
}

fn sha256_file(path: &Path) -> String {
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// verre's agreement with one fixture.
#[derive(Default)]
struct Agreement {
    rows: usize,
    confident: usize,
    confident_agree: usize,
    sum_diff: f64,
    n_diffs: usize,
    max_diff: f32,
    /// Rows where verre's top-1 differs at a confident gap: ("case@position", gap).
    flips: Vec<(String, f32)>,
}

impl Agreement {
    fn mean(&self) -> f64 {
        self.sum_diff / self.n_diffs.max(1) as f64
    }
}

fn check(name: &str, source: Source) {
    check_with(name, source, KvCacheType::F16);
}

/// `check` with keys and values stored as `kv_type`: the same bounds.
fn check_with(name: &str, source: Source, kv_type: KvCacheType) {
    let fx = fixture(name);
    let Some(path) = model_path(&fx, &source) else {
        return;
    };
    let model = match LoadedModel::load(&path) {
        Ok(m) => m,
        Err(e) => panic!(
            "{name} ({} architecture): verre cannot load {}: {e:#}",
            fx.architecture,
            path.display()
        ),
    };
    let mut problems = Vec::new();
    let mut agreement = Agreement::default();
    let mut per_case = String::new();
    for case in &fx.cases {
        let tokens: Vec<u32> = case
            .prompt_ids
            .iter()
            .chain(&case.continuation_ids)
            .copied()
            .collect();
        assert_eq!(
            case.top5.len(),
            tokens.len(),
            "{name}/{}: one fixture row per token",
            case.name
        );

        // The same text must give the same tokens.
        let ids = match &case.messages {
            Some(messages) => {
                match model.template.render(messages, true) {
                    Ok(text) if text == case.prompt_text => {}
                    Ok(_) => problems.push(format!(
                        "{}: the chat template renders different text",
                        case.name
                    )),
                    Err(e) => problems.push(format!("{}: chat template: {e:#}", case.name)),
                }
                model.chat_prompt(messages)
            }
            None => model.encode_prompt(&case.prompt_text),
        };
        match ids {
            Ok(ids) if ids == case.prompt_ids => {}
            Ok(ids) => problems.push(format!(
                "{}: prompt tokens differ from llama.cpp's: verre {ids:?}, llama.cpp {:?}",
                case.name, case.prompt_ids
            )),
            Err(e) => problems.push(format!("{}: tokenizing: {e:#}", case.name)),
        }

        // llama.cpp's tokens, in one forward, logits for every position.
        let mut kv = model.model.new_kv_cache_as(kv_type).unwrap();
        let logits = model
            .model
            .forward_cache(&mut kv, &tokens, true)
            .unwrap_or_else(|e| panic!("{name}/{}: forward: {e:#}", case.name));
        let (case_sum, case_n) = (agreement.sum_diff, agreement.n_diffs);
        let (mut case_max, mut case_max_pos) = (0f32, 0);
        for (pos, reference) in case.top5.iter().enumerate() {
            let lp = log_softmax(logits.row(pos));
            let gap = reference[0].1 - reference[1].1;
            agreement.rows += 1;
            if gap >= CONFIDENT_GAP {
                agreement.confident += 1;
                if argmax(&lp) == reference[0].0 {
                    agreement.confident_agree += 1;
                } else {
                    agreement.flips.push((format!("{}@{pos}", case.name), gap));
                }
            }
            for &(id, ref_lp) in reference {
                let d = (lp[id as usize] - ref_lp).abs();
                agreement.sum_diff += f64::from(d);
                agreement.n_diffs += 1;
                agreement.max_diff = agreement.max_diff.max(d);
                if d > case_max {
                    (case_max, case_max_pos) = (d, pos);
                }
            }
        }
        let _ = write!(
            per_case,
            "\n    {:<10} {:>4} tokens: mean {:.4}, max {case_max:.4} at position {case_max_pos}",
            case.name,
            tokens.len(),
            (agreement.sum_diff - case_sum) / (agreement.n_diffs - case_n).max(1) as f64,
        );
    }

    let bytes_per_token = |t| model.model.kv_layout(t).unwrap().block_bytes() / 16;
    let (bytes, f16_bytes) = (bytes_per_token(kv_type), bytes_per_token(KvCacheType::F16));
    eprintln!("{name}: KV bytes per token {bytes} ({kv_type}), {f16_bytes} (f16)");
    // Issue 20: q8_0 halves the bytes, but for its scales (34 bytes per 32 values against
    // 64): every layer quantized, those with a large key bias included.
    if kv_type == KvCacheType::Q8_0 {
        assert_eq!(
            bytes * 64,
            f16_bytes * 34,
            "{name}: q8_0 KV bytes per token {bytes} against {f16_bytes} in f16"
        );
    }
    let mut report = format!(
        "{name} ({}{}, {kv_type} KV cache): top-1 {}/{} where llama.cpp's gap >= {CONFIDENT_GAP}; |Δ logprob| over its \
         top-5: mean {:.4}, max {:.4} ({} rows)",
        fx.architecture,
        fx.window
            .map(|w| format!(", window {w}"))
            .unwrap_or_default(),
        agreement.confident_agree,
        agreement.confident,
        agreement.mean(),
        agreement.max_diff,
        agreement.rows,
    );
    report.push_str(&per_case);
    if let Some(s) = &fx.llama_cpp_self {
        let _ = write!(
            report,
            "\n    llama.cpp against itself (one pass vs token by token): mean {:.4}, max {:.4}",
            s.mean, s.max
        );
    }
    if let Some(s) = &fx.llama_cpp_repacked {
        let _ = write!(
            report,
            "\n    llama.cpp's repacked-weight kernels (its AVX-512 default) against it: mean {:.4}, max {:.4}",
            s.mean, s.max
        );
    }
    for (ablation, v) in &fx.ablations {
        let _ = write!(
            report,
            "\n    llama.cpp {ablation}: mean {}, max {}",
            v["mean"], v["max"]
        );
    }
    eprintln!("{report}");

    let real_file = matches!(source, Source::File(_));
    let (gap_bound, mean_bound, max_bound) = match (&fx.llama_cpp_repacked, real_file) {
        (Some(own), true) => (
            REAL_FILE_GAP,
            MEAN_TOLERANCE.max(own.mean * REAL_FILE_SLACK),
            MAX_TOLERANCE.max((own.max * REAL_FILE_SLACK) as f32),
        ),
        _ => (CONFIDENT_GAP, MEAN_TOLERANCE, MAX_TOLERANCE),
    };
    let issue_bounds_met = agreement.flips.is_empty()
        && agreement.mean() <= MEAN_TOLERANCE
        && agreement.max_diff <= MAX_TOLERANCE;
    eprintln!(
        "    issue bounds (top-1 at gap >= {CONFIDENT_GAP}, mean <= {MEAN_TOLERANCE}, max <= \
         {MAX_TOLERANCE}): {}",
        if issue_bounds_met { "met" } else { "NOT met" }
    );
    let flips: Vec<&(String, f32)> = agreement
        .flips
        .iter()
        .filter(|(_, gap)| *gap >= gap_bound)
        .collect();
    if !flips.is_empty() {
        problems.push(format!(
            "top-1 differs where llama.cpp's gap >= {gap_bound}: {flips:?}"
        ));
    }
    if agreement.mean() > mean_bound {
        problems.push(format!(
            "mean |Δ logprob| {:.4} > {mean_bound:.4}",
            agreement.mean()
        ));
    }
    if agreement.max_diff > max_bound {
        problems.push(format!(
            "max |Δ logprob| {:.4} > {max_bound:.4}",
            agreement.max_diff
        ));
    }
    assert!(
        problems.is_empty(),
        "{name}: verre disagrees with llama.cpp:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn mistral_7b_v03_like_llama_spm_gqa_window() {
    check("mistral-7b-v0.3-like", Source::ModelsDir);
}

#[test]
fn mistral_nemo_like_head_dim_differs_from_hidden_over_heads() {
    check("mistral-nemo-like", Source::ModelsDir);
}

#[test]
fn ministral_3_like_mistral3_yarn_attention_temperature() {
    check("ministral-3-like", Source::ModelsDir);
}

#[test]
fn ministral_8b_like_interleaved_windows() {
    check("ministral-8b-iswa-like", Source::ModelsDir);
}

#[test]
fn qwen2_like_biases_neox() {
    check("qwen2-like", Source::ModelsDir);
}

#[test]
fn gemma3_like_local_global_layers() {
    check("gemma3-like", Source::ModelsDir);
}

#[test]
fn qwen25_coder_15b_q4_k_m() {
    check("qwen2.5-coder-1.5b", Source::File("VERRE_QWEN15_GGUF"));
}

#[test]
fn qwen25_coder_05b_q4_k_m() {
    check("qwen2.5-coder-0.5b", Source::File("VERRE_QWEN05_GGUF"));
}

/// Issue 20: the q8_0 KV cache within the same bounds, on both real files.
#[test]
fn qwen25_coder_05b_q4_k_m_kv_q8_0() {
    check_with(
        "qwen2.5-coder-0.5b",
        Source::File("VERRE_QWEN05_GGUF"),
        KvCacheType::Q8_0,
    );
}

#[test]
fn qwen25_coder_15b_q4_k_m_kv_q8_0() {
    check_with(
        "qwen2.5-coder-1.5b",
        Source::File("VERRE_QWEN15_GGUF"),
        KvCacheType::Q8_0,
    );
}
