//! The GDPR commands as an operator runs them, on a database filled by `verre intake run`
//! (models stubbed): encryption at rest (the file holds no content), key rotation,
//! `verre erase` (no byte of the subject left in the file), `verre audit verify|show`
//! (tampering and a cut tail fail it), `verre purge`, `verre gdpr report`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const EMAIL: &str = "jeanne.martin@example.fr";
const NAME: &str = "Jeanne Martin";
const BODY_SECRET: &str = "ultramarine-otter-42";
const ATTACHMENT_SECRET: &str = "cobalt-heron-77";

struct Env {
    dir: tempfile::TempDir,
    key_file: PathBuf,
}

impl Env {
    fn db_path(&self) -> PathBuf {
        self.dir.path().join("verre.db")
    }

    fn db(&self) -> String {
        format!("sqlite://{}", self.db_path().display())
    }

    fn verre(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_verre"));
        c.env_remove("VERRE_DATABASE")
            .env_remove("VERRE_DATA_KEY")
            .env("VERRE_DATA_KEY_FILE", &self.key_file)
            .env("VERRE_HOME", self.dir.path().join("home"));
        c
    }

    /// The database as a copy would have it: the file and its write-ahead log.
    fn file_bytes(&self) -> Vec<u8> {
        let mut bytes = std::fs::read(self.db_path()).unwrap();
        if let Ok(wal) = std::fs::read(self.dir.path().join("verre.db-wal")) {
            bytes.extend(wal);
        }
        bytes
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running verre")
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "verre failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    let needle = needle.to_lowercase();
    let hay = String::from_utf8_lossy(hay).to_lowercase();
    hay.contains(&needle)
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn mails(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let jeanne = format!(
        "From: {NAME} <{EMAIL}>\r\nTo: desk@example.org\r\nSubject: Facture\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
         Bonjour, ma commande n'est pas arrivee. {BODY_SECRET}\r\n--b\r\nContent-Type: text/plain; name=\"notes.txt\"\r\n\
         Content-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nnotes {ATTACHMENT_SECRET}\r\n--b--\r\n"
    );
    std::fs::write(dir.join("1.eml"), jeanne).unwrap();
    for i in 2..6 {
        std::fs::write(
            dir.join(format!("{i}.eml")),
            format!(
                "From: user{i}@example.net\r\nTo: desk@example.org\r\nSubject: Request {i}\r\n\r\nHello, order {i} please.\r\n"
            ),
        )
        .unwrap();
    }
}

fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("data.key");
    let env = Env { dir, key_file };
    let key = stdout(&run_ok(env.verre().args(["gdpr", "keygen"])));
    assert_eq!(key.trim().len(), 64);
    std::fs::write(&env.key_file, &key).unwrap();
    let inbox = env.dir.path().join("inbox");
    mails(&inbox);
    let pipeline = env.dir.path().join("pipeline.toml");
    // The example pipeline, beside an empty business database for its lookups.
    std::fs::copy(example("intake-pipeline.toml"), &pipeline).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let url = format!(
            "sqlite://{}?mode=rwc",
            env.dir.path().join("crm.db").display()
        );
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, tier TEXT);",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    });
    let out = run_ok(env.verre().args([
        "intake",
        "run",
        inbox.to_str().unwrap(),
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--database",
        &env.db(),
        "--backend",
        "stub",
        "--json",
    ]));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["processed"], 5, "{summary:#}");
    env
}

/// Message 1 (Jeanne's): a person's draft naming her, approval (its staged actions go to
/// the outbox), one delivery attempt each; a ledger row under a key named after her.
fn review_deliver_and_bill(env: &Env) {
    use verre_store::ledger::{ApiAudit, ApiCall, LedgerEntry};
    use verre_store::outbox::{AttemptRecord, DeliveryResult};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let keys = verre_store::Keyring::from_file(&env.key_file).unwrap();
        let store = verre_store::Store::open(&env.db())
            .await
            .unwrap()
            .with_keys(Some(keys))
            .await
            .unwrap();
        // The stub pipeline stages nothing for it: a reply, as the stage stage would.
        if store.actions(1).await.unwrap().is_empty() {
            let payload =
                serde_json::json!({"to": EMAIL, "subject": "Re: Facture", "body": "Bonjour"});
            sqlx::query(
                "INSERT INTO actions (message_id, name, kind, target, payload, status, created_at)
                 VALUES (1, 'reply', 'reply', $1, $2, 'staged', 0)",
            )
            .bind(EMAIL)
            .bind(payload.to_string())
            .execute(store.pool())
            .await
            .unwrap();
        }
        store
            .save_draft(
                1,
                &format!("Dear {NAME}, your order is on its way."),
                "alice",
            )
            .await
            .unwrap();
        let approval = store.approve(1, "alice", &|_| Ok(())).await.unwrap();
        assert!(!approval.released.is_empty());
        let lease = std::time::Duration::from_secs(60);
        while let Some(e) = store.claim_delivery("w1", lease).await.unwrap() {
            let record = AttemptRecord {
                response_status: Some(250),
                error: None,
                result: DeliveryResult::Sent,
            };
            assert!(store.record_delivery(&e, &record).await.unwrap());
        }
        store
            .insert_api_calls(&[ApiCall {
                entry: LedgerEntry {
                    at: verre_store::now_ms(),
                    api_key: EMAIL.into(),
                    endpoint: "chat".into(),
                    model: "stub".into(),
                    backend: "local".into(),
                    local: true,
                    status: 200,
                    prompt_tokens: 12,
                    completion_tokens: 3,
                    first_byte_ms: 1,
                    latency_ms: 2,
                },
                audit: ApiAudit::None,
                pseudonymized: false,
            }])
            .await
            .unwrap();
    });
}

#[test]
fn encrypted_intake_rotation_erasure_audit_and_purge() {
    let env = setup();
    let db = env.db();

    // Encrypted at rest: the body and the attachment are nowhere in the file.
    let bytes = env.file_bytes();
    assert!(bytes.len() > 10_000);
    for secret in [
        BODY_SECRET,
        ATTACHMENT_SECRET,
        "ma commande",
        "order 3 please",
    ] {
        assert!(
            !contains(&bytes, secret),
            "{secret} is readable in the file"
        );
    }

    // The audit chain covers every stage and verifies; the head file is written.
    let head_file = env.dir.path().join("audit.head");
    let head = head_file.to_str().unwrap();
    let out = run_ok(env.verre().args([
        "audit",
        "verify",
        "--database",
        &db,
        "--head-file",
        head,
        "--json",
    ]));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert!(report["entries"].as_i64().unwrap() >= 5 * 6, "{report:#}");
    assert!(head_file.exists());
    let show = stdout(&run_ok(env.verre().args([
        "audit",
        "show",
        "--database",
        &db,
        "--subject",
        "message:1",
    ])));
    for stage in [
        "intake.ingest",
        "intake.parse",
        "intake.extract",
        "intake.stage",
    ] {
        assert!(show.contains(stage), "{stage} missing from:\n{show}");
    }

    // Rotation: a new key, everything re-encrypted, the old key dropped from the file.
    let old_key = std::fs::read_to_string(&env.key_file).unwrap();
    let out = run_ok(env.verre().args([
        "gdpr",
        "rotate-key",
        "--key-file",
        env.key_file.to_str().unwrap(),
        "--database",
        &db,
    ]));
    assert!(stdout(&out).contains("5 messages"), "{}", stdout(&out));
    let new_key = std::fs::read_to_string(&env.key_file).unwrap();
    assert!(!new_key.contains(old_key.trim()));
    // The old key alone no longer opens anything; the new one does (erase reads every message).
    let old_file = env.dir.path().join("old.key");
    std::fs::write(&old_file, &old_key).unwrap();
    let out = run(env.verre().env("VERRE_DATA_KEY_FILE", &old_file).args([
        "erase",
        "--subject",
        EMAIL,
        "--dry-run",
        "--database",
        &db,
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not among the configured keys"));

    // Review and delivery of her message, and the cost ledger under a key named after
    // her, as the review UI, the delivery worker and the gateway would write them.
    review_deliver_and_bill(&env);

    // Erasure: the dry run names one message with its review, outbox and ledger rows and
    // changes nothing; then no byte is left.
    let dry = stdout(&run_ok(env.verre().args([
        "erase",
        "--subject",
        EMAIL,
        "--dry-run",
        "--database",
        &db,
    ])));
    assert!(
        dry.contains("would erase 1 message(s)") && dry.contains("1.eml"),
        "{dry}"
    );
    for listed in [
        "1 draft version(s)",
        "decision: approved",
        "(reply, sent, 1 attempt(s))",
        "outbox_attempts 1",
        "drafts 1",
        "decisions 1",
        "ledger 1",
        "ledger: 1 row(s) keep their tokens",
    ] {
        assert!(dry.contains(listed), "{listed} missing from:\n{dry}");
    }
    let out = run_ok(
        env.verre()
            .args(["erase", "--subject", EMAIL, "--database", &db, "--json"]),
    );
    let erased: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(erased["messages"].as_array().unwrap().len(), 1);
    assert_eq!(erased["residual"].as_array().unwrap().len(), 0);
    let out = run_ok(
        env.verre()
            .args(["erase", "--subject", NAME, "--database", &db, "--json"]),
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["residual"],
        Value::Array(vec![])
    );
    let bytes = env.file_bytes();
    for needle in [EMAIL, NAME, "jeanne.martin", BODY_SECRET, ATTACHMENT_SECRET] {
        assert!(
            !contains(&bytes, needle),
            "{needle} is still in the database file"
        );
    }
    // Searching the decrypted content again finds nothing.
    let again = stdout(&run_ok(env.verre().args([
        "erase",
        "--subject",
        EMAIL,
        "--dry-run",
        "--database",
        &db,
    ])));
    assert!(again.contains("would erase 0 message(s)"), "{again}");
    // The erasure is on record under the keyed hash only, and the chain still verifies.
    let show = stdout(&run_ok(env.verre().args([
        "audit",
        "show",
        "--database",
        &db,
        "--subject",
        EMAIL,
    ])));
    assert!(
        show.contains("gdpr.erase") && !show.contains(EMAIL),
        "{show}"
    );
    let verified = stdout(&run_ok(env.verre().args([
        "audit",
        "verify",
        "--database",
        &db,
        "--head-file",
        head,
    ])));
    assert!(
        verified.contains("tombstoned") && verified.contains("ok"),
        "{verified}"
    );

    let sql = |sql: &str| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            sqlx::any::install_default_drivers();
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db)
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&mut conn)
                .await
                .unwrap();
        });
    };

    // Retention: past extracted_days = 0, but nothing is decided yet: nothing goes.
    let config = env.dir.path().join("verre.toml");
    std::fs::write(&config, "[retention]\nraw_days = 0\nextracted_days = 0\n").unwrap();
    let out = run_ok(env.verre().args([
        "purge",
        "--config",
        config.to_str().unwrap(),
        "--database",
        &db,
        "--json",
    ]));
    let purged: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(purged["messages_deleted"], 0, "{purged:#}");
    // Once a reviewer decided them (rejected: nothing to deliver), all four go.
    sql(
        "INSERT INTO decisions (message_id, decision, reviewer, reason, decided_at)
         SELECT id, 'rejected', 'alice', 'test', 1 FROM messages",
    );
    let dry = stdout(&run_ok(env.verre().args([
        "purge",
        "--config",
        config.to_str().unwrap(),
        "--dry-run",
        "--database",
        &db,
    ])));
    assert!(dry.contains("would remove 4"), "{dry}");
    let out = run_ok(env.verre().args([
        "purge",
        "--config",
        config.to_str().unwrap(),
        "--database",
        &db,
        "--json",
    ]));
    let purged: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(purged["messages_deleted"], 4, "{purged:#}");
    run_ok(
        env.verre()
            .args(["audit", "verify", "--database", &db, "--head-file", head]),
    );

    // Tampering: an edited entry fails verification, with the entry named.
    let tamper = sql;
    tamper("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)");
    let out = run(env
        .verre()
        .args(["audit", "verify", "--database", &db, "--head-file", head]));
    assert!(
        !out.status.success(),
        "a cut tail must fail against the head file"
    );
    assert!(
        stdout(&out).contains("cut from the end"),
        "{}",
        stdout(&out)
    );
    tamper("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 3");
    let out = run(env
        .verre()
        .args(["audit", "verify", "--database", &db, "--no-head"]));
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("problem at entry 3"),
        "{}",
        stdout(&out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed verification"));
}

#[test]
fn gdpr_report_as_markdown_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("verre.toml");
    let mut text = std::fs::read_to_string(example("verre.toml")).unwrap();
    text.push_str("\n[retention]\nraw_days = 30\naudit_days = 400\n\n[gdpr]\ncontroller = \"ACME SAS\"\ncontact = \"privacy@acme.example\"\n");
    std::fs::write(&config, text).unwrap();
    let pipeline = example("intake-pipeline.toml");
    let args = |format: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_verre"));
        c.env_remove("VERRE_DATA_KEY")
            .env_remove("VERRE_DATA_KEY_FILE")
            .env_remove("FRANKFURT_KEY")
            .args(["gdpr", "report", "--config", config.to_str().unwrap()])
            .args(["--pipeline", pipeline.to_str().unwrap(), "--format", format]);
        c
    };
    let json: Value = serde_json::from_slice(&run_ok(&mut args("json")).stdout).unwrap();
    assert_eq!(json["controller"]["name"], "ACME SAS");
    let recipients = json["recipients"].as_array().unwrap();
    let frankfurt = recipients
        .iter()
        .find(|r| r["name"] == "frankfurt")
        .unwrap();
    assert_eq!(frankfurt["jurisdiction"], "EU-DE");
    assert_eq!(frankfurt["local"], false);
    assert_eq!(frankfurt["pseudonymised"], true);
    assert_eq!(frankfurt["host"], "vllm.fra.example.eu");
    let local = recipients.iter().find(|r| r["name"] == "this-box").unwrap();
    assert_eq!(local["local"], true);
    let webhook = recipients.iter().find(|r| r["kind"] == "webhook").unwrap();
    assert_eq!(webhook["host"], "crm.internal.example");
    assert_eq!(json["retention"]["raw_messages"], "30 days");
    assert_eq!(json["retention"]["extracted_data"], "no limit set");
    assert_eq!(
        json["transfers"]["allowed_jurisdictions"],
        serde_json::json!(["EU"])
    );
    let categories = json["data_categories"].to_string();
    assert!(
        categories.contains("iban") && categories.contains("label"),
        "{categories}"
    );
    assert!(
        json["security"]["encryption"]["at_rest"]
            .as_str()
            .unwrap()
            .starts_with("not configured")
    );

    let md = stdout(&run_ok(&mut args("md")));
    for needle in [
        "# Records of processing activities",
        "| Controller | ACME SAS |",
        "## Recipients",
        "| frankfurt | OpenAI-compatible server | vllm.fra.example.eu | EU-DE | no | yes |",
        "| raw messages (as received) | 30 days |",
        "crm.internal.example",
    ] {
        assert!(md.contains(needle), "{needle:?} missing from:\n{md}");
    }
    // With a data key, the report says what is encrypted.
    let md = stdout(&run_ok(args("md").env("VERRE_DATA_KEY", "11".repeat(32))));
    assert!(md.contains("AES-256-GCM"), "{md}");
}

/// The shipped configurations (deploy/, examples/, and the verre.toml `verre up` writes)
/// load, and describe themselves without any secret in the environment.
#[test]
fn shipped_configs_load_and_report_without_secrets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up-verre.toml");
    std::fs::write(
        &up,
        include_str!("../src/up-config.toml")
            .replace("{crm_webhook_url}", "http://127.0.0.1:8099/hooks/crm")
            .replace("{smtp_host}", "127.0.0.1")
            .replace("{smtp_port}", "25"),
    )
    .unwrap();
    for config in [
        root.join("deploy/verre.vllm.toml"),
        root.join("deploy/verre.compose.toml"),
        root.join("examples/verre.toml"),
        up,
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_verre"))
            .args(["gdpr", "report", "--format", "json", "--config"])
            .arg(&config)
            .env("VERRE_HOME", dir.path())
            .env_remove("VERRE_CRM_WEBHOOK_SECRET")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(report.is_object(), "{}", config.display());
    }
}
