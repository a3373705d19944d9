//! The egress policy: where data may be sent. A remote backend is allowed only when its
//! jurisdiction label is on `allow_jurisdictions` and, if `allow_hosts` is set, its host
//! is on that list too. A target without a label (a webhook URL) is allowed only when its
//! host is on `allow_hosts`. No policy allows nothing: a sovereign default. It is checked
//! when the config loads and again before every connection.
//!
//! Whatever sends data out of verre calls [`Policy::check`] (a backend) or
//! [`Policy::check_url`] (any other target, such as a webhook) first.

use std::path::Path;

use anyhow::Context;
use reqwest::Url;
use serde::Deserialize;

/// Why the policy refuses a target, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow_jurisdictions: Vec<String>,
    allow_hosts: Vec<String>,
}

impl Policy {
    pub fn new(allow_jurisdictions: Vec<String>, allow_hosts: Vec<String>) -> Self {
        Self {
            allow_jurisdictions,
            allow_hosts,
        }
    }

    /// The `[policy]` of a `verre.toml`, without checking the rest of the file (for
    /// commands that send data out but serve no backends).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            policy: Option<Raw>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            #[serde(default)]
            allow_jurisdictions: Vec<String>,
            #[serde(default)]
            allow_hosts: Vec<String>,
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let file: File = toml::from_str(&text)
            .with_context(|| format!("reading [policy] in {}", path.display()))?;
        Ok(file.policy.map_or_else(Self::default, |p| {
            Self::new(p.allow_jurisdictions, p.allow_hosts)
        }))
    }

    /// `Ok` when `target`, a URL without a jurisdiction label (a webhook), may receive
    /// data: its host (or `host:port`) must be on `allow_hosts`. Only http and https.
    pub fn check_url(&self, target: &Url) -> Result<(), PolicyError> {
        if !matches!(target.scheme(), "http" | "https") || target.host_str().is_none() {
            return Err(PolicyError(format!(
                "{target} is not an http:// or https:// URL with a host"
            )));
        }
        if !self.allow_hosts.iter().any(|h| host_matches(target, h)) {
            return Err(PolicyError(format!(
                "{target}: its host is not on [policy] allow_hosts = {:?}, so no data may be sent there",
                self.allow_hosts
            )));
        }
        Ok(())
    }

    /// `Ok` when `target` (a backend named `name`, labelled `jurisdiction`) may receive
    /// data; otherwise why not.
    pub fn check(
        &self,
        name: &str,
        target: &Url,
        jurisdiction: Option<&str>,
    ) -> Result<(), PolicyError> {
        let Some(jurisdiction) = jurisdiction else {
            return Err(PolicyError(format!(
                "backend {name:?} ({target}) has no `jurisdiction`, so [policy] cannot allow it"
            )));
        };
        if !self
            .allow_jurisdictions
            .iter()
            .any(|allowed| jurisdiction_within(jurisdiction, allowed))
        {
            return Err(PolicyError(format!(
                "backend {name:?} ({target}) is in jurisdiction {jurisdiction:?}, which [policy] allow_jurisdictions = {:?} does not allow",
                self.allow_jurisdictions
            )));
        }
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|h| host_matches(target, h))
        {
            return Err(PolicyError(format!(
                "backend {name:?} ({target}): its host is not on [policy] allow_hosts = {:?}",
                self.allow_hosts
            )));
        }
        Ok(())
    }
}

/// `EU-DE` is within `EU` and within `EU-DE`; `EUROPE` is not within `EU`.
fn jurisdiction_within(label: &str, allowed: &str) -> bool {
    let (label, allowed) = (label.to_ascii_uppercase(), allowed.to_ascii_uppercase());
    label == allowed
        || label
            .strip_prefix(&allowed)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// An `allow_hosts` entry is a host (any port) or `host:port`.
fn host_matches(url: &Url, entry: &str) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let port = url.port_or_known_default();
    match entry.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && !h.ends_with(':') => {
            h.eq_ignore_ascii_case(host) && p.parse::<u16>().ok() == port
        }
        _ => entry.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jurisdictions_nest_by_prefix() {
        assert!(jurisdiction_within("EU-DE", "EU"));
        assert!(jurisdiction_within("eu-fi", "EU"));
        assert!(jurisdiction_within("EU-DE", "EU-DE"));
        assert!(!jurisdiction_within("EU", "EU-DE"));
        assert!(!jurisdiction_within("EUROPE", "EU"));
        assert!(!jurisdiction_within("US-VA", "EU"));
    }

    #[test]
    fn hosts_match_with_or_without_port() {
        let url = Url::parse("http://127.0.0.1:8001/v1").unwrap();
        assert!(host_matches(&url, "127.0.0.1"));
        assert!(host_matches(&url, "127.0.0.1:8001"));
        assert!(!host_matches(&url, "127.0.0.1:8002"));
        let url = Url::parse("https://vllm.example.eu/v1").unwrap();
        assert!(host_matches(&url, "vllm.example.eu:443"));
        assert!(!host_matches(&url, "example.eu"));
    }

    #[test]
    fn a_webhook_target_must_be_on_allow_hosts() {
        let policy = Policy::new(vec!["EU".into()], vec!["hooks.example.eu".into()]);
        let ok = Url::parse("https://hooks.example.eu/verre").unwrap();
        assert!(policy.check_url(&ok).is_ok());
        for refused in [
            "https://evil.example.com/hook",
            "http://127.0.0.1:9/hook",
            "ftp://hooks.example.eu/x",
        ] {
            let e = policy.check_url(&Url::parse(refused).unwrap()).unwrap_err();
            assert!(!e.to_string().is_empty(), "{refused}");
        }
        // A jurisdiction list alone allows no unlabelled target.
        assert!(
            Policy::new(vec!["EU".into()], vec![])
                .check_url(&ok)
                .is_err()
        );
        assert!(Policy::default().check_url(&ok).is_err());
    }

    #[test]
    fn the_policy_loads_alone_from_a_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verre.toml");
        std::fs::write(
            &path,
            "[policy]\nallow_hosts = [\"hooks.example.eu\"]\n[[backend]]\nname = \"x\"\n",
        )
        .unwrap();
        let policy = Policy::load(&path).unwrap();
        assert!(
            policy
                .check_url(&Url::parse("https://hooks.example.eu/").unwrap())
                .is_ok()
        );
        std::fs::write(&path, "[policy]\nallow_host = []\n").unwrap();
        assert!(Policy::load(&path).is_err(), "a misspelt key is an error");
    }

    #[test]
    fn no_policy_allows_nothing() {
        let url = Url::parse("https://vllm.example.eu/v1").unwrap();
        assert!(Policy::default().check("x", &url, Some("EU-DE")).is_err());
        assert!(
            Policy::new(vec!["EU".into()], vec![])
                .check("x", &url, None)
                .is_err()
        );
    }
}
