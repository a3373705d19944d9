//! Issue 22 item 3: the archive's documents and passages — sealed at rest (names, passage
//! text and vectors), re-sealed by rekey, erased whole when they mention the subject (the
//! database file scanned afterwards, as the GDPR tests do), purged past `archive_days`.

use verre_store::archive::{ArchiveAdded, NewChunk, NewDocument};
use verre_store::crypto::{Keyring, generate_key};
use verre_store::erase::Subject;
use verre_store::{Retention, Store, content_hash};

fn document(name: &str, body: &str) -> NewDocument {
    NewDocument {
        content_hash: content_hash(body.as_bytes()),
        name: name.to_string(),
        kind: "text".to_string(),
        pages: 1,
        model: "minilm-l6".to_string(),
        dimensions: 4,
    }
}

/// A vector whose bytes are easy to find in the file: 0x41424344 repeated ("DCBA").
fn marked_vector() -> Vec<f32> {
    vec![f32::from_le_bytes(*b"VECT"); 4]
}

fn chunks(body: &str) -> Vec<NewChunk> {
    body.split("\n\n")
        .enumerate()
        .map(|(i, text)| NewChunk {
            page: i as i64 + 1,
            text: text.to_string(),
            vector: marked_vector(),
        })
        .collect()
}

fn keyring() -> Keyring {
    Keyring::parse(&generate_key().unwrap(), "test").unwrap()
}

/// The bytes of the database as a copy would have them: the file and its write-ahead log.
fn file_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for name in ["verre.db", "verre.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            bytes.extend(b);
        }
    }
    bytes
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const LEASE: &str = "Lease of the warehouse at 4 quai des Chartrons.\n\nThe tenant, Jeanne Martin, pays 1,200 EUR a month.";
const MINUTES: &str = "Minutes of the board meeting.\n\nThe board approved the budget.";

#[tokio::test]
async fn archived_documents_read_back_once_and_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    let added = store
        .archive_add(&document("lease.txt", LEASE), &chunks(LEASE), "cli")
        .await
        .unwrap();
    let ArchiveAdded::Added(id) = added else {
        panic!("{added:?}")
    };
    assert_eq!(
        store
            .archive_add(&document("copy.txt", LEASE), &chunks(LEASE), "cli")
            .await
            .unwrap(),
        ArchiveAdded::Exists(id)
    );
    let docs = store.archive_documents().await.unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!((docs[0].name.as_str(), docs[0].chunks), ("lease.txt", 2));
    let passages = store.archive_chunks().await.unwrap();
    assert_eq!(passages.len(), 2);
    assert_eq!(passages[1].page, 2);
    assert!(passages[1].text.contains("Jeanne Martin"));
    assert_eq!(passages[1].vector, marked_vector());

    assert!(store.archive_remove(id, "cli").await.unwrap());
    assert!(!store.archive_remove(id, "cli").await.unwrap());
    assert!(store.archive_chunks().await.unwrap().is_empty());
}

#[tokio::test]
async fn archived_text_and_vectors_are_sealed_and_rekeyed() {
    let dir = tempfile::tempdir().unwrap();
    let clear = Store::open_in_home(dir.path()).await.unwrap();
    clear
        .archive_add(&document("lease.txt", LEASE), &chunks(LEASE), "cli")
        .await
        .unwrap();
    let store = clear.with_keys(Some(keyring())).await.unwrap();
    let report = store.rekey().await.unwrap();
    assert_eq!((report.archive_documents, report.archive_chunks), (1, 2));
    store
        .archive_add(&document("minutes.txt", MINUTES), &chunks(MINUTES), "cli")
        .await
        .unwrap();
    store.flush_deleted().await.unwrap();
    let bytes = file_bytes(dir.path());
    for needle in [
        &b"Jeanne Martin"[..],
        b"board approved",
        b"minutes.txt",
        b"VECTVECT",
    ] {
        assert!(
            !contains(&bytes, needle),
            "{} in clear in the database file",
            String::from_utf8_lossy(needle)
        );
    }
    // Read back through the keys.
    let passages = store.archive_chunks().await.unwrap();
    assert_eq!(passages.len(), 4);
    assert!(passages.iter().all(|p| p.vector == marked_vector()));
    assert!(passages.iter().any(|p| p.text.contains("Jeanne Martin")));
}

async fn erase_check(store: Store, dir: Option<&std::path::Path>) {
    store
        .archive_add(&document("lease.txt", LEASE), &chunks(LEASE), "cli")
        .await
        .unwrap();
    store
        .archive_add(&document("minutes.txt", MINUTES), &chunks(MINUTES), "cli")
        .await
        .unwrap();
    let subject = Subject::parse("Jeanne Martin").unwrap();
    let dry = store.erase(&subject, "cli", true).await.unwrap();
    assert_eq!(dry.rows.get("archive_documents"), Some(&1));
    assert_eq!(dry.rows.get("archive_chunks"), Some(&2));
    assert_eq!(store.archive_chunks().await.unwrap().len(), 4);

    let report = store.erase(&subject, "cli", false).await.unwrap();
    assert_eq!(report.rows.get("archive_documents"), Some(&1));
    assert_eq!(report.rows.get("archive_chunks"), Some(&2));
    assert!(report.residual.is_empty(), "{:?}", report.residual);
    let left = store.archive_chunks().await.unwrap();
    assert_eq!(left.len(), 2, "the other document stays");
    assert!(left.iter().all(|c| !c.text.contains("Jeanne")));
    // The same file is not archived again.
    assert_eq!(
        store
            .archive_add(&document("lease.txt", LEASE), &chunks(LEASE), "cli")
            .await
            .unwrap(),
        ArchiveAdded::Forgotten
    );
    if let Some(dir) = dir {
        let bytes = file_bytes(dir);
        assert!(!contains(&bytes, b"Jeanne Martin"));
        assert!(!contains(&bytes, b"4 quai des Chartrons"));
    }
}

#[tokio::test]
async fn erasure_removes_the_subjects_passages_and_vectors() {
    // In clear: the file is scanned for the text afterwards.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    erase_check(store, Some(dir.path())).await;
    // Sealed: erasure opens the passages to find the subject.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path())
        .await
        .unwrap()
        .with_keys(Some(keyring()))
        .await
        .unwrap();
    erase_check(store, None).await;
}

#[tokio::test]
async fn erasure_removes_the_subjects_passages_postgres() {
    let Some(url) =
        verre_store::testing::postgres_url("erasure_removes_the_subjects_passages_postgres").await
    else {
        return;
    };
    erase_check(Store::open(&url).await.unwrap(), None).await;
}

#[tokio::test]
async fn retention_deletes_documents_past_archive_days() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    store
        .archive_add(&document("lease.txt", LEASE), &chunks(LEASE), "cli")
        .await
        .unwrap();
    let keep = Retention {
        archive_days: Some(30),
        ..Default::default()
    };
    let now = verre_store::now_ms();
    let r = store.purge_at(&keep, now, false).await.unwrap();
    assert!(!r.rows.contains_key("archive_documents"));
    let later = now + 31 * 24 * 60 * 60 * 1000;
    let dry = store.purge_at(&keep, later, true).await.unwrap();
    assert_eq!(dry.rows.get("archive_chunks"), Some(&2));
    assert_eq!(store.archive_documents().await.unwrap().len(), 1);
    let r = store.purge_at(&keep, later, false).await.unwrap();
    assert_eq!(r.rows.get("archive_documents"), Some(&1));
    assert!(store.archive_documents().await.unwrap().is_empty());
}
