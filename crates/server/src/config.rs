//! `verre.toml`: the gateway's backends, its egress policy and per-key limits. Every key is
//! documented in docs/CONFIG.md; unknown keys are errors, and every error names the file,
//! the line and the key.
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

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::Url;
use serde::Deserialize;
use toml::Spanned;

use crate::cost::CostConfig;
use crate::gateway::policy::Policy;
use crate::ledger::AuditConfig;

/// A parsed and checked `verre.toml`.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub policy: Policy,
    pub backends: Vec<BackendConfig>,
    pub health: HealthConfig,
    /// Limits by API key name (the names in the keys file).
    pub keys: HashMap<String, KeyLimits>,
    /// `[retention]`: how long personal data is kept (`verre purge`).
    pub retention: verre_store::Retention,
    /// `[gdpr]`: who the controller is and why data is processed (`verre gdpr report`).
    pub gdpr: GdprConfig,
    /// `[review]` and `[delivery]`: the review UI's sessions, webhook targets, SMTP.
    pub review: crate::review::ReviewSettings,
    /// `[cost]`: hardware and list prices for `verre cost` and `/v1/verre/usage`.
    pub cost: CostConfig,
    /// `[audit]`: what the audit log keeps of API calls.
    pub audit: AuditConfig,
    /// `[http]`: what browsers may do.
    pub http: HttpConfig,
}

/// `[http]`: the HTTP edge.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// Origins (`https://app.example`) whose pages may call the API from a browser
    /// (CORS). None by default.
    pub cors_origins: Vec<String>,
}

/// `[gdpr]`: what the records of processing (Art. 30) say about the controller.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
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

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub kind: BackendKind,
    pub models: Vec<ModelRoute>,
    /// A label such as `EU-DE`; what `[policy] allow_jurisdictions` is matched against.
    pub jurisdiction: Option<String>,
    /// Whether data sent there stays on hardware the operator controls.
    pub local: bool,
    /// Lower is tried first; backends of equal priority share load by `weight`.
    pub priority: u32,
    pub weight: u32,
    /// Replace personal data with placeholders before a request leaves for a backend that
    /// is not local (restored in the answer).
    pub pseudonymize: bool,
    /// The backend serves `/v1/responses` itself (`responses = true`): Responses requests
    /// are passed through to it instead of being served as chat completions.
    pub responses: bool,
}

#[derive(Debug, Clone)]
pub enum BackendKind {
    /// A model loaded in this process; `ModelRoute::upstream` is its name in the store.
    Local,
    /// An OpenAI-compatible server; `url` ends before `/chat/completions` (usually `/v1`).
    OpenAi {
        url: Url,
        /// The bearer token, read from the environment when the config loads.
        api_key: Option<String>,
    },
}

/// A model a backend serves: the name clients use, the name the backend knows it by, and
/// other names clients may use for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    pub name: String,
    pub upstream: String,
    pub aliases: Vec<String>,
}

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

/// What one API key may do.
#[derive(Debug, Clone, Default)]
pub struct KeyLimits {
    /// `None`: every model.
    pub models: Option<Vec<String>>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_day: Option<u64>,
    /// May read every key's usage (`GET /v1/verre/usage`).
    pub admin: bool,
}

impl GatewayConfig {
    /// Read, parse and check a `verre.toml`, including the egress policy: a backend the
    /// policy does not allow is an error here, before anything connects anywhere.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// [`GatewayConfig::load`] on text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        Self::parse_with(text, origin, true)
    }

    /// [`GatewayConfig::parse`] without reading the backends' API keys from the
    /// environment (for commands that describe the configuration and connect nowhere:
    /// `verre gdpr report`, `verre purge`).
    pub fn parse_offline(text: &str, origin: &str) -> Result<Self> {
        Self::parse_with(text, origin, false)
    }

    /// [`GatewayConfig::load`] for commands that connect nowhere.
    pub fn load_offline(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Self::parse_offline(&text, &path.display().to_string())
    }

    fn parse_with(text: &str, origin: &str, read_secrets: bool) -> Result<Self> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| format!(", line {}", line_of(text, s.start)));
            anyhow::anyhow!("{origin}{}: {}", line.unwrap_or_default(), e.message())
        })?;
        let at = |span: Range<usize>| format!("{origin}, line {}", line_of(text, span.start));

        let policy = Policy::new(raw.policy.allow_jurisdictions, raw.policy.allow_hosts);
        let mut backends: Vec<BackendConfig> = Vec::new();
        for entry in raw.backend {
            let span = entry.span();
            let backend = check_backend(entry.into_inner(), read_secrets)
                .with_context(|| format!("{}: [[backend]]", at(span.clone())))?;
            if backends.iter().any(|b| b.name == backend.name) {
                bail!(
                    "{}: [[backend]] name {:?} is used twice",
                    at(span),
                    backend.name
                );
            }
            if let BackendKind::OpenAi { url, .. } = &backend.kind {
                policy
                    .check(&backend.name, url, backend.jurisdiction.as_deref())
                    .map_err(|refusal| anyhow::anyhow!("{}: {refusal}", at(span.clone())))?;
            }
            backends.push(backend);
        }
        check_names(&backends).with_context(|| origin.to_string())?;

        let mut keys = HashMap::new();
        for entry in raw.key {
            let span = entry.span();
            let RawKey {
                name,
                models,
                requests_per_minute,
                tokens_per_day,
                admin,
            } = entry.into_inner();
            if keys.contains_key(&name) {
                bail!("{}: [[key]] name {name:?} is used twice", at(span));
            }
            keys.insert(
                name,
                KeyLimits {
                    models,
                    requests_per_minute,
                    tokens_per_day,
                    admin: admin.unwrap_or(false),
                },
            );
        }

        let defaults = HealthConfig::default();
        let seconds = |s: Option<f64>, key: &str, default: Duration| -> Result<Duration> {
            match s {
                None => Ok(default),
                Some(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
                Some(s) => bail!("{origin}: [gateway] {key} = {s} is not a number of seconds"),
            }
        };
        let health = HealthConfig {
            interval: seconds(
                raw.gateway.health_check_interval_s,
                "health_check_interval_s",
                defaults.interval,
            )?,
            connect_timeout: seconds(
                raw.gateway.connect_timeout_s,
                "connect_timeout_s",
                defaults.connect_timeout,
            )?,
            first_byte_timeout: seconds(
                raw.gateway.first_byte_timeout_s,
                "first_byte_timeout_s",
                defaults.first_byte_timeout,
            )?,
        };
        let review =
            crate::review::settings::parse(raw.review, raw.delivery, &policy, read_secrets)
                .with_context(|| origin.to_string())?;
        let cost = raw.cost.unwrap_or_default();
        cost.check().with_context(|| origin.to_string())?;
        let http = HttpConfig {
            cors_origins: raw
                .http
                .cors_origins
                .iter()
                .map(|o| check_origin(o))
                .collect::<Result<_>>()
                .with_context(|| format!("{origin}: [http] cors_origins"))?,
        };
        Ok(Self {
            policy,
            backends,
            health,
            keys,
            retention: verre_store::Retention {
                raw_days: raw.retention.raw_days,
                extracted_days: raw.retention.extracted_days,
                audit_days: raw.retention.audit_days,
            },
            gdpr: raw.gdpr,
            review,
            cost,
            audit: raw.audit,
            http,
        })
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
}

fn check_backend(raw: RawBackend, read_secrets: bool) -> Result<BackendConfig> {
    let name = raw.name;
    if name.is_empty() {
        bail!("`name` is empty");
    }
    let models = raw
        .models
        .into_iter()
        .map(|m| match m {
            RawModel::Name(n) => ModelRoute {
                name: n.clone(),
                upstream: n,
                aliases: Vec::new(),
            },
            RawModel::Route {
                name,
                upstream,
                aliases,
            } => ModelRoute {
                upstream: upstream.unwrap_or_else(|| name.clone()),
                name,
                aliases,
            },
        })
        .collect::<Vec<_>>();
    if models.is_empty() {
        bail!("{name:?}: `models` lists no model");
    }
    if let Some(m) = models
        .iter()
        .find(|m| m.name.is_empty() || m.upstream.is_empty())
    {
        bail!("{name:?}: `models` has an empty name ({m:?})");
    }
    if raw.weight == Some(0) {
        bail!("{name:?}: `weight` must be at least 1");
    }
    let kind = match raw.kind.as_str() {
        "local" => {
            for (key, set) in [
                ("url", raw.url.is_some()),
                ("api_key_env", raw.api_key_env.is_some()),
            ] {
                if set {
                    bail!(
                        "{name:?}: `{key}` is for kind = \"openai\"; a local backend runs in this process"
                    );
                }
            }
            if raw.local == Some(false) {
                bail!("{name:?}: a kind = \"local\" backend is local; remove `local = false`");
            }
            BackendKind::Local
        }
        "openai" => {
            let Some(url) = raw.url else {
                bail!(
                    "{name:?}: `url` is required for kind = \"openai\" (e.g. \"http://10.0.0.5:8000/v1\")"
                );
            };
            let url = Url::parse(url.trim_end_matches('/'))
                .with_context(|| format!("{name:?}: `url` = {url:?} is not a URL"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                bail!("{name:?}: `url` = \"{url}\" must be an http:// or https:// URL with a host");
            }
            let api_key = match raw.api_key_env {
                None => None,
                Some(_) if !read_secrets => None,
                Some(var) => Some(std::env::var(&var).map_err(|_| {
                    anyhow::anyhow!("{name:?}: `api_key_env` = {var:?}, but that environment variable is not set")
                })?),
            };
            BackendKind::OpenAi { url, api_key }
        }
        other => bail!("{name:?}: `kind` = {other:?}; expected \"local\" or \"openai\""),
    };
    if raw.responses == Some(true) && matches!(kind, BackendKind::Local) {
        bail!(
            "{name:?}: `responses` is for kind = \"openai\"; a local backend's Responses requests are served by verre"
        );
    }
    let local = matches!(kind, BackendKind::Local) || raw.local.unwrap_or(false);
    Ok(BackendConfig {
        name,
        kind,
        models,
        jurisdiction: raw.jurisdiction,
        local,
        priority: raw.priority.unwrap_or(1),
        weight: raw.weight.unwrap_or(1),
        pseudonymize: raw.pseudonymize.unwrap_or(!local),
        responses: raw.responses.unwrap_or(false),
    })
}

/// An origin as a browser sends it: `scheme://host[:port]`, nothing after.
fn check_origin(origin: &str) -> Result<String> {
    let url = Url::parse(origin).with_context(|| format!("{origin:?} is not an origin"))?;
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || !url.username().is_empty()
        || !bare
        || origin.ends_with('/')
    {
        bail!(
            "{origin:?} is not an origin: write scheme, host and port only, as the browser sends it (\"https://app.example\", \"http://localhost:3000\")"
        );
    }
    Ok(origin.to_string())
}

/// A name clients use must mean one model: an alias may not be another model's name.
fn check_names(backends: &[BackendConfig]) -> Result<()> {
    let mut meaning: HashMap<&str, &str> = HashMap::new();
    for b in backends {
        for m in &b.models {
            for n in std::iter::once(&m.name).chain(&m.aliases) {
                match meaning.insert(n, &m.name) {
                    Some(prev) if prev != m.name => bail!(
                        "[[backend]] {:?}: the name {n:?} already means model {prev:?}",
                        b.name
                    ),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
    #[serde(default)]
    key: Vec<Spanned<RawKey>>,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    gdpr: GdprConfig,
    #[serde(default)]
    review: crate::review::settings::RawReview,
    #[serde(default)]
    delivery: crate::review::settings::RawDelivery,
    cost: Option<CostConfig>,
    #[serde(default)]
    audit: AuditConfig,
    #[serde(default)]
    http: RawHttp,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    cors_origins: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    raw_days: Option<u32>,
    extracted_days: Option<u32>,
    audit_days: Option<u32>,
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
    health_check_interval_s: Option<f64>,
    connect_timeout_s: Option<f64>,
    first_byte_timeout_s: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: String,
    kind: String,
    url: Option<String>,
    api_key_env: Option<String>,
    models: Vec<RawModel>,
    jurisdiction: Option<String>,
    local: Option<bool>,
    priority: Option<u32>,
    weight: Option<u32>,
    pseudonymize: Option<bool>,
    responses: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawModel {
    Name(String),
    Route {
        name: String,
        upstream: Option<String>,
        #[serde(default)]
        aliases: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    models: Option<Vec<String>>,
    requests_per_minute: Option<u32>,
    tokens_per_day: Option<u64>,
    admin: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/verre.toml");

    fn parse(text: &str) -> Result<GatewayConfig> {
        GatewayConfig::parse(text, "verre.toml")
    }

    #[test]
    fn the_example_parses() {
        // SAFETY: tests in this module read no other environment variable.
        unsafe { std::env::set_var("VERRE_EXAMPLE_FRANKFURT_KEY", "k") };
        let c = GatewayConfig::parse(
            &EXAMPLE.replace("FRANKFURT_KEY", "VERRE_EXAMPLE_FRANKFURT_KEY"),
            "examples/verre.toml",
        )
        .unwrap();
        assert_eq!(c.local_models(), ["qwen2.5-coder-1.5b"]);
        let remote = c.backends.iter().find(|b| !b.local).unwrap();
        assert!(remote.pseudonymize);
        assert_eq!(remote.jurisdiction.as_deref(), Some("EU-DE"));
        assert!(c.keys["ops"].admin && !c.keys["ci-runner"].admin);
        assert_eq!(c.cost.eur_per_month, Some(1200.0));
        assert_eq!(c.cost.list_price.len(), 2);
        assert!(c.audit.api_calls && !c.audit.content);
    }

    #[test]
    fn cors_origins_are_origins() {
        let c = parse("").unwrap();
        assert!(c.http.cors_origins.is_empty(), "none by default");
        let c =
            parse("[http]\ncors_origins = [\"https://app.example\", \"http://localhost:3000\"]\n")
                .unwrap();
        assert_eq!(
            c.http.cors_origins,
            ["https://app.example", "http://localhost:3000"]
        );
        for bad in [
            "https://app.example/",
            "https://app.example/path",
            "app.example",
            "*",
            "ftp://app.example",
        ] {
            let e = format!(
                "{:#}",
                parse(&format!("[http]\ncors_origins = [{bad:?}]\n")).unwrap_err()
            );
            assert!(e.contains("cors_origins"), "{bad}: {e}");
        }
        let e = format!("{:#}", parse("[http]\ncors = []\n").unwrap_err());
        assert!(e.contains("cors"), "{e}");
    }

    #[test]
    fn cost_and_audit_are_checked() {
        let e = format!(
            "{:#}",
            parse("[cost]\neur_per_month = 1\neur_per_hour = 2\n").unwrap_err()
        );
        assert!(e.contains("not both"), "{e}");
        let e = format!("{:#}", parse("[audit]\ncontents = true\n").unwrap_err());
        assert!(e.contains("line 2") && e.contains("contents"), "{e}");
        let c = parse("").unwrap();
        assert!(c.audit.api_calls && !c.audit.content, "audit defaults");
        assert_eq!(c.cost.usd_per_eur, 1.08);
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let e = format!(
            "{:#}",
            parse("[policy]\nallow_jurisdictions = [\"EU\"]\n\n[[backend]]\nname = \"a\"\nkind = \"local\"\nmodels = [\"m\"]\nwieght = 2\n").unwrap_err()
        );
        assert!(e.contains("line 8") && e.contains("wieght"), "{e}");

        let e = format!(
            "{:#}",
            parse("[[backend]]\nname = \"a\"\nkind = \"openai\"\nmodels = [\"m\"]\n").unwrap_err()
        );
        assert!(
            e.contains("line 1") && e.contains("`url` is required"),
            "{e}"
        );

        let e = format!(
            "{:#}",
            parse("[gateway]\nhealth_check_interval_s = \"x\"\n").unwrap_err()
        );
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn a_backend_outside_the_policy_is_refused_at_load() {
        let backend = |j: &str, url: &str| {
            format!(
                "[[backend]]\nname = \"x\"\nkind = \"openai\"\nurl = \"{url}\"\njurisdiction = \"{j}\"\nmodels = [\"m\"]\n"
            )
        };
        let eu = "[policy]\nallow_jurisdictions = [\"EU\"]\n";
        assert!(parse(&format!("{eu}{}", backend("EU-DE", "https://a.example/v1"))).is_ok());
        let e = format!(
            "{:#}",
            parse(&format!("{eu}{}", backend("US-VA", "https://a.example/v1"))).unwrap_err()
        );
        assert!(e.contains("line 3") && e.contains("US-VA"), "{e}");
        // No policy: nothing remote is allowed.
        assert!(parse(&backend("EU-DE", "https://a.example/v1")).is_err());
        // With a host list, the host must be on it too.
        let hosts = "[policy]\nallow_jurisdictions = [\"EU\"]\nallow_hosts = [\"a.example\"]\n";
        assert!(
            parse(&format!(
                "{hosts}{}",
                backend("EU-FI", "https://a.example/v1")
            ))
            .is_ok()
        );
        assert!(
            parse(&format!(
                "{hosts}{}",
                backend("EU-FI", "https://b.example/v1")
            ))
            .is_err()
        );
    }

    #[test]
    fn retention_and_gdpr_sections() {
        let c = parse(
            "[retention]\nraw_days = 30\naudit_days = 365\n\n[gdpr]\ncontroller = \"ACME SAS\"\npurposes = [\"invoices\"]\n",
        )
        .unwrap();
        assert_eq!(c.retention.raw_days, Some(30));
        assert_eq!(c.retention.extracted_days, None);
        assert_eq!(c.retention.audit_days, Some(365));
        assert_eq!(c.gdpr.controller.as_deref(), Some("ACME SAS"));
        let e = format!("{:#}", parse("[retention]\nraw_dayz = 3\n").unwrap_err());
        assert!(e.contains("line 2") && e.contains("raw_dayz"), "{e}");
        let e = format!("{:#}", parse("[retention]\nraw_days = -1\n").unwrap_err());
        assert!(e.contains("line 2"), "{e}");
        // Describing a config needs no API key from the environment.
        let remote = "[policy]\nallow_jurisdictions = [\"EU\"]\n[[backend]]\nname = \"x\"\nkind = \"openai\"\nurl = \"https://a.example/v1\"\napi_key_env = \"VERRE_TEST_SURELY_UNSET\"\njurisdiction = \"EU-DE\"\nmodels = [\"m\"]\n";
        assert!(parse(remote).is_err());
        assert!(GatewayConfig::parse_offline(remote, "verre.toml").is_ok());
    }

    #[test]
    fn a_name_means_one_model() {
        let text = "[[backend]]\nname = \"a\"\nkind = \"local\"\nmodels = [\"m\", { name = \"n\", aliases = [\"m\"] }]\n";
        assert!(format!("{:#}", parse(text).unwrap_err()).contains("already means"));
    }
}
