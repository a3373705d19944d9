//! The pipeline end to end on the library: stages over the durable queue on SQLite and
//! PostgreSQL, cross-references against a business database, staged actions, PII tags,
//! the malformed-mail set, two workers on one PostgreSQL queue, and the real model.
//!
//! PostgreSQL: `VERRE_TEST_POSTGRES_URL` (scripts/ci-services.sh). Eval data:
//! `$VERRE_SHARED_DIR` or the `shared/` folder beside the repository. The model:
//! `VERRE_SMOLLM2_GGUF`. Each is skipped when missing locally and required under CI.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use verre_intake::backend::validate;
use verre_intake::{
    BoxFuture, ModelApi, ModelCallError, PiiSpan, PiiTagger, Pipeline, Source, StageRunner,
    StubBackend, Worker, WorkerOptions,
};
use verre_store::Store;

const PIPELINE: &str = r#"
name = "test"
[limits]
max_attempts = 2
backoff_ms = 10

[extract]
model = "smollm2-135m"
system = "Extract."
schema = { type = "object", required = ["customer"], properties = { customer = { type = "string" } } }

[[labels]]
name = "threat_level"
values = ["low", "medium", "high", "critical"]

[crossref]
database = "sqlite://crm.db"

[[crossref.lookup]]
name = "customer"
sql = "SELECT id, name, tier FROM customers WHERE email = $1"
params = ["message.from"]

[[crossref.lookup]]
name = "by_subject"
sql = "SELECT id FROM customers WHERE name = $1"
params = ["message.subject"]

[[route]]
name = "known"
when = "lookup.customer | length > 0"
draft = true
actions = ["reply", "crm"]

[[route]]
name = "other"

[draft]
model = "smollm2-135m"
system = "Reply."
prompt = "Reply to {{ extract.customer }} ({{ lookup.customer[0].tier }})."

[[action]]
name = "reply"
kind = "reply"
subject = "Re: {{ message.subject }}"
body = "{{ draft }}"

[[action]]
name = "crm"
kind = "webhook"
url = "https://crm.example/hook"
payload = '{"message": {{ message.id }}, "tier": {{ lookup.customer[0].tier | tojson }}, "threat": {{ extract.threat_level | tojson }}}'
"#;

/// A pipeline file and its business database (customers: alice is gold) in `dir`.
async fn write_pipeline(dir: &Path) -> Pipeline {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=rwc", dir.join("crm.db").display());
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, tier TEXT);
         INSERT INTO customers (name, email, tier) VALUES ('Alice', 'alice@example.com', 'gold'), ('Bob', 'bob@example.com', 'silver');",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, PIPELINE).unwrap();
    Pipeline::load(&path).unwrap()
}

fn mail(from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: desk@example.org\r\nSubject: {subject}\r\nMessage-ID: <{}@t>\r\n\r\n{body}\r\n", subject.len())
        .into_bytes()
}

fn stub_models(stub: StubBackend) -> Arc<dyn ModelApi> {
    Arc::new(stub)
}

async fn sqlite(dir: &Path) -> Store {
    Store::open(&format!("sqlite://{}", dir.join("verre.db").display()))
        .await
        .unwrap()
}

/// Finds `@`-words: a stand-in for verre-pii, to test the hook and the storage.
struct AtWords;
impl PiiTagger for AtWords {
    fn tag(&self, text: &str) -> Vec<PiiSpan> {
        let mut out = Vec::new();
        let mut start = 0;
        for word in text.split_inclusive(|c: char| c.is_whitespace() || c == '<' || c == '>') {
            let w = word.trim_end_matches(|c: char| c.is_whitespace() || c == '<' || c == '>');
            if w.contains('@') {
                out.push(PiiSpan {
                    kind: "email".into(),
                    start,
                    end: start + w.len(),
                });
            }
            start += word.len();
        }
        out
    }
}

async fn end_to_end(store: Store, dir: &Path) {
    let pipeline = write_pipeline(dir).await;
    let runner = Arc::new(StageRunner::new(
        store.clone(),
        Arc::new(pipeline),
        stub_models(StubBackend::default()),
        Some(Arc::new(AtWords)),
    ));
    let known = store
        .ingest(
            "t",
            "1",
            &mail("Alice <alice@example.com>", "Order", "Where is my order?"),
            "parse",
            2,
        )
        .await
        .unwrap()
        .message_id;
    let unknown = store
        .ingest(
            "t",
            "2",
            &mail("zed@example.net", "Hello", "Hi there"),
            "parse",
            2,
        )
        .await
        .unwrap()
        .message_id;
    // Interpolated, this subject would match every customer; bound, it matches none.
    let injection = store
        .ingest(
            "t",
            "3",
            &mail("eve@example.net", "x' OR '1'='1", "hi"),
            "parse",
            2,
        )
        .await
        .unwrap()
        .message_id;
    let stats = verre_intake::run_until_idle(runner, 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        stats.quarantined,
        0,
        "{stats:?}: {:?}",
        store.quarantined().await.unwrap()
    );

    let d = store.detail(known).await.unwrap().unwrap();
    assert_eq!(d.message.status, "processed");
    assert_eq!(d.results.len(), 7, "one result per stage");
    let route = store.stage_output(known, "route").await.unwrap().unwrap();
    assert_eq!(route["route"], "known");
    assert_eq!(
        store
            .stage_output(known, "crossref")
            .await
            .unwrap()
            .unwrap()["customer"][0]["tier"],
        "gold"
    );
    assert_eq!(d.actions.len(), 2);
    let reply = d.actions.iter().find(|a| a.kind == "reply").unwrap();
    assert_eq!(reply.target, "alice@example.com");
    let reply: serde_json::Value = serde_json::from_str(&reply.payload).unwrap();
    assert_eq!(reply["subject"], "Re: Order");
    assert!(reply["body"].as_str().unwrap().contains("stub draft"));
    let hook = d.actions.iter().find(|a| a.kind == "webhook").unwrap();
    let payload: serde_json::Value = serde_json::from_str(&hook.payload).unwrap();
    assert_eq!(payload["tier"], "gold");
    assert_eq!(payload["message"], known);
    assert!(["low", "medium", "high", "critical"].contains(&payload["threat"].as_str().unwrap()));
    // PII: the hook's spans are stored against the part whose text they index.
    assert!(!d.pii_tags.is_empty());
    for t in &d.pii_tags {
        let part = d.parts.iter().find(|p| Some(p.idx) == t.part_idx).unwrap();
        assert!(part.text.as_deref().unwrap()[t.start as usize..t.end as usize].contains('@'));
    }

    let d = store.detail(unknown).await.unwrap().unwrap();
    assert_eq!(
        store.stage_output(unknown, "route").await.unwrap().unwrap()["route"],
        "other"
    );
    assert_eq!(
        store.stage_output(unknown, "draft").await.unwrap().unwrap()["draft"],
        json!(null)
    );
    assert!(d.actions.is_empty());
    // The stage stage records the label values the pipeline declares, for the review desk.
    assert_eq!(
        store.stage_output(unknown, "stage").await.unwrap().unwrap()["labels"]["threat_level"],
        json!(["low", "medium", "high", "critical"])
    );
    assert_eq!(
        store
            .stage_output(injection, "crossref")
            .await
            .unwrap()
            .unwrap()["by_subject"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_runs_end_to_end_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    end_to_end(sqlite(dir.path()).await, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_runs_end_to_end_on_postgres() {
    let Some(url) = verre_store::testing::postgres_url("intake_e2e").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    end_to_end(Store::open(&url).await.unwrap(), dir.path()).await;
}

/// `$VERRE_SHARED_DIR`, else `shared/` beside the repository (where CI puts it).
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
    eprintln!(
        "skipped: no eval data at {} (set VERRE_SHARED_DIR)",
        dir.display()
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_malformed_mail_ends_processed_or_quarantined_with_a_reason() {
    let Some(shared) = shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path()).await;
    let pipeline = write_pipeline(dir.path()).await;
    let source = Source::detect(shared.join("eval/mail/malformed").to_str().unwrap()).unwrap();
    let (ids, _) = verre_intake::ingest(&store, &source, pipeline.max_attempts)
        .await
        .unwrap();
    assert!(ids.len() >= 20, "{} distinct messages", ids.len());
    let runner = Arc::new(StageRunner::new(
        store.clone(),
        Arc::new(pipeline),
        stub_models(StubBackend::default()),
        None,
    ));
    verre_intake::run_until_idle(runner, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let quarantine: HashMap<i64, _> = store
        .quarantined()
        .await
        .unwrap()
        .into_iter()
        .map(|q| (q.message_id, q))
        .collect();
    let mut processed = 0;
    for (id, status) in store.statuses(&ids).await.unwrap() {
        match status.as_str() {
            "processed" => processed += 1,
            "quarantined" => {
                let q = &quarantine[&id];
                assert!(
                    !q.reason.trim().is_empty(),
                    "message {id} quarantined without a reason"
                );
                eprintln!("quarantined {} at {}: {}", q.source_ref, q.stage, q.reason);
            }
            other => panic!("message {id} ended {other}"),
        }
    }
    eprintln!(
        "{processed} processed, {} quarantined of {}",
        quarantine.len(),
        ids.len()
    );
    assert_eq!(processed + quarantine.len(), ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_on_one_postgres_queue_never_process_a_message_twice() {
    let Some(url) = verre_store::testing::postgres_url("intake_two_workers").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Arc::new(write_pipeline(dir.path()).await);
    let log = dir.path().join("extractions.log");
    let n = 150;
    // Two stores, two pools: as two machines would be.
    let (a, b) = (
        Store::open(&url).await.unwrap(),
        Store::open(&url).await.unwrap(),
    );
    for i in 0..n {
        a.ingest(
            "t",
            &i.to_string(),
            &mail("bob@example.com", &format!("Mail {i}"), "body"),
            "parse",
            2,
        )
        .await
        .unwrap();
    }
    let stub = || {
        StubBackend::default()
            .with_log(&log)
            .with_delay(Duration::from_millis(2))
    };
    let ra = Arc::new(StageRunner::new(
        a.clone(),
        pipeline.clone(),
        stub_models(stub()),
        None,
    ));
    let rb = Arc::new(StageRunner::new(
        b.clone(),
        pipeline.clone(),
        stub_models(stub()),
        None,
    ));
    let (sa, sb) = tokio::join!(
        verre_intake::run_until_idle(ra, 2, Duration::from_secs(30)),
        verre_intake::run_until_idle(rb, 2, Duration::from_secs(30)),
    );
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert!(
        sa.completed > 0 && sb.completed > 0,
        "both machines worked: {sa:?} {sb:?}"
    );
    assert_eq!(
        sa.completed + sb.completed,
        n * verre_intake::STAGES.len() as u64,
        "one completion per message and stage"
    );
    assert_eq!(sa.lease_lost + sb.lease_lost, 0);
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let distinct: HashSet<&String> = lines.iter().collect();
    assert_eq!(lines.len() as u64, n, "each message extracted exactly once");
    assert_eq!(distinct.len() as u64, n);
    let totals = a.totals().await.unwrap();
    assert_eq!(totals.processed as u64, n);
    let actions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM actions")
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert_eq!(
        actions as u64,
        2 * n,
        "reply + webhook per message, none twice"
    );
}

#[test]
fn every_invoice_pdf_yields_its_text_with_page_numbers() {
    let Some(shared) = shared_dir() else { return };
    let dir = shared.join("eval/invoices");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let pdf = entry.unwrap().path();
        if pdf.extension().is_none_or(|e| e != "pdf") {
            continue;
        }
        let answer: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(pdf.with_extension("json")).unwrap())
                .unwrap();
        let answer = if answer.is_array() {
            answer[0].clone()
        } else {
            answer
        };
        let pages = verre_intake::parse::pdf_pages(&std::fs::read(&pdf).unwrap()).unwrap();
        assert!(!pages.is_empty());
        let squash = |s: &str| {
            s.chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>()
        };
        let number = squash(answer["invoice_number"].as_str().unwrap());
        assert!(
            squash(&pages.concat()).contains(&number),
            "{}: invoice number {number} not in the text",
            pdf.display()
        );
        n += 1;
    }
    assert_eq!(n, 5);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_model_extracts_valid_json_or_the_message_is_quarantined_with_why() {
    let Some(model) = model_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path()).await;
    let pipeline = write_pipeline(dir.path()).await;
    let schema = pipeline.extract.schema.clone();
    let models = served(&model, "smollm2-135m").await;
    let id = store
        .ingest("t", "1", &mail("Alice <alice@example.com>", "Server down", "Our production server has been down since 3 AM. Please help urgently. Alice, ACME Corp."), "parse", 2)
        .await
        .unwrap()
        .message_id;
    let runner = Arc::new(StageRunner::new(
        store.clone(),
        Arc::new(pipeline),
        models,
        None,
    ));
    verre_intake::run_until_idle(runner, 1, Duration::from_secs(60))
        .await
        .unwrap();
    let d = store.detail(id).await.unwrap().unwrap();
    match d.message.status.as_str() {
        "processed" => {
            let extraction = store.stage_output(id, "extract").await.unwrap().unwrap();
            eprintln!("extraction: {extraction}");
            validate(&schema, &extraction).expect("a stored extraction validates");
            let r = d.results.iter().find(|r| r.stage == "extract").unwrap();
            assert!(
                r.prompt_tokens > 0 && r.completion_tokens > 0,
                "tokens are counted"
            );
            let draft = store.stage_output(id, "draft").await.unwrap().unwrap();
            eprintln!("draft: {draft}");
            assert!(
                !draft["draft"].as_str().unwrap().is_empty(),
                "alice is known: a draft was written"
            );
        }
        "quarantined" => {
            let q = d.quarantine.unwrap();
            eprintln!("quarantined: {}", q.reason);
            assert_eq!(q.stage, "extract");
            assert!(q.reason.contains("no valid extraction"), "{}", q.reason);
        }
        other => panic!("ended {other}"),
    }
}

/// verre's `/v1` in-process over one loaded model, as `verre intake run` and `verre up`
/// give it to the pipeline.
async fn served(model: &Path, id: &str) -> Arc<dyn ModelApi> {
    struct Api(verre_server::internal::ApiClient);
    impl ModelApi for Api {
        fn chat(
            &self,
            request: serde_json::Value,
        ) -> BoxFuture<'_, Result<serde_json::Value, ModelCallError>> {
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

/// The Dovecot that scripts/ci-services.sh starts: (URL, CA file, Maildir to drop mail in).
fn imap_server() -> Option<(String, PathBuf, PathBuf)> {
    match (
        std::env::var("VERRE_TEST_IMAP_URL"),
        std::env::var_os("VERRE_TEST_IMAP_CA"),
        std::env::var_os("VERRE_TEST_IMAP_MAILDIR"),
    ) {
        (Ok(url), Some(ca), Some(maildir)) if !url.is_empty() => {
            Some((url, ca.into(), maildir.into()))
        }
        _ if std::env::var_os("CI").is_some() => {
            panic!("VERRE_TEST_IMAP_URL/_CA/_MAILDIR must be set in CI (scripts/ci-services.sh)")
        }
        _ => {
            eprintln!("skipped IMAP: source scripts/ci-services.sh to start Dovecot");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imap_mailbox_over_tls_is_read_once_and_processed() {
    let Some((url, ca, maildir)) = imap_server() else {
        return;
    };
    // The server may be shared with earlier runs: this run's mails carry a token.
    let token = format!("{}-{}", std::process::id(), verre_store::now_ms());
    for i in 0..3 {
        let tmp = maildir.join("tmp").join(format!("{token}.{i}"));
        std::fs::write(
            &tmp,
            mail(
                "carol@example.com",
                &format!("imap {token} {i}"),
                "Hello over IMAP",
            ),
        )
        .unwrap();
        std::fs::rename(&tmp, maildir.join("new").join(format!("{token}.{i}"))).unwrap();
    }
    let ours = |mails: &[verre_intake::RawMail]| {
        mails
            .iter()
            .filter(|m| String::from_utf8_lossy(&m.bytes).contains(&token))
            .count()
    };

    let Source::Imap(imap) = Source::detect(&url).unwrap() else {
        panic!("an IMAP source")
    };
    let source = Source::Imap(imap.with_ca(&ca));
    assert_eq!(ours(&source.read().await.unwrap()), 3);
    assert_eq!(
        ours(&source.read().await.unwrap()),
        0,
        "each message is fetched once per process"
    );

    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path()).await;
    let pipeline = write_pipeline(dir.path()).await;
    let Source::Imap(fresh) = Source::detect(&url).unwrap() else {
        unreachable!()
    };
    let (ids, _) = verre_intake::ingest(&store, &Source::Imap(fresh.with_ca(&ca)), 2)
        .await
        .unwrap();
    let runner = Arc::new(StageRunner::new(
        store.clone(),
        Arc::new(pipeline),
        stub_models(StubBackend::default()),
        None,
    ));
    verre_intake::run_until_idle(runner, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let mut processed = 0;
    for id in ids {
        let parse = store.stage_output(id, "parse").await.unwrap().unwrap();
        if parse["subject"].as_str().unwrap().contains(&token) {
            assert_eq!(
                store.message(id).await.unwrap().unwrap().status,
                "processed"
            );
            processed += 1;
        }
    }
    assert_eq!(processed, 3);

    let wrong = url.replacen("verre-test-secret", "wrong", 1);
    let Source::Imap(bad) = Source::detect(&wrong).unwrap() else {
        unreachable!()
    };
    let err = Source::Imap(bad.with_ca(&ca)).read().await.unwrap_err();
    assert!(format!("{err:#}").contains("logging in"), "{err:#}");
    // The test CA is not among the system's roots: without it the server is refused.
    let Source::Imap(mut untrusted) = Source::detect(&url).unwrap() else {
        unreachable!()
    };
    untrusted.ca = None;
    let err = Source::Imap(untrusted).read().await.unwrap_err();
    assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_worker_releases_its_job_and_the_next_one_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path()).await;
    let pipeline = Arc::new(write_pipeline(dir.path()).await);
    let slow = Arc::new(StageRunner::new(
        store.clone(),
        pipeline.clone(),
        stub_models(StubBackend::default().with_delay(Duration::from_secs(4))),
        None,
    ));
    let id = store
        .ingest(
            "t",
            "1",
            &mail("Alice <alice@example.com>", "Order", "Where?"),
            "parse",
            2,
        )
        .await
        .unwrap()
        .message_id;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let worker = Worker::new(slow, WorkerOptions::new());
    let running = tokio::spawn(async move { worker.run_until(stop).await });
    // Wait until the worker is inside the (slow) extract stage.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leased: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE stage = 'extract' AND state = 'leased'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if leased == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "extract never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    let stats = running.await.unwrap().unwrap();
    // Released, not finished: the stage (4 s) was cancelled, not waited for.
    assert_eq!(
        (stats.released, stats.completed),
        (1, 1),
        "parse done, extract released"
    );
    let (state, attempts): (String, i64) = sqlx::query_as(
        "SELECT state, attempts FROM jobs WHERE message_id = $1 AND stage = 'extract'",
    )
    .bind(id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), attempts),
        ("ready", 0),
        "released, attempt not counted"
    );
    assert!(store.stage_output(id, "extract").await.unwrap().is_none());

    // A fast worker picks it up at once and the message completes.
    let fast = Arc::new(StageRunner::new(
        store.clone(),
        pipeline,
        stub_models(StubBackend::default()),
        None,
    ));
    Worker::new(fast, WorkerOptions::new()).run().await.unwrap();
    assert_eq!(
        store.message(id).await.unwrap().unwrap().status,
        "processed"
    );
}

/// Routes see the receiving server's verdict on the sender as `message.auth` (issue 18,
/// item 12): only the topmost `Authentication-Results` counts, not one the mail brought.
#[tokio::test]
async fn routes_see_the_topmost_authentication_results_as_message_auth() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path()).await;
    let path = dir.path().join("pipeline.toml");
    std::fs::write(
        &path,
        r#"
name = "auth"
[extract]
model = "smollm2-135m"
system = "Extract."
schema = { type = "object", required = ["customer"], properties = { customer = { type = "string" } } }

[[route]]
name = "authenticated"
when = "message.auth.dmarc == 'pass' and message.auth.authserv_id == 'mx.example.org'"

[[route]]
name = "suspect"
"#,
    )
    .unwrap();
    let runner = Arc::new(StageRunner::new(
        store.clone(),
        Arc::new(Pipeline::load(&path).unwrap()),
        stub_models(StubBackend::default()),
        None,
    ));
    let with_results = |results: &str| {
        let mut raw = results.as_bytes().to_vec();
        raw.extend(mail("Bank <support@bank.test>", "Invoice", "Please pay."));
        raw
    };
    let mut ids = Vec::new();
    for (n, raw) in [
        with_results("Authentication-Results: mx.example.org; dkim=pass; spf=pass; dmarc=pass\r\n"),
        // The top header is the server's; the forged "pass" below it came with the mail.
        with_results(
            "Authentication-Results: mx.example.org; dmarc=fail (p=reject)\r\nReceived: by x\r\nAuthentication-Results: mx.example.org; dmarc=pass\r\n",
        ),
        mail("Bank <support@bank.test>", "No header", "Please pay."),
    ]
    .into_iter()
    .enumerate()
    {
        ids.push(
            store
                .ingest("t", &n.to_string(), &raw, "parse", 2)
                .await
                .unwrap()
                .message_id,
        );
    }
    verre_intake::run_until_idle(runner, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let route = |id| {
        let store = store.clone();
        async move { store.stage_output(id, "route").await.unwrap().unwrap()["route"].clone() }
    };
    assert_eq!(route(ids[0]).await, "authenticated");
    assert_eq!(route(ids[1]).await, "suspect");
    assert_eq!(route(ids[2]).await, "suspect");
    let parsed = store.stage_output(ids[1], "parse").await.unwrap().unwrap();
    assert_eq!(parsed["auth"]["dmarc"], "fail");
}

/// A stage past its time limit fails like any other error (issue 17, item 5): retried, then
/// quarantined after its attempts with the limit in the reason; the other stages keep
/// theirs (parse, under the default, completes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_past_its_time_limit_is_retried_then_quarantined_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path()).await;
    write_pipeline(dir.path()).await;
    let path = dir.path().join("pipeline.toml");
    let text = PIPELINE.replace(
        "backoff_ms = 10\n",
        "backoff_ms = 10\n\n[limits.stage_timeouts]\nextract = 1\n",
    );
    assert_ne!(text, PIPELINE);
    std::fs::write(&path, &text).unwrap();
    let pipeline = Pipeline::load(&path).unwrap();
    assert_eq!(pipeline.timeout("extract"), Duration::from_secs(1));
    assert_eq!(
        pipeline.timeout("parse"),
        verre_intake::pipeline::DEFAULT_STAGE_TIMEOUT
    );
    let id = store
        .ingest(
            "t",
            "1",
            &mail("Alice <alice@example.com>", "Order", "Where?"),
            "parse",
            2,
        )
        .await
        .unwrap()
        .message_id;
    // Every model call takes 3 s: longer than the extract stage may run.
    let runner = Arc::new(StageRunner::new(
        store.clone(),
        Arc::new(pipeline),
        stub_models(StubBackend::default().with_delay(Duration::from_secs(3))),
        None,
    ));
    let started = std::time::Instant::now();
    verre_intake::run_until_idle(runner, 1, Duration::from_secs(30))
        .await
        .unwrap();
    // Two attempts of about 1 s each, not two of 3 s.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let d = store.detail(id).await.unwrap().unwrap();
    assert_eq!(d.message.status, "quarantined");
    let q = d.quarantine.unwrap();
    assert_eq!(
        (q.stage.as_str(), q.attempts),
        ("extract", 2),
        "{}",
        q.reason
    );
    assert!(q.reason.contains("time limit of 1 s"), "{}", q.reason);

    // The limits are checked when the file is read.
    for (bad, what) in [
        (
            "[limits.stage_timeouts]\nextrct = 5\n",
            "no stage named \"extrct\"",
        ),
        ("[limits.stage_timeouts]\ndraft = 0\n", "at least 1 second"),
    ] {
        let text = PIPELINE.replace("backoff_ms = 10\n", &format!("backoff_ms = 10\n\n{bad}"));
        std::fs::write(&path, &text).unwrap();
        let e = Pipeline::load(&path).unwrap_err();
        assert!(e.reason.contains(what), "{e}");
    }
}

/// Issue 18 (low): a SQLite business database is opened read-only, like PostgreSQL's: a
/// lookup whose SQL tries to write (an UPDATE, a copy of the database, a write to an
/// attached file) fails, the message ends in quarantine with why, and no file is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_cannot_write_to_a_sqlite_business_database() {
    for (n, sql) in [
        "UPDATE customers SET tier = 'platinum' WHERE email = $1 RETURNING id",
        "VACUUM INTO 'DIR/copy.db'",
        "ATTACH DATABASE 'DIR/other.db' AS other; CREATE TABLE other.stolen AS SELECT * FROM customers",
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let sql = sql.replace("DIR", &dir.path().display().to_string());
        let sql = sql.as_str();
        let store = sqlite(dir.path()).await;
        write_pipeline(dir.path()).await;
        let crm = dir.path().join("crm.db");
        let before = std::fs::read(&crm).unwrap();
        let path = dir.path().join("pipeline.toml");
        let params = if sql.contains("$1") {
            r#"params = ["message.from"]"#
        } else {
            "params = []"
        };
        let text = PIPELINE.replace(
            "sql = \"SELECT id, name, tier FROM customers WHERE email = $1\"\nparams = [\"message.from\"]",
            &format!("sql = \"{sql}\"\n{params}"),
        );
        assert_ne!(text, PIPELINE);
        std::fs::write(&path, text).unwrap();
        let runner = Arc::new(StageRunner::new(
            store.clone(),
            Arc::new(Pipeline::load(&path).unwrap()),
            stub_models(StubBackend::default()),
            None,
        ));
        let id = store
            .ingest(
                "t",
                "1",
                &mail("Alice <alice@example.com>", "Order", "Where?"),
                "parse",
                2,
            )
            .await
            .unwrap()
            .message_id;
        verre_intake::run_until_idle(runner, 1, Duration::from_secs(30))
            .await
            .unwrap();
        let d = store.detail(id).await.unwrap().unwrap();
        let q = d.quarantine.unwrap_or_else(|| panic!("{sql}: {:?}", d.jobs));
        assert_eq!(q.stage, "crossref", "{sql}");
        // Refused as a write, or (ATTACH) as a file a read-only connection cannot open.
        assert!(
            q.reason.contains("readonly") || q.reason.contains("unable to open"),
            "{sql}: {}",
            q.reason
        );
        assert_eq!(std::fs::read(&crm).unwrap(), before, "{sql}: crm.db changed");
        for name in ["copy.db", "other.db"] {
            let written = std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
            assert_eq!(written, 0, "case {n}: {sql} wrote {name}");
        }
    }
}
