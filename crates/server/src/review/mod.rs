//! Human review and delivery: the web UI at `/review` where a person approves or rejects
//! what the intake pipeline staged, and the worker that delivers what was approved.
//!
//! - [`settings`]: `[review]` and `[delivery]` of verre.toml (webhook targets under the
//!   egress policy, their `whsec_` secrets, the SMTP relay);
//! - [`auth`]: argon2 passwords, session cookies, CSRF tokens, the login rate limit;
//! - `pages`: what every page shares (templates, strict CSP, errors, CSRF-checked forms; one
//!   small keyboard script of our own, the pages work without it); `login`, `queue`,
//!   `message` and `decide`: the pages themselves and the decisions posted from them;
//! - [`triage`]: the queue's priority order with its reasons, search, declared labels;
//! - [`form`]: payloads edited as forms generated from their JSON Schema;
//! - [`flash`]: what a post tells the page it redirects to (post/redirect/get);
//! - `evidence`: where each extracted field came from, how sure the model was, corrections,
//!   why the route was taken; the original PDF (CSP `sandbox`) and the raw mail (admins);
//! - [`worker`]: the outbox delivery loop (signed webhooks, reply mail, retries).
//!
//! The durable state (users, sessions, drafts, decisions, the outbox) is in verre-store.

pub mod auth;
mod decide;
mod evidence;
pub mod flash;
pub mod form;
mod login;
mod message;
mod pages;
mod queue;
pub mod settings;
pub mod triage;
pub mod worker;

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::routing::{get, post};

pub use message::sanitize_mail_html;
pub use pages::{CSP, utc_time};
pub use settings::{DeliverySettings, ReviewSettings, WebhookTarget};

use crate::AppState;

/// Every route under `/review`, with the UI's security headers.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/review", get(queue::queue))
        .route("/review/", get(queue::queue))
        .route("/review/static/style.css", get(pages::style))
        .route("/review/static/keys.js", get(pages::keys_script))
        .route("/review/bulk", get(decide::bulk_confirm).post(decide::bulk))
        .route("/review/login", get(login::login_form).post(login::login))
        .route("/review/logout", post(login::logout))
        .route("/review/deliveries", get(queue::deliveries))
        .route("/review/messages/{id}", get(message::message))
        .route("/review/messages/{id}/draft", post(decide::save_draft))
        .route("/review/messages/{id}/confirm", get(decide::confirm))
        .route("/review/messages/{id}/approve", post(decide::approve))
        .route("/review/messages/{id}/file", post(decide::file))
        .route("/review/messages/{id}/undo", post(decide::undo))
        .route("/review/messages/{id}/reject", post(decide::reject))
        .route("/review/messages/{id}/rerun", post(decide::rerun))
        .route("/review/messages/{id}/evidence", get(evidence::evidence))
        .route(
            "/review/messages/{id}/fields/{field}",
            post(evidence::correct_field),
        )
        .route(
            "/review/messages/{id}/attachments/{idx}",
            get(evidence::attachment),
        )
        .route("/review/messages/{id}/raw", get(evidence::raw_mail))
        .route("/review/actions/{id}/payload", post(decide::save_payload))
        .route("/review/actions/{id}/fields", post(decide::save_fields))
        .route(
            "/review/deliveries/{id}/retry",
            post(decide::retry_delivery),
        )
        .route("/review/endpoints/enable", post(decide::enable_endpoint))
        .layer(middleware::map_response(pages::security_headers))
}
