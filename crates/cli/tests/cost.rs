//! `verre cost` over a ledger written through verre-store: the table, the JSON, the
//! grouping, the period and bad input.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use verre_store::Store;
use verre_store::ledger::{ApiAudit, ApiCall, LedgerEntry};

fn verre(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_verre"))
        .args(args)
        .env("VERRE_HOME", home)
        .env_remove("VERRE_DATABASE")
        .output()
        .expect("running verre")
}

fn call(key: &str, model: &str, backend: &str, local: bool, at: i64, p: u64, c: u64) -> ApiCall {
    ApiCall {
        entry: LedgerEntry {
            at,
            api_key: key.into(),
            endpoint: "chat".into(),
            model: model.into(),
            backend: backend.into(),
            local,
            status: 200,
            prompt_tokens: p,
            completion_tokens: c,
            first_byte_ms: 5,
            latency_ms: 50,
        },
        audit: ApiAudit::None,
        pseudonymized: false,
    }
}

#[tokio::test]
async fn cost_prices_the_ledger() {
    let home = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", home.path().join("verre.db").display());
    let store = Store::open(&db).await.unwrap();
    let now = verre_store::now_ms();
    let hour = 3_600_000;
    store
        .insert_api_calls(&[
            // Before the period asked for: not counted.
            call("alice", "small", "box", true, now - 30 * hour, 1_000_000, 0),
            call("alice", "small", "box", true, now - hour, 600_000, 200_000),
            call("bob", "small", "box", true, now - hour, 150_000, 50_000),
            call(
                "bob",
                "large",
                "frankfurt",
                false,
                now - hour,
                1_000_000,
                1_000_000,
            ),
        ])
        .await
        .unwrap();
    drop(store);
    let config = home.path().join("verre.toml");
    std::fs::write(
        &config,
        "[policy]\nallow_jurisdictions = [\"EU\"]\n\n[[backend]]\nname = \"needs-an-env-var\"\nkind = \"openai\"\nurl = \"https://vllm.example.eu/v1\"\njurisdiction = \"EU-DE\"\nmodels = [\"large\"]\napi_key_env = \"VERRE_TEST_UNSET_VARIABLE\"\n\n[cost]\neur_per_hour = 9\nwatts = 500\neur_per_kwh = 2\nusd_per_eur = 2\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let o = verre(
        home.path(),
        &[
            "cost",
            "--since",
            "2h",
            "--by",
            "key",
            "--json",
            "--config",
            config,
            "--database",
            &db,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    // Two hours of €9/h hardware and 0.5 kW × €2/kWh energy: €20, over 1M local tokens.
    let local = &report["local"];
    assert!(
        (local["total_eur"].as_f64().unwrap() - 20.0).abs() < 0.05,
        "{local}"
    );
    assert_eq!(local["tokens"], 1_000_000);
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    let bob = groups.iter().find(|g| g["group"] == "bob").unwrap();
    let alice = groups.iter().find(|g| g["group"] == "alice").unwrap();
    assert_eq!(
        alice["prompt_tokens"], 600_000,
        "the call before --since is left out"
    );
    // Bob's 200k local tokens are a fifth of the local tokens: €4.
    assert!(
        (bob["local_cost_eur"].as_f64().unwrap() - 4.0).abs() < 0.01,
        "{bob}"
    );
    // All of Bob's tokens at GPT-4 Turbo: 1.15M × $10 + 1.05M × $30 = $43.
    let gpt = &bob["api_equivalent"][0];
    assert_eq!(gpt["name"], "GPT-4 Turbo");
    assert!((gpt["usd"].as_f64().unwrap() - 43.0).abs() < 1e-6, "{gpt}");
    // Saving on his local tokens only: (0.15M × $10 + 0.05M × $30) / 2 = €1.50, less €4.
    assert!(
        (gpt["saving_eur"].as_f64().unwrap() + 2.5).abs() < 0.01,
        "{gpt}"
    );
    assert_eq!(report["currencies"]["usd_per_eur"], 2.0);
    assert_eq!(report["total"]["requests"], 3);

    let o = verre(
        home.path(),
        &[
            "cost",
            "--by",
            "model",
            "--config",
            config,
            "--database",
            &db,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(
        table.contains("MODEL") && table.contains("Claude 3 Opus $"),
        "{table}"
    );
    let small = table.lines().find(|l| l.starts_with("small")).unwrap();
    assert!(
        small.contains("1750000"),
        "every call since the first: {small}"
    );
    assert!(table.lines().any(|l| l.starts_with("total")), "{table}");

    for (args, needle) in [
        (vec!["cost", "--since", "last tuesday"], "last tuesday"),
        (vec!["cost", "--by", "colour"], "colour"),
        (
            vec!["cost", "--config", "/no/such/verre.toml"],
            "/no/such/verre.toml",
        ),
    ] {
        let mut args = args.clone();
        args.extend(["--database", &db]);
        let o = verre(home.path(), &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
