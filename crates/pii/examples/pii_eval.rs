//! Prints the precision/recall table of docs/GDPR.md, then every miss and false alarm.
//!
//!     VERRE_SHARED_EVAL=../shared/eval cargo run -p verre-pii --example pii_eval

use std::path::PathBuf;

use verre_pii::DetectOptions;
use verre_pii::eval::{evaluate, load_marked_dir, load_shared_eval};

fn main() -> Result<(), String> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut docs = load_marked_dir(&data)?;
    let shared = std::env::var_os("VERRE_SHARED_EVAL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/eval"));
    if shared.join("invoices").is_dir() {
        let labels = std::fs::read_to_string(data.join("shared_eval_labels.tsv"))
            .map_err(|e| e.to_string())?;
        docs.extend(load_shared_eval(&shared, &labels)?);
    } else {
        eprintln!("{} not found: fixtures only", shared.display());
    }
    let labels: usize = docs.iter().map(|d| d.labels.len()).sum();
    println!("{} texts, {} labelled spans\n", docs.len(), labels);
    let report = evaluate(&docs, &DetectOptions::default());
    println!("{}", report.markdown_table());
    for e in &report.errors {
        println!("{e}");
    }
    Ok(())
}
