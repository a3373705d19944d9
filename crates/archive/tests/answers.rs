//! Issue 22 item 3, answers: questions over the generated archive answered by a chat model
//! through verre's `/v1` in-process; the share of answers that cite the document that
//! answers the question (as `[document, p. N]`) must reach 0.8.
//!
//! The full measure (1,000 documents, 50 questions, the default model
//! qwen2.5-coder-1.5b, `VERRE_QWEN15_GGUF`) is `#[ignore]`d: minutes on two cores. The
//! smaller one runs on qwen2.5-coder-0.5b (`VERRE_QWEN05_GGUF`) over 100 documents and 8
//! questions. Both need `VERRE_MINILM_DIR`; skipped without their models.

mod common;

use std::sync::Arc;
use std::time::Instant;

use verre_archive::{Archive, Retrieval, answer};
use verre_intake::backend::{BoxFuture, ModelApi, ModelCallError};
use verre_server::internal::ApiClient;
use verre_server::{AppState, ModelKind, ModelSpec};
use verre_store::Store;

struct Api(ApiClient);

impl ModelApi for Api {
    fn chat(
        &self,
        request: serde_json::Value,
    ) -> BoxFuture<'_, Result<serde_json::Value, ModelCallError>> {
        Box::pin(async move {
            self.0
                .post("test", "/v1/chat/completions", &request)
                .await
                .map_err(|e| ModelCallError {
                    permanent: e.is_permanent(),
                    param: e.param.clone(),
                    message: e.to_string(),
                })
        })
    }
}

/// (share of answers citing the right document and no more than one other, share
/// containing the expected answer, answers citing no retrieved passage).
async fn measure(
    model_env: &str,
    documents: Vec<usize>,
    questions: &[usize],
) -> Option<(f64, f64, usize)> {
    let (Some(chat), Some(minilm)) = (
        std::env::var_os(model_env).filter(|v| !v.is_empty()),
        std::env::var_os("VERRE_MINILM_DIR").filter(|v| !v.is_empty()),
    ) else {
        eprintln!("skipped: {model_env} or VERRE_MINILM_DIR is not set");
        return None;
    };
    let specs = vec![
        ModelSpec {
            id: "chat".into(),
            path: chat.into(),
            kind: ModelKind::Chat,
        },
        ModelSpec {
            id: "minilm-l6".into(),
            path: minilm.into(),
            kind: ModelKind::Embedding,
        },
    ];
    let (chat, embedding) =
        tokio::task::spawn_blocking(move || verre_server::load_models(&specs, &Default::default()))
            .await
            .unwrap()
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    let state = AppState::new(None).with_store(store.clone());
    state.set_models(chat, embedding);
    let embedder = state.models().unwrap().embedding[0].embedder.clone();
    let api = Api(ApiClient::new(Arc::new(state)));
    let archive = Archive::new(store, embedder, "minilm-l6");
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    for path in common::write(&files, documents) {
        archive.add_file(&path, "test").await.unwrap();
    }

    let (mut cited, mut correct, mut uncited) = (0, 0, 0);
    let started = Instant::now();
    for &i in questions {
        let (_, q) = common::document(i);
        let passages = archive
            .search(&q.question, 5, Retrieval::Hybrid)
            .await
            .unwrap();
        let a = answer::ask(&api, "chat", &q.question, passages, answer::MIN_COSINE)
            .await
            .unwrap();
        // Citing every passage retrieved is not citing the right one.
        let documents: std::collections::BTreeSet<&str> =
            a.citations.iter().map(|c| c.document.as_str()).collect();
        let right = documents.contains(q.document.as_str()) && documents.len() <= 2;
        uncited += a.citations.is_empty() as usize;
        let says = a.text.to_lowercase().contains(&q.answer.to_lowercase());
        cited += right as usize;
        correct += says as usize;
        eprintln!(
            "{} {} | {} -> {}",
            if right { "cites" } else { "MISSES" },
            q.document,
            q.question,
            a.text.replace('\n', " ")
        );
    }
    let n = questions.len() as f64;
    eprintln!(
        "{model_env}: {} questions in {:.0} s; answers citing the right document {:.2}, containing the expected answer {:.2}",
        questions.len(),
        started.elapsed().as_secs_f64(),
        cited as f64 / n,
        correct as f64 / n
    );
    Some((cited as f64 / n, correct as f64 / n, uncited))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_cite_the_right_document_on_a_small_model() {
    let asked: Vec<usize> = common::asked().into_iter().take(8).collect();
    let mut documents: Vec<usize> = (0..100).collect();
    documents.extend(asked.iter().filter(|&&i| i >= 100));
    // The bar (0.8) is for the default model (the ignored test below); this one
    // measures the small model and checks what the constrained answer guarantees: each
    // answer cites a retrieved passage.
    let Some((_, _, uncited)) = measure("VERRE_QWEN05_GGUF", documents, &asked).await else {
        return;
    };
    assert_eq!(uncited, 0, "answers that cite no retrieved passage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "16 minutes: 1,000 documents and 50 answers from qwen2.5-coder-1.5b (2026-12-07: 0.86 cite the right document, target 0.8; docs/ARCHIVE.md)"]
async fn answers_cite_the_right_document_on_the_default_model() {
    // `VERRE_ARCHIVE_QUESTIONS=N` asks the first N only, `VERRE_ARCHIVE_DOCUMENTS=M` keeps
    // the first M documents besides those asked about (for a busy machine; the measure is
    // all 50 over all 1,000).
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let asked: Vec<usize> = common::asked()
        .into_iter()
        .take(var("VERRE_ARCHIVE_QUESTIONS", 50))
        .collect();
    let mut documents: Vec<usize> =
        (0..var("VERRE_ARCHIVE_DOCUMENTS", common::DOCUMENTS)).collect();
    let extra: Vec<usize> = asked
        .iter()
        .copied()
        .filter(|i| !documents.contains(i))
        .collect();
    documents.extend(extra);
    let Some((cited, _, _)) = measure("VERRE_QWEN15_GGUF", documents, &asked).await else {
        return;
    };
    assert!(cited >= 0.8, "answers citing the right document: {cited}");
}
