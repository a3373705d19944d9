//! The evidence page and the originals (issue 21 items 2, 3, 6) through the router: every
//! field with its span highlighted and its page, fields to check first, the route
//! explained; a field corrected (CSRF, typed, stored with its words); the PDF served under
//! CSP `sandbox` to signed-in reviewers only, size-bounded; the raw mail to admins only.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;
use verre_server::AppState;
use verre_server::review::{ReviewSettings, auth};
use verre_store::{NewPart, StageEffects, Store};

const PDF: &[u8] =
    b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n";

const DOCUMENT: &str = "Please pay the invoice.\n\n[attachment inv.pdf]\n[page 1]\nACME GmbH\nInvoice no: RE-2\nDate: 07.05.2014\n\n[page 2]\nTotal EUR 1.234,50\nOrder RE-3\n";

fn raw_mail() -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(PDF);
    format!(
        "From: Accounts <accounts@acme.example>\r\nTo: desk@example.org\r\nSubject: Invoice\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nPlease pay the invoice.\r\n\
         --b\r\nContent-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nnotes\r\n\
         --b\r\nContent-Type: application/pdf; name=\"inv.pdf\"\r\nContent-Disposition: attachment; filename=\"inv.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b--\r\n"
    )
    .into_bytes()
}

fn span(s: &str, page: u32) -> serde_json::Value {
    let start = DOCUMENT.find(s).unwrap();
    json!({"start": start, "end": start + s.len(), "quote": s,
           "place": {"attachment": "inv.pdf", "page": page}})
}

/// A message parsed (a text part, a text attachment, the PDF, `pdf_size` bytes as
/// recorded), extracted with evidence and routed.
async fn message(store: &Store, pdf_size: i64) -> i64 {
    let id = store
        .ingest("test", "inv.eml", &raw_mail(), "parse", 3)
        .await
        .unwrap()
        .message_id;
    let part = |idx: i64, kind: &str, filename: Option<&str>, ctype: &str, size: i64| NewPart {
        idx,
        kind: kind.into(),
        filename: filename.map(str::to_string),
        content_type: ctype.into(),
        size,
        supported: true,
        note: None,
        text: Some("text".into()),
        pages: None,
    };
    let evidence = json!({"check_below": 0.5, "document": DOCUMENT, "fields": [
        {"field": "amount", "value": 1234.5, "span": span("1.234,50", 2), "confidence": 0.31, "check": true},
        {"field": "invoice_number", "value": "RE-2", "span": span("RE-2", 1), "confidence": 0.97, "check": false},
        {"field": "issuer", "value": "ACME GmbH", "span": span("ACME GmbH", 1), "confidence": 0.88, "check": false},
        {"field": "threat_level", "value": "low", "span": null, "confidence": 0.9, "check": false},
    ]});
    let steps = [
        (
            StageEffects {
                output: json!({"subject": "Invoice"}),
                parts: vec![
                    part(0, "headers", None, "text/rfc822-headers", 10),
                    part(1, "text", None, "text/plain", 23),
                    part(2, "attachment", Some("notes.txt"), "text/plain", 5),
                    part(
                        3,
                        "attachment",
                        Some("inv.pdf"),
                        "application/pdf",
                        pdf_size,
                    ),
                ],
                ..Default::default()
            },
            Some("extract"),
        ),
        (
            StageEffects {
                output: json!({"amount": 1234.5, "invoice_number": "RE-2", "issuer": "ACME GmbH", "threat_level": "low"}),
                evidence: Some(evidence),
                ..Default::default()
            },
            Some("route"),
        ),
        (
            StageEffects {
                output: json!({"route": "file", "actions": [], "draft": false, "why": [
                    {"route": "urgent", "when": "extract.threat_level == \"high\"", "matched": false,
                     "values": {"extract.threat_level": "low"}},
                    {"route": "file", "when": null, "matched": true, "values": {}},
                ]}),
                ..Default::default()
            },
            None,
        ),
    ];
    for (effects, next) in steps {
        let job = store
            .claim("w", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert!(store.complete(&job, &effects, next, 3).await.unwrap());
    }
    id
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let r = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, body)
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
        .map(|(k, v)| {
            let v: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("&");
    Request::post(path)
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

fn csrf_in(html: &str) -> String {
    let key = r#"name="csrf" value=""#;
    let at = html.find(key).expect("a csrf field") + key.len();
    html[at..].split('"').next().unwrap().to_string()
}

fn cookie(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

async fn log_in(app: &Router, store: &Store, name: &str, role: &str) -> String {
    let hash = auth::hash_password("a-long-password").unwrap();
    store.add_user(name, &hash, role).await.unwrap();
    let (_, headers, html) = send(app, get("/review/login", "")).await;
    let login = cookie(&headers, auth::LOGIN_CSRF_COOKIE);
    let html = String::from_utf8(html).unwrap();
    let fields = [
        ("csrf", csrf_in(&html)),
        ("name", name.to_string()),
        ("password", "a-long-password".to_string()),
    ];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, headers, _) = send(app, form("/review/login", &login, &fields)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    cookie(&headers, auth::SESSION_COOKIE)
}

async fn setup(pdf_size: i64) -> (tempfile::TempDir, Store, Router, i64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    let id = message(&store, pdf_size).await;
    let app = verre_server::router(Arc::new(
        AppState::new(None)
            .with_store(store.clone())
            .with_review(ReviewSettings::default()),
    ));
    (dir, store, app, id)
}

fn text(body: Vec<u8>) -> String {
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn every_field_shows_its_span_and_page_unsure_first_and_the_route_is_explained() {
    let (_dir, store, app, id) = setup(PDF.len() as i64).await;
    let (status, headers, _) =
        send(&app, get(&format!("/review/messages/{id}/evidence"), "")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/review/login");

    let rita = log_in(&app, &store, "rita", "reviewer").await;
    let (status, _, html) =
        send(&app, get(&format!("/review/messages/{id}/evidence"), &rita)).await;
    let html = text(html);
    assert_eq!(status, StatusCode::OK, "{html}");
    // Each found field links to its highlighted words, with the page.
    for (i, (field, quote, page)) in [
        ("amount", "1.234,50", "inv.pdf, page 2"),
        ("invoice_number", "RE-2", "inv.pdf, page 1"),
        ("issuer", "ACME GmbH", "inv.pdf, page 1"),
    ]
    .iter()
    .enumerate()
    {
        let row = &html[html.find(&format!("id=\"field-{field}\"")).unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(row.contains(&format!("href=\"#span-{i}\"")), "{row}");
        assert!(
            row.contains(&format!("“{quote}”")) && row.contains(page),
            "{row}"
        );
        let mark = format!("<mark id=\"span-{i}\"");
        let at = html.find(&mark).unwrap_or_else(|| panic!("no {mark}"));
        let inner = &html[at..];
        let inner = &inner[inner.find('>').unwrap() + 1..inner.find("</mark>").unwrap()];
        assert_eq!(inner, *quote);
    }
    assert!(
        html.contains("not written in the document"),
        "the label has no span"
    );
    // The unsure field is marked and first.
    let amount = html.find("id=\"field-amount\"").unwrap();
    assert!(amount < html.find("id=\"field-invoice_number\"").unwrap());
    assert!(html[amount - 40..amount + 200].contains("check"));
    assert!(html.contains("31%") && html.contains("97%"));
    // Why the route: the rule, the value it read, the default taken.
    assert!(
        html.contains("extract.threat_level == &quot;high&quot;"),
        "{html}"
    );
    assert!(html.contains("<code>extract.threat_level</code> = <code>&quot;low&quot;</code>"));
    // The original PDF is linked; the raw mail is not, for a reviewer.
    assert!(html.contains(&format!("/review/messages/{id}/attachments/3")));
    assert!(!html.contains("/raw"));
}

#[tokio::test]
async fn the_pdf_is_served_sandboxed_to_reviewers_and_the_raw_mail_to_admins_only() {
    let (_dir, store, app, id) = setup(PDF.len() as i64).await;
    let pdf = format!("/review/messages/{id}/attachments/3");
    let raw = format!("/review/messages/{id}/raw");
    for path in [&pdf, &raw] {
        let (status, headers, _) = send(&app, get(path, "")).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(headers[header::LOCATION], "/review/login");
    }
    let rita = log_in(&app, &store, "rita", "reviewer").await;
    let (status, headers, body) = send(&app, get(&pdf, &rita)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, PDF);
    assert_eq!(headers[header::CONTENT_TYPE], "application/pdf");
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.starts_with("sandbox;") && !csp.contains("script"),
        "{csp}"
    );
    assert_eq!(
        headers[header::CONTENT_DISPOSITION],
        "inline; filename=\"inv.pdf\""
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let (_, headers, _) = send(&app, get(&format!("{pdf}?download=1"), &rita)).await;
    assert_eq!(
        headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"inv.pdf\""
    );
    // Not a PDF, not an attachment, no such part, no such message.
    for path in [
        format!("/review/messages/{id}/attachments/2"),
        format!("/review/messages/{id}/attachments/1"),
        format!("/review/messages/{id}/attachments/9"),
        "/review/messages/999/attachments/3".to_string(),
    ] {
        let (status, _, _) = send(&app, get(&path, &rita)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }

    let (status, _, _) = send(&app, get(&raw, &rita)).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a reviewer may not read the raw mail"
    );
    let ada = log_in(&app, &store, "ada", "admin").await;
    let (status, headers, body) = send(&app, get(&raw, &ada)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, raw_mail());
    assert_eq!(headers[header::CONTENT_TYPE], "message/rfc822");
    assert_eq!(
        headers[header::CONTENT_DISPOSITION],
        format!("attachment; filename=\"message-{id}.eml\"")
    );
    assert!(
        headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("sandbox")
    );
    let audit = store.audit_entries(0, 100).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "review.download_raw" && e.actor == "user:ada"),
        "the download is audited"
    );
    let (_, _, html) = send(&app, get(&format!("/review/messages/{id}/evidence"), &ada)).await;
    assert!(text(html).contains(&raw), "an admin sees the raw mail link");
}

#[tokio::test]
async fn an_original_larger_than_the_bound_is_refused() {
    let (_dir, store, app, id) = setup(21 << 20).await;
    let rita = log_in(&app, &store, "rita", "reviewer").await;
    let (status, headers, body) = send(
        &app,
        get(&format!("/review/messages/{id}/attachments/3"), &rita),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(text(body).contains("20 MiB"));
}

/// The PDF after a forwarded message (itself multipart, with a PDF of its own) is the one
/// served: the parts stored by the parser (crates/intake parse.rs: the attached message is
/// one part, its insides are not) and mail-parser's attachments count alike.
#[tokio::test]
async fn the_pdf_after_a_forwarded_message_is_the_one_served() {
    let (_dir, store, app, _) = setup(PDF.len() as i64).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(PDF);
    let other =
        base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.4\n% the forwarded one\n");
    let raw = format!(
        "From: Accounts <accounts@acme.example>\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nSee the forwarded mail.\r\n\
         --b\r\nContent-Type: message/rfc822\r\n\r\n\
         From: Old <old@acme.example>\r\nSubject: Old\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"c\"\r\n\r\n\
         --c\r\nContent-Type: text/plain\r\n\r\nold\r\n\
         --c\r\nContent-Type: application/pdf; name=\"old.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{other}\r\n--c--\r\n\
         --b\r\nContent-Type: application/pdf; name=\"inv.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b--\r\n"
    );
    let id = store
        .ingest("test", "fwd.eml", raw.as_bytes(), "parse", 3)
        .await
        .unwrap()
        .message_id;
    let part = |idx: i64, kind: &str, filename: Option<&str>, ctype: &str| NewPart {
        idx,
        kind: kind.into(),
        filename: filename.map(str::to_string),
        content_type: ctype.into(),
        size: PDF.len() as i64,
        supported: true,
        note: None,
        text: Some("text".into()),
        pages: None,
    };
    let effects = StageEffects {
        output: json!({}),
        parts: vec![
            part(0, "headers", None, "text/rfc822-headers"),
            part(1, "text", None, "text/plain"),
            part(2, "attachment", None, "message/rfc822"),
            part(3, "attachment", Some("inv.pdf"), "application/pdf"),
        ],
        ..Default::default()
    };
    let job = store
        .claim("w", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert!(store.complete(&job, &effects, None, 3).await.unwrap());
    let rita = log_in(&app, &store, "rita", "reviewer").await;
    let (status, _, body) = send(
        &app,
        get(&format!("/review/messages/{id}/attachments/3"), &rita),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, PDF);
}

#[tokio::test]
async fn a_corrected_field_is_stored_with_its_words() {
    let (_dir, store, app, id) = setup(PDF.len() as i64).await;
    let rita = log_in(&app, &store, "rita", "reviewer").await;
    let page = format!("/review/messages/{id}/evidence");
    let (_, _, html) = send(&app, get(&page, &rita)).await;
    let csrf = csrf_in(&text(html));
    let post = |field: &str| format!("/review/messages/{id}/fields/{field}");

    let (status, _, _) = send(
        &app,
        form(
            &post("invoice_number"),
            &rita,
            &[("csrf", "wrong"), ("value", "RE-3")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, html) = send(
        &app,
        form(
            &post("amount"),
            &rita,
            &[("csrf", &csrf), ("value", "lots")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(text(html).contains("is not a number"));
    let (status, _, _) = send(
        &app,
        form(&post("nope"), &rita, &[("csrf", &csrf), ("value", "x")]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(store.corrections(id).await.unwrap().is_empty());

    let (status, headers, _) = send(
        &app,
        form(
            &post("invoice_number"),
            &rita,
            &[("csrf", &csrf), ("value", "RE-3")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers[header::LOCATION],
        format!("{page}?notice=corrected")
    );
    let (status, _, _) = send(
        &app,
        form(
            &post("amount"),
            &rita,
            &[("csrf", &csrf), ("value", "1234,50")],
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the same value is no correction"
    );

    let c = store.corrections(id).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].field.as_str(), c[0].reviewer.as_str()),
        ("invoice_number", "rita")
    );
    assert_eq!(c[0].correction.value, json!("RE-3"));
    assert_eq!(c[0].correction.previous, json!("RE-2"));
    assert_eq!(c[0].correction.quote.as_deref(), Some("RE-3"));
    assert!(
        c[0].correction
            .context
            .as_deref()
            .unwrap()
            .contains("Order RE-3")
    );
    let (_, _, html) = send(&app, get(&format!("{page}?notice=corrected"), &rita)).await;
    let html = text(html);
    assert!(
        html.contains("corrected to <code>RE-3</code> by rita"),
        "{html}"
    );
}
