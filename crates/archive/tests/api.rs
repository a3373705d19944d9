//! `archive:<model>` on `/v1/chat/completions`: the passages retrieved for the last user
//! message go to the chat model, the answer carries `passages` and `citations`; nothing
//! relevant is said without calling a model; a stream starts with the passages; bad
//! requests get OpenAI-shaped 400s. Needs `VERRE_SMOLLM2_GGUF` (a fast chat model) and
//! `VERRE_MINILM_DIR` (skipped without them).

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use serde_json::{Value, json};
use tower::ServiceExt;
use verre_archive::{Archive, answer};
use verre_server::internal::ApiClient;
use verre_server::{AppState, ModelKind, ModelSpec};
use verre_store::Store;

fn env_path(name: &str) -> Option<std::path::PathBuf> {
    let v = std::env::var_os(name).filter(|v| !v.is_empty());
    if v.is_none() {
        eprintln!("skipped: {name} is not set");
    }
    v.map(Into::into)
}

async fn served(dir: &std::path::Path) -> Option<Arc<AppState>> {
    served_with(dir, None).await
}

/// The same, behind a gateway with the `[[key]]` limits of `keys` (verre.toml text).
async fn served_with(dir: &std::path::Path, keys: Option<&str>) -> Option<Arc<AppState>> {
    let chat = env_path("VERRE_SMOLLM2_GGUF")?;
    let minilm = env_path("VERRE_MINILM_DIR")?;
    let specs = vec![
        ModelSpec {
            id: "smol".into(),
            path: chat,
            kind: ModelKind::Chat,
        },
        ModelSpec {
            id: "minilm-l6".into(),
            path: minilm,
            kind: ModelKind::Embedding,
        },
    ];
    let (chat, embedding) =
        tokio::task::spawn_blocking(move || verre_server::load_models(&specs, &Default::default()))
            .await
            .unwrap()
            .unwrap();
    let store = Store::open_in_home(dir).await.unwrap();
    let mut state = AppState::new(None).with_store(store.clone());
    if let Some(keys) = keys {
        let config = verre_config::VerreConfig::parse(keys, "verre.toml").unwrap();
        let gateway = verre_server::gateway::Gateway::new(&config).unwrap();
        state = state.with_gateway(Arc::new(gateway));
    }
    state.set_models(chat, embedding);
    let embedder = state.models().unwrap().embedding[0].embedder.clone();
    let archive = Archive::new(store, embedder, "minilm-l6");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    for path in common::write(&files, 0..20) {
        archive.add_file(&path, "test").await.unwrap();
    }
    Some(Arc::new(state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_model_answers_with_passages_and_citations() {
    let dir = tempfile::tempdir().unwrap();
    let Some(state) = served(dir.path()).await else {
        return;
    };
    let client = ApiClient::new(state.clone());
    let (_, q) = common::document(0);
    let answer = client
        .post(
            "test",
            "/v1/chat/completions",
            &json!({"model": "archive:smol", "max_tokens": 40, "temperature": 0,
                    "messages": [{"role": "user", "content": q.question}],
                    "archive": {"k": 3}}),
        )
        .await
        .unwrap();
    assert_eq!(answer["model"], "archive:smol");
    let passages = answer["passages"].as_array().unwrap();
    assert_eq!(passages.len(), 3);
    assert!(
        passages.iter().any(|p| p["document"] == q.document),
        "{passages:?}"
    );
    assert!(passages.iter().all(|p| p["page"].as_i64().unwrap() >= 1));
    assert!(answer["citations"].is_array());
    assert!(
        answer["usage"]["prompt_tokens"].as_i64().unwrap() > 100,
        "the passages were read"
    );
    assert!(
        !answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    // Nothing relevant: said without a model call.
    let nothing = client
        .post(
            "test",
            "/v1/chat/completions",
            &json!({"model": "archive:smol", "messages": [{"role": "user", "content": common::UNRELATED[0]}]}),
        )
        .await
        .unwrap();
    assert_eq!(
        nothing["choices"][0]["message"]["content"],
        answer::NOTHING_RELEVANT
    );
    assert_eq!(nothing["usage"]["total_tokens"], 0);
    assert_eq!(nothing["citations"], json!([]));

    // Bad requests.
    for (body, param) in [
        (
            json!({"model": "archive:", "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": "archive:smol", "messages": [{"role": "system", "content": "x"}]}),
            "messages",
        ),
        (
            json!({"model": "archive:smol", "messages": [{"role": "user", "content": "x"}], "archive": {"k": 0}}),
            "archive.k",
        ),
        (
            json!({"model": "archive:smol", "messages": [{"role": "user", "content": "x"}], "archive": {"retrieval": "magic"}}),
            "archive.retrieval",
        ),
    ] {
        let e = client
            .post("test", "/v1/chat/completions", &body)
            .await
            .unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{e}");
    }

    // A stream starts with the passages.
    let request = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"model": "archive:smol", "stream": true, "max_tokens": 8,
                   "messages": [{"role": "user", "content": q.question}]})
            .to_string(),
        ))
        .unwrap();
    let response = verre_server::router(state).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let first = text.lines().next().unwrap().strip_prefix("data: ").unwrap();
    let first: Value = serde_json::from_str(first).unwrap();
    assert_eq!(first["choices"], json!([]));
    assert_eq!(first["passages"].as_array().unwrap().len(), 5);
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

/// A key that may not use the chat model gets neither an answer nor passages, relevant or
/// not; `min_score` outside 0..1 is refused; a key's request limit counts the answers the
/// archive gives without a model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_answers_only_keys_that_may_use_its_chat_model() {
    let dir = tempfile::tempdir().unwrap();
    let keys = "[[key]]\nname = \"other\"\nmodels = [\"elsewhere\"]\n[[key]]\nname = \"smol\"\nmodels = [\"smol\"]\nrequests_per_minute = 2\n";
    let Some(state) = served_with(dir.path(), Some(keys)).await else {
        return;
    };
    let client = ApiClient::new(state);
    let (_, q) = common::document(0);
    for question in [q.question.as_str(), common::UNRELATED[0]] {
        let e = client
            .post(
                "other",
                "/v1/chat/completions",
                &json!({"model": "archive:smol", "messages": [{"role": "user", "content": question}],
                        "archive": {"k": 50, "min_score": 1.0}}),
            )
            .await
            .unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (403, Some("model")), "{e}");
        assert!(!e.to_string().contains(&q.document), "{e}");
    }
    let e = client
        .post(
            "smol",
            "/v1/chat/completions",
            &json!({"model": "archive:smol", "messages": [{"role": "user", "content": "x"}],
                    "archive": {"min_score": 2}}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.status, e.param.as_deref()),
        (400, Some("archive.min_score")),
        "{e}"
    );
    // Nothing relevant, answered without a model: still two requests a minute.
    let unrelated = json!({"model": "archive:smol", "messages": [{"role": "user", "content": common::UNRELATED[0]}]});
    for _ in 0..2 {
        client
            .post("smol", "/v1/chat/completions", &unrelated)
            .await
            .unwrap();
    }
    let e = client
        .post("smol", "/v1/chat/completions", &unrelated)
        .await
        .unwrap_err();
    assert_eq!(e.status, 429, "{e}");
}
