//! MIME parsing (mail-parser) and document text: text bodies as they are, HTML reduced to
//! text (never rendered or executed), PDF text per page in reading order (pdf-extract's glyphs, laid out by `pdf.rs`), plain-text
//! attachments; anything else is kept as a part marked unsupported, never dropped.

use mail_parser::{MessageParser, MimeHeaders, PartType};
use serde_json::{Value, json};
use verre_store::NewPart;

/// A parsed message: the header fields the pipeline uses, and its parts in order. Part 0 is
/// always the headers as text (so PII in them can be tagged like any other text).
#[derive(Debug, Clone)]
pub struct ParsedMail {
    pub fields: Value,
    pub parts: Vec<NewPart>,
}

/// Why a message cannot be parsed at all (it goes to quarantine with this reason).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not a MIME message (mail-parser found no message in {0} bytes)")]
    NotMime(usize),
    #[error("empty message: no headers and no body")]
    Empty,
    /// The parser process crashed or reached a limit on the message itself (not only on
    /// one of its documents).
    #[error("unreadable: {0}")]
    Unreadable(String),
}

/// What became of a document attachment's text.
#[derive(Debug, Clone)]
pub enum DocumentText {
    Pages(Vec<String>),
    /// The reader said the document is broken.
    Failed(String),
    /// The reader was stopped (a crash, a limit), or not run: the part keeps
    /// `unreadable: <why>`.
    Unreadable(String),
}

/// Largest attachment whose text is extracted; larger ones are kept, marked unsupported.
const MAX_EXTRACT_BYTES: usize = 50 << 20;

/// Parse a message in this process, reading its PDFs with [`pdf_pages`]. Mail from outside
/// goes through [`crate::isolation::MailParser`], which runs this in a child process.
pub fn parse_mail(raw: &[u8]) -> Result<ParsedMail, ParseError> {
    parse_mail_reading(raw, &mut |_, bytes| match pdf_pages(bytes) {
        Ok(pages) => DocumentText::Pages(pages),
        Err(e) => DocumentText::Failed(e),
    })
}

/// As [`parse_mail`], with each PDF attachment's text from `read_pdf(part index, bytes)`.
/// mail-parser panics on some malformed structures: the message is then
/// [`ParseError::Unreadable`].
pub fn parse_mail_reading(
    raw: &[u8],
    read_pdf: &mut dyn FnMut(i64, &[u8]) -> DocumentText,
) -> Result<ParsedMail, ParseError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        parse_unguarded(raw, read_pdf)
    }))
    .unwrap_or_else(|panic| {
        Err(ParseError::Unreadable(format!(
            "the MIME parser failed on this message ({})",
            panic_message(panic.as_ref())
        )))
    })
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or(panic.downcast_ref::<&str>().copied())
        .unwrap_or("panic")
        .to_string()
}

fn parse_unguarded(
    raw: &[u8],
    read_pdf: &mut dyn FnMut(i64, &[u8]) -> DocumentText,
) -> Result<ParsedMail, ParseError> {
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or(ParseError::NotMime(raw.len()))?;
    let addr = |a: Option<&mail_parser::Address>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
    };
    let from = msg.from().and_then(|a| a.first());
    let fields = json!({
        "subject": msg.subject().unwrap_or(""),
        "from": from.and_then(|a| a.address()).unwrap_or(""),
        "from_name": from.and_then(|a| a.name()).unwrap_or(""),
        "reply_to": msg.reply_to().and_then(|a| a.first()).and_then(|a| a.address())
            .or(from.and_then(|a| a.address())).unwrap_or(""),
        "to": addr(msg.to()),
        "cc": addr(msg.cc()),
        "date": msg.date().map(|d| d.to_rfc3339()).unwrap_or_default(),
        "message_id": msg.message_id().unwrap_or(""),
        "auth": authentication_results(&msg),
    });

    let mut parts = Vec::new();
    let header_text: String = msg
        .headers()
        .iter()
        .filter(|h| {
            matches!(
                h.name().to_ascii_lowercase().as_str(),
                "from" | "to" | "cc" | "reply-to" | "subject" | "date"
            )
        })
        .filter_map(|h| {
            let name = h.name();
            let v = header_value_text(h.value())?;
            Some(format!("{name}: {v}\n"))
        })
        .collect();
    parts.push(NewPart {
        idx: 0,
        kind: "headers".into(),
        filename: None,
        content_type: "text/rfc822-headers".into(),
        size: header_text.len() as i64,
        supported: true,
        note: None,
        text: Some(header_text.clone()),
        pages: None,
    });

    // Bodies: mail-parser picks the alternative to read (an HTML part when there is no
    // plain-text one); HTML is reduced to text, never rendered.
    for part in msg.text_bodies() {
        match &part.body {
            PartType::Text(t) => push_text(&mut parts, "text", None, "text/plain", t.to_string()),
            PartType::Html(h) => push_text(
                &mut parts,
                "html",
                None,
                "text/html",
                mail_parser::decoders::html::html_to_text(h),
            ),
            _ => {}
        }
    }
    for att in msg.attachments() {
        let filename = att.attachment_name().map(str::to_string);
        let ctype = att
            .content_type()
            .map(|c| match c.subtype() {
                Some(s) => format!("{}/{}", c.ctype(), s),
                None => c.ctype().to_string(),
            })
            .unwrap_or_else(|| "application/octet-stream".into())
            .to_ascii_lowercase();
        let idx = parts.len() as i64;
        let (size, supported, note, text, pages) = match &att.body {
            PartType::Text(t) | PartType::Html(t) => {
                let text = if matches!(att.body, PartType::Html(_)) {
                    mail_parser::decoders::html::html_to_text(t)
                } else {
                    t.to_string()
                };
                (t.len(), true, None, Some(text), None)
            }
            PartType::Message(m) => {
                let text = m.body_text(0).map(|t| t.to_string()).unwrap_or_default();
                let subject = m.subject().unwrap_or("");
                (
                    m.raw_message().len(),
                    true,
                    Some("attached message".to_string()),
                    Some(format!("Subject: {subject}\n{text}")),
                    None,
                )
            }
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                let is_pdf = ctype == "application/pdf"
                    || filename
                        .as_deref()
                        .is_some_and(|f| f.to_ascii_lowercase().ends_with(".pdf"))
                    || b.starts_with(b"%PDF-");
                if is_pdf && b.len() <= MAX_EXTRACT_BYTES {
                    match read_pdf(idx, b) {
                        DocumentText::Pages(pages) => (
                            b.len(),
                            true,
                            pages_without_text(&pages),
                            Some(join_pages(&pages)),
                            Some(pages),
                        ),
                        DocumentText::Failed(e) => (
                            b.len(),
                            false,
                            Some(format!("PDF text could not be extracted: {e}")),
                            None,
                            None,
                        ),
                        DocumentText::Unreadable(why) => (
                            b.len(),
                            false,
                            Some(format!("unreadable: {why}")),
                            None,
                            None,
                        ),
                    }
                } else if is_pdf {
                    (
                        b.len(),
                        false,
                        Some(format!("PDF larger than {MAX_EXTRACT_BYTES} bytes")),
                        None,
                        None,
                    )
                } else {
                    (
                        b.len(),
                        false,
                        Some(format!("unsupported attachment type {ctype}")),
                        None,
                        None,
                    )
                }
            }
            // No part (the review's attachment lookup skips these alike: crates/server
            // review/evidence.rs).
            PartType::Multipart(_) => continue,
        };
        parts.push(NewPart {
            idx,
            kind: "attachment".into(),
            filename,
            content_type: ctype,
            size: size as i64,
            supported,
            note,
            text,
            pages,
        });
    }

    let has_body = parts
        .iter()
        .skip(1)
        .any(|p| p.text.as_deref().is_some_and(|t| !t.trim().is_empty()) || !p.supported);
    if msg.headers().is_empty() && !has_body {
        return Err(ParseError::Empty);
    }
    Ok(ParsedMail { fields, parts })
}

/// What the receiving mail server found about the sender (RFC 8601
/// `Authentication-Results`): `{"authserv_id", "dmarc", "dkim", "spf"}`, each result as
/// written (`pass`, `fail`, `softfail`, `none`...; `none` when not reported). Only the
/// topmost header counts: it is the one the last server added, and anything below it may
/// have come with the mail (a sender can write any header it likes). DKIM passes when any
/// signature passed.
fn authentication_results(msg: &mail_parser::Message) -> Value {
    let header = msg
        .headers_raw()
        .find(|(name, _)| name.eq_ignore_ascii_case("Authentication-Results"))
        .map(|(_, value)| value);
    let (authserv_id, results) = header.map(parse_authentication_results).unwrap_or_default();
    let result = |method: &str| {
        let mut found = results.iter().filter(|(m, _)| m == method).map(|(_, r)| r);
        let first = found.clone().next().cloned();
        if method == "dkim" && found.any(|r| r == "pass") {
            return "pass".to_string();
        }
        first.unwrap_or_else(|| "none".to_string())
    };
    json!({
        "authserv_id": authserv_id,
        "dmarc": result("dmarc"),
        "dkim": result("dkim"),
        "spf": result("spf"),
    })
}

/// The authserv-id and the (method, result) pairs of one `Authentication-Results` value,
/// lower case, comments removed.
fn parse_authentication_results(value: &str) -> (String, Vec<(String, String)>) {
    let mut text = String::new();
    let (mut depth, mut quoted) = (0usize, false);
    for c in value.chars() {
        match c {
            '"' if depth == 0 => {
                quoted = !quoted;
                text.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            '\r' | '\n' | '\t' => text.push(' '),
            _ => text.push(c),
        }
    }
    let mut clauses = text.split(';');
    let authserv_id = clauses
        .next()
        .and_then(|c| c.split_whitespace().next())
        .unwrap_or("")
        .to_ascii_lowercase();
    let results = clauses
        .filter_map(|clause| {
            let (method, result) = clause.split_whitespace().next()?.split_once('=')?;
            // `dkim/1=pass`: the method's version is not needed.
            let method = method.split('/').next()?.trim().to_ascii_lowercase();
            Some((method, result.trim().to_ascii_lowercase()))
        })
        .collect();
    (authserv_id, results)
}

fn header_value_text(v: &mail_parser::HeaderValue) -> Option<String> {
    use mail_parser::HeaderValue as H;
    match v {
        H::Text(t) => Some(t.to_string()),
        H::TextList(l) => Some(l.join(", ")),
        H::Address(a) => Some(
            a.iter()
                .map(|x| match (x.name(), x.address()) {
                    (Some(n), Some(e)) => format!("{n} <{e}>"),
                    (None, Some(e)) => e.to_string(),
                    (Some(n), None) => n.to_string(),
                    (None, None) => String::new(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        H::DateTime(d) => Some(d.to_rfc3339()),
        _ => None,
    }
}

fn push_text(
    parts: &mut Vec<NewPart>,
    kind: &str,
    filename: Option<String>,
    ctype: &str,
    text: String,
) {
    parts.push(NewPart {
        idx: parts.len() as i64,
        kind: kind.into(),
        filename,
        content_type: ctype.into(),
        size: text.len() as i64,
        supported: true,
        note: None,
        text: Some(text),
        pages: None,
    });
}

/// Page texts of a PDF in reading order ([`crate::pdf`]). pdf-extract panics on some
/// malformed files; a panic is an error here, not a dead worker.
pub fn pdf_pages(bytes: &[u8]) -> Result<Vec<String>, String> {
    let result = std::panic::catch_unwind(|| crate::pdf::pages(bytes));
    match result {
        Ok(Ok(pages)) => Ok(pages),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!(
            "the PDF reader failed: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or(panic.downcast_ref::<&str>().copied())
                .unwrap_or("panic")
        )),
    }
}

/// The note for a PDF with pages that gave no text (scans, for which OCR is a later step,
/// or pages the reader failed on), so that review shows what was not read.
pub(crate) fn pages_without_text(pages: &[String]) -> Option<String> {
    let listed = |unread: &dyn Fn(&str) -> bool| -> Option<String> {
        let numbers: Vec<String> = (1..)
            .zip(pages)
            .filter(|(_, text)| unread(text))
            .map(|(n, _)| n.to_string())
            .collect();
        let s = if numbers.len() == 1 { "" } else { "s" };
        (!numbers.is_empty()).then(|| format!("page{s} {} of {}", numbers.join(", "), pages.len()))
    };
    let scans = listed(&|t| t == crate::pdf::NO_TEXT_LAYER)
        .map(|p| format!("no text layer on {p} (a scan? OCR is a later step)"));
    let failed =
        listed(&|t| t.starts_with(crate::pdf::UNREADABLE_PAGE)).map(|p| format!("unreadable {p}"));
    let notes: Vec<String> = scans.into_iter().chain(failed).collect();
    (!notes.is_empty()).then(|| notes.join("; "))
}

pub(crate) fn join_pages(pages: &[String]) -> String {
    pages
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[page {}]\n{}", i + 1, p.trim()))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The text the extraction model reads: the headers, the bodies and every attachment's
/// text, each introduced by a line saying what it is, cut to `max_chars` characters.
pub fn document_text(parts: &[verre_store::PartRow], max_chars: usize) -> String {
    text_of(parts.iter(), max_chars)
}

/// The bodies only (no headers, no attachments).
pub fn body_text(parts: &[verre_store::PartRow], max_chars: usize) -> String {
    text_of(
        parts
            .iter()
            .filter(|p| p.kind == "text" || p.kind == "html"),
        max_chars,
    )
}

/// The attachments only, each introduced by its name.
pub fn attachments_text(parts: &[verre_store::PartRow], max_chars: usize) -> String {
    text_of(parts.iter().filter(|p| p.kind == "attachment"), max_chars)
}

fn text_of<'a>(parts: impl Iterator<Item = &'a verre_store::PartRow>, max_chars: usize) -> String {
    let mut doc = String::new();
    for p in parts {
        let Some(text) = p.text.as_deref() else {
            if p.kind == "attachment" {
                doc.push_str(&format!(
                    "\n[attachment {} ({}): not readable]\n",
                    p.filename.as_deref().unwrap_or("unnamed"),
                    p.content_type
                ));
            }
            continue;
        };
        match p.kind.as_str() {
            "headers" => {}
            "attachment" => doc.push_str(&format!(
                "\n[attachment {}]\n",
                p.filename.as_deref().unwrap_or("unnamed")
            )),
            _ => doc.push('\n'),
        }
        doc.push_str(text.trim());
        doc.push('\n');
    }
    let doc = doc.trim();
    match doc.char_indices().nth(max_chars) {
        Some((cut, _)) => doc[..cut].to_string(),
        None => doc.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (fuzz/regressions/mime/): mail-parser panics ("Invalid part ID")
    /// on nested message/rfc822 parts in a multipart whose boundary line runs on. The
    /// message is unreadable, the caller lives.
    #[test]
    fn a_mime_parser_panic_is_an_unreadable_message() {
        let raw = include_bytes!("../../../fuzz/regressions/mime/mail-parser-invalid-part-id.eml");
        match parse_mail(raw) {
            Err(ParseError::Unreadable(why)) => assert!(why.contains("MIME"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_bodies_html_attachments_and_encoded_names() {
        let raw = concat!(
            "From: =?UTF-8?B?SsOpcsO0bWU=?= <jerome@example.fr>\r\n",
            "To: desk@example.com\r\n",
            "Subject: =?UTF-8?Q?Facture_n=C2=B012?=\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n",
            "--b\r\nContent-Type: text/html\r\n\r\n<p>Hello <b>there</b></p><script>alert(1)</script>\r\n",
            "--b\r\nContent-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nplain notes\r\n",
            "--b\r\nContent-Type: image/png; name=\"=?UTF-8?Q?r=C3=A9sum=C3=A9.png?=\"\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n",
            "--b--\r\n"
        );
        let p = parse_mail(raw.as_bytes()).unwrap();
        assert_eq!(p.fields["subject"], "Facture n°12");
        assert_eq!(p.fields["from_name"], "Jérôme");
        assert_eq!(p.fields["from"], "jerome@example.fr");
        let html = p
            .parts
            .iter()
            .find(|p| p.kind == "html")
            .expect("html body as text");
        let text = html.text.as_deref().unwrap();
        assert!(text.contains("Hello") && !text.contains("<b>"), "{text}");
        let notes = p
            .parts
            .iter()
            .find(|p| p.filename.as_deref() == Some("notes.txt"))
            .unwrap();
        assert_eq!(notes.text.as_deref().map(str::trim), Some("plain notes"));
        let png = p
            .parts
            .iter()
            .find(|p| p.content_type == "image/png")
            .unwrap();
        assert_eq!(png.filename.as_deref(), Some("résumé.png"));
        assert!(!png.supported && png.note.as_deref().unwrap().contains("unsupported"));
    }

    /// The review serves attachment N as mail-parser's N-th attachment (crates/server
    /// review/evidence.rs): a forwarded message, multipart with a PDF of its own, is one
    /// stored part, and the PDF after it keeps its place.
    #[test]
    fn a_forwarded_message_is_one_attachment_part() {
        let raw = concat!(
            "From: a@example.com\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n",
            "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n",
            "--b\r\nContent-Type: text/plain\r\n\r\nSee the forwarded mail.\r\n",
            "--b\r\nContent-Type: message/rfc822\r\n\r\n",
            "From: old@example.com\r\nSubject: Old\r\nMIME-Version: 1.0\r\n",
            "Content-Type: multipart/mixed; boundary=\"c\"\r\n\r\n",
            "--c\r\nContent-Type: text/plain\r\n\r\nold\r\n",
            "--c\r\nContent-Type: application/pdf; name=\"old.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--c--\r\n",
            "--b\r\nContent-Type: application/pdf; name=\"inv.pdf\"\r\n",
            "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
        );
        let p = parse_mail(raw.as_bytes()).unwrap();
        let stored: Vec<(i64, &str, &str)> = p
            .parts
            .iter()
            .filter(|p| p.kind == "attachment")
            .map(|p| {
                (
                    p.idx,
                    p.content_type.as_str(),
                    p.filename.as_deref().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            stored,
            [(2, "message/rfc822", ""), (3, "application/pdf", "inv.pdf")]
        );
        let listed = MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap()
            .attachments()
            .count();
        assert_eq!(listed, stored.len());
    }

    #[test]
    fn the_topmost_authentication_results_are_read() {
        let raw = concat!(
            "Authentication-Results: mx.example.eu;\r\n",
            "  dkim=fail (bad signature) header.d=bank.test;\r\n",
            "  dkim=pass header.d=mailer.test; spf=softfail smtp.mailfrom=bank.test;\r\n",
            "  dmarc=FAIL (p=reject) header.from=bank.test\r\n",
            "Received: from somewhere\r\n",
            "Authentication-Results: mx.example.eu; dmarc=pass; spf=pass; dkim=pass\r\n",
            "From: Bank <support@bank.test>\r\n",
            "Reply-To: collect@elsewhere.test\r\n",
            "Subject: x\r\n\r\nhello\r\n"
        );
        let p = parse_mail(raw.as_bytes()).unwrap();
        assert_eq!(
            p.fields["auth"],
            json!({"authserv_id": "mx.example.eu", "dmarc": "fail", "dkim": "pass", "spf": "softfail"})
        );
        assert_eq!(p.fields["reply_to"], "collect@elsewhere.test");
        let bare = parse_mail(b"From: a@b.test\r\nSubject: x\r\n\r\nhi\r\n").unwrap();
        assert_eq!(
            bare.fields["auth"],
            json!({"authserv_id": "", "dmarc": "none", "dkim": "none", "spf": "none"})
        );
        assert_eq!(
            parse_authentication_results("mx; none").1,
            Vec::<(String, String)>::new()
        );
        assert_eq!(
            parse_authentication_results("mx 1; dkim/1=pass (\"a;b\" x=y) header.i=@a.test").1,
            [("dkim".to_string(), "pass".to_string())]
        );
    }

    #[test]
    fn an_empty_message_is_an_error() {
        assert!(parse_mail(b"").is_err());
    }

    #[test]
    fn a_broken_pdf_is_kept_and_marked() {
        let raw = "Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKZ2FyYmFnZQ==\r\n--b--\r\n";
        let p = parse_mail(raw.as_bytes()).unwrap();
        let pdf = p
            .parts
            .iter()
            .find(|p| p.content_type == "application/pdf")
            .unwrap();
        assert!(!pdf.supported, "{pdf:?}");
        assert!(pdf.note.as_deref().unwrap().contains("PDF"));
    }
}
