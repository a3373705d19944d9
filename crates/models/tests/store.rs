//! The store without the network: local models, `list`, `resolve`, leftovers of killed pulls.

mod common;

use common::tiny_gguf;
use verre_models::{FetchConfig, ModelFormat, ModelStore, PullOptions};

fn empty_store() -> (tempfile::TempDir, ModelStore) {
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::open(home.path().join("verre"))
        .unwrap()
        .with_fetch_config(FetchConfig {
            // Nothing here may reach a network: make any attempt fail fast on loopback.
            hf_endpoint: "http://127.0.0.1:9".into(),
            ..FetchConfig::default()
        });
    (home, store)
}

#[test]
fn open_creates_the_models_directory() {
    let (home, store) = empty_store();
    assert!(home.path().join("verre/models").is_dir());
    assert_eq!(store.models_dir(), home.path().join("verre/models"));
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_local_gguf_is_recorded_by_reference_and_listed_from_its_header() {
    let (home, store) = empty_store();
    let file = home.path().join("My Model.Q4_1.gguf");
    std::fs::write(&file, tiny_gguf()).unwrap();

    let entry = store
        .pull(file.to_str().unwrap(), &PullOptions::default())
        .unwrap();
    assert_eq!(entry.name, "My-Model.Q4_1");
    assert_eq!(entry.path, std::fs::canonicalize(&file).unwrap());
    assert_eq!(entry.format, ModelFormat::Gguf);
    assert_eq!(
        (
            entry.architecture.as_str(),
            entry.quantization.as_str(),
            entry.context_length
        ),
        ("llama", "Q4_1", Some(256))
    );
    assert_eq!(entry.sha256, None);
    assert_eq!(entry.error, None);

    // By reference: the store holds the manifest only.
    let stored: Vec<_> = std::fs::read_dir(store.models_dir().join("My-Model.Q4_1"))
        .unwrap()
        .map(|item| item.unwrap().file_name())
        .collect();
    assert_eq!(stored, vec![std::ffi::OsString::from("verre-model.json")]);

    assert_eq!(store.list().unwrap(), vec![entry.clone()]);
    assert_eq!(store.resolve("My-Model.Q4_1").unwrap(), entry);

    // Truncated where it lives: still listed, with a note; resolve refuses it.
    let bytes = tiny_gguf();
    std::fs::write(&file, &bytes[..bytes.len() - 20]).unwrap();
    let listed = store.list().unwrap();
    let note = listed[0].error.as_deref().expect("an error note");
    assert!(
        note.contains("truncated") && note.contains("My Model.Q4_1.gguf"),
        "{note}"
    );
    assert!(store.resolve("My-Model.Q4_1").is_err());

    // Cut inside the header: the same, no panic.
    std::fs::write(&file, &bytes[..30]).unwrap();
    assert!(store.list().unwrap()[0].error.is_some());
    // Gone altogether.
    std::fs::remove_file(&file).unwrap();
    assert!(store.list().unwrap()[0].error.is_some());
}

#[test]
fn resolve_takes_a_bare_path_without_pulling() {
    let (home, store) = empty_store();
    let file = home.path().join("direct.gguf");
    std::fs::write(&file, tiny_gguf()).unwrap();
    let entry = store.resolve(file.to_str().unwrap()).unwrap();
    assert_eq!(entry.name, "direct");
    assert_eq!(entry.architecture, "llama");
    assert!(
        store.list().unwrap().is_empty(),
        "resolve must not add to the store"
    );

    std::fs::write(home.path().join("bad.gguf"), b"GGUF\x03\0\0\0").unwrap();
    let bad = home.path().join("bad.gguf");
    let err = format!("{:#}", store.resolve(bad.to_str().unwrap()).unwrap_err());
    assert!(err.contains("bad.gguf"), "{err}");
}

#[test]
fn resolve_errors_say_what_is_available() {
    let (home, store) = empty_store();
    let err = store.resolve("smollm2-135m").unwrap_err().to_string();
    assert!(
        err.contains("not pulled yet") && err.contains("verre pull smollm2-135m"),
        "{err}"
    );

    let file = home.path().join("mine.gguf");
    std::fs::write(&file, tiny_gguf()).unwrap();
    store
        .pull(file.to_str().unwrap(), &PullOptions::default())
        .unwrap();
    let err = store.resolve("no-such-model").unwrap_err().to_string();
    assert!(err.contains("Pulled: mine"), "{err}");
    assert!(err.contains("smollm2-135m, minilm-l6"), "{err}");

    let err = store.resolve("./nowhere.gguf").unwrap_err().to_string();
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn a_name_taken_by_another_source_needs_force() {
    let (home, store) = empty_store();
    for dir in ["a", "b"] {
        std::fs::create_dir(home.path().join(dir)).unwrap();
        std::fs::write(home.path().join(dir).join("same.gguf"), tiny_gguf()).unwrap();
    }
    let first = home.path().join("a/same.gguf");
    let second = home.path().join("b/same.gguf");
    store
        .pull(first.to_str().unwrap(), &PullOptions::default())
        .unwrap();
    let err = store
        .pull(second.to_str().unwrap(), &PullOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already in the store") && err.contains("--force"),
        "{err}"
    );

    let forced = PullOptions {
        force: true,
        progress: false,
    };
    let entry = store.pull(second.to_str().unwrap(), &forced).unwrap();
    assert_eq!(entry.path, std::fs::canonicalize(&second).unwrap());
    assert_eq!(store.list().unwrap(), vec![entry]);
}

#[test]
fn a_killed_pull_leaves_nothing_that_lists_or_resolves() {
    let (_home, store) = empty_store();
    // What a pull killed after writing everything but before its rename leaves behind.
    let partial = store.models_dir().join(".pull-tiny-x1y2.partial");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("tiny.gguf"), tiny_gguf()).unwrap();
    std::fs::write(
        partial.join("verre-model.json"),
        r#"{"name":"tiny","source":"hf:o/r/tiny.gguf","format":"gguf","path":"tiny.gguf",
            "sha256":null,"size_bytes":0,"files":[],"pulled_at_unix":0}"#,
    )
    .unwrap();
    // And a model directory with no manifest (killed while the name was being reused).
    std::fs::create_dir(store.models_dir().join("tiny")).unwrap();

    assert!(store.list().unwrap().is_empty());
    assert!(store.resolve("tiny").is_err());
    assert!(store.resolve(".pull-tiny-x1y2.partial").is_err());
}

#[test]
fn unknown_sources_are_refused_before_any_fetch() {
    let (_home, store) = empty_store();
    let err = store
        .pull("nothing-like-this", &PullOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("not a built-in model"), "{err}");
    let err = store
        .pull("hf:just-a-repo", &PullOptions::default())
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("hf:OWNER/REPO/FILE.gguf"),
        "{err:#}"
    );
}
