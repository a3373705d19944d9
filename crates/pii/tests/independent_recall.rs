//! Recall on an independent held-out corpus (issue 18 item 14).
//!
//! The data under `tests/data/independent/` comes from
//! `eval/independent/gen.py` (own value lists and sentence frames, no Faker)
//! and `eval/independent/handwritten.txt` (30 mails written by hand).  It was
//! written without looking at the recognisers or their tuning data, so it
//! measures generalisation rather than fit.  The bar is recall >= 0.99 per
//! kind.  Since 2026-12-06 the recognisers are tuned on `dev.txt` (and the
//! clean files' false alarms); `test.txt` and `handwritten.txt` are only
//! measured, and they are the numbers to quote.

use std::path::PathBuf;

use verre_pii::eval::{load_marked_file, measure_leaks};
use verre_pii::{PiiKind, PseudonymizeOptions};

const RECALL_BAR: f64 = 0.99;
const CLEAN_REPLACED_BAR: f64 = 0.02;

fn check(file: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    let docs = load_marked_file(&path).unwrap_or_else(|e| panic!("{e}"));
    let report = measure_leaks(&docs, &PseudonymizeOptions::default());
    println!("== {file}");
    println!("{}", report.markdown_table());
    for line in report.leaks.iter().chain(&report.false_alarms) {
        println!("{line}");
    }
    let mut failures = Vec::new();
    for kind in PiiKind::ALL {
        let c = report.get(kind);
        if c.values > 0 && c.recall() < RECALL_BAR {
            failures.push(format!("{kind}: recall {:.3}", c.recall()));
        }
    }
    assert!(failures.is_empty(), "{file}: {failures:?}");
}

// The dev split is the tuning split: it passes, which shows fit, not generalisation.
#[test]
fn independent_dev_recall() {
    check("tests/data/independent/dev.txt");
}

// These two fail the bar today (issue 18 item 14 stays open; docs/GDPR.md has the table):
// they run with `cargo test -p verre-pii --test independent_recall -- --include-ignored`.
#[test]
#[ignore = "fails the 0.99 bar for persons (0.976; date_of_birth 1.000 and phone 0.993 pass), 2026-12-07"]
fn independent_test_recall() {
    check("tests/data/independent/test.txt");
}

#[test]
#[ignore = "fails the 0.99 bar (person 0.790, date_of_birth 0.800) after tuning on dev, 2026-12-06"]
fn independent_handwritten_recall() {
    check("eval/independent/handwritten.txt");
}

// Hand-written mails for tuning (a dev split like `dev.txt`, but not from a generator's
// frames), written 2026-12-07 by someone who did not see the recognisers.
#[test]
#[ignore = "a tuning split since 2026-12-07; fails the 0.99 bar for persons (0.904; date_of_birth 1.000)"]
fn independent_handwritten_dev2_recall() {
    check("eval/independent/handwritten-dev2.txt");
}

#[test]
fn independent_clean_false_alarms() {
    let mut failures = Vec::new();
    for file in [
        "tests/data/independent/dev-clean.txt",
        "tests/data/independent/test-clean.txt",
    ] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
        let docs = load_marked_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let report = measure_leaks(&docs, &PseudonymizeOptions::default());
        let share = report.other_words_replaced_share();
        println!("== {file}: replaced-word share {share:.4}");
        for line in &report.false_alarms {
            println!("{line}");
        }
        if share > CLEAN_REPLACED_BAR {
            failures.push(format!("{file}: replaced-word share {share:.4}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
