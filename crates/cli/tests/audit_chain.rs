//! Issue 18, item 10, through `verre audit verify`: the chain is keyed (HMAC-SHA256 under
//! `audit-key`, outside the database), so an entry rewritten with plain SHA-256 fails; a
//! detail blanked without a `gdpr.erase` entry listing it fails; a tail cut off is caught
//! by the head sink (`--sink`, `VERRE_AUDIT_SINK_FILE`).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;
use verre_store::audit::{GENESIS, entry_hash};
use verre_store::{AuditEvent, Store};

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn verify(dir: &Path) -> Output {
    let db = format!("sqlite://{}", dir.join("verre.db").display());
    Command::new(env!("CARGO_BIN_EXE_verre"))
        .env("VERRE_HOME", dir.join("home"))
        .env_remove("VERRE_DATA_KEY")
        .env_remove("VERRE_DATA_KEY_FILE")
        .env_remove("VERRE_AUDIT_KEY_FILE")
        .env_remove("VERRE_AUDIT_SINK_FILE")
        .args(["audit", "verify", "--no-head", "--database", &db, "--sink"])
        .arg(dir.join("audit.sink"))
        .output()
        .unwrap()
}

/// Five entries, written as verre writes them (the key file beside the database, each
/// head exported to the sink).
fn chain(dir: &Path) -> Store {
    block_on(async {
        let store = Store::open_in_home(dir)
            .await
            .unwrap()
            .with_audit_sink(Some(dir.join("audit.sink")));
        for i in 0..5 {
            store
                .audit(AuditEvent {
                    actor: "user:alice",
                    action: "review.approve",
                    subject: &format!("message:{i}"),
                    detail: json!({"n": i}),
                })
                .await
                .unwrap();
        }
        store
    })
}

fn sql(store: &Store, statement: &'static str) {
    block_on(async {
        sqlx::raw_sql(statement)
            .execute(store.pool())
            .await
            .unwrap();
    });
}

/// Entry 3's actor changed, and the chain from it recomputed as plain SHA-256, as someone
/// with write access to the database but not the key would.
fn rewrite_plain(store: &Store) {
    sql(
        store,
        "UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 3",
    );
    block_on(async {
        let entries = store.audit_entries(0, 100).await.unwrap();
        let mut prev = entries[1].hash.clone();
        assert_ne!(prev, GENESIS);
        for e in entries.iter().filter(|e| e.seq >= 3) {
            let hash = entry_hash(
                e.seq,
                e.at,
                &e.actor,
                &e.action,
                &e.subject,
                &e.detail_hash,
                &prev,
            );
            sqlx::query(
                "UPDATE audit_log SET hash = $1, prev_hash = $2, key_id = NULL WHERE seq = $3",
            )
            .bind(&hash)
            .bind(&prev)
            .bind(e.seq)
            .execute(store.pool())
            .await
            .unwrap();
            prev = hash;
        }
    });
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn audit_verify_catches_a_plain_rewrite_a_bare_tombstone_and_a_cut_tail() {
    let dir = tempfile::tempdir().unwrap();
    let store = chain(dir.path());
    let out = verify(dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("keyed: HMAC-SHA256"), "{}", text(&out));
    rewrite_plain(&store);
    let out = verify(dir.path());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("plain SHA-256"), "{}", text(&out));

    let dir = tempfile::tempdir().unwrap();
    let store = chain(dir.path());
    sql(
        &store,
        "UPDATE audit_log SET detail = NULL, erased_at = 1 WHERE seq = 2",
    );
    let out = verify(dir.path());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no later gdpr.erase entry"),
        "{}",
        text(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let store = chain(dir.path());
    sql(&store, "DELETE FROM audit_log WHERE seq >= 4");
    let out = verify(dir.path());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cut from the end"), "{}", text(&out));
}
