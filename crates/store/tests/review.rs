//! Review and outbox, the same tests on SQLite (plain and encrypted at rest) and on
//! PostgreSQL (`VERRE_TEST_POSTGRES_URL`, skipped locally without it, required under CI).

use std::time::Duration;

use serde_json::{Value, json};
use verre_store::outbox::{AttemptRecord, DeliveryResult};
use verre_store::review::{QueueFilter, ReviewStatus};
use verre_store::{NewAction, StageEffects, Store, now_ms};

async fn on_both<F, Fut>(name: &str, test: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("verre.db").display());
    test(Store::open(&url).await.unwrap()).await;
    // Again with encryption at rest on: stage outputs are read through their keys.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("verre.db").display());
    let key = verre_store::crypto::generate_key().unwrap();
    let keys = verre_store::Keyring::parse(&key, "test key").unwrap();
    test(
        Store::open(&url)
            .await
            .unwrap()
            .with_keys(Some(keys))
            .await
            .unwrap(),
    )
    .await;
    if let Some(url) = verre_store::testing::postgres_url(name).await {
        test(Store::open(&url).await.unwrap()).await;
    }
}

const LEASE: Duration = Duration::from_secs(60);

/// A message taken through extract -> draft -> stage, with a reply and a webhook staged.
async fn processed(store: &Store, raw: &str, threat: &str) -> i64 {
    let id = store
        .ingest("test", "m.eml", raw.as_bytes(), "extract", 3)
        .await
        .unwrap()
        .message_id;
    let steps: [(Value, Option<&str>); 3] = [
        (
            json!({"customer": "ACME", "threat_level": threat}),
            Some("draft"),
        ),
        (
            json!({"draft": "We will call you tomorrow."}),
            Some("stage"),
        ),
        (json!({"actions": ["reply", "crm"]}), None),
    ];
    for (output, next) in steps {
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        assert_eq!(job.message_id, id);
        let actions = if next.is_none() {
            vec![
                NewAction {
                    name: "reply".into(),
                    kind: "reply".into(),
                    target: "a@client.test".into(),
                    payload: json!({"to": "a@client.test", "subject": "Re: x",
                        "body": "Hello,\nWe will call you tomorrow.\n-- support"})
                    .to_string(),
                },
                NewAction {
                    name: "crm".into(),
                    kind: "webhook".into(),
                    target: "https://crm.example/hook".into(),
                    payload: json!({"message": id}).to_string(),
                },
            ]
        } else {
            vec![]
        };
        let effects = StageEffects {
            output,
            actions,
            ..Default::default()
        };
        assert!(store.complete(&job, &effects, next, 3).await.unwrap());
    }
    id
}

fn allow_all(_: &verre_store::ActionRow) -> Result<(), String> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_sessions_and_login_failures() {
    on_both("review_accounts", |store| async move {
        store
            .add_user("alice", "$argon2id$x", "reviewer")
            .await
            .unwrap();
        let e = store
            .add_user("alice", "$argon2id$y", "admin")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
        assert!(store.add_user("bob", "h", "boss").await.is_err());
        assert!(store.add_user("b b", "h", "admin").await.is_err());
        assert_eq!(store.user("alice").await.unwrap().unwrap().role, "reviewer");

        store
            .create_session("tok-1", "alice", "csrf-1", now_ms() + 60_000)
            .await
            .unwrap();
        store
            .create_session("tok-old", "alice", "csrf-2", now_ms() - 1)
            .await
            .unwrap();
        let s = store.session("tok-1").await.unwrap().unwrap();
        assert_eq!(
            (s.user.as_str(), s.csrf_token.as_str()),
            ("alice", "csrf-1")
        );
        assert!(store.session("tok-old").await.unwrap().is_none(), "expired");
        assert!(store.session("tok-2").await.unwrap().is_none());
        // Only the hash is stored.
        let stored: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE token_hash = 'tok-1'")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(stored, 0);

        let since = now_ms() - 60_000;
        for _ in 0..3 {
            store
                .record_login_failure("alice", "10.0.0.1", since)
                .await
                .unwrap();
        }
        assert_eq!(
            store
                .login_failures("alice", "10.0.0.1", since)
                .await
                .unwrap(),
            3
        );
        assert_eq!(
            store
                .login_failures("alice", "10.0.0.2", since)
                .await
                .unwrap(),
            0
        );
        store
            .clear_login_failures("alice", "10.0.0.1")
            .await
            .unwrap();
        assert_eq!(
            store
                .login_failures("alice", "10.0.0.1", since)
                .await
                .unwrap(),
            0
        );

        assert!(store.remove_user("alice").await.unwrap());
        assert!(
            store.session("tok-1").await.unwrap().is_none(),
            "sessions end with the user"
        );
        assert!(!store.remove_user("alice").await.unwrap());
        assert!(store.audit_verify().await.unwrap().ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_edits_and_approval_in_one_transaction() {
    on_both("review_approve", |store| async move {
        let id = processed(&store, "Subject: a\r\n\r\nhelp", "high").await;
        let other = processed(&store, "Subject: b\r\n\r\nspam", "low").await;

        let queue = store
            .review_queue(&QueueFilter {
                status: Some(ReviewStatus::ToReview),
                label: Some(("threat_level".into(), "high".into())),
                limit: 50,
            })
            .await
            .unwrap();
        assert_eq!(
            queue.iter().map(|q| q.message.id).collect::<Vec<_>>(),
            vec![id]
        );
        assert_eq!(queue[0].actions, 2);

        // The model's draft, then a person's edit, which the reply follows.
        let drafts = store.drafts(id).await.unwrap();
        assert_eq!((drafts.len(), drafts[0].author.as_str()), (1, "model"));
        let v = store
            .save_draft(id, "We called you today.", "alice")
            .await
            .unwrap();
        assert_eq!(v, 2);
        let drafts = store.drafts(id).await.unwrap();
        assert_eq!(
            drafts.iter().map(|d| d.version).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(drafts[1].author, "user:alice");
        let actions = store.actions(id).await.unwrap();
        let reply: Value = serde_json::from_str(&actions[0].payload).unwrap();
        assert_eq!(reply["body"], "Hello,\nWe called you today.\n-- support");

        // Payload edits: JSON only, a reply keeps its fields.
        let crm = actions[1].id;
        assert!(store.edit_action(crm, "{not json", "alice").await.is_err());
        assert!(
            store
                .edit_action(actions[0].id, "{\"to\": 1}", "alice")
                .await
                .is_err()
        );
        store
            .edit_action(crm, r#"{"message": 1, "note": "checked"}"#, "alice")
            .await
            .unwrap();

        // A refusal approves nothing.
        let refuse = |a: &verre_store::ActionRow| {
            if a.kind == "webhook" {
                Err("not on the policy".to_string())
            } else {
                Ok(())
            }
        };
        let e = store.approve(id, "alice", &refuse).await.unwrap_err();
        assert!(format!("{e:#}").contains("not on the policy"), "{e:#}");
        assert!(store.decision(id).await.unwrap().is_none());
        assert!(store.deliveries(id).await.unwrap().is_empty());

        let approval = store.approve(id, "alice", &allow_all).await.unwrap();
        assert_eq!(approval.released.len(), 2);
        let outbox = store.deliveries(id).await.unwrap();
        assert_eq!(outbox.len(), 2);
        assert!(
            outbox
                .iter()
                .all(|o| o.status == "pending" && o.webhook_id.starts_with("msg_"))
        );
        assert_eq!(outbox[1].payload, r#"{"message":1,"note":"checked"}"#);
        assert_ne!(outbox[0].webhook_id, outbox[1].webhook_id);
        assert_eq!(store.decision(id).await.unwrap().unwrap().reviewer, "alice");

        // Decided: no second decision, no more edits.
        assert!(store.approve(id, "bob", &allow_all).await.is_err());
        assert!(store.reject(id, "bob", "late").await.is_err());
        assert!(store.save_draft(id, "x", "bob").await.is_err());
        assert!(store.edit_action(crm, "{}", "bob").await.is_err());

        assert!(
            store.reject(other, "bob", "  ").await.is_err(),
            "a reason is required"
        );
        store.reject(other, "bob", "spam").await.unwrap();
        assert!(
            store
                .actions(other)
                .await
                .unwrap()
                .iter()
                .all(|a| a.status == "rejected")
        );
        assert!(store.deliveries(other).await.unwrap().is_empty());

        let log = store.audit_entries(0, 100).await.unwrap();
        let decisions: Vec<(String, String)> = log
            .iter()
            .filter(|e| e.action.starts_with("review."))
            .map(|e| (e.actor.clone(), e.action.clone()))
            .collect();
        assert_eq!(
            decisions,
            vec![
                ("user:alice".to_string(), "review.edit_draft".to_string()),
                ("user:alice".into(), "review.edit_action".into()),
                ("user:alice".into(), "review.approve".into()),
                ("user:bob".into(), "review.reject".into()),
            ]
        );
        assert!(store.audit_verify().await.unwrap().ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_retries_fails_and_disables_gone_endpoints() {
    on_both("review_outbox", |store| async move {
        let id = processed(&store, "Subject: c\r\n\r\nx", "low").await;
        store.approve(id, "alice", &allow_all).await.unwrap();

        let a = store.claim_delivery("w1", LEASE).await.unwrap().unwrap();
        let b = store.claim_delivery("w2", LEASE).await.unwrap().unwrap();
        assert_ne!(a.id, b.id);
        assert!(
            store.claim_delivery("w3", LEASE).await.unwrap().is_none(),
            "both leased"
        );

        // A retry later; another worker cannot record it; it is not due yet.
        let later = now_ms() + 60_000;
        let stolen = verre_store::outbox::OutboxEntry {
            worker: "w9".into(),
            ..a.clone()
        };
        let retry = AttemptRecord {
            response_status: Some(503),
            error: Some("HTTP 503".into()),
            result: DeliveryResult::RetryAt(later),
        };
        assert!(!store.record_delivery(&stolen, &retry).await.unwrap());
        assert!(store.record_delivery(&a, &retry).await.unwrap());
        assert!(store.claim_delivery("w3", LEASE).await.unwrap().is_none());

        // b's endpoint is gone.
        let gone = AttemptRecord {
            response_status: Some(410),
            error: None,
            result: DeliveryResult::Gone,
        };
        assert!(store.record_delivery(&b, &gone).await.unwrap());
        assert!(store.endpoint_gone(&b.target).await.unwrap());
        assert_eq!(
            store.next_delivery_due().await.unwrap(),
            Some(later),
            "only a is pending"
        );
        let e = store.retry_delivery(b.id, "admin").await.unwrap_err();
        assert!(e.to_string().contains("re-enable"), "{e}");
        store.enable_endpoint(&b.target, "admin").await.unwrap();
        assert!(!store.endpoint_gone(&b.target).await.unwrap());

        // Make a due now and fail it for good.
        sqlx::query("UPDATE outbox SET next_attempt_at = 0 WHERE id = $1")
            .bind(a.id)
            .execute(store.pool())
            .await
            .unwrap();
        let again = store.claim_delivery("w1", LEASE).await.unwrap().unwrap();
        assert_eq!(
            (again.id, again.attempts, &again.webhook_id),
            (a.id, 2, &a.webhook_id)
        );
        let failed = AttemptRecord {
            response_status: None,
            error: Some("could not connect".into()),
            result: DeliveryResult::Failed,
        };
        assert!(store.record_delivery(&again, &failed).await.unwrap());
        let failed_rows = store.deliveries_with_status("failed").await.unwrap();
        assert_eq!(failed_rows.len(), 1);
        assert_eq!(
            failed_rows[0].last_error.as_deref(),
            Some("could not connect")
        );
        assert_eq!(store.delivery_attempts(a.id).await.unwrap().len(), 2);

        // A person retries it; it is sent.
        store.retry_delivery(a.id, "admin").await.unwrap();
        let third = store.claim_delivery("w1", LEASE).await.unwrap().unwrap();
        assert_eq!((third.id, third.attempts), (a.id, 1));
        let sent = AttemptRecord {
            response_status: Some(204),
            error: None,
            result: DeliveryResult::Sent,
        };
        assert!(store.record_delivery(&third, &sent).await.unwrap());
        let rows = store.deliveries(id).await.unwrap();
        let row = rows.iter().find(|r| r.id == a.id).unwrap();
        assert_eq!(row.status, "sent");
        assert!(row.sent_at.is_some());
        assert_eq!(store.delivery_attempts(a.id).await.unwrap().len(), 3);

        let actions: Vec<String> = store
            .audit_entries(0, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action.starts_with("delivery."))
            .map(|e| e.action)
            .collect();
        assert_eq!(
            actions,
            [
                "delivery.gone",
                "delivery.enable_endpoint",
                "delivery.failed",
                "delivery.retry",
                "delivery.sent"
            ]
        );
        assert!(store.audit_verify().await.unwrap().ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_runs_again_with_the_stages_after_it() {
    on_both("review_rerun", |store| async move {
        let id = processed(&store, "Subject: d\r\n\r\ny", "low").await;
        assert!(store.rerun_stage(id, "parse", "alice").await.is_err());
        assert!(store.rerun_stage(id, "nonesuch", "alice").await.is_err());
        store.rerun_stage(id, "draft", "alice").await.unwrap();
        assert_eq!(
            store.review_status(id).await.unwrap(),
            Some(ReviewStatus::InProgress)
        );
        assert!(
            store.actions(id).await.unwrap().is_empty(),
            "staged actions go"
        );
        assert!(store.stage_output(id, "draft").await.unwrap().is_none());
        assert!(store.stage_output(id, "extract").await.unwrap().is_some());
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        assert_eq!(
            (job.message_id, job.stage.as_str(), job.attempts),
            (id, "draft", 1)
        );
        let effects = StageEffects {
            output: json!({"draft": "again"}),
            ..Default::default()
        };
        assert!(
            store
                .complete(&job, &effects, Some("stage"), 3)
                .await
                .unwrap()
        );
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        assert_eq!(job.stage, "stage", "the stages after it run again");
    })
    .await;
}

/// Failures are reserved before the password check: per user name and client up to the
/// limit, and per account from anywhere with a doubling wait (issue 18, item 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_are_reserved_per_client_and_back_off_per_account() {
    use verre_store::review::{LoginLimits, LoginRefusal, LoginReservation};
    on_both("review_login_backoff", |store| async move {
        let limits = LoginLimits {
            per_client: 2,
            per_account: 3,
            window_ms: 60_000,
            max_backoff_ms: 4_000,
        };
        let t0 = now_ms();
        let reserve = |client: &'static str, at: i64| {
            let store = store.clone();
            async move {
                store
                    .reserve_login_failure("alice", client, t0 + at, &limits)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(reserve("10.0.0.1", 0).await, LoginReservation::Reserved);
        assert_eq!(reserve("10.0.0.1", 0).await, LoginReservation::Reserved);
        // The third from the same client: refused until the first leaves the window.
        assert_eq!(
            reserve("10.0.0.1", 10).await,
            LoginReservation::Refused {
                retry_after_ms: 59_990,
                reason: LoginRefusal::Client
            }
        );
        // Another client: the account's third failure is still free.
        assert_eq!(reserve("10.0.0.2", 20).await, LoginReservation::Reserved);
        // From here on the account waits 1 s after its last failure, then 2 s, capped at 4 s.
        let refused = |retry_after_ms| LoginReservation::Refused {
            retry_after_ms,
            reason: LoginRefusal::Account,
        };
        assert_eq!(reserve("10.0.0.3", 520).await, refused(500));
        assert_eq!(reserve("10.0.0.3", 1_020).await, LoginReservation::Reserved);
        assert_eq!(reserve("10.0.0.4", 2_020).await, refused(1_000));
        assert_eq!(reserve("10.0.0.4", 3_020).await, LoginReservation::Reserved);
        assert_eq!(reserve("10.0.0.5", 3_020).await, refused(4_000));
        assert_eq!(reserve("10.0.0.5", 7_020).await, LoginReservation::Reserved);
        assert_eq!(reserve("10.0.0.6", 7_020).await, refused(4_000), "capped");
        // A right password clears its client's failures, not the others'.
        store
            .clear_login_failures("alice", "10.0.0.1")
            .await
            .unwrap();
        assert_eq!(
            store.login_failures("alice", "10.0.0.1", 0).await.unwrap(),
            0
        );
        assert_eq!(
            store.login_failures("alice", "10.0.0.2", 0).await.unwrap(),
            1
        );
    })
    .await;
}

/// A message taken through extract -> stage with nothing staged (the "file" route).
async fn nothing_to_send(store: &Store, raw: &str) -> i64 {
    let id = store
        .ingest("test", "n.eml", raw.as_bytes(), "extract", 3)
        .await
        .unwrap()
        .message_id;
    for (output, next) in [
        (
            json!({"customer": "News", "threat_level": "low"}),
            Some("stage"),
        ),
        (json!({"actions": []}), None),
    ] {
        let job = store.claim("w", LEASE).await.unwrap().unwrap();
        let effects = StageEffects {
            output,
            ..Default::default()
        };
        assert!(store.complete(&job, &effects, next, 3).await.unwrap());
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_is_undone_until_the_worker_claims_it_and_nothing_to_send_is_filed() {
    on_both("review_undo", |store| async move {
        let id = processed(&store, "Subject: u\r\n\r\nundo me", "high").await;
        let news = nothing_to_send(&store, "Subject: n\r\n\r\nnewsletter").await;

        // Filing: only a message with nothing staged.
        let e = store.file_message(id, "alice").await.unwrap_err();
        assert!(e.to_string().contains("approve or reject"), "{e}");
        assert_eq!(
            store.review_status(id).await.unwrap(),
            Some(ReviewStatus::ToReview)
        );
        store.file_message(news, "alice").await.unwrap();
        assert_eq!(
            store.review_status(news).await.unwrap(),
            Some(ReviewStatus::Filed)
        );
        let filed = store
            .review_queue(&QueueFilter {
                status: Some(ReviewStatus::Filed),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            filed.iter().map(|q| q.message.id).collect::<Vec<_>>(),
            vec![news]
        );
        assert!(store.undoable(news).await.unwrap());
        store.undo_decision(news, "alice").await.unwrap();
        assert_eq!(
            store.review_status(news).await.unwrap(),
            Some(ReviewStatus::ToReview)
        );

        // An approval is undone while its outbox rows are unclaimed: nothing left to send.
        store.approve(id, "alice", &allow_all).await.unwrap();
        assert!(store.undoable(id).await.unwrap());
        store.undo_decision(id, "alice").await.unwrap();
        assert_eq!(
            store.review_status(id).await.unwrap(),
            Some(ReviewStatus::ToReview)
        );
        assert!(
            store
                .claim_delivery("worker", LEASE)
                .await
                .unwrap()
                .is_none(),
            "nothing to deliver"
        );
        assert!(
            store
                .actions(id)
                .await
                .unwrap()
                .iter()
                .all(|a| a.status == "staged")
        );
        let e = store.undo_decision(id, "alice").await.unwrap_err();
        assert!(e.to_string().contains("no decision"), "{e}");

        // Approved again, and once the worker claimed a delivery, no undo.
        store.approve(id, "alice", &allow_all).await.unwrap();
        let claimed = store.claim_delivery("worker", LEASE).await.unwrap();
        assert!(claimed.is_some());
        assert!(!store.undoable(id).await.unwrap());
        let e = store.undo_decision(id, "alice").await.unwrap_err();
        assert!(e.to_string().contains("no longer be undone"), "{e}");
        assert_eq!(
            store.review_status(id).await.unwrap(),
            Some(ReviewStatus::Approved)
        );
        let outbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE message_id = $1")
            .bind(id)
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(outbox, 2, "the unclaimed row stays with the claimed one");

        // A rejection is undone too.
        let other = processed(&store, "Subject: r\r\n\r\nreject me", "low").await;
        store.reject(other, "alice", "spam").await.unwrap();
        store.undo_decision(other, "alice").await.unwrap();
        assert_eq!(
            store.review_status(other).await.unwrap(),
            Some(ReviewStatus::ToReview)
        );
        assert!(store.audit_verify().await.unwrap().ok());
    })
    .await;
}

/// An admin's retry resets a failed delivery's attempts, but a delivery was attempted:
/// Undo is neither offered nor done (and not a foreign-key error).
#[tokio::test]
async fn no_undo_after_an_admin_retried_a_failed_delivery() {
    on_both("review_undo_retry", |store| async move {
        let id = processed(&store, "Subject: f\r\n\r\nfails once", "high").await;
        store.approve(id, "alice", &allow_all).await.unwrap();
        let entry = store
            .claim_delivery("worker", LEASE)
            .await
            .unwrap()
            .unwrap();
        let failed = AttemptRecord {
            response_status: Some(500),
            error: Some("HTTP 500".into()),
            result: DeliveryResult::Failed,
        };
        assert!(store.record_delivery(&entry, &failed).await.unwrap());
        store.retry_delivery(entry.id, "admin").await.unwrap();
        assert!(
            !store.undoable(id).await.unwrap(),
            "a delivery was attempted"
        );
        let e = store.undo_decision(id, "alice").await.unwrap_err();
        assert!(e.to_string().contains("no longer be undone"), "{e:#}");
        assert_eq!(
            store.review_status(id).await.unwrap(),
            Some(ReviewStatus::Approved)
        );
        assert_eq!(
            store.deliveries(id).await.unwrap().len(),
            2,
            "nothing removed"
        );
    })
    .await;
}

/// An approval bound to a confirmation's digest approves nothing once what is staged
/// changed; the queue's state moves with a decision.
#[tokio::test]
async fn a_stale_confirmation_approves_nothing_and_the_queue_state_moves() {
    use verre_store::review::{ChangedSinceConfirmed, staged_digest};
    on_both("review_confirmed", |store| async move {
        let id = processed(&store, "Subject: c\r\n\r\nconfirm me", "high").await;
        let shown = staged_digest(&store.actions(id).await.unwrap());
        let before = store.queue_state().await.unwrap();
        assert_eq!(store.queue_state().await.unwrap(), before, "stable");
        let reply = store.actions(id).await.unwrap()[0].id;
        let edited = json!({"to": "a@client.test", "subject": "Re: x", "body": "Unseen."});
        store
            .edit_action(reply, &edited.to_string(), "bob")
            .await
            .unwrap();
        let e = store
            .approve_confirmed(id, "alice", &allow_all, true, Some(&shown))
            .await
            .unwrap_err();
        assert!(e.is::<ChangedSinceConfirmed>(), "{e:#}");
        assert!(store.decision(id).await.unwrap().is_none());
        assert!(store.deliveries(id).await.unwrap().is_empty());
        let now_shown = staged_digest(&store.actions(id).await.unwrap());
        assert_ne!(now_shown, shown);
        store
            .approve_confirmed(id, "alice", &allow_all, true, Some(&now_shown))
            .await
            .unwrap();
        assert_eq!(store.deliveries(id).await.unwrap().len(), 2);
        assert_ne!(store.queue_state().await.unwrap(), before);
    })
    .await;
}
