//! `[review]` and `[delivery]` of `verre.toml`: cookie and session settings, the webhook
//! targets approved actions may go to (each with its jurisdiction and `whsec_` secret),
//! and the SMTP relay for replies. Checked when the config loads; webhook targets are
//! checked against the egress policy then, at approval, and before every attempt.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::Url;
use serde::Deserialize;
use tokio::sync::Notify;
use verre_delivery::WebhookSecret;
use verre_delivery::mail::{Security, SmtpConfig};
use verre_store::ActionRow;
use verre_store::review::LoginLimits;

use super::auth::PasswordChecks;
use crate::gateway::policy::Policy;

/// Everything the review UI and the delivery worker are configured with.
#[derive(Debug, Clone)]
pub struct ReviewSettings {
    /// `Secure` on cookies: Some(true) always, Some(false) never, None when the request
    /// came over TLS (`X-Forwarded-Proto: https` from the proxy in front).
    pub secure_cookies: Option<bool>,
    pub session_ttl: Duration,
    /// A session unused this long ends (`[review] idle_minutes`).
    pub session_idle: Duration,
    /// A reply whose recipient a reviewer changed needs a second approver.
    pub second_approver: bool,
    pub delivery: Arc<DeliverySettings>,
    /// Wakes the delivery worker when an approval put something in the outbox.
    pub wake: Arc<Notify>,
    /// Failed logins allowed before attempts are refused.
    pub login_limits: LoginLimits,
    /// The password checks running at once.
    pub password_checks: Arc<PasswordChecks>,
}

impl Default for ReviewSettings {
    fn default() -> Self {
        Self {
            secure_cookies: None,
            session_ttl: Duration::from_secs(12 * 3600),
            session_idle: Duration::from_secs(30 * 60),
            second_approver: true,
            delivery: Arc::default(),
            wake: Arc::default(),
            login_limits: LoginLimits::default(),
            password_checks: Arc::default(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DeliverySettings {
    pub policy: Policy,
    pub webhooks: Vec<WebhookTarget>,
    pub smtp: Option<SmtpConfig>,
    /// Per attempt.
    pub timeout: Duration,
}

/// Where webhooks may go: URLs under `url`, in `jurisdiction`, signed with `secret`.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: Url,
    pub jurisdiction: String,
    pub secret: WebhookSecret,
}

impl DeliverySettings {
    /// The configured target a webhook URL falls under, if the egress policy allows it.
    pub fn webhook_target(&self, target: &str) -> Result<&WebhookTarget, String> {
        let url = Url::parse(target).map_err(|e| format!("{target:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "{target}: only http:// and https:// webhooks are sent"
            ));
        }
        let Some(t) = self.webhooks.iter().find(|t| under(&url, &t.url)) else {
            return Err(format!(
                "{target} is under no [[delivery.webhook]] url in verre.toml, so it may not receive data"
            ));
        };
        self.policy
            .check(&format!("webhook {}", t.url), &url, Some(&t.jurisdiction))
            .map_err(|e| e.to_string())?;
        Ok(t)
    }

    /// Whether an action may be approved: webhooks to an allowed target, replies only
    /// with an SMTP relay configured.
    pub fn allow(&self, action: &ActionRow) -> Result<(), String> {
        match action.kind.as_str() {
            "webhook" => self.webhook_target(&action.target).map(|_| ()),
            "reply" if self.smtp.is_none() => {
                Err("no [delivery.smtp] relay in verre.toml: replies cannot be sent".to_string())
            }
            "reply" => Ok(()),
            other => Err(format!("unknown action kind {other:?}")),
        }
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReview {
    secure_cookies: Option<bool>,
    session_hours: Option<f64>,
    idle_minutes: Option<f64>,
    second_approver: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDelivery {
    timeout_s: Option<f64>,
    #[serde(default)]
    webhook: Vec<RawWebhook>,
    smtp: Option<RawSmtp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    jurisdiction: String,
    secret_env: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    port: Option<u16>,
    security: String,
    username_env: Option<String>,
    password_env: Option<String>,
    from: String,
}

/// Check `[review]` and `[delivery]` (secrets are read from the environment now).
pub(crate) fn parse(
    review: RawReview,
    delivery: RawDelivery,
    policy: &Policy,
    read_secrets: bool,
) -> Result<ReviewSettings> {
    let hours = review.session_hours.unwrap_or(12.0);
    if !(hours.is_finite() && hours > 0.0) {
        bail!("[review] session_hours = {hours} must be a positive number of hours");
    }
    let idle = review.idle_minutes.unwrap_or(30.0);
    if !(idle.is_finite() && idle > 0.0) {
        bail!("[review] idle_minutes = {idle} must be a positive number of minutes");
    }
    let timeout = delivery.timeout_s.unwrap_or(10.0);
    if !(timeout.is_finite() && timeout > 0.0) {
        bail!("[delivery] timeout_s = {timeout} must be a positive number of seconds");
    }
    let mut webhooks = Vec::new();
    for w in delivery.webhook {
        let url = Url::parse(&w.url)
            .with_context(|| format!("[[delivery.webhook]] url = {:?} is not a URL", w.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!(
                "[[delivery.webhook]] url = \"{url}\" must be an http:// or https:// URL with a host"
            );
        }
        policy
            .check(&format!("webhook {url}"), &url, Some(&w.jurisdiction))
            .map_err(|why| anyhow::anyhow!("[[delivery.webhook]]: {why}"))?;
        let secret = match std::env::var(&w.secret_env) {
            Ok(secret) => WebhookSecret::parse(&secret)
                .with_context(|| format!("[[delivery.webhook]] {url}: ${}", w.secret_env))?,
            // Commands that only describe the configuration (`verre gdpr report`, `verre
            // purge`, `verre cost`) deliver nothing: a throwaway secret stands in.
            Err(_) if !read_secrets => WebhookSecret::generate(),
            Err(_) => bail!(
                "[[delivery.webhook]] {url}: secret_env = {:?}, but that environment variable is not set (a whsec_ secret)",
                w.secret_env
            ),
        };
        webhooks.push(WebhookTarget {
            url,
            jurisdiction: w.jurisdiction,
            secret,
        });
    }
    let smtp = delivery
        .smtp
        .map(|s| -> Result<SmtpConfig> {
            let security = match s.security.as_str() {
                "starttls" => Security::StartTls,
                "tls" => Security::Tls,
                "plain" => Security::PlainLoopback,
                other => bail!(
                    "[delivery.smtp] security = {other:?}: expected \"starttls\", \"tls\" or \"plain\" (loopback only)"
                ),
            };
            let port = s.port.unwrap_or(match security {
                Security::StartTls => 587,
                Security::Tls => 465,
                Security::PlainLoopback => 25,
            });
            let cfg = SmtpConfig {
                host: s.host,
                port,
                security,
                username_env: s.username_env,
                password_env: s.password_env,
                from: s.from,
            };
            // Fails now on a bad address, plain SMTP off loopback, or unset credentials
            // (not checked by the commands that send nothing).
            if read_secrets {
                cfg.check().context("[delivery.smtp]")?;
            }
            Ok(cfg)
        })
        .transpose()?;
    Ok(ReviewSettings {
        secure_cookies: review.secure_cookies,
        session_ttl: Duration::from_secs_f64(hours * 3600.0),
        session_idle: Duration::from_secs_f64(idle * 60.0),
        second_approver: review.second_approver.unwrap_or(true),
        delivery: Arc::new(DeliverySettings {
            policy: policy.clone(),
            webhooks,
            smtp,
            timeout: Duration::from_secs_f64(timeout),
        }),
        wake: Arc::default(),
        login_limits: LoginLimits::default(),
        password_checks: Arc::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DeliverySettings {
        let secret = WebhookSecret::generate();
        DeliverySettings {
            policy: Policy::new(vec!["EU".into()], vec![]),
            webhooks: vec![
                WebhookTarget {
                    url: Url::parse("https://crm.example.eu/hooks/").unwrap(),
                    jurisdiction: "EU-FR".into(),
                    secret: secret.clone(),
                },
                WebhookTarget {
                    url: Url::parse("https://crm.example.eu/api").unwrap(),
                    jurisdiction: "EU-FR".into(),
                    secret: secret.clone(),
                },
                WebhookTarget {
                    url: Url::parse("https://us.example.com/").unwrap(),
                    jurisdiction: "US-VA".into(),
                    secret,
                },
            ],
            smtp: None,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn webhook_targets_must_be_declared_and_allowed() {
        let s = settings();
        assert!(
            s.webhook_target("https://crm.example.eu/hooks/intake")
                .is_ok()
        );
        for ok in [
            "https://crm.example.eu/api",
            "https://crm.example.eu/api/tickets",
        ] {
            assert!(s.webhook_target(ok).is_ok(), "{ok}");
        }
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
            assert!(s.webhook_target(bad).is_err(), "{bad}");
        }
        let e = s.webhook_target("https://us.example.com/x").unwrap_err();
        assert!(e.contains("US-VA"), "{e}");
        let reply = ActionRow {
            id: 1,
            name: "reply".into(),
            kind: "reply".into(),
            target: "a@b.test".into(),
            payload: "{}".into(),
            status: "staged".into(),
        };
        assert!(s.allow(&reply).unwrap_err().contains("smtp"));
    }

    #[test]
    fn the_sections_parse_and_errors_name_the_key() {
        let parse = |t: &str| crate::config::GatewayConfig::parse(t, "verre.toml");
        // SAFETY: no other test reads this variable.
        unsafe {
            std::env::set_var(
                "VERRE_TEST_REVIEW_HOOK_SECRET",
                WebhookSecret::generate().expose(),
            )
        };
        let ok = parse(
            r#"
[policy]
allow_jurisdictions = ["EU"]
[review]
session_hours = 2
idle_minutes = 10
second_approver = false
secure_cookies = true
[delivery]
timeout_s = 3
[[delivery.webhook]]
url = "https://crm.example.eu/hooks/"
jurisdiction = "EU-FR"
secret_env = "VERRE_TEST_REVIEW_HOOK_SECRET"
[delivery.smtp]
host = "127.0.0.1"
security = "plain"
from = "Support <support@example.eu>"
"#,
        )
        .unwrap();
        let r = &ok.review;
        assert_eq!(r.session_ttl, Duration::from_secs(7200));
        assert_eq!(r.session_idle, Duration::from_secs(600));
        assert!(!r.second_approver);
        assert_eq!(r.secure_cookies, Some(true));
        assert_eq!(r.delivery.timeout, Duration::from_secs(3));
        assert_eq!(r.delivery.smtp.as_ref().unwrap().port, 25);
        assert!(
            r.delivery
                .webhook_target("https://crm.example.eu/hooks/x")
                .is_ok()
        );

        for (text, expect) in [
            ("[delivery]\nretries = 3\n", "retries"),
            (
                "[[delivery.webhook]]\nurl = \"https://a.example/\"\njurisdiction = \"EU-FR\"\nsecret_env = \"VERRE_TEST_REVIEW_HOOK_SECRET\"\n",
                "allow_jurisdictions",
            ),
            (
                "[policy]\nallow_jurisdictions = [\"EU\"]\n[[delivery.webhook]]\nurl = \"https://a.example/\"\njurisdiction = \"EU-FR\"\nsecret_env = \"VERRE_TEST_REVIEW_UNSET\"\n",
                "VERRE_TEST_REVIEW_UNSET",
            ),
            (
                "[delivery.smtp]\nhost = \"mail.example.eu\"\nsecurity = \"plain\"\nfrom = \"a@b.test\"\n",
                "unencrypted",
            ),
            ("[review]\nsession_hours = 0\n", "session_hours"),
            ("[review]\nidle_minutes = -1\n", "idle_minutes"),
        ] {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains(expect), "{text}: {e}");
        }
    }
}
