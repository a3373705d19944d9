//! Deliveries go straight to their target: a proxy named in the environment
//! (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`) never sees the mail content, as the gateway
//! never sends model traffic through one. Its own test binary: it sets the environment of
//! the whole process.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use verre_delivery::webhook::new_message_id;
use verre_delivery::{Delivery, Sender, WebhookSecret};

/// A socket on its own thread that counts the connections it gets and answers each with
/// an empty 204.
fn listener() -> (u16, Arc<AtomicUsize>) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for mut stream in socket.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            // Read the head and the body (the request is small), then answer.
            while let Ok(n) = stream.read(&mut buffer) {
                request.extend_from_slice(&buffer[..n]);
                if n == 0 || request.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let _ = stream.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, connections)
}

#[tokio::test]
async fn a_proxy_in_the_environment_is_not_used() {
    let (proxy_port, proxy) = listener();
    let (target_port, target) = listener();
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    // SAFETY: this binary's only test; nothing else reads the environment meanwhile.
    unsafe {
        for name in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            std::env::set_var(name, &proxy_url);
        }
        for name in ["NO_PROXY", "no_proxy"] {
            std::env::remove_var(name);
        }
    }
    let sender = Sender::new(Duration::from_secs(10)).unwrap();
    let delivery = Delivery {
        id: new_message_id(),
        url: format!("http://127.0.0.1:{target_port}/hooks/reply"),
        body: br#"{"to": "j.weber@example.de", "body": "personal"}"#.to_vec(),
        attempts: 0,
    };
    let (attempt, _) = sender.attempt(&delivery, &WebhookSecret::generate()).await;
    assert_eq!(
        proxy.load(Ordering::SeqCst),
        0,
        "the proxy was used: {attempt:?}"
    );
    assert_eq!(target.load(Ordering::SeqCst), 1, "{attempt:?}");
}
