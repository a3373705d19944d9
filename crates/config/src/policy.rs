//! The egress policy: where data may be sent. A remote backend is allowed only when its
//! jurisdiction label is on `allow_jurisdictions` and, if `allow_hosts` is set, its host
//! is on that list too. A target without a label (a webhook URL) is allowed only when its
//! host is on `allow_hosts`. No policy allows nothing: a sovereign default. It is checked
//! when the config loads and again before every connection.
//!
//! Whatever sends data out of verre calls [`Policy::check`] (a backend),
//! [`Policy::check_webhook`] (a webhook under the declared `[[delivery.webhook]]` targets)
//! or [`Policy::check_url`] (any other target) first.

use url::Url;

/// Why the policy refuses a target, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

impl PolicyError {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

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

    /// `allow_jurisdictions` as written.
    pub fn allow_jurisdictions(&self) -> &[String] {
        &self.allow_jurisdictions
    }

    /// `allow_hosts` as written (empty: no host check for labelled targets).
    pub fn allow_hosts(&self) -> &[String] {
        &self.allow_hosts
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

impl Policy {
    /// Which of the `declared` webhook targets (`[[delivery.webhook]]`: a URL prefix and its
    /// jurisdiction) `target` falls under, when the policy allows that one; otherwise why
    /// no data may go there. The same check at start, at approval and before each attempt.
    pub fn check_webhook<'a>(
        &self,
        target: &str,
        declared: impl IntoIterator<Item = (&'a Url, &'a str)>,
    ) -> Result<usize, PolicyError> {
        let url =
            Url::parse(target).map_err(|e| PolicyError(format!("{target:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PolicyError(format!(
                "{target}: only http:// and https:// webhooks are sent"
            )));
        }
        let Some((index, (prefix, jurisdiction))) = declared
            .into_iter()
            .enumerate()
            .find(|(_, (prefix, _))| under(&url, prefix))
        else {
            return Err(PolicyError(format!(
                "{target} is under no [[delivery.webhook]] url in verre.toml, so it may not receive data"
            )));
        };
        self.check(&format!("webhook {prefix}"), &url, Some(jurisdiction))?;
        Ok(index)
    }
}

/// Same scheme, host and port, and the path within the prefix's path on a segment
/// boundary (`/hooks` covers `/hooks` and `/hooks/crm`, not `/hooks-admin`).
fn under(url: &Url, prefix: &Url) -> bool {
    let within = match url.path().strip_prefix(prefix.path()) {
        Some(rest) => prefix.path().ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    };
    url.scheme() == prefix.scheme()
        && url.host_str() == prefix.host_str()
        && url.port_or_known_default() == prefix.port_or_known_default()
        && within
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
    fn a_webhook_must_fall_under_a_declared_target_the_policy_allows() {
        let policy = Policy::new(vec!["EU".into()], vec![]);
        let hooks = Url::parse("https://crm.example.eu/hooks/").unwrap();
        let api = Url::parse("https://crm.example.eu/api").unwrap();
        let us = Url::parse("https://us.example.com/").unwrap();
        let declared = [(&hooks, "EU-FR"), (&api, "EU-FR"), (&us, "US-VA")];
        let check = |t: &str| policy.check_webhook(t, declared);
        assert_eq!(check("https://crm.example.eu/hooks/intake"), Ok(0));
        assert_eq!(check("https://crm.example.eu/api"), Ok(1));
        assert_eq!(check("https://crm.example.eu/api/tickets"), Ok(1));
        for bad in [
            "https://crm.example.eu/api-admin",
            "https://crm.example.eu/apix/tickets",
            "https://crm.example.eu/other",
            "http://crm.example.eu/hooks/intake",
            "https://crm.example.eu:8443/hooks/intake",
            "https://evil.example/hooks/",
            "ftp://crm.example.eu/hooks/x",
            "not a url",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        let e = check("https://us.example.com/x").unwrap_err();
        assert!(e.to_string().contains("US-VA"), "{e}");
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
