//! The key verre keeps outside its database (issue 18). Audit entries are HMAC-SHA256
//! under a key derived from it ([`crate::audit`]), and content verre was told to forget is
//! named by an HMAC under another key derived from it ([`Store::forget`]). Whoever can write
//! the database but cannot read this file can neither rewrite the chain so that it still
//! verifies, nor test whether a given mail was erased.
//!
//! Where it is: `$VERRE_AUDIT_KEY_FILE`; else `audit-key` beside a SQLite database file
//! (`$VERRE_HOME/audit-key` for the default database); else `$VERRE_HOME/audit-key`
//! (PostgreSQL). An in-memory database gets a key that lives as long as the process. The
//! file is made on first use, readable by its owner only:
//!
//! ```text
//! # verre's audit key ...
//! keyed-after 41
//! 0f3c…(64 hex digits)
//! ```
//!
//! `keyed-after N` is the chain's head when the key was made: every entry after it must be
//! keyed, so a chain rewritten as plain SHA-256 by someone without the key fails
//! verification. A key file written by hand without that line still keys new entries;
//! verification then only requires that no plain entry follows a keyed one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::Row;

use crate::{Backend, Store, crypto};

/// The variable naming the audit key file.
pub const AUDIT_KEY_FILE_ENV: &str = "VERRE_AUDIT_KEY_FILE";

/// The file name of the key beside a SQLite database or in `$VERRE_HOME`.
pub const AUDIT_KEY_FILE: &str = "audit-key";

/// What the subkeys are for: each use gets its own key derived from the file's.
const CHAIN_DOMAIN: &[u8] = b"verre audit chain v1";
const FORGET_DOMAIN: &[u8] = b"verre forgotten content v1";

/// The key kept outside the database.
#[derive(Clone)]
pub struct AuditKey {
    chain: [u8; 32],
    forget: [u8; 32],
    id: String,
    keyed_after: Option<i64>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("id", &self.id)
            .field("keyed_after", &self.keyed_after)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn derive(key: &[u8; 32], domain: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(domain);
    mac.finalize().into_bytes().into()
}

impl AuditKey {
    fn from_bytes(key: [u8; 32], keyed_after: Option<i64>, path: Option<PathBuf>) -> Self {
        AuditKey {
            chain: derive(&key, CHAIN_DOMAIN),
            forget: derive(&key, FORGET_DOMAIN),
            id: crypto::key_id(&key),
            keyed_after,
            path,
        }
    }

    /// A random key that is never written anywhere (in-memory databases).
    pub fn ephemeral() -> Result<Self> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(Self::from_bytes(key, Some(0), None))
    }

    /// Read a key file's text: one line of 64 hex digits, an optional `keyed-after N`,
    /// `#` comments.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let mut key = None;
        let mut keyed_after = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(n) = line.strip_prefix("keyed-after") {
                keyed_after = Some(n.trim().parse::<i64>().with_context(|| {
                    format!("{}: `keyed-after` needs a number", origin.display())
                })?);
                continue;
            }
            let bytes = hex::decode(line).ok().filter(|b| b.len() == 32);
            let Some(bytes) = bytes else {
                bail!(
                    "{}: expected one key of 64 hex digits (and optionally `keyed-after N`)",
                    origin.display()
                );
            };
            if key.is_some() {
                bail!("{}: holds more than one key", origin.display());
            }
            key = Some(<[u8; 32]>::try_from(bytes).expect("length checked"));
        }
        let key = key.with_context(|| format!("{}: no key in it", origin.display()))?;
        Ok(Self::from_bytes(
            key,
            keyed_after,
            Some(origin.to_path_buf()),
        ))
    }

    /// Read the key at `path`, or make it (mode 0600) recording `head` as the last entry
    /// written before the chain was keyed. Two processes starting together end up with the
    /// same key: the file appears whole or not at all.
    pub fn load_or_create(path: &Path, head: i64) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = format!(
            "# verre's audit key: audit entries are HMACs under it, and erased or purged mail is\n\
             # remembered by HMACs under it. Keep it apart from the database's backups, and keep\n\
             # a copy: without it the chain cannot be verified. docs/GDPR.md\n\
             keyed-after {head}\n{}\n",
            crypto::generate_key()?
        );
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        // A hard link fails when the name exists: whoever came second reads the first key.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// The key's id, recorded with each keyed entry (a hash of the key, never the key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The last entry written before the chain was keyed, when the file records it.
    pub fn keyed_after(&self) -> Option<i64> {
        self.keyed_after
    }

    /// The file the key was read from (None: in memory only).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A MAC keyed for the audit chain.
    pub(crate) fn chain_mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.chain).expect("HMAC takes any key length")
    }

    /// The name a raw message is remembered by once forgotten: an HMAC of its content hash
    /// ([`crate::content_hash`]), in hex.
    pub fn forgotten_hash(&self, content_hash: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.forget).expect("HMAC takes any key length");
        mac.update(content_hash.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// `$VERRE_HOME` as the model store resolves it (`XDG_DATA_HOME/verre`, then
/// `~/.local/share/verre`).
fn verre_home() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(home) = var("VERRE_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(data) = var("XDG_DATA_HOME").filter(|d| Path::new(d).is_absolute()) {
        return Some(PathBuf::from(data).join("verre"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".local/share/verre"))
}

/// Where the key of the database at `url` lives; None for an in-memory database.
pub fn key_path(url: &str, backend: Backend) -> Result<Option<PathBuf>> {
    if let Some(p) = std::env::var_os(AUDIT_KEY_FILE_ENV).filter(|p| !p.is_empty()) {
        return Ok(Some(PathBuf::from(p)));
    }
    match backend {
        Backend::Sqlite => {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() || path.contains(":memory:") {
                return Ok(None);
            }
            let dir = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Ok(Some(dir.join(AUDIT_KEY_FILE)))
        }
        Backend::Postgres => verre_home()
            .map(|h| Some(h.join(AUDIT_KEY_FILE)))
            .with_context(|| {
                format!("no place for the audit key: set {AUDIT_KEY_FILE_ENV} or VERRE_HOME")
            }),
    }
}

impl Store {
    /// Load (or make) the audit key for the database at `url`.
    pub(crate) async fn load_audit_key(&self, url: &str) -> Result<AuditKey> {
        let Some(path) = key_path(url, self.backend)? else {
            return AuditKey::ephemeral();
        };
        if path.exists() {
            return AuditKey::load_or_create(&path, 0);
        }
        let head: Option<i64> = sqlx::query(
            "SELECT MAX(seq) AS seq FROM (SELECT seq FROM audit_log UNION ALL SELECT seq FROM audit_checkpoint) AS s",
        )
        .fetch_one(&self.pool)
        .await?
        .try_get("seq")?;
        AuditKey::load_or_create(&path, head.unwrap_or(0))
    }

    /// The key kept outside the database (see [`crate::audit_key`]).
    pub fn audit_key(&self) -> &AuditKey {
        &self.audit_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-key");
        let a = AuditKey::load_or_create(&path, 7).unwrap();
        assert_eq!(a.keyed_after(), Some(7));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = AuditKey::load_or_create(&path, 99).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(b.keyed_after(), Some(7), "the first head stays");
        assert_eq!(a.forgotten_hash("abc"), b.forgotten_hash("abc"));
        assert_ne!(a.forgotten_hash("abc"), a.forgotten_hash("abd"));
        let other = AuditKey::ephemeral().unwrap();
        assert_ne!(other.forgotten_hash("abc"), a.forgotten_hash("abc"));
    }

    #[test]
    fn a_bad_key_file_is_refused_with_its_name() {
        let err = AuditKey::parse("not a key\n", Path::new("/x/audit-key")).unwrap_err();
        assert!(err.to_string().contains("/x/audit-key"), "{err}");
        let k = "ab".repeat(32);
        assert!(AuditKey::parse(&format!("{k}\n{k}\n"), Path::new("k")).is_err());
        let ok = AuditKey::parse(&format!("# c\n{k}\n"), Path::new("k")).unwrap();
        assert_eq!(ok.keyed_after(), None);
    }
}
