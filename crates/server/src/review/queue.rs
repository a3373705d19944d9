//! The queue page (triaged, searched, filtered; the nothing-to-send lane) and the
//! deliveries page.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use minijinja::{Value as Tpl, context};
use serde::Deserialize;
use serde_json::Value;
use verre_store::review::{QueueFilter, QueueItem, ReviewStatus};
use verre_store::{Store, now_ms};

use super::pages::{PageError, PageResult, page, signed_in, store, user_ctx};
use super::triage::{self, Label, Signals, Triaged};
use crate::AppState;

#[derive(Deserialize, Default)]
pub struct QueueQuery {
    status: Option<String>,
    label: Option<String>,
    /// Words to search for in subject, sender, extraction and text.
    q: Option<String>,
    notice: Option<String>,
    /// The message a notice is about (approved, rejected, filed: undo is offered).
    message: Option<i64>,
    flash: Option<String>,
}

/// `Subject` and `From` from the stored header text.
pub(super) fn subject_and_from(headers: Option<&str>) -> (String, String) {
    let mut out = (String::new(), String::new());
    for line in headers.unwrap_or("").lines() {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "subject" => out.0 = value.trim().to_string(),
                "from" => out.1 = value.trim().to_string(),
                _ => {}
            }
        }
    }
    out
}

/// Characters of a message's text read for deadlines and the search.
const TEXT_SCANNED: usize = 20_000;

/// What the ranking reads of one message, read and decrypted on the runtime, ranked off it.
struct Unranked {
    item: QueueItem,
    headers: String,
    text: String,
    declared: BTreeMap<String, Vec<String>>,
    lookup: Option<Value>,
}

/// The queue for `filter`, each message decrypted, ranked and (with `query`) matched; the
/// undecided in priority order (highest first, then the longest waiting), the decided
/// newest first. Without a query the ranking is reused while the queue's state is the
/// same ([`triage::RankingCache`]); a search scans (at most [`triage::SCAN_LIMIT`]).
pub(super) async fn triaged(
    state: &AppState,
    store: &Store,
    filter: QueueFilter,
    query: &str,
) -> anyhow::Result<Arc<Vec<Triaged>>> {
    let cache = &state.review().rankings;
    let view = format!(
        "{}|{}",
        filter.status.map_or("all", |s| s.as_str()),
        filter
            .label
            .as_ref()
            .map_or(String::new(), |(k, v)| format!("{k}={v}"))
    );
    let queue_state = store.queue_state().await?;
    if query.is_empty()
        && let Some(ranked) = cache.get(&view, &queue_state)
    {
        return Ok(ranked);
    }
    let undecided = matches!(
        filter.status,
        Some(ReviewStatus::ToReview | ReviewStatus::InProgress | ReviewStatus::Quarantined)
    );
    let mut unranked = Vec::new();
    for item in store
        .review_queue(&QueueFilter {
            limit: triage::SCAN_LIMIT,
            ..filter
        })
        .await?
    {
        let id = item.message.id;
        let mut headers = String::new();
        let mut text = String::new();
        for (kind, part) in store.triage_parts(id).await? {
            let Some(part) = part else { continue };
            if kind == "headers" {
                headers = part;
            } else if text.len() < TEXT_SCANNED {
                text.extend(part.chars().take(TEXT_SCANNED - text.len()));
                text.push('\n');
            }
        }
        let declared = triage::declared_labels(store.stage_output(id, "stage").await?.as_ref());
        let lookup = store.stage_output(id, "crossref").await?;
        unranked.push(Unranked {
            item,
            headers,
            text,
            declared,
            lookup,
        });
    }
    cache.read(unranked.len());
    let query = query.to_string();
    let searching = !query.is_empty();
    // Six regexes over up to 20 KB of each of a thousand messages: off the runtime.
    let ranked = tokio::task::spawn_blocking(move || rank(unranked, &query, undecided))
        .await
        .map_err(|e| anyhow::anyhow!("ranking the queue: {e}"))?;
    let ranked = Arc::new(ranked);
    if !searching {
        cache.put(&view, queue_state, ranked.clone());
    }
    Ok(ranked)
}

/// Rank (and with `query`, match) what [`triaged`] read.
fn rank(unranked: Vec<Unranked>, query: &str, undecided: bool) -> Vec<Triaged> {
    let now = now_ms();
    let mut out = Vec::new();
    for u in unranked {
        let (subject, from) = subject_and_from(Some(&u.headers));
        let extract_text = triage::strings_of(u.item.extract.as_ref());
        if !triage::matches(query, &[&subject, &from, &extract_text, &u.text]) {
            continue;
        }
        let received = triage::date_header(&u.headers).unwrap_or(u.item.message.received_at);
        let priority = triage::priority(&Signals {
            extract: u.item.extract.as_ref(),
            declared: &u.declared,
            lookup: u.lookup.as_ref(),
            text: &u.text,
            waited_ms: now - received.min(u.item.message.received_at),
        });
        let labels = triage::declared_values_of(u.item.extract.as_ref(), &u.declared)
            .into_iter()
            .map(|(key, value)| Label { key, value })
            .collect();
        out.push(Triaged {
            item: u.item,
            subject,
            from,
            received,
            labels,
            declared: u.declared,
            priority,
        });
    }
    if undecided {
        out.sort_by_key(|t| (std::cmp::Reverse(t.priority.score), t.received));
    }
    out
}

fn queue_row(t: &Triaged) -> Tpl {
    context! {
        id => t.item.message.id,
        received_at => t.received,
        source_ref => &t.item.message.source_ref,
        subject => &t.subject,
        from => &t.from,
        labels => &t.labels,
        route => &t.item.route,
        actions => t.item.actions,
        status => t.item.status.as_str(),
        score => t.priority.score,
        reasons => &t.priority.reasons,
    }
}

/// The queue's notices, from a fixed list (never echoed from the URL).
fn queue_notice(key: &str) -> Option<&'static str> {
    Some(match key {
        "approved" => "Approved: its actions are in the outbox.",
        "rejected" => "Rejected.",
        "filed" => "Filed: nothing was sent.",
        _ => return None,
    })
}

pub async fn queue(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<QueueQuery>,
) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let store = store(&state)?;
    let status_name = q.status.unwrap_or_else(|| "to_review".into());
    let status = match status_name.as_str() {
        "all" => None,
        s => Some(ReviewStatus::parse(s).ok_or_else(|| {
            PageError::new(StatusCode::BAD_REQUEST, format!("unknown status {s:?}"))
        })?),
    };
    let label = q.label.filter(|l| !l.is_empty());
    let query = q.q.unwrap_or_default();
    let all = triaged(
        &state,
        store,
        QueueFilter {
            status,
            label: label
                .as_deref()
                .and_then(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string())),
            limit: 0,
        },
        &query,
    )
    .await?;
    // Only what the pipelines declared is offered, never a value a model made up.
    let mut options: BTreeMap<(String, String), ()> = BTreeMap::new();
    for t in all.iter() {
        for (name, values) in &t.declared {
            for v in values {
                options.insert((name.clone(), v.clone()), ());
            }
        }
    }
    let lanes = status == Some(ReviewStatus::ToReview);
    let shown = all.iter().take(200);
    let (items, nothing): (Vec<&Triaged>, Vec<&Triaged>) =
        shown.partition(|t| !lanes || t.item.actions > 0);
    let flash = q
        .flash
        .as_deref()
        .and_then(|t| state.review().flashes.get(reviewer.name(), t));
    let undo = match q.message {
        Some(id) if store.undoable(id).await? => Some(id),
        _ => None,
    };
    let failed = store.deliveries_with_status("failed").await?.len();
    Ok(page(
        StatusCode::OK,
        "queue.html",
        context! {
            user => user_ctx(&reviewer),
            csrf => &reviewer.session.csrf_token,
            notice => q.notice.as_deref().and_then(queue_notice).or(flash.as_ref().and_then(|f| f.notice.as_deref())),
            error => flash.as_ref().and_then(|f| f.error.clone()),
            decided => q.message,
            undo => undo,
            items => items.into_iter().map(queue_row).collect::<Vec<_>>(),
            nothing => nothing.into_iter().map(queue_row).collect::<Vec<_>>(),
            lanes => lanes,
            statuses => ReviewStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            status => status_name,
            labels => options.keys().map(|(k, v)| Label { key: k.clone(), value: v.clone() }).collect::<Vec<_>>(),
            label => label.unwrap_or_default(),
            q => query,
            scanned => triage::SCAN_LIMIT,
            failed => failed,
        },
    ))
}

#[derive(Deserialize, Default)]
pub struct FlashQuery {
    flash: Option<String>,
}

pub async fn deliveries(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<FlashQuery>,
) -> PageResult {
    let reviewer = match signed_in(&state, &headers).await {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let flash = q
        .flash
        .as_deref()
        .and_then(|t| state.review().flashes.get(reviewer.name(), t))
        .unwrap_or_default();
    let store = store(&state)?;
    let mut rows = store.deliveries_with_status("failed").await?;
    rows.extend(store.deliveries_with_status("gone").await?);
    let endpoints: Vec<Tpl> = store
        .gone_endpoints()
        .await?
        .into_iter()
        .map(|(url, reason, since)| context! { url => url, reason => reason, since => since })
        .collect();
    Ok(page(
        StatusCode::OK,
        "deliveries.html",
        context! {
            user => user_ctx(&reviewer),
            csrf => &reviewer.session.csrf_token,
            deliveries => rows,
            endpoints => endpoints,
            notice => flash.notice,
            error => flash.error,
        },
    ))
}
