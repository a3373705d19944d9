//! Where messages come from: a folder of `.eml` files, a Maildir, an mbox file, or an IMAP
//! mailbox over TLS.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A mail source, recognised from what `spec` points at.
#[derive(Debug, Clone)]
pub enum Source {
    /// A folder of `*.eml` files (not recursive).
    EmlDir(PathBuf),
    /// A Maildir: a folder with `cur/` and `new/` (and `tmp/`, which is never read).
    Maildir(PathBuf),
    /// One mbox file (`From ` separated).
    Mbox(PathBuf),
    /// One `.eml` file.
    EmlFile(PathBuf),
    /// An IMAP mailbox (`imaps://USER@HOST/MAILBOX`).
    Imap(crate::imap::ImapSource),
}

/// One raw message as read from a source.
#[derive(Debug, Clone)]
pub struct RawMail {
    /// Where it came from, for people: a file name, `mbox#17`.
    pub source_ref: String,
    pub bytes: Vec<u8>,
}

impl Source {
    pub fn detect(spec: &str) -> Result<Self> {
        if spec.starts_with("imap://") || spec.starts_with("imaps://") {
            return Ok(Source::Imap(crate::imap::ImapSource::parse(spec)?));
        }
        let path = PathBuf::from(spec);
        let meta = std::fs::metadata(&path).with_context(|| format!("mail source {spec}"))?;
        if meta.is_dir() {
            if path.join("cur").is_dir() && path.join("new").is_dir() {
                Ok(Source::Maildir(path))
            } else {
                Ok(Source::EmlDir(path))
            }
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("eml"))
        {
            Ok(Source::EmlFile(path))
        } else {
            Ok(Source::Mbox(path))
        }
    }

    /// A short name for the store's `source` column.
    pub fn describe(&self) -> String {
        match self {
            Source::EmlDir(p) => format!("eml:{}", p.display()),
            Source::Maildir(p) => format!("maildir:{}", p.display()),
            Source::Mbox(p) => format!("mbox:{}", p.display()),
            Source::EmlFile(p) => format!("eml:{}", p.display()),
            Source::Imap(i) => i.describe(),
        }
    }

    /// Every message in the source (for IMAP: every message this process has not read
    /// yet), in a stable order.
    pub async fn read(&self) -> Result<Vec<RawMail>> {
        match self {
            Source::Imap(imap) => imap.fetch_new().await,
            local => {
                let local = local.clone();
                tokio::task::spawn_blocking(move || local.read_all()).await?
            }
        }
    }

    /// Every message in a local source, in a stable order.
    pub fn read_all(&self) -> Result<Vec<RawMail>> {
        match self {
            Source::Imap(i) => bail!("{}: IMAP is read with Source::read", i.describe()),
            Source::EmlFile(p) => Ok(vec![read_file(p)?]),
            Source::EmlDir(dir) => {
                let mut files = list(dir)?;
                files.retain(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("eml")));
                files.into_iter().map(|p| read_file(&p)).collect()
            }
            Source::Maildir(dir) => {
                let mut files = list(&dir.join("new"))?;
                files.extend(list(&dir.join("cur"))?);
                files.retain(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                });
                files.into_iter().map(|p| read_file(&p)).collect()
            }
            Source::Mbox(path) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("opening mbox {}", path.display()))?;
                let reader = std::io::BufReader::new(file);
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                mail_parser::mailbox::mbox::MessageIterator::new(reader)
                    .enumerate()
                    .map(|(i, m)| {
                        let m = m.with_context(|| {
                            format!("reading mbox {} at message {}", path.display(), i + 1)
                        })?;
                        Ok(RawMail {
                            source_ref: format!("{name}#{}", i + 1),
                            bytes: m.unwrap_contents(),
                        })
                    })
                    .collect()
            }
        }
    }
}

fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn read_file(p: &Path) -> Result<RawMail> {
    Ok(RawMail {
        source_ref: p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bytes: std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_eml_dirs_maildirs_and_mboxes() {
        let dir = tempfile::tempdir().unwrap();
        let eml = dir.path().join("eml");
        std::fs::create_dir(&eml).unwrap();
        std::fs::write(eml.join("b.eml"), "Subject: b\n\nB").unwrap();
        std::fs::write(eml.join("a.eml"), "Subject: a\n\nA").unwrap();
        std::fs::write(eml.join("notes.txt"), "not mail").unwrap();
        let s = Source::detect(eml.to_str().unwrap()).unwrap();
        assert!(matches!(s, Source::EmlDir(_)));
        let mails = s.read_all().unwrap();
        assert_eq!(
            mails
                .iter()
                .map(|m| m.source_ref.as_str())
                .collect::<Vec<_>>(),
            ["a.eml", "b.eml"]
        );

        let md = dir.path().join("md");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        std::fs::write(md.join("new/1"), "Subject: n\n\nN").unwrap();
        std::fs::write(md.join("cur/2:2,S"), "Subject: c\n\nC").unwrap();
        std::fs::write(md.join("tmp/3"), "Subject: t\n\nT").unwrap();
        let s = Source::detect(md.to_str().unwrap()).unwrap();
        assert!(matches!(s, Source::Maildir(_)));
        assert_eq!(s.read_all().unwrap().len(), 2, "tmp/ is never read");

        let mbox = dir.path().join("box.mbox");
        std::fs::write(
            &mbox,
            "From a@x Sat Jan  3 01:05:34 1996\nSubject: one\n\nbody 1\n\nFrom b@x Sat Jan  3 01:05:34 1996\nSubject: two\n\nbody 2\n",
        )
        .unwrap();
        let s = Source::detect(mbox.to_str().unwrap()).unwrap();
        let mails = s.read_all().unwrap();
        assert_eq!(mails.len(), 2);
        assert!(String::from_utf8_lossy(&mails[1].bytes).contains("Subject: two"));
        assert_eq!(mails[1].source_ref, "box.mbox#2");

        assert!(matches!(
            Source::detect("imaps://u:p@mail.example").unwrap(),
            Source::Imap(_)
        ));
    }
}
