//! API keys: a file of salted SHA-256 hashes, one key per line, never the keys themselves.
//!
//! ```text
//! # verre API keys: NAME:sha256:SALT:HASH (hex); HASH = sha256(SALT bytes ++ key)
//! ci-runner:sha256:3f1c…:9a7b…
//! ```
//!
//! `verre keys add NAME --file F` appends a line and prints the new key once. Keys are
//! random (192 bits), so one fast salted hash is enough: there is nothing to guess.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

const HEADER: &str =
    "# verre API keys: NAME:sha256:SALT:HASH (hex); HASH = sha256(SALT bytes ++ key)\n";
const KEY_PREFIX: &str = "vk-";

/// The keys a server accepts.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    entries: Vec<KeyEntry>,
}

#[derive(Debug, Clone)]
struct KeyEntry {
    name: String,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl ApiKeys {
    /// Read a keys file. Errors name the file and the line.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the API keys file {}", path.display()))?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry =
                parse_line(line).with_context(|| format!("{}, line {}", path.display(), i + 1))?;
            entries.push(entry);
        }
        Ok(Self { entries })
    }

    /// The name of the key, if it is one of ours.
    pub fn verify(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| constant_time_eq(&hash(&e.salt, key), &e.hash))
            .map(|e| e.name.as_str())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Make a new key named `name`, append its hash to the keys file (created readable by its
/// owner only) and return the key: the only time it is ever shown.
pub fn add_key(path: &Path, name: &str) -> Result<String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        bail!("a key name is letters, digits and - _ . @ (got {name:?})");
    }
    let exists = path.exists();
    if exists {
        let keys = ApiKeys::load(path)?;
        if keys.names().any(|n| n == name) {
            bail!("{}: a key named {name:?} exists already", path.display());
        }
    }
    let key = format!("{KEY_PREFIX}{}", hex::encode(rand::random::<[u8; 24]>()));
    let salt: [u8; 16] = rand::random();
    let line = format!(
        "{name}:sha256:{}:{}\n",
        hex::encode(salt),
        hex::encode(hash(&salt, &key))
    );
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("opening the API keys file {}", path.display()))?;
    let text = if exists {
        line
    } else {
        format!("{HEADER}{line}")
    };
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing the API keys file {}", path.display()))?;
    Ok(key)
}

fn parse_line(line: &str) -> Result<KeyEntry> {
    let fields: Vec<&str> = line.split(':').collect();
    let [name, algorithm, salt, hash] = fields[..] else {
        bail!("expected NAME:sha256:SALT:HASH");
    };
    if algorithm != "sha256" {
        bail!("unknown hash {algorithm:?} (verre writes sha256)");
    }
    let salt = hex::decode(salt).context("the salt is not hex")?;
    let hash = hex::decode(hash).context("the hash is not hex")?;
    if hash.len() != 32 {
        bail!("the hash is {} bytes, a sha256 is 32", hash.len());
    }
    Ok(KeyEntry {
        name: name.to_string(),
        salt,
        hash,
    })
}

fn hash(salt: &[u8], key: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(key.as_bytes());
    h.finalize().to_vec()
}

/// Equal bytes, in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_keys_verify_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let a = add_key(&path, "alice").unwrap();
        let b = add_key(&path, "bob").unwrap();
        assert!(a.starts_with(KEY_PREFIX) && a != b);
        let keys = ApiKeys::load(&path).unwrap();
        assert_eq!(keys.verify(&a), Some("alice"));
        assert_eq!(keys.verify(&b), Some("bob"));
        assert_eq!(keys.verify("vk-wrong"), None);
        assert_eq!(keys.verify(""), None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&a[3..]), "the key itself is never stored");
        assert!(add_key(&path, "alice").is_err(), "names are unique");
        assert!(add_key(&path, "no spaces").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_bad_line_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# comment\nalice:md5:00:00\n").unwrap();
        let e = format!("{:#}", ApiKeys::load(&path).unwrap_err());
        assert!(e.contains("line 2") && e.contains("md5"), "{e}");
    }
}
