//! The `verre` binary end to end: exit codes and messages on bad input, and a real run on
//! the embedded default model when `VERRE_SMOLLM2_GGUF` points at it.

use std::path::Path;
use std::process::{Command, Output};

fn verre(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_verre"))
        .args(args)
        .env("VERRE_HOME", home)
        .output()
        .expect("running verre")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure must be an `error: ...` line and a non-zero exit, never a panic.
fn assert_clean_failure(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "verre panicked: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

#[test]
fn unknown_model_name_says_how_to_get_it() {
    let home = tempfile::tempdir().unwrap();
    let o = verre(home.path(), &["run", "-m", "no-such-model", "hi"]);
    assert_clean_failure(&o, &["no-such-model"]);
}

#[test]
fn corrupt_and_truncated_model_files_fail_cleanly() {
    let home = tempfile::tempdir().unwrap();
    let junk = home.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00 and then nothing useful").unwrap();
    let o = verre(home.path(), &["run", "-m", junk.to_str().unwrap(), "hi"]);
    assert_clean_failure(&o, &["junk.gguf"]);

    let text = home.path().join("text.gguf");
    std::fs::write(&text, b"hello").unwrap();
    let o = verre(home.path(), &["run", "-m", text.to_str().unwrap(), "hi"]);
    assert_clean_failure(&o, &["text.gguf", "not a GGUF file"]);
}

#[test]
fn empty_store_lists_nothing() {
    let home = tempfile::tempdir().unwrap();
    let o = verre(home.path(), &["models", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, serde_json::json!([]));
}

#[test]
fn run_answers_and_reports_json_on_the_real_model() {
    let Some(model) = std::env::var_os("VERRE_SMOLLM2_GGUF") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "VERRE_SMOLLM2_GGUF must be set in CI"
        );
        eprintln!("skipped: VERRE_SMOLLM2_GGUF is not set");
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let model = model.to_str().unwrap();
    let o = verre(
        home.path(),
        &[
            "run",
            "-m",
            model,
            "--json",
            "--max-tokens",
            "24",
            "--threads",
            "2",
            "Who wrote Les Misérables?",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("Victor Hugo"), "unexpected answer: {text}");
    assert_eq!(
        v["completion_tokens"].as_u64().unwrap() as usize,
        v["token_ids"].as_array().unwrap().len()
    );
    assert!(v["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(v["timings"]["decode_tokens_per_second"].as_f64().unwrap() > 0.0);

    // A prompt longer than the context is refused with the numbers.
    let long = "word ".repeat(9000);
    let o = verre(
        home.path(),
        &["run", "-m", model, "--raw", "--max-tokens", "1", &long],
    );
    assert_clean_failure(&o, &["context length"]);

    // Under a regex the answer matches it; a bad one is refused, not ignored.
    let o = verre(
        home.path(),
        &[
            "run",
            "-m",
            model,
            "--regex",
            "[0-9]{4}",
            "In which year was Victor Hugo born?",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let answer = String::from_utf8_lossy(&o.stdout);
    let answer = answer.trim();
    assert!(
        answer.len() == 4 && answer.bytes().all(|b| b.is_ascii_digit()),
        "{answer}"
    );
    let o = verre(home.path(), &["run", "-m", model, "--regex", "(", "x"]);
    assert_clean_failure(&o, &["regex not supported"]);
}

#[test]
fn bench_schemas_reports_coverage_on_the_real_model() {
    let Some(model) = std::env::var_os("VERRE_SMOLLM2_GGUF") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "VERRE_SMOLLM2_GGUF must be set in CI"
        );
        eprintln!("skipped: VERRE_SMOLLM2_GGUF is not set");
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("schemas");
    std::fs::create_dir(&dir).unwrap();
    let person = r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": false}"#;
    std::fs::write(dir.join("a-person.json"), person).unwrap();
    let refused = r#"{"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}"#;
    std::fs::write(dir.join("b-if-then.json"), refused).unwrap();
    let o = verre(
        home.path(),
        &[
            "bench-schemas",
            dir.to_str().unwrap(),
            "-m",
            model.to_str().unwrap(),
            "--max-tokens",
            "64",
            "--compare",
            "1",
            "--threads",
            "2",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schemas"], 2, "{v}");
    assert_eq!(v["compiled"], 1, "{v}");
    assert_eq!(v["valid"], 1, "{v}");
    assert!(
        v["mask_us_per_token"]["tokens"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(v["decode_tps"]["samples"], 1, "{v}");
    assert!(
        v["refusal_reasons"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("if"),
        "{v}"
    );
}
