//! IMAP over TLS as a mail source: `imaps://USER@HOST[:PORT]/MAILBOX` (default port 993,
//! mailbox INBOX). The password comes from the URL or `VERRE_IMAP_PASSWORD`; the server's
//! certificate is checked against the system's roots, or only against the CA in the PEM
//! file `VERRE_IMAP_CA` (a private mail server).
//!
//! Messages are fetched with `BODY.PEEK[]` (nothing is marked read) and remembered by
//! (UIDVALIDITY, UID), so a watcher polling the mailbox fetches each message once per
//! process; the store's content hash makes a refetch harmless anyway.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::source::RawMail;

/// Where to read mail over IMAP, and which messages this process has already read.
#[derive(Debug, Clone)]
pub struct ImapSource {
    pub host: String,
    pub port: u16,
    pub user: String,
    password: String,
    pub mailbox: String,
    /// A PEM file of the only CA to trust (else the system's roots).
    pub ca: Option<std::path::PathBuf>,
    seen: Arc<Mutex<HashSet<(u32, u32)>>>,
}

impl ImapSource {
    pub fn parse(url: &str) -> Result<Self> {
        if url.starts_with("imap://") {
            bail!("{url}: use imaps:// (verre does not send IMAP passwords without TLS)");
        }
        let rest = url
            .strip_prefix("imaps://")
            .with_context(|| format!("{url}: not an imaps:// URL"))?;
        let (authority, mailbox) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = authority.rsplit_once('@').with_context(|| {
            format!("imaps://{authority}: give the user, as imaps://USER@HOST/MAILBOX")
        })?;
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u.to_string(), percent_decode(p)),
            None => (
                userinfo.to_string(),
                std::env::var("VERRE_IMAP_PASSWORD")
                    .context("no IMAP password: put it in the URL or in VERRE_IMAP_PASSWORD")?,
            ),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .with_context(|| format!("{url}: bad port {p:?}"))?,
            ),
            None => (hostport.to_string(), 993),
        };
        Ok(Self {
            host,
            port,
            user: percent_decode(&user),
            password,
            mailbox: if mailbox.is_empty() {
                "INBOX".into()
            } else {
                percent_decode(mailbox)
            },
            ca: std::env::var_os("VERRE_IMAP_CA").map(Into::into),
            seen: Arc::default(),
        })
    }

    /// Trust only the CA in this PEM file.
    pub fn with_ca(mut self, pem: impl Into<std::path::PathBuf>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    pub fn describe(&self) -> String {
        format!(
            "imaps://{}@{}:{}/{}",
            self.user, self.host, self.port, self.mailbox
        )
    }

    /// Every message in the mailbox that this process has not fetched yet.
    pub async fn fetch_new(&self) -> Result<Vec<RawMail>> {
        let what = self.describe();
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connecting to {what}"))?;
        let name = ServerName::try_from(self.host.clone())
            .with_context(|| format!("{what}: bad host name"))?;
        let tls = TlsConnector::from(Arc::new(tls_config(self.ca.as_deref())?))
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {what}"))?;
        let mut client = async_imap::Client::new(tls);
        client
            .read_response()
            .await
            .with_context(|| format!("reading the greeting of {what}"))?
            .with_context(|| format!("{what} closed the connection before its greeting"))?;
        let mut session = client
            .login(&self.user, &self.password)
            .await
            .map_err(|(e, _)| anyhow::anyhow!("logging in to {what}: {e}"))?;
        let mailbox = session
            .select(&self.mailbox)
            .await
            .with_context(|| format!("selecting {what}"))?;
        let validity = mailbox.uid_validity.unwrap_or(0);
        let uids = session
            .uid_search("ALL")
            .await
            .with_context(|| format!("listing {what}"))?;
        let mut new: Vec<u32> = {
            let seen = self.seen.lock().expect("not poisoned");
            uids.into_iter()
                .filter(|u| !seen.contains(&(validity, *u)))
                .collect()
        };
        new.sort_unstable();
        let mut mails = Vec::with_capacity(new.len());
        for chunk in new.chunks(100) {
            let set = chunk
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let fetches: Vec<_> = session
                .uid_fetch(&set, "(UID BODY.PEEK[])")
                .await
                .with_context(|| format!("fetching from {what}"))?
                .try_collect()
                .await
                .with_context(|| format!("fetching from {what}"))?;
            for f in fetches {
                let (Some(uid), Some(body)) = (f.uid, f.body()) else {
                    continue;
                };
                mails.push(RawMail {
                    source_ref: format!("{}/{validity}/{uid}", self.mailbox),
                    bytes: body.to_vec(),
                });
                self.seen
                    .lock()
                    .expect("not poisoned")
                    .insert((validity, uid));
            }
        }
        // A failed LOGOUT loses nothing: everything was fetched.
        let _ = session.logout().await;
        Ok(mails)
    }
}

fn tls_config(ca: Option<&std::path::Path>) -> Result<ClientConfig> {
    let builder = ClientConfig::builder();
    match ca {
        Some(ca) => {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading VERRE_IMAP_CA {}", ca.display()))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| anyhow::anyhow!("VERRE_IMAP_CA {}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .context("VERRE_IMAP_CA: not a usable CA certificate")?;
            }
            Ok(builder.with_root_certificates(roots).with_no_client_auth())
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            Ok(builder.with_platform_verifier()?.with_no_client_auth())
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_imaps_urls() {
        let s =
            ImapSource::parse("imaps://desk%40example.org:p%3Ass@mail.example.org:10993/Support")
                .unwrap();
        assert_eq!(
            (s.user.as_str(), s.password.as_str()),
            ("desk@example.org", "p:ss")
        );
        assert_eq!(
            (s.host.as_str(), s.port, s.mailbox.as_str()),
            ("mail.example.org", 10993, "Support")
        );
        let s = ImapSource::parse("imaps://u:p@h").unwrap();
        assert_eq!((s.port, s.mailbox.as_str()), (993, "INBOX"));
        assert!(
            ImapSource::parse("imap://u:p@h")
                .unwrap_err()
                .to_string()
                .contains("TLS")
        );
    }
}
