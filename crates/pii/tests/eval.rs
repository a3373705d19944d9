//! Precision and recall of `detect` on the labelled set: this crate's fixtures
//! (`tests/data/*.txt`, `tests/data/heldout/*.txt`) and, where present, the shared
//! evaluation data (invoice answers and malformed mails, labelled in
//! `tests/data/shared_eval_labels.tsv`).
//!
//! The shared folder is `$VERRE_SHARED_EVAL`, else `../shared/eval` beside the repository.
//! Without it the test runs on the fixtures alone, except in CI (`CI` set), where it fails.

use verre_pii::eval::{LabelledSet, LabelledText, evaluate, shared_eval_dir};
use verre_pii::{DetectOptions, PiiKind};

fn labelled_set() -> Vec<LabelledText> {
    let shared = match shared_eval_dir() {
        Ok(dir) => Some(dir),
        Err(dir) if std::env::var_os("CI").is_some() => {
            panic!(
                "shared evaluation data not found at {} (set VERRE_SHARED_EVAL)",
                dir.display()
            )
        }
        Err(dir) => {
            eprintln!(
                "note: {} not found, evaluating on the crate's fixtures only",
                dir.display()
            );
            None
        }
    };
    LabelledSet::load(shared.as_deref())
        .expect("labelled set")
        .all()
}

#[test]
fn precision_and_recall_meet_the_targets() {
    let docs = labelled_set();
    let report = evaluate(&docs, &DetectOptions::default());
    println!("{}", report.markdown_table());
    for e in &report.errors {
        println!("{e}");
    }
    // The targets: recall ≥ 0.95 for the kinds with checksums or metadata.
    for kind in [PiiKind::Email, PiiKind::Phone, PiiKind::Iban, PiiKind::Card] {
        let c = report.get(kind);
        assert!(
            c.true_positives + c.false_negatives >= 10,
            "{kind}: too few labels to measure"
        );
        assert!(
            c.recall() >= 0.95,
            "{kind}: recall {:.3} < 0.95",
            c.recall()
        );
        assert!(
            c.precision() >= 0.95,
            "{kind}: precision {:.3} < 0.95",
            c.precision()
        );
    }
    // Regression floors for the context-based kinds, a little under what was measured.
    for (kind, floor) in [
        (PiiKind::Ip, 0.9),
        (PiiKind::Url, 0.8),
        (PiiKind::DateOfBirth, 0.9),
        (PiiKind::Person, 0.8),
    ] {
        let c = report.get(kind);
        assert!(
            c.recall() >= floor,
            "{kind}: recall {:.3} < {floor}",
            c.recall()
        );
        assert!(
            c.precision() >= floor,
            "{kind}: precision {:.3} < {floor}",
            c.precision()
        );
    }
}

#[test]
fn fixtures_parse_and_label_every_kind() {
    let docs = labelled_set();
    for kind in PiiKind::ALL {
        assert!(
            docs.iter().flat_map(|d| &d.labels).any(|l| l.kind == kind),
            "no {kind} label"
        );
    }
}
