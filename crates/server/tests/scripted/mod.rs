//! A model that says a fixed script, for end-to-end tests through the real engine: a
//! one-layer GGUF (llama architecture) with SmolLM2's vocabulary, plus tokens the test
//! adds (such as `<think>`), whose next token depends only on the last one.
//!
//! Every layer's weights are zero, so the hidden state is the last token's embedding. The
//! script's `i`-th token embeds as the unit vector of dimension `i + 1`, every other token
//! as dimension 0; the output projection maps dimension 0 to the script's first token,
//! dimension `i + 1` to its next token, and the last one to the end-of-generation token.
//! After a prompt that ends in any other token the model says the whole script; after
//! one that ends in the script's `i`-th token it says the rest.

// Each test file that includes this module uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use verre_engine::LoadedModel;
use verre_engine::engine::EngineOptions;
use verre_server::{AppState, ServedModel, router};

const EMBEDDING: usize = 64;

/// SmolLM2's GGUF (`VERRE_SMOLLM2_GGUF`), for its vocabulary; `None` (test skipped) when
/// unset outside CI.
pub fn smollm2() -> Option<PathBuf> {
    match std::env::var_os("VERRE_SMOLLM2_GGUF") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => panic!("VERRE_SMOLLM2_GGUF must be set in CI"),
        None => {
            eprintln!("skipped: set VERRE_SMOLLM2_GGUF (scripts/test.sh does)");
            None
        }
    }
}

/// Write the model: `added` tokens (user-defined, as `<think>` is in Qwen3's vocabulary)
/// appended to the vocabulary of `vocab_source`, `script` spelled as vocabulary pieces
/// (`Ġis` for " is"), and `chat_template`.
pub fn scripted_model(
    vocab_source: &Path,
    added: &[&str],
    script: &[&str],
    chat_template: &str,
    dir: &Path,
) -> PathBuf {
    use gguf_file::Value as V;
    assert!(script.len() < EMBEDDING, "a script of at most 63 tokens");
    let mut file = std::fs::File::open(vocab_source)
        .unwrap_or_else(|e| panic!("opening {}: {e}", vocab_source.display()));
    let content = gguf_file::Content::read(&mut file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", vocab_source.display()));
    let mut tokens: Vec<String> = match content.metadata.get("tokenizer.ggml.tokens") {
        Some(V::Array(tokens)) => tokens
            .iter()
            .map(|t| t.to_string().expect("a token piece").clone())
            .collect(),
        _ => panic!("{}: no tokenizer.ggml.tokens", vocab_source.display()),
    };
    let mut types: Vec<V> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(V::Array(types)) => types.clone(),
        _ => panic!("{}: no tokenizer.ggml.token_type", vocab_source.display()),
    };
    for piece in added {
        tokens.push(piece.to_string());
        types.push(V::I32(4)); // user-defined
    }
    let eos = content
        .metadata
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.to_u32().ok())
        .expect("an end token") as usize;
    let id = |piece: &str| {
        tokens
            .iter()
            .position(|t| t == piece)
            .unwrap_or_else(|| panic!("no piece {piece:?} in the vocabulary"))
    };
    let script: Vec<usize> = script.iter().map(|p| id(p)).collect();
    let vocab = tokens.len();

    let mut metadata: Vec<(String, V)> = content
        .metadata
        .iter()
        .filter(|(k, _)| {
            k.starts_with("tokenizer.")
                && !matches!(
                    k.as_str(),
                    "tokenizer.chat_template"
                        | "tokenizer.ggml.tokens"
                        | "tokenizer.ggml.token_type"
                )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.extend([
        (
            "tokenizer.ggml.tokens".into(),
            V::Array(tokens.iter().cloned().map(V::String).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), V::Array(types)),
        (
            "tokenizer.chat_template".into(),
            V::String(chat_template.into()),
        ),
        ("general.architecture".into(), V::String("llama".into())),
        (
            "general.name".into(),
            V::String("scripted test model".into()),
        ),
        ("llama.block_count".into(), V::U32(1)),
        ("llama.context_length".into(), V::U32(4096)),
        ("llama.embedding_length".into(), V::U32(EMBEDDING as u32)),
        ("llama.feed_forward_length".into(), V::U32(EMBEDDING as u32)),
        ("llama.attention.head_count".into(), V::U32(2)),
        ("llama.attention.head_count_kv".into(), V::U32(2)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            V::F32(1e-5),
        ),
        ("llama.rope.dimension_count".into(), V::U32(32)),
    ]);

    let mut embedding = vec![0f32; vocab * EMBEDDING];
    for token in 0..vocab {
        let dim = script.iter().position(|&t| t == token).map_or(0, |i| i + 1);
        embedding[token * EMBEDDING + dim] = 1.0;
    }
    let mut output = vec![0f32; vocab * EMBEDDING];
    let next = script.iter().copied().skip(1).chain([eos]);
    output[script[0] * EMBEDDING] = 1.0;
    for (i, token) in next.enumerate() {
        output[token * EMBEDDING + i + 1] = 1.0;
    }

    let cpu = Device::Cpu;
    let q8 = |t: Tensor| QTensor::quantize(&t, GgmlDType::Q8_0).expect("quantize");
    let f32 = |t: Tensor| QTensor::quantize(&t, GgmlDType::F32).expect("f32 tensor");
    let zeros = |rows, cols| q8(Tensor::zeros((rows, cols), DType::F32, &cpu).unwrap());
    let ones = |len| f32(Tensor::ones(len, DType::F32, &cpu).unwrap());
    let matrix = |values| q8(Tensor::from_vec(values, (vocab, EMBEDDING), &cpu).unwrap());
    let tensors: Vec<(&str, QTensor)> = vec![
        ("token_embd.weight", matrix(embedding)),
        ("output.weight", matrix(output)),
        ("output_norm.weight", ones(EMBEDDING)),
        ("blk.0.attn_norm.weight", ones(EMBEDDING)),
        ("blk.0.ffn_norm.weight", ones(EMBEDDING)),
        ("blk.0.attn_q.weight", zeros(EMBEDDING, EMBEDDING)),
        ("blk.0.attn_k.weight", zeros(EMBEDDING, EMBEDDING)),
        ("blk.0.attn_v.weight", zeros(EMBEDDING, EMBEDDING)),
        ("blk.0.attn_output.weight", zeros(EMBEDDING, EMBEDDING)),
        ("blk.0.ffn_gate.weight", zeros(EMBEDDING, EMBEDDING)),
        ("blk.0.ffn_up.weight", zeros(EMBEDDING, EMBEDDING)),
        ("blk.0.ffn_down.weight", zeros(EMBEDDING, EMBEDDING)),
    ];
    let path = dir.join(format!("scripted-{}.gguf", rand_suffix()));
    let mut out = std::fs::File::create(&path).expect("creating the test model");
    let metadata: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (*k, t)).collect();
    gguf_file::write(&mut out, &metadata, &tensors).expect("writing the test model");
    path
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The app serving the model at `path` as `name`.
pub fn serve(path: &Path, name: &str) -> Router {
    let model = Arc::new(
        LoadedModel::load(path).unwrap_or_else(|e| panic!("loading the test model: {e:#}")),
    );
    let served = ServedModel::start(name, model, EngineOptions::default()).unwrap();
    router(Arc::new(AppState::with_models(vec![served], vec![], None)))
}

/// POST `body` to `uri`: the status and the body's text.
pub async fn post(app: &Router, uri: &str, body: &Value) -> (StatusCode, String) {
    let request = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}
