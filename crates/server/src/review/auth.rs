//! Reviewer authentication: argon2 passwords, session cookies (HttpOnly, SameSite=Strict,
//! Secure behind TLS) holding a random token the store keeps only hashed, a CSRF token
//! per session checked on every form, and login throttling: a failure is reserved before
//! the password is checked, per user name and client address (an IPv6 /64), with a
//! backoff per account, and only a few password checks run at once.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use verre_store::review::Session;

use super::settings::ReviewSettings;

pub const SESSION_COOKIE: &str = "verre_session";
/// Before login there is no session: the login form's CSRF token is double-submitted
/// (cookie and field must match).
pub const LOGIN_CSRF_COOKIE: &str = "verre_login_csrf";

/// A PHC string (`$argon2id$v=19$...`) for a new password, with a random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    if password.chars().count() < 8 {
        anyhow::bail!("the password is too short: use at least 8 characters");
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// Whether `password` matches the stored PHC string. Constant-time in the password.
pub fn verify_password(stored: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Spent on unknown user names, so their answer takes as long as a wrong password.
pub fn dummy_verify(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let stored = DUMMY.get_or_init(|| hash_password("not a real password").unwrap_or_default());
    let _ = verify_password(stored, password);
}

/// 32 random bytes, hex: session tokens and CSRF tokens.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Equal without an early exit on the first differing byte.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A cookie's value from the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether cookies get `Secure`: as configured, else when the proxy says the client
/// came over TLS.
pub fn secure(settings: &ReviewSettings, headers: &HeaderMap) -> bool {
    settings.secure_cookies.unwrap_or_else(|| {
        headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    })
}

/// The name a cookie goes by: over TLS with the `__Host-` prefix, which a browser accepts
/// only from this exact origin over TLS (no `Domain`, `Path=/`), so a sibling subdomain or
/// a plain-HTTP answer cannot plant or shadow it.
pub fn cookie_name(name: &str, secure: bool) -> String {
    if secure {
        format!("__Host-{name}")
    } else {
        name.to_string()
    }
}

/// A cookie of the review UI from the request, under the name [`cookie_name`] gives it.
pub fn review_cookie<'a>(
    settings: &ReviewSettings,
    headers: &'a HeaderMap,
    name: &str,
) -> Option<&'a str> {
    cookie(headers, &cookie_name(name, secure(settings, headers)))
}

/// A `Set-Cookie` value for the review UI; `max_age` 0 deletes it. Over TLS: `__Host-`,
/// `Secure` and `Path=/` (which the prefix requires); otherwise scoped to `/review`.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64, secure: bool) -> String {
    format!(
        "{}={value}; Path={}; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{}",
        cookie_name(name, secure),
        if secure { "/" } else { "/review" },
        if secure { "; Secure" } else { "" }
    )
}

/// The client's address: the TCP peer (a proxy's address when there is one in front;
/// `X-Forwarded-For` is not trusted, as anyone can send it).
pub fn client_ip(connect: Option<&ConnectInfo<SocketAddr>>) -> String {
    connect.map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string())
}

/// Who the login rate limit counts failures against: an IPv4 address, or the /64 of an
/// IPv6 one (one host usually holds a whole /64, and picks any address in it).
pub fn client_key(connect: Option<&ConnectInfo<SocketAddr>>) -> String {
    match connect.map(|c| c.0.ip()) {
        None => "unknown".to_string(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", Ipv6Addr::from(prefix))
            }
        },
    }
}

/// The password checks running at once, bounded: each argon2 check takes 19 MiB and tens
/// of milliseconds of a core, so a flood of logins must not start one per request.
#[derive(Debug)]
pub struct PasswordChecks {
    permits: Arc<Semaphore>,
    started: AtomicU64,
}

/// Password checks allowed at once by default.
pub const PASSWORD_CHECKS_AT_ONCE: usize = 2;

impl Default for PasswordChecks {
    fn default() -> Self {
        Self::new(PASSWORD_CHECKS_AT_ONCE)
    }
}

impl PasswordChecks {
    pub fn new(at_once: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(at_once.max(1))),
            started: AtomicU64::new(0),
        }
    }

    /// A slot for one check, or None when all are busy (the caller answers 429 at once).
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// How many checks were started since this was made.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Check `password` against `stored` (a dummy hash for an unknown user, so both take
    /// the same time), off the async threads, holding `slot` until done.
    pub async fn check(
        &self,
        slot: OwnedSemaphorePermit,
        stored: Option<String>,
        password: String,
    ) -> bool {
        self.started.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            match stored {
                Some(h) => verify_password(&h, &password),
                None => {
                    dummy_verify(&password);
                    false
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}

/// The signed-in reviewer of a request.
#[derive(Debug, Clone)]
pub struct Reviewer {
    pub session: Session,
}

impl Reviewer {
    pub fn name(&self) -> &str {
        &self.session.user
    }

    pub fn is_admin(&self) -> bool {
        self.session.role == "admin"
    }

    /// Whether a submitted form carries this session's CSRF token.
    pub fn csrf_ok(&self, submitted: &str) -> bool {
        same_token(&self.session.csrf_token, submitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsf"));
        assert!(!verify_password("garbage", "correct horse"));
        assert!(hash_password("short").is_err());
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let key = |a: &str| client_key(Some(&ConnectInfo(a.parse::<SocketAddr>().unwrap())));
        assert_eq!(key("192.0.2.7:5000"), "192.0.2.7");
        assert_eq!(key("[::ffff:192.0.2.7]:5000"), "192.0.2.7");
        assert_eq!(key("[2001:db8:1:2::1]:5000"), "2001:db8:1:2::/64");
        assert_eq!(
            key("[2001:db8:1:2:ffff:ffff:ffff:ffff]:1"),
            "2001:db8:1:2::/64"
        );
        assert_ne!(key("[2001:db8:1:3::1]:1"), key("[2001:db8:1:2::1]:1"));
        assert_eq!(client_key(None), "unknown");
    }

    #[test]
    fn tokens_and_cookies() {
        let t = random_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, random_token());
        assert!(same_token(&t, &t.clone()));
        assert!(!same_token(&t, &random_token()));
        assert!(!same_token("", ""));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; verre_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        let c = set_cookie(SESSION_COOKIE, "abc", 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("; Secure"));
        assert!(c.starts_with("__Host-verre_session=abc; Path=/;"), "{c}");
        let c = set_cookie(SESSION_COOKIE, "abc", 60, false);
        assert!(c.starts_with("verre_session=abc; Path=/review;") && !c.contains("Secure"));
    }
}
