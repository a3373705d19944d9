//! `hf:` pulls against a stand-in hub on 127.0.0.1: never the real hub.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{Reply, StandIn, sha256_hex, tiny_gguf};
use verre_models::{FetchConfig, ModelStore, PullOptions};

const RESOLVE: &str = "/owner/repo/resolve/main/tiny.Q4_1.gguf";
const SPEC: &str = "hf:owner/repo/tiny.Q4_1.gguf";

fn store_for(hub: &StandIn, token: Option<&str>) -> (tempfile::TempDir, ModelStore) {
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::open(home.path())
        .unwrap()
        .with_fetch_config(FetchConfig {
            hf_endpoint: hub.base_url.clone(),
            hf_token: token.map(str::to_string),
            ..FetchConfig::default()
        });
    (home, store)
}

fn pull(store: &ModelStore, spec: &str) -> anyhow::Result<verre_models::ModelEntry> {
    store.pull(spec, &PullOptions::default())
}

/// Everything in `models/`, hidden entries included: what a failed pull must not leave.
fn models_dir_contents(store: &ModelStore) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.models_dir())
        .unwrap()
        .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_nothing_stored(store: &ModelStore) {
    assert_eq!(models_dir_contents(store), Vec::<String>::new());
    assert!(store.list().unwrap().is_empty());
    assert!(store.resolve("tiny.Q4_1").is_err());
}

#[test]
fn pulls_through_the_cdn_redirect_and_verifies_the_linked_etag() {
    let gguf = tiny_gguf();
    let sha = sha256_hex(&gguf);
    // The CDN is another origin, as on the real hub, with an ETag that is not a sha256.
    let cdn = StandIn::start(HashMap::from([(
        "/blobs/tiny".to_string(),
        Reply::ok(gguf.clone()).header("ETag", "\"d41d8cd98f00b204e9800998ecf8427e\""),
    )]));
    let hub = StandIn::start(HashMap::from([(
        RESOLVE.to_string(),
        Reply {
            status: 302,
            require_token: Some("hf_secret".into()),
            ..Reply::default()
        }
        .header("Location", &format!("{}/blobs/tiny", cdn.base_url))
        .header("X-Linked-Etag", &format!("\"{sha}\""))
        .header("X-Linked-Size", &gguf.len().to_string()),
    )]));
    let (_home, store) = store_for(&hub, Some("hf_secret"));

    let entry = pull(&store, SPEC).unwrap();
    assert_eq!(entry.name, "tiny.Q4_1");
    assert_eq!(entry.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(entry.source, SPEC);
    assert_eq!(std::fs::read(&entry.path).unwrap(), gguf);

    assert_eq!(
        hub.seen()[0].authorization.as_deref(),
        Some("Bearer hf_secret")
    );
    assert_eq!(cdn.seen().len(), 1);
    assert_eq!(
        cdn.seen()[0].authorization,
        None,
        "the token must not go to the CDN"
    );

    let listed = store.list().unwrap();
    assert_eq!(listed, vec![entry.clone()]);
    assert_eq!(listed[0].architecture, "llama");
    assert_eq!(listed[0].quantization, "Q4_1");
    assert_eq!(listed[0].context_length, Some(256));
    assert_eq!(listed[0].size_bytes, gguf.len() as u64);
    assert_eq!(store.resolve("tiny.Q4_1").unwrap(), entry);

    // Pulled again from the same source: nothing is fetched.
    let again = pull(&store, SPEC).unwrap();
    assert_eq!(again, entry);
    assert_eq!(hub.seen().len(), 1);
    // With force: fetched and replaced.
    store
        .pull(
            SPEC,
            &PullOptions {
                force: true,
                progress: false,
            },
        )
        .unwrap();
    assert_eq!(hub.seen().len(), 2);
    assert_eq!(models_dir_contents(&store), vec!["tiny.Q4_1".to_string()]);
}

#[test]
fn a_sha256_mismatch_is_an_error_and_leaves_no_file() {
    let mut gguf = tiny_gguf();
    let sha = sha256_hex(&gguf);
    let last = gguf.len() - 1;
    gguf[last] ^= 0xff; // corrupted in transit
    let hub = StandIn::start(HashMap::from([(
        RESOLVE.to_string(),
        Reply::ok(gguf).header("ETag", &format!("\"{sha}\"")),
    )]));
    let (_home, store) = store_for(&hub, None);

    let err = format!("{:#}", pull(&store, SPEC).unwrap_err());
    assert!(
        err.contains("sha256 mismatch") && err.contains(&sha),
        "{err}"
    );
    assert_nothing_stored(&store);
}

#[test]
fn not_found_says_what_to_check() {
    let hub = StandIn::start(HashMap::new());
    let (_home, store) = store_for(&hub, None);
    let err = format!(
        "{:#}",
        pull(&store, "hf:owner/repo/missing.gguf").unwrap_err()
    );
    let url = format!("{}/owner/repo/resolve/main/missing.gguf", hub.base_url);
    assert!(
        err.contains("hf:owner/repo/missing.gguf: 404 Not Found at "),
        "{err}"
    );
    assert!(err.contains(&url), "{err}");
    assert!(
        err.contains("check the repo and file name, and HF_TOKEN"),
        "{err}"
    );
    assert_nothing_stored(&store);
}

#[test]
fn the_token_is_sent_as_a_bearer_header() {
    let gguf = tiny_gguf();
    let route = Reply {
        require_token: Some("hf_gated".into()),
        ..Reply::ok(gguf)
    };
    let hub = StandIn::start(HashMap::from([(RESOLVE.to_string(), route)]));

    let (_home, without) = store_for(&hub, None);
    let err = format!("{:#}", pull(&without, SPEC).unwrap_err());
    assert!(
        err.contains("401 Unauthorized") && err.contains("HF_TOKEN"),
        "{err}"
    );
    assert_nothing_stored(&without);

    let (_home, wrong) = store_for(&hub, Some("hf_other"));
    assert!(pull(&wrong, SPEC).is_err());

    let (_home, with) = store_for(&hub, Some("hf_gated"));
    pull(&with, SPEC).unwrap();
    let seen = hub.seen();
    assert_eq!(
        seen.last().unwrap().authorization.as_deref(),
        Some("Bearer hf_gated")
    );
    assert_eq!(seen[0].authorization, None);
}

#[test]
fn a_connection_dropped_mid_body_leaves_nothing_that_loads() {
    let gguf = tiny_gguf();
    let half = gguf.len() / 2;
    // No sha256 header: only the length check stands between the pull and a truncated model.
    let hub = StandIn::start(HashMap::from([(
        RESOLVE.to_string(),
        Reply {
            cut_body_at: Some(half),
            ..Reply::ok(gguf)
        },
    )]));
    let (_home, store) = store_for(&hub, None);
    let err = format!("{:#}", pull(&store, SPEC).unwrap_err());
    // Caught as a failed transfer, before the header check would notice the truncation.
    assert!(err.contains(SPEC) && err.contains("downloading"), "{err}");
    assert_nothing_stored(&store);
}

#[test]
fn a_body_that_is_not_a_gguf_is_refused() {
    // A proxy's error page with status 200 and no sha256.
    let hub = StandIn::start(HashMap::from([(
        RESOLVE.to_string(),
        Reply::ok(b"<html>please log in</html>".to_vec()),
    )]));
    let (_home, store) = store_for(&hub, None);
    let err = format!("{:#}", pull(&store, SPEC).unwrap_err());
    assert!(err.contains("not a model verre can load"), "{err}");
    assert_nothing_stored(&store);
}

#[test]
fn a_stored_model_truncated_later_is_listed_with_an_error() {
    let gguf = tiny_gguf();
    let sha = sha256_hex(&gguf);
    let hub = StandIn::start(HashMap::from([(
        RESOLVE.to_string(),
        Reply::ok(gguf.clone()).header("X-Linked-Etag", &sha),
    )]));
    let (_home, store) = store_for(&hub, None);
    let entry = pull(&store, SPEC).unwrap();

    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&entry.path)
        .unwrap();
    file.set_len(gguf.len() as u64 - 7).unwrap();
    drop(file);

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    let note = listed[0].error.as_deref().expect("an error note");
    assert!(note.contains("truncated"), "{note}");
    let err = format!("{:#}", store.resolve("tiny.Q4_1").unwrap_err());
    assert!(
        err.contains("cannot be loaded") && err.contains("verre pull --force"),
        "{err}"
    );

    // Pulling again (same source, no --force) repairs it.
    let repaired = pull(&store, SPEC).unwrap();
    assert_eq!(repaired.error, None);
    assert_eq!(std::fs::read(Path::new(&repaired.path)).unwrap(), gguf);
}
