//! The review UI's pages and forms: server-rendered HTML (minijinja templates embedded in
//! the binary), no JavaScript. Every response carries a strict Content-Security-Policy;
//! every form carries the session's CSRF token, checked here before anything changes.

use std::sync::{Arc, OnceLock};

use axum::extract::{Form, FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::DateTime;
use minijinja::{Environment, Value as Tpl, context};
use serde::Deserialize;
use verre_store::{Store, now_ms};

use super::auth::{self, Reviewer, SESSION_COOKIE};
use crate::AppState;

/// Nothing loads from anywhere but this server, no script runs but the desk's own keyboard
/// script (a file served from here: no inline script, no event handler attribute), no page
/// frames this one.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = include_str!("templates/style.css");
const KEYS: &str = include_str!("templates/keys.js");

pub(super) fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, text) in [
            ("base.html", include_str!("templates/base.html")),
            ("login.html", include_str!("templates/login.html")),
            ("error.html", include_str!("templates/error.html")),
            ("queue.html", include_str!("templates/queue.html")),
            ("message.html", include_str!("templates/message.html")),
            ("deliveries.html", include_str!("templates/deliveries.html")),
            ("confirm.html", include_str!("templates/confirm.html")),
            ("evidence.html", include_str!("templates/evidence.html")),
        ] {
            env.add_template(name, text)
                .expect("the review templates are valid (tested)");
        }
        env.add_filter("when", utc_time);
        env
    })
}

/// Unix ms as `2026-05-04 13:07 UTC`; nothing for no time (or one past any calendar).
pub fn utc_time(ms: Option<i64>) -> String {
    ms.and_then(DateTime::from_timestamp_millis)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

/// A rendered page (or an error page) with the review UI's security headers.
pub(super) fn page(status: StatusCode, name: &str, ctx: Tpl) -> Response {
    match templates().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("rendering {name}: {e:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// An error shown as a page.
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!("review: {e:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the database could not be read; see the server log",
        )
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        page(
            self.status,
            "error.html",
            context! {
                status => self.status.as_u16(),
                reason => self.status.canonical_reason().unwrap_or(""),
                message => self.message,
            },
        )
    }
}

pub(super) type PageResult = Result<Response, PageError>;

/// Security headers on every review response.
pub async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    // A handler may set a stricter policy of its own (an original document: `sandbox`).
    if !h.contains_key("content-security-policy") {
        h.insert("content-security-policy", HeaderValue::from_static(CSP));
    }
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

pub(super) fn store(state: &AppState) -> Result<&Store, PageError> {
    state.store().ok_or_else(|| {
        PageError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server was started without a database",
        )
    })
}

/// The signed-in reviewer, or a redirect to the login page.
pub(super) async fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<Reviewer, Response> {
    let store = store(state).map_err(IntoResponse::into_response)?;
    let token = auth::review_cookie(state.review(), headers, SESSION_COOKIE).unwrap_or("");
    if token.is_empty() {
        return Err(Redirect::to("/review/login").into_response());
    }
    let idle = state.review().session_idle.as_millis() as i64;
    match store.use_session(token, idle, now_ms()).await {
        Ok(Some(session)) => Ok(Reviewer { session }),
        Ok(None) => Err(Redirect::to("/review/login").into_response()),
        Err(e) => Err(PageError::from(e).into_response()),
    }
}

/// The reviewer of a form post, whose CSRF token must match the session's.
pub(super) async fn form_author(
    state: &AppState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<Reviewer, Response> {
    let reviewer = signed_in(state, headers).await?;
    if !reviewer.csrf_ok(csrf) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "this form's security token is wrong or out of date: reload the page and try again",
        )
        .into_response());
    }
    Ok(reviewer)
}

/// A form posted by the signed-in reviewer with the session's CSRF token; otherwise the
/// login redirect or a 403 page. `T` is the form's other fields.
pub struct Posted<T> {
    pub(super) reviewer: Reviewer,
    pub(super) form: T,
}

#[derive(Deserialize)]
struct WithCsrf<T> {
    csrf: String,
    #[serde(flatten)]
    form: T,
}

/// A form with nothing but its CSRF token.
#[derive(Deserialize)]
pub struct NoFields {}

impl<T: serde::de::DeserializeOwned + Send> FromRequest<Arc<AppState>> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let Form(WithCsrf { csrf, form }) = Form::<WithCsrf<T>>::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let reviewer = form_author(state, &headers, &csrf).await?;
        Ok(Posted { reviewer, form })
    }
}

pub(super) fn user_ctx(r: &Reviewer) -> Tpl {
    context! { name => r.name(), role => &r.session.role }
}

pub async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

pub async fn keys_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        KEYS,
    )
        .into_response()
}

pub(super) fn admin_only(reviewer: &Reviewer) -> Result<(), PageError> {
    if reviewer.is_admin() {
        Ok(())
    } else {
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "only an admin may do this",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_renders_with_little_context() {
        for name in [
            "login.html",
            "error.html",
            "queue.html",
            "message.html",
            "deliveries.html",
            "confirm.html",
            "evidence.html",
        ] {
            let t = templates().get_template(name).unwrap();
            // The smallest context each page is rendered with.
            let ctx =
                context! { m => context! { id => 1, source_ref => "m.eml", received_at => 0 } };
            if let Err(e) = t.render(ctx) {
                panic!("{name}: {e:#}");
            }
        }
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc_time(Some(0)), "1970-01-01 00:00 UTC");
        assert_eq!(utc_time(Some(1_700_000_000_000)), "2023-11-14 22:13 UTC");
        assert_eq!(utc_time(None), "");
        assert_eq!(utc_time(Some(951_868_799_999)), "2000-02-29 23:59 UTC");
        assert_eq!(utc_time(Some(-60_000)), "1969-12-31 23:59 UTC");
        assert_eq!(
            utc_time(Some(i64::MAX)),
            "",
            "past any calendar: nothing shown"
        );
    }
}
