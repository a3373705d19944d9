//! `[[backend]]` and `[[key]]`: where models are served, and what each API key may do.

use std::collections::HashMap;

use serde::Deserialize;
use url::Url;

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
    /// The line of its `[[backend]]` in the file, for errors found later at start.
    pub line: usize,
}

#[derive(Debug, Clone)]
pub enum BackendKind {
    /// A model loaded in this process; `ModelRoute::upstream` is its name in the store.
    Local,
    /// An OpenAI-compatible server; `url` ends before `/chat/completions` (usually `/v1`).
    OpenAi {
        url: Url,
        /// The environment variable holding its bearer token; read by whatever connects
        /// (the gateway), never by commands that only describe the configuration.
        api_key_env: Option<String>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
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
pub(crate) struct RawKey {
    pub(crate) name: String,
    models: Option<Vec<String>>,
    requests_per_minute: Option<u32>,
    tokens_per_day: Option<u64>,
    admin: Option<bool>,
}

impl RawKey {
    pub(crate) fn limits(self) -> KeyLimits {
        KeyLimits {
            models: self.models,
            requests_per_minute: self.requests_per_minute,
            tokens_per_day: self.tokens_per_day,
            admin: self.admin.unwrap_or(false),
        }
    }
}

/// Check one `[[backend]]`; the error is the reason alone (the caller adds file and line).
pub(crate) fn check_backend(raw: RawBackend, line: usize) -> Result<BackendConfig, String> {
    let name = raw.name;
    if name.is_empty() {
        return Err("[[backend]] `name` is empty".into());
    }
    let at = format!("[[backend]] {name:?}");
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
        return Err(format!("{at}: `models` lists no model"));
    }
    if let Some(m) = models
        .iter()
        .find(|m| m.name.is_empty() || m.upstream.is_empty())
    {
        return Err(format!("{at}: `models` has an empty name ({m:?})"));
    }
    if raw.weight == Some(0) {
        return Err(format!("{at}: `weight` must be at least 1"));
    }
    let kind = match raw.kind.as_str() {
        "local" => {
            for (key, set) in [
                ("url", raw.url.is_some()),
                ("api_key_env", raw.api_key_env.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "{at}: `{key}` is for kind = \"openai\"; a local backend runs in this process"
                    ));
                }
            }
            if raw.local == Some(false) {
                return Err(format!(
                    "{at}: a kind = \"local\" backend is local; remove `local = false`"
                ));
            }
            BackendKind::Local
        }
        "openai" => {
            let Some(url) = raw.url else {
                return Err(format!(
                    "{at}: `url` is required for kind = \"openai\" (e.g. \"http://10.0.0.5:8000/v1\")"
                ));
            };
            let parsed = Url::parse(url.trim_end_matches('/'))
                .map_err(|e| format!("{at}: `url` = {url:?} is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(format!(
                    "{at}: `url` = \"{parsed}\" must be an http:// or https:// URL with a host"
                ));
            }
            BackendKind::OpenAi {
                url: parsed,
                api_key_env: raw.api_key_env,
            }
        }
        other => {
            return Err(format!(
                "{at}: `kind` = {other:?}; expected \"local\" or \"openai\""
            ));
        }
    };
    if raw.responses == Some(true) && matches!(kind, BackendKind::Local) {
        return Err(format!(
            "{at}: `responses` is for kind = \"openai\"; a local backend's Responses requests are served by verre"
        ));
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
        line,
    })
}

/// A name clients use must mean one model: an alias may not be another model's name.
/// Returns the backend whose model clashes, and why.
pub(crate) fn check_names(backends: &[BackendConfig]) -> Result<(), (usize, String)> {
    let mut meaning: HashMap<&str, &str> = HashMap::new();
    for b in backends {
        for m in &b.models {
            for n in std::iter::once(&m.name).chain(&m.aliases) {
                match meaning.insert(n, &m.name) {
                    Some(prev) if prev != m.name => {
                        return Err((
                            b.line,
                            format!(
                                "[[backend]] {:?}: the name {n:?} already means model {prev:?}",
                                b.name
                            ),
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}
