//! `verre archive add|list|ask|remove` as a user runs them: text, Markdown, a mail and an
//! invoice PDF of the shared evaluation set added, listed, asked (passages with document
//! and page; nothing relevant said without a model), removed. Needs `minilm-l6` in the
//! store of `$VERRE_HOME` (`VERRE_MINILM_DIR` set by the test environment; skipped without).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn verre(db: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_verre"));
    c.env_remove("VERRE_DATA_KEY")
        .env_remove("VERRE_DATA_KEY_FILE")
        .env("VERRE_DATABASE", db);
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running verre")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "verre failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The shared evaluation folder: `$VERRE_SHARED_EVAL`, else `shared/eval` beside the
/// repository.
fn eval_invoice() -> Option<PathBuf> {
    let dir = std::env::var_os("VERRE_SHARED_EVAL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/eval"));
    let pdf = dir.join("invoices/AmazonWebServices.pdf");
    pdf.exists().then_some(pdf)
}

#[test]
fn archive_add_list_ask_remove() {
    if std::env::var_os("VERRE_MINILM_DIR").is_none_or(|v| v.is_empty()) {
        eprintln!("skipped: VERRE_MINILM_DIR is not set (minilm-l6 not pulled)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("verre.db").display());
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::write(
        docs.join("lease-lyon.txt"),
        "COMMERCIAL LEASE\n\nLandlord: Norvane Logistics.\n\nThe monthly rent of the Lyon warehouse is 4,200 EUR.\x0cEither party may end the lease with six months' notice.",
    )
    .unwrap();
    std::fs::write(
        docs.join("minutes.md"),
        "# Board minutes\n\n## Appointments\n\nThe board appointed Greta Lindgren as head of procurement.",
    )
    .unwrap();
    std::fs::write(
        docs.join("claim.eml"),
        "From: Ann Lee <ann@example.com>\r\nTo: claims@example.com\r\nSubject: Flood claim\r\n\r\nThe flood in the Ghent basement destroyed 300 boxes of paper.\r\n",
    )
    .unwrap();
    std::fs::write(docs.join("notes.docx"), "not read").unwrap();
    let mut paths = vec![docs.clone()];
    if let Some(pdf) = eval_invoice() {
        paths.push(pdf);
    } else {
        eprintln!("no shared eval invoices: the PDF is not added");
    }
    let added: Value = serde_json::from_str(&ok(run(verre(&db)
        .args(["archive", "add", "--json"])
        .args(&paths))))
    .unwrap();
    let added = added.as_array().unwrap();
    assert_eq!(added.len(), paths.len() + 2, "{added:?}");
    assert!(added.iter().all(|a| a["outcome"] == "added"), "{added:?}");
    let lease = added
        .iter()
        .find(|a| a["name"] == "lease-lyon.txt")
        .unwrap();
    assert_eq!(lease["pages"], 2);

    // Added again: nothing new.
    let again = ok(run(verre(&db).args(["archive", "add"]).arg(&docs)));
    assert!(
        again.contains("0 added") && again.contains("3 already there"),
        "{again}"
    );

    let list: Value =
        serde_json::from_str(&ok(run(verre(&db).args(["archive", "list", "--json"])))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), added.len());

    let ask: Value = serde_json::from_str(&ok(run(verre(&db).args([
        "archive",
        "ask",
        "--passages-only",
        "--json",
        "-k",
        "2",
        "How much notice ends the Lyon warehouse lease?",
    ]))))
    .unwrap();
    // The notice is on page 2 of the lease, and cited as such.
    let passages = ask["passages"].as_array().unwrap();
    assert!(
        passages.iter().any(|p| p["document"] == "lease-lyon.txt"
            && p["page"] == 2
            && p["text"].as_str().unwrap().contains("six months' notice")),
        "{ask}"
    );
    assert_eq!(ask["relevant"], true);

    if paths.len() > 1 {
        let invoice: Value = serde_json::from_str(&ok(run(verre(&db).args([
            "archive",
            "ask",
            "--passages-only",
            "--json",
            "Amazon Web Services invoice total",
        ]))))
        .unwrap();
        assert_eq!(
            invoice["passages"][0]["document"], "AmazonWebServices.pdf",
            "{invoice}"
        );
    }

    // Nothing relevant: said, and no chat model is needed for it.
    let nothing = ok(run(verre(&db).args([
        "archive",
        "ask",
        "--model",
        "no-such-model",
        "What is the boiling point of mercury?",
    ])));
    assert!(
        nothing.contains("Nothing in the archive is relevant"),
        "{nothing}"
    );

    let id = lease["document_id"].as_i64().unwrap().to_string();
    assert!(ok(run(verre(&db).args(["archive", "remove", &id]))).contains("removed"));
    let out = run(verre(&db).args(["archive", "remove", &id]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no archived document"));

    let bad = run(verre(&db)
        .args(["archive", "add"])
        .arg(docs.join("notes.docx")));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a kind the archive reads"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
