//! The records of processing activities (GDPR Art. 30), generated from the configuration:
//! who the controller is (`[gdpr]`), what is processed and why, who receives it (the
//! backends of verre.toml and the pipelines' actions), transfers allowed by `[policy]`,
//! retention (`[retention]`) and the security measures in place. `verre gdpr report`
//! prints it; JSON is the one source both formats are written from.

use anyhow::Result;
use chrono::DateTime;
use reqwest::Url;
use serde_json::{Value, json};
use verre_store::Keyring;

use crate::config::{BackendKind, VerreConfig};

/// What an intake pipeline processes, as the records describe it.
#[derive(Debug, Clone, Default)]
pub struct PipelineProcessing {
    pub name: String,
    /// The pipeline file.
    pub source: String,
    /// The fields extracted, each with its schema description when there is one.
    pub fields: Vec<(String, Option<String>)>,
    /// The labels assigned, with their values.
    pub labels: Vec<(String, Vec<String>)>,
    /// Its actions: each a recipient of data once a reviewer approves it.
    pub actions: Vec<ActionRecipient>,
}

/// An action of a pipeline: a webhook (its URL as written), or a reply by e-mail (`None`).
#[derive(Debug, Clone)]
pub struct ActionRecipient {
    pub name: String,
    pub webhook: Option<String>,
}

/// The records of processing as JSON: the one source both formats are written from.
pub fn records(
    config: &VerreConfig,
    pipelines: &[PipelineProcessing],
    keys: Result<Option<Keyring>>,
    now_ms: i64,
) -> Value {
    let g = &config.gdpr;
    let purposes: Vec<String> = if g.purposes.is_empty() {
        let mut p = vec![
            "answering requests to the API (chat, completions, embeddings) for the key holders"
                .to_string(),
        ];
        if !pipelines.is_empty() {
            p.push("processing incoming mail and documents: extraction, cross-referencing with the business database, routing and drafting replies for human review".into());
        }
        p
    } else {
        g.purposes.clone()
    };

    let mut categories = vec![json!({
        "category": "personal data detected in text",
        "source": "verre-pii (crates/pii): tagged at intake, replaced by placeholders before non-local backends",
        "fields": verre_pii::PiiKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
    })];
    categories.push(json!({
        "category": "message content",
        "source": "mail and documents received by intake; API requests (not stored)",
        "fields": ["headers (sender, recipients, subject)", "body text", "attachment text"],
    }));
    for p in pipelines {
        let fields: Vec<Value> = p
            .fields
            .iter()
            .map(|(name, description)| match description {
                Some(d) => json!(format!("{name}: {d}")),
                None => json!(name),
            })
            .collect();
        categories.push(json!({
            "category": format!("fields extracted by pipeline {:?}", p.name),
            "source": p.source,
            "fields": fields,
            "labels": p.labels.iter().map(|(name, values)| json!({"name": name, "values": values})).collect::<Vec<_>>(),
        }));
    }

    let mut recipients = Vec::new();
    for b in &config.backends {
        let (kind, host) = match &b.kind {
            BackendKind::Local => ("model in this process".to_string(), None),
            BackendKind::OpenAi { url, .. } => (
                "OpenAI-compatible server".to_string(),
                url.host_str().map(str::to_string),
            ),
        };
        recipients.push(json!({
            "name": b.name,
            "kind": kind,
            "host": host,
            "jurisdiction": b.jurisdiction,
            "local": b.local,
            "pseudonymised": !b.local && b.pseudonymize,
            "models": b.models.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
        }));
    }
    for p in pipelines {
        for action in &p.actions {
            let (kind, host) = match &action.webhook {
                Some(url) => (
                    "webhook",
                    Url::parse(url)
                        .ok()
                        .and_then(|u| u.host_str().map(str::to_string))
                        .or(Some(url.clone())),
                ),
                None => ("reply by e-mail to the sender", None),
            };
            recipients.push(json!({
                "name": format!("{}/{}", p.name, action.name),
                "kind": kind,
                "host": host,
                "jurisdiction": Value::Null,
                "local": false,
                "pseudonymised": false,
                "note": "staged for human review before anything is sent",
            }));
        }
    }

    let r = &config.retention;
    let kept = |d: Option<u32>| match d {
        Some(d) => json!(format!("{d} days")),
        None => json!("no limit set"),
    };
    let encryption = match keys {
        Ok(Some(k)) => json!({
            "at_rest": "AES-256-GCM",
            "columns": ["messages.raw", "parts.text", "parts.pages", "stage_results.output", "quarantine.reason", "jobs.last_error", "responses.input", "responses.body", "drafts.body", "actions.payload", "decisions.reason", "outbox.payload", "outbox.last_error", "outbox_attempts.error", "archive_documents.name", "archive_chunks.text", "archive_chunks.vector", "evidence.body", "corrections.body"],
            "current_key_id": k.current_id(),
            "keys": k.ids().len(),
        }),
        Ok(None) => json!({
            "at_rest": "not configured (set VERRE_DATA_KEY or VERRE_DATA_KEY_FILE)",
        }),
        Err(e) => json!({"at_rest": format!("misconfigured: {e:#}")}),
    };
    json!({
        "title": "Records of processing activities (GDPR Art. 30)",
        "generated_from": config.origin,
        "generated_at": DateTime::from_timestamp_millis(now_ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        "controller": {
            "name": g.controller,
            "contact": g.contact,
            "dpo": g.dpo,
        },
        "purposes": purposes,
        "data_subjects": [
            "senders, recipients and people named in the mail and documents processed",
            "holders of API keys and people named in their requests",
        ],
        "data_categories": categories,
        "recipients": recipients,
        "transfers": {
            "allowed_jurisdictions": config.policy.allow_jurisdictions(),
            "non_local_backends": config.backends.iter().filter(|b| !b.local).map(|b| json!({"name": b.name, "jurisdiction": b.jurisdiction})).collect::<Vec<_>>(),
        },
        "retention": {
            "raw_messages": kept(r.raw_days),
            "extracted_data": kept(r.extracted_days),
            "audit_log": kept(r.audit_days),
            "archive": kept(r.archive_days),
        },
        "security": {
            "encryption": encryption,
            "pseudonymisation": "personal data replaced by placeholders before any backend with local = false and pseudonymize on; restored in answers",
            "audit": "append-only log of API calls, intake stages, review decisions, deliveries and erasures, chained by HMAC-SHA256 under a key kept outside the database (verre audit verify)",
            "erasure": "verre erase --subject EMAIL|NAME",
            "egress": "no connection to a backend outside [policy]; no telemetry",
        },
    })
}

/// The records as a Markdown document, for the controller's files.
pub fn markdown(r: &Value) -> String {
    let s = |v: &Value| match v {
        Value::Null => "—".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut md = String::new();
    md.push_str(&format!("# {}\n\n", s(&r["title"])));
    md.push_str(&format!(
        "Generated from `{}` at {}.\n\n",
        s(&r["generated_from"]),
        s(&r["generated_at"])
    ));
    md.push_str("## Controller\n\n| | |\n|---|---|\n");
    for (k, label) in [
        ("name", "Controller"),
        ("contact", "Contact"),
        ("dpo", "Data protection officer"),
    ] {
        let v = &r["controller"][k];
        md.push_str(&format!(
            "| {label} | {} |\n",
            if v.is_null() {
                "not set ([gdpr] in verre.toml)".into()
            } else {
                s(v)
            }
        ));
    }
    md.push_str("\n## Purposes\n\n");
    for p in r["purposes"].as_array().into_iter().flatten() {
        md.push_str(&format!("- {}\n", s(p)));
    }
    md.push_str("\n## Data subjects\n\n");
    for p in r["data_subjects"].as_array().into_iter().flatten() {
        md.push_str(&format!("- {}\n", s(p)));
    }
    md.push_str(
        "\n## Categories of personal data\n\n| category | source | fields |\n|---|---|---|\n",
    );
    for c in r["data_categories"].as_array().into_iter().flatten() {
        let mut fields: Vec<String> = c["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(&s)
            .collect();
        for l in c["labels"].as_array().into_iter().flatten() {
            let values: Vec<String> = l["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(&s)
                .collect();
            fields.push(format!("label {}: {}", s(&l["name"]), values.join(" / ")));
        }
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            s(&c["category"]),
            s(&c["source"]),
            fields.join(", ")
        ));
    }
    md.push_str("\n## Recipients\n\n| recipient | kind | host | jurisdiction | local | pseudonymised |\n|---|---|---|---|---|---|\n");
    for x in r["recipients"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            s(&x["name"]),
            s(&x["kind"]),
            s(&x["host"]),
            s(&x["jurisdiction"]),
            if x["local"] == true { "yes" } else { "no" },
            if x["pseudonymised"] == true {
                "yes"
            } else {
                "no"
            },
        ));
    }
    md.push_str(&format!(
        "\nTransfers: remote backends are allowed only in {}.\n",
        s(&r["transfers"]["allowed_jurisdictions"])
    ));
    md.push_str("\n## Retention\n\n| data | kept |\n|---|---|\n");
    for (k, label) in [
        ("raw_messages", "raw messages (as received)"),
        (
            "extracted_data",
            "extracted data (parts, extractions, actions)",
        ),
        ("audit_log", "audit log"),
    ] {
        md.push_str(&format!("| {label} | {} |\n", s(&r["retention"][k])));
    }
    md.push_str("\n## Security measures\n\n");
    let enc = &r["security"]["encryption"];
    md.push_str(&format!(
        "- Encryption at rest: {}{}\n",
        s(&enc["at_rest"]),
        if enc["current_key_id"].is_null() {
            String::new()
        } else {
            format!(
                " on {} (key {}, {} key(s) configured)",
                s(&enc["columns"]),
                s(&enc["current_key_id"]),
                s(&enc["keys"])
            )
        }
    ));
    for (k, label) in [
        ("pseudonymisation", "Pseudonymisation"),
        ("audit", "Audit"),
        ("erasure", "Erasure"),
        ("egress", "Egress"),
    ] {
        md.push_str(&format!("- {label}: {}\n", s(&r["security"][k])));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_records_describe_the_config_and_pipelines() {
        let config = VerreConfig::parse(
            r#"
[policy]
allow_jurisdictions = ["EU"]

[[backend]]
name = "here"
kind = "local"
models = ["small"]

[[backend]]
name = "frankfurt"
kind = "openai"
url = "https://vllm.fra.example.eu/v1"
api_key_env = "NOT_READ_BY_THE_REPORT"
jurisdiction = "EU-DE"
models = ["large"]

[retention]
raw_days = 30

[gdpr]
controller = "ACME SAS"
"#,
            "verre.toml",
        )
        .unwrap();
        let pipeline = PipelineProcessing {
            name: "support".into(),
            source: "pipeline.toml".into(),
            fields: vec![
                ("customer".into(), Some("who wrote".into())),
                ("iban".into(), None),
            ],
            labels: vec![("urgency".into(), vec!["low".into(), "high".into()])],
            actions: vec![
                ActionRecipient {
                    name: "crm".into(),
                    webhook: Some("https://crm.example.eu/hooks/{{ message.id }}".into()),
                },
                ActionRecipient {
                    name: "reply".into(),
                    webhook: None,
                },
            ],
        };
        let r = records(&config, &[pipeline], Ok(None), 951_782_400_000);
        assert_eq!(r["generated_from"], "verre.toml");
        assert_eq!(r["generated_at"], "2000-02-29T00:00:00Z");
        assert_eq!(r["controller"]["name"], "ACME SAS");
        assert_eq!(r["purposes"].as_array().unwrap().len(), 2, "API and intake");
        assert_eq!(r["transfers"]["allowed_jurisdictions"], json!(["EU"]));
        assert_eq!(
            r["transfers"]["non_local_backends"],
            json!([{"name": "frankfurt", "jurisdiction": "EU-DE"}])
        );
        assert_eq!(r["retention"]["raw_messages"], "30 days");
        assert_eq!(r["retention"]["audit_log"], "no limit set");
        let recipients = r["recipients"].as_array().unwrap();
        let names: Vec<&str> = recipients
            .iter()
            .map(|x| x["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["here", "frankfurt", "support/crm", "support/reply"]);
        assert_eq!(recipients[1]["pseudonymised"], true);
        assert_eq!(recipients[2]["host"], "crm.example.eu");
        let fields = r["data_categories"][2]["fields"].to_string();
        assert!(fields.contains("customer: who wrote"), "{fields}");

        let md = markdown(&r);
        for needle in [
            "| Controller | ACME SAS |",
            "| Contact | not set ([gdpr] in verre.toml) |",
            "| frankfurt | OpenAI-compatible server | vllm.fra.example.eu | EU-DE | no | yes |",
            "label urgency: low / high",
            "| raw messages (as received) | 30 days |",
            "- Encryption at rest: not configured",
        ] {
            assert!(md.contains(needle), "{needle:?} missing from:\n{md}");
        }
    }
}
