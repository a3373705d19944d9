//! Replies through the SMTP sink of verre_delivery::testing, which records what it received.

use verre_delivery::mail::{Mailer, Reply, Security, SmtpConfig};
use verre_delivery::testing::SmtpSink;

#[tokio::test]
async fn a_reply_reaches_the_relay_threaded_under_its_mail() {
    let sink = SmtpSink::start().await.unwrap();
    let port = sink.port;
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
            message_id: None,
        })
        .await
        .unwrap();
    let got = sink.received();
    assert_eq!(got.len(), 1);
    let (from, to, data) = (&got[0].from, &got[0].to, &got[0].data);
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
