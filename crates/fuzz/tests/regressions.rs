//! Every seed in `fuzz/corpus/<target>/` and every finding kept in
//! `fuzz/regressions/<target>/` runs through its target without a panic: what the fuzzer
//! found once stays fixed.

use std::path::PathBuf;

use verre_fuzz::TARGETS;
use verre_fuzz::run::{regressions, run_one, seeds};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz"))
}

#[test]
fn every_seed_and_every_saved_finding_runs_clean() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for target in TARGETS {
        // The child-process target needs this test binary to be a parser child: the
        // mime target covers the same inputs in-process, documents aside.
        if target.name == "mime-child" {
            continue;
        }
        let mut inputs: Vec<(String, Vec<u8>)> = seeds(&root(), target.name)
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, b)| (format!("seed {i}"), b))
            .collect();
        inputs.extend(
            regressions(&root(), target.name)
                .unwrap()
                .into_iter()
                .map(|(p, b)| (p.display().to_string(), b)),
        );
        for (name, input) in inputs {
            ran += 1;
            if let Err(panic) = run_one(target, &input) {
                failures.push(format!("{}: {name}: {panic}", target.name));
            }
        }
    }
    assert!(ran >= TARGETS.len() - 1, "the corpora are there: {ran}");
    assert!(failures.is_empty(), "{failures:#?}");
}
