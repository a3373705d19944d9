//! Bad model files and bad prompts: a clear error naming the file and the problem, never a
//! panic. Every file here is crafted by the test itself (a tiny random llama model).

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::sync::Arc;

use verre_engine::{
    EngineError, EngineHandle, EngineOptions, GenerateRequest, LoadedModel, SamplingParams,
};

const DIM: usize = 32;
const FF: usize = 64;
const CONTEXT: u32 = 16;

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the others are
/// shifted past U+0100 so that every token is a visible string.
fn byte_token(b: u8) -> String {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(b) {
        return char::from(b).to_string();
    }
    let shift = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + shift).unwrap().to_string()
}

struct Spec {
    architecture: &'static str,
    with_tokenizer: bool,
    /// Extra metadata, e.g. a hostile `general.alignment`.
    extra: Vec<(String, Value)>,
}

/// Write a tiny one-layer llama model with a byte-level BPE vocabulary.
fn write_model(path: &Path, spec: &Spec) {
    let dev = Device::Cpu;
    let mut tokens: Vec<Value> = (0..=255u8).map(|b| Value::String(byte_token(b))).collect();
    tokens.push(Value::String("<|endoftext|>".into()));
    let mut types: Vec<Value> = vec![Value::I32(1); 256];
    types.push(Value::I32(3));
    let vocab = tokens.len();

    let arch = spec.architecture;
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (format!("{arch}.context_length"), Value::U32(CONTEXT)),
        (format!("{arch}.embedding_length"), Value::U32(DIM as u32)),
        (format!("{arch}.feed_forward_length"), Value::U32(FF as u32)),
        (format!("{arch}.block_count"), Value::U32(1)),
        (format!("{arch}.attention.head_count"), Value::U32(2)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(1)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
    ];
    md.extend(spec.extra.iter().cloned());
    if spec.with_tokenizer {
        md.extend([
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            ("tokenizer.ggml.merges".into(), Value::Array(vec![])),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(256)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(256)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ]);
    }

    let q = |rows: usize, cols: usize, seed: f64| {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| (((i as f64 + seed) * 0.618).fract() as f32 - 0.5) * 0.2)
            .collect();
        QTensor::quantize(
            &Tensor::from_vec(data, (rows, cols), &dev).unwrap(),
            GgmlDType::Q8_0,
        )
        .unwrap()
    };
    let ones = |n: usize| {
        QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &dev).unwrap(),
            GgmlDType::F32,
        )
        .unwrap()
    };
    let hd = DIM / 2;
    let tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), q(vocab, DIM, 1.0)),
        ("output_norm.weight".into(), ones(DIM)),
        ("blk.0.attn_norm.weight".into(), ones(DIM)),
        ("blk.0.attn_q.weight".into(), q(DIM, DIM, 2.0)),
        ("blk.0.attn_k.weight".into(), q(hd, DIM, 3.0)),
        ("blk.0.attn_v.weight".into(), q(hd, DIM, 4.0)),
        ("blk.0.attn_output.weight".into(), q(DIM, DIM, 5.0)),
        ("blk.0.ffn_norm.weight".into(), ones(DIM)),
        ("blk.0.ffn_gate.weight".into(), q(FF, DIM, 6.0)),
        ("blk.0.ffn_up.weight".into(), q(FF, DIM, 7.0)),
        ("blk.0.ffn_down.weight".into(), q(DIM, FF, 8.0)),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

fn good_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    write_model(
        &path,
        &Spec {
            architecture: "llama",
            with_tokenizer: true,
            extra: vec![],
        },
    );
    path
}

fn load_err(path: &Path) -> String {
    match LoadedModel::load(path) {
        Ok(_) => panic!("{} loaded but should not have", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn the_crafted_model_itself_loads_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(LoadedModel::load(good_model(dir.path())).unwrap());
    let engine = EngineHandle::spawn(model.clone(), EngineOptions::one_at_a_time(&model)).unwrap();
    let ids = model.encode_prompt("hi").unwrap();
    assert_eq!(ids, vec![b'h' as u32, b'i' as u32]);
    let req = GenerateRequest {
        prompt_ids: ids,
        max_tokens: 5,
        sampling: SamplingParams::default(),
        stop: vec![],
        ignore_eos: true,
        grammar: None,
    };
    let out = engine.generate(req, |_| true).unwrap();
    assert_eq!(out.completion_tokens, 5);
}

#[test]
fn not_a_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.gguf");
    std::fs::write(&path, b"this is a text file, not a model").unwrap();
    let e = load_err(&path);
    assert!(
        e.contains("notes.gguf") && e.contains("not a GGUF file"),
        "{e}"
    );
}

#[test]
fn truncated_header_and_truncated_tensor_data() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(good_model(dir.path())).unwrap();
    let header_cut = dir.path().join("cut-header.gguf");
    std::fs::write(&header_cut, &bytes[..200]).unwrap();
    let e = load_err(&header_cut);
    assert!(
        e.contains("cut-header.gguf") && e.contains("GGUF header"),
        "{e}"
    );

    let data_cut = dir.path().join("cut-data.gguf");
    std::fs::write(&data_cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(&data_cut);
    assert!(
        e.contains("cut-data.gguf") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn unknown_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    write_model(
        &path,
        &Spec {
            architecture: "mamba",
            with_tokenizer: true,
            extra: vec![],
        },
    );
    let e = load_err(&path);
    assert!(
        e.contains("mamba.gguf") && e.contains("architecture \"mamba\" is not supported"),
        "{e}"
    );
}

#[test]
fn unsupported_tensor_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(good_model(dir.path())).unwrap();
    // Rewrite the ggml type of blk.0.attn_q.weight (Q8_0 = 8) to IQ2_XXS (16): in the tensor
    // info the name is followed by n_dims (u32), the dims (u64 each), then the type (u32).
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let type_at = at + 4 + 8 * n_dims;
    assert_eq!(
        u32::from_le_bytes(bytes[type_at..type_at + 4].try_into().unwrap()),
        8
    );
    bytes[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let path = dir.path().join("iq2.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let e = load_err(&path);
    assert!(
        e.contains("iq2.gguf") && e.contains("IQ2_XXS") && e.contains("supports"),
        "{e}"
    );
}

#[test]
fn missing_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-vocab.gguf");
    write_model(
        &path,
        &Spec {
            architecture: "llama",
            with_tokenizer: false,
            extra: vec![],
        },
    );
    let e = load_err(&path);
    assert!(
        e.contains("no-vocab.gguf") && e.contains("tokenizer"),
        "{e}"
    );
}

#[test]
fn prompt_longer_than_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(LoadedModel::load(good_model(dir.path())).unwrap());
    let engine = EngineHandle::spawn(model.clone(), EngineOptions::one_at_a_time(&model)).unwrap();
    let ids = model
        .encode_prompt(&"x".repeat(CONTEXT as usize + 4))
        .unwrap();
    let req = GenerateRequest {
        prompt_ids: ids,
        max_tokens: 4,
        sampling: SamplingParams::default(),
        stop: vec![],
        ignore_eos: true,
        grammar: None,
    };
    let err = engine.generate(req, |_| true).unwrap_err();
    match err.downcast_ref::<EngineError>() {
        Some(EngineError::ContextLength {
            prompt_tokens: 20,
            context_length: 16,
        }) => {}
        _ => panic!("expected a context-length error, got {err:#}"),
    }
    // One token short of the context: exactly one token is generated, finish reason length.
    let ids = model
        .encode_prompt(&"x".repeat(CONTEXT as usize - 1))
        .unwrap();
    let req = GenerateRequest {
        prompt_ids: ids,
        max_tokens: 50,
        sampling: SamplingParams::default(),
        stop: vec![],
        ignore_eos: true,
        grammar: None,
    };
    let out = engine.generate(req, |_| true).unwrap();
    assert_eq!(out.completion_tokens, 1);
    assert_eq!(out.finish_reason, verre_engine::FinishReason::Length);
}

#[test]
fn zero_alignment_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("align0.gguf");
    let extra = vec![("general.alignment".to_string(), Value::U32(0))];
    write_model(
        &path,
        &Spec {
            architecture: "llama",
            with_tokenizer: true,
            extra,
        },
    );
    let e = load_err(&path);
    assert!(
        e.contains("align0.gguf") && e.contains("GGUF header"),
        "{e}"
    );
}
