//! `verre summarize` on the default model: a generated 200-page report in ten chapters,
//! each on its own topic, summarised by map and reduce — every chapter's topic comes
//! through, with page citations — timed against a single-pass summary of a 20-page report
//! that fits one call. Needs `VERRE_QWEN15_GGUF` (qwen2.5-coder-1.5b); skipped without it.
//! The map and reduce themselves are tested without a model in
//! crates/intake/tests/longdoc.rs.

use std::process::Command;

use serde_json::Value;

const TOPICS: [&str; 10] = [
    "beekeeping",
    "glaciers",
    "semiconductors",
    "orchestras",
    "lighthouses",
    "vineyards",
    "volcanoes",
    "submarines",
    "orchards",
    "railways",
];

fn summarize(model: &str, file: &std::path::Path, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_verre"))
        .args(["summarize", "-m", model, "--json"])
        .args(extra)
        .arg(file)
        .output()
        .expect("running verre");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_chapter_of_a_200_page_report_comes_through_its_summary_on_the_default_model() {
    let Some(model) = std::env::var_os("VERRE_QWEN15_GGUF") else {
        eprintln!("skipped: VERRE_QWEN15_GGUF is not set");
        return;
    };
    let model = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("report-200.pdf");
    std::fs::write(
        &long,
        verre_intake::demo::sectioned_report(200, &TOPICS).unwrap(),
    )
    .unwrap();
    let short = dir.path().join("report-20.pdf");
    std::fs::write(
        &short,
        verre_intake::demo::sectioned_report(20, &TOPICS[..2]).unwrap(),
    )
    .unwrap();

    let s = summarize(model, &long, &["--words", "250"]);
    let single = summarize(model, &short, &["--words", "250", "--single-pass"]);
    eprintln!(
        "200 pages, map and reduce: {:.0} s ({} chunks, {} reduce calls, {} prompt tokens)\n\
         20 pages, single pass: {:.0} s ({} prompt tokens)\n{}",
        s["seconds"].as_f64().unwrap(),
        s["chunks"],
        s["reduce_calls"],
        s["prompt_tokens"],
        single["seconds"].as_f64().unwrap(),
        single["prompt_tokens"],
        s["text"]
    );
    let text = s["text"].as_str().unwrap().to_lowercase();
    let missing: Vec<&str> = TOPICS
        .iter()
        .copied()
        .filter(|t| !text.contains(t))
        .collect();
    assert!(missing.is_empty(), "topics missing: {missing:?}\n{text}");
    assert!(text.contains("[p. "), "no page citations: {text}");
    assert_eq!(s["pages"], 200);
}
