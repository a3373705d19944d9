//! What a reviewer does to a message: save a draft, a payload or its form fields, confirm,
//! approve, reject, file, undo, bulk decisions, re-run a stage; an admin's retry of a
//! delivery and re-enabling of an endpoint.

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::{Value as Tpl, context};
use serde::Deserialize;
use serde_json::Value;
use verre_store::Store;
use verre_store::review::{ChangedSinceConfirmed, ReviewStatus, staged_digest};

use super::auth::Reviewer;
use super::flash::Flash;
use super::form;
use super::message::{NoticeQuery, pretty};
use super::pages::{
    NoFields, PageError, PageResult, Posted, admin_only, form_author, page, signed_in, store,
    user_ctx,
};
use super::queue::subject_and_from;
use super::triage;
use crate::AppState;

fn back_to(id: i64, notice: &str) -> Response {
    Redirect::to(&format!("/review/messages/{id}?notice={notice}")).into_response()
}

/// After a decision: the queue, which offers to undo it while nothing was picked up.
fn decided(id: i64, notice: &str) -> Response {
    Redirect::to(&format!("/review?notice={notice}&message={id}")).into_response()
}

/// A store refusal (decided already, invalid payload...) shown on the message page after a
/// redirect, so that reloading the page does not post the form again.
fn refused(
    state: &AppState,
    reviewer: &Reviewer,
    id: i64,
    action: Option<(i64, Vec<(String, String)>)>,
    e: anyhow::Error,
) -> PageResult {
    let token = state.review().flashes.put(
        reviewer.name(),
        Flash {
            error: Some(format!("{e:#}")),
            action,
            ..Default::default()
        },
    );
    Ok(Redirect::to(&format!("/review/messages/{id}?flash={token}")).into_response())
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
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
}

#[derive(Deserialize)]
pub struct PayloadForm {
    payload: String,
}

/// The payload as raw JSON: for admins (reviewers edit it through the form).
pub async fn save_payload(
    State(state): State<Arc<AppState>>,
    Path(action_id): Path<i64>,
    Posted { reviewer, form: f }: Posted<PayloadForm>,
) -> PageResult {
    admin_only(&reviewer)?;
    let store = store(&state)?;
    let id = action_message(store, action_id).await?;
    match store
        .edit_action(action_id, &f.payload, reviewer.name())
        .await
    {
        Ok(()) => Ok(back_to(id, "payload")),
        Err(e) => refused(
            &state,
            &reviewer,
            id,
            Some((action_id, vec![("payload".into(), f.payload)])),
            e,
        ),
    }
}

async fn action_message(store: &Store, action_id: i64) -> Result<i64, PageError> {
    store.action_message(action_id).await?.ok_or_else(|| {
        PageError::new(
            StatusCode::NOT_FOUND,
            format!("there is no action {action_id}"),
        )
    })
}

/// The payload edited through the form generated from its schema, validated against the
/// schema before it is saved.
pub async fn save_fields(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(action_id): Path<i64>,
    Form(fields): Form<Vec<(String, String)>>,
) -> PageResult {
    let csrf = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map_or("", |(_, v)| v.as_str());
    let reviewer = match form_author(&state, &headers, csrf).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let store = store(&state)?;
    let id = action_message(store, action_id).await?;
    let Some(action) = store
        .actions(id)
        .await?
        .into_iter()
        .find(|a| a.id == action_id)
    else {
        return Err(PageError::new(StatusCode::NOT_FOUND, "no such action"));
    };
    let declared = triage::declared_labels(store.stage_output(id, "stage").await?.as_ref());
    let current: Value = serde_json::from_str(&action.payload).unwrap_or(Value::Null);
    let schema = form::payload_schema(&action.kind, &current, &declared);
    let fields: Vec<(String, String)> = fields.into_iter().filter(|(k, _)| k != "csrf").collect();
    let saved = match form::payload_from_form(&schema, &current, &fields) {
        Ok(payload) => {
            store
                .edit_action(action_id, &payload.to_string(), reviewer.name())
                .await
        }
        Err(why) => Err(anyhow::anyhow!(why)),
    };
    match saved {
        Ok(()) => Ok(back_to(id, "payload")),
        Err(e) => refused(&state, &reviewer, id, Some((action_id, fields)), e),
    }
}

/// What approving would send where: every staged action with its resolved target and
/// payload, and whether the configuration allows it. Nothing changes here.
pub async fn confirm(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<NoticeQuery>,
) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let store = store(&state)?;
    let nothing = store
        .actions(id)
        .await?
        .iter()
        .all(|a| a.status != "staged");
    let messages = vec![sending(&state, store, id).await?];
    Ok(page(
        StatusCode::OK,
        "confirm.html",
        context! {
            user => user_ctx(&reviewer),
            csrf => &reviewer.session.csrf_token,
            messages => messages,
            what => if nothing { "file" } else { "approve" },
            post_to => format!("/review/messages/{id}/{}", if nothing { "file" } else { "approve" }),
            single => id,
            notice => q.notice.as_deref().and_then(confirm_notice),
        },
    ))
}

/// The confirmation's notices, from a fixed list.
fn confirm_notice(key: &str) -> Option<&'static str> {
    Some(match key {
        "changed" => {
            "Changed since you confirmed: another reviewer edited what this message sends. Look again before you approve."
        }
        "unconfirmed" => "Confirm what this message sends first.",
        _ => return None,
    })
}

/// One message as the confirmation shows it, with the digest of what it shows that the
/// approval must carry back.
async fn sending(state: &AppState, store: &Store, id: i64) -> Result<Tpl, PageError> {
    let Some(status) = store.review_status(id).await? else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("there is no message {id}"),
        ));
    };
    let (subject, from) = subject_and_from(
        store
            .parts(id)
            .await?
            .iter()
            .find(|p| p.kind == "headers")
            .and_then(|p| p.text.as_deref()),
    );
    let delivery = &state.review().delivery;
    let staged: Vec<_> = store
        .actions(id)
        .await?
        .into_iter()
        .filter(|a| a.status == "staged")
        .collect();
    let digest = staged_digest(&staged);
    let actions: Vec<Tpl> = staged
        .into_iter()
        .map(|a| {
            let payload: Value = serde_json::from_str(&a.payload).unwrap_or(Value::Null);
            let refused = delivery.allow(&a).err();
            context! {
                name => &a.name, kind => &a.kind, target => &a.target,
                subject => payload["subject"].as_str(), body => payload["body"].as_str(),
                payload => pretty(&payload), refused => refused,
            }
        })
        .collect();
    Ok(context! {
        id => id, subject => subject, from => from, status => status.as_str(),
        undecided => status == ReviewStatus::ToReview, actions => actions, digest => digest,
    })
}

#[derive(Deserialize)]
pub struct ApproveForm {
    /// The digest of the staged actions the confirmation showed.
    digest: Option<String>,
}

/// Approve what the confirmation showed: an approval without its digest, or with one that
/// no longer matches, goes back to the confirmation.
pub async fn approve(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Posted { reviewer, form: f }: Posted<ApproveForm>,
) -> PageResult {
    let Some(digest) = f.digest.filter(|d| !d.is_empty()) else {
        return Ok(to_confirmation(id, "unconfirmed"));
    };
    match approve_one(&state, &reviewer, id, &digest).await {
        Ok(true) => Ok(back_to(id, "awaiting")),
        Ok(false) => Ok(decided(id, "approved")),
        Err(e) if e.is::<ChangedSinceConfirmed>() => Ok(to_confirmation(id, "changed")),
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
}

fn to_confirmation(id: i64, notice: &str) -> Response {
    Redirect::to(&format!("/review/messages/{id}/confirm?notice={notice}")).into_response()
}

/// Approve a message as confirmed (`digest`; true: recorded, waiting for a second approver).
async fn approve_one(
    state: &AppState,
    reviewer: &Reviewer,
    id: i64,
    digest: &str,
) -> anyhow::Result<bool> {
    let settings = state.review();
    let delivery = settings.delivery.clone();
    let allow = move |a: &verre_store::ActionRow| delivery.allow(a);
    let store = state
        .store()
        .ok_or_else(|| anyhow::anyhow!("this server was started without a database"))?;
    let approval = store
        .approve_confirmed(
            id,
            reviewer.name(),
            &allow,
            settings.second_approver,
            Some(digest),
        )
        .await?;
    if approval.awaiting.is_some() {
        return Ok(true);
    }
    settings.wake.notify_one();
    Ok(false)
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
        Ok(_) => Ok(decided(id, "rejected")),
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
}

/// File a message that has nothing to send.
pub async fn file(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Posted { reviewer, .. }: Posted<NoFields>,
) -> PageResult {
    match store(&state)?.file_message(id, reviewer.name()).await {
        Ok(_) => Ok(decided(id, "filed")),
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
}

/// Undo a decision while the delivery worker has not picked anything of it up.
pub async fn undo(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Posted { reviewer, .. }: Posted<NoFields>,
) -> PageResult {
    match store(&state)?.undo_decision(id, reviewer.name()).await {
        Ok(_) => Ok(back_to(id, "undone")),
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
}

/// The messages a bulk decision is about, from the checked boxes (`id=1&id=2`) or a list
/// (`ids=1,2`); at most [`BULK_LIMIT`].
fn bulk_ids(pairs: &[(String, String)]) -> Result<Vec<i64>, PageError> {
    let mut ids = Vec::new();
    for (k, v) in pairs {
        let values: Vec<&str> = match k.as_str() {
            "id" => vec![v.as_str()],
            "ids" => v.split(',').filter(|s| !s.is_empty()).collect(),
            _ => continue,
        };
        for s in values {
            let id = s.trim().parse::<i64>().map_err(|_| {
                PageError::new(StatusCode::BAD_REQUEST, format!("not a message id: {s:?}"))
            })?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    if ids.is_empty() {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            "tick the messages to decide on first",
        ));
    }
    if ids.len() > BULK_LIMIT {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            format!("at most {BULK_LIMIT} messages at once"),
        ));
    }
    Ok(ids)
}

/// The most messages one bulk decision covers.
const BULK_LIMIT: usize = 100;

fn bulk_what(pairs: &[(String, String)]) -> Result<&'static str, PageError> {
    let what = pairs
        .iter()
        .find(|(k, _)| k == "do")
        .map_or("", |(_, v)| v.as_str());
    ["approve", "reject", "file"]
        .into_iter()
        .find(|w| *w == what)
        .ok_or_else(|| PageError::new(StatusCode::BAD_REQUEST, "choose approve, reject or file"))
}

/// The one confirmation of a bulk decision: every message with what it would send where.
pub async fn bulk_confirm(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let ids = bulk_ids(&pairs)?;
    let what = bulk_what(&pairs)?;
    let store = store(&state)?;
    let mut messages = Vec::new();
    for &id in &ids {
        messages.push(sending(&state, store, id).await?);
    }
    let flash = pairs
        .iter()
        .find(|(k, _)| k == "flash")
        .and_then(|(_, t)| state.review().flashes.get(reviewer.name(), t))
        .unwrap_or_default();
    Ok(page(
        StatusCode::OK,
        "confirm.html",
        context! {
            user => user_ctx(&reviewer),
            csrf => &reviewer.session.csrf_token,
            messages => messages,
            notice => flash.notice,
            error => flash.error,
            what => what,
            ids => ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
        },
    ))
}

/// A bulk decision, confirmed: each message decided in its own transaction; what was
/// refused is listed on the queue.
pub async fn bulk(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map_or("", |(_, v)| v.as_str());
    let reviewer = match form_author(&state, &headers, csrf).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let ids = bulk_ids(&pairs)?;
    let what = bulk_what(&pairs)?;
    let reason = pairs
        .iter()
        .find(|(k, _)| k == "reason")
        .map_or("", |(_, v)| v.as_str());
    let store = store(&state)?;
    let (mut done, mut problems, mut changed) = (0, Vec::new(), Vec::new());
    for id in ids {
        let outcome = match what {
            "approve" => {
                // Each message's confirmation digest (`digest.ID`); none is never a match.
                let key = format!("digest.{id}");
                let digest = pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or("", |(_, v)| v.as_str());
                match approve_one(&state, &reviewer, id, digest).await {
                    Ok(true) => Err(anyhow::anyhow!(
                        "your approval is recorded; a reply's recipient was changed, so another reviewer must approve too"
                    )),
                    Err(e) if e.is::<ChangedSinceConfirmed>() => {
                        changed.push(id);
                        continue;
                    }
                    other => other.map(|_| ()),
                }
            }
            "reject" => store.reject(id, reviewer.name(), reason).await.map(|_| ()),
            _ => store.file_message(id, reviewer.name()).await.map(|_| ()),
        };
        match outcome {
            Ok(()) => done += 1,
            Err(e) => problems.push(format!("message {id}: {e:#}")),
        }
    }
    let past = match what {
        "approve" => "approved",
        "reject" => "rejected",
        _ => "filed",
    };
    if !changed.is_empty() {
        problems.push(format!(
            "changed since you confirmed, not approved: {}; look again",
            changed
                .iter()
                .map(|id| format!("message {id}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let token = state.review().flashes.put(
        reviewer.name(),
        Flash {
            notice: Some(format!("{done} message(s) {past}.")),
            error: (!problems.is_empty()).then(|| problems.join("; ")),
            action: None,
        },
    );
    if !changed.is_empty() {
        // Back to the confirmation of what changed, as it stands now.
        let ids = changed.iter().map(i64::to_string).collect::<Vec<_>>();
        return Ok(Redirect::to(&format!(
            "/review/bulk?do=approve&ids={}&flash={token}",
            ids.join(",")
        ))
        .into_response());
    }
    Ok(Redirect::to(&format!("/review?flash={token}")).into_response())
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
        Err(e) => refused(&state, &reviewer, id, None, e),
    }
}

pub async fn retry_delivery(
    State(state): State<Arc<AppState>>,
    Path(outbox_id): Path<i64>,
    Posted { reviewer, .. }: Posted<NoFields>,
) -> PageResult {
    admin_only(&reviewer)?;
    let done = store(&state)?
        .retry_delivery(outbox_id, reviewer.name())
        .await;
    if done.is_ok() {
        state.review().wake.notify_one();
    }
    Ok(to_deliveries(
        &state,
        &reviewer,
        done.map(|_| "Retrying: attempts reset."),
    ))
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
    let done = store(&state)?
        .enable_endpoint(&f.url, reviewer.name())
        .await;
    Ok(to_deliveries(
        &state,
        &reviewer,
        done.map(|_| "Endpoint re-enabled."),
    ))
}

/// Back to the deliveries page with what happened (post/redirect/get).
fn to_deliveries(state: &AppState, reviewer: &Reviewer, outcome: anyhow::Result<&str>) -> Response {
    let flash = match outcome {
        Ok(notice) => Flash {
            notice: Some(notice.to_string()),
            ..Default::default()
        },
        Err(e) => Flash {
            error: Some(format!("{e:#}")),
            ..Default::default()
        },
    };
    let token = state.review().flashes.put(reviewer.name(), flash);
    Redirect::to(&format!("/review/deliveries?flash={token}")).into_response()
}
