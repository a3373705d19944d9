//! One message's page: the mail (sanitized), its parts, the extraction with its
//! evidence, the staged actions and their drafts.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use minijinja::{Value as Tpl, context};
use serde::Deserialize;
use serde_json::Value;
use verre_store::Store;
use verre_store::review::{QueueFilter, ReviewStatus};

use super::auth::Reviewer;
use super::flash::Flash;
use super::form;
use super::pages::{PageError, PageResult, page, signed_in, store, user_ctx};
use super::queue::{subject_and_from, triaged};
use super::triage::{self};
use crate::AppState;

/// The mail's HTML with everything active removed: no scripts, styles, forms, frames or
/// images (so nothing remote loads), links made `noopener noreferrer`.
pub fn sanitize_mail_html(html: &str) -> String {
    let mut b = ammonia::Builder::default();
    b.rm_tags(["img"]);
    b.url_schemes(["http", "https", "mailto"].into_iter().collect());
    b.clean(html).to_string()
}

pub(super) fn pretty(v: &Value) -> String {
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
    pub(super) notice: Option<String>,
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
}
