//! Signing in and out of the review desk: the login page and form (rate-limited, CSRF
//! checked before the password) and logout.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use serde::Deserialize;
use verre_store::now_ms;
use verre_store::review::{LoginRefusal, LoginReservation};

use super::auth::{self, LOGIN_CSRF_COOKIE, SESSION_COOKIE};
use super::pages::{PageError, PageResult, form_author, page, store};
use crate::AppState;

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    #[serde(default)]
    name: String,
}

fn login_page(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    name: &str,
    error: Option<&str>,
) -> Response {
    let token = auth::random_token();
    let secure = auth::secure(state.review(), headers);
    let mut response = page(
        status,
        "login.html",
        context! { login_csrf => &token, name => name, error => error },
    );
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(LOGIN_CSRF_COOKIE, &token, 3600, secure))
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

pub async fn login_form(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    login_page(&state, &headers, StatusCode::OK, &q.name, None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    csrf: String,
    name: String,
    password: String,
}

pub async fn login(
    State(state): State<Arc<AppState>>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    let store = store(&state)?;
    let expected = auth::review_cookie(state.review(), &headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if !auth::same_token(expected, &form.csrf) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "the login form's security token is wrong or out of date: reload the login page",
        ));
    }
    let connect = extensions.get::<ConnectInfo<SocketAddr>>();
    let (ip, client) = (auth::client_ip(connect), auth::client_key(connect));
    let now = now_ms();
    let settings = state.review();
    let too_many = |retry_after_ms: i64, why: &str| {
        let mut r = login_page(
            &state,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            &form.name,
            Some(why),
        );
        let secs = (retry_after_ms.max(0) as u64).div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    };
    // Busy checking other passwords: refused before anything is counted or computed.
    let Some(slot) = settings.password_checks.try_slot() else {
        return Ok(too_many(
            1000,
            "The server is busy checking other logins: try again in a moment.",
        ));
    };
    match store
        .reserve_login_failure(&form.name, &client, now, &settings.login_limits)
        .await?
    {
        LoginReservation::Reserved => {}
        LoginReservation::Refused {
            retry_after_ms,
            reason,
        } => {
            let why = match reason {
                LoginRefusal::Client => {
                    "Too many failed logins for this user from this address: wait and try again later."
                }
                LoginRefusal::Account => {
                    "Too many failed logins for this user: wait and try again later."
                }
            };
            return Ok(too_many(retry_after_ms, why));
        }
    }
    let user = store.user(&form.name).await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let ok = settings
        .password_checks
        .check(slot, stored, form.password.clone())
        .await;
    if !ok {
        // The failure reserved above stays.
        return Ok(login_page(
            &state,
            &headers,
            StatusCode::UNAUTHORIZED,
            &form.name,
            Some("Wrong user name or password."),
        ));
    }
    store.clear_login_failures(&form.name, &client).await?;
    let token = auth::random_token();
    let ttl = state.review().session_ttl;
    store
        .create_session(
            &token,
            &form.name,
            &auth::random_token(),
            now + ttl.as_millis() as i64,
        )
        .await?;
    store
        .audit(verre_store::AuditEvent {
            actor: &format!("user:{}", form.name),
            action: "review.login",
            subject: "",
            detail: serde_json::json!({"ip": ip}),
        })
        .await?;
    let secure = auth::secure(state.review(), &headers);
    let mut r = Redirect::to("/review").into_response();
    for c in [
        auth::set_cookie(SESSION_COOKIE, &token, ttl.as_secs(), secure),
        auth::set_cookie(LOGIN_CSRF_COOKIE, "", 0, secure),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(r)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let reviewer = match form_author(&state, &headers, &f.csrf).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let (Some(store), Some(token)) = (
        state.store(),
        auth::review_cookie(state.review(), &headers, SESSION_COOKIE),
    ) && let Err(e) = store.end_session(token).await
    {
        return PageError::from(e).into_response();
    }
    tracing::debug!(user = reviewer.name(), "logged out");
    let mut r = Redirect::to("/review/login").into_response();
    let secure = auth::secure(state.review(), &headers);
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(SESSION_COOKIE, "", 0, secure)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}
