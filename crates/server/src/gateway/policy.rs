//! The egress policy: where data may be sent. A remote backend (or, later, a webhook
//! target) is allowed only when its jurisdiction label is on `allow_jurisdictions` and,
//! if `allow_hosts` is set, its host is on that list too. No policy allows nothing: a
//! sovereign default. It is checked when the config loads and again before every
//! connection.

use reqwest::Url;

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

    /// `Ok` when `target` (a backend named `name`, labelled `jurisdiction`) may receive
    /// data; otherwise why not, in words for the operator.
    pub fn check(
        &self,
        name: &str,
        target: &Url,
        jurisdiction: Option<&str>,
    ) -> Result<(), String> {
        let Some(jurisdiction) = jurisdiction else {
            return Err(format!(
                "backend {name:?} ({target}) has no `jurisdiction`, so [policy] cannot allow it"
            ));
        };
        if !self
            .allow_jurisdictions
            .iter()
            .any(|allowed| jurisdiction_within(jurisdiction, allowed))
        {
            return Err(format!(
                "backend {name:?} ({target}) is in jurisdiction {jurisdiction:?}, which [policy] allow_jurisdictions = {:?} does not allow",
                self.allow_jurisdictions
            ));
        }
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|h| host_matches(target, h))
        {
            return Err(format!(
                "backend {name:?} ({target}): its host is not on [policy] allow_hosts = {:?}",
                self.allow_hosts
            ));
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
