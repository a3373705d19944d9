//! The store and its job queue, the same tests on SQLite and on PostgreSQL.
//!
//! PostgreSQL comes from `VERRE_TEST_POSTGRES_URL` (an admin URL such as
//! `postgres://postgres@127.0.0.1:5433/postgres`; `scripts/ci-services.sh` starts one and
//! scripts/test.sh exports it). Each test creates its own database there. Without the
//! variable the PostgreSQL half is skipped locally and fails under CI.

use std::collections::HashSet;
use std::time::Duration;

use verre_store::{FailOutcome, StageEffects, Store};

async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("verre.db").display());
    (Store::open(&url).await.unwrap(), dir)
}

async fn postgres_store(name: &str) -> Option<Store> {
    let url = verre_store::testing::postgres_url(name).await?;
    Some(Store::open(&url).await.unwrap())
}

async fn on_both<F, Fut>(name: &str, test: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (store, _dir) = sqlite_store().await;
    test(store).await;
    if let Some(store) = postgres_store(name).await {
        test(store).await;
    }
}

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_is_stored_once_by_content() {
    on_both("dedup", |store| async move {
        let a = store
            .ingest("test", "a.eml", b"Subject: x\r\n\r\nhi", "parse", 3)
            .await
            .unwrap();
        let b = store
            .ingest("test", "b.eml", b"Subject: x\r\n\r\nhi", "parse", 3)
            .await
            .unwrap();
        assert!(a.new && !b.new);
        assert_eq!(a.message_id, b.message_id);
        assert_eq!(
            store.raw_message(a.message_id).await.unwrap(),
            b"Subject: x\r\n\r\nhi"
        );
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        assert_eq!(
            (job.message_id, job.stage.as_str()),
            (a.message_id, "parse")
        );
        assert!(
            store.claim("w", LEASE).await.unwrap().is_none(),
            "one job per message"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stages_chain_until_the_message_is_processed() {
    on_both("chain", |store| async move {
        let m = store
            .ingest("test", "m", b"one", "parse", 3)
            .await
            .unwrap()
            .message_id;
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        let fx = StageEffects {
            output: serde_json::json!({"ok": 1}),
            ..Default::default()
        };
        assert!(store.complete(&job, &fx, Some("extract"), 3).await.unwrap());
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        assert_eq!(job.stage, "extract");
        let fx = StageEffects {
            output: serde_json::json!({"n": 2}),
            prompt_tokens: 10,
            completion_tokens: 5,
            ..Default::default()
        };
        assert!(store.complete(&job, &fx, None, 3).await.unwrap());
        let detail = store.detail(m).await.unwrap().unwrap();
        assert_eq!(detail.message.status, "processed");
        assert_eq!(detail.results.len(), 2);
        assert_eq!(
            store.stage_output(m, "extract").await.unwrap().unwrap()["n"],
            2
        );
        let totals = store.totals().await.unwrap();
        assert_eq!(
            (
                totals.processed,
                totals.prompt_tokens,
                totals.completion_tokens
            ),
            (1, 10, 5)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_passes_the_job_on_and_the_old_worker_writes_nothing() {
    on_both("lease", |store| async move {
        let m = store
            .ingest("test", "m", b"two", "parse", 3)
            .await
            .unwrap()
            .message_id;
        let dead = store.claim("dead", Duration::ZERO).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let live = store.claim("live", LEASE).await.unwrap().unwrap();
        assert_eq!(live.id, dead.id);
        assert_eq!(
            live.attempts, 2,
            "the dead worker's claim counts as an attempt"
        );
        let fx = StageEffects {
            output: serde_json::json!({}),
            ..Default::default()
        };
        assert!(
            !store.complete(&dead, &fx, None, 3).await.unwrap(),
            "lease lost"
        );
        assert_eq!(
            store
                .fail(&dead, "late", false, Duration::ZERO)
                .await
                .unwrap(),
            FailOutcome::LeaseLost
        );
        assert!(store.complete(&live, &fx, None, 3).await.unwrap());
        assert_eq!(store.detail(m).await.unwrap().unwrap().results.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_retry_with_backoff_then_quarantine_and_can_be_retried() {
    on_both("quarantine", |store| async move {
        let m = store
            .ingest("test", "m", b"three", "parse", 2)
            .await
            .unwrap()
            .message_id;
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        match store
            .fail(&job, "boom", false, Duration::from_secs(3600))
            .await
            .unwrap()
        {
            FailOutcome::Retry { run_after } => {
                assert!(run_after > verre_store::now_ms() + 3_000_000)
            }
            other => panic!("{other:?}"),
        }
        assert!(
            store.claim("w", LEASE).await.unwrap().is_none(),
            "backing off"
        );
        let (active, waiting) = store.open_jobs().await.unwrap();
        assert_eq!((active, waiting), (0, 1));
        sqlx::query("UPDATE jobs SET run_after = 0")
            .execute(store.pool())
            .await
            .unwrap();
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        assert_eq!(
            store
                .fail(&job, "boom again", false, Duration::ZERO)
                .await
                .unwrap(),
            FailOutcome::Quarantined
        );
        let q = store.quarantined().await.unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(
            (q[0].message_id, q[0].stage.as_str(), q[0].reason.as_str()),
            (m, "parse", "boom again")
        );
        assert_eq!(
            store.message(m).await.unwrap().unwrap().status,
            "quarantined"
        );
        store.retry_quarantined(m).await.unwrap();
        assert!(
            store.retry_quarantined(m).await.is_err(),
            "no longer quarantined"
        );
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        assert_eq!(job.attempts, 1);
        assert_eq!(
            store
                .fail(&job, "bad input", true, Duration::ZERO)
                .await
                .unwrap(),
            FailOutcome::Quarantined
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_workers_never_claim_the_same_job() {
    on_both("concurrent", |store| async move {
        for i in 0..120 {
            store
                .ingest(
                    "test",
                    &format!("{i}"),
                    format!("mail {i}").as_bytes(),
                    "parse",
                    3,
                )
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for w in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let worker = format!("w{w}");
                while let Some(job) = store.claim(&worker, LEASE).await.unwrap() {
                    let fx = StageEffects {
                        output: serde_json::json!({}),
                        ..Default::default()
                    };
                    assert!(store.complete(&job, &fx, None, 3).await.unwrap());
                    mine.push(job.message_id);
                }
                mine
            }));
        }
        let mut seen = HashSet::new();
        let mut total = 0;
        for t in tasks {
            for id in t.await.unwrap() {
                assert!(seen.insert(id), "message {id} claimed twice");
                total += 1;
            }
        }
        assert_eq!(total, 120);
        assert_eq!(store.totals().await.unwrap().processed, 120);
    })
    .await;
}
