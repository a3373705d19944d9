//! What a named-entity model adds to verre-pii's rules, on the labelled PII splits: recall
//! per kind with the rules alone and with the model's names added (vetted by
//! `vet_proposed_names`, then as `extra_names`), and
//! the share of other words replaced in the PII-free mails.
//!
//!     cargo run --release -p verre-engine --example ner_pii_eval -- MODEL_DIR THRESHOLD FILE...

use std::path::Path;

use verre_engine::model::ner::TokenClassifier;
use verre_pii::eval::{LeakReport, load_marked_file, measure_leaks, measure_leaks_with};
use verre_pii::{PiiKind, PseudonymizeOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: ner_pii_eval MODEL_DIR THRESHOLD FILE..."
    );
    let ner = TokenClassifier::load(&args[0])?;
    let threshold: f32 = args[1].parse()?;
    let opts = PseudonymizeOptions::default();
    println!(
        "| file | kind | values | rules | rules + model | other words replaced: rules | rules + model |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for file in &args[2..] {
        let docs = load_marked_file(Path::new(file)).map_err(anyhow::Error::msg)?;
        let started = std::time::Instant::now();
        let rules = measure_leaks(&docs, &opts);
        let with = measure_leaks_with(&docs, &opts, |doc| {
            let spans = ner.persons(&doc.text, threshold).expect("the model runs");
            verre_pii::vet_proposed_names(spans.iter().map(|s| &doc.text[s.start..s.end]))
        });
        let name = Path::new(file).file_name().unwrap().to_string_lossy();
        let row = |kind: Option<PiiKind>, r: &LeakReport, w: &LeakReport| match kind {
            Some(k) => format!(
                "| {name} | {k} | {} | {:.3} | {:.3} | | |",
                r.get(k).values,
                r.get(k).recall(),
                w.get(k).recall()
            ),
            None => format!(
                "| {name} | (other words) | {} | | | {:.4} | {:.4} |",
                r.other_words,
                r.other_words_replaced_share(),
                w.other_words_replaced_share()
            ),
        };
        for kind in PiiKind::ALL {
            if rules.get(kind).values > 0 {
                println!("{}", row(Some(kind), &rules, &with));
            }
        }
        println!("{}", row(None, &rules, &with));
        eprintln!(
            "{name}: {} texts in {:.1} s",
            docs.len(),
            started.elapsed().as_secs_f64()
        );
        if std::env::var_os("NER_EVAL_SHOW").is_some() {
            for line in with.leaks.iter().filter(|l| l.contains(" person ")) {
                eprintln!("  miss: {line}");
            }
            for line in with
                .false_alarms
                .iter()
                .filter(|l| !rules.false_alarms.contains(l))
            {
                eprintln!("  new false alarm: {line}");
            }
        }
    }
    Ok(())
}
