//! Reply mail over SMTP with lettre: STARTTLS (port 587) or implicit TLS (465) with
//! rustls, credentials from the environment; plain SMTP only to a loopback relay.

use anyhow::{Context, Result, bail};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Upgrade with STARTTLS, and refuse a server that does not offer it.
    StartTls,
    /// TLS from the first byte.
    Tls,
    /// No encryption: allowed to a loopback relay only (a local MTA, a test sink).
    PlainLoopback,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Environment variables holding the user name and password (none: no login).
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    /// The sender, e.g. `Intake <intake@example.com>`.
    pub from: String,
}

/// A reply to send: threaded under the message it answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub to: String,
    pub subject: String,
    pub body: String,
    /// The `Message-ID` of the mail being answered.
    pub in_reply_to: Option<String>,
    /// This reply's own `Message-ID` (`<...@...>`), the same on every attempt so a repeat
    /// can be recognised; None: a new one.
    pub message_id: Option<String>,
}

impl SmtpConfig {
    /// Check the configuration without connecting (and without a runtime): the sender
    /// address, plain SMTP only to loopback, credentials present in the environment.
    pub fn check(&self) -> Result<()> {
        self.from
            .parse::<Mailbox>()
            .with_context(|| format!("SMTP from address {:?}", self.from))?;
        if self.security == Security::PlainLoopback {
            let loopback = self.host == "localhost"
                || self
                    .host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                bail!(
                    "plain SMTP to {} would send mail unencrypted: use starttls or tls (plain is for a loopback relay only)",
                    self.host
                );
            }
        }
        self.credentials().map(|_| ())
    }

    fn credentials(&self) -> Result<Option<Credentials>> {
        let (Some(user), Some(pass)) = (&self.username_env, &self.password_env) else {
            return Ok(None);
        };
        let user = std::env::var(user).with_context(|| format!("SMTP user: ${user} is not set"))?;
        let pass =
            std::env::var(pass).with_context(|| format!("SMTP password: ${pass} is not set"))?;
        Ok(Some(Credentials::new(user, pass)))
    }
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// A transport for `cfg` (checked first); connects on the first send. Needs a Tokio
    /// runtime.
    pub fn new(cfg: &SmtpConfig) -> Result<Self> {
        cfg.check()?;
        let builder = match cfg.security {
            Security::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host)?,
            Security::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host)?,
            Security::PlainLoopback => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host)
            }
        };
        let mut builder = builder.port(cfg.port);
        if let Some(credentials) = cfg.credentials()? {
            builder = builder.credentials(credentials);
        }
        Ok(Self {
            transport: builder.build(),
            from: cfg
                .from
                .parse()
                .with_context(|| format!("SMTP from address {:?}", cfg.from))?,
        })
    }

    /// The domain of the sender address (for `Message-ID`s).
    pub fn domain(&self) -> &str {
        self.from.email.domain()
    }

    /// Send one reply; returns the `Message-ID` it was given.
    pub async fn send(&self, reply: &Reply) -> Result<String> {
        let to: Mailbox = reply
            .to
            .parse()
            .with_context(|| format!("recipient address {:?}", reply.to))?;
        let domain = self.from.email.domain().to_string();
        let id = reply
            .message_id
            .clone()
            .unwrap_or_else(|| format!("<{}@{domain}>", crate::webhook::new_message_id()));
        let mut message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&reply.subject)
            .message_id(Some(id.clone()))
            .header(ContentType::TEXT_PLAIN);
        if let Some(parent) = &reply.in_reply_to {
            message = message
                .in_reply_to(parent.clone())
                .references(parent.clone());
        }
        let message = message.body(reply.body.clone())?;
        self.transport
            .send(message)
            .await
            .context("sending the reply over SMTP")?;
        Ok(id)
    }
}
