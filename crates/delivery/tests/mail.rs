//! Replies through a minimal SMTP sink on 127.0.0.1 that records what it received.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use verre_delivery::mail::{Mailer, Reply, Security, SmtpConfig};

/// Accepts one SMTP session per connection and keeps each message's envelope and data.
async fn sink() -> (u16, Arc<Mutex<Vec<(String, Vec<String>, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let store = store.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let (mut from, mut to, mut data) = (String::new(), Vec::new(), String::new());
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let answer: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250-sink\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("MAIL FROM:") {
                        from = line[10..].trim().to_string();
                        b"250 ok\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        to.push(line[8..].trim().to_string());
                        b"250 ok\r\n"
                    } else if upper == "DATA" {
                        w.write_all(b"354 go\r\n").await.unwrap();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            data.push_str(&l);
                            data.push('\n');
                        }
                        store
                            .lock()
                            .unwrap()
                            .push((from.clone(), to.clone(), data.clone()));
                        b"250 queued\r\n"
                    } else if upper == "QUIT" {
                        w.write_all(b"221 bye\r\n").await.unwrap();
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    w.write_all(answer).await.unwrap();
                }
            });
        }
    });
    (port, got)
}

#[tokio::test]
async fn a_reply_reaches_the_relay_threaded_under_its_mail() {
    let (port, got) = sink().await;
    let mailer = Mailer::new(&SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        security: Security::PlainLoopback,
        username_env: None,
        password_env: None,
        from: "Intake <intake@verre.test>".into(),
    })
    .unwrap();
    let id = mailer
        .send(&Reply {
            to: "Élodie Martin <elodie@client.test>".into(),
            subject: "Re: Facture 2024-117".into(),
            body: "Bonjour,\nnous avons bien reçu votre facture.\n".into(),
            in_reply_to: Some("<abc@client.test>".into()),
        })
        .await
        .unwrap();
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1);
    let (from, to, data) = &got[0];
    assert_eq!(from, "<intake@verre.test>");
    assert_eq!(to, &vec!["<elodie@client.test>".to_string()]);
    assert!(data.contains(&format!("Message-ID: {id}")), "{data}");
    assert!(data.contains("In-Reply-To: <abc@client.test>"), "{data}");
    assert!(data.contains("Subject: Re: Facture 2024-117"), "{data}");
}

#[test]
fn plain_smtp_is_refused_off_loopback_and_missing_credentials_are_named() {
    let cfg = |host: &str, security| SmtpConfig {
        host: host.into(),
        port: 25,
        security,
        username_env: Some("VERRE_TEST_SMTP_USER_UNSET".into()),
        password_env: Some("VERRE_TEST_SMTP_PASS_UNSET".into()),
        from: "a@b.test".into(),
    };
    let err = Mailer::new(&cfg("mail.example.com", Security::PlainLoopback))
        .err()
        .unwrap();
    assert!(err.to_string().contains("unencrypted"), "{err}");
    let err = Mailer::new(&cfg("mail.example.com", Security::StartTls))
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("VERRE_TEST_SMTP_USER_UNSET"),
        "{err:#}"
    );
}
