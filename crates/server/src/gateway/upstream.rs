//! One OpenAI-compatible upstream (vLLM, llama-server, Ollama, another verre): its HTTP
//! client, its health, and sending one request to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use reqwest::Url;

use crate::config::HealthConfig;

/// Largest answer taken from an upstream: a JSON answer past it is a failure (502 when no
/// other backend answers), a stream past it ends with an error event.
pub const MAX_ANSWER_BYTES: usize = 32 << 20;

/// The remote half of a backend.
pub struct Upstream {
    /// `url` from the config, without a trailing slash (`http://10.0.0.5:8000/v1`).
    pub url: Url,
    api_key: Option<String>,
    client: reqwest::Client,
    first_byte_timeout: Duration,
    /// A health probe's answer is a short list: it gets the connect timeout plus this.
    probe_timeout: Duration,
    /// Milliseconds since `epoch` before which the backend is skipped; 0 when up.
    down_until_ms: AtomicU64,
    epoch: Instant,
    cooldown: Duration,
}

/// Why a try did not produce a response to pass on; the next backend is tried.
pub struct Failure {
    pub reason: String,
    /// Whether the backend should be skipped for a while (not for a 429).
    pub mark_down: bool,
}

impl Upstream {
    pub fn new(url: Url, api_key: Option<String>, health: &HealthConfig) -> anyhow::Result<Self> {
        // No proxy from the environment (HTTPS_PROXY would be a connection the policy never
        // saw) and no redirects (an upstream must not send us to another host).
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(health.connect_timeout)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            url,
            api_key,
            client,
            first_byte_timeout: health.first_byte_timeout,
            probe_timeout: health.connect_timeout + Duration::from_secs(5),
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            cooldown: health.interval.max(Duration::from_secs(1)),
        })
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.as_str().trim_end_matches('/'))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn is_up(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// A request failed: skip this backend until the next good health check, or for the
    /// cooldown, whichever comes first.
    pub fn mark_down(&self) {
        let until = self.now_ms() + self.cooldown.as_millis() as u64;
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    fn set_health(&self, up: bool) {
        let until = if up { 0 } else { u64::MAX };
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// POST `body` to `{url}{path}` (`path` such as `/chat/completions`). A response whose
    /// headers arrived in time with a status below 500 (and not 429) is returned with its
    /// body streaming through as it arrives; anything else is a [`Failure`].
    pub async fn send(&self, path: &str, body: Bytes) -> Result<Response, Failure> {
        let mut request = self
            .client
            .post(self.endpoint(path))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = match tokio::time::timeout(self.first_byte_timeout, request.send()).await {
            Err(_) => {
                return Err(Failure {
                    reason: format!(
                        "no response within {:?} (first_byte_timeout_s)",
                        self.first_byte_timeout
                    ),
                    mark_down: true,
                });
            }
            Ok(Err(e)) => {
                return Err(Failure {
                    reason: error_chain(&e),
                    mark_down: true,
                });
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Failure {
                reason: format!("answered {status}"),
                mark_down: status != StatusCode::TOO_MANY_REQUESTS,
            });
        }
        let mut reply = Response::builder().status(status);
        for name in [
            header::CONTENT_TYPE,
            header::CACHE_CONTROL,
            header::RETRY_AFTER,
        ] {
            if let Some(value) = response.headers().get(&name) {
                reply = reply.header(name, value.clone());
            }
        }
        let streamed = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = match streamed {
            true => Body::from_stream(capped_stream(response)),
            false => Body::from(read_capped(response).await?),
        };
        reply.body(body).map_err(|e| Failure {
            reason: e.to_string(),
            mark_down: false,
        })
    }

    /// `GET {url}/models`: up when it answers 2xx in time.
    pub async fn probe(&self) -> bool {
        let mut request = self.client.get(self.endpoint("/models"));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let up = matches!(
            tokio::time::timeout(self.probe_timeout, request.send()).await,
            Ok(Ok(r)) if r.status().is_success()
        );
        self.set_health(up);
        up
    }
}

/// A whole JSON answer, up to [`MAX_ANSWER_BYTES`].
async fn read_capped(mut response: reqwest::Response) -> Result<Bytes, Failure> {
    let too_large = || Failure {
        reason: format!(
            "its answer is larger than {} MiB; it was not read",
            MAX_ANSWER_BYTES >> 20
        ),
        mark_down: false,
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(body)),
            Err(e) => {
                return Err(Failure {
                    reason: format!("reading its answer: {}", error_chain(&e)),
                    mark_down: true,
                });
            }
        }
    }
}

/// A streamed answer passed on as it arrives, up to [`MAX_ANSWER_BYTES`]; past it, an
/// OpenAI-shaped error event ends the stream.
fn capped_stream(
    response: reqwest::Response,
) -> impl futures_util::Stream<Item = Result<Bytes, reqwest::Error>> + Send {
    use futures_util::StreamExt;
    let mut sent = 0usize;
    let mut over = false;
    response
        .bytes_stream()
        .map(move |chunk| {
            let chunk = chunk?;
            sent += chunk.len();
            if sent <= MAX_ANSWER_BYTES {
                return Ok(Some(chunk));
            }
            if std::mem::replace(&mut over, true) {
                return Ok(None);
            }
            let error = super::gateway_error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!(
                    "the upstream's answer grew past {} MiB and was cut",
                    MAX_ANSWER_BYTES >> 20
                ),
            );
            Ok(Some(Bytes::from(format!(
                "\n\n{}",
                crate::sse::data_event(&error.body().to_string())
            ))))
        })
        .take_while(|item| std::future::ready(!matches!(item, Ok(None))))
        .map(|item| item.map(|chunk| chunk.unwrap_or_default()))
}

/// An error and its causes on one line: "error sending request ...: connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let message = s.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = s.source();
    }
    text
}
