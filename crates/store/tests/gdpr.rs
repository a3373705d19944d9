//! GDPR properties of the store: intake stages are audited, erasure leaves nothing of the
//! subject in any column of any table, content is encrypted at rest, retention purges and
//! the audit chain still verifies. Each runs on SQLite, and on PostgreSQL when
//! VERRE_TEST_POSTGRES_URL is set.

use std::time::Duration;

use serde_json::json;
use sqlx::Row;
use verre_store::erase::Subject;
use verre_store::{
    AuditEvent, Keyring, NewAction, NewPart, PiiTag, Retention, StageEffects, Store, crypto,
};

const JEANNE_EMAIL: &str = "jeanne.martin@example.fr";
const JEANNE_NAME: &str = "Jeanne Martin";
const PAUL_EMAIL: &str = "paul.durand@example.de";
const BODY_SECRET: &str = "ultramarine-otter-42";
const ATTACHMENT_SECRET: &str = "cobalt-heron-77";

fn mail(from_name: &str, from: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from_name} <{from}>\r\nTo: factures@acme.example\r\nSubject: Facture 2024\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// Three messages: two from Jeanne (one ends in quarantine), one from Paul; each with
/// parts, PII tags, a stage output and, for the processed ones, a staged action.
async fn fill(store: &Store) -> Vec<i64> {
    let inputs = [
        mail(
            JEANNE_NAME,
            JEANNE_EMAIL,
            &format!("Bonjour, je suis {JEANNE_NAME}. {BODY_SECRET}"),
        ),
        mail("Paul Durand", PAUL_EMAIL, "Hallo, anbei die Rechnung."),
        mail(
            "Accounts",
            "accounts@vendor.example",
            &format!("Re: the invoice for Ms {JEANNE_NAME}"),
        ),
    ];
    let mut ids = Vec::new();
    for (i, raw) in inputs.iter().enumerate() {
        let r = store
            .ingest("test", &format!("mail-{i}.eml"), raw, "parse", 1)
            .await
            .unwrap();
        ids.push(r.message_id);
    }
    while let Some(job) = store.claim("w1", Duration::from_secs(30)).await.unwrap() {
        let raw = String::from_utf8(store.raw_message(job.message_id).await.unwrap()).unwrap();
        if job.message_id == ids[2] {
            let reason = format!("no invoice found in the mail about {JEANNE_NAME}");
            store
                .fail(&job, &reason, true, Duration::from_millis(1))
                .await
                .unwrap();
            continue;
        }
        let from = if raw.contains(JEANNE_EMAIL) {
            JEANNE_EMAIL
        } else {
            PAUL_EMAIL
        };
        let attachment = if from == JEANNE_EMAIL {
            format!("Invoice for {JEANNE_NAME}, {ATTACHMENT_SECRET}")
        } else {
            "Rechnung 17".to_string()
        };
        let effects = StageEffects {
            output: json!({"from": from, "parts": 2}),
            parts: vec![
                NewPart {
                    idx: 0,
                    kind: "text".into(),
                    filename: None,
                    content_type: "text/plain".into(),
                    size: raw.len() as i64,
                    supported: true,
                    note: None,
                    text: Some(raw.clone()),
                    pages: None,
                },
                NewPart {
                    idx: 1,
                    kind: "attachment".into(),
                    filename: Some("invoice.pdf".into()),
                    content_type: "application/pdf".into(),
                    size: 100,
                    supported: true,
                    note: None,
                    text: Some(attachment.clone()),
                    pages: Some(vec![attachment]),
                },
            ],
            pii_tags: vec![PiiTag {
                part_idx: Some(0),
                kind: "email".into(),
                start: 6,
                end: 20,
            }],
            actions: vec![NewAction {
                name: "reply".into(),
                kind: "reply".into(),
                target: from.into(),
                payload: json!({"to": from, "body": "Merci"}).to_string(),
            }],
            ..Default::default()
        };
        assert!(store.complete(&job, &effects, None, 1).await.unwrap());
    }
    // What another component records about the subject: a review note on Paul's reply
    // (found by the name in its detail), and a delivery of Jeanne's (found by its action).
    let action = |id: i64| async move { store.actions(id).await.unwrap()[0].id };
    store
        .audit(AuditEvent {
            actor: "user:reviewer",
            action: "review.approve",
            subject: &format!("action:{}", action(ids[1]).await),
            detail: json!({"note": format!("reply cc {JEANNE_NAME} approved")}),
        })
        .await
        .unwrap();
    store
        .audit(AuditEvent {
            actor: "system:delivery",
            action: "delivery.sent",
            subject: &format!("action:{}", action(ids[0]).await),
            detail: json!({"message": ids[0], "response_status": 200}),
        })
        .await
        .unwrap();
    ids
}

/// Every value of every column of every table, found through the catalog (so tables added
/// by later migrations are scanned too), as text; binary columns as bytes.
async fn every_value(store: &Store) -> Vec<(String, String, Vec<u8>)> {
    let pool = store.pool();
    let columns: Vec<(String, String, bool)> = match store.backend() {
        verre_store::Backend::Sqlite => {
            let mut out = Vec::new();
            let tables = sqlx::query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            for t in tables {
                let table: String = t.get("name");
                for c in sqlx::query("SELECT name FROM pragma_table_info($1)")
                    .bind(&table)
                    .fetch_all(pool)
                    .await
                    .unwrap()
                {
                    out.push((table.clone(), c.get("name"), false));
                }
            }
            out
        }
        verre_store::Backend::Postgres => sqlx::query(
            "SELECT CAST(table_name AS TEXT) AS t, CAST(column_name AS TEXT) AS c,
                    CAST(data_type AS TEXT) AS k
             FROM information_schema.columns WHERE table_schema = current_schema()",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("t"), r.get("c"), r.get::<String, _>("k") == "bytea"))
        .collect(),
    };
    assert!(columns.len() > 40, "the catalog lists the schema");
    let mut values = Vec::new();
    for (table, column, bytea) in columns {
        // Binary columns come back as their bytes; everything else as its text.
        let expr = match (store.backend(), bytea) {
            (verre_store::Backend::Sqlite, _) => format!("CAST(\"{column}\" AS BLOB)"),
            (verre_store::Backend::Postgres, true) => format!("\"{column}\""),
            (verre_store::Backend::Postgres, false) => {
                format!("convert_to(CAST(\"{column}\" AS TEXT), 'UTF8')")
            }
        };
        let sql = format!("SELECT {expr} AS v FROM \"{table}\"");
        for r in sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .unwrap()
        {
            let v: Option<Vec<u8>> = r.get("v");
            values.push((table.clone(), column.clone(), v.unwrap_or_default()));
        }
    }
    values
}

fn mentions(values: &[(String, String, Vec<u8>)], needle: &str) -> Vec<String> {
    let needle = needle.to_lowercase();
    values
        .iter()
        .filter(|(_, _, v)| String::from_utf8_lossy(v).to_lowercase().contains(&needle))
        .map(|(t, c, _)| format!("{t}.{c}"))
        .collect()
}

async fn sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    (dir, store)
}

fn keyring() -> Keyring {
    Keyring::parse(&crypto::generate_key().unwrap(), "test").unwrap()
}

async fn erasure_leaves_nothing(store: Store) {
    let ids = fill(&store).await;
    let subject = Subject::parse(JEANNE_EMAIL).unwrap();
    // Creates the erasure key first, so that the dry run below changes nothing at all.
    store.subject_hash(&subject).await.unwrap();
    let before = every_value(&store).await;
    assert!(!mentions(&before, PAUL_EMAIL).is_empty());
    if store.keys().is_none() {
        assert!(!mentions(&before, JEANNE_EMAIL).is_empty());
    }

    // A dry run reports and changes nothing.
    let dry = store.erase(&subject, "cli", true).await.unwrap();
    assert_eq!(
        dry.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [ids[0]]
    );
    assert_eq!(dry.rows["messages"], 1);
    assert_eq!(every_value(&store).await, before);

    // By e-mail: the message from Jeanne goes, Paul's stays.
    let r = store.erase(&subject, "cli", false).await.unwrap();
    assert!(r.residual.is_empty(), "{:?}", r.residual);
    assert_eq!(r.rows["parts"], 2);
    assert_eq!(
        r.tombstoned, 3,
        "its ingest and parse entries and its action's delivery: {r:?}"
    );
    // By name: the quarantined mail that mentions her, and the review note.
    let by_name = store
        .erase(&Subject::parse(JEANNE_NAME).unwrap(), "cli", false)
        .await
        .unwrap();
    assert_eq!(
        by_name.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [ids[2]]
    );
    assert!(by_name.residual.is_empty(), "{:?}", by_name.residual);
    assert_eq!(
        by_name.tombstoned, 3,
        "ingest, quarantine and the review note"
    );

    let after = every_value(&store).await;
    for needle in [JEANNE_EMAIL, JEANNE_NAME, BODY_SECRET, ATTACHMENT_SECRET] {
        assert!(
            mentions(&after, needle).is_empty(),
            "{needle} is still in {:?}",
            mentions(&after, needle)
        );
    }
    if store.keys().is_none() {
        assert!(
            !mentions(&after, PAUL_EMAIL).is_empty(),
            "Paul's data stays"
        );
    }
    assert!(store.detail(ids[1]).await.unwrap().is_some());

    let audit = store.audit_verify().await.unwrap();
    assert!(audit.ok(), "{:?}", audit.problems);
    assert!(audit.tombstones >= 3);
    let erasures = store
        .audit_find(
            &[format!("subject:{}", r.subject_hash)],
            Some("gdpr.erase"),
            10,
        )
        .await
        .unwrap();
    assert_eq!(erasures.len(), 1);
    assert_eq!(erasures[0].detail.as_ref().unwrap()["messages"], 1);
    // The same subject always gets the same hash; another one a different hash.
    assert_eq!(store.subject_hash(&subject).await.unwrap(), r.subject_hash);
    assert_ne!(
        store
            .subject_hash(&Subject::parse(PAUL_EMAIL).unwrap())
            .await
            .unwrap(),
        r.subject_hash
    );
}

#[tokio::test]
async fn erasure_sqlite_clear() {
    let (_d, store) = sqlite().await;
    erasure_leaves_nothing(store).await;
}

#[tokio::test]
async fn erasure_sqlite_encrypted() {
    let (_d, store) = sqlite().await;
    erasure_leaves_nothing(store.with_keys(Some(keyring())).await.unwrap()).await;
}

#[tokio::test]
async fn erasure_postgres() {
    let Some(url) = verre_store::testing::postgres_url("gdpr_erase").await else {
        return;
    };
    let store = Store::open(&url).await.unwrap();
    erasure_leaves_nothing(store.with_keys(Some(keyring())).await.unwrap()).await;
}

#[tokio::test]
async fn intake_stages_are_audited() {
    let (_d, store) = sqlite().await;
    let ids = fill(&store).await;
    let entries = store
        .audit_find(&[format!("message:{}", ids[0])], None, 100)
        .await
        .unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["intake.ingest", "intake.parse"]);
    assert_eq!(entries[1].detail.as_ref().unwrap()["outcome"], "done");
    let quarantined = store
        .audit_find(&[format!("message:{}", ids[2])], Some("intake.parse"), 10)
        .await
        .unwrap();
    assert_eq!(
        quarantined[0].detail.as_ref().unwrap()["outcome"],
        "quarantined"
    );
    // A retry is audited as such.
    store
        .ingest("test", "retry.eml", b"Subject: x\r\n\r\ny", "parse", 3)
        .await
        .unwrap();
    let job = store
        .claim("w1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    store
        .fail(&job, "model unavailable", false, Duration::from_millis(1))
        .await
        .unwrap();
    let retry = store
        .audit_find(&[format!("message:{}", job.message_id)], None, 10)
        .await
        .unwrap();
    assert_eq!(
        retry.last().unwrap().detail.as_ref().unwrap()["outcome"],
        "retry"
    );
    assert!(store.audit_verify().await.unwrap().ok());
}

/// The bytes of the database as a copy would have them: the file and its write-ahead log.
fn file_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for name in ["verre.db", "verre.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            bytes.extend(b);
        }
    }
    bytes
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_copy_without_the_key_reveals_no_content_and_rotation_reencrypts() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = crypto::generate_key().unwrap();
    let store = Store::open_in_home(dir.path())
        .await
        .unwrap()
        .with_keys(Some(Keyring::parse(&k1, "k1").unwrap()))
        .await
        .unwrap();
    let ids = fill(&store).await;
    // With the key, everything reads back.
    let detail = store.detail(ids[0]).await.unwrap().unwrap();
    assert!(
        detail.parts[1]
            .text
            .as_deref()
            .unwrap()
            .contains(ATTACHMENT_SECRET)
    );
    assert!(
        String::from_utf8(store.raw_message(ids[0]).await.unwrap())
            .unwrap()
            .contains(BODY_SECRET)
    );
    assert_eq!(detail.results[0].output["from"], JEANNE_EMAIL);
    store.flush_deleted().await.unwrap();
    let bytes = file_bytes(dir.path());
    assert!(bytes.len() > 10_000);
    for secret in [
        BODY_SECRET,
        ATTACHMENT_SECRET,
        "Bonjour, je suis",
        "Hallo, anbei",
    ] {
        assert!(
            !contains(&bytes, secret),
            "{secret} is readable in the file"
        );
    }
    // The check can fail: the same data stored in clear is found.
    let (clear_dir, clear) = sqlite().await;
    fill(&clear).await;
    clear.flush_deleted().await.unwrap();
    assert!(contains(&file_bytes(clear_dir.path()), BODY_SECRET));

    // Without the key: reads fail clearly, and writes are refused rather than stored in clear.
    let keyless = Store::open_in_home(dir.path()).await.unwrap();
    let e = format!("{:#}", keyless.raw_message(ids[0]).await.unwrap_err());
    assert!(e.contains("VERRE_DATA_KEY"), "{e}");
    let e = format!(
        "{:#}",
        keyless
            .ingest("test", "new.eml", b"Subject: new\r\n\r\nhello", "parse", 1)
            .await
            .unwrap_err()
    );
    assert!(e.contains("no data key"), "{e}");

    // Rotation: a new key first, the old one still readable; rekey; then the new key alone.
    let k2 = crypto::generate_key().unwrap();
    let both = Keyring::parse(&format!("{k2}\n{k1}"), "both").unwrap();
    let new_id = both.current_id().to_string();
    let rotated = Store::open_in_home(dir.path())
        .await
        .unwrap()
        .with_keys(Some(both))
        .await
        .unwrap();
    let r = rotated.rekey().await.unwrap();
    assert_eq!((r.messages, r.parts), (3, 4));
    assert_eq!(r.stage_results, 2);
    let usage = rotated.key_usage().await.unwrap();
    // 3 messages, 4 parts, 2 stage results, a quarantine reason and its job's error, and
    // the 2 staged actions' payloads.
    assert_eq!((r.quarantine, r.jobs, r.actions), (1, 1, 2));
    assert_eq!(usage, [(Some(new_id), 13)]);
    let only_new = Store::open_in_home(dir.path())
        .await
        .unwrap()
        .with_keys(Some(Keyring::parse(&k2, "k2").unwrap()))
        .await
        .unwrap();
    let detail = only_new.detail(ids[0]).await.unwrap().unwrap();
    assert!(
        detail.parts[0]
            .text
            .as_deref()
            .unwrap()
            .contains(BODY_SECRET)
    );
    // Encrypting a database that was in clear.
    let clear = clear.with_keys(Some(keyring())).await.unwrap();
    let r = clear.rekey().await.unwrap();
    assert_eq!(r.messages, 3);
    assert!(!contains(&file_bytes(clear_dir.path()), BODY_SECRET));
}

const DAY: i64 = 24 * 3600 * 1000;

/// Make every message so far `days` older (arrival times are not in the audit chain; audit
/// entries are aged by purging as of a later time instead).
async fn age(store: &Store, days: i64) {
    sqlx::query("UPDATE messages SET received_at = received_at - $1")
        .bind(days * DAY)
        .execute(store.pool())
        .await
        .unwrap();
}

async fn retention_purges_and_the_chain_still_verifies(store: Store) {
    let ids = fill(&store).await;
    // Retention takes only what is decided and delivered (or quarantined, as ids[2]).
    for id in &ids[..2] {
        store.reject(*id, "alice", "not an invoice").await.unwrap();
    }
    age(&store, 40).await;
    // A recent message and recent audit entries.
    let fresh = store
        .ingest(
            "test",
            "fresh.eml",
            b"Subject: fresh\r\n\r\nnew",
            "parse",
            1,
        )
        .await
        .unwrap();

    // Nothing configured: nothing happens.
    let none = verre_store::retention::purge(&store, &Retention::default(), false)
        .await
        .unwrap();
    assert_eq!(
        (none.raw_purged, none.messages_deleted, none.audit_removed),
        (0, 0, 0)
    );

    let raw_only = Retention {
        raw_days: Some(30),
        ..Default::default()
    };
    let dry = verre_store::retention::purge(&store, &raw_only, true)
        .await
        .unwrap();
    assert_eq!(dry.raw_purged, 3);
    assert!(
        store.raw_message(ids[0]).await.is_ok(),
        "a dry run changes nothing"
    );
    let r = verre_store::retention::purge(&store, &raw_only, false)
        .await
        .unwrap();
    assert_eq!(r.raw_purged, 3);
    let e = format!("{:#}", store.raw_message(ids[0]).await.unwrap_err());
    assert!(e.contains("raw_days"), "{e}");
    assert_eq!(
        store.parts(ids[0]).await.unwrap().len(),
        2,
        "extractions stay"
    );
    assert!(
        store.raw_message(fresh.message_id).await.is_ok(),
        "pending and recent stay"
    );

    let all = Retention {
        raw_days: Some(30),
        extracted_days: Some(35),
        audit_days: Some(35),
        ..Default::default()
    };
    let r = verre_store::retention::purge(&store, &all, false)
        .await
        .unwrap();
    assert_eq!(r.messages_deleted, 3);
    assert_eq!(r.rows["parts"], 4);
    assert_eq!(r.audit_removed, 0, "every entry is recent");
    assert!(store.detail(ids[0]).await.unwrap().is_none());
    assert!(store.detail(fresh.message_id).await.unwrap().is_some());
    assert!(store.audit_verify().await.unwrap().ok());

    // 40 days later the audit entries are past audit_days (the fresh message is now too,
    // but it is still pending).
    let later = verre_store::now_ms() + 40 * DAY;
    let entries = store.audit_verify().await.unwrap().entries;
    let r = store.purge_at(&all, later, false).await.unwrap();
    assert_eq!(r.audit_removed, entries, "{r:?}");
    assert!(store.detail(fresh.message_id).await.unwrap().is_some());
    let report = store.audit_verify().await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(
        report.checkpoint.as_ref().unwrap().seq,
        r.audit_checkpoint.unwrap()
    );
    // Appends continue the chain from the checkpoint.
    store
        .audit(AuditEvent {
            actor: "cli",
            action: "test",
            subject: "",
            detail: json!(1),
        })
        .await
        .unwrap();
    let after = store.audit_verify().await.unwrap();
    assert!(after.ok(), "{:?}", after.problems);
    // A second purge removes the first purge's own entries once they are old, and still verifies.
    let r2 = store.purge_at(&all, later + 40 * DAY, false).await.unwrap();
    assert!(r2.audit_removed > 0);
    let again = store.audit_verify().await.unwrap();
    assert!(again.ok(), "{:?}", again.problems);

    // Tampering is still detected: entries removed without a purge, a forged checkpoint.
    let head = again.head_seq;
    sqlx::query("DELETE FROM audit_checkpoint")
        .execute(store.pool())
        .await
        .unwrap();
    assert!(
        !store.audit_verify().await.unwrap().ok(),
        "checkpoint removed"
    );
    // Forge one that skips the real one's entry.
    sqlx::query("INSERT INTO audit_checkpoint (seq, hash, removed, at) VALUES ($1, $2, 1, 1)")
        .bind(head - 1)
        .bind("00")
        .execute(store.pool())
        .await
        .unwrap();
    assert!(
        !store.audit_verify().await.unwrap().ok(),
        "forged checkpoint"
    );
}

#[tokio::test]
async fn retention_sqlite() {
    let (_d, store) = sqlite().await;
    retention_purges_and_the_chain_still_verifies(store).await;
}

#[tokio::test]
async fn retention_postgres() {
    let Some(url) = verre_store::testing::postgres_url("gdpr_retention").await else {
        return;
    };
    retention_purges_and_the_chain_still_verifies(Store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn a_recorded_head_detects_a_cut_tail() {
    let (_d, store) = sqlite().await;
    fill(&store).await;
    let r = store.audit_verify().await.unwrap();
    assert!(
        store
            .audit_check_head(r.head_seq, &r.head)
            .await
            .unwrap()
            .is_empty()
    );
    sqlx::query("DELETE FROM audit_log WHERE seq >= $1")
        .bind(r.head_seq - 1)
        .execute(store.pool())
        .await
        .unwrap();
    // The chain alone still verifies: the cut is invisible without the recorded head.
    assert!(store.audit_verify().await.unwrap().ok());
    let problems = store.audit_check_head(r.head_seq, &r.head).await.unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].reason.contains("cut"), "{problems:?}");
}

#[tokio::test]
async fn tables_added_later_are_covered_or_reported() {
    let (_d, store) = sqlite().await;
    let ids = fill(&store).await;
    // A table another component might add: rows hang off a message by `message_id`.
    // And one that mentions people without any message: the registry must name it.
    sqlx::raw_sql(
        "CREATE TABLE review_notes (id INTEGER PRIMARY KEY, message_id BIGINT NOT NULL REFERENCES messages(id), note TEXT);
         CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT);",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("INSERT INTO review_notes (message_id, note) VALUES ($1, 'call back'), ($2, 'ok')")
        .bind(ids[0])
        .bind(ids[1])
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO contacts (email) VALUES ($1)")
        .bind(JEANNE_EMAIL.to_uppercase())
        .execute(store.pool())
        .await
        .unwrap();
    let r = store
        .erase(&Subject::parse(JEANNE_EMAIL).unwrap(), "cli", false)
        .await
        .unwrap();
    assert_eq!(r.rows["review_notes"], 1, "{r:?}");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM review_notes")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 1, "the other message's note stays");
    assert_eq!(r.residual.len(), 1, "{:?}", r.residual);
    assert_eq!(
        (r.residual[0].table.as_str(), r.residual[0].column.as_str()),
        ("contacts", "email")
    );
}

/// Issue 18, item 8: an address matches as a whole address and a name on word boundaries,
/// with Unicode case folding: erasing `ann@example.com` leaves `joann@example.com`'s mail,
/// `Émile Zola` finds `ÉMILE ZOLA` but not `Émile Zolachenko`.
#[tokio::test]
async fn erasure_matches_whole_addresses_and_words_in_any_case() {
    let (_dir, store) = sqlite().await;
    let inputs = [
        ("ann", mail("Ann Lee", "ann@example.com", "Hello.")),
        (
            "joann",
            mail("Joann Leeds", "joann@example.com", "Hi, I am Joann."),
        ),
        (
            "x.ann",
            mail("Someone", "x.ann@example.com.au", "Nothing here."),
        ),
        (
            "cc-ann",
            mail("Bob", "bob@example.com", "Copying ANN@EXAMPLE.COM. Thanks."),
        ),
        (
            "emile",
            mail("Bob", "bob@example.com", "Cher ÉMILE ZOLA, merci."),
        ),
        (
            "zolachenko",
            mail("Bob", "bob@example.com", "Cher Émile Zolachenko, merci."),
        ),
        (
            "nfd",
            mail(
                "Bob",
                "bob@example.com",
                "Dear E\u{301}mile  zola (decomposed).",
            ),
        ),
    ];
    let mut ids = std::collections::HashMap::new();
    for (name, raw) in &inputs {
        let r = store
            .ingest("test", &format!("{name}.eml"), raw, "parse", 1)
            .await
            .unwrap();
        ids.insert(*name, r.message_id);
    }
    let found = |subject: &'static str| {
        let store = store.clone();
        async move {
            let subject = Subject::parse(subject).unwrap();
            let mut found: Vec<i64> = store
                .messages_of(&subject)
                .await
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect();
            found.sort();
            found
        }
    };
    let mut expected = vec![ids["ann"], ids["cc-ann"]];
    expected.sort();
    assert_eq!(found("ann@example.com").await, expected, "{ids:?}");
    let mut expected = vec![ids["emile"], ids["nfd"]];
    expected.sort();
    assert_eq!(found("Émile Zola").await, expected, "{ids:?}");
    assert_eq!(found("joann@example.com").await, [ids["joann"]]);
}

/// Issue 18, item 8, the rest: rows that mention a subject without belonging to a message
/// (failed logins, the cost ledger's key names, audit details) are matched as whole
/// addresses too. Erasing `ann@example.com` used to blank `joann@example.com`'s ledger rows,
/// delete her failed logins and tombstone her audit entries, and to report them as left over.
#[tokio::test]
async fn erasure_outside_messages_matches_whole_addresses_too() {
    use verre_store::ledger::{ApiAudit, ApiCall, LedgerEntry};
    let (_dir, store) = sqlite().await;
    let call = |key: &str| ApiCall {
        entry: LedgerEntry {
            at: verre_store::now_ms(),
            api_key: key.into(),
            endpoint: "chat".into(),
            model: "m".into(),
            backend: "local".into(),
            local: true,
            status: 200,
            prompt_tokens: 3,
            completion_tokens: 1,
            first_byte_ms: 1,
            latency_ms: 1,
        },
        audit: ApiAudit::Metadata,
        pseudonymized: false,
    };
    store
        .insert_api_calls(&[call("ann@example.com"), call("joann@example.com")])
        .await
        .unwrap();
    for user in ["ANN@example.com", "joann@example.com"] {
        sqlx::query("INSERT INTO login_failures (user_name, ip, at) VALUES ($1, '127.0.0.1', $2)")
            .bind(user)
            .bind(verre_store::now_ms())
            .execute(store.pool())
            .await
            .unwrap();
    }
    let count = |sql: &'static str| {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(store.pool())
                .await
                .unwrap()
        }
    };
    let subject = Subject::parse("ann@example.com").unwrap();
    let dry = store.erase(&subject, "test", true).await.unwrap();
    assert_eq!(dry.rows.get("ledger"), Some(&1), "{dry:#?}");
    assert_eq!(dry.rows.get("login_failures"), Some(&1), "{dry:#?}");
    let report = store.erase(&subject, "test", false).await.unwrap();
    assert_eq!(
        report.rows, dry.rows,
        "the dry run counts what the run does"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM ledger WHERE api_key = 'joann@example.com'").await,
        1,
        "joann's ledger row keeps her key name"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM ledger WHERE api_key = '[erased]'").await,
        1
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM login_failures WHERE user_name = 'joann@example.com'").await,
        1,
        "joann's failed login stays"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM login_failures").await,
        1,
        "ann's failed login is gone"
    );
    // Her api.chat entry names her key: it stays; ann's is tombstoned.
    assert_eq!(
        count("SELECT COUNT(*) FROM audit_log WHERE erased_at IS NULL AND detail LIKE '%joann@example.com%'")
            .await,
        0,
        "details do not carry the key; actors do"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM audit_log WHERE actor = 'key:joann@example.com' AND erased_at IS NULL").await,
        1,
        "joann's audit entry is not tombstoned"
    );
    assert!(
        report.residual.is_empty(),
        "nothing of ann is left: {:#?}",
        report.residual
    );
    assert!(
        store.audit_verify().await.unwrap().ok(),
        "the chain still verifies"
    );
}

/// Issue 18, item 8, the rest: outside messages (failed logins, the ledger's key names,
/// audit details, the residual scan) SQL's `LIKE` used to pick the candidates, and it knows
/// neither Unicode folding nor white space: `Hans Straße`, a name broken by a non-breaking
/// space or two spaces, or a line break JSON-escaped in an audit detail, escaped erasure and
/// the residual scan reported nothing left.
async fn erasure_outside_messages_folds_like_messages(store: Store) {
    use verre_store::ledger::{ApiAudit, ApiCall, LedgerEntry};
    let call = |key: &str| ApiCall {
        entry: LedgerEntry {
            at: verre_store::now_ms(),
            api_key: key.into(),
            endpoint: "chat".into(),
            model: "m".into(),
            backend: "local".into(),
            local: true,
            status: 200,
            prompt_tokens: 3,
            completion_tokens: 1,
            first_byte_ms: 1,
            latency_ms: 1,
        },
        audit: ApiAudit::Metadata,
        pseudonymized: false,
    };
    store
        .insert_api_calls(&[call("ÉMILE  ZOLA"), call("Émile Zolachenko")])
        .await
        .unwrap();
    for user in ["ÉMILE\u{a0}ZOLA", "HANS STRAẞE", "Émile Zolachenko"] {
        sqlx::query("INSERT INTO login_failures (user_name, ip, at) VALUES ($1, '127.0.0.1', $2)")
            .bind(user)
            .bind(verre_store::now_ms())
            .execute(store.pool())
            .await
            .unwrap();
    }
    let noted = store
        .audit(AuditEvent {
            actor: "reviewer:bob",
            action: "review.note",
            subject: "queue",
            detail: json!({"note": "Cher Émile\nZola, merci."}),
        })
        .await
        .unwrap();
    let count = |sql: &'static str| {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(store.pool())
                .await
                .unwrap()
        }
    };
    let emile = Subject::parse("émile zola").unwrap();
    let found = store.scan(&emile).await.unwrap();
    let columns: Vec<String> = found
        .iter()
        .map(|r| format!("{}.{}={}", r.table, r.column, r.rows))
        .collect();
    for expected in [
        "ledger.api_key=1",
        "login_failures.user_name=1",
        "audit_log.detail=1",
    ] {
        assert!(
            columns.iter().any(|c| c == expected),
            "the scan finds {expected}: {columns:?}"
        );
    }
    let report = store.erase(&emile, "test", false).await.unwrap();
    assert_eq!(report.rows.get("ledger"), Some(&1), "{report:#?}");
    assert_eq!(report.rows.get("login_failures"), Some(&1), "{report:#?}");
    assert!(report.residual.is_empty(), "{:#?}", report.residual);
    assert_eq!(
        count("SELECT COUNT(*) FROM ledger WHERE api_key = '[erased]'").await,
        1
    );
    let noted_detail: Option<String> =
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE seq = $1")
            .bind(noted)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(noted_detail, None, "the note naming him is tombstoned");
    assert_eq!(
        count("SELECT COUNT(*) FROM login_failures").await,
        2,
        "Hans and Zolachenko stay"
    );
    let hans = Subject::parse("Hans Strasse").unwrap();
    let report = store.erase(&hans, "test", false).await.unwrap();
    assert_eq!(report.rows.get("login_failures"), Some(&1), "{report:#?}");
    assert_eq!(
        count("SELECT COUNT(*) FROM ledger WHERE api_key <> '[erased]'").await,
        1,
        "Zolachenko's key keeps its name"
    );
    assert!(store.audit_verify().await.unwrap().ok());
}

#[tokio::test]
async fn erasure_outside_messages_folds_like_messages_sqlite() {
    let (_d, store) = sqlite().await;
    erasure_outside_messages_folds_like_messages(store).await;
}

#[tokio::test]
async fn erasure_outside_messages_folds_like_messages_postgres() {
    let Some(url) = verre_store::testing::postgres_url("gdpr_fold").await else {
        return;
    };
    let store = Store::open(&url).await.unwrap();
    erasure_outside_messages_folds_like_messages(store).await;
}

/// Issue 18, item 13: a stage's failure reason quotes the model's answer or the mail (a
/// schema error names the value it refuses). In the job's `last_error` and the quarantine
/// reason it is encrypted like the content, not copied into the audit log, and still shown
/// decrypted; a reason stored in clear before stays readable and `rekey` encrypts it.
#[tokio::test]
async fn failure_reasons_are_encrypted_at_rest() {
    const QUOTED: &str = "iban-DE89370400440532013000-of-greta";
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path())
        .await
        .unwrap()
        .with_keys(Some(keyring()))
        .await
        .unwrap();
    let quarantined = store
        .ingest(
            "test",
            "a.eml",
            &mail("Greta", "greta@example.de", "a"),
            "extract",
            1,
        )
        .await
        .unwrap()
        .message_id;
    let retried = store
        .ingest(
            "test",
            "b.eml",
            &mail("Greta", "greta@example.de", "b"),
            "extract",
            3,
        )
        .await
        .unwrap()
        .message_id;
    let reason = format!("schema: \"{QUOTED}\" is not a valid amount");
    while let Some(job) = store.claim("w1", Duration::from_secs(30)).await.unwrap() {
        let permanent = job.message_id == quarantined;
        store
            .fail(&job, &reason, permanent, Duration::from_secs(3600))
            .await
            .unwrap();
    }
    store.flush_deleted().await.unwrap();
    assert!(
        !contains(&file_bytes(dir.path()), QUOTED),
        "the quoted value is readable in the database file"
    );
    let detail = store.detail(quarantined).await.unwrap().unwrap();
    assert_eq!(detail.quarantine.unwrap().reason, reason);
    assert_eq!(detail.jobs[0].last_error.as_deref(), Some(reason.as_str()));
    let detail = store.detail(retried).await.unwrap().unwrap();
    assert_eq!(detail.jobs[0].last_error.as_deref(), Some(reason.as_str()));
    assert_eq!(store.quarantined().await.unwrap()[0].reason, reason);

    // A reason stored in clear (before this release) reads back, and rekey encrypts it.
    sqlx::query("UPDATE quarantine SET reason = 'clear: greta', key_id = NULL")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.quarantined().await.unwrap()[0].reason, "clear: greta");
    let r = store.rekey().await.unwrap();
    assert_eq!((r.quarantine, r.jobs), (1, 0), "{r:?}");
    let usage = store.key_usage().await.unwrap();
    assert_eq!(usage.len(), 1, "everything under the one key: {usage:?}");
    assert_eq!(store.quarantined().await.unwrap()[0].reason, "clear: greta");
    store.flush_deleted().await.unwrap();
    assert!(!contains(&file_bytes(dir.path()), "clear: greta"));

    // Erasure still finds the mails by what their jobs' errors quote.
    let erased = store
        .erase(&Subject::parse(QUOTED).unwrap(), "test", false)
        .await
        .unwrap();
    assert_eq!(
        erased.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [quarantined, retried]
    );
}

/// The values of one column, as stored (text; NULLs left out).
async fn stored(store: &Store, table: &str, column: &str) -> Vec<String> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT CAST({column} AS TEXT) AS v FROM {table} WHERE {column} IS NOT NULL"
    )))
    .fetch_all(store.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get::<String, _>("v").unwrap())
    .collect()
}

/// A mail taken through the pipeline to review: its draft stage's output holds `draft`,
/// and a reply to the sender is staged.
async fn to_review(store: &Store, from: &str, draft: &str) -> i64 {
    let id = store
        .ingest(
            "test",
            &format!("{from}.eml"),
            &mail("Hugo", from, "Bonjour"),
            "draft",
            1,
        )
        .await
        .unwrap()
        .message_id;
    let job = store
        .claim("w1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.message_id, id);
    let effects = StageEffects {
        output: json!({"draft": draft}),
        actions: vec![NewAction {
            name: "reply".into(),
            kind: "reply".into(),
            target: from.into(),
            payload: json!({"to": from, "subject": "Re: Facture", "body": draft}).to_string(),
        }],
        ..Default::default()
    };
    assert!(store.complete(&job, &effects, None, 1).await.unwrap());
    id
}

/// Issue 18, item 13 ("encrypt those columns like the rest"): a reviewer's draft, an edited
/// payload, a rejection reason, what the outbox sends and what a delivery's attempts
/// answered quote the mail or name the people in it. With a data key none of them is stored
/// in clear; the store still returns them decrypted, a row written in clear before still
/// reads, `rekey` seals them (again, under a new key), `key_usage` counts them, and
/// erasure still finds a subject in them.
async fn review_and_delivery_are_encrypted_at_rest(store: Store) {
    const QUOTED: &str = "iban-FR7630006000011234567890189-of-hugo";
    let old_key = crypto::generate_key().unwrap();
    let store = store
        .with_keys(Some(Keyring::parse(&old_key, "test").unwrap()))
        .await
        .unwrap();
    let sent = to_review(&store, "hugo@example.fr", "Merci, à demain.").await;
    let rejected = to_review(&store, "hugo.b@example.fr", "Merci.").await;

    let draft = format!("Dear Hugo,\nyour IBAN {QUOTED} is noted.");
    assert_eq!(store.save_draft(sent, &draft, "alice").await.unwrap(), 2);
    let reply = store.actions(sent).await.unwrap()[0].clone();
    let edited = json!({"to": "hugo@example.fr", "subject": "Re: Facture",
        "body": format!("{draft}\n(edited: {QUOTED})")});
    store
        .edit_action(reply.id, &edited.to_string(), "alice")
        .await
        .unwrap();
    let reason = format!("asks us to debit {QUOTED}");
    store.reject(rejected, "bob", &reason).await.unwrap();
    let allow = |_: &verre_store::ActionRow| -> Result<(), String> { Ok(()) };
    store.approve(sent, "alice", &allow).await.unwrap();
    let entry = store
        .claim_delivery("d1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    // What the delivery worker sends: the payload, decrypted.
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&entry.payload).unwrap(),
        edited
    );
    let error = format!("550 mailbox of {QUOTED} unavailable");
    assert!(
        store
            .record_delivery(
                &entry,
                &verre_store::outbox::AttemptRecord {
                    response_status: Some(550),
                    error: Some(error.clone()),
                    result: verre_store::outbox::DeliveryResult::RetryAt(
                        verre_store::now_ms() + 3_600_000
                    ),
                },
            )
            .await
            .unwrap()
    );

    // Nothing of it in clear: not in these columns, nor anywhere else.
    let columns = [
        ("drafts", "body"),
        ("actions", "payload"),
        ("decisions", "reason"),
        ("outbox", "payload"),
        ("outbox", "last_error"),
        ("outbox_attempts", "error"),
    ];
    for (table, column) in columns {
        let values = stored(&store, table, column).await;
        assert!(!values.is_empty(), "{table}.{column} holds nothing");
        assert!(
            values
                .iter()
                .all(|v| !v.contains(QUOTED) && !v.contains("Hugo")),
            "{table}.{column} is in clear: {values:?}"
        );
    }
    assert_eq!(
        mentions(&every_value(&store).await, QUOTED),
        Vec::<String>::new(),
        "the quoted value is stored in clear"
    );

    // The store API returns them decrypted.
    let drafts = store.drafts(sent).await.unwrap();
    assert_eq!(drafts.len(), 2);
    assert_eq!(drafts[0].body, "Merci, à demain.");
    assert_eq!(drafts[1].body, draft);
    let payload: serde_json::Value =
        serde_json::from_str(&store.actions(sent).await.unwrap()[0].payload).unwrap();
    assert_eq!(payload, edited);
    assert_eq!(
        store.decision(rejected).await.unwrap().unwrap().reason,
        Some(reason.clone())
    );
    let delivery = &store.deliveries(sent).await.unwrap()[0];
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&delivery.payload).unwrap(),
        edited
    );
    assert_eq!(delivery.last_error.as_deref(), Some(error.as_str()));
    let attempts = store.delivery_attempts(delivery.id).await.unwrap();
    assert_eq!(attempts[0].error.as_deref(), Some(error.as_str()));
    let queue = store
        .review_queue(&verre_store::review::QueueFilter::default())
        .await
        .unwrap();
    let item = queue.iter().find(|q| q.message.id == rejected).unwrap();
    assert_eq!(
        item.decision.as_ref().unwrap().reason.as_deref(),
        Some(reason.as_str())
    );

    // A reason stored in clear (before this release) still reads, and rekey seals it.
    let clear = format!("clear: {QUOTED}");
    sqlx::query("UPDATE decisions SET reason = $2, key_id = NULL WHERE message_id = $1")
        .bind(rejected)
        .bind(&clear)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(
        store
            .decision(rejected)
            .await
            .unwrap()
            .unwrap()
            .reason
            .as_deref(),
        Some(clear.as_str())
    );
    let r = store.rekey().await.unwrap();
    assert_eq!(
        (
            r.drafts,
            r.actions,
            r.decisions,
            r.outbox,
            r.outbox_attempts
        ),
        (0, 0, 1, 0, 0),
        "{r:?}"
    );
    assert!(
        stored(&store, "decisions", "reason")
            .await
            .iter()
            .all(|v| !v.contains(QUOTED))
    );
    assert_eq!(
        store
            .decision(rejected)
            .await
            .unwrap()
            .unwrap()
            .reason
            .as_deref(),
        Some(clear.as_str())
    );

    // A new key: rekey seals every row again, and key_usage sees only the new key.
    let new_key = crypto::generate_key().unwrap();
    let store = store
        .with_keys(Some(
            Keyring::parse(&format!("{new_key}\n{old_key}\n"), "test").unwrap(),
        ))
        .await
        .unwrap();
    let r = store.rekey().await.unwrap();
    assert_eq!(
        (
            r.drafts,
            r.actions,
            r.decisions,
            r.outbox,
            r.outbox_attempts
        ),
        (2, 2, 1, 1, 1),
        "{r:?}"
    );
    let current = store.keys().unwrap().current_id().to_string();
    let usage = store.key_usage().await.unwrap();
    assert_eq!(usage.len(), 1, "everything under the one key: {usage:?}");
    assert_eq!(usage[0].0, Some(current));
    assert_eq!(store.drafts(sent).await.unwrap()[1].body, draft);
    assert_eq!(
        store.delivery_attempts(delivery.id).await.unwrap()[0]
            .error
            .as_deref(),
        Some(error.as_str())
    );

    // Erasure finds the subject in the sealed rows (the stage outputs do not name it).
    let erased = store
        .erase(&Subject::parse(QUOTED).unwrap(), "test", false)
        .await
        .unwrap();
    assert_eq!(
        erased.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [sent, rejected]
    );
    for (table, column) in columns {
        assert_eq!(
            stored(&store, table, column).await,
            Vec::<String>::new(),
            "{table}.{column} kept rows of erased messages"
        );
    }
}

#[tokio::test]
async fn review_and_delivery_are_encrypted_at_rest_sqlite() {
    let (_dir, store) = sqlite().await;
    review_and_delivery_are_encrypted_at_rest(store).await;
}

#[tokio::test]
async fn review_and_delivery_are_encrypted_at_rest_postgres() {
    let Some(url) = verre_store::testing::postgres_url("gdpr_sealed_review").await else {
        return;
    };
    review_and_delivery_are_encrypted_at_rest(Store::open(&url).await.unwrap()).await;
}
