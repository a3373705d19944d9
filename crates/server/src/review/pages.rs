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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use verre_store::review::{LoginRefusal, LoginReservation, QueueFilter, ReviewStatus};
use verre_store::{Store, now_ms};

use super::auth::{self, LOGIN_CSRF_COOKIE, Reviewer, SESSION_COOKIE};
use crate::AppState;

/// Nothing loads from anywhere but this server, no script runs, no page frames this one.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = include_str!("templates/style.css");

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
}

#[derive(Serialize)]
struct Label {
    key: String,
    value: String,
}

/// The short string values of an extraction: its labels (threat_level, intent...).
fn labels_of(extract: Option<&Value>) -> Vec<Label> {
    let Some(Value::Object(map)) = extract else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(k, v)| {
            let v = v.as_str()?;
            (v.len() <= 24 && !v.contains(char::is_whitespace)).then(|| Label {
                key: k.clone(),
                value: v.to_string(),
            })
        })
        .collect()
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

async fn headers_text(store: &Store, message_id: i64) -> anyhow::Result<Option<String>> {
    Ok(store
        .parts(message_id)
        .await?
        .into_iter()
        .find(|p| p.kind == "headers")
        .and_then(|p| p.text))
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
    let all = store
        .review_queue(&QueueFilter {
            status,
            label: None,
            limit: 0,
        })
        .await?;
    let mut options: BTreeMap<(String, String), usize> = BTreeMap::new();
    for item in &all {
        for l in labels_of(item.extract.as_ref()) {
            *options.entry((l.key, l.value)).or_default() += 1;
        }
    }
    let wanted = label.as_deref().and_then(|l| l.split_once('='));
    let mut items = Vec::new();
    for item in all
        .iter()
        .filter(|i| {
            wanted.is_none_or(|(k, v)| {
                labels_of(i.extract.as_ref())
                    .iter()
                    .any(|l| l.key == k && l.value == v)
            })
        })
        .take(200)
    {
        let (subject, from) =
            subject_and_from(headers_text(store, item.message.id).await?.as_deref());
        items.push(context! {
            id => item.message.id,
            received_at => item.message.received_at,
            source_ref => &item.message.source_ref,
            subject => subject,
            from => from,
            labels => labels_of(item.extract.as_ref()),
            route => &item.route,
            actions => item.actions,
            status => item.status.as_str(),
        });
    }
    let failed = store.deliveries_with_status("failed").await?.len();
    Ok(page(
        StatusCode::OK,
        "queue.html",
        context! {
            user => user_ctx(&reviewer),
            csrf => &reviewer.session.csrf_token,
            items => items,
            statuses => ReviewStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            status => status_name,
            labels => options.keys().map(|(k, v)| Label { key: k.clone(), value: v.clone() }).collect::<Vec<_>>(),
            label => label.unwrap_or_default(),
            failed => failed,
        },
    ))
}

pub async fn deliveries(State(state): State<Arc<AppState>>, headers: HeaderMap) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
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

/// What the page shows about an edit that did not go through.
struct Problem {
    action: Option<(i64, String)>,
    message: String,
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

async fn message_page(
    state: &AppState,
    reviewer: &Reviewer,
    id: i64,
    status: StatusCode,
    notice: Option<&str>,
    problem: Option<Problem>,
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
    let route = output("route")
        .and_then(|r| r["route"].as_str())
        .map(str::to_string);
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
    let actions: Vec<Tpl> = detail
        .actions
        .iter()
        .map(|a| {
            let (payload, error) = match &problem {
                Some(Problem {
                    action: Some((aid, submitted)),
                    message,
                }) if *aid == a.id => (submitted.clone(), Some(message.clone())),
                _ => (
                    serde_json::from_str::<Value>(&a.payload)
                        .map(|v| pretty(&v))
                        .unwrap_or_else(|_| a.payload.clone()),
                    None,
                ),
            };
            let staged_target = changed
                .iter()
                .find(|(aid, _, _)| *aid == a.id)
                .map(|(_, staged, _)| staged.clone());
            context! { id => a.id, name => &a.name, kind => &a.kind, target => &a.target,
            staged_target => staged_target, status => &a.status, payload => payload, error => error }
        })
        .collect();
    let stages: Vec<&str> = detail
        .jobs
        .iter()
        .filter(|j| j.stage != "parse" && matches!(j.state.as_str(), "done" | "failed"))
        .map(|j| j.stage.as_str())
        .collect();
    let page_error = problem
        .as_ref()
        .filter(|p| p.action.is_none())
        .map(|p| p.message.clone());
    Ok(page(
        status,
        "message.html",
        context! {
            user => user_ctx(reviewer),
            csrf => &reviewer.session.csrf_token,
            notice => notice,
            error => page_error,
            m => &detail.message,
            subject => subject,
            status => review_status.as_str(),
            undecided => review_status == ReviewStatus::ToReview,
            decision => decision,
            headers => header_text,
            sender => sender,
            html => html.map(Tpl::from_safe_string),
            text => text,
            attachments => attachments,
            extract => output("extract").map(pretty),
            lookup => output("crossref").map(pretty),
            route => route,
            draft => draft,
            drafts => drafts,
            actions => actions,
            approvals => approvals,
            second_approver => state.review().second_approver && !changed.is_empty(),
            deliveries => store.deliveries(id).await?,
            stages => stages,
        },
    ))
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
    message_page(&state, &reviewer, id, StatusCode::OK, notice, None).await
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
        _ => return None,
    })
}

fn back_to(id: i64, notice: &str) -> Response {
    Redirect::to(&format!("/review/messages/{id}?notice={notice}")).into_response()
}

/// A store refusal (decided already, invalid payload...) shown on the message page.
async fn refused(
    state: &AppState,
    reviewer: &Reviewer,
    id: i64,
    action: Option<(i64, String)>,
    e: anyhow::Error,
) -> PageResult {
    message_page(
        state,
        reviewer,
        id,
        StatusCode::UNPROCESSABLE_ENTITY,
        None,
        Some(Problem {
            action,
            message: format!("{e:#}"),
        }),
    )
    .await
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
        Err(e) => refused(&state, &reviewer, id, None, e).await,
    }
}

#[derive(Deserialize)]
pub struct PayloadForm {
    payload: String,
}

pub async fn save_payload(
    State(state): State<Arc<AppState>>,
    Path(action_id): Path<i64>,
    Posted { reviewer, form: f }: Posted<PayloadForm>,
) -> PageResult {
    let store = store(&state)?;
    let Some(id) = store.action_message(action_id).await? else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("there is no action {action_id}"),
        ));
    };
    match store
        .edit_action(action_id, &f.payload, reviewer.name())
        .await
    {
        Ok(()) => Ok(back_to(id, "payload")),
        Err(e) => refused(&state, &reviewer, id, Some((action_id, f.payload)), e).await,
    }
}

pub async fn approve(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Posted { reviewer, .. }: Posted<NoFields>,
) -> PageResult {
    let settings = state.review();
    let delivery = settings.delivery.clone();
    let allow = move |a: &verre_store::ActionRow| delivery.allow(a);
    match store(&state)?
        .approve_with(id, reviewer.name(), &allow, settings.second_approver)
        .await
    {
        Ok(approval) if approval.awaiting.is_some() => Ok(back_to(id, "awaiting")),
        Ok(_) => {
            settings.wake.notify_one();
            Ok(back_to(id, "approved"))
        }
        Err(e) => refused(&state, &reviewer, id, None, e).await,
    }
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
        Ok(_) => Ok(back_to(id, "rejected")),
        Err(e) => refused(&state, &reviewer, id, None, e).await,
    }
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
        Err(e) => refused(&state, &reviewer, id, None, e).await,
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
    store(&state)?
        .retry_delivery(outbox_id, reviewer.name())
        .await
        .map_err(|e| PageError::new(StatusCode::CONFLICT, format!("{e:#}")))?;
    state.review().wake.notify_one();
    Ok(Redirect::to("/review/deliveries").into_response())
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
    store(&state)?
        .enable_endpoint(&f.url, reviewer.name())
        .await
        .map_err(|e| PageError::new(StatusCode::CONFLICT, format!("{e:#}")))?;
    Ok(Redirect::to("/review/deliveries").into_response())
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
