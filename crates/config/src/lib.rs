//! verre.toml, parsed once into typed sections that each subsystem takes: the gateway its
//! backends, policy and keys, the review UI its `[review]`, delivery its `[delivery]`,
//! retention its `[retention]`. Every key is documented in docs/CONFIG.md. Unknown keys
//! and wrong types are errors, and every error found in the file says `FILE:LINE: reason`.
//!
//! Parsing reads nothing from the environment: secrets named by `*_env` keys are read by
//! whatever connects (the gateway, the delivery worker), so commands that only describe
//! the configuration (`verre gdpr report`, `verre purge`, `verre cost`) need none of them.
//!
//! ```toml
//! [policy]
//! allow_jurisdictions = ["EU"]
//!
//! [[backend]]
//! name = "frankfurt"
//! kind = "openai"
//! url = "https://vllm.fra.example.eu/v1"
//! api_key_env = "FRANKFURT_KEY"
//! jurisdiction = "EU-DE"
//! models = [{ name = "mistral-large-3", upstream = "mistralai/Mistral-Large-3", aliases = ["large"] }]
//! ```

mod backend;
pub mod policy;
mod sections;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use url::Url;

pub use backend::{BackendConfig, BackendKind, KeyLimits, ModelRoute};
pub use policy::{Policy, PolicyError};
pub use sections::{
    AuditConfig, CostConfig, DEFAULT_NER_THRESHOLD, DeliveryConfig, EngineConfig, GdprConfig,
    HealthConfig, HttpConfig, KV_CACHE_TYPES, ListPrice, PiiConfig, Retention, ReviewConfig,
    SmtpSection, SmtpSecurity, WebhookConfig,
};

/// The file name every command looks for.
pub const FILE_NAME: &str = "verre.toml";

/// Something wrong in a verre.toml: the file, the line when known, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file as the user named it.
    pub origin: String,
    /// 1-based line of the offending key or entry.
    pub line: Option<usize>,
    pub reason: String,
}

/// A parsed and checked verre.toml.
#[derive(Debug, Clone, Default)]
pub struct VerreConfig {
    /// The file, as errors name it.
    pub origin: String,
    pub policy: Policy,
    pub backends: Vec<BackendConfig>,
    /// `[gateway]`.
    pub health: HealthConfig,
    /// `[[key]]`: limits by API key name (the names in the keys file).
    pub keys: HashMap<String, KeyLimits>,
    pub retention: Retention,
    pub gdpr: GdprConfig,
    pub review: ReviewConfig,
    pub delivery: DeliveryConfig,
    pub cost: CostConfig,
    pub audit: AuditConfig,
    pub http: HttpConfig,
    pub engine: EngineConfig,
    pub pii: PiiConfig,
}

/// The verre.toml a command uses: `given` (`--config FILE`), else `verre.toml` in `home`
/// (`$VERRE_HOME`) when there is one, else `./verre.toml` when there is one, else none.
pub fn discover(given: Option<&Path>, home: Option<&Path>) -> Option<PathBuf> {
    discover_from(given, home, Path::new(""))
}

/// [`discover`] with `here` for the current directory.
fn discover_from(given: Option<&Path>, home: Option<&Path>, here: &Path) -> Option<PathBuf> {
    if let Some(path) = given {
        return Some(path.to_path_buf());
    }
    [home, Some(here)]
        .into_iter()
        .flatten()
        .map(|dir| dir.join(FILE_NAME))
        .find(|p| p.is_file())
}

impl VerreConfig {
    /// Read, parse and check a verre.toml, the egress policy included: a backend or a
    /// webhook target the policy does not allow is an error here, before anything
    /// connects anywhere.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            line: None,
            reason: format!("cannot read the config file: {e}"),
        })?;
        Self::parse(&text, &origin)
    }

    /// [`VerreConfig::load`] on text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let error = |span: Option<Range<usize>>, reason: String| ConfigError {
            origin: origin.to_string(),
            line: span.map(|s| line_of(text, s.start)),
            reason,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| error(e.span(), e.message().to_string()))?;

        let policy = Policy::new(raw.policy.allow_jurisdictions, raw.policy.allow_hosts);
        let mut backends: Vec<BackendConfig> = Vec::new();
        for entry in raw.backend {
            let span = entry.span();
            let backend = backend::check_backend(entry.into_inner(), line_of(text, span.start))
                .map_err(|reason| error(Some(span.clone()), reason))?;
            if backends.iter().any(|b| b.name == backend.name) {
                return Err(error(
                    Some(span),
                    format!("[[backend]] name {:?} is used twice", backend.name),
                ));
            }
            if let BackendKind::OpenAi { url, .. } = &backend.kind {
                policy
                    .check(&backend.name, url, backend.jurisdiction.as_deref())
                    .map_err(|refusal| error(Some(span.clone()), refusal.to_string()))?;
            }
            backends.push(backend);
        }
        backend::check_names(&backends).map_err(|(line, reason)| ConfigError {
            origin: origin.to_string(),
            line: Some(line),
            reason,
        })?;

        let mut keys = HashMap::new();
        for entry in raw.key {
            let span = entry.span();
            let key = entry.into_inner();
            if keys.contains_key(&key.name) {
                return Err(error(
                    Some(span),
                    format!("[[key]] name {:?} is used twice", key.name),
                ));
            }
            keys.insert(key.name.clone(), key.limits());
        }

        let seconds = |s: &Option<Spanned<f64>>, key: &str, default: Duration, zero: bool| {
            let Some(s) = s else { return Ok(default) };
            let v = *s.get_ref();
            if v.is_finite() && (v > 0.0 || (zero && v == 0.0)) {
                Ok(Duration::from_secs_f64(v))
            } else {
                let least = if zero { "at least 0" } else { "more than 0" };
                Err(error(
                    Some(s.span()),
                    format!("{key} = {v} must be a number of seconds, {least}"),
                ))
            }
        };
        let defaults = HealthConfig::default();
        let gateway = &raw.gateway;
        let health = HealthConfig {
            interval: seconds(
                &gateway.health_check_interval_s,
                "[gateway] health_check_interval_s",
                defaults.interval,
                true,
            )?,
            connect_timeout: seconds(
                &gateway.connect_timeout_s,
                "[gateway] connect_timeout_s",
                defaults.connect_timeout,
                true,
            )?,
            first_byte_timeout: seconds(
                &gateway.first_byte_timeout_s,
                "[gateway] first_byte_timeout_s",
                defaults.first_byte_timeout,
                true,
            )?,
        };

        let hours = |h: &Option<Spanned<f64>>, key: &str, unit: f64, default: Duration| {
            let Some(h) = h else { return Ok(default) };
            let v = *h.get_ref();
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v * unit))
            } else {
                Err(error(
                    Some(h.span()),
                    format!("{key} = {v} must be more than 0"),
                ))
            }
        };
        let review_defaults = ReviewConfig::default();
        let review = ReviewConfig {
            secure_cookies: raw.review.secure_cookies,
            session_ttl: hours(
                &raw.review.session_hours,
                "[review] session_hours",
                3600.0,
                review_defaults.session_ttl,
            )?,
            session_idle: hours(
                &raw.review.idle_minutes,
                "[review] idle_minutes",
                60.0,
                review_defaults.session_idle,
            )?,
            second_approver: raw.review.second_approver.unwrap_or(true),
        };

        let delivery = DeliveryConfig {
            timeout: seconds(
                &raw.delivery.timeout_s,
                "[delivery] timeout_s",
                DeliveryConfig::default().timeout,
                false,
            )?,
            webhooks: raw
                .delivery
                .webhook
                .into_iter()
                .map(|w| {
                    let span = w.span();
                    webhook(w.into_inner(), &policy, line_of(text, span.start))
                        .map_err(|reason| error(Some(span), reason))
                })
                .collect::<Result<_, _>>()?,
            smtp: raw
                .delivery
                .smtp
                .map(|s| {
                    let span = s.span();
                    smtp(s.into_inner(), line_of(text, span.start))
                        .map_err(|reason| error(Some(span), reason))
                })
                .transpose()?,
        };

        let cost = match raw.cost {
            None => CostConfig::default(),
            Some(c) => {
                let span = c.span();
                let cost = c.into_inner();
                cost.check().map_err(|reason| error(Some(span), reason))?;
                cost
            }
        };

        let http = HttpConfig {
            cors_origins: raw
                .http
                .cors_origins
                .into_iter()
                .map(|o| {
                    let span = o.span();
                    check_origin(o.get_ref()).map_err(|reason| {
                        error(Some(span), format!("[http] cors_origins: {reason}"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };

        let engine = EngineConfig {
            kv_cache_type: raw
                .engine
                .kv_cache_type
                .map(|t| {
                    let name = t.get_ref().to_ascii_lowercase();
                    if KV_CACHE_TYPES.contains(&name.as_str()) {
                        Ok(name)
                    } else {
                        Err(error(
                            Some(t.span()),
                            format!(
                                "[engine] kv_cache_type = {:?}: use one of {}",
                                t.get_ref(),
                                KV_CACHE_TYPES.join(", ")
                            ),
                        ))
                    }
                })
                .transpose()?,
            draft_model: raw.engine.draft_model,
        };
        let pii = PiiConfig {
            ner_model: raw.pii.ner_model,
            ner_threshold: match raw.pii.ner_threshold {
                Some(t) if !(t.get_ref() > &0.0 && t.get_ref() <= &1.0) => {
                    return Err(error(
                        Some(t.span()),
                        format!(
                            "[pii] ner_threshold is {}: it is a probability above 0, at most 1",
                            t.get_ref()
                        ),
                    ));
                }
                Some(t) => t.into_inner() as f32,
                None => DEFAULT_NER_THRESHOLD,
            },
        };

        Ok(Self {
            origin: origin.to_string(),
            policy,
            backends,
            health,
            keys,
            retention: raw.retention,
            gdpr: raw.gdpr,
            review,
            delivery,
            cost,
            audit: raw.audit,
            http,
            engine,
            pii,
        })
    }

    /// An error at `line` of this file, for checks made after parsing (a secret missing
    /// from the environment, a model that resolves nowhere).
    pub fn error(&self, line: usize, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.clone(),
            line: Some(line),
            reason: reason.into(),
        }
    }

    /// The store names of the models `kind = "local"` backends serve: what to load.
    pub fn local_models(&self) -> Vec<String> {
        let mut names = Vec::new();
        for b in &self.backends {
            if matches!(b.kind, BackendKind::Local) {
                for m in &b.models {
                    if !names.contains(&m.upstream) {
                        names.push(m.upstream.clone());
                    }
                }
            }
        }
        names
    }

    /// The `[[delivery.webhook]]` entry a webhook URL falls under, when the policy allows
    /// it; otherwise why no data may go there.
    pub fn webhook_target(&self, target: &str) -> Result<&WebhookConfig, PolicyError> {
        let declared = self
            .delivery
            .webhooks
            .iter()
            .map(|w| (&w.url, w.jurisdiction.as_str()));
        let index = self.policy.check_webhook(target, declared)?;
        Ok(&self.delivery.webhooks[index])
    }

    /// Check at start a webhook URL as a pipeline writes it, a template: the part before
    /// the first `{{` or `{%` is checked as [`VerreConfig::webhook_target`] checks a URL
    /// (its scheme, host and port must be written out; the path may go on in the
    /// template). What it renders to is checked again at approval and before each attempt.
    pub fn check_webhook_template(&self, template: &str) -> Result<(), PolicyError> {
        let cut = ["{{", "{%", "{#"]
            .iter()
            .filter_map(|tag| template.find(tag))
            .min();
        let literal = cut.map_or(template, |i| &template[..i]);
        if literal != template {
            let host_written = Url::parse(literal)
                .is_ok_and(|u| u.host_str().is_some() && literal.matches('/').count() >= 3);
            if !host_written {
                return Err(PolicyError::new(format!(
                    "webhook url {template:?}: write the scheme, host and port out (only the path may be a template), so it can be checked against [policy] before any mail is read"
                )));
            }
        }
        self.webhook_target(literal).map(|_| ())
    }
}

fn webhook(raw: RawWebhook, policy: &Policy, line: usize) -> Result<WebhookConfig, String> {
    let url = Url::parse(&raw.url)
        .map_err(|e| format!("[[delivery.webhook]] url = {:?} is not a URL: {e}", raw.url))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "[[delivery.webhook]] url = \"{url}\" must be an http:// or https:// URL with a host"
        ));
    }
    policy
        .check(&format!("webhook {url}"), &url, Some(&raw.jurisdiction))
        .map_err(|why| format!("[[delivery.webhook]]: {why}"))?;
    Ok(WebhookConfig {
        url,
        jurisdiction: raw.jurisdiction,
        secret_env: raw.secret_env,
        line,
    })
}

fn smtp(raw: RawSmtp, line: usize) -> Result<SmtpSection, String> {
    let security = match raw.security.as_str() {
        "starttls" => SmtpSecurity::StartTls,
        "tls" => SmtpSecurity::Tls,
        "plain" => SmtpSecurity::Plain,
        other => {
            return Err(format!(
                "[delivery.smtp] security = {other:?}: expected \"starttls\", \"tls\" or \"plain\" (loopback only)"
            ));
        }
    };
    if raw.username_env.is_some() != raw.password_env.is_some() {
        return Err("[delivery.smtp] username_env and password_env go together".into());
    }
    Ok(SmtpSection {
        host: raw.host,
        port: raw.port.unwrap_or(match security {
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::Plain => 25,
        }),
        security,
        username_env: raw.username_env,
        password_env: raw.password_env,
        from: raw.from,
        line,
    })
}

/// An origin as a browser sends it: `scheme://host[:port]`, nothing after.
fn check_origin(origin: &str) -> Result<String, String> {
    let url = Url::parse(origin).map_err(|e| format!("{origin:?} is not an origin: {e}"))?;
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || !url.username().is_empty()
        || !bare
        || origin.ends_with('/')
    {
        return Err(format!(
            "{origin:?} is not an origin: write scheme, host and port only, as the browser sends it (\"https://app.example\", \"http://localhost:3000\")"
        ));
    }
    Ok(origin.to_string())
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

// ---- the file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default)]
    backend: Vec<Spanned<backend::RawBackend>>,
    #[serde(default)]
    key: Vec<Spanned<backend::RawKey>>,
    #[serde(default)]
    retention: Retention,
    #[serde(default)]
    gdpr: GdprConfig,
    #[serde(default)]
    review: RawReview,
    #[serde(default)]
    delivery: RawDelivery,
    cost: Option<Spanned<CostConfig>>,
    #[serde(default)]
    audit: AuditConfig,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    pii: RawPii,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPii {
    ner_model: Option<String>,
    ner_threshold: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    kv_cache_type: Option<Spanned<String>>,
    draft_model: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    allow_jurisdictions: Vec<String>,
    #[serde(default)]
    allow_hosts: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    health_check_interval_s: Option<Spanned<f64>>,
    connect_timeout_s: Option<Spanned<f64>>,
    first_byte_timeout_s: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    cors_origins: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReview {
    secure_cookies: Option<bool>,
    session_hours: Option<Spanned<f64>>,
    idle_minutes: Option<Spanned<f64>>,
    second_approver: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    timeout_s: Option<Spanned<f64>>,
    #[serde(default)]
    webhook: Vec<Spanned<RawWebhook>>,
    smtp: Option<Spanned<RawSmtp>>,
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

#[cfg(test)]
mod tests;
