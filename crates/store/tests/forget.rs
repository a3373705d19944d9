//! Issue 18, item 3: bytes that were erased or purged are remembered by a keyed hash and
//! never stored again; and a dry-run purge reports exactly what the real one removes.

use std::time::Duration;

use verre_store::erase::Subject;
use verre_store::{IngestOutcome, Retention, Store, content_hash};

const DAY: i64 = 24 * 60 * 60 * 1000;

fn mail(from: &str, body: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: desk@example.org\r\nSubject: hello\r\n\r\n{body}\r\n").into_bytes()
}

/// Store `raws` and quarantine each (a finished message retention may take).
async fn quarantined(store: &Store, raws: &[Vec<u8>]) -> Vec<i64> {
    let mut ids = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let r = store
            .ingest("test", &format!("{i}.eml"), raw, "parse", 1)
            .await
            .unwrap();
        ids.push(r.message_id);
    }
    while let Some(job) = store.claim("w", Duration::from_secs(30)).await.unwrap() {
        store
            .fail(&job, "not an invoice", true, Duration::from_millis(1))
            .await
            .unwrap();
    }
    ids
}

async fn age(store: &Store, days: i64) {
    sqlx::query("UPDATE messages SET received_at = received_at - $1")
        .bind(days * DAY)
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn erased_and_purged_bytes_are_not_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    let jeanne = mail("Jeanne Martin <jeanne@example.fr>", "my order");
    let paul = mail("paul@example.de", "Rechnung");
    let carol = mail("carol@example.net", "hello");
    quarantined(&store, &[jeanne.clone(), paul.clone()]).await;
    age(&store, 40).await;
    let carol_id = store
        .ingest("test", "c.eml", &carol, "parse", 1)
        .await
        .unwrap()
        .message_id;

    store
        .erase(&Subject::parse("jeanne@example.fr").unwrap(), "cli", false)
        .await
        .unwrap();
    let purge = Retention {
        extracted_days: Some(30),
        ..Default::default()
    };
    let r = verre_store::retention::purge(&store, &purge, false)
        .await
        .unwrap();
    assert_eq!(r.messages_deleted, 1, "Paul's");

    for raw in [&jeanne, &paul] {
        let again = store
            .ingest_unless_forgotten("test", "again.eml", raw, "parse", 1)
            .await
            .unwrap();
        assert_eq!(again, IngestOutcome::Forgotten);
        let e = store
            .ingest("test", "again.eml", raw, "parse", 1)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("erased or purged"), "{e:#}");
    }
    let kept = store
        .ingest_unless_forgotten("test", "c.eml", &carol, "parse", 1)
        .await
        .unwrap();
    assert!(
        matches!(kept, IngestOutcome::Stored(i) if i.message_id == carol_id && !i.new),
        "{kept:?}"
    );
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);

    // Remembered by keyed hashes: neither the content hash nor anything of the content.
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT hash, reason FROM forgotten")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let mut reasons: Vec<&str> = rows.iter().map(|(_, r)| r.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons, ["erased", "purged"]);
    for (hash, _) in &rows {
        assert_ne!(hash, &content_hash(&jeanne));
        assert_ne!(hash, &content_hash(&paul));
    }
    // Another key (another installation, or a copy of the database without the key file)
    // does not recognise them.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("verre.db"), copy.path().join("verre.db")).unwrap();
    drop(store);
    let other = Store::open_in_home(copy.path()).await.unwrap();
    assert!(!other.is_forgotten(&content_hash(&jeanne)).await.unwrap());
}

#[tokio::test]
async fn a_dry_run_purge_reports_what_the_real_one_removes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    // Eight past both raw_days and extracted_days, three past raw_days only.
    let old: Vec<Vec<u8>> = (0..8)
        .map(|i| mail("a@example.com", &format!("old {i}")))
        .collect();
    quarantined(&store, &old).await;
    age(&store, 400).await;
    let middle: Vec<Vec<u8>> = (0..3)
        .map(|i| mail("b@example.com", &format!("middle {i}")))
        .collect();
    quarantined(&store, &middle).await;
    age(&store, 100).await;
    let retention = Retention {
        raw_days: Some(90),
        extracted_days: Some(365),
        audit_days: None,
        ..Default::default()
    };
    let dry = verre_store::retention::purge(&store, &retention, true)
        .await
        .unwrap();
    let real = verre_store::retention::purge(&store, &retention, false)
        .await
        .unwrap();
    assert_eq!(
        (dry.raw_purged, dry.messages_deleted, &dry.rows),
        (real.raw_purged, real.messages_deleted, &real.rows)
    );
    assert_eq!((real.raw_purged, real.messages_deleted), (3, 8));
}
