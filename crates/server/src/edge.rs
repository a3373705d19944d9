//! What the HTTP app does before a request reaches a route, for browsers and for peers it
//! cannot trust:
//! - [`cors`]: browser apps on the origins `[http] cors_origins` lists may call the API;
//!   their preflight is answered here, before authentication. Other origins get no CORS
//!   headers (none are listed by default).
//! - [`loopback_guard`]: a server on loopback without API keys trusts whoever can reach it,
//!   which includes any web page the machine's browser opens. It refuses what a page can
//!   send without a preflight (a POST that is not `application/json`: 415) and names that
//!   are not loopback in `Host` (DNS rebinding: 403).
//! - [`metrics_guard`]: `/metrics` needs an API key from peers that are not on this machine
//!   (when there are keys).
//! - [`json_method_not_allowed`]: a 405 carries an OpenAI-shaped body.
//!
//! The peer's address comes from the connection ([`ConnectInfo`]); a request without one
//! (served in-process, as tests do) is not checked against it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::openai::error::ApiError;
use crate::state::AppState;

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE_SECONDS: u32 = 600;

/// Request headers a browser app may send: the API key in either form, the body's type,
/// and what the official SDKs add (`OpenAI-Organization`, `OpenAI-Project`,
/// `OpenAI-Beta`, `anthropic-version`, `anthropic-beta`, `X-Stainless-*`).
fn is_allowed_header(name: &str) -> bool {
    matches!(name, "authorization" | "content-type" | "x-api-key")
        || name.starts_with("openai-")
        || name.starts_with("anthropic-")
        || name.starts_with("x-stainless-")
}

/// The origins browser apps may call from (`[http] cors_origins`), as compared: scheme,
/// host and port, no trailing slash.
#[derive(Debug, Clone, Default)]
pub struct CorsOrigins(Arc<[String]>);

impl CorsOrigins {
    pub fn new(origins: &[String]) -> Self {
        Self(
            origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        )
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|o| self.0.iter().any(|allowed| allowed.eq_ignore_ascii_case(o)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// CORS for the listed origins. A preflight (`OPTIONS` with
/// `Access-Control-Request-Method`) from one of them is answered 204 here, whatever the
/// path and before any key is asked for; its other requests get
/// `Access-Control-Allow-Origin` on their answers. Requests from other origins pass
/// untouched: without CORS headers the browser keeps the answer from the page.
pub async fn cors(State(origins): State<CorsOrigins>, request: Request, next: Next) -> Response {
    let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .filter(|o| origins.allows(o))
        .cloned()
    else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        return preflight_answer(origin, request.headers());
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after, x-verre-backend"),
    );
    response
}

fn preflight_answer(origin: HeaderValue, request: &HeaderMap) -> Response {
    // The requested headers that are allowed, as asked (a browser compares names only).
    let asked = request
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let allowed: Vec<String> = asked
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty() && is_allowed_header(h))
        .collect();
    let allowed = if allowed.is_empty() {
        "authorization, content-type, x-api-key".to_string()
    } else {
        allowed.join(", ")
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    if let Ok(value) = HeaderValue::from_str(&allowed) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
    }
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(PREFLIGHT_MAX_AGE_SECONDS),
    );
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    response
}

/// The peer's address, when the request came over a connection.
fn peer(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// In front of `/v1` on a server without API keys, for peers on this machine: a POST must
/// say its body is JSON (a web page can send `text/plain` anywhere without asking), and
/// `Host` must name this machine by a loopback name or address (a page whose DNS name was
/// rebound to 127.0.0.1 sends its own name).
pub async fn loopback_guard(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let local_without_keys =
        state.keys().is_none() && peer(&request).is_some_and(crate::is_loopback);
    if !local_without_keys {
        return next.run(request).await;
    }
    if let Some(host) = request.headers().get(header::HOST)
        && !is_loopback_host(host)
    {
        return ApiError::forbidden(
            "host_not_allowed",
            format!(
                "this server has no API keys and answers only requests addressed to localhost or a loopback address, not to {:?}; \
                 connect to http://localhost:PORT, or give the server API keys",
                host.to_str().unwrap_or("?")
            ),
        )
        .into_response();
    }
    if request.method() == Method::POST && !is_json(request.headers()) {
        return ApiError::unsupported_media_type(
            "the request body must be JSON, sent with `Content-Type: application/json`",
        )
        .into_response();
    }
    next.run(request).await
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// `localhost` (or a name under `.localhost`), an IPv4 loopback address or `[::1]`, with
/// or without a port.
fn is_loopback_host(host: &HeaderValue) -> bool {
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [v6] or [v6]:port
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(crate::is_loopback)
}

/// `/metrics` from a peer that is not on this machine needs one of the API keys, when the
/// server has keys.
pub async fn metrics_guard(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let remote = peer(&request).is_some_and(|ip| !crate::is_loopback(ip));
    match state.keys() {
        Some(keys) if remote => match crate::presented_key(request.headers()) {
            Some(key) if keys.verify(key).is_some() => next.run(request).await,
            Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
            None => ApiError::unauthorized(
                "/metrics needs an API key from another machine. Send it as `Authorization: Bearer KEY`.",
            )
            .into_response(),
        },
        _ => next.run(request).await,
    }
}

/// A 405 as the router makes it (no body; `Allow` says what is) with an OpenAI-shaped body.
pub async fn json_method_not_allowed(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let message = match allow.as_ref().and_then(|a| a.to_str().ok()) {
        Some(methods) if !methods.is_empty() => {
            format!("this method is not allowed here; allowed: {methods}")
        }
        _ => "this method is not allowed here".to_string(),
    };
    let mut answer = ApiError::method_not_allowed(message).into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_from_others() {
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.1.2.3:8080",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(&HeaderValue::from_static(host)), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.5:8080",
            "[::2]:80",
            "[::1]x",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_loopback_host(&HeaderValue::from_static(host)), "{host}");
        }
    }

    #[test]
    fn json_is_application_json_with_any_parameters() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("text/plain; application/json"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
