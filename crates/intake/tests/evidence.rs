//! Evidence end to end (issue 21 item 2): the extract stage stores, for every field, its
//! span in the document (with the attachment and page of a PDF) and its confidence from the
//! model's token probabilities; the route stage says which rule fired on which values.
//!
//! Eval data: `$VERRE_SHARED_DIR` or the `shared/` folder beside the repository. The real
//! model: `VERRE_SMOLLM2_GGUF`. Each is skipped when missing locally.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};
use verre_intake::{
    BoxFuture, ModelApi, ModelCallError, Pipeline, StageRunner, Worker, WorkerOptions,
};
use verre_store::Store;

fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("VERRE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    if dir.join("eval").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "the eval data is missing: {} (set VERRE_SHARED_DIR)",
            dir.display()
        );
    }
    eprintln!("skipped: no eval data at {}", dir.display());
    None
}

/// A model that answers each extraction with the first of its answers whose key value is
/// in the prompt (letters and digits compared), with every token certain.
struct Answers {
    answers: Vec<(String, Value)>,
    requests: Mutex<Vec<Value>>,
}

fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

impl ModelApi for Answers {
    fn chat(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
        let prompt = squash(&request["messages"].to_string());
        let answer = self
            .answers
            .iter()
            .find(|(key, _)| prompt.contains(&squash(key)))
            .map(|(_, a)| a.to_string())
            .unwrap_or_else(|| "{}".into());
        self.requests.lock().unwrap().push(request);
        Box::pin(
            async move { Ok(json!({"choices": [{"message": {"content": answer}}], "usage": {}})) },
        )
    }

    fn embed(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
        Box::pin(async move { verre_intake::StubBackend::default().embed(request).await })
    }
}

fn invoice_mail(name: &str, pdf: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(pdf);
    format!(
        "From: Accounts <accounts@example.com>\r\nTo: intake@example.org\r\nSubject: Invoice\r\n\
         Message-ID: <{name}@example.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nPlease find the invoice attached.\r\n\
         --b\r\nContent-Type: application/pdf; name=\"{name}.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"{name}.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b--\r\n"
    )
    .into_bytes()
}

async fn run(store: &Store, pipeline: Pipeline, models: Arc<dyn ModelApi>) {
    let runner = Arc::new(StageRunner::new(
        store.clone(),
        Arc::new(pipeline),
        models,
        None,
    ));
    Worker::new(runner, WorkerOptions::new())
        .run()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invoice_field_is_found_on_its_page_of_the_pdf() {
    let Some(shared) = shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    let mut answers = Vec::new();
    let mut ids = Vec::new();
    let invoices = shared.join("eval/invoices");
    let mut pdfs: Vec<PathBuf> = std::fs::read_dir(&invoices)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pdf"))
        .collect();
    pdfs.sort();
    for pdf in &pdfs {
        let answer: Value =
            serde_json::from_str(&std::fs::read_to_string(pdf.with_extension("json")).unwrap())
                .unwrap();
        let answer = if answer.is_array() {
            answer[0].clone()
        } else {
            answer
        };
        // The fields the invoice pipeline asks for.
        let answer: Value = ["invoice_number", "date", "amount", "currency", "issuer"]
            .iter()
            .map(|f| (f.to_string(), answer[*f].clone()))
            .collect::<serde_json::Map<_, _>>()
            .into();
        let stem = pdf.file_stem().unwrap().to_string_lossy().into_owned();
        answers.push((
            answer["invoice_number"].as_str().unwrap().to_string(),
            answer.clone(),
        ));
        let raw = invoice_mail(&stem, &std::fs::read(pdf).unwrap());
        let id = store
            .ingest("test", &stem, &raw, "parse", 2)
            .await
            .unwrap()
            .message_id;
        ids.push((stem, id, answer));
    }
    let pipeline = Pipeline::parse(
        Path::new("invoice-pipeline.toml"),
        include_str!("../../../examples/invoice-pipeline.toml"),
    )
    .unwrap();
    let api = Arc::new(Answers {
        answers,
        requests: Mutex::default(),
    });
    run(&store, pipeline, api.clone()).await;
    assert!(
        api.requests
            .lock()
            .unwrap()
            .iter()
            .all(|r| r["logprobs"] == true),
        "the extraction asks for log-probabilities"
    );
    for (stem, id, answer) in ids {
        let evidence = store
            .evidence(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{stem}: no evidence"));
        let fields = evidence["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 5, "{stem}: {evidence}");
        for f in fields {
            let name = f["field"].as_str().unwrap();
            assert_eq!(f["value"], answer[name]);
            if name == "currency" {
                // An ISO code the invoice may print only as a sign ($, €).
                continue;
            }
            let span = &f["span"];
            assert!(
                span.is_object(),
                "{stem}: {name} = {} not found",
                f["value"]
            );
            assert_eq!(
                span["place"]["attachment"],
                format!("{stem}.pdf"),
                "{stem}: {name}"
            );
            assert!(
                span["place"]["page"].as_u64().is_some_and(|p| p >= 1),
                "{stem}: {name}"
            );
            assert!(!span["quote"].as_str().unwrap().is_empty());
        }
    }
}

const ROUTED: &str = r#"
name = "routed"
[extract]
model = "m"
system = "Extract."
schema = { type = "object", required = ["customer"], properties = { customer = { type = "string" } } }
[[labels]]
name = "threat_level"
values = ["low", "high"]
[[route]]
name = "urgent"
when = 'extract.threat_level == "high" and "Alice" in extract.customer'
[[route]]
name = "known"
when = 'message.from == "alice@example.com"'
[[route]]
name = "other"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_says_which_rule_fired_on_which_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    let raw =
        b"From: Alice <alice@example.com>\r\nSubject: Hello\r\n\r\nAlice here, all is fine.\r\n";
    let id = store
        .ingest("test", "a", raw, "parse", 2)
        .await
        .unwrap()
        .message_id;
    let api = Arc::new(Answers {
        answers: vec![(
            "Alice".into(),
            json!({"customer": "Alice", "threat_level": "low"}),
        )],
        requests: Mutex::default(),
    });
    run(
        &store,
        Pipeline::parse(Path::new("p.toml"), ROUTED).unwrap(),
        api,
    )
    .await;
    let route = store.stage_output(id, "route").await.unwrap().unwrap();
    assert_eq!(route["route"], "known");
    assert_eq!(
        route["why"],
        json!([
            {"route": "urgent", "when": "extract.threat_level == \"high\" and \"Alice\" in extract.customer",
             "matched": false, "values": {"extract.threat_level": "low", "extract.customer": "Alice"}},
            {"route": "known", "when": "message.from == \"alice@example.com\"",
             "matched": true, "values": {"message.from": "alice@example.com"}},
        ])
    );
    let evidence = store.evidence(id).await.unwrap().unwrap();
    let customer = evidence["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "customer")
        .unwrap();
    assert_eq!(customer["span"]["quote"], "Alice");
    assert_eq!(customer["span"]["place"], Value::Null, "in the mail itself");
}

/// verre's `/v1` in-process over one loaded model.
async fn served(model: &Path, id: &str) -> Arc<dyn ModelApi> {
    struct Api(verre_server::internal::ApiClient);
    impl ModelApi for Api {
        fn chat(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
            Box::pin(async move {
                self.0
                    .post("pipeline:test", "/v1/chat/completions", &request)
                    .await
                    .map_err(|e| ModelCallError {
                        permanent: e.is_permanent(),
                        param: e.param.clone(),
                        message: e.to_string(),
                    })
            })
        }
    }
    let specs = vec![verre_server::ModelSpec {
        id: id.into(),
        path: model.into(),
        kind: verre_server::ModelKind::Chat,
    }];
    let (chat, embedding) =
        tokio::task::spawn_blocking(move || verre_server::load_models(&specs, &Default::default()))
            .await
            .unwrap()
            .unwrap();
    let state = verre_server::AppState::new(None);
    state.set_models(chat, embedding);
    Arc::new(Api(verre_server::internal::ApiClient::new(Arc::new(state))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_engine_gives_every_field_a_confidence() {
    let Some(model) = std::env::var_os("VERRE_SMOLLM2_GGUF") else {
        eprintln!("skipped: set VERRE_SMOLLM2_GGUF");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    let raw = b"From: Alice <alice@example.com>\r\nSubject: Order 4471\r\n\r\nHello, this is Alice from Acme. Please ship order 4471 today.\r\n";
    let id = store
        .ingest("test", "a", raw, "parse", 1)
        .await
        .unwrap()
        .message_id;
    let pipeline = Pipeline::parse(
        Path::new("p.toml"),
        &ROUTED.replace("model = \"m\"", "model = \"smollm2-135m\"\nmax_tokens = 40"),
    )
    .unwrap();
    run(
        &store,
        pipeline,
        served(Path::new(&model), "smollm2-135m").await,
    )
    .await;
    let evidence = store.evidence(id).await.unwrap().expect("extracted");
    eprintln!("{evidence:#}");
    for f in evidence["fields"].as_array().unwrap() {
        let c = f["confidence"]
            .as_f64()
            .unwrap_or_else(|| panic!("no confidence: {f}"));
        assert!(c > 0.0 && c <= 1.0, "{f}");
        assert_eq!(f["check"], c < 0.5, "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrected_field_teaches_the_next_similar_extraction() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    let pipeline = || {
        Pipeline::parse(
            Path::new("p.toml"),
            &ROUTED.replace(
                "system = \"Extract.\"",
                "system = \"Extract.\"\nfew_shot_from_corrections = 1",
            ),
        )
        .unwrap()
    };
    let api = Arc::new(Answers {
        answers: vec![(
            "Alice".into(),
            json!({"customer": "Alice", "threat_level": "low"}),
        )],
        requests: Mutex::default(),
    });
    let first = b"From: Alice <alice@example.com>\r\nSubject: Order\r\n\r\nAlice Smith of Acme Tools orders 4 drills.\r\n";
    let id = store
        .ingest("t", "1", first, "parse", 1)
        .await
        .unwrap()
        .message_id;
    run(&store, pipeline(), api.clone()).await;
    let correction = verre_store::FieldCorrection {
        value: json!("Acme Tools"),
        previous: json!("Alice"),
        quote: Some("Acme Tools".into()),
        context: Some("Alice Smith of Acme Tools orders 4 drills.".into()),
    };
    store
        .correct_field(id, "customer", &correction, "rita")
        .await
        .unwrap();

    let second = b"From: Alice <alice@example.com>\r\nSubject: Order again\r\n\r\nAlice Smith of Acme Tools orders 9 saws.\r\n";
    let again = store
        .ingest("t", "2", second, "parse", 1)
        .await
        .unwrap()
        .message_id;
    run(&store, pipeline(), api.clone()).await;
    // The evidence says which corrected fields the extraction was shown, and from where.
    let shown = store.evidence(again).await.unwrap().unwrap()["few_shot"].clone();
    assert_eq!(shown[0]["message"], json!(id), "{shown}");
    assert_eq!(shown[0]["field"], "customer", "{shown}");
    assert!(shown[0]["similarity"].as_f64().is_some(), "{shown}");
    let requests = api.requests.lock().unwrap();
    let system = |r: &Value| r["messages"][0]["content"].as_str().unwrap().to_string();
    assert!(
        !system(&requests[0]).contains("Reviewers corrected"),
        "no corrections yet"
    );
    let taught = system(requests.last().unwrap());
    assert!(
        taught.contains(
            "where the document reads \"Alice Smith of Acme Tools orders 4 drills.\", customer is \"Acme Tools\" (not \"Alice\")"
        ),
        "{taught}"
    );
}
