//! verre-delivery: what leaves verre after a person approved it.
//!
//! - [`webhook`]: the [Standard Webhooks](https://www.standardwebhooks.com/) signature
//!   (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`),
//!   signing and verifying;
//! - [`retry`]: the retry schedule and how each answer of a target is read (success, retry
//!   later — honouring `Retry-After` —, endpoint gone);
//! - [`send`]: one delivery attempt over HTTP;
//! - [`mail`]: reply mail over SMTP (lettre; STARTTLS or TLS, plain only to loopback).
//!
//! The durable part — the outbox table that makes a crash between approval and sending
//! still send exactly once — lives in the store; this crate is what each attempt does.

pub mod mail;
pub mod retry;
pub mod send;
pub mod testing;
pub mod webhook;

pub use retry::{Attempt, Outcome, RETRY_SCHEDULE};
pub use send::{Delivery, Sender};
pub use webhook::{SignatureError, WebhookSecret};
