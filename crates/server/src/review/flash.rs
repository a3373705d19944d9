//! What a form post has to tell the page it redirects to (post/redirect/get): an error with
//! the input that caused it, or the outcome of a bulk decision. Kept in memory for a few
//! minutes under a random token that only its reviewer can redeem, so a reload of the page
//! after a post never posts again and never echoes text from the URL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a message waits for its page.
const TTL: Duration = Duration::from_secs(300);
/// The most messages kept; the oldest are dropped first.
const CAPACITY: usize = 1024;
/// The most messages kept per reviewer; their oldest are dropped first.
const PER_USER: usize = 32;
/// The most bytes of submitted field values kept with one message; beyond it only the
/// error is kept (the reviewer types the edit again) and the values are dropped.
const MAX_FIELDS: usize = 64 * 1024;
/// The most bytes of a notice or an error kept (an error may quote what was submitted).
const MAX_TEXT: usize = 4 * 1024;

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
    entries: Mutex<HashMap<String, Kept>>,
    /// Orders the entries put in the same instant.
    next: AtomicU64,
}

#[derive(Debug)]
struct Kept {
    owner: String,
    at: Instant,
    seq: u64,
    flash: Flash,
}

impl Flash {
    /// This message within [`MAX_FIELDS`] and [`MAX_TEXT`].
    fn bounded(mut self) -> Self {
        for text in [&mut self.notice, &mut self.error].into_iter().flatten() {
            if text.len() > MAX_TEXT {
                let mut end = MAX_TEXT;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push('…');
            }
        }
        if let Some((_, fields)) = &mut self.action {
            let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
            if size > MAX_FIELDS {
                fields.clear();
            }
        }
        self
    }
}

impl Flashes {
    /// Keep `flash` for `user`; returns the token to put in the redirect's URL.
    pub fn put(&self, user: &str, flash: Flash) -> String {
        let token = super::auth::random_token();
        let flash = flash.bounded();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        entries.retain(|_, kept| now.duration_since(kept.at) < TTL);
        let oldest = |entries: &HashMap<String, Kept>, of: Option<&str>| {
            entries
                .iter()
                .filter(|(_, kept)| of.is_none_or(|u| kept.owner == u))
                .min_by_key(|(_, kept)| kept.seq)
                .map(|(k, _)| k.clone())
        };
        let users = entries.values().filter(|kept| kept.owner == user).count();
        if users >= PER_USER
            && let Some(k) = oldest(&entries, Some(user))
        {
            entries.remove(&k);
        }
        if entries.len() >= CAPACITY
            && let Some(k) = oldest(&entries, None)
        {
            entries.remove(&k);
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let kept = Kept {
            owner: user.to_string(),
            at: now,
            seq,
            flash,
        };
        entries.insert(token.clone(), kept);
        token
    }

    /// The flash under `token` if `user` put it and it is fresh; it stays for a reload.
    pub fn get(&self, user: &str, token: &str) -> Option<Flash> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let kept = entries.get(token)?;
        (kept.owner == user && kept.at.elapsed() < TTL).then(|| kept.flash.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_form_keeps_only_its_error_and_a_reviewer_keeps_few_flashes() {
        let f = Flashes::default();
        let huge = "x".repeat(2 << 20);
        let t = f.put(
            "alice",
            Flash {
                error: Some(format!("body: {huge:?} is not a number")),
                action: Some((7, vec![("p.body".into(), huge.clone())])),
                ..Default::default()
            },
        );
        let kept = f.get("alice", &t).unwrap();
        let error = kept.error.unwrap();
        assert!(
            error.starts_with("body: \"xxx") && error.len() <= MAX_TEXT + 8,
            "{}",
            error.len()
        );
        assert_eq!(kept.action, Some((7, vec![])), "the values are dropped");
        // A small form is kept whole.
        let small = Flash {
            error: Some("bad".into()),
            action: Some((7, vec![("p.body".into(), "short".into())])),
            ..Default::default()
        };
        let t = f.put("alice", small.clone());
        assert_eq!(f.get("alice", &t), Some(small));

        // Each reviewer keeps their latest few; others' stay.
        let bob = f.put("bob", Flash::default());
        let tokens: Vec<String> = (0..PER_USER + 5)
            .map(|_| f.put("alice", Flash::default()))
            .collect();
        assert!(tokens[..5].iter().all(|t| f.get("alice", t).is_none()));
        assert!(tokens[5..].iter().all(|t| f.get("alice", t).is_some()));
        assert!(f.get("bob", &bob).is_some());
    }

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
