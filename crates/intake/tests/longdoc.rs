//! Whole documents through the pipeline with a stand-in model that reads its prompt: a
//! 50-page contract is read in chunks, all chunk requests at once, merged by the pipeline's
//! rules with each value's page; the pages past the budget are listed; labels take the
//! worst chunk. The real model runs the same contract in crates/cli/tests/longdoc.rs.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use verre_intake::demo::{long_contract, mail_with_pdf};
use verre_intake::{BoxFuture, ModelApi, ModelCallError, Pipeline, StageRunner};
use verre_store::Store;

const PIPELINE: &str = r#"
name = "contracts"
[limits]
max_attempts = 1
chunk_tokens = 1000
MAX_PAGES

[extract]
model = "reader"
system = "You read contracts."
schema = { type = "object", required = ["counterparty"], properties = { counterparty = { type = "string" }, termination_deadline = { type = "string" }, penalty_amount = { type = "number" } } }
MERGE

[[labels]]
name = "risk"
values = ["low", "medium", "high"]

[[route]]
name = "all"
actions = ["hook"]

[[action]]
name = "hook"
kind = "webhook"
url = "https://crm.example/hook"
payload = "{{ extract | tojson }}"
"#;

/// A model that reads its prompt as a careful clerk would, with a little latency, counting
/// how many of its calls are in flight at once.
#[derive(Default)]
struct Reader {
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    prompts: Mutex<Vec<String>>,
}

fn between<'a>(text: &'a str, before: &str, after: &str) -> Option<&'a str> {
    let start = text.find(before)? + before.len();
    let end = text[start..].find(after)? + start;
    Some(text[start..end].trim())
}

impl Reader {
    fn read(prompt: &str) -> Value {
        if prompt.starts_with("A long document was read in parts") {
            // Reconciling: the last part that stated the field.
            let mut out = json!({});
            for line in prompt.lines().filter(|l| l.starts_with("Part ")) {
                let values: Value =
                    serde_json::from_str(&line[line.find("): ").unwrap() + 3..]).unwrap();
                for (k, v) in values.as_object().unwrap() {
                    if !v.is_null() {
                        out[k] = v.clone();
                    }
                }
            }
            return out;
        }
        let counterparty = between(prompt, "(the Client) and\n", " (the Counterparty)");
        let deadline = between(prompt, "no later than ", " (the termination deadline)").map(|d| {
            if d == "15 September 2027" {
                "2027-09-15"
            } else {
                d
            }
        });
        let penalty = prompt.contains("EUR 48,500.00").then_some(48500.0);
        let risk = if penalty.is_some() {
            "high"
        } else if deadline.is_some() {
            "medium"
        } else {
            "low"
        };
        json!({"counterparty": counterparty, "termination_deadline": deadline, "penalty_amount": penalty, "risk": risk})
    }
}

impl ModelApi for Reader {
    fn chat(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            // Latency, so that calls made one after another would never overlap.
            tokio::time::sleep(Duration::from_millis(30)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let messages = request["messages"].as_array().unwrap();
            let prompt = messages.last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_string();
            self.prompts.lock().unwrap().push(prompt.clone());
            let mut value = Self::read(&prompt);
            // Answer only what the request's schema asks for.
            let props = &request["response_format"]["json_schema"]["schema"]["properties"];
            value
                .as_object_mut()
                .unwrap()
                .retain(|k, _| props.get(k).is_some());
            Ok(
                json!({"choices": [{"message": {"content": value.to_string()}}],
                      "usage": {"prompt_tokens": prompt.len() / 4, "completion_tokens": 20}}),
            )
        })
    }
}

struct Run {
    extract: Value,
    evidence: Option<Value>,
    payload: Value,
    reader: Arc<Reader>,
}

async fn run(dir: &Path, shuffle: Option<u64>, limits: &str, merge: &str) -> (Run, [u32; 3]) {
    let contract = long_contract(50, shuffle).unwrap();
    let text = PIPELINE
        .replace("MAX_PAGES", limits)
        .replace("MERGE", merge);
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let pipeline = Pipeline::load(&path).unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.join("verre.db").display()))
        .await
        .unwrap();
    let reader = Arc::new(Reader::default());
    let runner = Arc::new(StageRunner::new(
        store.clone(),
        Arc::new(pipeline),
        reader.clone(),
        None,
    ));
    let mail = mail_with_pdf(
        "Counsel <counsel@northwind.example>",
        "Signed MSA",
        "Please find the signed agreement attached.",
        "msa.pdf",
        &contract.pdf,
    );
    let id = store
        .ingest("t", "1", &mail, "parse", 1)
        .await
        .unwrap()
        .message_id;
    let stats = verre_intake::run_until_idle(runner, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        stats.quarantined,
        0,
        "{:?}",
        store.quarantined().await.unwrap()
    );
    let extract = store.stage_output(id, "extract").await.unwrap().unwrap();
    let evidence = store.evidence(id).await.unwrap();
    let d = store.detail(id).await.unwrap().unwrap();
    let payload = serde_json::from_str(&d.actions[0].payload).unwrap();
    (
        Run {
            extract,
            evidence,
            payload,
            reader,
        },
        contract.pages,
    )
}

fn page(extract: &Value, field: &str) -> Value {
    extract["_document"]["sources"][field]["page"].clone()
}

#[tokio::test]
async fn a_50_page_contract_is_read_whole_in_chunks_at_once_with_pages() {
    for shuffle in [None, Some(7)] {
        let dir = tempfile::tempdir().unwrap();
        let (r, pages) = run(dir.path(), shuffle, "", "").await;
        let x = &r.extract;
        assert_eq!(x["counterparty"], "Northwind Logistics B.V.", "{x:#}");
        assert_eq!(x["termination_deadline"], "2027-09-15", "{x:#}");
        assert_eq!(x["penalty_amount"], 48500.0, "{x:#}");
        assert_eq!(page(x, "counterparty"), pages[0], "{shuffle:?}: {x:#}");
        assert_eq!(page(x, "termination_deadline"), pages[1], "{shuffle:?}");
        assert_eq!(page(x, "penalty_amount"), pages[2], "{shuffle:?}");
        assert_eq!(x["risk"], "high", "the worst chunk's label");
        assert_eq!(
            page(x, "risk"),
            Value::Null,
            "a label is the document's, not a page's"
        );
        let doc = &x["_document"];
        let chunks = doc["chunks"].as_u64().unwrap() as usize;
        assert!(chunks >= 5, "{doc:#}");
        assert_eq!(
            (doc["pages_read"].as_u64(), doc["pages_total"].as_u64()),
            (Some(50), Some(50))
        );
        assert_eq!(doc["unread"], json!([]));
        assert_eq!(
            r.reader.most_in_flight.load(Ordering::SeqCst),
            chunks,
            "every chunk's request is in flight at once"
        );
        // The evidence is the merged extraction's, each value found on its page.
        let e = r
            .evidence
            .as_ref()
            .expect("the chunked extraction keeps evidence");
        let counterparty = e["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == "counterparty")
            .unwrap_or_else(|| panic!("{e:#}"));
        assert_eq!(counterparty["value"], x["counterparty"]);
        assert_eq!(counterparty["span"]["place"]["attachment"], "msa.pdf");
        assert_eq!(
            counterparty["span"]["place"]["page"], pages[0],
            "{shuffle:?}"
        );
        // Templates see the schema's fields, not verre's record of the document.
        assert!(r.payload.get("_document").is_none(), "{}", r.payload);
        assert_eq!(r.payload["counterparty"], "Northwind Logistics B.V.");
        if shuffle.is_some() {
            assert_ne!(pages, [1, 37, 49], "the shuffle moved the facts");
        }
    }
}

#[tokio::test]
async fn pages_past_the_budget_are_recorded_as_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = run(dir.path(), None, "max_pages = 40", "").await;
    let x = &r.extract;
    let doc = &x["_document"];
    assert_eq!(
        (doc["pages_read"].as_u64(), doc["pages_total"].as_u64()),
        (Some(40), Some(50)),
        "{doc:#}"
    );
    assert_eq!(
        doc["unread"][0]["line"],
        "msa.pdf: pages 41-50 not read: budget (max_pages = 40)"
    );
    assert_eq!(x["termination_deadline"], "2027-09-15");
    assert!(
        x.get("penalty_amount").is_none(),
        "page 49 was not read: {x:#}"
    );
    // Nothing from the unread pages reached the model.
    let prompts = r.reader.prompts.lock().unwrap();
    assert!(prompts.iter().all(|p| !p.contains("Section 45")));
}

#[tokio::test]
async fn a_field_ruled_reconcile_is_decided_by_one_more_call() {
    let dir = tempfile::tempdir().unwrap();
    let (r, pages) = run(
        dir.path(),
        None,
        "",
        "merge = { termination_deadline = \"reconcile\" }",
    )
    .await;
    let x = &r.extract;
    assert_eq!(x["termination_deadline"], "2027-09-15", "{x:#}");
    assert_eq!(page(x, "termination_deadline"), pages[1]);
    let prompts = r.reader.prompts.lock().unwrap();
    let reconciling: Vec<&String> = prompts
        .iter()
        .filter(|p| p.starts_with("A long document was read in parts"))
        .collect();
    assert_eq!(reconciling.len(), 1);
    assert!(
        reconciling[0].contains(r#"{"termination_deadline":"2027-09-15"}"#),
        "{}",
        reconciling[0]
    );
}

/// A summariser that copies: for each section it is asked about, the topic is the chunk's
/// first line of text, and the points (as many as the schema allows) one cited to a page
/// that is not in the chunk, then the chunk's last line cited to its page. Counts calls in
/// flight.
#[derive(Default)]
struct Summariser {
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    calls: AtomicUsize,
}

impl ModelApi for Summariser {
    fn chat(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.calls.fetch_add(1, Ordering::SeqCst);
            let prompt = request["messages"][1]["content"].as_str().unwrap();
            let schema = &request["response_format"]["json_schema"]["schema"];
            let (mut page, mut first, mut last) = (0, None, None);
            for line in prompt
                .split("\n\nThe text above is")
                .next()
                .unwrap()
                .lines()
            {
                match line
                    .strip_prefix("[page ")
                    .and_then(|n| n.strip_suffix(']'))
                {
                    Some(n) => page = n.parse().unwrap(),
                    None if !line.starts_with("Chapter ") && !line.starts_with('[') => {
                        first.get_or_insert(line);
                        last = Some((line, page));
                    }
                    None => {}
                }
            }
            let (last_line, last_page) = last.unwrap();
            let mut answer = serde_json::Map::new();
            for (key, section) in schema["properties"].as_object().unwrap() {
                let most = section["properties"]["points"]["maxItems"]
                    .as_u64()
                    .unwrap();
                let points = [
                    json!({"text": "A point from elsewhere", "page": 999}),
                    json!({"text": last_line, "page": last_page}),
                ];
                answer.insert(
                    key.clone(),
                    json!({"topic": first.unwrap(), "points": points[..most.min(2) as usize]}),
                );
            }
            let content = Value::Object(answer).to_string();
            Ok(json!({"choices": [{"message": {"content": content}}],
                      "usage": {"prompt_tokens": prompt.len() / 4, "completion_tokens": 10}}))
        })
    }
}

const TOPICS: [&str; 10] = [
    "beekeeping",
    "glaciers",
    "semiconductors",
    "orchestras",
    "lighthouses",
    "vineyards",
    "volcanoes",
    "submarines",
    "orchards",
    "railways",
];

#[tokio::test]
async fn a_200_page_report_is_summarised_a_line_a_chapter_with_page_citations() {
    let pdf = verre_intake::demo::sectioned_report(200, &TOPICS).unwrap();
    let pages = verre_intake::document::file_pages("report.pdf", &pdf).unwrap();
    assert_eq!(pages.len(), 200);
    let api = Summariser::default();
    let progress = Mutex::new(Vec::new());
    let options = verre_intake::summary::SummaryOptions {
        model: "m".into(),
        words: 600,
        chunk_tokens: 1500,
    };
    let s = verre_intake::summary::summarize(&api, &pages, &options, &|done, total| {
        progress.lock().unwrap().push((done, total))
    })
    .await
    .unwrap();
    assert_eq!(s.sections.len(), 10, "{:#?}", s.sections);
    let lines: Vec<&str> = s.text.lines().collect();
    assert_eq!(lines.len(), 11, "{}", s.text);
    // The report's standard clauses recur in every chapter: said once, not per chapter.
    assert_eq!(s.recurring.len(), 12, "{:#?}", s.recurring);
    assert!(
        lines[10].starts_with("Recurring on many pages (12 lines): The "),
        "{}",
        s.text
    );
    for (i, (topic, line)) in TOPICS.iter().zip(&lines).enumerate() {
        // Chapter i is on pages 20 i + 1 to 20 i + 20; the model's topic is cited to the
        // chapter's first page, its points to the pages they are on, never elsewhere.
        let (a, b) = (i * 20 + 1, i * 20 + 20);
        let head = format!("Chapter {}: {topic} (pp. {a}-{b}): ", i + 1);
        assert!(line.starts_with(&head), "{head} missing: {line}");
        assert!(line.contains(&format!(" [p. {a}].")), "{line}");
        assert!(line.contains(&format!("concerns {topic} [p. ")), "{line}");
        for cite in line.split("[p. ").skip(1) {
            let n: usize = cite.split(']').next().unwrap().parse().unwrap();
            assert!((a..=b).contains(&n), "{line}");
        }
    }
    assert!(!s.text.contains("elsewhere"), "{}", s.text);
    assert!(s.text.split_whitespace().count() <= 600, "{}", s.text);
    assert!(s.chunks >= 10, "{s:?}");
    assert_eq!(
        api.most_in_flight.load(Ordering::SeqCst),
        s.chunks,
        "every chunk's call at once"
    );
    assert_eq!(api.calls.load(Ordering::SeqCst), s.chunks);
    let last = *progress.lock().unwrap().last().unwrap();
    assert_eq!(last, (s.chunks, s.chunks));

    // Too few words for a line a chapter: chapters share lines, all their headings kept,
    // and the summary says which share.
    let short = verre_intake::summary::summarize(
        &api,
        &pages,
        &verre_intake::summary::SummaryOptions {
            words: 60,
            ..options
        },
        &|_, _| {},
    )
    .await
    .unwrap();
    for topic in TOPICS {
        assert!(short.text.contains(topic), "{topic}: {}", short.text);
    }
    assert!(
        short.text.split_whitespace().count() <= 60,
        "{}",
        short.text
    );
    assert!(
        short
            .text
            .ends_with("(To fit 60 words, sections share lines: 1-2, 3-4, 5-6, 7-8, 9-10.)"),
        "{}",
        short.text
    );
}

#[tokio::test]
async fn the_summarize_stage_summarises_the_documents_for_later_templates() {
    let dir = tempfile::tempdir().unwrap();
    let text = PIPELINE
        .replace("MAX_PAGES", "")
        .replace("MERGE", "")
        .replace(
            "payload = \"{{ extract | tojson }}\"",
            "payload = '{\"summary\": {{ summary | tojson }}}'\n\n[summary]\nwords = 60",
        );
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("verre.db").display()
    ))
    .await
    .unwrap();
    let runner = Arc::new(StageRunner::new(
        store.clone(),
        Arc::new(Pipeline::load(&path).unwrap()),
        Arc::new(verre_intake::StubBackend::default()),
        None,
    ));
    let contract = long_contract(50, None).unwrap();
    let mail = mail_with_pdf("a@b.example", "MSA", "attached", "msa.pdf", &contract.pdf);
    let id = store
        .ingest("t", "1", &mail, "parse", 1)
        .await
        .unwrap()
        .message_id;
    verre_intake::run_until_idle(runner, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let out = store.stage_output(id, "summarize").await.unwrap().unwrap();
    let summary = out["summary"].as_str().unwrap();
    // The contract has no section headings: lines by pages, the 50 pages covered, and
    // its clauses (each on many pages) once.
    assert!(summary.starts_with("Pages 1-"), "{out:#}");
    assert!(summary.contains("-50: "), "{out:#}");
    assert!(summary.contains("\nRecurring on many pages ("), "{out:#}");
    assert!(out["chunks"].as_u64().unwrap() >= 1, "{out:#}");
    assert_eq!(out["pages_read"], 50);
    let d = store.detail(id).await.unwrap().unwrap();
    assert_eq!(d.message.status, "processed");
    let payload: Value = serde_json::from_str(&d.actions[0].payload).unwrap();
    assert_eq!(payload["summary"], summary);
}
