//! Whole documents on the default model, as a user runs them: `verre intake run` over a
//! mail carrying a generated 50-page contract (and the same contract with its pages
//! shuffled) finds the counterparty, the termination deadline and the penalty, each with
//! the page it is printed on. Needs `VERRE_QWEN15_GGUF` (qwen2.5-coder-1.5b); skipped
//! without it. The chunking and merging themselves are tested without a model in
//! crates/intake/tests/longdoc.rs.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use verre_intake::demo::{long_contract, mail_with_pdf};

fn verre() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_verre"));
    c.env_remove("VERRE_DATABASE");
    c
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("running verre");
    assert!(
        out.status.success(),
        "verre failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn pipeline(dir: &Path, model: &str) -> std::path::PathBuf {
    let text = format!(
        r#"name = "contracts"
[limits]
max_attempts = 1
[limits.stage_timeouts]
extract = 3600

[extract]
model = {model:?}
max_tokens = 80
retries = 1
system = "You are a paralegal. You read a contract and copy its facts exactly as printed, in the JSON form asked for."
prompt = """{{{{ document }}}}

From the contract text above, give:
- counterparty: the company named as the Counterparty;
- termination_deadline: the date by which notice of termination must be received, as YYYY-MM-DD;
- penalty_amount: the contractual penalty for a breach, as a number."""
schema = {{ type = "object", properties = {{ counterparty = {{ type = "string" }}, termination_deadline = {{ type = "string", pattern = "^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}$" }}, penalty_amount = {{ type = "number" }} }} }}
"#
    );
    let path = dir.join("contracts.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_50_page_contract_gives_its_three_facts_with_their_pages_on_the_default_model() {
    let Some(model) = std::env::var_os("VERRE_QWEN15_GGUF") else {
        eprintln!("skipped: VERRE_QWEN15_GGUF is not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let mut expected = Vec::new();
    for (name, shuffle) in [("in-order", None), ("shuffled", Some(11))] {
        let contract = long_contract(50, shuffle).unwrap();
        let mail = mail_with_pdf(
            "Counsel <counsel@northwind.example>",
            &format!("Signed MSA ({name})"),
            "Please find the signed agreement attached.",
            "msa.pdf",
            &contract.pdf,
        );
        std::fs::write(inbox.join(format!("{name}.eml")), mail).unwrap();
        expected.push((name, contract));
    }
    let pipeline = pipeline(dir.path(), model.to_str().unwrap());
    let db = format!("sqlite://{}", dir.path().join("verre.db").display());
    let start = Instant::now();
    let summary = run_ok(
        verre()
            .args(["intake", "run", inbox.to_str().unwrap(), "--pipeline"])
            .arg(&pipeline)
            .args(["--database", &db, "--workers", "2", "--json"]),
    );
    let seconds = start.elapsed().as_secs_f64();
    let summary: Value = serde_json::from_slice(&summary).unwrap();
    eprintln!(
        "2 x 50 pages through extraction on qwen2.5-coder-1.5b: {seconds:.0} s, {:.1} pages/min (model load included)\n{summary:#}",
        100.0 / seconds * 60.0
    );
    assert_eq!(summary["processed"], 2, "{summary:#}");

    for id in [1, 2] {
        let shown = run_ok(verre().args([
            "intake",
            "show",
            &id.to_string(),
            "--database",
            &db,
            "--json",
        ]));
        let shown: Value = serde_json::from_slice(&shown).unwrap();
        let output = |stage: &str| {
            shown["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["stage"] == stage)
                .unwrap()["output"]
                .clone()
        };
        let subject = output("parse")["subject"].as_str().unwrap().to_string();
        let (name, contract) = expected
            .iter()
            .find(|(name, _)| subject.contains(name))
            .unwrap();
        let x = &output("extract");
        eprintln!("{name}: facts on pages {:?}\n{x:#}", contract.pages);
        let page = |f: &str| x["_document"]["sources"][f]["page"].as_u64();
        assert_eq!(x["counterparty"], contract.counterparty, "{name}");
        assert_eq!(x["termination_deadline"], contract.deadline, "{name}");
        assert_eq!(
            x["penalty_amount"].as_f64(),
            Some(contract.penalty),
            "{name}"
        );
        assert_eq!(
            page("counterparty"),
            Some(contract.pages[0] as u64),
            "{name}"
        );
        assert_eq!(
            page("termination_deadline"),
            Some(contract.pages[1] as u64),
            "{name}"
        );
        assert_eq!(
            page("penalty_amount"),
            Some(contract.pages[2] as u64),
            "{name}"
        );
        assert_eq!(x["_document"]["pages_read"], 50);
    }
}
