//! Prints the precision/recall tables of docs/GDPR.md — development set, each held-out
//! file, all — then every miss and false alarm.
//!
//!     VERRE_SHARED_EVAL=../shared/eval cargo run -p verre-pii --example pii_eval

use verre_pii::DetectOptions;
use verre_pii::eval::{LabelledSet, LabelledText, evaluate, shared_eval_dir};

fn main() -> Result<(), String> {
    let shared = shared_eval_dir()
        .inspect_err(|dir| eprintln!("{} not found: fixtures only", dir.display()))
        .ok();
    let set = LabelledSet::load(shared.as_deref())?;
    let opts = DetectOptions::default();
    let mut sets = vec![("development".to_string(), set.development.clone())];
    let mut files: Vec<&str> = set
        .held_out
        .iter()
        .filter_map(|d| d.name.split('#').next())
        .collect();
    files.dedup();
    for file in files {
        let prefix = format!("{file}#");
        let docs = set
            .held_out
            .iter()
            .filter(|d| d.name.starts_with(&prefix))
            .cloned()
            .collect();
        sets.push((format!("held-out {file}"), docs));
    }
    let all: Vec<LabelledText> = set.all();
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
