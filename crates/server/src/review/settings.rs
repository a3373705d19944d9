//! The review UI's and delivery worker's settings, from `[review]` and `[delivery]` of
//! `verre.toml` (verre-config checks them when the file loads): cookie and session
//! settings, the webhook targets approved actions may go to (each with its jurisdiction
//! and `whsec_` secret, read from the environment here), and the SMTP relay for replies.
//! Webhook targets are checked against the egress policy when the file loads, at
//! approval, and before every attempt.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::Url;
use tokio::sync::Notify;
use verre_delivery::WebhookSecret;
use verre_delivery::mail::{Security, SmtpConfig};
use verre_store::ActionRow;
use verre_store::review::LoginLimits;

use super::auth::PasswordChecks;
use crate::config::VerreConfig;
use crate::gateway::policy::Policy;
use verre_config::SmtpSecurity;

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
    /// What a form post tells the page it redirects to (post/redirect/get).
    pub flashes: Arc<super::flash::Flashes>,
    /// The queue's rankings, reused while the queue does not change.
    pub rankings: Arc<super::triage::RankingCache>,
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
            flashes: Arc::default(),
            rankings: Arc::default(),
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
        let declared = self
            .webhooks
            .iter()
            .map(|t| (&t.url, t.jurisdiction.as_str()));
        let index = self
            .policy
            .check_webhook(target, declared)
            .map_err(|e| e.to_string())?;
        Ok(&self.webhooks[index])
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

impl ReviewSettings {
    /// The settings of `[review]` and `[delivery]`, with the webhook secrets and SMTP
    /// credentials read from the environment now: unset or malformed is an error with the
    /// entry's line.
    pub fn from_config(config: &VerreConfig) -> Result<Self> {
        let (review, delivery) = (&config.review, &config.delivery);
        let mut webhooks = Vec::new();
        for w in &delivery.webhooks {
            let secret = std::env::var(&w.secret_env).map_err(|_| {
                config.error(
                    w.line,
                    format!(
                        "[[delivery.webhook]] {}: secret_env = {:?}, but that environment variable is not set (a whsec_ secret)",
                        w.url, w.secret_env
                    ),
                )
            })?;
            let secret = WebhookSecret::parse(&secret).with_context(|| {
                config.error(
                    w.line,
                    format!("[[delivery.webhook]] {}: ${}", w.url, w.secret_env),
                )
            })?;
            webhooks.push(WebhookTarget {
                url: w.url.clone(),
                jurisdiction: w.jurisdiction.clone(),
                secret,
            });
        }
        let smtp = delivery
            .smtp
            .as_ref()
            .map(|s| -> Result<SmtpConfig> {
                let cfg = SmtpConfig {
                    host: s.host.clone(),
                    port: s.port,
                    security: match s.security {
                        SmtpSecurity::StartTls => Security::StartTls,
                        SmtpSecurity::Tls => Security::Tls,
                        SmtpSecurity::Plain => Security::PlainLoopback,
                    },
                    username_env: s.username_env.clone(),
                    password_env: s.password_env.clone(),
                    from: s.from.clone(),
                };
                // A bad address, plain SMTP off loopback, unset credentials.
                cfg.check()
                    .with_context(|| config.error(s.line, "[delivery.smtp]"))?;
                Ok(cfg)
            })
            .transpose()?;
        Ok(Self {
            secure_cookies: review.secure_cookies,
            session_ttl: review.session_ttl,
            session_idle: review.session_idle,
            second_approver: review.second_approver,
            delivery: Arc::new(DeliverySettings {
                policy: config.policy.clone(),
                webhooks,
                smtp,
                timeout: delivery.timeout,
            }),
            ..Self::default()
        })
    }
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
    fn secrets_are_read_when_the_settings_are_made() {
        let settings =
            |t: &str| ReviewSettings::from_config(&VerreConfig::parse(t, "verre.toml").unwrap());
        // SAFETY: no other test reads this variable.
        unsafe {
            std::env::set_var(
                "VERRE_TEST_REVIEW_HOOK_SECRET",
                WebhookSecret::generate().expose(),
            )
        };
        let ok = settings(
            r#"
[policy]
allow_jurisdictions = ["EU"]
[review]
session_hours = 2
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
        assert_eq!(ok.session_ttl, Duration::from_secs(7200));
        assert_eq!(ok.delivery.timeout, Duration::from_secs(3));
        assert_eq!(ok.delivery.smtp.as_ref().unwrap().port, 25);
        assert!(
            ok.delivery
                .webhook_target("https://crm.example.eu/hooks/x")
                .is_ok()
        );

        for (text, expect) in [
            (
                "[policy]\nallow_jurisdictions = [\"EU\"]\n[[delivery.webhook]]\nurl = \"https://a.example/\"\njurisdiction = \"EU-FR\"\nsecret_env = \"VERRE_TEST_REVIEW_UNSET\"\n",
                "verre.toml:3: [[delivery.webhook]] https://a.example/: secret_env = \"VERRE_TEST_REVIEW_UNSET\"",
            ),
            (
                "\n[delivery.smtp]\nhost = \"mail.example.eu\"\nsecurity = \"plain\"\nfrom = \"a@b.test\"\n",
                "verre.toml:2: [delivery.smtp]",
            ),
        ] {
            let e = format!("{:#}", settings(text).unwrap_err());
            assert!(e.starts_with(expect), "{text}: {e}");
        }
        let e = format!(
            "{:#}",
            settings("\n[delivery.smtp]\nhost = \"mail.example.eu\"\nsecurity = \"plain\"\nfrom = \"a@b.test\"\n").unwrap_err()
        );
        assert!(e.contains("unencrypted"), "{e}");
    }
}
