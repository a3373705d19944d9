//! Erasure after review, delivery and the cost ledger: a subject's message is drafted,
//! edited, approved, delivered (attempts, a gone endpoint), billed in the ledger under a key
//! named after her, and then erased — by e-mail, then by name. Afterwards no column of any
//! table (found through the catalog, blobs as bytes) holds her address or name, another
//! subject's review, outbox and ledger rows are untouched, the ledger keeps its tokens, and
//! the audit chain verifies. On SQLite in clear, SQLite encrypted at rest, and PostgreSQL
//! (`VERRE_TEST_POSTGRES_URL`).

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;
use verre_store::erase::{ERASED, Subject};
use verre_store::ledger::{ApiAudit, ApiCall, LedgerEntry};
use verre_store::outbox::{AttemptRecord, DeliveryResult};
use verre_store::{Keyring, NewAction, Retention, StageEffects, Store, crypto, now_ms};

const JEANNE_EMAIL: &str = "jeanne.martin@example.fr";
const JEANNE_NAME: &str = "Jeanne Martin";
const PAUL_EMAIL: &str = "paul.durand@example.de";
const PAUL_NAME: &str = "Paul Durand";
const LEASE: Duration = Duration::from_secs(60);

async fn on_all<F, Fut>(name: &str, test: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    test(Store::open_in_home(dir.path()).await.unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::parse(&crypto::generate_key().unwrap(), "test").unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    test(store.with_keys(Some(keys)).await.unwrap()).await;
    if let Some(url) = verre_store::testing::postgres_url(name).await {
        test(Store::open(&url).await.unwrap()).await;
    }
}

/// A mail from `name <email>` taken through extract -> draft -> stage (as the intake
/// pipeline would), with a reply to the sender and a CRM webhook about them staged.
async fn processed(store: &Store, name: &str, email: &str, body: &str) -> i64 {
    let raw = format!("From: {name} <{email}>\r\nSubject: Facture\r\n\r\n{body}\r\n");
    let id = store
        .ingest(
            "test",
            &format!("{email}.eml"),
            raw.as_bytes(),
            "extract",
            3,
        )
        .await
        .unwrap()
        .message_id;
    let steps: [(Value, Option<&str>); 3] = [
        (json!({"customer": name, "email": email}), Some("draft")),
        (
            json!({"draft": "We will call you tomorrow."}),
            Some("stage"),
        ),
        (json!({"actions": ["reply", "crm"]}), None),
    ];
    for (output, next) in steps {
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        assert_eq!(job.message_id, id);
        let actions = if next.is_none() {
            vec![
                NewAction {
                    name: "reply".into(),
                    kind: "reply".into(),
                    target: email.into(),
                    payload: json!({"to": email, "subject": "Re: Facture",
                        "body": "Hello,\nWe will call you tomorrow.\n-- support"})
                    .to_string(),
                },
                NewAction {
                    name: "crm".into(),
                    kind: "webhook".into(),
                    // A CRM that names its contacts by address in the URL.
                    target: format!("https://crm.example/contacts/{email}/notes"),
                    payload: json!({"message": id, "contact": email, "name": name}).to_string(),
                },
            ]
        } else {
            vec![]
        };
        let effects = StageEffects {
            output,
            actions,
            ..Default::default()
        };
        assert!(store.complete(&job, &effects, next, 3).await.unwrap());
    }
    id
}

fn allow_all(_: &verre_store::ActionRow) -> Result<(), String> {
    Ok(())
}

fn call(api_key: &str, tokens: u64, audit: ApiAudit) -> ApiCall {
    ApiCall {
        entry: LedgerEntry {
            at: now_ms(),
            api_key: api_key.into(),
            endpoint: "chat".into(),
            model: "smollm2".into(),
            backend: "local".into(),
            local: true,
            status: 200,
            prompt_tokens: tokens,
            completion_tokens: tokens / 2,
            first_byte_ms: 5,
            latency_ms: 9,
        },
        audit,
        pseudonymized: false,
    }
}

/// Jeanne's and Paul's messages through review and delivery, plus a third mail that names
/// Jeanne only in its body (rejected with a reason naming her), failed logins and ledger
/// rows. Returns (Jeanne's, Paul's, the third).
async fn fill(store: &Store) -> (i64, i64, i64) {
    let jeanne = processed(store, JEANNE_NAME, JEANNE_EMAIL, "Bonjour").await;
    let paul = processed(store, PAUL_NAME, PAUL_EMAIL, "Hallo").await;
    let third = processed(
        store,
        "Accounts",
        "accounts@vendor.example",
        &format!("About the invoice of Ms {JEANNE_NAME}"),
    )
    .await;

    for (id, name) in [(jeanne, JEANNE_NAME), (paul, PAUL_NAME)] {
        store
            .save_draft(
                id,
                &format!("Dear {name},\nWe will call you tomorrow."),
                "alice",
            )
            .await
            .unwrap();
        store.approve(id, "alice", &allow_all).await.unwrap();
    }
    store
        .reject(third, "bob", &format!("duplicate of {JEANNE_NAME}'s mail"))
        .await
        .unwrap();

    // Deliveries: a first attempt each, refused with a message that echoes the contact
    // (due again at once), then the reply goes out and the webhook's endpoint is gone.
    // Four entries leased at once, so that none is claimed twice in a round.
    let mut round = Vec::new();
    for _ in 0..4 {
        round.push(store.claim_delivery("w1", LEASE).await.unwrap().unwrap());
    }
    assert!(store.claim_delivery("w1", LEASE).await.unwrap().is_none());
    for e in round {
        let contact = if e.message_id == jeanne {
            JEANNE_EMAIL
        } else {
            PAUL_EMAIL
        };
        let retry = AttemptRecord {
            response_status: Some(422),
            error: Some(format!("HTTP 422: contact {contact} is locked")),
            result: DeliveryResult::RetryAt(0),
        };
        assert!(store.record_delivery(&e, &retry).await.unwrap());
    }
    let mut round = Vec::new();
    for _ in 0..4 {
        round.push(store.claim_delivery("w1", LEASE).await.unwrap().unwrap());
    }
    for e in round {
        let (status, result) = if e.kind == "webhook" && e.message_id == jeanne {
            (410, DeliveryResult::Gone)
        } else {
            (200, DeliveryResult::Sent)
        };
        let record = AttemptRecord {
            response_status: Some(status),
            error: None,
            result,
        };
        assert!(store.record_delivery(&e, &record).await.unwrap());
    }
    assert!(store.claim_delivery("w1", LEASE).await.unwrap().is_none());
    assert!(
        store
            .endpoint_gone(&format!(
                "https://crm.example/contacts/{JEANNE_EMAIL}/notes"
            ))
            .await
            .unwrap()
    );

    // Someone tried to log in to the review UI with her address; a reviewer mistyped.
    store
        .record_login_failure(JEANNE_EMAIL, "192.0.2.7", 0)
        .await
        .unwrap();
    store
        .record_login_failure("alice", "192.0.2.8", 0)
        .await
        .unwrap();

    // The ledger: a key named after her (API calls not audited, `[audit] api_calls =
    // false`), a key of Paul's, and an operator key whose audited content names her.
    store
        .insert_api_calls(&[
            call(JEANNE_EMAIL, 100, ApiAudit::None),
            call(JEANNE_EMAIL, 40, ApiAudit::None),
            call("paul", 70, ApiAudit::Metadata),
            call(
                "ops",
                10,
                ApiAudit::WithContent(json!({"messages": [
                    {"role": "user", "content": format!("Summarise the mail of {JEANNE_NAME}")}
                ]})),
            ),
        ])
        .await
        .unwrap();
    (jeanne, paul, third)
}

/// Every value of every column of every table, found through the catalog; binary columns
/// as their bytes, the rest as text.
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
    let tables: std::collections::BTreeSet<&str> =
        columns.iter().map(|(t, _, _)| t.as_str()).collect();
    for t in [
        "messages",
        "drafts",
        "decisions",
        "outbox",
        "outbox_attempts",
        "endpoints",
        "login_failures",
        "users",
        "sessions",
        "ledger",
        "audit_log",
    ] {
        assert!(tables.contains(t), "the catalog lists {t}");
    }
    let mut values = Vec::new();
    for (table, column, bytea) in columns {
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

/// `table.column` of each value that contains `needle` (case-insensitively).
fn mentions(values: &[(String, String, Vec<u8>)], needle: &str) -> Vec<String> {
    let needle = needle.to_lowercase();
    let mut out: Vec<String> = values
        .iter()
        .filter(|(_, _, v)| String::from_utf8_lossy(v).to_lowercase().contains(&needle))
        .map(|(t, c, _)| format!("{t}.{c}"))
        .collect();
    out.dedup();
    out
}

async fn count(store: &Store, sql: &str, id: i64) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(id)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

async fn ledger_tokens(store: &Store) -> (i64, i64) {
    let r = sqlx::query(
        "SELECT CAST(SUM(prompt_tokens) AS BIGINT) AS p, CAST(COUNT(*) AS BIGINT) AS n FROM ledger",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    (r.get("p"), r.get("n"))
}

/// What one database holds of Paul after Jeanne's erasure: his review and delivery rows.
async fn paul_rows(store: &Store, paul: i64) -> [i64; 4] {
    [
        count(
            store,
            "SELECT COUNT(*) FROM drafts WHERE message_id = $1",
            paul,
        )
        .await,
        count(
            store,
            "SELECT COUNT(*) FROM decisions WHERE message_id = $1",
            paul,
        )
        .await,
        count(
            store,
            "SELECT COUNT(*) FROM outbox WHERE message_id = $1",
            paul,
        )
        .await,
        count(
            store,
            "SELECT COUNT(*) FROM outbox_attempts t JOIN outbox o ON o.id = t.outbox_id
             WHERE o.message_id = $1",
            paul,
        )
        .await,
    ]
}

async fn review_rows_go(store: Store) {
    let (jeanne, paul, third) = fill(&store).await;
    let email = Subject::parse(JEANNE_EMAIL).unwrap();
    let name = Subject::parse(JEANNE_NAME).unwrap();
    // The erasure key first, so that the dry run below changes nothing at all.
    store.subject_hash(&email).await.unwrap();
    let before = every_value(&store).await;
    // Targets, endpoints, failed logins and the ledger are never encrypted: she is there
    // in clear. Drafts, payloads, reasons and delivery errors are, with a data key.
    let sealed = store.keys().is_some();
    let found = mentions(&before, JEANNE_EMAIL);
    for col in [
        "outbox.target",
        "endpoints.url",
        "login_failures.user_name",
        "ledger.api_key",
    ] {
        assert!(found.iter().any(|c| c == col), "{col} not in {found:?}");
    }
    for col in ["outbox.payload", "outbox_attempts.error"] {
        assert_eq!(
            found.iter().any(|c| c == col),
            !sealed,
            "{col} in {found:?} (sealed: {sealed})"
        );
    }
    let found = mentions(&before, JEANNE_NAME);
    for col in ["drafts.body", "decisions.reason"] {
        assert_eq!(
            found.iter().any(|c| c == col),
            !sealed,
            "{col} in {found:?} (sealed: {sealed})"
        );
    }
    let paul_before = paul_rows(&store, paul).await;
    assert_eq!(
        paul_before,
        [2, 1, 2, 4],
        "model draft + edit, decision, 2 outbox, 4 attempts"
    );
    let tokens_before = ledger_tokens(&store).await;
    let jeanne_actions: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM actions WHERE message_id = $1")
            .bind(jeanne)
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(jeanne_actions.len(), 2);

    // The dry run lists her message's review and delivery rows and the ledger's, changes
    // nothing.
    let dry = store.erase(&email, "cli", true).await.unwrap();
    assert_eq!(dry.messages.len(), 1, "{dry:?}");
    let m = &dry.messages[0];
    assert_eq!(m.id, jeanne);
    assert_eq!(m.drafts, 2);
    assert_eq!(m.decision.as_deref(), Some("approved"));
    let mut deliveries: Vec<(String, String, i64)> = m
        .deliveries
        .iter()
        .map(|d| (d.kind.clone(), d.status.clone(), d.attempts))
        .collect();
    deliveries.sort();
    assert_eq!(
        deliveries,
        [
            ("reply".to_string(), "sent".to_string(), 2),
            ("webhook".to_string(), "gone".to_string(), 2)
        ]
    );
    for (table, n) in [
        ("outbox_attempts", 4),
        ("outbox", 2),
        ("decisions", 1),
        ("drafts", 2),
        ("endpoints", 1),
        ("login_failures", 1),
        ("ledger", 2),
        ("messages", 1),
    ] {
        assert_eq!(dry.rows.get(table), Some(&n), "{table}: {:?}", dry.rows);
    }
    assert_eq!(
        every_value(&store).await,
        before,
        "a dry run changes nothing"
    );

    // By e-mail, then by name (the third mail names her only in its body).
    let r = store.erase(&email, "cli", false).await.unwrap();
    assert!(r.residual.is_empty(), "{:?}", r.residual);
    assert!(r.retained.is_empty(), "{:?}", r.retained);
    assert_eq!(r.rows, dry.rows, "the dry run counted what went");
    let by_name = store.erase(&name, "cli", false).await.unwrap();
    assert_eq!(
        by_name.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [third]
    );
    assert_eq!(by_name.messages[0].decision.as_deref(), Some("rejected"));
    assert!(by_name.residual.is_empty(), "{:?}", by_name.residual);
    assert!(by_name.retained.is_empty(), "{:?}", by_name.retained);

    let after = every_value(&store).await;
    for needle in [JEANNE_EMAIL, JEANNE_NAME, "jeanne.martin"] {
        assert!(
            mentions(&after, needle).is_empty(),
            "{needle} is still in {:?}",
            mentions(&after, needle)
        );
    }
    // Paul's data stays; so do the ledger's rows and tokens, her key's name replaced.
    assert_eq!(paul_rows(&store, paul).await, paul_before);
    let found = mentions(&after, PAUL_EMAIL);
    for col in ["outbox.payload", "outbox_attempts.error"] {
        assert_eq!(
            found.iter().any(|c| c == col),
            !sealed,
            "{col} in {found:?} (sealed: {sealed})"
        );
    }
    // (With a data key his name is only in sealed columns: `paul_rows` counted them.)
    assert!(sealed || !mentions(&after, PAUL_NAME).is_empty());
    assert_eq!(ledger_tokens(&store).await, tokens_before);
    let erased_key: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE api_key = $1")
        .bind(ERASED)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(erased_key, 2);
    let alice: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM login_failures WHERE user_name = 'alice'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(alice, 1, "another user's failed login stays");

    // Every audit entry about her actions (deliveries) is tombstoned; Paul's are not.
    for action in &jeanne_actions {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE subject = $1 AND erased_at IS NULL",
        )
        .bind(format!("action:{action}"))
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(open, 0, "action {action}");
    }
    let paul_deliveries: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action LIKE 'delivery.%' AND erased_at IS NULL",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(paul_deliveries, 2, "Paul's reply and webhook were sent");
    let audit = store.audit_verify().await.unwrap();
    assert!(audit.ok(), "{:?}", audit.problems);

    // Retention deletes through the same registry: Paul's delivered message with its
    // attempts goes without a foreign key in the way.
    let purge = store
        .purge_at(
            &Retention {
                extracted_days: Some(0),
                ..Default::default()
            },
            now_ms() + 1,
            false,
        )
        .await
        .unwrap();
    assert_eq!(purge.rows.get("outbox_attempts"), Some(&4), "{purge:?}");
    assert_eq!(paul_rows(&store, paul).await, [0, 0, 0, 0]);
    assert!(store.audit_verify().await.unwrap().ok());
}

#[tokio::test]
async fn review_outbox_and_ledger_rows_of_a_subject_go() {
    on_all("erase_review", review_rows_go).await;
}

/// An API key named after the subject with API calls audited: the ledger loses the name,
/// the audit log's chained actor cannot — reported as retained, not as a missing registry
/// entry.
async fn audited_key_is_reported(store: Store) {
    store
        .insert_api_calls(&[call(JEANNE_EMAIL, 100, ApiAudit::Metadata)])
        .await
        .unwrap();
    let r = store
        .erase(&Subject::parse(JEANNE_EMAIL).unwrap(), "cli", false)
        .await
        .unwrap();
    assert_eq!(r.rows.get("ledger"), Some(&1));
    assert!(r.residual.is_empty(), "{:?}", r.residual);
    let retained: Vec<(&str, &str)> = r
        .retained
        .iter()
        .map(|x| (x.table.as_str(), x.column.as_str()))
        .collect();
    assert_eq!(retained, [("audit_log", "actor")]);
    assert!(r.retained[0].why.as_deref().unwrap().contains("rename"));
    let after = every_value(&store).await;
    assert_eq!(mentions(&after, JEANNE_EMAIL), ["audit_log.actor"]);
    assert!(store.audit_verify().await.unwrap().ok());
}

#[tokio::test]
async fn a_key_named_after_the_subject_is_reported_in_the_audit_actor() {
    on_all("erase_key_actor", audited_key_is_reported).await;
}
