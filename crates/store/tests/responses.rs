//! Issue 19: responses kept for `/v1/responses` — sealed at rest, re-sealed by rekey,
//! deleted by erasure when they mention the subject, and by retention past
//! `extracted_days`.

use serde_json::json;
use verre_store::crypto::{Keyring, generate_key};
use verre_store::erase::Subject;
use verre_store::{Retention, Store, StoredResponse};

const DAY: i64 = 24 * 60 * 60 * 1000;

fn response(id: &str, text: &str) -> StoredResponse {
    StoredResponse {
        id: id.to_string(),
        api_key: "app".to_string(),
        model: "m".to_string(),
        status: "completed".to_string(),
        created_at: verre_store::now_ms(),
        input: json!([{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]),
        body: json!({"id": id, "object": "response", "output": [{"type": "message", "content": [{"type": "output_text", "text": "ok"}]}]}),
    }
}

async fn raw_columns(store: &Store, id: &str) -> (String, String, Option<String>) {
    let row: (String, String, Option<String>) =
        sqlx::query_as("SELECT input, body, key_id FROM responses WHERE id = $1")
            .bind(id)
            .fetch_one(store.pool())
            .await
            .unwrap();
    row
}

/// Each check on SQLite, and on PostgreSQL when `VERRE_TEST_POSTGRES_URL` is set.
macro_rules! on_both {
    ($check:ident, $sqlite:ident, $postgres:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            let dir = tempfile::tempdir().unwrap();
            $check(Store::open_in_home(dir.path()).await.unwrap()).await;
        }

        #[tokio::test]
        async fn $postgres() {
            let Some(url) = verre_store::testing::postgres_url(stringify!($postgres)).await else {
                return;
            };
            $check(Store::open(&url).await.unwrap()).await;
        }
    };
}

on_both!(
    read_back_update_delete,
    kept_responses_read_back_update_and_delete,
    kept_responses_read_back_update_and_delete_postgres
);
on_both!(
    sealed_and_rekeyed,
    kept_responses_are_sealed_and_rekeyed,
    kept_responses_are_sealed_and_rekeyed_postgres
);
on_both!(
    erased_and_purged,
    erasure_and_retention_delete_kept_responses,
    erasure_and_retention_delete_kept_responses_postgres
);

on_both!(
    stale_fail,
    a_stale_background_response_fails_and_stays_sealed,
    a_stale_background_response_fails_and_stays_sealed_postgres
);

/// A background response whose heartbeat is older than the cutoff becomes `failed` with
/// the error, sealed as before (also one written in clear before the key); a fresh one, an
/// ended one and another id than `only` are left alone.
async fn stale_fail(clear: Store) {
    let running = |id: &str| {
        let mut r = response(id, "Jeanne Martin");
        r.status = "in_progress".into();
        r.body["status"] = "in_progress".into();
        r
    };
    clear
        .put_response(&running("resp_old_clear"))
        .await
        .unwrap();
    let key = generate_key().unwrap();
    let store = clear
        .with_keys(Some(Keyring::parse(&key, "t").unwrap()))
        .await
        .unwrap();
    for id in ["resp_old", "resp_other", "resp_fresh"] {
        store.put_response(&running(id)).await.unwrap();
    }
    store
        .put_response(&response("resp_done", "x"))
        .await
        .unwrap();
    let now = verre_store::now_ms();
    for id in ["resp_old_clear", "resp_old", "resp_other", "resp_done"] {
        store.touch_response(id, now - 120_000).await.unwrap();
    }
    let cutoff = now - 60_000;
    let failed = store
        .fail_stale_responses(cutoff, Some("resp_old"), "stopped")
        .await
        .unwrap();
    assert_eq!(failed, vec!["resp_old".to_string()]);
    let mut failed = store
        .fail_stale_responses(cutoff, None, "stopped")
        .await
        .unwrap();
    failed.sort();
    assert_eq!(
        failed,
        vec!["resp_old_clear".to_string(), "resp_other".to_string()]
    );
    for id in ["resp_old", "resp_old_clear", "resp_other"] {
        let kept = store.response(id).await.unwrap().unwrap();
        assert_eq!(kept.status, "failed");
        assert_eq!(kept.body["error"]["message"], "stopped");
        assert_eq!(kept.input[0]["content"][0]["text"], "Jeanne Martin");
        let (input, body, key_id) = raw_columns(&store, id).await;
        assert!(!input.contains("Jeanne") && !body.contains("stopped") && key_id.is_some());
    }
    assert_eq!(
        store.response("resp_fresh").await.unwrap().unwrap().status,
        "in_progress"
    );
    assert_eq!(
        store.response("resp_done").await.unwrap().unwrap().status,
        "completed"
    );
}

async fn read_back_update_delete(store: Store) {
    let mut kept = response("resp_1", "hello");
    store.put_response(&kept).await.unwrap();
    assert_eq!(store.response("resp_1").await.unwrap(), Some(kept.clone()));
    kept.status = "cancelled".into();
    kept.body["status"] = "cancelled".into();
    store.put_response(&kept).await.unwrap();
    assert_eq!(store.response("resp_1").await.unwrap(), Some(kept));
    assert!(store.delete_response("resp_1").await.unwrap());
    assert!(!store.delete_response("resp_1").await.unwrap());
    assert_eq!(store.response("resp_1").await.unwrap(), None);
}

async fn sealed_and_rekeyed(clear: Store) {
    clear
        .put_response(&response("resp_clear", "Jeanne Martin"))
        .await
        .unwrap();
    let (input, _, key_id) = raw_columns(&clear, "resp_clear").await;
    assert!(input.contains("Jeanne Martin") && key_id.is_none());

    let key = generate_key().unwrap();
    let sealed = clear
        .with_keys(Some(Keyring::parse(&key, "t").unwrap()))
        .await
        .unwrap();
    sealed
        .put_response(&response("resp_sealed", "Jeanne Martin"))
        .await
        .unwrap();
    let (input, body, key_id) = raw_columns(&sealed, "resp_sealed").await;
    assert!(!input.contains("Jeanne") && !body.contains("output_text"));
    assert!(key_id.is_some());
    let back = sealed.response("resp_sealed").await.unwrap().unwrap();
    assert_eq!(back.input[0]["content"][0]["text"], "Jeanne Martin");

    let report = sealed.rekey().await.unwrap();
    assert_eq!(report.responses, 1, "the clear one is sealed now");
    let (input, _, key_id) = raw_columns(&sealed, "resp_clear").await;
    assert!(!input.contains("Jeanne") && key_id.is_some());
}

async fn erased_and_purged(store: Store) {
    let key = generate_key().unwrap();
    let store = store
        .with_keys(Some(Keyring::parse(&key, "t").unwrap()))
        .await
        .unwrap();
    store
        .put_response(&response("resp_jeanne", "write to jeanne@example.fr"))
        .await
        .unwrap();
    store
        .put_response(&response("resp_joanne", "write to xjeanne@example.fr"))
        .await
        .unwrap();
    let subject = Subject::parse("jeanne@example.fr").unwrap();
    let dry = store.erase(&subject, "cli", true).await.unwrap();
    assert_eq!(dry.rows.get("responses"), Some(&1));
    assert!(store.response("resp_jeanne").await.unwrap().is_some());
    let report = store.erase(&subject, "cli", false).await.unwrap();
    assert_eq!(report.rows.get("responses"), Some(&1), "{report:?}");
    assert!(store.response("resp_jeanne").await.unwrap().is_none());
    assert!(store.response("resp_joanne").await.unwrap().is_some());

    // Retention: past extracted_days by when it was made.
    store
        .put_response(&response("resp_new", "hello"))
        .await
        .unwrap();
    sqlx::query("UPDATE responses SET created_at = created_at - $1 WHERE id = 'resp_joanne'")
        .bind(40 * DAY)
        .execute(store.pool())
        .await
        .unwrap();
    let retention = Retention {
        extracted_days: Some(30),
        ..Default::default()
    };
    let report = store
        .purge_at(&retention, verre_store::now_ms(), false)
        .await
        .unwrap();
    assert_eq!(report.rows.get("responses"), Some(&1), "{report:?}");
    assert!(store.response("resp_joanne").await.unwrap().is_none());
    assert!(store.response("resp_new").await.unwrap().is_some());
}
