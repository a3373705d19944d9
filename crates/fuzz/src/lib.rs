//! Fuzzing that runs on stable Rust, kept in the repository: a seeded mutation loop (bit
//! flips, byte and integer substitutions, deletions, duplications, splices, truncation,
//! insertions of each target's dictionary tokens) over a seed corpus in
//! `fuzz/corpus/<target>/`, bounded by time or executions. `scripts/fuzz.sh [SECONDS]` runs
//! every target; `cargo test -p verre-fuzz` replays every seed and every saved finding
//! (`fuzz/regressions/<target>/`) as a regression test.
//!
//! There is no coverage feedback (that needs a nightly compiler's instrumentation): an input
//! whose outcome falls in a class not seen before (an error message's first words, an
//! accepted input's shape) joins the working corpus instead, which walks the parsers
//! into their deeper error paths.
//!
//! A finding is a panic (caught, saved, the loop goes on), or the process dying (a stack
//! overflow, an allocation over the memory limit, an execution over the time limit): the
//! input being run is written out from the signal handler before the process ends, so
//! every finding leaves its reproducer.

pub mod mutate;
pub mod run;
pub mod targets;

pub use mutate::Mutator;
pub use run::{Options, Stats, run};
pub use targets::{TARGETS, Target};
