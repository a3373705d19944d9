//! The review UI's pages and forms: server-rendered HTML (minijinja templates embedded in
//! the binary), no JavaScript. Every response carries a strict Content-Security-Policy;
//! every form carries the session's CSRF token, checked here before anything changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{ConnectInfo, Form, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::DateTime;
use minijinja::{Environment, Value as Tpl, context};
use serde::Deserialize;
use serde_json::Value;
use verre_store::review::{
    ChangedSinceConfirmed, LoginRefusal, LoginReservation, QueueFilter, QueueItem, ReviewStatus,
    staged_digest,
};
use verre_store::{Store, now_ms};

use super::auth::{self, LOGIN_CSRF_COOKIE, Reviewer, SESSION_COOKIE};
use super::flash::Flash;
use super::form;
use super::triage::{self, Label, Signals, Triaged};
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
async fn form_author(
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

// --- login ----------------------------------------------------------------------------

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

// --- the queue ------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct QueueQuery {
    status: Option<String>,
    label: Option<String>,
    /// Words to search for in subject, sender, extraction and text.
    q: Option<String>,
    notice: Option<String>,
    /// The message a notice is about (approved, rejected, filed: undo is offered).
    message: Option<i64>,
    flash: Option<String>,
}

/// `Subject` and `From` from the stored header text.
fn subject_and_from(headers: Option<&str>) -> (String, String) {
    let mut out = (String::new(), String::new());
    for line in headers.unwrap_or("").lines() {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "subject" => out.0 = value.trim().to_string(),
                "from" => out.1 = value.trim().to_string(),
                _ => {}
            }
        }
    }
    out
}

/// Characters of a message's text read for deadlines and the search.
const TEXT_SCANNED: usize = 20_000;

/// What the ranking reads of one message, read and decrypted on the runtime, ranked off it.
struct Unranked {
    item: QueueItem,
    headers: String,
    text: String,
    declared: BTreeMap<String, Vec<String>>,
    lookup: Option<Value>,
}

/// The queue for `filter`, each message decrypted, ranked and (with `query`) matched; the
/// undecided in priority order (highest first, then the longest waiting), the decided
/// newest first. Without a query the ranking is reused while the queue's state is the
/// same ([`triage::RankingCache`]); a search scans (at most [`triage::SCAN_LIMIT`]).
async fn triaged(
    state: &AppState,
    store: &Store,
    filter: QueueFilter,
    query: &str,
) -> anyhow::Result<Arc<Vec<Triaged>>> {
    let cache = &state.review().rankings;
    let view = format!(
        "{}|{}",
        filter.status.map_or("all", |s| s.as_str()),
        filter
            .label
            .as_ref()
            .map_or(String::new(), |(k, v)| format!("{k}={v}"))
    );
    let queue_state = store.queue_state().await?;
    if query.is_empty()
        && let Some(ranked) = cache.get(&view, &queue_state)
    {
        return Ok(ranked);
    }
    let undecided = matches!(
        filter.status,
        Some(ReviewStatus::ToReview | ReviewStatus::InProgress | ReviewStatus::Quarantined)
    );
    let mut unranked = Vec::new();
    for item in store
        .review_queue(&QueueFilter {
            limit: triage::SCAN_LIMIT,
            ..filter
        })
        .await?
    {
        let id = item.message.id;
        let mut headers = String::new();
        let mut text = String::new();
        for (kind, part) in store.triage_parts(id).await? {
            let Some(part) = part else { continue };
            if kind == "headers" {
                headers = part;
            } else if text.len() < TEXT_SCANNED {
                text.extend(part.chars().take(TEXT_SCANNED - text.len()));
                text.push('\n');
            }
        }
        let declared = triage::declared_labels(store.stage_output(id, "stage").await?.as_ref());
        let lookup = store.stage_output(id, "crossref").await?;
        unranked.push(Unranked {
            item,
            headers,
            text,
            declared,
            lookup,
        });
    }
    cache.read(unranked.len());
    let query = query.to_string();
    let searching = !query.is_empty();
    // Six regexes over up to 20 KB of each of a thousand messages: off the runtime.
    let ranked = tokio::task::spawn_blocking(move || rank(unranked, &query, undecided))
        .await
        .map_err(|e| anyhow::anyhow!("ranking the queue: {e}"))?;
    let ranked = Arc::new(ranked);
    if !searching {
        cache.put(&view, queue_state, ranked.clone());
    }
    Ok(ranked)
}

/// Rank (and with `query`, match) what [`triaged`] read.
fn rank(unranked: Vec<Unranked>, query: &str, undecided: bool) -> Vec<Triaged> {
    let now = now_ms();
    let mut out = Vec::new();
    for u in unranked {
        let (subject, from) = subject_and_from(Some(&u.headers));
        let extract_text = triage::strings_of(u.item.extract.as_ref());
        if !triage::matches(query, &[&subject, &from, &extract_text, &u.text]) {
            continue;
        }
        let received = triage::date_header(&u.headers).unwrap_or(u.item.message.received_at);
        let priority = triage::priority(&Signals {
            extract: u.item.extract.as_ref(),
            declared: &u.declared,
            lookup: u.lookup.as_ref(),
            text: &u.text,
            waited_ms: now - received.min(u.item.message.received_at),
        });
        let labels = triage::declared_values_of(u.item.extract.as_ref(), &u.declared)
            .into_iter()
            .map(|(key, value)| Label { key, value })
            .collect();
        out.push(Triaged {
            item: u.item,
            subject,
            from,
            received,
            labels,
            declared: u.declared,
            priority,
        });
    }
    if undecided {
        out.sort_by_key(|t| (std::cmp::Reverse(t.priority.score), t.received));
    }
    out
}

fn queue_row(t: &Triaged) -> Tpl {
    context! {
        id => t.item.message.id,
        received_at => t.received,
        source_ref => &t.item.message.source_ref,
        subject => &t.subject,
        from => &t.from,
        labels => &t.labels,
        route => &t.item.route,
        actions => t.item.actions,
        status => t.item.status.as_str(),
        score => t.priority.score,
        reasons => &t.priority.reasons,
    }
}

/// The queue's notices, from a fixed list (never echoed from the URL).
fn queue_notice(key: &str) -> Option<&'static str> {
    Some(match key {
        "approved" => "Approved: its actions are in the outbox.",
        "rejected" => "Rejected.",
        "filed" => "Filed: nothing was sent.",
        _ => return None,
    })
}

pub async fn queue(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<QueueQuery>,
) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let store = store(&state)?;
    let status_name = q.status.unwrap_or_else(|| "to_review".into());
    let status = match status_name.as_str() {
        "all" => None,
        s => Some(ReviewStatus::parse(s).ok_or_else(|| {
            PageError::new(StatusCode::BAD_REQUEST, format!("unknown status {s:?}"))
        })?),
    };
    let label = q.label.filter(|l| !l.is_empty());
    let query = q.q.unwrap_or_default();
    let all = triaged(
        &state,
        store,
        QueueFilter {
            status,
            label: label
                .as_deref()
                .and_then(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string())),
            limit: 0,
        },
        &query,
    )
    .await?;
    // Only what the pipelines declared is offered, never a value a model made up.
    let mut options: BTreeMap<(String, String), ()> = BTreeMap::new();
    for t in all.iter() {
        for (name, values) in &t.declared {
            for v in values {
                options.insert((name.clone(), v.clone()), ());
            }
        }
    }
    let lanes = status == Some(ReviewStatus::ToReview);
    let shown = all.iter().take(200);
    let (items, nothing): (Vec<&Triaged>, Vec<&Triaged>) =
        shown.partition(|t| !lanes || t.item.actions > 0);
    let flash = q
        .flash
        .as_deref()
        .and_then(|t| state.review().flashes.get(reviewer.name(), t));
    let undo = match q.message {
        Some(id) if store.undoable(id).await? => Some(id),
        _ => None,
    };
    let failed = store.deliveries_with_status("failed").await?.len();
    Ok(page(
        StatusCode::OK,
        "queue.html",
        context! {
            user => user_ctx(&reviewer),
            csrf => &reviewer.session.csrf_token,
            notice => q.notice.as_deref().and_then(queue_notice).or(flash.as_ref().and_then(|f| f.notice.as_deref())),
            error => flash.as_ref().and_then(|f| f.error.clone()),
            decided => q.message,
            undo => undo,
            items => items.into_iter().map(queue_row).collect::<Vec<_>>(),
            nothing => nothing.into_iter().map(queue_row).collect::<Vec<_>>(),
            lanes => lanes,
            statuses => ReviewStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            status => status_name,
            labels => options.keys().map(|(k, v)| Label { key: k.clone(), value: v.clone() }).collect::<Vec<_>>(),
            label => label.unwrap_or_default(),
            q => query,
            scanned => triage::SCAN_LIMIT,
            failed => failed,
        },
    ))
}

#[derive(Deserialize, Default)]
pub struct FlashQuery {
    flash: Option<String>,
}

pub async fn deliveries(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<FlashQuery>,
) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let flash = q
        .flash
        .as_deref()
        .and_then(|t| state.review().flashes.get(reviewer.name(), t))
        .unwrap_or_default();
    let store = store(&state)?;
    let mut rows = store.deliveries_with_status("failed").await?;
    rows.extend(store.deliveries_with_status("gone").await?);
    let endpoints: Vec<Tpl> = store
        .gone_endpoints()
        .await?
        .into_iter()
        .map(|(url, reason, since)| context! { url => url, reason => reason, since => since })
        .collect();
    Ok(page(
        StatusCode::OK,
        "deliveries.html",
        context! {
            user => user_ctx(&reviewer),
            csrf => &reviewer.session.csrf_token,
            deliveries => rows,
            endpoints => endpoints,
            notice => flash.notice,
            error => flash.error,
        },
    ))
}

// --- one message ----------------------------------------------------------------------

/// The mail's HTML with everything active removed: no scripts, styles, forms, frames or
/// images (so nothing remote loads), links made `noopener noreferrer`.
pub fn sanitize_mail_html(html: &str) -> String {
    let mut b = ammonia::Builder::default();
    b.rm_tags(["img"]);
    b.url_schemes(["http", "https", "mailto"].into_iter().collect());
    b.clean(html).to_string()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The neighbours of a message in the to-review queue's priority order: (previous, next).
/// A message not on it (decided) has the queue's first as its next.
async fn neighbours(
    state: &AppState,
    store: &Store,
    id: i64,
) -> anyhow::Result<(Option<i64>, Option<i64>)> {
    let order: Vec<i64> = triaged(
        state,
        store,
        QueueFilter {
            status: Some(ReviewStatus::ToReview),
            ..Default::default()
        },
        "",
    )
    .await?
    .iter()
    .map(|t| t.item.message.id)
    .collect();
    Ok(match order.iter().position(|&m| m == id) {
        Some(at) => (
            at.checked_sub(1).map(|p| order[p]),
            order.get(at + 1).copied(),
        ),
        None => (None, order.first().copied()),
    })
}

async fn message_page(
    state: &AppState,
    reviewer: &Reviewer,
    id: i64,
    notice: Option<&str>,
    flash: Option<Flash>,
) -> PageResult {
    let store = store(state)?;
    let Some(detail) = store.detail(id).await? else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("there is no message {id}"),
        ));
    };
    // Retention may have removed the raw bytes of a message that is still on the queue.
    let raw = store.raw_message_kept(id).await?;
    let parsed = raw
        .as_deref()
        .and_then(|raw| mail_parser::MessageParser::default().parse(raw));
    let (mut html, mut text) = (None, String::new());
    if raw.is_none() {
        text = "(The message as received was removed by retention ([retention] raw_days); \
                its parts and extraction are below.)"
            .to_string();
    } else if let Some(m) = &parsed {
        match m.html_part(0).map(|p| &p.body) {
            Some(mail_parser::PartType::Html(h)) => html = Some(sanitize_mail_html(h)),
            _ => text = m.body_text(0).map(|t| t.to_string()).unwrap_or_default(),
        }
    } else if let Some(raw) = &raw {
        text = String::from_utf8_lossy(raw).into_owned();
    }
    let header_text = detail
        .parts
        .iter()
        .find(|p| p.kind == "headers")
        .and_then(|p| p.text.clone())
        .unwrap_or_default();
    let (subject, _) = subject_and_from(Some(&header_text));
    let attachments: Vec<Tpl> = detail
        .parts
        .iter()
        .filter(|p| p.kind == "attachment")
        .map(|p| {
            context! {
                filename => &p.filename, content_type => &p.content_type, size => p.size,
                note => &p.note, text => p.text.as_deref().map(|t| t.chars().take(20_000).collect::<String>()),
            }
        })
        .collect();
    let output = |stage: &str| {
        detail
            .results
            .iter()
            .find(|r| r.stage == stage)
            .map(|r| &r.output)
    };
    let extraction = ExtractionView::of(output("extract"));
    let route = output("route")
        .and_then(|r| r["route"].as_str())
        .map(str::to_string);
    let declared = triage::declared_labels(output("stage"));
    let sender = sender_ctx(output("parse"));
    let decision = store.decision(id).await?;
    let review_status = store
        .review_status(id)
        .await?
        .unwrap_or(ReviewStatus::InProgress);
    let approvals: Vec<Tpl> = store
        .approvals(id)
        .await?
        .into_iter()
        .map(|(user, at)| context! { user => user, at => at })
        .collect();
    let changed = store.recipient_changes(id).await?;
    let drafts = store.drafts(id).await?;
    let draft = drafts.last().map(|d| d.body.clone()).unwrap_or_default();
    let flash = flash.unwrap_or_default();
    let actions: Vec<Tpl> = detail
        .actions
        .iter()
        .map(|a| {
            let current: Value = serde_json::from_str(&a.payload).unwrap_or(Value::Null);
            let schema = form::payload_schema(&a.kind, &current, &declared);
            let (submitted, error) = match &flash.action {
                // Values too large to keep were dropped: the form shows what is stored.
                Some((aid, fields)) if *aid == a.id => (
                    (!fields.is_empty()).then_some(fields.as_slice()),
                    flash.error.clone(),
                ),
                _ => (None, None),
            };
            let raw = submitted
                .and_then(|f| f.iter().find(|(k, _)| k == "payload"))
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| pretty(&current));
            let staged_target = changed
                .iter()
                .find(|(aid, _, _)| *aid == a.id)
                .map(|(_, staged, _)| staged.clone());
            context! { id => a.id, name => &a.name, kind => &a.kind, target => &a.target,
            staged_target => staged_target, status => &a.status, payload => raw,
            fields => form::form_items(&schema, &current, submitted), error => error }
        })
        .collect();
    let stages: Vec<&str> = detail
        .jobs
        .iter()
        .filter(|j| j.stage != "parse" && matches!(j.state.as_str(), "done" | "failed"))
        .map(|j| j.stage.as_str())
        .collect();
    let page_error = flash.error.clone().filter(|_| flash.action.is_none());
    let (previous, next) = neighbours(state, store, id).await?;
    let undecided = review_status == ReviewStatus::ToReview;
    Ok(page(
        StatusCode::OK,
        "message.html",
        context! {
            user => user_ctx(reviewer),
            csrf => &reviewer.session.csrf_token,
            notice => notice.or(flash.notice.as_deref()),
            error => page_error,
            m => &detail.message,
            received => triage::date_header(&header_text),
            subject => subject,
            status => review_status.as_str(),
            undecided => undecided,
            undo => !undecided && store.undoable(id).await?,
            previous => previous,
            next => next,
            decision => decision,
            headers => header_text,
            sender => sender,
            html => html.map(Tpl::from_safe_string),
            text => text,
            attachments => attachments,
            extract => extraction.value.as_ref().map(pretty),
            extract_sources => extraction.sources,
            unread => extraction.unread,
            lookup => output("crossref").map(pretty),
            route => route,
            draft => draft,
            drafts => drafts,
            actions => actions,
            staged => detail.actions.iter().filter(|a| a.status == "staged").count(),
            approvals => approvals,
            second_approver => state.review().second_approver && !changed.is_empty(),
            deliveries => store.deliveries(id).await?,
            stages => stages,
        },
    ))
}

/// The extraction as review shows it: the schema's fields, where each value was found
/// ("msa.pdf p. 37"), and the lines saying what was not read ("msa.pdf: pages 41-50 not
/// read: budget ..."), from the `_document` record the intake keeps beside the fields.
#[derive(Debug, Default, PartialEq)]
struct ExtractionView {
    value: Option<Value>,
    /// (field, where) for each value placed in the document.
    sources: Vec<(String, String)>,
    unread: Vec<String>,
}

impl ExtractionView {
    /// The intake's key for its record of the document (`verre_intake::DOCUMENT_KEY`).
    const DOCUMENT_KEY: &str = "_document";

    fn of(extract: Option<&Value>) -> Self {
        let Some(extract) = extract else {
            return Self::default();
        };
        let mut value = extract.clone();
        let document = value
            .as_object_mut()
            .and_then(|fields| fields.remove(Self::DOCUMENT_KEY))
            .unwrap_or(Value::Null);
        let place = |s: &Value| -> Option<String> {
            let file = s["file"].as_str().unwrap_or("the mail");
            match (s["page"].as_u64(), s["pages"].as_array()) {
                (Some(p), _) => Some(format!("{file} p. {p}")),
                (None, Some(r)) if r.len() == 2 => Some(format!(
                    "{file} pp. {}-{}",
                    r[0].as_u64().unwrap_or(0),
                    r[1].as_u64().unwrap_or(0)
                )),
                _ => s["file"].as_str().map(str::to_string),
            }
        };
        let sources = document["sources"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(field, s)| {
                let at = match s {
                    Value::Array(items) => {
                        let places: Vec<String> = items.iter().filter_map(place).collect();
                        (!places.is_empty()).then(|| places.join("; "))
                    }
                    one => place(one),
                }?;
                Some((field.clone(), at))
            })
            .collect();
        let unread = document["unread"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["line"].as_str().map(str::to_string))
            .collect();
        Self {
            value: Some(value),
            sources,
            unread,
        }
    }
}

/// What the page flags about the sender, from the parse stage's fields: a `Reply-To`
/// other than `From` (replies go there), and whether the receiving server authenticated
/// the sender (`message.auth`, from `Authentication-Results`; None for mail parsed before
/// it was read).
fn sender_ctx(parse: Option<&Value>) -> Tpl {
    let Some(fields) = parse else {
        return Tpl::UNDEFINED;
    };
    let text = |k: &str| fields[k].as_str().unwrap_or("").to_string();
    let (from, reply_to) = (text("from"), text("reply_to"));
    let auth = fields.get("auth").filter(|a| a.is_object());
    context! {
        from => &from,
        reply_to => &reply_to,
        reply_to_differs => !reply_to.is_empty() && !reply_to.eq_ignore_ascii_case(&from),
        auth => auth,
        authenticated => auth.is_some_and(|a| a["dmarc"] == "pass"),
    }
}

#[derive(Deserialize, Default)]
pub struct NoticeQuery {
    notice: Option<String>,
    flash: Option<String>,
}

pub async fn message(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<NoticeQuery>,
) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let notice = q.notice.as_deref().and_then(notice_text);
    let flash = q
        .flash
        .as_deref()
        .and_then(|t| state.review().flashes.get(reviewer.name(), t));
    message_page(&state, &reviewer, id, notice, flash).await
}

/// Notices are picked from a fixed list (never echoed from the URL).
fn notice_text(key: &str) -> Option<&'static str> {
    Some(match key {
        "draft" => "Draft saved.",
        "payload" => "Payload saved.",
        "approved" => "Approved: the actions are in the outbox and being delivered.",
        "awaiting" => {
            "Your approval is recorded. A reply's recipient was changed, so another reviewer must approve before anything is sent."
        }
        "rejected" => "Rejected.",
        "rerun" => "The stage is queued again; intake workers will run it.",
        "undone" => "The decision is undone: nothing was sent, the message is to review again.",
        _ => return None,
    })
}

fn back_to(id: i64, notice: &str) -> Response {
    Redirect::to(&format!("/review/messages/{id}?notice={notice}")).into_response()
}

/// After a decision: the queue, which offers to undo it while nothing was picked up.
fn decided(id: i64, notice: &str) -> Response {
    Redirect::to(&format!("/review?notice={notice}&message={id}")).into_response()
}

/// A store refusal (decided already, invalid payload...) shown on the message page after a
/// redirect, so that reloading the page does not post the form again.
fn refused(
    state: &AppState,
    reviewer: &Reviewer,
    id: i64,
    action: Option<(i64, Vec<(String, String)>)>,
    e: anyhow::Error,
) -> PageResult {
    let token = state.review().flashes.put(
        reviewer.name(),
        Flash {
            error: Some(format!("{e:#}")),
            action,
            ..Default::default()
        },
    );
    Ok(Redirect::to(&format!("/review/messages/{id}?flash={token}")).into_response())
}

#[derive(Deserialize)]
pub struct DraftForm {
    body: String,
}

pub async fn save_draft(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Posted { reviewer, form: f }: Posted<DraftForm>,
) -> PageResult {
    let body = f.body.replace("\r\n", "\n");
    match store(&state)?.save_draft(id, &body, reviewer.name()).await {
        Ok(_) => Ok(back_to(id, "draft")),
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
}

#[derive(Deserialize)]
pub struct PayloadForm {
    payload: String,
}

/// The payload as raw JSON: for admins (reviewers edit it through the form).
pub async fn save_payload(
    State(state): State<Arc<AppState>>,
    Path(action_id): Path<i64>,
    Posted { reviewer, form: f }: Posted<PayloadForm>,
) -> PageResult {
    admin_only(&reviewer)?;
    let store = store(&state)?;
    let id = action_message(store, action_id).await?;
    match store
        .edit_action(action_id, &f.payload, reviewer.name())
        .await
    {
        Ok(()) => Ok(back_to(id, "payload")),
        Err(e) => refused(
            &state,
            &reviewer,
            id,
            Some((action_id, vec![("payload".into(), f.payload)])),
            e,
        ),
    }
}

async fn action_message(store: &Store, action_id: i64) -> Result<i64, PageError> {
    store.action_message(action_id).await?.ok_or_else(|| {
        PageError::new(
            StatusCode::NOT_FOUND,
            format!("there is no action {action_id}"),
        )
    })
}

/// The payload edited through the form generated from its schema, validated against the
/// schema before it is saved.
pub async fn save_fields(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(action_id): Path<i64>,
    Form(fields): Form<Vec<(String, String)>>,
) -> PageResult {
    let csrf = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map_or("", |(_, v)| v.as_str());
    let reviewer = match form_author(&state, &headers, csrf).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let store = store(&state)?;
    let id = action_message(store, action_id).await?;
    let Some(action) = store
        .actions(id)
        .await?
        .into_iter()
        .find(|a| a.id == action_id)
    else {
        return Err(PageError::new(StatusCode::NOT_FOUND, "no such action"));
    };
    let declared = triage::declared_labels(store.stage_output(id, "stage").await?.as_ref());
    let current: Value = serde_json::from_str(&action.payload).unwrap_or(Value::Null);
    let schema = form::payload_schema(&action.kind, &current, &declared);
    let fields: Vec<(String, String)> = fields.into_iter().filter(|(k, _)| k != "csrf").collect();
    let saved = match form::payload_from_form(&schema, &current, &fields) {
        Ok(payload) => {
            store
                .edit_action(action_id, &payload.to_string(), reviewer.name())
                .await
        }
        Err(why) => Err(anyhow::anyhow!(why)),
    };
    match saved {
        Ok(()) => Ok(back_to(id, "payload")),
        Err(e) => refused(&state, &reviewer, id, Some((action_id, fields)), e),
    }
}

/// What approving would send where: every staged action with its resolved target and
/// payload, and whether the configuration allows it. Nothing changes here.
pub async fn confirm(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<NoticeQuery>,
) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let store = store(&state)?;
    let nothing = store
        .actions(id)
        .await?
        .iter()
        .all(|a| a.status != "staged");
    let messages = vec![sending(&state, store, id).await?];
    Ok(page(
        StatusCode::OK,
        "confirm.html",
        context! {
            user => user_ctx(&reviewer),
            csrf => &reviewer.session.csrf_token,
            messages => messages,
            what => if nothing { "file" } else { "approve" },
            post_to => format!("/review/messages/{id}/{}", if nothing { "file" } else { "approve" }),
            single => id,
            notice => q.notice.as_deref().and_then(confirm_notice),
        },
    ))
}

/// The confirmation's notices, from a fixed list.
fn confirm_notice(key: &str) -> Option<&'static str> {
    Some(match key {
        "changed" => {
            "Changed since you confirmed: another reviewer edited what this message sends. Look again before you approve."
        }
        "unconfirmed" => "Confirm what this message sends first.",
        _ => return None,
    })
}

/// One message as the confirmation shows it, with the digest of what it shows that the
/// approval must carry back.
async fn sending(state: &AppState, store: &Store, id: i64) -> Result<Tpl, PageError> {
    let Some(status) = store.review_status(id).await? else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("there is no message {id}"),
        ));
    };
    let (subject, from) = subject_and_from(
        store
            .parts(id)
            .await?
            .iter()
            .find(|p| p.kind == "headers")
            .and_then(|p| p.text.as_deref()),
    );
    let delivery = &state.review().delivery;
    let staged: Vec<_> = store
        .actions(id)
        .await?
        .into_iter()
        .filter(|a| a.status == "staged")
        .collect();
    let digest = staged_digest(&staged);
    let actions: Vec<Tpl> = staged
        .into_iter()
        .map(|a| {
            let payload: Value = serde_json::from_str(&a.payload).unwrap_or(Value::Null);
            let refused = delivery.allow(&a).err();
            context! {
                name => &a.name, kind => &a.kind, target => &a.target,
                subject => payload["subject"].as_str(), body => payload["body"].as_str(),
                payload => pretty(&payload), refused => refused,
            }
        })
        .collect();
    Ok(context! {
        id => id, subject => subject, from => from, status => status.as_str(),
        undecided => status == ReviewStatus::ToReview, actions => actions, digest => digest,
    })
}

#[derive(Deserialize)]
pub struct ApproveForm {
    /// The digest of the staged actions the confirmation showed.
    digest: Option<String>,
}

/// Approve what the confirmation showed: an approval without its digest, or with one that
/// no longer matches, goes back to the confirmation.
pub async fn approve(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Posted { reviewer, form: f }: Posted<ApproveForm>,
) -> PageResult {
    let Some(digest) = f.digest.filter(|d| !d.is_empty()) else {
        return Ok(to_confirmation(id, "unconfirmed"));
    };
    match approve_one(&state, &reviewer, id, &digest).await {
        Ok(true) => Ok(back_to(id, "awaiting")),
        Ok(false) => Ok(decided(id, "approved")),
        Err(e) if e.is::<ChangedSinceConfirmed>() => Ok(to_confirmation(id, "changed")),
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
}

fn to_confirmation(id: i64, notice: &str) -> Response {
    Redirect::to(&format!("/review/messages/{id}/confirm?notice={notice}")).into_response()
}

/// Approve a message as confirmed (`digest`; true: recorded, waiting for a second approver).
async fn approve_one(
    state: &AppState,
    reviewer: &Reviewer,
    id: i64,
    digest: &str,
) -> anyhow::Result<bool> {
    let settings = state.review();
    let delivery = settings.delivery.clone();
    let allow = move |a: &verre_store::ActionRow| delivery.allow(a);
    let store = state
        .store()
        .ok_or_else(|| anyhow::anyhow!("this server was started without a database"))?;
    let approval = store
        .approve_confirmed(
            id,
            reviewer.name(),
            &allow,
            settings.second_approver,
            Some(digest),
        )
        .await?;
    if approval.awaiting.is_some() {
        return Ok(true);
    }
    settings.wake.notify_one();
    Ok(false)
}

#[derive(Deserialize)]
pub struct RejectForm {
    reason: String,
}

pub async fn reject(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Posted { reviewer, form: f }: Posted<RejectForm>,
) -> PageResult {
    match store(&state)?.reject(id, reviewer.name(), &f.reason).await {
        Ok(_) => Ok(decided(id, "rejected")),
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
}

/// File a message that has nothing to send.
pub async fn file(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Posted { reviewer, .. }: Posted<NoFields>,
) -> PageResult {
    match store(&state)?.file_message(id, reviewer.name()).await {
        Ok(_) => Ok(decided(id, "filed")),
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
}

/// Undo a decision while the delivery worker has not picked anything of it up.
pub async fn undo(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Posted { reviewer, .. }: Posted<NoFields>,
) -> PageResult {
    match store(&state)?.undo_decision(id, reviewer.name()).await {
        Ok(_) => Ok(back_to(id, "undone")),
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
}

/// The messages a bulk decision is about, from the checked boxes (`id=1&id=2`) or a list
/// (`ids=1,2`); at most [`BULK_LIMIT`].
fn bulk_ids(pairs: &[(String, String)]) -> Result<Vec<i64>, PageError> {
    let mut ids = Vec::new();
    for (k, v) in pairs {
        let values: Vec<&str> = match k.as_str() {
            "id" => vec![v.as_str()],
            "ids" => v.split(',').filter(|s| !s.is_empty()).collect(),
            _ => continue,
        };
        for s in values {
            let id = s.trim().parse::<i64>().map_err(|_| {
                PageError::new(StatusCode::BAD_REQUEST, format!("not a message id: {s:?}"))
            })?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    if ids.is_empty() {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            "tick the messages to decide on first",
        ));
    }
    if ids.len() > BULK_LIMIT {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            format!("at most {BULK_LIMIT} messages at once"),
        ));
    }
    Ok(ids)
}

/// The most messages one bulk decision covers.
const BULK_LIMIT: usize = 100;

fn bulk_what(pairs: &[(String, String)]) -> Result<&'static str, PageError> {
    let what = pairs
        .iter()
        .find(|(k, _)| k == "do")
        .map_or("", |(_, v)| v.as_str());
    ["approve", "reject", "file"]
        .into_iter()
        .find(|w| *w == what)
        .ok_or_else(|| PageError::new(StatusCode::BAD_REQUEST, "choose approve, reject or file"))
}

/// The one confirmation of a bulk decision: every message with what it would send where.
pub async fn bulk_confirm(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let ids = bulk_ids(&pairs)?;
    let what = bulk_what(&pairs)?;
    let store = store(&state)?;
    let mut messages = Vec::new();
    for &id in &ids {
        messages.push(sending(&state, store, id).await?);
    }
    let flash = pairs
        .iter()
        .find(|(k, _)| k == "flash")
        .and_then(|(_, t)| state.review().flashes.get(reviewer.name(), t))
        .unwrap_or_default();
    Ok(page(
        StatusCode::OK,
        "confirm.html",
        context! {
            user => user_ctx(&reviewer),
            csrf => &reviewer.session.csrf_token,
            messages => messages,
            notice => flash.notice,
            error => flash.error,
            what => what,
            ids => ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
        },
    ))
}

/// A bulk decision, confirmed: each message decided in its own transaction; what was
/// refused is listed on the queue.
pub async fn bulk(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map_or("", |(_, v)| v.as_str());
    let reviewer = match form_author(&state, &headers, csrf).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let ids = bulk_ids(&pairs)?;
    let what = bulk_what(&pairs)?;
    let reason = pairs
        .iter()
        .find(|(k, _)| k == "reason")
        .map_or("", |(_, v)| v.as_str());
    let store = store(&state)?;
    let (mut done, mut problems, mut changed) = (0, Vec::new(), Vec::new());
    for id in ids {
        let outcome = match what {
            "approve" => {
                // Each message's confirmation digest (`digest.ID`); none is never a match.
                let key = format!("digest.{id}");
                let digest = pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or("", |(_, v)| v.as_str());
                match approve_one(&state, &reviewer, id, digest).await {
                    Ok(true) => Err(anyhow::anyhow!(
                        "your approval is recorded; a reply's recipient was changed, so another reviewer must approve too"
                    )),
                    Err(e) if e.is::<ChangedSinceConfirmed>() => {
                        changed.push(id);
                        continue;
                    }
                    other => other.map(|_| ()),
                }
            }
            "reject" => store.reject(id, reviewer.name(), reason).await.map(|_| ()),
            _ => store.file_message(id, reviewer.name()).await.map(|_| ()),
        };
        match outcome {
            Ok(()) => done += 1,
            Err(e) => problems.push(format!("message {id}: {e:#}")),
        }
    }
    let past = match what {
        "approve" => "approved",
        "reject" => "rejected",
        _ => "filed",
    };
    if !changed.is_empty() {
        problems.push(format!(
            "changed since you confirmed, not approved: {}; look again",
            changed
                .iter()
                .map(|id| format!("message {id}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let token = state.review().flashes.put(
        reviewer.name(),
        Flash {
            notice: Some(format!("{done} message(s) {past}.")),
            error: (!problems.is_empty()).then(|| problems.join("; ")),
            action: None,
        },
    );
    if !changed.is_empty() {
        // Back to the confirmation of what changed, as it stands now.
        let ids = changed.iter().map(i64::to_string).collect::<Vec<_>>();
        return Ok(Redirect::to(&format!(
            "/review/bulk?do=approve&ids={}&flash={token}",
            ids.join(",")
        ))
        .into_response());
    }
    Ok(Redirect::to(&format!("/review?flash={token}")).into_response())
}

#[derive(Deserialize)]
pub struct RerunForm {
    stage: String,
}

pub async fn rerun(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Posted { reviewer, form: f }: Posted<RerunForm>,
) -> PageResult {
    match store(&state)?
        .rerun_stage(id, &f.stage, reviewer.name())
        .await
    {
        Ok(()) => Ok(back_to(id, "rerun")),
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
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

pub async fn retry_delivery(
    State(state): State<Arc<AppState>>,
    Path(outbox_id): Path<i64>,
    Posted { reviewer, .. }: Posted<NoFields>,
) -> PageResult {
    admin_only(&reviewer)?;
    let done = store(&state)?
        .retry_delivery(outbox_id, reviewer.name())
        .await;
    if done.is_ok() {
        state.review().wake.notify_one();
    }
    Ok(to_deliveries(
        &state,
        &reviewer,
        done.map(|_| "Retrying: attempts reset."),
    ))
}

#[derive(Deserialize)]
pub struct EndpointForm {
    url: String,
}

pub async fn enable_endpoint(
    State(state): State<Arc<AppState>>,
    Posted { reviewer, form: f }: Posted<EndpointForm>,
) -> PageResult {
    admin_only(&reviewer)?;
    let done = store(&state)?
        .enable_endpoint(&f.url, reviewer.name())
        .await;
    Ok(to_deliveries(
        &state,
        &reviewer,
        done.map(|_| "Endpoint re-enabled."),
    ))
}

/// Back to the deliveries page with what happened (post/redirect/get).
fn to_deliveries(state: &AppState, reviewer: &Reviewer, outcome: anyhow::Result<&str>) -> Response {
    let flash = match outcome {
        Ok(notice) => Flash {
            notice: Some(notice.to_string()),
            ..Default::default()
        },
        Err(e) => Flash {
            error: Some(format!("{e:#}")),
            ..Default::default()
        },
    };
    let token = state.review().flashes.put(reviewer.name(), flash);
    Redirect::to(&format!("/review/deliveries?flash={token}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extraction_shows_each_value_s_page_and_what_was_not_read() {
        let extract = serde_json::json!({
            "counterparty": "Northwind", "deadline": "2027-09-15", "tags": ["a", "b"], "level": "high",
            "_document": {"chunks": 6, "pages_read": 40, "pages_total": 50,
                "unread": [{"line": "msa.pdf: pages 41-50 not read: budget (max_pages = 40)"}],
                "sources": {
                    "counterparty": {"part": 2, "file": "msa.pdf", "page": 1},
                    "deadline": {"part": 2, "file": "msa.pdf", "pages": [36, 40]},
                    "tags": [{"part": 2, "file": "msa.pdf", "page": 3}, {"part": 1}],
                }}
        });
        let view = ExtractionView::of(Some(&extract));
        assert!(view.value.as_ref().unwrap().get("_document").is_none());
        assert_eq!(view.value.as_ref().unwrap()["level"], "high");
        let at = |f: &str| {
            view.sources
                .iter()
                .find(|(k, _)| k == f)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(at("counterparty"), Some("msa.pdf p. 1"));
        assert_eq!(at("deadline"), Some("msa.pdf pp. 36-40"));
        assert_eq!(at("tags"), Some("msa.pdf p. 3"));
        assert_eq!(at("level"), None);
        assert_eq!(
            view.unread,
            ["msa.pdf: pages 41-50 not read: budget (max_pages = 40)"]
        );
        assert_eq!(ExtractionView::of(None), ExtractionView::default());
    }

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
    fn mail_html_loses_everything_active() {
        let clean = sanitize_mail_html(
            r#"<p onclick="x()">Hi <b>there</b></p><script>alert(1)</script><img src="https://track.example/p.gif"><a href="javascript:alert(1)">a</a><a href="https://ok.example/">b</a><style>p{}</style><iframe src="https://x"></iframe>"#,
        );
        assert!(clean.contains("<b>there</b>"), "{clean}");
        for gone in [
            "script",
            "onclick",
            "<img",
            "track.example",
            "javascript:",
            "<style",
            "iframe",
        ] {
            assert!(!clean.contains(gone), "{gone} survived: {clean}");
        }
        assert!(
            clean.contains(r#"href="https://ok.example/""#) && clean.contains("noopener"),
            "{clean}"
        );
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
