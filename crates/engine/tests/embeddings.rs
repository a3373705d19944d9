//! BERT sentence embeddings against the model package's own sentence-transformers
//! pipeline (`tests/fixtures/minilm-l6.json`, made by `scripts/gen_embedding_fixtures.py`).
//! The model directory comes from `VERRE_MINILM_DIR` (scripts/test.sh pulls it).

use serde::Deserialize;
use verre_engine::model::bert::{Embedder, cosine};

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    n_tokens: usize,
    embedding: Vec<f32>,
}

fn model_dir() -> Option<std::path::PathBuf> {
    match std::env::var_os("VERRE_MINILM_DIR") {
        Some(p) => Some(p.into()),
        None if std::env::var_os("CI").is_some() => panic!("VERRE_MINILM_DIR must be set in CI"),
        None => {
            eprintln!("skipped: set VERRE_MINILM_DIR to the minilm-l6 model directory");
            None
        }
    }
}

#[test]
fn embeddings_match_sentence_transformers() {
    let Some(dir) = model_dir() else { return };
    let emb = Embedder::load(&dir).unwrap();
    assert_eq!(emb.dimensions(), 384);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm-l6.json");
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let texts: Vec<&str> = fx.cases.iter().map(|c| c.text.as_str()).collect();
    let out = emb.embed(&texts).unwrap();
    let mut worst = 1f32;
    for (case, (vec, n)) in fx.cases.iter().zip(&out) {
        assert_eq!(*n, case.n_tokens, "{:?}: token count", case.text);
        let norm: f32 = vec.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not unit length: {norm}");
        let c = cosine(vec, &case.embedding);
        worst = worst.min(c);
        assert!(
            c > 0.9999,
            "{:?}: cosine {c} against sentence-transformers",
            case.text
        );
    }
    eprintln!("lowest cosine against sentence-transformers: {worst:.6}");
    // The similar pair is closer than an unrelated one (the vectors mean something).
    assert!(cosine(&out[0].0, &out[1].0) > cosine(&out[0].0, &out[2].0) + 0.2);
}

#[test]
fn a_missing_model_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = match Embedder::load(dir.path()) {
        Ok(_) => panic!("an empty directory loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn a_batch_embeds_each_input_as_it_would_alone() {
    let Some(dir) = model_dir() else { return };
    let emb = Embedder::load(&dir).unwrap();
    // Inputs of different lengths, so that a batch mixing them would show any leak of
    // attention or pooling across sequences.
    let texts = [
        "Invoice 4711 is overdue.",
        "Please send the signed contract for the Rotterdam warehouse before Friday, together with the insurance certificate and the updated delivery schedule.",
        "ok",
        "Die Rechnung vom 7. Mai 2014 über 34,73 EUR wurde noch nicht bezahlt.",
    ];
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| emb.tokenize(t).unwrap()).collect();
    let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
    assert!(
        lengths.iter().any(|&n| n > 2 * lengths[2]),
        "lengths {lengths:?}"
    );
    let batched = emb.embed_batch(&ids).unwrap();
    assert_eq!(batched.len(), texts.len());
    for (i, seq) in ids.iter().enumerate() {
        let alone = emb.embed_ids(seq).unwrap();
        let c = cosine(&alone, &batched[i]);
        let diff = alone
            .iter()
            .zip(&batched[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            c > 0.999_999 && diff < 1e-4,
            "input {i}: cosine {c}, max |diff| {diff}"
        );
    }
    // The batch is not the same vector four times.
    assert!(cosine(&batched[0], &batched[1]) < 0.99);
}
