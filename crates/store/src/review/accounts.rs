//! Reviewer accounts, their sessions (stored as the SHA-256 of the cookie's token only) and
//! the failed-login throttle.

use anyhow::{Result, ensure};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::sha256_hex;
use crate::audit::{AuditEvent, append_in};
use crate::{Store, now_ms};

/// What a reviewer may do: `reviewer` decides on messages; `admin` also re-enables
/// endpoints and retries failed deliveries.
pub const ROLES: [&str; 2] = ["reviewer", "admin"];

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub name: String,
    pub role: String,
    #[serde(skip)]
    pub password_hash: String,
    pub created_at: i64,
}

/// A signed-in reviewer, found by the hash of the session cookie.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub user: String,
    pub role: String,
    pub csrf_token: String,
    pub expires_at: i64,
}

/// How failed logins are throttled (see [`Store::reserve_login_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failed logins allowed per user name and client (an address, or an IPv6 /64).
    pub per_client: i64,
    /// Failed logins per user name, from anywhere, before each further attempt must wait.
    pub per_account: i64,
    /// How long a failure counts.
    pub window_ms: i64,
    /// The longest wait the account's backoff imposes.
    pub max_backoff_ms: i64,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_client: 5,
            per_account: 10,
            window_ms: 15 * 60 * 1000,
            max_backoff_ms: 15 * 60 * 1000,
        }
    }
}

/// Whether a login attempt may check its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginReservation {
    /// A failure is recorded in advance; a right password clears it.
    Reserved,
    Refused {
        retry_after_ms: i64,
        reason: LoginRefusal,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Too many failures for this user name from this client.
    Client,
    /// The account is backing off after failures from anywhere.
    Account,
}

/// The account's wait after `excess` failures beyond the free ones: 1 s, doubling.
fn backoff_ms(excess: i64, max_ms: i64) -> i64 {
    1000i64
        .checked_shl(excess.clamp(0, 40) as u32)
        .unwrap_or(max_ms)
        .min(max_ms)
}

/// The stored form of a session token.
pub fn session_token_hash(token: &str) -> String {
    sha256_hex(token)
}

fn user_row(r: &sqlx::any::AnyRow) -> Result<User> {
    Ok(User {
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        password_hash: r.try_get("password_hash")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Store {
    /// Add a reviewer. `password_hash` is a PHC string (argon2). Errors if the name is taken.
    pub async fn add_user(&self, name: &str, password_hash: &str, role: &str) -> Result<()> {
        ensure!(
            ROLES.contains(&role),
            "role {role:?}: expected one of {ROLES:?}"
        );
        ensure!(
            !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)),
            "user name {name:?}: use 1 to 64 letters, digits, `.`, `_`, `-` or `@`"
        );
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (name, password_hash, role, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(password_hash)
        .bind(role)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        ensure!(
            inserted == 1,
            "user {name:?} exists already (remove it first to replace it)"
        );
        append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: "cli",
                action: "users.add",
                subject: &format!("user:{name}"),
                detail: json!({"role": role}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Remove a reviewer and end their sessions; false if there was no such user.
    pub async fn remove_user(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM sessions WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: "cli",
                action: "users.remove",
                subject: &format!("user:{name}"),
                detail: Value::Null,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        sqlx::query("SELECT name, password_hash, role, created_at FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_row)
            .collect()
    }

    pub async fn user(&self, name: &str) -> Result<Option<User>> {
        sqlx::query("SELECT name, password_hash, role, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_row)
            .transpose()
    }

    /// Start a session for `user`: `token` is the cookie's secret (stored hashed).
    pub async fn create_session(
        &self,
        token: &str,
        user: &str,
        csrf_token: &str,
        expires_at: i64,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_name, csrf_token, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(session_token_hash(token))
        .bind(user)
        .bind(csrf_token)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live session of a cookie token, if any.
    pub async fn session(&self, token: &str) -> Result<Option<Session>> {
        let row = sqlx::query(
            "SELECT s.user_name, u.role, s.csrf_token, s.expires_at
             FROM sessions s JOIN users u ON u.name = s.user_name
             WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(session_token_hash(token))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Session {
                user: r.try_get("user_name")?,
                role: r.try_get("role")?,
                csrf_token: r.try_get("csrf_token")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// The live session of a cookie token that was used within `idle_ms` of `now`, marked
    /// used now; None when there is none, it expired, or it sat idle too long (then it is
    /// ended).
    pub async fn use_session(
        &self,
        token: &str,
        idle_ms: i64,
        now: i64,
    ) -> Result<Option<Session>> {
        let hash = session_token_hash(token);
        let used = sqlx::query(
            "UPDATE sessions SET last_seen_at = $2
             WHERE token_hash = $1 AND expires_at > $2 AND COALESCE(last_seen_at, created_at) >= $3",
        )
        .bind(&hash)
        .bind(now)
        .bind(now - idle_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if used == 0 {
            sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
                .bind(&hash)
                .execute(&self.pool)
                .await?;
            return Ok(None);
        }
        self.session(token).await
    }

    pub async fn end_session(&self, token: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(session_token_hash(token))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Failed logins for this user name from this address since `since` (ms).
    pub async fn login_failures(&self, user: &str, ip: &str, since: i64) -> Result<i64> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n FROM login_failures WHERE user_name = $1 AND ip = $2 AND at >= $3",
        )
        .bind(user)
        .bind(ip)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(r.try_get("n")?)
    }

    /// Record a failed login (and forget those older than `keep_since`).
    pub async fn record_login_failure(&self, user: &str, ip: &str, keep_since: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM login_failures WHERE at < $1")
            .bind(keep_since)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO login_failures (user_name, ip, at) VALUES ($1, $2, $3)")
            .bind(user)
            .bind(ip)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Reserve a failed login for `user` from `client` before the password is checked: the
    /// failure is written first, so attempts running in parallel each see the others, and
    /// the limits below hold however many arrive at once. A right password then clears the
    /// client's failures ([`Store::clear_login_failures`]); a wrong one leaves the
    /// reservation as the failure. Refused without a reservation when:
    /// - `user` failed `limits.per_client` times from `client` within the window, or
    /// - `user` failed `limits.per_account` times or more from anywhere within the window
    ///   and the account's backoff (1 s, doubling per further failure, at most
    ///   `limits.max_backoff_ms`) has not passed since its last failure.
    pub async fn reserve_login_failure(
        &self,
        user: &str,
        client: &str,
        now: i64,
        limits: &LoginLimits,
    ) -> Result<LoginReservation> {
        let since = now - limits.window_ms;
        let mut tx = self.pool.begin().await?;
        if self.backend == crate::Backend::Postgres {
            // Serialises the reservations of one user name across servers sharing the database.
            let key = i64::from_be_bytes(Sha256::digest(user.as_bytes())[..8].try_into()?);
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        // A write first: on SQLite it takes the write lock, so the counts below are current.
        sqlx::query("DELETE FROM login_failures WHERE at < $1")
            .bind(since)
            .execute(&mut *tx)
            .await?;
        let from_client = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(at) AS first FROM login_failures
             WHERE user_name = $1 AND ip = $2 AND at >= $3",
        )
        .bind(user)
        .bind(client)
        .bind(since)
        .fetch_one(&mut *tx)
        .await?;
        let n: i64 = from_client.try_get("n")?;
        if n >= limits.per_client {
            let first: Option<i64> = from_client.try_get("first")?;
            return Ok(LoginReservation::Refused {
                retry_after_ms: (first.unwrap_or(now) + limits.window_ms - now).max(1000),
                reason: LoginRefusal::Client,
            });
        }
        let account = sqlx::query(
            "SELECT COUNT(*) AS n, MAX(at) AS last FROM login_failures
             WHERE user_name = $1 AND at >= $2",
        )
        .bind(user)
        .bind(since)
        .fetch_one(&mut *tx)
        .await?;
        let n: i64 = account.try_get("n")?;
        if n >= limits.per_account {
            let last: Option<i64> = account.try_get("last")?;
            let wait = backoff_ms(n - limits.per_account, limits.max_backoff_ms);
            let ready_at = last.unwrap_or(now) + wait;
            if now < ready_at {
                return Ok(LoginReservation::Refused {
                    retry_after_ms: ready_at - now,
                    reason: LoginRefusal::Account,
                });
            }
        }
        sqlx::query("INSERT INTO login_failures (user_name, ip, at) VALUES ($1, $2, $3)")
            .bind(user)
            .bind(client)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(LoginReservation::Reserved)
    }

    pub async fn clear_login_failures(&self, user: &str, ip: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE user_name = $1 AND ip = $2")
            .bind(user)
            .bind(ip)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
