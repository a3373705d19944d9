use super::*;

const EXAMPLE: &str = include_str!("../../../examples/verre.toml");

fn parse(text: &str) -> Result<VerreConfig, ConfigError> {
    VerreConfig::parse(text, "verre.toml")
}

/// The error of `text`, as the user sees it.
fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn the_example_parses_without_its_secrets() {
    let c = VerreConfig::parse(EXAMPLE, "examples/verre.toml").unwrap();
    assert_eq!(c.local_models(), ["qwen2.5-coder-1.5b"]);
    let remote = c.backends.iter().find(|b| !b.local).unwrap();
    assert!(remote.pseudonymize);
    assert_eq!(remote.jurisdiction.as_deref(), Some("EU-DE"));
    assert!(matches!(
        &remote.kind,
        BackendKind::OpenAi { api_key_env: Some(v), .. } if v == "FRANKFURT_KEY"
    ));
    let line = EXAMPLE
        .lines()
        .position(|l| l.contains("name = \"frankfurt\""))
        .unwrap();
    assert_eq!(remote.line, line, "the line of its [[backend]] header");
    assert!(c.keys["ops"].admin && !c.keys["ci-runner"].admin);
    assert_eq!(c.cost.eur_per_month, Some(1200.0));
    assert_eq!(c.cost.list_price.len(), 2);
    assert!(c.audit.api_calls && !c.audit.content);
    assert_eq!(c.policy.allow_jurisdictions(), ["EU"]);
}

#[test]
fn errors_say_file_line_and_reason() {
    assert_eq!(
        error(
            "[policy]\nallow_jurisdictions = [\"EU\"]\n\n[[backend]]\nname = \"a\"\nkind = \"local\"\nmodels = [\"m\"]\nwieght = 2\n"
        ),
        "verre.toml:8: unknown field `wieght`, expected one of `name`, `kind`, `url`, `api_key_env`, `models`, `jurisdiction`, `local`, `priority`, `weight`, `pseudonymize`, `responses`"
    );
    let e = error("[[backend]]\nname = \"a\"\nkind = \"openai\"\nmodels = [\"m\"]\n");
    assert!(
        e.starts_with("verre.toml:1: ") && e.contains("`url` is required"),
        "{e}"
    );
    // A wrong type.
    let e = error("[gateway]\nhealth_check_interval_s = \"x\"\n");
    assert!(e.starts_with("verre.toml:2: "), "{e}");
    let e = error("[review]\nsecond_approver = \"no\"\n");
    assert!(e.starts_with("verre.toml:2: "), "{e}");
    // An unknown section.
    let e = error("[policy]\nallow_jurisdictions = []\n\n[polcy]\n");
    assert!(
        e.starts_with("verre.toml:4: ") && e.contains("polcy"),
        "{e}"
    );
    // A value out of range, at its own line.
    let e = error("[gateway]\nconnect_timeout_s = 1\nfirst_byte_timeout_s = -1\n");
    assert!(
        e.starts_with("verre.toml:3: ") && e.contains("first_byte_timeout_s"),
        "{e}"
    );
    // A file that cannot be read names itself, with no line.
    let e = VerreConfig::load(Path::new("/no/such/verre.toml")).unwrap_err();
    assert_eq!(e.line, None);
    assert!(e.to_string().starts_with("/no/such/verre.toml: "), "{e}");
}

#[test]
fn cors_origins_are_origins() {
    let c = parse("").unwrap();
    assert!(c.http.cors_origins.is_empty(), "none by default");
    let c = parse("[http]\ncors_origins = [\"https://app.example\", \"http://localhost:3000\"]\n")
        .unwrap();
    assert_eq!(
        c.http.cors_origins,
        ["https://app.example", "http://localhost:3000"]
    );
    for bad in [
        "https://app.example/",
        "https://app.example/path",
        "app.example",
        "*",
        "ftp://app.example",
    ] {
        let e = error(&format!("[http]\ncors_origins = [\n  {bad:?},\n]\n"));
        assert!(
            e.starts_with("verre.toml:3: ") && e.contains("cors_origins"),
            "{bad}: {e}"
        );
    }
    let e = error("[http]\ncors = []\n");
    assert!(e.contains("cors"), "{e}");
}

#[test]
fn cost_and_audit_are_checked() {
    let e = error("[policy]\n\n[cost]\neur_per_month = 1\neur_per_hour = 2\n");
    assert!(
        e.starts_with("verre.toml:") && e.contains("not both"),
        "{e}"
    );
    let e = error("[audit]\ncontents = true\n");
    assert!(
        e.starts_with("verre.toml:2: ") && e.contains("contents"),
        "{e}"
    );
    let c = parse("").unwrap();
    assert!(c.audit.api_calls && !c.audit.content, "audit defaults");
    assert_eq!(c.cost.usd_per_eur, 1.08);
}

#[test]
fn the_cost_section_is_checked_and_priced() {
    let cost = |t: &str| parse(&format!("[cost]\n{t}")).map(|c| c.cost);
    let c = cost("eur_per_month = 730.5\nwatts = 500\neur_per_kwh = 0.2\n").unwrap();
    assert_eq!(c.list_price.len(), 2, "the default table");
    // 10 hours: €10 of hardware, 5 kWh of energy.
    assert!((c.hardware_eur(10.0) - 10.0).abs() < 1e-9);
    assert!((c.energy_eur(10.0) - 1.0).abs() < 1e-9);
    assert!(cost("eur_per_month = 1\neur_per_hour = 1\n").is_err());
    assert!(cost("watts = 300\n").is_err());
    assert!(cost("eur_per_hour = -1\n").is_err());
    assert!(cost("eur_per_huor = 1\n").is_err());
    let c = cost(
        "[[cost.list_price]]\nname = \"X\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n",
    )
    .unwrap();
    assert_eq!(c.list_price.len(), 1, "a table replaces the default");
}

#[test]
fn a_backend_outside_the_policy_is_refused_with_its_line() {
    let backend = |j: &str, url: &str| {
        format!(
            "[[backend]]\nname = \"x\"\nkind = \"openai\"\nurl = \"{url}\"\njurisdiction = \"{j}\"\nmodels = [\"m\"]\n"
        )
    };
    let eu = "[policy]\nallow_jurisdictions = [\"EU\"]\n";
    assert!(parse(&format!("{eu}{}", backend("EU-DE", "https://a.example/v1"))).is_ok());
    let e = error(&format!("{eu}{}", backend("US-VA", "https://a.example/v1")));
    assert!(
        e.starts_with("verre.toml:3: ") && e.contains("US-VA"),
        "{e}"
    );
    // No policy: nothing remote is allowed.
    assert!(parse(&backend("EU-DE", "https://a.example/v1")).is_err());
    // With a host list, the host must be on it too.
    let hosts = "[policy]\nallow_jurisdictions = [\"EU\"]\nallow_hosts = [\"a.example\"]\n";
    assert!(
        parse(&format!(
            "{hosts}{}",
            backend("EU-FI", "https://a.example/v1")
        ))
        .is_ok()
    );
    let e = error(&format!(
        "{hosts}{}",
        backend("EU-FI", "https://b.example/v1")
    ));
    assert!(
        e.starts_with("verre.toml:4: ") && e.contains("allow_hosts"),
        "{e}"
    );
}

#[test]
fn a_webhook_target_outside_the_policy_is_refused_with_its_line() {
    let hook = |j: &str| {
        format!(
            "\n[[delivery.webhook]]\nurl = \"https://crm.example.eu/hooks/\"\njurisdiction = \"{j}\"\nsecret_env = \"CRM_SECRET\"\n"
        )
    };
    let eu = "[policy]\nallow_jurisdictions = [\"EU\"]\n";
    let c = parse(&format!("{eu}{}", hook("EU-FR"))).unwrap();
    assert_eq!(c.delivery.webhooks[0].line, 4);
    assert_eq!(c.delivery.webhooks[0].secret_env, "CRM_SECRET");
    let e = error(&format!("{eu}{}", hook("US-VA")));
    assert!(
        e.starts_with("verre.toml:4: ") && e.contains("US-VA") && e.contains("delivery.webhook"),
        "{e}"
    );
    // No policy at all: no webhook leaves.
    let e = error(&hook("EU-FR"));
    assert!(e.starts_with("verre.toml:2: "), "{e}");
}

#[test]
fn a_pipeline_webhook_is_checked_against_the_declared_targets() {
    let c = parse(
        "[policy]\nallow_jurisdictions = [\"EU\"]\n[[delivery.webhook]]\nurl = \"https://crm.example.eu/hooks/\"\njurisdiction = \"EU-FR\"\nsecret_env = \"S\"\n",
    )
    .unwrap();
    for ok in [
        "https://crm.example.eu/hooks/intake",
        "https://crm.example.eu/hooks/{{ message.id }}",
        "https://crm.example.eu/hooks/?id={{ message.id }}",
    ] {
        assert!(c.check_webhook_template(ok).is_ok(), "{ok}");
    }
    for bad in [
        "https://evil.example/hooks/",
        "https://crm.example.eu/other/{{ x }}",
        "https://{{ extract.host }}/hooks/",
        "https://crm.example.eu{{ path }}",
        "http://crm.example.eu/hooks/",
    ] {
        let e = c.check_webhook_template(bad).unwrap_err();
        assert!(!e.to_string().is_empty(), "{bad}");
    }
    assert_eq!(
        c.webhook_target("https://crm.example.eu/hooks/x")
            .unwrap()
            .secret_env,
        "S"
    );
}

#[test]
fn review_and_delivery_sections() {
    let c = parse(
        r#"
[policy]
allow_jurisdictions = ["EU"]
[review]
session_hours = 2
idle_minutes = 10
second_approver = false
secure_cookies = true
[delivery]
timeout_s = 3
[delivery.smtp]
host = "127.0.0.1"
security = "plain"
from = "Support <support@example.eu>"
"#,
    )
    .unwrap();
    assert_eq!(c.review.session_ttl, Duration::from_secs(7200));
    assert_eq!(c.review.session_idle, Duration::from_secs(600));
    assert!(!c.review.second_approver);
    assert_eq!(c.review.secure_cookies, Some(true));
    assert_eq!(c.delivery.timeout, Duration::from_secs(3));
    let smtp = c.delivery.smtp.as_ref().unwrap();
    assert_eq!((smtp.port, smtp.security), (25, SmtpSecurity::Plain));
    assert_eq!(smtp.line, 11, "the line of its header");

    for (text, line, expect) in [
        ("[delivery]\nretries = 3\n", 2, "retries"),
        ("[review]\nsession_hours = 0\n", 2, "session_hours"),
        ("[review]\n\nidle_minutes = -1\n", 3, "idle_minutes"),
        (
            "[delivery.smtp]\nhost = \"h\"\nsecurity = \"ssl\"\nfrom = \"a@b.test\"\n",
            1,
            "security",
        ),
        (
            "[delivery.smtp]\nhost = \"h\"\nsecurity = \"tls\"\nfrom = \"a@b.test\"\nusername_env = \"U\"\n",
            1,
            "password_env",
        ),
    ] {
        let e = error(text);
        assert!(
            e.starts_with(&format!("verre.toml:{line}: ")) && e.contains(expect),
            "{text}: {e}"
        );
    }
}

#[test]
fn retention_and_gdpr_sections() {
    let c = parse(
        "[retention]\nraw_days = 30\naudit_days = 365\n\n[gdpr]\ncontroller = \"ACME SAS\"\npurposes = [\"invoices\"]\n",
    )
    .unwrap();
    assert_eq!(c.retention.raw_days, Some(30));
    assert_eq!(c.retention.extracted_days, None);
    assert_eq!(c.retention.audit_days, Some(365));
    assert_eq!(c.gdpr.controller.as_deref(), Some("ACME SAS"));
    let e = error("[retention]\nraw_dayz = 3\n");
    assert!(
        e.starts_with("verre.toml:2: ") && e.contains("raw_dayz"),
        "{e}"
    );
    let e = error("[retention]\nraw_days = -1\n");
    assert!(e.starts_with("verre.toml:2: "), "{e}");
}

#[test]
fn names_and_keys_mean_one_thing() {
    let text = "[[backend]]\nname = \"a\"\nkind = \"local\"\nmodels = [\"m\"]\n\n[[backend]]\nname = \"b\"\nkind = \"local\"\nmodels = [{ name = \"n\", aliases = [\"m\"] }]\n";
    let e = error(text);
    assert!(
        e.starts_with("verre.toml:6: ") && e.contains("already means"),
        "{e}"
    );
    let e = error("[[key]]\nname = \"k\"\n\n[[key]]\nname = \"k\"\n");
    assert!(
        e.starts_with("verre.toml:4: ") && e.contains("twice"),
        "{e}"
    );
}

#[test]
fn discovery_prefers_the_flag_then_verre_home_then_here() {
    let (home, here) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (home, here) = (home.path(), here.path());
    let given = Path::new("/etc/verre/verre.toml");
    let find = |given| discover_from(given, Some(home), here);
    // --config wins, whether or not the file exists (loading it says so).
    assert_eq!(find(Some(given)).as_deref(), Some(given));
    assert_eq!(find(None), None, "no file anywhere: none");
    std::fs::write(here.join(FILE_NAME), "").unwrap();
    assert_eq!(find(None), Some(here.join(FILE_NAME)));
    std::fs::write(home.join(FILE_NAME), "").unwrap();
    assert_eq!(find(None), Some(home.join(FILE_NAME)), "$VERRE_HOME first");
    assert_eq!(find(Some(given)).as_deref(), Some(given));
    // Without a home, the current directory's.
    assert_eq!(discover_from(None, None, here), Some(here.join(FILE_NAME)));
    // The current directory is named as the user would write it.
    assert_eq!(
        discover_from(None, None, Path::new("")).map(|p| p == Path::new(FILE_NAME)),
        Path::new(FILE_NAME).is_file().then_some(true)
    );
}

#[test]
fn engine_kv_cache_type_is_checked() {
    assert_eq!(parse("").unwrap().engine.kv_cache_type, None);
    assert_eq!(parse("").unwrap().engine.draft_model, None);
    let c = parse("[engine]\ndraft_model = \"qwen2.5-coder-0.5b\"\n").unwrap();
    assert_eq!(c.engine.draft_model.as_deref(), Some("qwen2.5-coder-0.5b"));
    let c = parse("[engine]\nkv_cache_type = \"Q8_0\"\n").unwrap();
    assert_eq!(c.engine.kv_cache_type.as_deref(), Some("q8_0"));
    let e = error("[engine]\nkv_cache_type = \"q5_1\"\n");
    assert!(
        e.starts_with("verre.toml:2:") && e.contains("use one of f16, q8_0, q4_0"),
        "{e}"
    );
    assert!(error("[engine]\nkv_cache = \"f16\"\n").contains("unknown field"));
}

#[test]
fn the_pii_section_names_a_model_and_a_probability() {
    let c = parse("").unwrap();
    assert_eq!(c.pii.ner_model, None);
    assert_eq!(c.pii.ner_threshold, crate::DEFAULT_NER_THRESHOLD);
    let c = parse("[pii]\nner_model = \"rampart-ner\"\nner_threshold = 0.6\n").unwrap();
    assert_eq!(c.pii.ner_model.as_deref(), Some("rampart-ner"));
    assert_eq!(c.pii.ner_threshold, 0.6);
    for bad in ["0", "1.5", "-0.2", "nan"] {
        let e = error(&format!("[pii]\nner_threshold = {bad}\n"));
        assert!(
            e.starts_with("verre.toml:2:") && e.contains("probability"),
            "{e}"
        );
    }
    assert!(error("[pii]\nmodel = \"x\"\n").contains("unknown field"));
}
