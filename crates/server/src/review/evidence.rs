//! What backs an extraction, on its own page (`/review/messages/{id}/evidence`): each field
//! with the words of the document it came from (highlighted in the text, with the page of a
//! PDF), the model's confidence (fields to check first), the reviewer's corrections, and
//! why the route was taken. The original documents: a PDF attachment served to the
//! reviewer's browser under CSP `sandbox`, the raw mail to admins only, both size-bounded.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::{Value as Tpl, context};
use serde::Deserialize;
use serde_json::Value;
use verre_store::{AuditEvent, FieldCorrection, Store};

use super::auth::Reviewer;
use super::pages::{PageError, PageResult, Posted, admin_only, page, signed_in, store, user_ctx};
use crate::AppState;

/// The largest original (a PDF attachment, a raw mail) served to a browser.
pub const MAX_ORIGINAL_BYTES: usize = 20 << 20;

/// What an original document may do in the browser: nothing (no script, no plugin, no
/// form, no navigation of other pages, an opaque origin).
pub const ORIGINAL_CSP: &str =
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:";

/// A field's value as a reviewer reads it: text as is, anything else as JSON.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// "invoice.pdf, page 2", "the mail" or nothing (not found).
fn place_text(span: &Value) -> String {
    if !span.is_object() {
        return String::new();
    }
    let place = &span["place"];
    match (place["attachment"].as_str(), place["page"].as_u64()) {
        (Some(a), Some(p)) => format!("{a}, page {p}"),
        (Some(a), None) => a.to_string(),
        (None, Some(p)) => format!("page {p}"),
        (None, None) => "the mail".to_string(),
    }
}

/// A span of the document, if it lies on character boundaries of it.
fn span_range(document: &str, span: &Value) -> Option<(usize, usize)> {
    let (s, e) = (
        span["start"].as_u64()? as usize,
        span["end"].as_u64()? as usize,
    );
    (s < e && e <= document.len() && document.is_char_boundary(s) && document.is_char_boundary(e))
        .then_some((s, e))
}

/// The document cut into plain and highlighted pieces: each field's span once (fields
/// with the same words share a highlight; an overlapping later span is not drawn twice).
fn segments(document: &str, fields: &[Value]) -> Vec<Tpl> {
    let mut marks: Vec<(usize, usize, Vec<String>, bool, usize)> = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let Some((s, e)) = span_range(document, &f["span"]) else {
            continue;
        };
        let name = f["field"].as_str().unwrap_or("").to_string();
        let check = f["check"] == Value::Bool(true);
        match marks.iter_mut().find(|m| m.0 == s && m.1 == e) {
            Some(m) => {
                m.2.push(name);
                m.3 |= check;
            }
            None => marks.push((s, e, vec![name], check, i)),
        }
    }
    marks.sort_by_key(|m| m.0);
    let mut out = Vec::new();
    let mut at = 0;
    for (s, e, names, check, i) in marks {
        if s < at {
            continue;
        }
        if s > at {
            out.push(context! { text => &document[at..s] });
        }
        out.push(context! {
            text => &document[s..e], mark => true, id => format!("span-{i}"),
            fields => names.join(", "), check => check,
        });
        at = e;
    }
    if at < document.len() {
        out.push(context! { text => &document[at..] });
    }
    out
}

#[derive(Deserialize, Default)]
pub struct EvidenceQuery {
    notice: Option<String>,
}

pub async fn evidence(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<EvidenceQuery>,
) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let notice = match q.notice.as_deref() {
        Some("corrected") => Some("Correction saved: later extractions may learn from it."),
        _ => None,
    };
    evidence_page(&state, &reviewer, id, StatusCode::OK, notice, None).await
}

async fn evidence_page(
    state: &AppState,
    reviewer: &Reviewer,
    id: i64,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<String>,
) -> PageResult {
    let store = store(state)?;
    let Some(message) = store.message(id).await? else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("there is no message {id}"),
        ));
    };
    let evidence = store.evidence(id).await?.unwrap_or(Value::Null);
    let document = evidence["document"].as_str().unwrap_or("");
    let fields: Vec<Value> = evidence["fields"].as_array().cloned().unwrap_or_default();
    let corrections = store.corrections(id).await?;
    let rows: Vec<Tpl> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = f["field"].as_str().unwrap_or("");
            let span = &f["span"];
            let corrected: Vec<Tpl> = corrections
                .iter()
                .filter(|c| c.field == name)
                .map(|c| context! { value => shown(&c.correction.value), reviewer => &c.reviewer, at => c.created_at })
                .collect();
            context! {
                field => name,
                value => shown(&f["value"]),
                confidence => f["confidence"].as_f64().map(|c| (c * 100.0).round() as i64),
                check => f["check"] == Value::Bool(true),
                found => span_range(document, span).is_some(),
                quote => span["quote"].as_str(),
                place => place_text(span),
                anchor => format!("span-{i}"),
                action => format!("/review/messages/{id}/fields/{}", path_segment(name)),
                corrected => corrected,
            }
        })
        .collect();
    let route = store.stage_output(id, "route").await?;
    let why: Vec<Value> = route
        .as_ref()
        .and_then(|r| r["why"].as_array().cloned())
        .unwrap_or_default();
    let why: Vec<Tpl> = why
        .iter()
        .map(|w| {
            let values: Vec<Tpl> = w["values"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| context! { path => k, value => v.to_string() })
                .collect();
            context! {
                route => w["route"].as_str(), when => w["when"].as_str(),
                matched => w["matched"] == Value::Bool(true), values => values,
            }
        })
        .collect();
    let originals: Vec<Tpl> = store
        .parts(id)
        .await?
        .iter()
        .filter(|p| p.kind == "attachment" && is_pdf(&p.content_type, p.filename.as_deref()))
        .map(|p| context! { idx => p.idx, filename => &p.filename, size => p.size, too_big => p.size as usize > MAX_ORIGINAL_BYTES })
        .collect();
    Ok(page(
        status,
        "evidence.html",
        context! {
            user => user_ctx(reviewer),
            csrf => &reviewer.session.csrf_token,
            notice => notice,
            error => error,
            m => &message,
            extracted => !fields.is_empty(),
            check_below => evidence["check_below"].as_f64().map(|c| (c * 100.0).round() as i64),
            fields => rows,
            segments => segments(document, &fields),
            route => route.as_ref().and_then(|r| r["route"].as_str().map(str::to_string)),
            why => why,
            originals => originals,
            admin => reviewer.is_admin(),
        },
    ))
}

fn is_pdf(content_type: &str, filename: Option<&str>) -> bool {
    content_type == "application/pdf"
        || filename.is_some_and(|f| f.to_ascii_lowercase().ends_with(".pdf"))
}

#[derive(Deserialize)]
pub struct CorrectionForm {
    value: String,
}

/// A reviewer's correction of one field: stored with the words of the document the new
/// value stands in, for later extractions to learn from.
pub async fn correct_field(
    State(state): State<Arc<AppState>>,
    Path((id, field)): Path<(i64, String)>,
    Posted { reviewer, form: f }: Posted<CorrectionForm>,
) -> PageResult {
    let store = store(&state)?;
    let evidence = store.evidence(id).await?.unwrap_or(Value::Null);
    let Some(previous) = evidence["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["field"] == field.as_str())
        .map(|x| x["value"].clone())
    else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("message {id} has no extracted field {field:?}"),
        ));
    };
    let value = match corrected_value(&field, f.value.trim(), &previous) {
        Ok(v) => v,
        Err(why) => {
            return evidence_page(
                &state,
                &reviewer,
                id,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(why),
            )
            .await;
        }
    };
    let document = evidence["document"].as_str().unwrap_or("");
    let span = verre_spans::find_value(document, &value);
    let correction = FieldCorrection {
        quote: span.map(|(s, e)| document[s..e].to_string()),
        context: span.map(|(s, e)| verre_spans::context_of(document, s, e)),
        value,
        previous,
    };
    store
        .correct_field(id, &field, &correction, reviewer.name())
        .await?;
    Ok(Redirect::to(&format!("/review/messages/{id}/evidence?notice=corrected")).into_response())
}

/// A field name as one URL path segment (percent-encoded but for letters, digits, `-_.`).
fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value a reviewer typed, of the extracted value's type.
fn corrected_value(field: &str, typed: &str, previous: &Value) -> Result<Value, String> {
    if typed.is_empty() {
        return Err(format!("{field}: give the correct value"));
    }
    let value = match previous {
        Value::Number(n) => {
            let typed_number = verre_spans::parse_number(typed)
                .ok_or_else(|| format!("{field}: {typed:?} is not a number"))?;
            // An integer stays one: 15, not 15.0, so it compares equal to an extracted 15.
            let whole = typed_number.fract() == 0.0 && typed_number.abs() < 2f64.powi(53);
            if (n.is_i64() || n.is_u64()) && whole {
                Value::from(typed_number as i64)
            } else {
                serde_json::Number::from_f64(typed_number)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{field}: {typed:?} is not a number"))?
            }
        }
        Value::Bool(_) => match typed {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("{field}: true or false")),
        },
        _ => Value::String(typed.to_string()),
    };
    if value == *previous {
        return Err(format!("{field}: that is the extracted value already"));
    }
    Ok(value)
}

#[derive(Deserialize, Default)]
pub struct OriginalQuery {
    download: Option<String>,
}

/// A file name safe inside a `Content-Disposition` header (ASCII letters, digits, `.-_`).
fn header_filename(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if safe.trim_matches('_').is_empty() {
        "document".into()
    } else {
        safe
    }
}

fn original(bytes: Vec<u8>, content_type: &'static str, disposition: String) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(ORIGINAL_CSP),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// The raw mail, or why it cannot be served.
async fn raw_or_refusal(store: &Store, id: i64) -> Result<Vec<u8>, PageError> {
    if store.message(id).await?.is_none() {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("there is no message {id}"),
        ));
    }
    match store.raw_message_kept(id).await? {
        Some(raw) => Ok(raw),
        None => Err(PageError::new(
            StatusCode::GONE,
            "the message as received was removed by retention ([retention] raw_days)",
        )),
    }
}

fn too_big(what: &str, size: usize) -> PageError {
    PageError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "{what} is {size} bytes, more than the {} MiB a browser is given; an admin can read it from the store",
            MAX_ORIGINAL_BYTES >> 20
        ),
    )
}

/// A PDF attachment as received, for the reviewer's browser to display under CSP
/// `sandbox` (or to download with `?download=1`).
pub async fn attachment(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, idx)): Path<(i64, i64)>,
    Query(q): Query<OriginalQuery>,
) -> PageResult {
    if let Err(r) = signed_in(&state, &headers).await {
        return Ok(r);
    }
    let store = store(&state)?;
    let parts = store.parts(id).await?;
    let not_found = || {
        PageError::new(
            StatusCode::NOT_FOUND,
            format!("message {id} has no PDF attachment {idx}"),
        )
    };
    // Attachments are parts in the order the parser met them (crates/intake parse.rs).
    let Some(nth) = parts
        .iter()
        .filter(|p| p.kind == "attachment")
        .position(|p| p.idx == idx)
    else {
        return Err(not_found());
    };
    let part = parts.iter().find(|p| p.idx == idx).expect("found above");
    if !is_pdf(&part.content_type, part.filename.as_deref()) {
        return Err(not_found());
    }
    if part.size as usize > MAX_ORIGINAL_BYTES {
        return Err(too_big("this attachment", part.size as usize));
    }
    let raw = raw_or_refusal(store, id).await?;
    let parsed = mail_parser::MessageParser::default().parse(&raw[..]);
    // The parser stores no part for an attachment mail-parser left multipart (a nested
    // message it never closed): skipped here too, so the counts agree.
    let bytes = parsed
        .as_ref()
        .and_then(|m| {
            m.attachments()
                .filter(|a| !matches!(a.body, mail_parser::PartType::Multipart(_)))
                .nth(nth)
        })
        .map(|a| a.contents().to_vec())
        .filter(|b| b.starts_with(b"%PDF-"))
        .ok_or_else(not_found)?;
    if bytes.len() > MAX_ORIGINAL_BYTES {
        return Err(too_big("this attachment", bytes.len()));
    }
    let name = header_filename(part.filename.as_deref().unwrap_or("document.pdf"));
    let how = if q.download.is_some() {
        "attachment"
    } else {
        "inline"
    };
    Ok(original(
        bytes,
        "application/pdf",
        format!("{how}; filename=\"{name}\""),
    ))
}

/// The mail as received, for admins only (it may hold what the review pages never show:
/// every header, hidden parts); the download is audited.
pub async fn raw_mail(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    admin_only(&reviewer)?;
    let store = store(&state)?;
    let raw = raw_or_refusal(store, id).await?;
    if raw.len() > MAX_ORIGINAL_BYTES {
        return Err(too_big("this message", raw.len()));
    }
    store
        .audit(AuditEvent {
            actor: &format!("user:{}", reviewer.name()),
            action: "review.download_raw",
            subject: &format!("message:{id}"),
            detail: serde_json::json!({"bytes": raw.len()}),
        })
        .await?;
    Ok(original(
        raw,
        "message/rfc822",
        format!("attachment; filename=\"message-{id}.eml\""),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_document_is_cut_around_each_span_once() {
        let doc = "Total 4.11 USD, paid 4.11";
        let fields = [
            json!({"field": "amount", "span": {"start": 6, "end": 10}, "check": true}),
            json!({"field": "net", "span": {"start": 6, "end": 10}}),
            json!({"field": "bad", "span": {"start": 8, "end": 99}}),
            json!({"field": "none", "span": null}),
        ];
        let segs = segments(doc, &fields);
        let texts: Vec<String> = segs
            .iter()
            .map(|s| s.get_attr("text").unwrap().to_string())
            .collect();
        assert_eq!(texts, ["Total ", "4.11", " USD, paid 4.11"]);
        assert_eq!(
            segs[1].get_attr("fields").unwrap().to_string(),
            "amount, net"
        );
        assert!(segs[1].get_attr("check").unwrap().is_true());
    }

    #[test]
    fn a_corrected_integer_stays_an_integer() {
        assert_eq!(corrected_value("qty", "15", &json!(12)), Ok(json!(15)));
        assert_eq!(corrected_value("qty", "1,500", &json!(12)), Ok(json!(1500)));
        assert_eq!(corrected_value("qty", "-3", &json!(12)), Ok(json!(-3)));
        assert_eq!(corrected_value("qty", "15.5", &json!(12)), Ok(json!(15.5)));
        assert!(corrected_value("qty", "12", &json!(12)).is_err());
        assert_eq!(
            corrected_value("amount", "15", &json!(4.11)),
            Ok(json!(15.0))
        );
        assert!(corrected_value("amount", "4.11", &json!(4.11)).is_err());
    }

    #[test]
    fn file_names_are_safe_in_a_header() {
        assert_eq!(header_filename("../évil\".pdf"), "..__vil_.pdf");
    }
}
