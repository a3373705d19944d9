//! Deliveries against a receiver on 127.0.0.1 that checks signatures as a real one would.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use verre_delivery::webhook::new_message_id;
use verre_delivery::{Delivery, Outcome, Sender, WebhookSecret};

#[derive(Default)]
struct Seen {
    /// (webhook-id, verified) per request received.
    requests: Vec<(String, bool)>,
}

struct Receiver {
    secret: WebhookSecret,
    seen: Mutex<Seen>,
    /// Answers to give, in order; then 204.
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
    r.seen.lock().unwrap().requests.push((h("webhook-id"), ok));
    let mut script = r.script.lock().unwrap();
    if script.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        script.remove(0)
    }
}

async fn start(secret: WebhookSecret, script: Vec<Response>) -> (String, Arc<Receiver>) {
    let r = Arc::new(Receiver {
        secret,
        seen: Mutex::default(),
        script: Mutex::new(script),
    });
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), r)
}

#[tokio::test]
async fn signed_retried_with_the_same_id_until_delivered() {
    let secret = WebhookSecret::generate();
    let busy = (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "42")]).into_response();
    let (url, r) = start(
        secret.clone(),
        vec![StatusCode::BAD_GATEWAY.into_response(), busy],
    )
    .await;
    let sender = Sender::new(Duration::from_secs(5)).unwrap();
    let mut d = Delivery {
        id: new_message_id(),
        url,
        body: br#"{"event": "approved", "message": 7}"#.to_vec(),
        attempts: 0,
    };
    let mut outcomes = Vec::new();
    loop {
        let (_, outcome) = sender.attempt(&d, &secret).await;
        d.attempts += 1;
        outcomes.push(outcome.clone());
        if !matches!(outcome, Outcome::RetryAfter(_)) {
            break;
        }
    }
    assert_eq!(
        outcomes,
        vec![
            Outcome::RetryAfter(Duration::from_secs(5)),
            Outcome::RetryAfter(Duration::from_secs(300)),
            Outcome::Delivered
        ]
    );
    let seen = r.seen.lock().unwrap();
    assert_eq!(seen.requests.len(), 3);
    assert!(
        seen.requests.iter().all(|(id, ok)| *ok && *id == d.id),
        "{:?}",
        seen.requests
    );
}

#[tokio::test]
async fn gone_endpoints_and_dead_hosts() {
    let secret = WebhookSecret::generate();
    let (url, _r) = start(secret.clone(), vec![StatusCode::GONE.into_response()]).await;
    let sender = Sender::new(Duration::from_secs(5)).unwrap();
    let d = Delivery {
        id: new_message_id(),
        url,
        body: b"{}".to_vec(),
        attempts: 0,
    };
    assert_eq!(sender.attempt(&d, &secret).await.1, Outcome::EndpointGone);
    // Nothing listens there: a retry, with the reason, not a crash.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    let d = Delivery {
        id: new_message_id(),
        url: dead,
        body: b"{}".to_vec(),
        attempts: 7,
    };
    match sender.attempt(&d, &secret).await {
        (verre_delivery::Attempt::NoAnswer(why), Outcome::Failed(f)) => {
            assert!(why.contains("connect"), "{why}");
            assert!(f.contains("8 attempts"), "{f}");
        }
        other => panic!("{other:?}"),
    }
}
