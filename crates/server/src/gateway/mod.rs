//! The gateway: verre as the one endpoint in front of models in this process and remote
//! OpenAI-compatible upstreams. A request's `model` picks the backends that serve it;
//! they are tried by priority (lower first), shared by weight within a priority, skipped
//! while unhealthy, and the next is tried on a connect error, a 5xx, a 429 or a timeout
//! before the response headers. Once an upstream answers, its body streams through as it
//! arrives. Every connection is checked against the egress [`policy`] first, and a
//! request to a backend that is not local loses its personal data on the way out
//! (`pii`), which its answer gets back.
//!
//! It sits in front of the `/v1` handlers as a middleware ([`route`]): a model served in
//! this process goes on to the handlers (under its local name when asked for by alias),
//! one served remotely never reaches them.

pub mod pii;
pub mod policy;
mod quota;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::config::{BackendConfig, BackendKind, HealthConfig, VerreConfig};
use crate::cost::CostConfig;
use crate::ledger::{AuditConfig, ServedBy};
use crate::openai::body::{ApiBody, Parsed};
use crate::openai::error::ApiError;
use crate::state::{AppState, unix_now};
use policy::Policy;
use quota::Quotas;
use upstream::Upstream;

/// The name of the API key a request came with, put there by the auth middleware.
#[derive(Debug, Clone)]
pub struct KeyName(pub String);

pub struct Gateway {
    policy: Policy,
    backends: Vec<Backend>,
    /// Every name a client may use (names and aliases) to the model's name.
    names: HashMap<String, String>,
    /// A model's name to the backends that serve it, in config order.
    routes: HashMap<String, Vec<Target>>,
    health: HealthConfig,
    quotas: Quotas,
    created: u64,
    cost: CostConfig,
    audit: AuditConfig,
    cors_origins: Vec<String>,
    /// `[pii] ner_model`, loaded: names of persons for the pseudonymiser.
    person_model: Option<Arc<pii::PersonModel>>,
}

struct Backend {
    config: BackendConfig,
    /// `None` for a local backend.
    upstream: Option<Upstream>,
}

/// One backend that serves a model, and the model's name there.
struct Target {
    backend: usize,
    upstream_model: String,
}

/// What to do with a request for a gateway model.
enum Decision {
    /// Serve it in this process, as this model.
    Local(String, ServedBy),
    Respond(Response),
}

impl Gateway {
    /// The gateway for a checked config; each remote backend's API key is read from the
    /// environment now (`api_key_env`; unset is an error with the backend's line). Starts
    /// nothing: call [`Gateway::spawn_health_checks`] inside a runtime.
    pub fn new(config: &VerreConfig) -> Result<Self> {
        let mut backends = Vec::new();
        let mut names = HashMap::new();
        let mut routes: HashMap<String, Vec<Target>> = HashMap::new();
        for (index, b) in config.backends.iter().enumerate() {
            let upstream = match &b.kind {
                BackendKind::Local => None,
                BackendKind::OpenAi { url, api_key_env } => {
                    let api_key = api_key_env
                        .as_deref()
                        .map(|var| {
                            std::env::var(var).map_err(|_| {
                                config.error(b.line, format!(
                                    "[[backend]] {:?}: api_key_env = {var:?}, but that environment variable is not set",
                                    b.name
                                ))
                            })
                        })
                        .transpose()?;
                    Some(Upstream::new(url.clone(), api_key, &config.health)?)
                }
            };
            for m in &b.models {
                for n in std::iter::once(&m.name).chain(&m.aliases) {
                    names.insert(n.clone(), m.name.clone());
                }
                routes.entry(m.name.clone()).or_default().push(Target {
                    backend: index,
                    upstream_model: m.upstream.clone(),
                });
            }
            backends.push(Backend {
                config: b.clone(),
                upstream,
            });
        }
        Ok(Self {
            policy: config.policy.clone(),
            backends,
            names,
            routes,
            health: config.health.clone(),
            quotas: Quotas::new(config.keys.clone()),
            created: unix_now(),
            cost: config.cost.clone(),
            audit: config.audit.clone(),
            cors_origins: config.http.cors_origins.clone(),
            person_model: None,
        })
    }

    /// Adds a named-entity model to the pseudonymisation of requests to backends that are
    /// not local (`[pii] ner_model`, loaded by the caller).
    pub fn with_person_model(mut self, model: Arc<pii::PersonModel>) -> Self {
        self.person_model = Some(model);
        self
    }

    /// [`pii::pseudonymize`] with this gateway's person model; a model runs on the
    /// blocking pool, off the async workers.
    async fn pseudonymize(&self, body: &Bytes) -> Result<pii::Pseudonymized, ApiError> {
        let Some(model) = self.person_model.clone() else {
            return pii::pseudonymize(body, None);
        };
        let body = body.clone();
        tokio::task::spawn_blocking(move || pii::pseudonymize(&body, Some(&model)))
            .await
            .unwrap_or_else(|e| {
                Err(ApiError {
                    status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    message: format!("pseudonymising the request stopped ({e}); it was not sent"),
                    kind: "server_error",
                    param: None,
                    code: Some("cannot_pseudonymize"),
                })
            })
    }

    /// Probe every remote backend the policy allows every `health_check_interval_s`, for
    /// as long as the gateway lives.
    pub fn spawn_health_checks(self: &Arc<Self>) {
        if self.health.interval.is_zero() {
            return;
        }
        for index in 0..self.backends.len() {
            if self.backends[index].upstream.is_none() {
                continue;
            }
            let gateway: Weak<Self> = Arc::downgrade(self);
            let interval = self.health.interval;
            tokio::spawn(async move {
                // Backends start up; the first probe is one interval in.
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                loop {
                    ticks.tick().await;
                    let Some(gateway) = gateway.upgrade() else {
                        return;
                    };
                    let backend = &gateway.backends[index];
                    if gateway.permits(backend).is_err() {
                        continue;
                    }
                    if let Some(upstream) = &backend.upstream {
                        let was_up = upstream.is_up();
                        let up = upstream.probe().await;
                        if up != was_up {
                            tracing::info!(backend = backend.config.name, up, "health changed");
                        }
                    }
                }
            });
        }
    }

    /// Every model name clients may use, with the backend that serves it first.
    pub fn model_names(&self) -> Vec<(String, String)> {
        let mut list: Vec<(String, String)> = Vec::new();
        for b in &self.backends {
            for m in &b.config.models {
                for n in std::iter::once(&m.name).chain(&m.aliases) {
                    if !list.iter().any(|(seen, _)| seen == n) {
                        list.push((n.clone(), b.config.name.clone()));
                    }
                }
            }
        }
        list
    }

    /// Whether the API key named `key` may use `model` (`[[key]] models`).
    pub fn key_may_use(&self, key: Option<&str>, model: &str) -> bool {
        let canonical = self.names.get(model).map(String::as_str);
        self.quotas.allows(key, model, canonical)
    }

    /// Let a request from `key` for `model` in and count it against the key's limits
    /// (`[[key]]`: models, requests per minute, tokens per day), or the response that says
    /// why not. For a request answered before it reaches [`route`] (the archive's "nothing
    /// relevant"), which would otherwise escape the limits.
    pub async fn admit(
        &self,
        key: Option<&str>,
        model: &str,
        store: Option<&verre_store::Store>,
    ) -> Result<(), Response> {
        let canonical = self.names.get(model).map(String::as_str);
        self.quotas.admit(key, model, canonical, store).await
    }

    /// Whether the API key named `key` has `admin = true` (sees every key's usage).
    pub fn key_is_admin(&self, key: &str) -> bool {
        self.quotas.is_admin(key)
    }

    /// Count the tokens of a request `key` made at `at_ms` against its `tokens_per_day`.
    pub fn spend_tokens(&self, key: &str, tokens: u64, at_ms: i64) {
        self.quotas.spend(key, tokens, at_ms);
    }

    /// `[cost]` of the config.
    pub fn cost(&self) -> &CostConfig {
        &self.cost
    }

    /// `[http] cors_origins` of the config: where browser apps may call from.
    pub fn cors_origins(&self) -> &[String] {
        &self.cors_origins
    }

    /// `[audit]` of the config.
    pub fn audit(&self) -> &AuditConfig {
        &self.audit
    }

    /// Unix time the gateway was built (`created` in `/v1/models`).
    pub fn created(&self) -> u64 {
        self.created
    }

    fn permits(&self, backend: &Backend) -> Result<(), policy::PolicyError> {
        match (&backend.config.kind, &backend.upstream) {
            (BackendKind::OpenAi { .. }, Some(upstream)) => self.policy.check(
                &backend.config.name,
                &upstream.url,
                backend.config.jurisdiction.as_deref(),
            ),
            _ => Ok(()),
        }
    }

    /// The targets of `model` in the order to try them: by priority, then a weighted
    /// random order within each priority.
    fn plan(&self, model: &str) -> Option<Vec<&Target>> {
        let targets = self.routes.get(self.names.get(model)?)?;
        let mut keyed: Vec<(u32, f64, &Target)> = targets
            .iter()
            .map(|t| {
                let b = &self.backends[t.backend].config;
                // Efraimidis-Spirakis: sorting by u^(1/w) draws without replacement by weight.
                let u: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
                (b.priority, u.powf(1.0 / f64::from(b.weight)), t)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
        Some(keyed.into_iter().map(|(_, _, t)| t).collect())
    }

    /// The targets at the head of `plan` that serve `/v1/responses` themselves
    /// (`responses = true`): a Responses request is passed through to those, in order;
    /// none when the first in line does not.
    fn responses_backends<'a>(&self, plan: Vec<&'a Target>) -> Vec<&'a Target> {
        plan.into_iter()
            .take_while(|t| {
                let b = &self.backends[t.backend];
                b.upstream.is_some() && b.config.responses
            })
            .collect()
    }

    /// Try the targets in order until one answers.
    async fn dispatch(
        &self,
        path: &str,
        body: &ApiBody,
        model: &str,
        plan: Vec<&Target>,
    ) -> Decision {
        let mut refused = Vec::new();
        let mut failures = Vec::new();
        let mut down = Vec::new();
        for target in plan {
            let backend = &self.backends[target.backend];
            let Some(upstream) = &backend.upstream else {
                return Decision::Local(target.upstream_model.clone(), served_by(backend));
            };
            if let Err(refusal) = self.permits(backend) {
                tracing::warn!("egress refused: {refusal}");
                refused.push(refusal.to_string());
                continue;
            }
            if !upstream.is_up() {
                down.push(backend.config.name.as_str());
                continue;
            }
            let body = match with_model(body.clone(), model, &target.upstream_model) {
                Ok(b) => b,
                Err(e) => return Decision::Respond(e.into_response()),
            };
            // Fails closed: a body that cannot be rewritten is refused, not sent as it is.
            let (body, restorer) = match backend.config.pseudonymize {
                true => match self.pseudonymize(body.bytes()).await {
                    Ok(p) => (p.body, p.restorer),
                    Err(refusal) => return Decision::Respond(refusal.into_response()),
                },
                false => (body.bytes().clone(), None),
            };
            match upstream.send(path, body).await {
                Ok(mut response) => {
                    if let Some(restorer) = restorer {
                        response = pii::restore(response, restorer).await;
                    }
                    if let Ok(name) = backend.config.name.parse() {
                        response.headers_mut().insert("x-verre-backend", name);
                    }
                    response.extensions_mut().insert(served_by(backend));
                    return Decision::Respond(response);
                }
                Err(failure) => {
                    tracing::warn!(backend = backend.config.name, "{}", failure.reason);
                    if failure.mark_down {
                        upstream.mark_down();
                    }
                    failures.push(format!("{}: {}", backend.config.name, failure.reason));
                }
            }
        }
        let error = if !failures.is_empty() {
            gateway_error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!(
                    "every backend for `{model}` failed: {}",
                    failures.join("; ")
                ),
            )
        } else if !down.is_empty() {
            gateway_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_backend",
                format!(
                    "no healthy backend for `{model}` ({} failing health checks); try again shortly",
                    down.join(", ")
                ),
            )
        } else {
            ApiError {
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "the egress policy allows no backend for `{model}`: {}",
                    refused.join("; ")
                ),
                kind: "invalid_request_error",
                param: Some("model".into()),
                code: Some("egress_refused"),
            }
        };
        Decision::Respond(error.into_response())
    }
}

fn served_by(backend: &Backend) -> ServedBy {
    ServedBy {
        backend: backend.config.name.clone(),
        local: backend.config.local,
        pseudonymized: backend.upstream.is_some() && backend.config.pseudonymize,
    }
}

fn gateway_error(status: StatusCode, code: &'static str, message: String) -> ApiError {
    ApiError {
        status,
        message,
        kind: "server_error",
        param: None,
        code: Some(code),
    }
}

/// The body with `model` set to the backend's name for it (unchanged when it is the same).
fn with_model(body: ApiBody, asked: &str, upstream: &str) -> Result<ApiBody, ApiError> {
    if asked == upstream {
        return Ok(body);
    }
    let mut object = body.to_object();
    object.insert("model".into(), Value::String(upstream.to_string()));
    ApiBody::from_object(object)
}

/// The endpoint path at an upstream for one of ours: `/v1/chat/completions` ->
/// `/chat/completions` (the config's `url` ends in `/v1`).
fn upstream_path(path: &str) -> Option<&'static str> {
    match path {
        "/v1/chat/completions" => Some("/chat/completions"),
        "/v1/completions" => Some("/completions"),
        "/v1/embeddings" => Some("/embeddings"),
        "/v1/responses" => Some("/responses"),
        _ => None,
    }
}

/// The middleware in front of the `/v1` handlers: key limits, then routing.
pub async fn route(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(gateway) = state.gateway() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let Some(upstream_path) = upstream_path(path).filter(|_| request.method() == Method::POST)
    else {
        return next.run(request).await;
    };
    // Read once at the edge (openai::body): a limit applies to the request that is served.
    let parsed = request.extensions().get::<Parsed>().cloned();
    let (parts, _) = request.into_parts();
    let body = match parsed {
        Some(Parsed(Ok(body))) => body,
        // A duplicate key, not JSON, not an object: refused before any limit.
        Some(Parsed(Err(refusal))) => return refusal.into_response(),
        None => return ApiError::internal("the request body was not read").into_response(),
    };
    // A body without a model goes on to the handler, which says what is wrong with it.
    let Some(model) = body.model().map(str::to_string) else {
        return next.run(body.into_request(parts)).await;
    };
    let key = parts.extensions.get::<KeyName>().map(|k| k.0.as_str());
    let canonical = gateway.names.get(&model).map(String::as_str);
    if upstream_path == "/responses" {
        // Served as a chat completion (which comes back through here, and is counted
        // then), unless the first backends in line serve `/v1/responses` themselves.
        let Some(plan) = gateway
            .plan(&model)
            .map(|plan| gateway.responses_backends(plan))
        else {
            return next.run(body.into_request(parts)).await;
        };
        if plan.is_empty() {
            return next.run(body.into_request(parts)).await;
        }
        if let Err(refusal) = gateway
            .quotas
            .admit(key, &model, canonical, state.store())
            .await
        {
            return refusal;
        }
        return match gateway.dispatch(upstream_path, &body, &model, plan).await {
            Decision::Respond(response) => response,
            Decision::Local(..) => unreachable!("only remote backends pass Responses through"),
        };
    }
    if let Err(refusal) = gateway
        .quotas
        .admit(key, &model, canonical, state.store())
        .await
    {
        return refusal;
    }
    let Some(plan) = gateway.plan(&model) else {
        // Not a gateway model: the models of this process.
        let mut response = next.run(body.into_request(parts)).await;
        response.extensions_mut().insert(ServedBy {
            backend: "local".into(),
            local: true,
            pseudonymized: false,
        });
        return response;
    };
    match gateway.dispatch(upstream_path, &body, &model, plan).await {
        Decision::Respond(response) => response,
        Decision::Local(local, served) => match with_model(body, &model, &local) {
            Ok(body) => {
                let mut response = next.run(body.into_request(parts)).await;
                if let Ok(name) = served.backend.parse() {
                    response.headers_mut().insert("x-verre-backend", name);
                }
                response.extensions_mut().insert(served);
                response
            }
            Err(e) => e.into_response(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_api_key_is_refused_with_its_backends_line() {
        let text = "[policy]\nallow_jurisdictions = [\"EU\"]\n\n[[backend]]\nname = \"fra\"\nkind = \"openai\"\nurl = \"https://vllm.example.eu/v1\"\napi_key_env = \"VERRE_TEST_GATEWAY_KEY_UNSET\"\njurisdiction = \"EU-DE\"\nmodels = [\"large\"]\n";
        // Parsing reads no secret: describing the file needs none.
        let config = VerreConfig::parse(text, "verre.toml").unwrap();
        let e = Gateway::new(&config).err().unwrap().to_string();
        assert_eq!(
            e,
            "verre.toml:4: [[backend]] \"fra\": api_key_env = \"VERRE_TEST_GATEWAY_KEY_UNSET\", but that environment variable is not set"
        );
    }
}
