//! `verre up`'s inbox: a Maildir that verre owns, as a mail server's delivery agent owns
//! the mail it takes. Each message is stored (encrypted at rest when a data key is set)
//! with its parse job, then its file is deleted: the store holds the only copy, which
//! erasure and retention reach. Bytes that were erased or purged before are not stored
//! again ("forgotten") and their file goes too. See docs/INTAKE.md for why the file is
//! deleted rather than moved to `cur/`.
//!
//! Sources given to `verre intake run|watch` (a folder of .eml files, an mbox, a Maildir)
//! are the operator's and are never modified ([`crate::ingest`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use verre_store::erase::Subject;
use verre_store::{IngestOutcome, Store};

use crate::{IngestReport, MailParser, STAGES, Source};

/// The files of a Maildir's `new/` and `cur/` (not `tmp/`, where mail is still being
/// delivered), without dot files, in name order.
pub fn maildir_files(inbox: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for sub in ["new", "cur"] {
        let dir = inbox.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if !hidden && entry.file_type()?.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// How long a file must have been left unchanged before it is taken. A Maildir delivery
/// writes in `tmp/` and renames into `new/`, complete; a file written straight into `new/`
/// (by hand, by a script) may still be growing, and deleting it then would lose the rest.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Whether a file was last changed more than [`SETTLE`] ago (a time in the future counts
/// as settled: a clock skew must not hold mail back forever).
fn settled(meta: &std::fs::Metadata) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_none_or(|age| age >= SETTLE)
}

/// A file gone already (taken by another reader) is not an error.
fn remove(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {} from the inbox", path.display())),
    }
}

/// Take every message of the Maildir `inbox`: store it and enqueue its parse stage, then
/// delete its file (also when the same bytes were stored before, or are forgotten). A
/// message that cannot be stored keeps its file and fails the read; a file changed less
/// than [`SETTLE`] ago waits for the next read.
pub async fn take_inbox(store: &Store, inbox: &Path, max_attempts: u32) -> Result<IngestReport> {
    let source = Source::Maildir(inbox.to_path_buf()).describe();
    let files = {
        let inbox = inbox.to_path_buf();
        tokio::task::spawn_blocking(move || maildir_files(&inbox)).await??
    };
    let mut report = IngestReport::default();
    for path in files {
        match tokio::fs::metadata(&path).await {
            Ok(meta) if !settled(&meta) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            // Taken meanwhile (another verre on the same inbox, or an erasure).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match store
            .ingest_unless_forgotten(&source, &name, &bytes, STAGES[0], max_attempts)
            .await?
        {
            IngestOutcome::Stored(r) => {
                report.new += r.new as usize;
                if !report.ids.contains(&r.message_id) {
                    report.ids.push(r.message_id);
                }
            }
            IngestOutcome::Forgotten => report.forgotten += 1,
        }
        report.taken += remove(&path)? as usize;
    }
    Ok(report)
}

/// An inbox file that names an erased subject.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InboxFile {
    pub path: PathBuf,
    pub size: u64,
}

/// Remove from the Maildir `inbox` every message that mentions `subject` — in its bytes or
/// in what `parser` reads from it (decoded headers, bodies, attachment names and text) —
/// and remember its bytes as erased, so that a copy delivered again is not stored. With
/// `dry_run`, only list them.
pub async fn erase_from_inbox(
    store: &Store,
    inbox: &Path,
    subject: &Subject,
    parser: &MailParser,
    dry_run: bool,
) -> Result<Vec<InboxFile>> {
    let (inbox, subject_c, parser) = (inbox.to_path_buf(), subject.clone(), parser.clone());
    let found = tokio::task::spawn_blocking(move || -> Result<Vec<(InboxFile, String)>> {
        let mut found = Vec::new();
        for path in maildir_files(&inbox)? {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            if mentions(&bytes, &subject_c, &parser) {
                let hash = verre_store::content_hash(&bytes);
                found.push((
                    InboxFile {
                        path,
                        size: bytes.len() as u64,
                    },
                    hash,
                ));
            }
        }
        Ok(found)
    })
    .await??;
    if dry_run {
        return Ok(found.into_iter().map(|(f, _)| f).collect());
    }
    let hashes: Vec<String> = found.iter().map(|(_, h)| h.clone()).collect();
    // Remembered before the files go: a reader between the two steps refuses the bytes.
    store.forget(&hashes, "erased").await?;
    for (f, _) in &found {
        remove(&f.path)?;
    }
    Ok(found.into_iter().map(|(f, _)| f).collect())
}

/// Whether a raw message mentions the subject, as bytes or once parsed.
fn mentions(raw: &[u8], subject: &Subject, parser: &MailParser) -> bool {
    if subject.matches(&String::from_utf8_lossy(raw)) {
        return true;
    }
    let Ok(parsed) = parser.parse(raw) else {
        return false;
    };
    let fields = parsed.fields.to_string();
    subject.matches(&fields)
        || parsed.fields.as_object().is_some_and(|o| {
            o.values()
                .any(|v| v.as_str().is_some_and(|s| subject.matches(s)))
        })
        || parsed.parts.iter().any(|p| {
            [p.filename.as_deref(), p.text.as_deref()]
                .into_iter()
                .flatten()
                .any(|t| subject.matches(t))
                || p.pages.iter().flatten().any(|page| subject.matches(page))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write a file as if delivered a while ago (see [`SETTLE`]).
    fn deliver(path: PathBuf, bytes: impl AsRef<[u8]>) {
        std::fs::write(&path, bytes).unwrap();
        let past = SystemTime::now() - 3 * SETTLE;
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(past)
            .unwrap();
    }

    fn maildir(dir: &Path) -> PathBuf {
        let inbox = dir.join("inbox");
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(inbox.join(sub)).unwrap();
        }
        inbox
    }

    #[tokio::test]
    async fn the_inbox_is_taken_and_forgotten_bytes_are_not_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_home(dir.path()).await.unwrap();
        let inbox = maildir(dir.path());
        let a = b"From: a@example.com\r\nSubject: a\r\n\r\nA\r\n";
        let b = b"From: b@example.com\r\nSubject: b\r\n\r\nB\r\n";
        deliver(inbox.join("new/1"), a);
        deliver(inbox.join("cur/2:2,S"), b);
        std::fs::write(inbox.join("tmp/3"), b"being delivered").unwrap();
        // Still being written (changed just now): left for the next read.
        std::fs::write(inbox.join("new/0"), b"Subject: half").unwrap();
        let r = take_inbox(&store, &inbox, 3).await.unwrap();
        assert_eq!((r.new, r.forgotten, r.taken, r.ids.len()), (2, 0, 2, 2));
        assert!(inbox.join("new/0").exists(), "not settled yet");
        std::fs::remove_file(inbox.join("new/0")).unwrap();
        assert!(maildir_files(&inbox).unwrap().is_empty(), "taken");
        assert!(inbox.join("tmp/3").exists(), "tmp/ is not read");

        // The same bytes again: already stored, the file still goes.
        deliver(inbox.join("new/4"), a);
        let r = take_inbox(&store, &inbox, 3).await.unwrap();
        assert_eq!((r.new, r.forgotten, r.taken), (0, 0, 1));

        // Forgotten (as erasure and retention record them): refused and removed.
        let first = r.ids[0];
        store
            .forget(&[verre_store::content_hash(a)], "erased")
            .await
            .unwrap();
        sqlx::query("DELETE FROM jobs WHERE message_id = $1")
            .bind(first)
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query("DELETE FROM messages WHERE id = $1")
            .bind(first)
            .execute(store.pool())
            .await
            .unwrap();
        deliver(inbox.join("new/5"), a);
        let r = take_inbox(&store, &inbox, 3).await.unwrap();
        assert_eq!((r.new, r.forgotten, r.taken), (0, 1, 1));
        assert!(maildir_files(&inbox).unwrap().is_empty());
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn an_operators_source_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_home(dir.path()).await.unwrap();
        let inbox = maildir(dir.path());
        deliver(inbox.join("new/1"), b"Subject: a\r\n\r\nA\r\n");
        let eml = dir.path().join("eml");
        std::fs::create_dir(&eml).unwrap();
        std::fs::write(eml.join("1.eml"), b"Subject: e\r\n\r\nE\r\n").unwrap();
        for source in [Source::Maildir(inbox.clone()), Source::EmlDir(eml.clone())] {
            let r = crate::ingest_source(&store, &source, 3).await.unwrap();
            assert_eq!(r.new, 1);
        }
        assert!(inbox.join("new/1").exists() && eml.join("1.eml").exists());
        // Forgotten bytes in an operator's source are counted, not stored, not an error.
        store
            .forget(
                &[verre_store::content_hash(b"Subject: x\r\n\r\nX\r\n")],
                "purged",
            )
            .await
            .unwrap();
        std::fs::write(eml.join("2.eml"), b"Subject: x\r\n\r\nX\r\n").unwrap();
        let r = crate::ingest_source(&store, &Source::EmlDir(eml.clone()), 3)
            .await
            .unwrap();
        assert_eq!((r.new, r.forgotten, r.ids.len()), (0, 1, 1));
        assert!(eml.join("2.eml").exists());
    }

    #[tokio::test]
    async fn erasure_reaches_mail_still_in_the_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_home(dir.path()).await.unwrap();
        let inbox = maildir(dir.path());
        // The name only in an encoded header and a base64 body.
        let hers = "From: =?utf-8?q?Jos=C3=A9e_M=C3=BCller?= <j@example.org>\r\nSubject: hi\r\n\
                    Content-Transfer-Encoding: base64\r\n\r\nSm9zw6llIE3DvGxsZXIgaGVyZQ==\r\n";
        let other = "From: Ann <ann@example.org>\r\nSubject: hi\r\n\r\nnothing\r\n";
        deliver(inbox.join("new/1"), hers);
        deliver(inbox.join("cur/2:2,S"), other);
        let subject = Subject::parse("Josée Müller").unwrap();
        let parser = MailParser::InProcess;
        let listed = erase_from_inbox(&store, &inbox, &subject, &parser, true)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert!(inbox.join("new/1").exists(), "a dry run changes nothing");
        let erased = erase_from_inbox(&store, &inbox, &subject, &parser, false)
            .await
            .unwrap();
        assert_eq!(erased.len(), 1);
        assert!(!inbox.join("new/1").exists());
        assert!(inbox.join("cur/2:2,S").exists());
        // Delivered again: not stored.
        deliver(inbox.join("new/3"), hers);
        let r = take_inbox(&store, &inbox, 3).await.unwrap();
        assert_eq!(
            (r.new, r.forgotten),
            (1, 1),
            "only the other mail is stored"
        );
    }
}
