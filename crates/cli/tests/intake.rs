//! `verre intake` and `verre eval-extract` as a user runs them: 1,000 generated mails with
//! the models stubbed out, a worker killed with SIGKILL and restarted, pipeline errors,
//! show and quarantine. The real model runs in crates/intake/tests/pipeline.rs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn verre() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_verre"));
    c.env_remove("VERRE_DATABASE")
        .env_remove("VERRE_INTAKE_STUB_DELAY_MS")
        .env_remove("VERRE_INTAKE_STUB_LOG");
    c
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running verre");
    assert!(
        out.status.success(),
        "verre failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The example pipeline, beside a business database where alice@example.com is a gold
/// customer.
fn example_pipeline(dir: &Path) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/intake-pipeline.toml");
    let path = dir.join("pipeline.toml");
    std::fs::copy(example, &path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", dir.join("crm.db").display());
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, tier TEXT);
             INSERT INTO customers (name, email, tier) VALUES ('Alice', 'alice@example.com', 'gold');",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    });
    path
}

/// `n` distinct mails: plain, HTML, with a text attachment; every tenth from alice.
fn generate_mails(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let from = if i % 10 == 0 {
            "Alice <alice@example.com>".to_string()
        } else {
            format!("user{i}@example.net")
        };
        let body = match i % 3 {
            0 => format!(
                "Content-Type: text/plain\r\n\r\nHello, this is message {i}. My order #{i} has not arrived.\r\n"
            ),
            1 => format!(
                "Content-Type: text/html\r\n\r\n<html><body><p>Message <b>{i}</b>: please call me.</p></body></html>\r\n"
            ),
            _ => format!(
                "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\nContent-Type: text/plain\r\n\r\nSee the attached notes ({i}).\r\n\
                 --b{i}\r\nContent-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nnotes for {i}\r\n--b{i}--\r\n"
            ),
        };
        let mail = format!(
            "From: {from}\r\nTo: desk@example.org\r\nSubject: Request {i}\r\nDate: Mon, 2 Mar 2026 03:00:00 +0000\r\nMessage-ID: <{i}@gen>\r\nMIME-Version: 1.0\r\n{body}"
        );
        std::fs::write(dir.join(format!("{i:05}.eml")), mail).unwrap();
    }
}

#[test]
fn a_thousand_generated_mails_run_through_intake_run() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = example_pipeline(dir.path());
    let inbox = dir.path().join("inbox");
    generate_mails(&inbox, 1000);
    let db = format!("sqlite://{}", dir.path().join("verre.db").display());
    let start = Instant::now();
    let out = run_ok(
        verre()
            .args([
                "intake",
                "run",
                inbox.to_str().unwrap(),
                "--pipeline",
                pipeline.to_str().unwrap(),
            ])
            .args([
                "--database",
                &db,
                "--backend",
                "stub",
                "--workers",
                "4",
                "--json",
            ]),
    );
    let elapsed = start.elapsed();
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("1,000 mails through `verre intake run --backend stub`: {elapsed:.2?}\n{summary:#}");
    assert_eq!(summary["messages"], 1000);
    assert_eq!(summary["processed"], 1000, "{summary:#}");
    assert_eq!(summary["quarantined"], 0);
    assert_eq!(
        summary["routes"]["known_customer"].as_u64().unwrap()
            + summary["routes"]
                .get("escalate")
                .and_then(Value::as_u64)
                .unwrap_or(0)
            + summary["routes"]["file"].as_u64().unwrap(),
        1000
    );
    let by_threat: u64 = summary["labels"]["threat_level"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_threat, 1000);
    assert!(summary["prompt_tokens"].as_i64().unwrap() > 0);

    // A second run over the same source stores nothing again and does nothing again.
    let out = run_ok(
        verre()
            .args([
                "intake",
                "run",
                inbox.to_str().unwrap(),
                "--pipeline",
                pipeline.to_str().unwrap(),
            ])
            .args(["--database", &db, "--backend", "stub", "--json"]),
    );
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (again["new"].as_u64(), again["processed"].as_u64()),
        (Some(0), Some(1000))
    );
}

fn count(db: &str, sql: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = verre_store::Store::open(db).await.unwrap();
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(store.pool())
            .await
            .unwrap();
        n
    })
}

#[test]
fn a_worker_killed_mid_run_resumes_and_no_effect_is_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = example_pipeline(dir.path());
    let inbox = dir.path().join("inbox");
    let n = 200;
    generate_mails(&inbox, n);
    let db = format!("sqlite://{}", dir.path().join("verre.db").display());
    let log = dir.path().join("extractions.log");
    let run = |extra: &[&str]| {
        let mut c = verre();
        c.args([
            "intake",
            "run",
            inbox.to_str().unwrap(),
            "--pipeline",
            pipeline.to_str().unwrap(),
        ])
        .args([
            "--database",
            &db,
            "--backend",
            "stub",
            "--workers",
            "2",
            "--lease-secs",
            "2",
            "--json",
        ])
        .args(extra)
        .env("VERRE_INTAKE_STUB_DELAY_MS", "10")
        .env("VERRE_INTAKE_STUB_LOG", &log);
        c
    };
    let mut child = run(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once part of the work is done (polling the store, which the worker shares).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
        if dir.path().join("verre.db").exists()
            && count(
                &db,
                "SELECT COUNT(*) FROM messages WHERE status = 'processed'",
            ) >= 40
        {
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let processed_at_kill = count(
        &db,
        "SELECT COUNT(*) FROM messages WHERE status = 'processed'",
    );
    assert!(processed_at_kill < n as i64, "killed mid-run");

    let out = run_ok(&mut run(&[]));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["processed"], n, "{summary:#}");
    assert_eq!(summary["quarantined"], 0);

    // Every stage's effect exactly once: one result per message and stage, the staged
    // actions the routes asked for and no more.
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM stage_results"),
        verre_intake::STAGES.len() as i64 * n as i64
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM parts WHERE kind = 'headers'"),
        n as i64
    );
    let known = count(
        &db,
        "SELECT COUNT(*) FROM stage_results WHERE stage = 'route' AND output LIKE '%\"reply\"%'",
    );
    let escalated = count(
        &db,
        "SELECT COUNT(*) FROM stage_results WHERE stage = 'route' AND output LIKE '%crm_ticket%'",
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM actions"),
        known + escalated
    );
    // Re-running work is allowed only for what was in flight at the kill (one job per
    // worker), never for what was already done.
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let distinct: HashSet<&String> = lines.iter().collect();
    assert_eq!(distinct.len(), n);
    assert!(
        lines.len() <= n + 2,
        "{} extractions for {n} messages",
        lines.len()
    );
}

#[test]
fn a_pipeline_that_does_not_validate_is_refused_with_its_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\n[extract]\nmodel = \"smollm2-135m\"\nsystem = \"s\"\nschema = { type = \"object\" }\n[[route]]\nname = \"r\"\nwhen = \"extract.level ==\"\n",
    )
    .unwrap();
    let inbox = dir.path().join("inbox");
    generate_mails(&inbox, 1);
    let out = verre()
        .args([
            "intake",
            "run",
            inbox.to_str().unwrap(),
            "--pipeline",
            bad.to_str().unwrap(),
            "--backend",
            "stub",
        ])
        .args([
            "--database",
            &format!("sqlite://{}", dir.path().join("v.db").display()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:8:") && err.contains("not a valid expression"),
        "{err}"
    );
}

#[test]
fn show_and_quarantine_list_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = example_pipeline(dir.path());
    let inbox = dir.path().join("inbox");
    generate_mails(&inbox, 2);
    std::fs::write(inbox.join("empty.eml"), "").unwrap();
    let db = format!("sqlite://{}", dir.path().join("verre.db").display());
    let run = || {
        let out = run_ok(
            verre()
                .args([
                    "intake",
                    "run",
                    inbox.to_str().unwrap(),
                    "--pipeline",
                    pipeline.to_str().unwrap(),
                ])
                .args(["--database", &db, "--backend", "stub", "--quiet"]),
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run();
    assert!(
        table.contains("processed              2") && table.contains("quarantined            1"),
        "{table}"
    );

    let out = run_ok(verre().args(["intake", "quarantine", "list", "--json", "--database", &db]));
    let q: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(q.as_array().unwrap().len(), 1);
    assert_eq!(q[0]["stage"], "parse");
    assert_eq!(q[0]["source_ref"], "empty.eml");
    let id = q[0]["message_id"].as_i64().unwrap();
    assert!(!q[0]["reason"].as_str().unwrap().is_empty());

    let out = run_ok(verre().args(["intake", "show", &id.to_string(), "--database", &db]));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("QUARANTINED at parse"), "{shown}");

    // A processed message: its parts, stage results and staged actions.
    let ok_id = (1..=3).find(|i| *i != id).unwrap();
    let out = run_ok(verre().args([
        "intake",
        "show",
        &ok_id.to_string(),
        "--json",
        "--database",
        &db,
    ]));
    let detail: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(detail["message"]["status"], "processed");
    assert_eq!(
        detail["results"].as_array().unwrap().len(),
        verre_intake::STAGES.len()
    );

    run_ok(verre().args([
        "intake",
        "quarantine",
        "retry",
        &id.to_string(),
        "--database",
        &db,
    ]));
    let out = run_ok(verre().args(["intake", "quarantine", "list", "--json", "--database", &db]));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let out = verre()
        .args([
            "intake",
            "quarantine",
            "retry",
            &id.to_string(),
            "--database",
            &db,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "not in quarantine any more");
    // Run again: the empty mail fails the same way and is back in quarantine, once.
    run();
    let out = run_ok(verre().args(["intake", "quarantine", "list", "--json", "--database", &db]));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// The shipped example runs as shipped once its business database is made from
/// examples/crm.sql; without it, `verre intake run` refuses to start with the file, the
/// line and the reason, and stores no mail (it used to quarantine every message).
#[test]
fn the_example_runs_as_shipped_and_a_missing_business_database_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let pipeline = dir.path().join("intake-pipeline.toml");
    std::fs::copy(examples.join("intake-pipeline.toml"), &pipeline).unwrap();
    let inbox = dir.path().join("inbox");
    generate_mails(&inbox, 3);
    let db = format!("sqlite://{}", dir.path().join("verre.db").display());
    let run = |pipeline: &Path| {
        verre()
            .args([
                "intake",
                "run",
                inbox.to_str().unwrap(),
                "--backend",
                "stub",
                "--json",
            ])
            .args(["--database", &db])
            .arg("--pipeline")
            .arg(pipeline)
            .output()
            .unwrap()
    };
    let out = run(&pipeline);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = std::fs::read_to_string(&pipeline)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("database ="))
        .unwrap()
        + 1;
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("intake-pipeline.toml:{line}:")) && stderr.contains("crm.db"),
        "{stderr}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stored: i64 = rt.block_on(async {
        let store = verre_store::Store::open(&db).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(store.pool())
            .await
            .unwrap()
    });
    assert_eq!(stored, 0, "no mail was read");

    // Made as the example's comment says (Python's sqlite3 runs crm.sql).
    let status = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys; sqlite3.connect(sys.argv[1]).executescript(open(sys.argv[2]).read())")
        .arg(dir.path().join("crm.db"))
        .arg(examples.join("crm.sql"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = run(&pipeline);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["processed"], 3, "{summary:#}");
}

/// Issue 18, item 13: with a data key, a quarantine reason is stored encrypted (it may
/// quote the mail or the model's answer) and `verre intake show` and `quarantine list`
/// still show it, decrypted.
#[test]
fn quarantine_reasons_are_encrypted_and_shown_decrypted() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = example_pipeline(dir.path());
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("empty.eml"), "").unwrap();
    let db = format!("sqlite://{}", dir.path().join("verre.db").display());
    let key = "ab".repeat(32);
    let keyed = || {
        let mut c = verre();
        c.env("VERRE_DATA_KEY", &key);
        c
    };
    run_ok(
        keyed()
            .args([
                "intake",
                "run",
                inbox.to_str().unwrap(),
                "--pipeline",
                pipeline.to_str().unwrap(),
            ])
            .args(["--database", &db, "--backend", "stub", "--quiet"]),
    );
    let out = run_ok(keyed().args(["intake", "quarantine", "list", "--json", "--database", &db]));
    let q: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = q[0]["reason"].as_str().unwrap().to_string();
    assert!(reason.len() > 10, "{q}");
    let id = q[0]["message_id"].as_i64().unwrap().to_string();
    let out = run_ok(keyed().args(["intake", "show", &id, "--database", &db]));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&reason),
        "the reason is shown decrypted: {shown}"
    );
    let mut bytes = Vec::new();
    for name in ["verre.db", "verre.db-wal"] {
        bytes.extend(std::fs::read(dir.path().join(name)).unwrap_or_default());
    }
    assert!(
        !bytes.windows(reason.len()).any(|w| w == reason.as_bytes()),
        "the reason {reason:?} is readable in the database file"
    );
}
