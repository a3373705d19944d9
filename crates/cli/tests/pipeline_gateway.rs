//! The pipeline calls models the way every client does (issue 17, item 2): `verre up`
//! extracts on its local model and drafts an escalation on `large`, a remote backend of
//! verre.toml. A second `verre serve` on loopback stands in for the vLLM cluster
//! (`local = false`, jurisdiction `EU-DE`), behind a recording proxy.
//!
//! The proxy forwards every call and records its bytes. Like a model that quotes the
//! customer, it adds the last user turn it received to the answer, so what came back
//! from outside must be restored before the draft is stored.
//!
//! Checked: the recording holds neither the person's name, nor the address, nor the IBAN,
//! and does hold their pseudonyms; the stored draft has the real values back;
//! `verre cost --by backend` shows local extraction tokens and remote drafting tokens; the
//! audit log has both calls, under the pipeline's name. Needs smollm2-135m and minilm-l6
//! in `$VERRE_HOME/models` (scripts/test.sh pulls them); skipped without, outside CI.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{
    Running, chat_status, contains, first_api_key, home, http_address, models, run_ok, verre,
};

const NAME: &str = "Johanna Weber";
const EMAIL: &str = "johanna.weber@example.de";
const IBAN: &str = "DE89 3704 0044 0532 0130 00";

/// What the proxy saw: (path, request body).
type Recording = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A proxy to `upstream` on a free loopback port that records each request, and adds
/// the last user turn it was sent to each chat answer (a model quoting the customer).
fn recording_proxy(rt: &tokio::runtime::Runtime, upstream: String) -> (SocketAddr, Recording) {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{StatusCode, Uri};
    use axum::response::IntoResponse;

    #[derive(Clone)]
    struct Proxy {
        upstream: String,
        client: reqwest::Client,
        seen: Recording,
    }

    async fn forward(
        State(p): State<Proxy>,
        method: axum::http::Method,
        uri: Uri,
        body: Bytes,
    ) -> axum::response::Response {
        p.seen
            .lock()
            .unwrap()
            .push((uri.path().to_string(), body.to_vec()));
        let url = format!("{}{}", p.upstream, uri.path());
        let request = match method {
            axum::http::Method::GET => p.client.get(url),
            _ => p
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(body.clone()),
        };
        let answer = match request.send().await {
            Ok(a) => a,
            Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        };
        let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
        let bytes = answer.bytes().await.unwrap_or_default();
        let quoted = (uri.path() == "/v1/chat/completions" && status.is_success())
            .then(|| {
                let mut answer: Value = serde_json::from_slice(&bytes).ok()?;
                let request: Value = serde_json::from_slice(&body).ok()?;
                let user = request["messages"]
                    .as_array()?
                    .iter()
                    .rev()
                    .find(|m| m["role"] == "user")?["content"]
                    .as_str()?
                    .to_string();
                let text = answer["choices"][0]["message"]["content"].as_str()?;
                answer["choices"][0]["message"]["content"] = json!(format!("{text}\n\n> {user}"));
                Some(answer)
            })
            .flatten();
        match quoted {
            Some(answer) => (status, axum::Json(answer)).into_response(),
            None => (status, bytes).into_response(),
        }
    }

    let seen = Recording::default();
    let proxy = Proxy {
        upstream,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        seen: seen.clone(),
    };
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    rt.spawn(async move { axum::serve(listener, app).await });
    (address, seen)
}

const PIPELINE: &str = r#"
name = "escalations"

[limits]
max_attempts = 2
backoff_ms = 200

[extract]
model = "smollm2-135m"
system = "Read the customer's message."
max_tokens = 48
schema = { type = "object", required = ["topic"], properties = { topic = { type = "string", maxLength = 40 } } }

# Every message is an escalation here: drafted on the large model outside.
[[route]]
name = "escalate"
draft = true
draft_model = "large"
actions = ["reply"]

[draft]
model = "smollm2-135m"
system = "You are a support agent. Answer in one short sentence."
prompt = "{{ document }}"
max_tokens = 16

[[action]]
name = "reply"
kind = "reply"
subject = "Re: {{ message.subject }}"
body = "{{ draft }}"
"#;

#[test]
fn verre_up_drafts_escalations_on_a_remote_backend_pseudonymised_metered_and_audited() {
    let Some(models) = models() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The "vLLM cluster": another verre, serving the small model.
    let remote_home = home(&models);
    let mut remote = Running::start({
        let mut c = verre(remote_home.path());
        c.args(["serve", "--model", "smollm2-135m", "--port", "0"]);
        c
    });
    let upstream = remote.wait_for("remote address", |l| {
        l.contains("listening on")
            .then(|| http_address(l))
            .flatten()
    });
    remote.wait_for("remote ready", |l| l.contains("ready").then_some(()));
    let (proxy, recording) = recording_proxy(&rt, upstream);

    let home = home(&models);
    let config = home.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[policy]
allow_jurisdictions = ["EU"]

[[backend]]
name = "frankfurt"
kind = "openai"
url = "http://{proxy}/v1"
jurisdiction = "EU-DE"
local = false
models = [{{ name = "large", upstream = "smollm2-135m" }}]
"#
        ),
    )
    .unwrap();
    let pipeline = home.path().join("pipeline.toml");
    std::fs::write(&pipeline, PIPELINE).unwrap();
    let inbox = home.path().join("inbox");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub)).unwrap();
    }
    let mut up = Running::start({
        let mut c = verre(home.path());
        c.args([
            "up",
            "--port",
            "0",
            "--poll-secs",
            "1",
            "--model",
            "smollm2-135m",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--pipeline")
        .arg(&pipeline);
        c
    });
    let base = up.wait_for("verre up's API", |l| {
        l.contains("OpenAI API").then(|| http_address(l)).flatten()
    });
    up.wait_for("verre up running", |l| l.contains("Ctrl-C").then_some(()));
    // A second mail, with no personal data: its extraction shares the pipeline's fixed
    // prompt with the first one's.
    std::fs::write(
        inbox.join("new/2.eml"),
        "From: orders@shop.example\r\nTo: support@example.org\r\nSubject: Order 4411\r\n\
         Message-ID: <order-4411@shop.example>\r\n\r\nWhere is order 4411?\r\n",
    )
    .unwrap();
    std::fs::write(
        inbox.join("new/1.eml"),
        format!(
            "From: {NAME} <{EMAIL}>\r\nTo: support@example.org\r\nSubject: Refund\r\n\
             Message-ID: <refund-1@example.de>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
             Hello, this is {NAME}. Please refund the 40 EUR to my account {IBAN}.\r\n\
             You can reach me at {EMAIL}.\r\n"
        ),
    )
    .unwrap();

    let db = format!("sqlite://{}", home.path().join("verre.db").display());
    let keys = verre_store::Keyring::from_file(&home.path().join("data-keys")).unwrap();
    let store = rt.block_on(async {
        verre_store::Store::open(&db)
            .await
            .unwrap()
            .with_keys(Some(keys))
            .await
            .unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        up.alive();
        let statuses: Vec<(String, String)> = rt.block_on(async {
            sqlx::query_as("SELECT source_ref, status FROM messages ORDER BY source_ref")
                .fetch_all(store.pool())
                .await
                .unwrap()
        });
        if statuses.len() == 2 && statuses.iter().all(|(_, s)| s != "pending") {
            assert_eq!(statuses[0].0, "1.eml");
            break statuses
                .into_iter()
                .map(|(_, s)| s)
                .collect::<Vec<_>>()
                .join(",");
        }
        assert!(
            Instant::now() < deadline,
            "the mail was not processed:\n{}",
            up.printed.join("\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let refund: i64 = rt.block_on(async {
        sqlx::query_scalar("SELECT id FROM messages WHERE source_ref = '1.eml'")
            .fetch_one(store.pool())
            .await
            .unwrap()
    });
    let detail = rt.block_on(store.detail(refund)).unwrap().unwrap();
    assert_eq!(
        status,
        "processed,processed",
        "{detail:#?}\n{}",
        up.printed.join("\n")
    );

    // Outside: the drafting call, and nothing personal in any byte of it.
    let recorded = recording.lock().unwrap().clone();
    let chats: Vec<&Vec<u8>> = recorded
        .iter()
        .filter(|(path, _)| path == "/v1/chat/completions")
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        chats.len(),
        2,
        "one drafting call per mail went out: {recorded:?}"
    );
    let sent = *chats
        .iter()
        .find(|b| contains(b, "Please refund"))
        .unwrap_or_else(|| panic!("the refund mail's draft request: {recorded:?}"));
    for secret in [
        NAME,
        "Johanna",
        "Weber",
        EMAIL,
        IBAN,
        &IBAN.replace(' ', ""),
    ] {
        assert!(
            !contains(sent, secret),
            "{secret:?} reached the remote backend: {}",
            String::from_utf8_lossy(sent)
        );
    }
    assert!(
        contains(sent, "Please refund"),
        "the message itself was sent: {}",
        String::from_utf8_lossy(sent)
    );

    // Back inside: the draft quotes the customer with the real values restored.
    let draft = rt
        .block_on(store.stage_output(refund, "draft"))
        .unwrap()
        .unwrap();
    assert_eq!(draft["model"], "large", "{draft}");
    let text = draft["draft"].as_str().unwrap();
    for real in [NAME, EMAIL, IBAN] {
        assert!(
            text.contains(real),
            "{real:?} not restored in the draft: {text}"
        );
    }

    // The extractions went through the local engine: in /metrics, and the second one's
    // fixed prompt came from the prefix cache.
    let metrics = rt
        .block_on(async {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .text()
                .await
        })
        .unwrap();
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains("smollm2-135m"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        metric("verre:e2e_request_latency_seconds_count") >= 2.0,
        "both extractions are in /metrics:\n{metrics}"
    );
    assert!(
        metric("verre:prefix_cache_hits_total") > 0.0,
        "the pipeline's fixed prompt was served from the prefix cache:\n{metrics}"
    );

    // The ledger: extraction tokens local, drafting tokens remote, both as the pipeline.
    up.alive();
    let out = run_ok(
        verre(home.path())
            .args(["cost", "--by", "backend", "--json", "--database", &db])
            .arg("--config")
            .arg(&config),
    );
    let cost: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = cost["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("{cost:#}"));
    let tokens = |backend: &str| -> u64 {
        rows.iter()
            .filter(|r| r["group"] == backend)
            .map(|r| {
                r["prompt_tokens"].as_u64().unwrap_or(0)
                    + r["completion_tokens"].as_u64().unwrap_or(0)
            })
            .sum()
    };
    assert!(tokens("local") > 0, "local extraction metered: {cost:#}");
    assert!(tokens("frankfurt") > 0, "remote drafting metered: {cost:#}");

    // The audit log: both calls, the remote one marked pseudonymised.
    let out = run_ok(verre(home.path()).args([
        "audit",
        "show",
        "--json",
        "--limit",
        "200",
        "--database",
        &db,
    ]));
    let entries: Value = serde_json::from_slice(&out.stdout).unwrap();
    let calls: Vec<&Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().is_some_and(|a| a.starts_with("api.")))
        .collect();
    let by = |backend: &str| {
        calls
            .iter()
            .find(|e| e["detail"]["backend"] == backend)
            .unwrap_or_else(|| panic!("no audited call on {backend}: {entries:#}"))
    };
    let local = by("local");
    let remote_call = by("frankfurt");
    assert_eq!(local["actor"], "key:pipeline:escalations", "{local:#}");
    assert_eq!(
        remote_call["actor"], "key:pipeline:escalations",
        "{remote_call:#}"
    );
    assert_eq!(
        remote_call["detail"]["pseudonymized"], true,
        "{remote_call:#}"
    );
    up.alive();
    remote.alive();
}

/// Errors found at start are found at start: a pipeline model that resolves nowhere, and
/// a backend the egress policy does not allow, stop `verre up` and `verre intake run`
/// before any mail is read, with the file, the line and the reason.
#[test]
fn a_model_that_resolves_nowhere_or_a_backend_outside_the_policy_is_refused_at_start() {
    let Some(models) = models() else { return };
    let home = home(&models);
    let inbox = home.path().join("inbox");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub)).unwrap();
    }
    std::fs::write(
        inbox.join("new/1.eml"),
        "From: a@example.org\r\nSubject: x\r\n\r\nhello\r\n",
    )
    .unwrap();
    let pipeline = home.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        PIPELINE.replace("draft_model = \"large\"", "draft_model = \"mistral-large\""),
    )
    .unwrap();
    let db = format!("sqlite://{}", home.path().join("verre.db").display());
    let line = PIPELINE
        .lines()
        .position(|l| l.starts_with("draft_model"))
        .unwrap()
        + 1;
    let expected = format!("pipeline.toml:{line}: model \"mistral-large\"");

    for args in [
        vec![
            "intake",
            "run",
            inbox.to_str().unwrap(),
            "--json",
            "--database",
            &db,
        ],
        vec!["up", "--port", "0", "--model", "smollm2-135m"],
    ] {
        let out = verre(home.path())
            .args(&args)
            .arg("--pipeline")
            .arg(&pipeline)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(&expected),
            "{args:?}: {stderr}"
        );
    }
    assert!(inbox.join("new/1.eml").exists(), "no mail was touched");
    assert!(
        !home.path().join("verre.db").exists() || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let store = verre_store::Store::open(&db).await.unwrap();
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
                n == 0
            })
        },
        "no mail was read"
    );

    // A backend outside the policy: US jurisdiction under an EU-only policy.
    let config = home.path().join("us.toml");
    std::fs::write(
        &config,
        "[policy]\nallow_jurisdictions = [\"EU\"]\n\n[[backend]]\nname = \"virginia\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:9/v1\"\njurisdiction = \"US-VA\"\nlocal = false\nmodels = [\"large\"]\n",
    )
    .unwrap();
    std::fs::write(&pipeline, PIPELINE).unwrap();
    for args in [
        vec!["intake", "run", inbox.to_str().unwrap(), "--database", &db],
        vec!["up", "--port", "0", "--model", "smollm2-135m"],
    ] {
        let out = verre(home.path())
            .args(&args)
            .arg("--pipeline")
            .arg(&pipeline)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && stderr.contains(&format!("{}:4: ", config.display()))
                && stderr.contains("virginia")
                && stderr.contains("US-VA"),
            "{args:?}: {stderr}"
        );
    }
    assert!(inbox.join("new/1.eml").exists(), "no mail was touched");
}

/// A webhook target outside the policy is refused at start with the file and line that
/// declares it: a pipeline action sending where verre.toml declares no allowed target,
/// and a `[[delivery.webhook]]` in a jurisdiction the policy does not allow.
#[test]
fn a_webhook_outside_the_policy_is_refused_at_start_with_file_and_line() {
    let Some(models) = models() else { return };
    let home = home(&models);
    let inbox = home.path().join("inbox");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub)).unwrap();
    }
    std::fs::write(
        inbox.join("new/1.eml"),
        "From: a@example.org\r\nSubject: x\r\n\r\nhello\r\n",
    )
    .unwrap();
    let db = format!("sqlite://{}", home.path().join("verre.db").display());
    let webhook = "\n[[action]]\nname = \"crm\"\nkind = \"webhook\"\nurl = \"https://evil.example/hooks/{{ message.id }}\"\npayload = \"{}\"\n";
    let pipeline = home.path().join("pipeline.toml");
    std::fs::write(&pipeline, format!("{PIPELINE}{webhook}")).unwrap();
    let url_line = format!("{PIPELINE}{webhook}")
        .lines()
        .position(|l| l.starts_with("url = \"https://evil"))
        .unwrap()
        + 1;
    let config = |jurisdiction: &str| {
        format!(
            "[policy]\nallow_jurisdictions = [\"EU\"]\n\n[[backend]]\nname = \"frankfurt\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:9/v1\"\njurisdiction = \"EU-DE\"\nmodels = [\"large\"]\n\n[[delivery.webhook]]\nurl = \"https://crm.example.eu/hooks/\"\njurisdiction = \"{jurisdiction}\"\nsecret_env = \"VERRE_CRM_WEBHOOK_SECRET\"\n"
        )
    };
    let eu = home.path().join("eu.toml");
    std::fs::write(&eu, config("EU-FR")).unwrap();
    let us = home.path().join("us.toml");
    std::fs::write(&us, config("US-VA")).unwrap();
    let cases = [
        (
            &eu,
            format!("{}:{url_line}: action \"crm\": ", pipeline.display()),
            "evil.example",
        ),
        (&us, format!("{}:11: ", us.display()), "US-VA"),
    ];
    for (config, expected, why) in &cases {
        for args in [
            vec![
                "intake",
                "run",
                inbox.to_str().unwrap(),
                "--backend",
                "stub",
                "--database",
                &db,
            ],
            vec!["up", "--port", "0", "--model", "smollm2-135m"],
        ] {
            let out = verre(home.path())
                .args(&args)
                .arg("--pipeline")
                .arg(&pipeline)
                .arg("--config")
                .arg(config)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && stderr.contains(expected.as_str()) && stderr.contains(why),
                "{args:?} {}: {stderr}",
                config.display()
            );
        }
    }
    assert!(inbox.join("new/1.eml").exists(), "no mail was touched");
    assert!(
        !home.path().join("verre.db").exists(),
        "refused before verre's database was opened"
    );
}

/// verre.toml's `[[key]]` limits apply under `verre up` without any remote backend (they
/// used to apply only when a `[[backend]]` made `verre up` build its gateway).
#[test]
fn verre_up_applies_key_limits_without_remote_backends() {
    let Some(models) = models() else { return };
    let home = home(&models);
    let config = home.path().join("limits.toml");
    std::fs::write(
        &config,
        // The default pipeline's crm_ticket webhook must go to a declared target.
        "[policy]\nallow_jurisdictions = [\"EU\"]\n\n[[delivery.webhook]]\nurl = \"http://127.0.0.1:8099/hooks/\"\njurisdiction = \"EU\"\nsecret_env = \"VERRE_CRM_WEBHOOK_SECRET\"\n\n[[key]]\nname = \"admin\"\nrequests_per_minute = 1\n",
    )
    .unwrap();
    let mut up = Running::start({
        let mut c = verre(home.path());
        c.args([
            "up",
            "--port",
            "0",
            "--model",
            "smollm2-135m",
            "--intake-backend",
            "stub",
        ])
        .arg("--config")
        .arg(&config);
        c
    });
    let base = up.wait_for("verre up's API", |l| {
        l.contains("OpenAI API").then(|| http_address(l)).flatten()
    });
    up.wait_for("verre up running", |l| l.contains("Ctrl-C").then_some(()));
    let key = first_api_key(home.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let ask = || chat_status(&base, &key, "smollm2-135m");
    // Once the models are loaded (/health is 200; a 503 while loading counts too).
    let deadline = Instant::now() + Duration::from_secs(300);
    while rt
        .block_on(client.get(format!("{base}/health")).send())
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "the models never loaded");
        up.alive();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(ask(), 200);
    assert_eq!(
        ask(),
        429,
        "the second request in the minute is over the key's limit"
    );
    up.alive();
}
