//! Measures detection throughput on the labelled fixtures repeated to about 1 MB.
//!
//!     cargo run --release -p verre-pii --example pii_throughput

use std::path::PathBuf;
use std::time::Instant;

use verre_pii::eval::load_marked_dir;
use verre_pii::{DetectOptions, PiiKind, PseudonymizeOptions, Pseudonymizer, detect};

fn main() -> Result<(), String> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let docs = load_marked_dir(&data)?;
    let sample: String = docs
        .iter()
        .map(|d| d.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    let text = sample.repeat((1 << 20) / sample.len() + 1);
    let opts = DetectOptions::default();
    // Loading libphonenumber's metadata and compiling the patterns happens once.
    let started = Instant::now();
    detect("warm up: +33 6 12 34 56 78, Jean Dupont", &opts);
    println!("first call: {:.3} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let spans = detect(&text, &opts);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "detect: {:.1} MB in {:.3} s = {:.2} MB/s, {} spans",
        text.len() as f64 / 1e6,
        secs,
        text.len() as f64 / 1e6 / secs,
        spans.len()
    );
    for kind in PiiKind::ALL {
        let started = Instant::now();
        let n = detect(&text, &DetectOptions::only(&[kind])).len();
        println!(
            "  {kind}: {:.3} s, {n} spans",
            started.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    let mut p = Pseudonymizer::new(PseudonymizeOptions::default());
    let sent = p.pseudonymize(&text);
    let pseudonymised = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let restored = p.restorer().restore(&sent);
    println!(
        "pseudonymise: {pseudonymised:.3} s, restore: {:.3} s, {} placeholders, round trip {}",
        started.elapsed().as_secs_f64(),
        p.len(),
        if restored == text {
            "exact"
        } else {
            "differs (same value written two ways)"
        }
    );
    Ok(())
}
