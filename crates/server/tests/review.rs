//! The review UI through the router (login, CSRF, rate limit, decisions) and the delivery
//! worker against a webhook receiver and an SMTP sink on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use reqwest::Url;
use serde_json::json;
use tower::ServiceExt;
use verre_delivery::WebhookSecret;
use verre_delivery::mail::{Security, SmtpConfig};
use verre_delivery::testing::SmtpSink;
use verre_server::AppState;
use verre_server::gateway::policy::Policy;
use verre_server::review::worker::Deliverer;
use verre_server::review::{DeliverySettings, ReviewSettings, WebhookTarget, auth};
use verre_store::{NewAction, StageEffects, Store, now_ms};

// --- fixtures -------------------------------------------------------------------------

/// Receives webhooks, checks each signature, answers from a script (then 204).
struct Receiver {
    secret: WebhookSecret,
    /// (webhook-id, signature valid, body) per request.
    seen: Mutex<Vec<(String, bool, String)>>,
    script: Mutex<Vec<Response>>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ok = r
        .secret
        .verify(
            &h("webhook-id"),
            &h("webhook-timestamp"),
            &h("webhook-signature"),
            &body,
            now,
            300,
        )
        .is_ok();
    r.seen.lock().unwrap().push((
        h("webhook-id"),
        ok,
        String::from_utf8_lossy(&body).into_owned(),
    ));
    let mut script = r.script.lock().unwrap();
    if script.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        script.remove(0)
    }
}

async fn receiver(script: Vec<Response>) -> (String, Arc<Receiver>) {
    let r = Arc::new(Receiver {
        secret: WebhookSecret::generate(),
        seen: Mutex::default(),
        script: Mutex::new(script),
    });
    let app = Router::new()
        .route("/hooks/{name}", post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hooks/"), r)
}

struct Fixture {
    _dir: tempfile::TempDir,
    url: String,
    store: Store,
    settings: ReviewSettings,
    hooks: String,
    receiver: Arc<Receiver>,
    sink: SmtpSink,
}

async fn fixture(script: Vec<Response>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("verre.db").display());
    let store = Store::open(&url).await.unwrap();
    let (hooks, receiver) = receiver(script).await;
    let sink = SmtpSink::start().await.unwrap();
    let settings = ReviewSettings {
        delivery: Arc::new(DeliverySettings {
            policy: Policy::new(vec!["EU".into()], vec![]),
            webhooks: vec![WebhookTarget {
                url: Url::parse(&hooks).unwrap(),
                jurisdiction: "EU-FR".into(),
                secret: receiver.secret.clone(),
            }],
            smtp: Some(SmtpConfig {
                host: "127.0.0.1".into(),
                port: sink.port,
                security: Security::PlainLoopback,
                username_env: None,
                password_env: None,
                from: "Support <support@verre.test>".into(),
            }),
            timeout: Duration::from_secs(5),
        }),
        ..Default::default()
    };
    Fixture {
        _dir: dir,
        url,
        store,
        settings,
        hooks,
        receiver,
        sink,
    }
}

/// A message through extract -> draft -> stage with a reply and a webhook to `hook`.
async fn processed(store: &Store, n: u32, hook: &str) -> i64 {
    let raw = format!(
        "Message-ID: <m{n}@client.test>\r\nFrom: Alice <alice@client.test>\r\nSubject: Order {n}\r\n\r\nPlease call me.\r\n"
    );
    let id = store
        .ingest("test", "m.eml", raw.as_bytes(), "extract", 3)
        .await
        .unwrap()
        .message_id;
    let steps = [
        (json!({"customer": "ACME", "threat_level": "high"}), Some("draft"), vec![]),
        (json!({"draft": "We will call you."}), Some("stage"), vec![]),
        (
            json!({"actions": ["reply", "crm"]}),
            None,
            vec![
                NewAction {
                    name: "reply".into(),
                    kind: "reply".into(),
                    target: "alice@client.test".into(),
                    payload: json!({"to": "alice@client.test", "subject": format!("Re: Order {n}"), "body": "We will call you."}).to_string(),
                },
                NewAction {
                    name: "crm".into(),
                    kind: "webhook".into(),
                    target: hook.to_string(),
                    payload: json!({"message": id, "n": n}).to_string(),
                },
            ],
        ),
    ];
    for (output, next, actions) in steps {
        let job = store
            .claim("w", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let effects = StageEffects {
            output,
            actions,
            ..Default::default()
        };
        assert!(store.complete(&job, &effects, next, 3).await.unwrap());
    }
    id
}

fn app(f: &Fixture) -> Router {
    verre_server::router(Arc::new(
        AppState::new(None)
            .with_store(f.store.clone())
            .with_review(f.settings.clone()),
    ))
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let r = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The page a post redirected to (post/redirect/get): its status and HTML.
async fn followed(app: &Router, headers: &HeaderMap, cookie: &str) -> (StatusCode, String) {
    let to = headers[header::LOCATION].to_str().unwrap();
    let (status, _, html) = send(app, get(to, cookie)).await;
    (status, html)
}

fn get(path: &str, cookie: &str) -> Request<Body> {
    Request::get(path)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

fn form(path: &str, cookie: &str, fields: &[(&str, &str)]) -> Request<Body> {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    Request::post(path)
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the first `name="csrf"` field in a page.
fn csrf_in(html: &str) -> String {
    let at =
        html.find(r#"name="csrf" value=""#).expect("a csrf field") + r#"name="csrf" value=""#.len();
    html[at..].split('"').next().unwrap().to_string()
}

/// The digest of what a message's confirmation shows, as an approval carries it back.
async fn digest_of(store: &Store, id: i64) -> String {
    verre_store::review::staged_digest(&store.actions(id).await.unwrap())
}

/// The value of the first field named `name` in a page.
fn field_in(html: &str, name: &str) -> Option<String> {
    let key = format!(r#"name="{name}" value=""#);
    let at = html.find(&key)? + key.len();
    Some(html[at..].split('"').next()?.to_string())
}

fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// Log in through the form; returns the session cookie header.
async fn log_in(app: &Router, name: &str, password: &str) -> String {
    let (_, headers, html) = send(app, get("/review/login", "")).await;
    let login_cookie = set_cookie(&headers, auth::LOGIN_CSRF_COOKIE).unwrap();
    let pair = login_cookie.split(';').next().unwrap().to_string();
    let (status, headers, body) = send(
        app,
        form(
            "/review/login",
            &pair,
            &[
                ("csrf", &csrf_in(&html)),
                ("name", name),
                ("password", password),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    set_cookie(&headers, auth::SESSION_COOKIE)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

async fn add_user(store: &Store, name: &str, password: &str, role: &str) {
    let hash = auth::hash_password(password).unwrap();
    store.add_user(name, &hash, role).await.unwrap();
}

// --- the UI ---------------------------------------------------------------------------

#[tokio::test]
async fn login_sessions_csrf_and_the_rate_limit() {
    let f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    let app = app(&f);

    // Not signed in: to the login page.
    let (status, headers, _) = send(&app, get("/review", "")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/review/login");

    // The login form's own CSRF token (double submit) is required.
    let (status, headers, html) = send(&app, get("/review/login", "")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let token = csrf_in(&html);
    let cookie = format!("{}={token}", auth::LOGIN_CSRF_COOKIE);
    let fields = |pw: &'static str| {
        [
            ("csrf", token.clone()),
            ("name", "alice".into()),
            ("password", pw.to_string()),
        ]
    };
    let as_refs = |f: &[(&'static str, String); 3]| {
        f.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()
    };
    let post = |c: &str, f: Vec<(&'static str, String)>| {
        let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        form("/review/login", c, &refs)
    };
    let (status, _, _) = send(
        &app,
        post(
            &format!("{}=other", auth::LOGIN_CSRF_COOKIE),
            as_refs(&fields("alice-password")),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a wrong login CSRF token");

    // Five wrong passwords, then even the right one is refused for a while.
    for _ in 0..5 {
        let (status, _, body) = send(&app, post(&cookie, as_refs(&fields("wrong-password")))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("Wrong user name or password"));
    }
    let (status, headers, _) = send(&app, post(&cookie, as_refs(&fields("alice-password")))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Until the first failure leaves the 15-minute window.
    let wait: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((800..=900).contains(&wait), "{wait}");
    // An unknown user is refused like a wrong password.
    add_user(&f.store, "bob", "bob-password", "admin").await;
    let unknown = [
        ("csrf", token.clone()),
        ("name", "nobody".to_string()),
        ("password", "x".to_string()),
    ];
    let (status, _, _) = send(&app, post(&cookie, unknown.to_vec())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // bob logs in over TLS (the proxy says so): the cookies are HttpOnly, SameSite=Strict,
    // Secure and __Host- prefixed.
    let mut login_page = get("/review/login", "");
    login_page
        .headers_mut()
        .insert("x-forwarded-proto", "https".parse().unwrap());
    let (_, headers, html) = send(&app, login_page).await;
    let pair = set_cookie(&headers, &format!("__Host-{}", auth::LOGIN_CSRF_COOKIE))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let req = Request::post("/review/login")
        .header(header::COOKIE, &pair)
        .header("x-forwarded-proto", "https")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!(
            "csrf={}&name=bob&password=bob-password",
            csrf_in(&html)
        )))
        .unwrap();
    let (status, headers, _) = send(&app, req).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // Over TLS the cookie takes the __Host- prefix (so Path=/).
    let session = set_cookie(&headers, &format!("__Host-{}", auth::SESSION_COOKIE)).unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/;"] {
        assert!(session.contains(attr), "{attr} missing: {session}");
    }
    let bob = session.split(';').next().unwrap().to_string();
    let https = |mut req: Request<Body>| {
        req.headers_mut()
            .insert("x-forwarded-proto", "https".parse().unwrap());
        req
    };
    let (status, _, html) = send(&app, https(get("/review", &bob))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Review queue") && html.contains("bob (admin)"));
    // The same token without the prefix is not the session cookie over TLS.
    let unprefixed = bob.trim_start_matches("__Host-").to_string();
    let (status, _, _) = send(&app, https(get("/review", &unprefixed))).await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    // Log out ends the session.
    let (status, _, _) = send(
        &app,
        https(form("/review/logout", &bob, &[("csrf", &csrf_in(&html))])),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = send(&app, https(get("/review", &bob))).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "the old cookie no longer works"
    );
}

#[tokio::test]
async fn decisions_need_the_csrf_token_and_are_audited_with_the_user() {
    let f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    let hook = format!("{}crm", f.hooks);
    let id = processed(&f.store, 1, &hook).await;
    let outside = processed(&f.store, 2, "https://elsewhere.example/hook").await;
    let app = app(&f);
    let alice = log_in(&app, "alice", "alice-password").await;

    let (status, headers, html) = send(&app, get(&format!("/review/messages/{id}"), &alice)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(html.contains("Please call me.") && html.contains("threat_level"));
    let csrf = csrf_in(&html);

    // A wrong token changes nothing.
    let (status, _, body) = send(
        &app,
        form(
            &format!("/review/messages/{id}/approve"),
            &alice,
            &[("csrf", "forged")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(f.store.decision(id).await.unwrap().is_none());
    let (status, _, _) = send(
        &app,
        form(
            &format!("/review/messages/{id}/draft"),
            &alice,
            &[("body", "x")],
        ),
    )
    .await;
    assert!(status.is_client_error(), "no token at all: {status}");

    // The raw JSON is for admins; a reviewer edits the payload through its form.
    let crm = f.store.actions(id).await.unwrap()[1].id;
    let (status, _, _) = send(
        &app,
        form(
            &format!("/review/actions/{crm}/payload"),
            &alice,
            &[("csrf", &csrf), ("payload", "{\"n\": 3}")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains(r#"name="p.n""#), "{html}");
    // An invalid field is refused; the redirect's page shows it back with the error, and
    // reloading that page posts nothing.
    let (status, headers, _) = send(
        &app,
        form(
            &format!("/review/actions/{crm}/fields"),
            &alice,
            &[("csrf", &csrf), ("p.n", "seven")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, html) = followed(&app, &headers, &alice).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("not a whole number") && html.contains(r#"value="seven""#),
        "{html}"
    );
    let audited = f.store.audit_entries(0, 100).await.unwrap();
    assert!(!audited.iter().any(|e| e.action == "review.edit_action"));
    // A valid one is saved, as JSON of the schema's types.
    let (status, _, _) = send(
        &app,
        form(
            &format!("/review/actions/{crm}/fields"),
            &alice,
            &[("csrf", &csrf), ("p.n", "12")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let saved: serde_json::Value =
        serde_json::from_str(&f.store.actions(id).await.unwrap()[1].payload).unwrap();
    assert_eq!(saved, json!({"message": id, "n": 12}));

    // Draft edit, approve.
    let (status, _, _) = send(
        &app,
        form(
            &format!("/review/messages/{id}/draft"),
            &alice,
            &[("csrf", &csrf), ("body", "We called you today.")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let digest = digest_of(&f.store, id).await;
    let (status, _, _) = send(
        &app,
        form(
            &format!("/review/messages/{id}/approve"),
            &alice,
            &[("csrf", &csrf), ("digest", &digest)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(f.store.deliveries(id).await.unwrap().len(), 2);

    // A webhook outside the configured targets cannot be approved.
    let digest = digest_of(&f.store, outside).await;
    let (status, headers, _) = send(
        &app,
        form(
            &format!("/review/messages/{outside}/approve"),
            &alice,
            &[("csrf", &csrf), ("digest", &digest)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, html) = followed(&app, &headers, &alice).await;
    assert!(html.contains("under no [[delivery.webhook]]"), "{html}");
    assert!(f.store.deliveries(outside).await.unwrap().is_empty());
    // Reject it instead, with a reason.
    let (status, _, _) = send(
        &app,
        form(
            &format!("/review/messages/{outside}/reject"),
            &alice,
            &[("csrf", &csrf), ("reason", "not ours")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    let log = f.store.audit_entries(0, 100).await.unwrap();
    let decisions: Vec<(&str, &str)> = log
        .iter()
        .filter(|e| e.action.starts_with("review.") && e.action != "review.login")
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        decisions,
        [
            ("user:alice", "review.edit_action"),
            ("user:alice", "review.edit_draft"),
            ("user:alice", "review.approve"),
            ("user:alice", "review.reject")
        ]
    );
    // Queue filters: by status and label.
    let (_, _, html) = send(
        &app,
        get("/review?status=approved&label=threat_level%3Dhigh", &alice),
    )
    .await;
    assert!(
        html.contains(&format!("/review/messages/{id}\""))
            && !html.contains(&format!("/review/messages/{outside}\""))
    );
    let (_, _, html) = send(&app, get("/review?status=to_review", &alice)).await;
    assert!(!html.contains(&format!("/review/messages/{id}\"")));
}

// --- the delivery worker --------------------------------------------------------------

async fn force_due(store: &Store) {
    sqlx::query("UPDATE outbox SET next_attempt_at = 0 WHERE status = 'pending'")
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn webhooks_are_signed_retried_as_scheduled_and_replies_are_mailed() {
    let busy = (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "600")]).into_response();
    let f = fixture(vec![StatusCode::SERVICE_UNAVAILABLE.into_response(), busy]).await;
    let id = processed(&f.store, 1, &format!("{}crm", f.hooks)).await;
    f.store
        .save_draft(id, "We called you today.", "alice")
        .await
        .unwrap();
    f.store
        .approve(id, "alice", &|a| f.settings.delivery.allow(a))
        .await
        .unwrap();
    let worker = Deliverer::new(f.store.clone(), f.settings.delivery.clone()).unwrap();

    // The reply, then the webhook's first attempt (503: again in 5 s).
    assert!(worker.run_once().await.unwrap());
    let before = now_ms();
    assert!(worker.run_once().await.unwrap());
    assert!(!worker.run_once().await.unwrap(), "nothing due");
    let hook = f
        .store
        .deliveries(id)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.kind == "webhook")
        .unwrap();
    assert_eq!(
        (hook.status.as_str(), hook.attempts, hook.last_status),
        ("pending", 1, Some(503))
    );
    let wait = hook.next_attempt_at - before;
    assert!((4_900..6_000).contains(&wait), "{wait}");

    // 429 with Retry-After: 600 s, more than the schedule's 5 min.
    force_due(&f.store).await;
    let before = now_ms();
    assert!(worker.run_once().await.unwrap());
    let hook = f
        .store
        .deliveries(id)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.kind == "webhook")
        .unwrap();
    let wait = hook.next_attempt_at - before;
    assert!((599_000..601_000).contains(&wait), "{wait}");

    force_due(&f.store).await;
    assert!(worker.run_once().await.unwrap());
    let hook = f
        .store
        .deliveries(id)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.kind == "webhook")
        .unwrap();
    assert_eq!((hook.status.as_str(), hook.attempts), ("sent", 3));
    let seen = f.receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|(wid, ok, _)| *ok && *wid == hook.webhook_id),
        "{seen:?}"
    );
    assert_eq!(f.store.delivery_attempts(hook.id).await.unwrap().len(), 3);

    // The reply reached the relay, threaded, with the edited draft.
    let mail = f.sink.received();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].to, ["<alice@client.test>"]);
    assert!(
        mail[0].data.contains("In-Reply-To: <m1@client.test>"),
        "{}",
        mail[0].data
    );
    assert!(mail[0].data.contains("Subject: Re: Order 1"));
    assert!(mail[0].data.contains("We called you today."));
    let actions: Vec<String> = f
        .store
        .actions(id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(actions, ["sent", "sent"]);
    assert!(f.store.audit_verify().await.unwrap().ok());
}

#[tokio::test]
async fn gone_endpoints_are_disabled_and_the_last_attempt_fails_visibly() {
    let f = fixture(vec![StatusCode::GONE.into_response()]).await;
    let hook = format!("{}crm", f.hooks);
    let a = processed(&f.store, 1, &hook).await;
    let b = processed(&f.store, 2, &hook).await;
    let c = processed(&f.store, 3, &format!("{}other", f.hooks)).await;
    for id in [a, b, c] {
        // Only the webhooks matter here.
        let reply = f.store.actions(id).await.unwrap()[0].id;
        sqlx::query("UPDATE actions SET status = 'rejected' WHERE id = $1")
            .bind(reply)
            .execute(f.store.pool())
            .await
            .unwrap();
        f.store
            .approve(id, "alice", &|x| f.settings.delivery.allow(x))
            .await
            .unwrap();
    }
    let worker = Deliverer::new(f.store.clone(), f.settings.delivery.clone()).unwrap();
    // a: 410. b: same URL, disabled now, not even sent.
    assert!(worker.run_once().await.unwrap());
    assert!(worker.run_once().await.unwrap());
    assert_eq!(f.store.deliveries(a).await.unwrap()[0].status, "gone");
    assert_eq!(f.store.deliveries(b).await.unwrap()[0].status, "gone");
    assert!(f.store.endpoint_gone(&hook).await.unwrap());
    // c: its seventh failure was the schedule's last but one; the eighth fails it.
    sqlx::query("UPDATE outbox SET attempts = 7 WHERE message_id = $1")
        .bind(c)
        .execute(f.store.pool())
        .await
        .unwrap();
    *f.receiver.script.lock().unwrap() = vec![StatusCode::INTERNAL_SERVER_ERROR.into_response()];
    assert!(worker.run_once().await.unwrap());
    let failed = f.store.deliveries_with_status("failed").await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (
            failed[0].message_id,
            failed[0].attempts,
            failed[0].last_status
        ),
        (c, 8, Some(500))
    );
    assert_eq!(f.receiver.seen.lock().unwrap().len(), 2, "b was never sent");
    let actions: Vec<String> = f
        .store
        .audit_entries(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.actor == "system:delivery")
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        ["delivery.gone", "delivery.gone", "delivery.failed"]
    );
}

#[tokio::test]
async fn a_crash_between_approval_and_sending_still_sends_once() {
    let f = fixture(vec![]).await;
    let id = processed(&f.store, 1, &format!("{}crm", f.hooks)).await;
    f.store
        .approve(id, "alice", &|a| f.settings.delivery.allow(a))
        .await
        .unwrap();
    // The process dies here: no worker ran. A new one opens the same database.
    drop(f.store.clone());
    let reopened = Store::open(&f.url).await.unwrap();
    // A first worker claims the webhook and dies mid-send (its lease lapses).
    let dead = reopened
        .claim_delivery("dead-worker", Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let worker = Deliverer::new(reopened.clone(), f.settings.delivery.clone()).unwrap();
    while worker.run_once().await.unwrap() {}
    // The dead worker wakes up and tries to record: refused.
    let late = verre_store::outbox::AttemptRecord {
        response_status: Some(204),
        error: None,
        result: verre_store::outbox::DeliveryResult::Sent,
    };
    assert!(!reopened.record_delivery(&dead, &late).await.unwrap());
    while worker.run_once().await.unwrap() {}
    let seen = f.receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(f.sink.received().len(), 1);
    let rows = reopened.deliveries(id).await.unwrap();
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:?}");
    let webhook = rows.iter().find(|r| r.kind == "webhook").unwrap();
    assert_eq!(seen[0].0, webhook.webhook_id);
}

// --- retention (issue 18, item 9) -------------------------------------------------------

/// Retention removes only what is decided and delivered; a message whose raw bytes are gone
/// (removed before this rule, or by hand) still has its page, and its approved reply still
/// goes out.
#[tokio::test]
async fn retention_keeps_the_undecided_and_undelivered_and_a_missing_raw_message_is_tolerated() {
    let f = fixture(vec![]).await;
    let hook = format!("{}crm", f.hooks);
    let undecided = processed(&f.store, 1, &hook).await;
    let undelivered = processed(&f.store, 2, &hook).await;
    let delivered = processed(&f.store, 3, &hook).await;
    let allow = |a: &_| f.settings.delivery.allow(a);
    f.store.approve(delivered, "alice", &allow).await.unwrap();
    let worker = Deliverer::new(f.store.clone(), f.settings.delivery.clone()).unwrap();
    while worker.run_once().await.unwrap() {}
    assert!(
        f.store
            .deliveries(delivered)
            .await
            .unwrap()
            .iter()
            .all(|d| d.status == "sent")
    );
    f.store.approve(undelivered, "alice", &allow).await.unwrap();
    sqlx::query("UPDATE messages SET received_at = received_at - $1")
        .bind(40 * 86_400_000i64)
        .execute(f.store.pool())
        .await
        .unwrap();

    let retention = verre_store::retention::Retention {
        raw_days: Some(30),
        extracted_days: Some(35),
        audit_days: None,
        ..Default::default()
    };
    let report = verre_store::retention::purge(&f.store, &retention, false)
        .await
        .unwrap();
    assert_eq!(report.messages_deleted, 1, "{report:?}");
    assert!(f.store.detail(delivered).await.unwrap().is_none());
    for kept in [undecided, undelivered] {
        assert!(f.store.detail(kept).await.unwrap().is_some());
        assert!(
            f.store.raw_message(kept).await.is_ok(),
            "raw of {kept} kept"
        );
    }

    // Raw bytes removed all the same: the page and the delivery carry on without them.
    sqlx::query("UPDATE messages SET raw = $1, key_id = NULL, raw_purged_at = $2")
        .bind(Vec::<u8>::new())
        .bind(now_ms())
        .execute(f.store.pool())
        .await
        .unwrap();
    add_user(&f.store, "alice", "correct horse", "reviewer").await;
    let app = app(&f);
    let cookie = log_in(&app, "alice", "correct horse").await;
    for id in [undecided, undelivered] {
        let (status, _, html) = send(&app, get(&format!("/review/messages/{id}"), &cookie)).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert!(html.contains("removed by retention"), "{html}");
    }
    while worker.run_once().await.unwrap() {}
    let deliveries = f.store.deliveries(undelivered).await.unwrap();
    assert!(
        deliveries.iter().all(|d| d.status == "sent"),
        "{deliveries:?}"
    );
}

// --- login throttling (issue 18, item 5) -------------------------------------------------

/// A login form post from `addr`, with a fresh login CSRF token.
async fn login_from(app: &Router, addr: &str, name: &str, password: &str) -> Request<Body> {
    let (_, headers, html) = send(app, get("/review/login", "")).await;
    let pair = set_cookie(&headers, auth::LOGIN_CSRF_COOKIE)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let mut req = form(
        "/review/login",
        &pair,
        &[
            ("csrf", &csrf_in(&html)),
            ("name", name),
            ("password", password),
        ],
    );
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    req
}

/// Twenty wrong passwords at once for one account: the failures are reserved before the
/// password is checked, so no more than the limit reach argon2, and then it is locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_logins_reach_the_password_check_at_most_the_limit() {
    let mut f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    let checks = Arc::new(auth::PasswordChecks::new(64));
    f.settings.password_checks = checks.clone();
    let app = app(&f);
    let mut requests = Vec::new();
    for _ in 0..20 {
        requests.push(login_from(&app, "198.51.100.7:4000", "alice", "wrong-password").await);
    }
    let answers = futures_util::future::join_all(requests.into_iter().map(|req| {
        let app = app.clone();
        tokio::spawn(async move { send(&app, req).await.0 })
    }))
    .await;
    let statuses: Vec<StatusCode> = answers.into_iter().map(Result::unwrap).collect();
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        checks.started() <= 5 && checked <= 5,
        "{} password checks, statuses {statuses:?}",
        checks.started()
    );
    assert!(
        statuses
            .iter()
            .all(|s| matches!(*s, StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS)),
        "{statuses:?}"
    );
    // Locked now, even for the right password, with no check made.
    let before = checks.started();
    let req = login_from(&app, "198.51.100.7:4001", "alice", "alice-password").await;
    let (status, headers, _) = send(&app, req).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&wait), "{wait}");
    assert_eq!(checks.started(), before);
}

/// Addresses in one IPv6 /64 share a counter; the next /64 has its own.
#[tokio::test]
async fn ipv6_addresses_in_one_64_share_the_login_limit() {
    let f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    let app = app(&f);
    for n in 1..=5 {
        let req = login_from(&app, &format!("[2001:db8:1:2::{n}]:4000"), "alice", "wrong").await;
        assert_eq!(send(&app, req).await.0, StatusCode::UNAUTHORIZED);
    }
    let req = login_from(
        &app,
        "[2001:db8:1:2:ab::99]:4000",
        "alice",
        "alice-password",
    )
    .await;
    assert_eq!(send(&app, req).await.0, StatusCode::TOO_MANY_REQUESTS);
    let req = login_from(&app, "[2001:db8:1:3::1]:4000", "alice", "alice-password").await;
    assert_eq!(send(&app, req).await.0, StatusCode::SEE_OTHER);
}

/// With every password-check slot taken, a login is answered 429 at once: no check is
/// started and no failure counted.
#[tokio::test]
async fn logins_beyond_the_concurrent_password_checks_get_429_at_once() {
    let mut f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    let checks = Arc::new(auth::PasswordChecks::new(1));
    f.settings.password_checks = checks.clone();
    let app = app(&f);
    let busy = checks.try_slot().unwrap();
    let req = login_from(&app, "198.51.100.9:4000", "alice", "alice-password").await;
    let (status, headers, body) = send(&app, req).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(body.contains("busy"), "{body}");
    assert_eq!(checks.started(), 0);
    let counted = f
        .store
        .login_failures("alice", "198.51.100.9", 0)
        .await
        .unwrap();
    assert_eq!(counted, 0);
    drop(busy);
    let req = login_from(&app, "198.51.100.9:4000", "alice", "alice-password").await;
    assert_eq!(send(&app, req).await.0, StatusCode::SEE_OTHER);
}

// --- a changed recipient (issue 18, item 6) -----------------------------------------------

/// A reviewer points the reply elsewhere: the target follows the payload, the audit has both
/// addresses, and it takes a second reviewer to approve.
#[tokio::test]
async fn a_changed_recipient_is_audited_and_needs_a_second_approver() {
    let f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    add_user(&f.store, "bob", "bob-password", "reviewer").await;
    let id = processed(&f.store, 1, &format!("{}crm", f.hooks)).await;
    let app = app(&f);
    let alice = log_in(&app, "alice", "alice-password").await;
    let (_, _, html) = send(&app, get(&format!("/review/messages/{id}"), &alice)).await;
    let csrf = csrf_in(&html);
    let reply = f.store.actions(id).await.unwrap()[0].id;
    // The reply's form: to, subject, body.
    let edit = |to: &str| {
        form(
            &format!("/review/actions/{reply}/fields"),
            &alice,
            &[
                ("csrf", &csrf),
                ("p.to", to),
                ("p.subject", "Re: Order 1"),
                ("p.body", "We will call you."),
            ],
        )
    };

    // Not an address: refused, nothing changes.
    let (status, headers, _) = send(&app, edit("a@x.test, b@y.test")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, html) = followed(&app, &headers, &alice).await;
    assert!(html.contains("must be one e-mail address"), "{html}");
    assert_eq!(
        f.store.actions(id).await.unwrap()[0].target,
        "alice@client.test"
    );

    let (status, headers, _) = send(&app, edit("mallory@evil.test")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::LOCATION]
            .to_str()
            .unwrap()
            .ends_with("notice=payload")
    );
    assert_eq!(
        f.store.actions(id).await.unwrap()[0].target,
        "mallory@evil.test"
    );
    let edits: Vec<serde_json::Value> = f
        .store
        .audit_entries(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "review.edit_action")
        .filter_map(|e| e.detail)
        .collect();
    assert_eq!(
        edits.last().unwrap()["recipient"],
        json!({"from": "alice@client.test", "to": "mallory@evil.test"})
    );
    let (_, _, html) = send(&app, get(&format!("/review/messages/{id}"), &alice)).await;
    assert!(
        html.contains("Recipient changed") && html.contains("two reviewers must approve"),
        "{html}"
    );

    // alice approves: recorded, nothing decided or sent; she cannot be the second.
    let digest = digest_of(&f.store, id).await;
    let approve = |who: &str| {
        form(
            &format!("/review/messages/{id}/approve"),
            who,
            &[("csrf", &csrf), ("digest", &digest)],
        )
    };
    let (status, headers, _) = send(&app, approve(&alice)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::LOCATION]
            .to_str()
            .unwrap()
            .contains("awaiting")
    );
    assert!(f.store.decision(id).await.unwrap().is_none());
    assert!(f.store.deliveries(id).await.unwrap().is_empty());
    let (status, headers, _) = send(&app, approve(&alice)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, html) = followed(&app, &headers, &alice).await;
    assert!(html.contains("another reviewer"), "{html}");

    // bob approves: decided, both released, the reply to the new address.
    let bob = log_in(&app, "bob", "bob-password").await;
    let (_, _, html) = send(&app, get(&format!("/review/messages/{id}"), &bob)).await;
    assert!(html.contains("Approved so far by alice"), "{html}");
    let bob_csrf = csrf_in(&html);
    let (status, headers, _) = send(
        &app,
        form(
            &format!("/review/messages/{id}/approve"),
            &bob,
            &[("csrf", &bob_csrf), ("digest", &digest)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::LOCATION]
            .to_str()
            .unwrap()
            .contains("approved")
    );
    assert_eq!(f.store.decision(id).await.unwrap().unwrap().reviewer, "bob");
    let deliveries = f.store.deliveries(id).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries.iter().any(|d| d.target == "mallory@evil.test"));
    let log = f.store.audit_entries(0, 100).await.unwrap();
    let approve = log.iter().find(|e| e.action == "review.approve").unwrap();
    assert_eq!(
        approve.detail.as_ref().unwrap()["approvers"],
        json!(["alice", "bob"])
    );
    assert!(log.iter().any(|e| e.action == "review.approve_first"));
    assert!(f.store.audit_verify().await.unwrap().ok());
}

/// `[review] second_approver = false`: one approval sends to the changed recipient.
#[tokio::test]
async fn without_the_second_approver_one_approval_decides() {
    let mut f = fixture(vec![]).await;
    f.settings.second_approver = false;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    let id = processed(&f.store, 1, &format!("{}crm", f.hooks)).await;
    let reply = f.store.actions(id).await.unwrap()[0].id;
    f.store
        .edit_action(
            reply,
            &json!({"to": "other@client.test", "subject": "Re", "body": "Hi"}).to_string(),
            "alice",
        )
        .await
        .unwrap();
    let app = app(&f);
    let alice = log_in(&app, "alice", "alice-password").await;
    let (_, _, html) = send(&app, get(&format!("/review/messages/{id}"), &alice)).await;
    let (status, _, _) = send(
        &app,
        form(
            &format!("/review/messages/{id}/approve"),
            &alice,
            &[
                ("csrf", &csrf_in(&html)),
                ("digest", &digest_of(&f.store, id).await),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(f.store.deliveries(id).await.unwrap().len(), 2);
}

// --- a spoofable From (issue 18, item 12) -------------------------------------------------

/// The parse stage's view of the sender is on the page: a Reply-To other than From and a
/// sender the receiving server did not authenticate are flagged; an authenticated one is not.
#[tokio::test]
async fn a_differing_reply_to_and_an_unauthenticated_sender_are_flagged() {
    let f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    let hook = format!("{}crm", f.hooks);
    let parse_output = |reply_to: &str, dmarc: &str| {
        json!({
            "from": "alice@client.test",
            "reply_to": reply_to,
            "auth": {"authserv_id": "mx.verre.test", "dmarc": dmarc, "dkim": "none", "spf": "softfail"},
        })
    };
    let mut ids = Vec::new();
    for (n, output) in [
        (1, parse_output("collect@elsewhere.test", "fail")),
        (2, parse_output("Alice@Client.test", "pass")),
    ] {
        let id = processed(&f.store, n, &hook).await;
        sqlx::query(
            "INSERT INTO stage_results (message_id, stage, output, worker, created_at)
             VALUES ($1, 'parse', $2, 'w', 0)",
        )
        .bind(id)
        .bind(output.to_string())
        .execute(f.store.pool())
        .await
        .unwrap();
        ids.push(id);
    }
    let app = app(&f);
    let alice = log_in(&app, "alice", "alice-password").await;
    let (_, _, html) = send(&app, get(&format!("/review/messages/{}", ids[0]), &alice)).await;
    assert!(html.contains(r#"id="reply-to-differs""#), "{html}");
    assert!(html.contains("collect@elsewhere.test"));
    assert!(
        html.contains(r#"id="unauthenticated""#) && html.contains("DMARC fail"),
        "{html}"
    );
    let (_, _, html) = send(&app, get(&format!("/review/messages/{}", ids[1]), &alice)).await;
    assert!(!html.contains("reply-to-differs") && !html.contains("unauthenticated"));
    assert!(html.contains(r#"id="authenticated""#), "{html}");
}

// --- idle sessions (issue 18, low) --------------------------------------------------------

/// A session unused for longer than `[review] idle_minutes` ends; use keeps it alive.
#[tokio::test]
async fn an_idle_session_ends() {
    let f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    let app = app(&f);
    let alice = log_in(&app, "alice", "alice-password").await;
    let idle_for = |minutes: i64| {
        sqlx::query("UPDATE sessions SET last_seen_at = $1, created_at = $1")
            .bind(now_ms() - minutes * 60_000)
            .execute(f.store.pool())
    };
    idle_for(29).await.unwrap();
    assert_eq!(send(&app, get("/review", &alice)).await.0, StatusCode::OK);
    // That use counted: 29 more minutes are fine again.
    sqlx::query("UPDATE sessions SET last_seen_at = last_seen_at - $1")
        .bind(29 * 60_000i64)
        .execute(f.store.pool())
        .await
        .unwrap();
    assert_eq!(send(&app, get("/review", &alice)).await.0, StatusCode::OK);
    idle_for(31).await.unwrap();
    let (status, headers, _) = send(&app, get("/review", &alice)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/review/login");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
        .fetch_one(f.store.pool())
        .await
        .unwrap();
    assert_eq!(left, 0, "the idle session is ended");
}

// --- the desk: triage, bulk, confirmation, undo ------------------------------------------

/// A message through extract -> crossref -> stage with `extract`, the lookups `lookup`, the
/// pipeline's declared labels, and `actions` staged.
async fn staged(
    store: &Store,
    raw: &str,
    extract: serde_json::Value,
    lookup: serde_json::Value,
    actions: Vec<NewAction>,
) -> i64 {
    let id = store
        .ingest("test", "d.eml", raw.as_bytes(), "parse", 3)
        .await
        .unwrap()
        .message_id;
    // The parse stage's parts, as the intake's parser stores them: headers, then the body.
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let part = |idx: i64, kind: &str, text: &str| verre_store::NewPart {
        idx,
        kind: kind.into(),
        filename: None,
        content_type: "text/plain".into(),
        size: text.len() as i64,
        supported: true,
        note: None,
        text: Some(text.replace("\r\n", "\n")),
        pages: None,
    };
    let job = store
        .claim("w", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let parsed = StageEffects {
        output: json!({}),
        parts: vec![part(0, "headers", head), part(1, "text", body)],
        ..Default::default()
    };
    assert!(
        store
            .complete(&job, &parsed, Some("extract"), 3)
            .await
            .unwrap()
    );
    let labels = json!({"threat_level": ["low", "medium", "high", "critical"],
        "intent": ["question", "complaint", "incident", "newsletter"]});
    let steps = [
        (extract, Some("crossref"), vec![]),
        (lookup, Some("stage"), vec![]),
        (json!({"actions": [], "labels": labels}), None, actions),
    ];
    for (output, next, actions) in steps {
        let job = store
            .claim("w", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let effects = StageEffects {
            output,
            actions,
            ..Default::default()
        };
        assert!(store.complete(&job, &effects, next, 3).await.unwrap());
    }
    id
}

fn reply_and_hook(to: &str, hook: &str) -> Vec<NewAction> {
    vec![
        NewAction {
            name: "reply".into(),
            kind: "reply".into(),
            target: to.into(),
            payload: json!({"to": to, "subject": "Re: your mail", "body": "We are on it."})
                .to_string(),
        },
        NewAction {
            name: "crm".into(),
            kind: "webhook".into(),
            target: hook.into(),
            payload: json!({"threat_level": "critical", "note": "call back"}).to_string(),
        },
    ]
}

#[tokio::test]
async fn the_desk_ranks_searches_files_in_bulk_confirms_what_it_sends_and_undoes() {
    let f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    let hook = format!("{}crm", f.hooks);
    let news = staged(
        &f.store,
        "From: Events <news@summit.example>\r\nSubject: Early-bird tickets\r\n\r\n30% off until December.\r\n",
        json!({"customer": "Summit", "threat_level": "low", "intent": "newsletter"}),
        json!({"customer": []}),
        vec![],
    )
    .await;
    let complaint = staged(
        &f.store,
        "From: Jonas <j@weber.example>\r\nSubject: Third late delivery\r\n\r\nLate again.\r\n",
        json!({"customer": "Weber", "threat_level": "medium", "intent": "Sender"}),
        json!({"customer": [{"tier": "silver"}]}),
        reply_and_hook("j@weber.example", &hook),
    )
    .await;
    let breach = staged(
        &f.store,
        "From: Dr. de Vries <p@kliniek.example>\r\nSubject: URGENT: patient records exposed\r\n\
         Date: Fri, 27 Nov 2026 06:58:00 +0100\r\n\r\nWe must notify the authority within 72 hours.\r\n",
        json!({"customer": "Kliniek Noord", "threat_level": "critical", "intent": "incident"}),
        json!({"customer": [{"tier": "platinum"}]}),
        reply_and_hook("p@kliniek.example", &hook),
    )
    .await;
    let app = app(&f);
    let alice = log_in(&app, "alice", "alice-password").await;
    let row = |id: i64| format!(r#"<tr data-href="/review/messages/{id}">"#);

    // Most urgent first, with the reasons; nothing to send in its own lane.
    let (status, headers, html) = send(&app, get("/review", &alice)).await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
    assert!(
        !html.contains("<script>") && !html.contains(" onclick"),
        "no inline script"
    );
    let at = |id: i64| {
        html.find(&row(id))
            .unwrap_or_else(|| panic!("{id} missing: {html}"))
    };
    let lane = html.find(r#"id="nothing-to-send""#).unwrap();
    assert!(at(breach) < at(complaint) && at(complaint) < lane && lane < at(news));
    assert!(
        html.contains("threat level critical · deadline: “within 72 hours” · platinum customer"),
        "{html}"
    );
    // Received: the Date header where there is one.
    assert!(html.contains("2026-11-27 05:58 UTC"), "{html}");
    // Filters over the declared values only.
    assert!(html.contains(r#"value="intent=incident""#));
    assert!(
        !html.contains("Sender"),
        "a value the model invented is not offered"
    );

    // Search: subject, sender, fields, text.
    for (q, hit) in [
        ("patient", breach),
        ("weber.example", complaint),
        ("72 hours", breach),
        ("Summit", news),
    ] {
        let (_, _, html) = send(&app, get(&format!("/review?q={}", urlencode(q)), &alice)).await;
        for id in [news, complaint, breach] {
            assert_eq!(html.contains(&row(id)), id == hit, "{q:?} and message {id}");
        }
    }

    // One message's confirmation shows exactly what goes where.
    let (_, _, html) = send(
        &app,
        get(&format!("/review/messages/{breach}/confirm"), &alice),
    )
    .await;
    assert!(
        html.contains(r#"<code class="target">p@kliniek.example</code>"#),
        "{html}"
    );
    // (HTML-escaped as the templates write it: `/` as `&#x2f;`.)
    let shown = hook.replace('/', "&#x2f;");
    assert!(
        html.contains(&format!(r#"<code class="target">{shown}</code>"#)),
        "{html}"
    );
    assert!(
        html.contains("We are on it.") && html.contains("call back"),
        "{html}"
    );
    assert!(
        html.contains(&format!(
            r#"action="&#x2f;review&#x2f;messages&#x2f;{breach}&#x2f;approve""#
        )),
        "{html}"
    );
    assert!(
        f.store.decision(breach).await.unwrap().is_none(),
        "nothing decided by looking"
    );

    // Bulk: one confirmation, then each message decided.
    let (status, _, html) = send(
        &app,
        get(&format!("/review/bulk?do=file&id={news}"), &alice),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Nothing will be sent"), "{html}");
    let csrf = csrf_in(&html);
    let (status, headers, _) = send(
        &app,
        form(
            "/review/bulk",
            &alice,
            &[("csrf", &csrf), ("do", "file"), ("ids", &news.to_string())],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, html) = followed(&app, &headers, &alice).await;
    assert!(html.contains("1 message(s) filed."), "{html}");
    assert_eq!(
        f.store.decision(news).await.unwrap().unwrap().decision,
        "filed"
    );

    let (_, _, html) = send(
        &app,
        get(
            &format!("/review/bulk?do=approve&id={breach}&id={complaint}"),
            &alice,
        ),
    )
    .await;
    assert!(
        html.contains("p@kliniek.example") && html.contains("j@weber.example"),
        "{html}"
    );
    let ids = format!("{breach},{complaint}");
    let (breach_digest, complaint_digest) = (
        field_in(&html, &format!("digest.{breach}")).unwrap(),
        field_in(&html, &format!("digest.{complaint}")).unwrap(),
    );
    let (status, headers, _) = send(
        &app,
        form(
            "/review/bulk",
            &alice,
            &[
                ("csrf", &csrf),
                ("do", "approve"),
                ("ids", &ids),
                (&format!("digest.{breach}"), &breach_digest),
                (&format!("digest.{complaint}"), &complaint_digest),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, html) = followed(&app, &headers, &alice).await;
    assert!(html.contains("2 message(s) approved."), "{html}");
    assert_eq!(f.store.deliveries(breach).await.unwrap().len(), 2);

    // Undo until the delivery worker picks it up.
    let (_, _, html) = send(
        &app,
        get(&format!("/review?notice=approved&message={breach}"), &alice),
    )
    .await;
    assert!(
        html.contains(&format!(r#"action="/review/messages/{breach}/undo""#)),
        "{html}"
    );
    let (status, headers, _) = send(
        &app,
        form(
            &format!("/review/messages/{breach}/undo"),
            &alice,
            &[("csrf", &csrf)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::LOCATION]
            .to_str()
            .unwrap()
            .ends_with("notice=undone")
    );
    assert!(f.store.decision(breach).await.unwrap().is_none());
    assert!(
        f.store.deliveries(breach).await.unwrap().is_empty(),
        "nothing left to send"
    );
    let claimed = f
        .store
        .claim_delivery("worker", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.message_id, complaint);
    let (_, _, html) = send(&app, get(&format!("/review/messages/{complaint}"), &alice)).await;
    assert!(!html.contains(r#"id="undo""#), "picked up: no undo offered");
    let (status, headers, _) = send(
        &app,
        form(
            &format!("/review/messages/{complaint}/undo"),
            &alice,
            &[("csrf", &csrf)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, html) = followed(&app, &headers, &alice).await;
    assert!(html.contains("can no longer be undone"), "{html}");
    assert_eq!(
        f.store.decision(complaint).await.unwrap().unwrap().decision,
        "approved"
    );
    let actions: Vec<String> = f
        .store
        .audit_entries(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action.starts_with("review.") && e.action != "review.login")
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "review.file",
            "review.approve",
            "review.approve",
            "review.undo"
        ]
    );

    // A bulk rejection takes one reason for all; without one, each is refused and listed.
    let (_, headers, _) = send(
        &app,
        form(
            "/review/bulk",
            &alice,
            &[
                ("csrf", &csrf),
                ("do", "reject"),
                ("ids", &breach.to_string()),
                ("reason", " "),
            ],
        ),
    )
    .await;
    let (_, html) = followed(&app, &headers, &alice).await;
    assert!(
        html.contains("0 message(s) rejected.") && html.contains("needs a reason"),
        "{html}"
    );
    let (_, headers, _) = send(
        &app,
        form(
            "/review/bulk",
            &alice,
            &[
                ("csrf", &csrf),
                ("do", "reject"),
                ("ids", &breach.to_string()),
                ("reason", "duplicate"),
            ],
        ),
    )
    .await;
    let (_, html) = followed(&app, &headers, &alice).await;
    assert!(html.contains("1 message(s) rejected."), "{html}");
    assert_eq!(
        f.store
            .decision(breach)
            .await
            .unwrap()
            .unwrap()
            .reason
            .as_deref(),
        Some("duplicate")
    );

    // An admin's refused retry is shown after a redirect too.
    add_user(&f.store, "root", "root-password", "admin").await;
    let root = log_in(&app, "root", "root-password").await;
    let (_, _, html) = send(&app, get("/review/deliveries", &root)).await;
    let root_csrf = csrf_in(&html);
    let (status, headers, _) = send(
        &app,
        form(
            &format!("/review/deliveries/{}/retry", claimed.id),
            &root,
            &[("csrf", &root_csrf)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, html) = followed(&app, &headers, &root).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(r#"class="error""#),
        "a pending delivery is not retried: {html}"
    );

    // The keyboard script: served from here, as JavaScript.
    let (status, headers, js) = send(&app, get("/review/static/keys.js", &alice)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.contains("keydown"));
}

// --- whole documents (issue 22 item 5) -----------------------------------------------------

/// Each extracted value shows the page it was found on, and the pages the budget left
/// unread are said; verre's record of the document is not shown as a field.
#[tokio::test]
async fn extracted_values_show_their_pages_and_the_unread_pages_are_said() {
    let f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    let id = processed(&f.store, 1, &format!("{}crm", f.hooks)).await;
    let extract = json!({
        "customer": "Northwind Logistics B.V.", "threat_level": "high",
        "_document": {"chunks": 6, "pages_read": 40, "pages_total": 50,
            "unread": [{"part": 2, "file": "msa.pdf", "first": 41, "last": 50,
                "reason": "budget (max_pages = 40)",
                "line": "msa.pdf: pages 41-50 not read: budget (max_pages = 40)"}],
            "sources": {"customer": {"part": 2, "file": "msa.pdf", "page": 37}}},
    });
    sqlx::query("UPDATE stage_results SET output = $2 WHERE message_id = $1 AND stage = 'extract'")
        .bind(id)
        .bind(extract.to_string())
        .execute(f.store.pool())
        .await
        .unwrap();
    let app = app(&f);
    let alice = log_in(&app, "alice", "alice-password").await;
    let (status, _, html) = send(&app, get(&format!("/review/messages/{id}"), &alice)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("<td>customer</td><td>msa.pdf p. 37</td>"),
        "{html}"
    );
    assert!(html.contains("msa.pdf: pages 41-50 not read: budget (max_pages = 40)"));
    assert!(!html.contains("_document"), "{html}");
}

/// An approval carries the digest of what its confirmation showed: when another reviewer
/// changed what the message sends in between, nothing is approved and the reviewer is sent
/// back to the confirmation, as it stands now; the same for each message of a bulk approval.
#[tokio::test]
async fn an_approval_is_bound_to_what_its_confirmation_showed() {
    let f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    add_user(&f.store, "bob", "bob-password", "reviewer").await;
    let hook = format!("{}crm", f.hooks);
    let raw = "From: Jonas <j@weber.example>\r\nSubject: Late\r\n\r\nLate again.\r\n";
    let one = staged(
        &f.store,
        raw,
        json!({"threat_level": "medium"}),
        json!({}),
        reply_and_hook("j@weber.example", &hook),
    )
    .await;
    let app = app(&f);
    let alice = log_in(&app, "alice", "alice-password").await;
    let (_, _, html) = send(
        &app,
        get(&format!("/review/messages/{one}/confirm"), &alice),
    )
    .await;
    assert!(html.contains("We are on it."), "{html}");
    let csrf = csrf_in(&html);
    let shown = field_in(&html, "digest").expect("the confirmation carries its digest");

    // bob edits the reply after alice confirmed it.
    let reply = f.store.actions(one).await.unwrap()[0].id;
    let edited =
        json!({"to": "j@weber.example", "subject": "Re: your mail", "body": "Unseen text."});
    f.store
        .edit_action(reply, &edited.to_string(), "bob")
        .await
        .unwrap();
    let approve = |digest: &str| {
        form(
            &format!("/review/messages/{one}/approve"),
            &alice,
            &[("csrf", &csrf), ("digest", digest)],
        )
    };
    let (status, headers, _) = send(&app, approve(&shown)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::LOCATION]
            .to_str()
            .unwrap()
            .ends_with(&format!("/review/messages/{one}/confirm?notice=changed")),
        "{headers:?}"
    );
    assert!(
        f.store.decision(one).await.unwrap().is_none(),
        "nothing approved"
    );
    assert!(
        f.store.deliveries(one).await.unwrap().is_empty(),
        "nothing sent"
    );
    let (_, html) = followed(&app, &headers, &alice).await;
    assert!(
        html.contains("Changed since you confirmed") && html.contains("Unseen text."),
        "{html}"
    );
    // Without a digest: back to the confirmation as well.
    let (_, headers, _) = send(
        &app,
        form(
            &format!("/review/messages/{one}/approve"),
            &alice,
            &[("csrf", &csrf)],
        ),
    )
    .await;
    assert!(
        headers[header::LOCATION]
            .to_str()
            .unwrap()
            .ends_with("confirm?notice=unconfirmed")
    );
    assert!(f.store.decision(one).await.unwrap().is_none());
    // Approving what the confirmation shows now sends exactly that.
    let now_shown = field_in(&html, "digest").unwrap();
    assert_ne!(now_shown, shown);
    let (_, headers, _) = send(&app, approve(&now_shown)).await;
    assert!(
        headers[header::LOCATION]
            .to_str()
            .unwrap()
            .contains("notice=approved")
    );
    let sent = f.store.deliveries(one).await.unwrap();
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter().any(|d| d.payload.contains("Unseen text.")),
        "{sent:?}"
    );

    // Bulk: the changed message is refused and shown again; the unchanged one is approved.
    let mail = |n: u32| format!("From: A <a@b.example>\r\nSubject: Mail {n}\r\n\r\nText {n}.\r\n");
    let two = staged(
        &f.store,
        &mail(2),
        json!({}),
        json!({}),
        reply_and_hook("a@b.example", &hook),
    )
    .await;
    let three = staged(
        &f.store,
        &mail(3),
        json!({}),
        json!({}),
        reply_and_hook("c@d.example", &hook),
    )
    .await;
    let (_, _, html) = send(
        &app,
        get(
            &format!("/review/bulk?do=approve&id={two}&id={three}"),
            &alice,
        ),
    )
    .await;
    let (d2, d3) = (
        field_in(&html, &format!("digest.{two}")).unwrap(),
        field_in(&html, &format!("digest.{three}")).unwrap(),
    );
    let reply = f.store.actions(three).await.unwrap()[0].id;
    f.store
        .edit_action(
            reply,
            &json!({"to": "c@d.example", "subject": "Re", "body": "Changed."}).to_string(),
            "bob",
        )
        .await
        .unwrap();
    let (status, headers, _) = send(
        &app,
        form(
            "/review/bulk",
            &alice,
            &[
                ("csrf", &csrf),
                ("do", "approve"),
                ("ids", &format!("{two},{three}")),
                (&format!("digest.{two}"), &d2),
                (&format!("digest.{three}"), &d3),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let to = headers[header::LOCATION].to_str().unwrap().to_string();
    assert!(
        to.starts_with(&format!("/review/bulk?do=approve&ids={three}&flash=")),
        "{to}"
    );
    assert_eq!(f.store.deliveries(two).await.unwrap().len(), 2);
    assert!(f.store.decision(three).await.unwrap().is_none());
    let (_, html) = followed(&app, &headers, &alice).await;
    assert!(
        html.contains("1 message(s) approved.")
            && html.contains(&format!(
                "changed since you confirmed, not approved: message {three}"
            ))
            && html.contains("Changed."),
        "{html}"
    );
}

/// The queue is read and ranked once while it does not change: the next message's page (j/k)
/// and the queue page reuse the ranking; a decision changes the queue and it is read again.
#[tokio::test]
async fn the_queue_is_ranked_once_until_it_changes() {
    let f = fixture(vec![]).await;
    add_user(&f.store, "alice", "alice-password", "reviewer").await;
    let hook = format!("{}crm", f.hooks);
    let mail = |n: u32| format!("From: A <a@b.example>\r\nSubject: Mail {n}\r\n\r\nText {n}.\r\n");
    let mut ids = Vec::new();
    for n in 0..3 {
        let to = format!("a{n}@b.example");
        ids.push(
            staged(
                &f.store,
                &mail(n),
                json!({}),
                json!({}),
                reply_and_hook(&to, &hook),
            )
            .await,
        );
    }
    let app = app(&f);
    let alice = log_in(&app, "alice", "alice-password").await;
    let read = || f.settings.rankings.messages_read();
    let before = read();
    let (status, _, html) = send(&app, get(&format!("/review/messages/{}", ids[0]), &alice)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read() - before, 3, "the queue read once");
    let next = ids[1..]
        .iter()
        .find(|id| html.contains(&format!("/review/messages/{id}\"")))
        .copied()
        .expect("a next message");
    let (status, _, _) = send(&app, get(&format!("/review/messages/{next}"), &alice)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, html) = send(&app, get("/review", &alice)).await;
    assert!(html.contains(&format!(r#"<tr data-href="/review/messages/{}">"#, ids[0])));
    assert_eq!(
        read() - before,
        3,
        "the next page and the queue reuse the ranking"
    );

    // A decision changes the queue: read again, without the decided message.
    f.store.reject(ids[0], "alice", "spam").await.unwrap();
    let (_, _, html) = send(&app, get("/review", &alice)).await;
    assert_eq!(read() - before, 3 + 2);
    assert!(!html.contains(&format!(r#"<tr data-href="/review/messages/{}">"#, ids[0])));
    // A search scans the queue every time.
    send(&app, get("/review?q=mail", &alice)).await;
    send(&app, get("/review?q=mail", &alice)).await;
    assert_eq!(read() - before, 3 + 2 + 2 + 2);
}
