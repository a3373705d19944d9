//! What a form post has to tell the page it redirects to (post/redirect/get): an error with
//! the input that caused it, or the outcome of a bulk decision. Kept in memory for a few
//! minutes under a random token that only its reviewer can redeem, so a reload of the page
//! after a post never posts again and never echoes text from the URL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a message waits for its page.
const TTL: Duration = Duration::from_secs(300);
/// The most messages kept; the oldest are dropped first.
const CAPACITY: usize = 1024;

/// One message for the next page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flash {
    pub notice: Option<String>,
    pub error: Option<String>,
    /// The action whose edit was refused, with the fields as the reviewer submitted them.
    pub action: Option<(i64, Vec<(String, String)>)>,
}

#[derive(Debug, Default)]
pub struct Flashes {
    entries: Mutex<HashMap<String, (String, Instant, Flash)>>,
}

impl Flashes {
    /// Keep `flash` for `user`; returns the token to put in the redirect's URL.
    pub fn put(&self, user: &str, flash: Flash) -> String {
        let token = super::auth::random_token();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        entries.retain(|_, (_, at, _)| now.duration_since(*at) < TTL);
        if entries.len() >= CAPACITY
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (_, at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(token.clone(), (user.to_string(), now, flash));
        token
    }

    /// The flash under `token` if `user` put it and it is fresh; it stays for a reload.
    pub fn get(&self, user: &str, token: &str) -> Option<Flash> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (owner, at, flash) = entries.get(token)?;
        (owner == user && at.elapsed() < TTL).then(|| flash.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flash_is_for_its_reviewer_only_and_survives_a_reload() {
        let f = Flashes::default();
        let t = f.put(
            "alice",
            Flash {
                error: Some("bad".into()),
                ..Default::default()
            },
        );
        assert_eq!(f.get("alice", &t).unwrap().error.as_deref(), Some("bad"));
        assert_eq!(f.get("alice", &t).unwrap().error.as_deref(), Some("bad"));
        assert!(f.get("bob", &t).is_none());
        assert!(f.get("alice", "guessed").is_none());
    }
}
