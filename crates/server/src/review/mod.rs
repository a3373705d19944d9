//! Human review and delivery: the web UI at `/review` where a person approves or rejects
//! what the intake pipeline staged, and the worker that delivers what was approved.
//!
//! - [`settings`]: `[review]` and `[delivery]` of verre.toml (webhook targets under the
//!   egress policy, their `whsec_` secrets, the SMTP relay);
//! - [`auth`]: argon2 passwords, session cookies, CSRF tokens, the login rate limit;
//! - `pages`: the server-rendered pages and forms (strict CSP; one small keyboard script
//!   of our own, the pages work without it);
//! - [`triage`]: the queue's priority order with its reasons, search, declared labels;
//! - [`form`]: payloads edited as forms generated from their JSON Schema;
//! - [`flash`]: what a post tells the page it redirects to (post/redirect/get);
//! - `evidence`: where each extracted field came from, how sure the model was, corrections,
//!   why the route was taken; the original PDF (CSP `sandbox`) and the raw mail (admins);
//! - [`worker`]: the outbox delivery loop (signed webhooks, reply mail, retries).
//!
//! The durable state (users, sessions, drafts, decisions, the outbox) is in verre-store.

pub mod auth;
mod evidence;
pub mod flash;
pub mod form;
mod pages;
pub mod settings;
pub mod triage;
pub mod worker;

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::routing::{get, post};

pub use pages::{CSP, sanitize_mail_html, utc_time};
pub use settings::{DeliverySettings, ReviewSettings, WebhookTarget};

use crate::AppState;

/// Every route under `/review`, with the UI's security headers.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/review", get(pages::queue))
        .route("/review/", get(pages::queue))
        .route("/review/static/style.css", get(pages::style))
        .route("/review/static/keys.js", get(pages::keys_script))
        .route("/review/bulk", get(pages::bulk_confirm).post(pages::bulk))
        .route("/review/login", get(pages::login_form).post(pages::login))
        .route("/review/logout", post(pages::logout))
        .route("/review/deliveries", get(pages::deliveries))
        .route("/review/messages/{id}", get(pages::message))
        .route("/review/messages/{id}/draft", post(pages::save_draft))
        .route("/review/messages/{id}/confirm", get(pages::confirm))
        .route("/review/messages/{id}/approve", post(pages::approve))
        .route("/review/messages/{id}/file", post(pages::file))
        .route("/review/messages/{id}/undo", post(pages::undo))
        .route("/review/messages/{id}/reject", post(pages::reject))
        .route("/review/messages/{id}/rerun", post(pages::rerun))
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
        .route("/review/actions/{id}/payload", post(pages::save_payload))
        .route("/review/actions/{id}/fields", post(pages::save_fields))
        .route("/review/deliveries/{id}/retry", post(pages::retry_delivery))
        .route("/review/endpoints/enable", post(pages::enable_endpoint))
        .layer(middleware::map_response(pages::security_headers))
}
