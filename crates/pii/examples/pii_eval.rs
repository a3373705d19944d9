//! Prints the precision/recall tables of docs/GDPR.md — development set, each held-out
//! file, all — then every miss and false alarm.
//!
//!     VERRE_SHARED_EVAL=../shared/eval cargo run -p verre-pii --example pii_eval

use std::path::PathBuf;

use verre_pii::DetectOptions;
use verre_pii::eval::{LabelledText, evaluate, load_marked_dir, load_shared_eval};

fn main() -> Result<(), String> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut development = load_marked_dir(&data)?;
    let shared = std::env::var_os("VERRE_SHARED_EVAL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/eval"));
    if shared.join("invoices").is_dir() {
        let labels = std::fs::read_to_string(data.join("shared_eval_labels.tsv"))
            .map_err(|e| format!("reading labels: {e}"))?;
        development.extend(load_shared_eval(&shared, &labels)?);
    } else {
        eprintln!("{} not found: fixtures only", shared.display());
    }
    let heldout = load_marked_dir(&data.join("heldout"))?;
    let all: Vec<LabelledText> = development.iter().chain(&heldout).cloned().collect();
    let opts = DetectOptions::default();
    let mut sets = vec![("development".to_string(), development)];
    let mut files: Vec<&str> = heldout
        .iter()
        .filter_map(|d| d.name.split('#').next())
        .collect();
    files.dedup();
    for file in files {
        let prefix = format!("{file}#");
        let docs = heldout
            .iter()
            .filter(|d| d.name.starts_with(&prefix))
            .cloned()
            .collect();
        sets.push((format!("held-out {file}"), docs));
    }
    sets.push(("all".to_string(), all.clone()));
    for (title, docs) in &sets {
        let labels: usize = docs.iter().map(|d| d.labels.len()).sum();
        println!(
            "### {title}: {} texts, {labels} labelled spans\n",
            docs.len()
        );
        println!("{}", evaluate(docs, &opts).markdown_table());
    }
    for e in &evaluate(&all, &opts).errors {
        println!("{e}");
    }
    Ok(())
}
