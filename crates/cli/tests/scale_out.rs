//! Scale-out: two `verre up` processes on one PostgreSQL (issue 17). In a test binary of
//! its own: the test process opens the store with the home's audit key, named in its
//! environment before any thread starts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{Running, chat_status, first_api_key, home, http_address, models, run_ok, verre};

/// Scale-out: two `verre up` processes (two ports, one PostgreSQL, one inbox) share the
/// queue, the review queue, the outbox and the ledger. Every mail is processed once (and
/// both processes did some of the work), an approved action is delivered once although
/// both delivery workers run, the ledger holds the API calls made to either, and the
/// audit chain verifies afterwards. Needs `VERRE_TEST_POSTGRES_URL`
/// (scripts/ci-services.sh) and smollm2-135m; skipped without, outside CI.
#[test]
fn two_verre_up_on_one_postgres_share_the_queue_the_outbox_and_the_ledger() {
    let Some(models) = models() else { return };
    let Some(admin_url) = std::env::var("VERRE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "VERRE_TEST_POSTGRES_URL must be set in CI"
        );
        eprintln!("skipped: set VERRE_TEST_POSTGRES_URL (scripts/ci-services.sh)");
        return;
    };
    let home = home(&models);
    // The test process approves as a reviewer would: its audit entries are keyed with the
    // home's key, as the two verre up processes' are.
    // SAFETY: the only test of this binary, before it starts any thread (the runtime below) that reads the
    // environment.
    unsafe { std::env::set_var("VERRE_AUDIT_KEY_FILE", home.path().join("audit-key")) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db_name = format!("verre_scaleout_{}", std::process::id());
    let db = rt.block_on(async {
        sqlx::any::install_default_drivers();
        let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db_name}"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        format!("{base}/{db_name}")
    });

    // The CRM: counts deliveries by webhook id.
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let crm = {
        let received = received.clone();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/hooks/crm",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let received = received.clone();
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    received.lock().unwrap().push(id);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        rt.spawn(async move { axum::serve(listener, app).await });
        address
    };

    let config = home.path().join("verre.toml");
    std::fs::write(
        &config,
        format!(
            "[policy]\nallow_jurisdictions = [\"EU\"]\n\n[[delivery.webhook]]\nurl = \"http://{crm}/hooks/\"\njurisdiction = \"EU\"\nsecret_env = \"VERRE_CRM_WEBHOOK_SECRET\"\n"
        ),
    )
    .unwrap();
    let pipeline = home.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
name = "shared"
[extract]
model = "smollm2-135m"
system = "Read it."
schema = {{ type = "object", required = ["topic"], properties = {{ topic = {{ type = "string" }} }} }}
[[route]]
name = "all"
actions = ["crm"]
[[action]]
name = "crm"
kind = "webhook"
url = "http://{crm}/hooks/crm"
payload = '{{"message": {{{{ message.id }}}}}}'
"#
        ),
    )
    .unwrap();
    let inbox = home.path().join("inbox");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub)).unwrap();
    }
    const MAILS: usize = 8;
    for i in 0..MAILS {
        std::fs::write(
            inbox.join(format!("new/{i}.eml")),
            format!("From: c{i}@example.org\r\nSubject: Order {i}\r\nMessage-ID: <o{i}@example.org>\r\n\r\nWhere is order {i}?\r\n"),
        )
        .unwrap();
    }
    let start = |port: &str| {
        let mut c = verre(home.path());
        c.args([
            "up",
            "--port",
            port,
            "--poll-secs",
            "1",
            "--model",
            "smollm2-135m",
        ])
        .args(["--intake-backend", "stub", "--database", &db])
        .arg("--config")
        .arg(&config)
        .arg("--pipeline")
        .arg(&pipeline)
        // Slow enough that both processes get some of the work.
        .env("VERRE_INTAKE_STUB_DELAY_MS", "300");
        let mut up = Running::start(c);
        let base = up.wait_for("the API", |l| {
            l.contains("OpenAI API").then(|| http_address(l)).flatten()
        });
        up.wait_for("verre up running", |l| l.contains("Ctrl-C").then_some(()));
        (up, base)
    };
    // One after the other: the first start makes the home's keys and secrets.
    let (mut a, base_a) = start("0");
    // The first start's API key, from the secrets file it wrote (never on stderr).
    let key = first_api_key(home.path());
    let (mut b, base_b) = start("0");

    let keys = verre_store::Keyring::from_file(&home.path().join("data-keys")).unwrap();
    let store = rt.block_on(async {
        verre_store::Store::open(&db)
            .await
            .unwrap()
            .with_keys(Some(keys))
            .await
            .unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        a.alive();
        b.alive();
        let done: i64 = rt.block_on(async {
            sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE status = 'processed'")
                .fetch_one(store.pool())
                .await
                .unwrap()
        });
        if done == MAILS as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "not all mails were processed");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (messages, results, processes): (i64, i64, i64) = rt.block_on(async {
        sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM stage_results),
                    (SELECT COUNT(DISTINCT split_part(worker, '-', array_length(string_to_array(worker, '-'), 1) - 1)) FROM stage_results)",
        )
        .fetch_one(store.pool())
        .await
        .unwrap()
    });
    assert_eq!(messages, MAILS as i64, "each mail stored once");
    assert_eq!(
        results,
        verre_intake::STAGES.len() as i64 * MAILS as i64,
        "each stage ran once per mail"
    );
    assert_eq!(processes, 2, "both processes worked the queue");

    // Approve every message (as the review UI does); both delivery workers run.
    for id in 1..=MAILS as i64 {
        rt.block_on(store.approve(id, "reviewer", &|_| Ok(())))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.lock().unwrap().len() < MAILS {
        assert!(
            Instant::now() < deadline,
            "not every approved action was delivered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A little longer: a second delivery of any of them would show now.
    std::thread::sleep(Duration::from_secs(3));
    let ids = received.lock().unwrap().clone();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), distinct.len()),
        (MAILS, MAILS),
        "each delivered once: {ids:?}"
    );

    // One API call to each process: one ledger.
    for base in [&base_a, &base_b] {
        assert_eq!(chat_status(base, &key, "smollm2-135m"), 200);
    }
    // The ledger is written in batches shortly after each call.
    let deadline = Instant::now() + Duration::from_secs(30);
    let calls = loop {
        let calls: i64 = rt.block_on(async {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM ledger WHERE endpoint = 'chat' AND api_key NOT LIKE 'pipeline:%'",
            )
            .fetch_one(store.pool())
            .await
            .unwrap()
        });
        if calls >= 2 || Instant::now() > deadline {
            break calls;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    a.alive();
    b.alive();
    drop(a);
    drop(b);
    assert_eq!(calls, 2, "both processes write the one ledger");
    let out = run_ok(verre(home.path()).args(["audit", "verify", "--no-head", "--database", &db]));
    assert!(out.status.success());
}
