//! The egress policy: where data may be sent (verre-config's `[policy]`). Whatever sends
//! data out of verre checks it first: [`Policy::check`] for a backend,
//! [`Policy::check_webhook`] for a webhook, [`Policy::check_url`] for any other target.

pub use verre_config::policy::{Policy, PolicyError};
