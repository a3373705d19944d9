//! The sections of verre.toml other than backends and keys, each as the subsystem that
//! reads it takes it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

/// `[gateway]`: health checks and timeouts towards remote backends.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// How often each remote backend's `GET {url}/models` is probed; also how long a
    /// backend that failed a request is skipped. Zero: no probes.
    pub interval: Duration,
    pub connect_timeout: Duration,
    /// Most time until the response headers arrive (for a request that is not streamed,
    /// the whole generation); past it the next backend is tried.
    pub first_byte_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            first_byte_timeout: Duration::from_secs(120),
        }
    }
}

/// `[http]`: the HTTP edge.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// Origins (`https://app.example`) whose pages may call the API from a browser
    /// (CORS). None by default.
    pub cors_origins: Vec<String>,
}

/// `[gdpr]`: what the records of processing (Art. 30) say about the controller.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GdprConfig {
    /// The controller's name (the organisation running verre).
    pub controller: Option<String>,
    /// How to reach the controller, or its representative.
    pub contact: Option<String>,
    /// The data protection officer, if one is appointed.
    pub dpo: Option<String>,
    /// Why personal data is processed; the report lists defaults when empty.
    #[serde(default)]
    pub purposes: Vec<String>,
}

/// `[retention]`: how long personal data is kept, in days from arrival (unset: kept).
/// `verre purge` and `verre up`'s schedule apply it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Remove a finished message's raw bytes after this many days.
    pub raw_days: Option<u32>,
    /// Delete a finished message and everything derived from it.
    pub extracted_days: Option<u32>,
    /// Remove audit entries older than this, leaving a checkpoint.
    pub audit_days: Option<u32>,
    /// Delete a document added to the archive (`verre archive add`), with its passages.
    pub archive_days: Option<u32>,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        self.raw_days.is_none()
            && self.extracted_days.is_none()
            && self.audit_days.is_none()
            && self.archive_days.is_none()
    }
}

/// `[audit]`: what the audit log keeps of API calls.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// One metadata entry per API call (`api.chat`, actor `key:NAME`).
    #[serde(default = "yes")]
    pub api_calls: bool,
    /// Add the request body (messages, prompt, input) to each entry.
    #[serde(default)]
    pub content: bool,
}

fn yes() -> bool {
    true
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            api_calls: true,
            content: false,
        }
    }
}

/// Hours in an average month (365.25 × 24 / 12).
const HOURS_PER_MONTH: f64 = 730.5;

/// `[cost]`: what the hardware of `local = true` backends costs, and the API list prices
/// to compare with (`verre cost`, `GET /v1/verre/usage`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// What the hardware of `local = true` backends costs per month (rent, or purchase
    /// spread over its life), in euros. At most one of this and `eur_per_hour`.
    pub eur_per_month: Option<f64>,
    pub eur_per_hour: Option<f64>,
    /// Its average electrical draw.
    pub watts: Option<f64>,
    pub eur_per_kwh: Option<f64>,
    /// Dollars for one euro, to set list prices against local cost.
    #[serde(default = "default_usd_per_eur")]
    pub usd_per_eur: f64,
    /// The API prices to compare with; the default is GPT-4 Turbo and Claude 3 Opus.
    #[serde(default = "default_list_prices")]
    pub list_price: Vec<ListPrice>,
}

/// An API provider's price per million tokens, in dollars.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListPrice {
    pub name: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

fn default_usd_per_eur() -> f64 {
    1.08
}

fn default_list_prices() -> Vec<ListPrice> {
    vec![
        ListPrice {
            name: "GPT-4 Turbo".into(),
            input_usd_per_mtok: 10.0,
            output_usd_per_mtok: 30.0,
        },
        ListPrice {
            name: "Claude 3 Opus".into(),
            input_usd_per_mtok: 15.0,
            output_usd_per_mtok: 75.0,
        },
    ]
}

impl Default for CostConfig {
    fn default() -> Self {
        Self {
            eur_per_month: None,
            eur_per_hour: None,
            watts: None,
            eur_per_kwh: None,
            usd_per_eur: default_usd_per_eur(),
            list_price: default_list_prices(),
        }
    }
}

impl CostConfig {
    /// Numbers at least 0, one hardware price, watts with a price of electricity.
    pub(crate) fn check(&self) -> Result<(), String> {
        let numbers = [
            ("eur_per_month", self.eur_per_month),
            ("eur_per_hour", self.eur_per_hour),
            ("watts", self.watts),
            ("eur_per_kwh", self.eur_per_kwh),
            ("usd_per_eur", Some(self.usd_per_eur)),
        ];
        for (key, value) in numbers {
            if let Some(v) = value
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(format!("[cost] {key} = {v} must be a number of at least 0"));
            }
        }
        if self.usd_per_eur == 0.0 {
            return Err("[cost] usd_per_eur must be more than 0".into());
        }
        if self.eur_per_month.is_some() && self.eur_per_hour.is_some() {
            return Err("[cost] set eur_per_month or eur_per_hour, not both".into());
        }
        if self.watts.is_some() != self.eur_per_kwh.is_some() {
            return Err(
                "[cost] watts and eur_per_kwh go together: energy is watts × hours × eur_per_kwh"
                    .into(),
            );
        }
        for p in &self.list_price {
            if p.name.is_empty()
                || ![p.input_usd_per_mtok, p.output_usd_per_mtok]
                    .iter()
                    .all(|v| v.is_finite() && *v >= 0.0)
            {
                return Err(format!(
                    "[[cost.list_price]] {:?}: a name and prices of at least 0",
                    p.name
                ));
            }
        }
        Ok(())
    }

    /// The hardware's price for `hours`, in euros.
    pub fn hardware_eur(&self, hours: f64) -> f64 {
        self.eur_per_hour.unwrap_or(0.0) * hours
            + self.eur_per_month.unwrap_or(0.0) * hours / HOURS_PER_MONTH
    }

    /// The energy drawn in `hours`, in euros.
    pub fn energy_eur(&self, hours: f64) -> f64 {
        self.watts.unwrap_or(0.0) / 1000.0 * hours * self.eur_per_kwh.unwrap_or(0.0)
    }
}

/// `[review]`: the review UI's cookies and sessions.
#[derive(Debug, Clone)]
pub struct ReviewConfig {
    /// `Secure` on cookies: Some(true) always, Some(false) never, None when the request
    /// came over TLS (`X-Forwarded-Proto: https` from the proxy in front).
    pub secure_cookies: Option<bool>,
    pub session_ttl: Duration,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A reply whose recipient a reviewer changed needs a second approver.
    pub second_approver: bool,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            secure_cookies: None,
            session_ttl: Duration::from_secs(12 * 3600),
            session_idle: Duration::from_secs(30 * 60),
            second_approver: true,
        }
    }
}

/// `[delivery]`: where approved actions may go. Secrets stay in the environment; whatever
/// delivers reads them (`secret_env`, `username_env`, `password_env`).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Most time for one webhook attempt.
    pub timeout: Duration,
    pub webhooks: Vec<WebhookConfig>,
    pub smtp: Option<SmtpSection>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            webhooks: Vec::new(),
            smtp: None,
        }
    }
}

/// `[[delivery.webhook]]`: URLs under `url` may receive webhooks, in `jurisdiction`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: Url,
    pub jurisdiction: String,
    /// The environment variable holding the receiver's `whsec_` secret.
    pub secret_env: String,
    pub line: usize,
}

/// `[delivery.smtp]`: the relay replies go through.
#[derive(Debug, Clone)]
pub struct SmtpSection {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    pub from: String,
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    StartTls,
    Tls,
    /// To a loopback relay only.
    Plain,
}

/// `[engine]`: how local models run (`verre serve`); command-line flags win.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineConfig {
    /// How the KV cache stores keys and values: one of [`KV_CACHE_TYPES`].
    pub kv_cache_type: Option<String>,
    /// A smaller model (store name or .gguf path) with the chat models' tokenizer that
    /// drafts tokens for them (`--draft-model`).
    pub draft_model: Option<String>,
}

/// `[pii]`: how personal data is found before a request leaves for a backend that is not
/// local (`pseudonymize`). The rules always run; a named-entity model adds the names of
/// persons they miss.
#[derive(Debug, Clone, PartialEq)]
pub struct PiiConfig {
    /// A token-classification model (store name such as `rampart-ner`, or a model
    /// directory) whose person names are added to the rules' findings.
    pub ner_model: Option<String>,
    /// The probability from which a token counts as part of a person's name.
    pub ner_threshold: f32,
}

/// The threshold chosen on verre-pii's tuning splits (docs/GDPR.md): the most recall
/// with under 2% of the words of PII-free mail replaced.
pub const DEFAULT_NER_THRESHOLD: f32 = 0.8;

impl Default for PiiConfig {
    fn default() -> Self {
        PiiConfig {
            ner_model: None,
            ner_threshold: DEFAULT_NER_THRESHOLD,
        }
    }
}

/// The KV cache types the engine takes (`--kv-cache-type`).
pub const KV_CACHE_TYPES: [&str; 3] = ["f16", "q8_0", "q4_0"];
