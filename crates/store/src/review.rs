//! Human review: reviewer accounts and sessions, failed logins, draft versions, and the
//! decisions on messages.
//!
//! A decision is written with everything it causes in one transaction: approving records
//! the decision, marks the staged actions approved, puts one outbox row per action (see
//! [`crate::outbox`]) and appends to the audit log — so a crash between approval and
//! sending still sends, once. Passwords arrive here already hashed (argon2, by the server);
//! session tokens are stored as their SHA-256 only.

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{Any, Row, Transaction};

use crate::audit::{AuditEvent, append_in};
use crate::crypto::{self, Column, Keyring};
use crate::{ActionRow, MessageRow, Store, now_ms};

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

#[derive(Debug, Clone, Serialize)]
pub struct DraftVersion {
    pub version: i64,
    pub body: String,
    /// `model` for the drafting model's text, else `user:NAME`.
    pub author: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// `approved`, `rejected` or `filed`.
    pub decision: String,
    pub reviewer: String,
    pub reason: Option<String>,
    pub decided_at: i64,
}

/// Where a message stands for review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// The pipeline is still working on it.
    InProgress,
    Quarantined,
    /// Processed and not yet decided.
    ToReview,
    Approved,
    Rejected,
    /// Decided with nothing to send: the pipeline staged no action (the "nothing to send"
    /// lane), and a reviewer filed it.
    Filed,
}

impl ReviewStatus {
    pub const ALL: [ReviewStatus; 6] = [
        ReviewStatus::ToReview,
        ReviewStatus::Approved,
        ReviewStatus::Rejected,
        ReviewStatus::Filed,
        ReviewStatus::InProgress,
        ReviewStatus::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::InProgress => "in_progress",
            ReviewStatus::Quarantined => "quarantined",
            ReviewStatus::ToReview => "to_review",
            ReviewStatus::Approved => "approved",
            ReviewStatus::Rejected => "rejected",
            ReviewStatus::Filed => "filed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn of(message_status: &str, decision: Option<&str>) -> Self {
        match (decision, message_status) {
            (Some("approved"), _) => ReviewStatus::Approved,
            (Some("filed"), _) => ReviewStatus::Filed,
            (Some(_), _) => ReviewStatus::Rejected,
            (None, "processed") => ReviewStatus::ToReview,
            (None, "quarantined") => ReviewStatus::Quarantined,
            (None, _) => ReviewStatus::InProgress,
        }
    }

    /// The SQL condition selecting this status (over `m` messages, `d` decisions).
    fn condition(self) -> &'static str {
        match self {
            ReviewStatus::InProgress => "d.decision IS NULL AND m.status = 'pending'",
            ReviewStatus::Quarantined => "d.decision IS NULL AND m.status = 'quarantined'",
            ReviewStatus::ToReview => "d.decision IS NULL AND m.status = 'processed'",
            ReviewStatus::Approved => "d.decision = 'approved'",
            ReviewStatus::Rejected => "d.decision = 'rejected'",
            ReviewStatus::Filed => "d.decision = 'filed'",
        }
    }
}

/// Which messages the review queue lists.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    /// None: every status.
    pub status: Option<ReviewStatus>,
    /// An extraction label and the value it must have, e.g. (`threat_level`, `high`).
    pub label: Option<(String, String)>,
    pub limit: usize,
}

/// One line of the review queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueItem {
    pub message: MessageRow,
    pub status: ReviewStatus,
    /// The validated extraction, when the stage ran.
    pub extract: Option<Value>,
    /// The route taken.
    pub route: Option<String>,
    pub actions: i64,
    pub decision: Option<Decision>,
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

/// What approving a message did.
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    /// (action id, outbox id, webhook id) per action released.
    pub released: Vec<(i64, i64, String)>,
    pub audit_seq: i64,
    /// Set when this approval was recorded but the message waits for a second approver
    /// (why); nothing was decided or released.
    pub awaiting: Option<String>,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// What a confirmation showed, as a digest: each staged action's id, target and payload,
/// in id order. An approval carrying it is refused when what is staged differs
/// ([`ChangedSinceConfirmed`]), so nothing unseen is sent.
pub fn staged_digest(actions: &[ActionRow]) -> String {
    let mut h = Sha256::new();
    for a in actions.iter().filter(|a| a.status == "staged") {
        // Length-prefixed, so no two different lists hash alike.
        for field in [a.id.to_string().as_str(), &a.target, &a.payload] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// An approval refused because the staged actions changed after the reviewer confirmed
/// them (another reviewer edited a reply, a stage ran again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedSinceConfirmed {
    pub message_id: i64,
}

impl std::fmt::Display for ChangedSinceConfirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "message {}: what it would send changed since you confirmed; look again",
            self.message_id
        )
    }
}

impl std::error::Error for ChangedSinceConfirmed {}

/// The staged actions of a message as a transaction sees them.
async fn staged_in(
    tx: &mut Transaction<'_, Any>,
    keys: Option<&Keyring>,
    message_id: i64,
) -> Result<Vec<ActionRow>> {
    sqlx::query(
        "SELECT id, name, kind, target, payload, key_id, status FROM actions
         WHERE message_id = $1 AND status = 'staged' ORDER BY id",
    )
    .bind(message_id)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| crate::action_row(keys, r))
    .collect()
}

/// Refuse when `confirmed` is given and differs from the digest of `staged`.
fn ensure_confirmed(message_id: i64, staged: &[ActionRow], confirmed: Option<&str>) -> Result<()> {
    match confirmed {
        Some(d) if d != staged_digest(staged) => Err(ChangedSinceConfirmed { message_id }.into()),
        _ => Ok(()),
    }
}

/// The stored form of a session token.
pub fn session_token_hash(token: &str) -> String {
    sha256_hex(token)
}

/// The message's body text as its reply action will carry it after the draft changed from
/// `old` to `new`: the old draft replaced where the reply quotes it, else the new draft.
fn body_with_draft(body: &str, old: &str, new: &str) -> String {
    if !old.is_empty() && body.contains(old) {
        body.replace(old, new)
    } else {
        new.to_string()
    }
}

impl Store {
    // --- accounts -------------------------------------------------------------------

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

    // --- the queue ------------------------------------------------------------------

    /// A fingerprint of what the queue's ranking reads, from cheap aggregates: messages
    /// (ingested, their status), jobs (a stage ran or was re-run), stage results, actions,
    /// decisions (made or undone). Equal fingerprints: the ranking computed for one still
    /// holds, but for the time waited.
    pub async fn queue_state(&self) -> Result<Vec<i64>> {
        let row = sqlx::query(
            "SELECT
               (SELECT COUNT(*) FROM messages) AS messages,
               (SELECT COALESCE(MAX(id), 0) FROM messages) AS last_message,
               (SELECT COALESCE(MAX(finished_at), 0) FROM messages) AS finished,
               (SELECT COUNT(*) FROM messages WHERE status = 'processed') AS processed,
               (SELECT COUNT(*) FROM jobs) AS jobs,
               (SELECT COALESCE(MAX(updated_at), 0) FROM jobs) AS jobs_at,
               (SELECT COUNT(*) FROM stage_results) AS results,
               (SELECT COALESCE(MAX(created_at), 0) FROM stage_results) AS results_at,
               (SELECT COUNT(*) FROM actions WHERE status = 'staged') AS staged,
               (SELECT COUNT(*) FROM decisions) AS decisions,
               (SELECT COALESCE(MAX(decided_at), 0) FROM decisions) AS decided_at",
        )
        .fetch_one(&self.pool)
        .await?;
        [
            "messages",
            "last_message",
            "finished",
            "processed",
            "jobs",
            "jobs_at",
            "results",
            "results_at",
            "staged",
            "decisions",
            "decided_at",
        ]
        .iter()
        .map(|c| Ok(row.try_get::<i64, _>(*c)?))
        .collect()
    }

    /// A message's parts as the triage reads them: (kind, text), in order; the per-page
    /// texts of attachments (`pages`) are neither read nor decrypted.
    pub async fn triage_parts(&self, message_id: i64) -> Result<Vec<(String, Option<String>)>> {
        sqlx::query("SELECT kind, text, key_id FROM parts WHERE message_id = $1 ORDER BY idx")
            .bind(message_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                let key_id: Option<String> = r.try_get("key_id")?;
                let text = crypto::open_text(
                    self.keys(),
                    key_id.as_deref(),
                    Column::PartText,
                    r.try_get("text")?,
                )?;
                Ok((r.try_get("kind")?, text))
            })
            .collect()
    }

    /// Messages for review, newest first, filtered by review status and extraction label.
    pub async fn review_queue(&self, filter: &QueueFilter) -> Result<Vec<QueueItem>> {
        let condition = filter.status.map_or("1 = 1", ReviewStatus::condition);
        // A fixed condition from the enum above; no value is formatted into the SQL.
        let sql = format!(
            "SELECT m.id, m.content_hash, m.source, m.source_ref, m.size, m.status, m.received_at,
                    m.finished_at, d.decision, d.reviewer, d.reason, d.key_id AS decision_key_id, d.decided_at,
                    e.output AS extract, e.key_id AS extract_key, r.output AS route,
                    r.key_id AS route_key,
                    (SELECT COUNT(*) FROM actions a WHERE a.message_id = m.id) AS n_actions
             FROM messages m
             LEFT JOIN decisions d ON d.message_id = m.id
             LEFT JOIN stage_results e ON e.message_id = m.id AND e.stage = 'extract'
             LEFT JOIN stage_results r ON r.message_id = m.id AND r.stage = 'route'
             WHERE {condition}
             ORDER BY m.id DESC"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .context("reading the review queue")?;
        let mut items = Vec::new();
        for r in &rows {
            let extract = self.open_stage_output(r, "extract", "extract_key")?;
            if let Some((label, value)) = &filter.label {
                let found = extract
                    .as_ref()
                    .and_then(|e| e.get(label))
                    .is_some_and(|v| v.as_str().map_or(v.to_string(), str::to_string) == *value);
                if !found {
                    continue;
                }
            }
            let route = self
                .open_stage_output(r, "route", "route_key")?
                .and_then(|v| v["route"].as_str().map(str::to_string));
            let message = crate::message_row(r)?;
            let decision = decision_from(self.keys(), r)?;
            items.push(QueueItem {
                status: ReviewStatus::of(
                    &message.status,
                    decision.as_ref().map(|d| d.decision.as_str()),
                ),
                message,
                extract,
                route,
                actions: r.try_get("n_actions")?,
                decision,
            });
            if filter.limit > 0 && items.len() >= filter.limit {
                break;
            }
        }
        Ok(items)
    }

    pub async fn decision(&self, message_id: i64) -> Result<Option<Decision>> {
        let row = sqlx::query(
            "SELECT decision, reviewer, reason, key_id AS decision_key_id, decided_at
             FROM decisions WHERE message_id = $1",
        )
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => decision_from(self.keys(), &r),
            None => Ok(None),
        }
    }

    pub async fn review_status(&self, message_id: i64) -> Result<Option<ReviewStatus>> {
        let Some(m) = self.message(message_id).await? else {
            return Ok(None);
        };
        let d = self.decision(message_id).await?;
        Ok(Some(ReviewStatus::of(
            &m.status,
            d.as_ref().map(|d| d.decision.as_str()),
        )))
    }

    // --- drafts ---------------------------------------------------------------------

    /// The draft's versions, oldest first. The drafting model's text is version 1 once a
    /// person saved an edit; before that it is the only version (0, not yet stored).
    pub async fn drafts(&self, message_id: i64) -> Result<Vec<DraftVersion>> {
        let rows = sqlx::query(
            "SELECT version, body, key_id, author, created_at FROM drafts WHERE message_id = $1 ORDER BY version",
        )
        .bind(message_id)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(self.model_draft(message_id).await?.into_iter().collect());
        }
        rows.iter()
            .map(|r| {
                Ok(DraftVersion {
                    version: r.try_get("version")?,
                    body: draft_body(self.keys(), r)?,
                    author: r.try_get("author")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// A stage output read from `column` of a joined row (None when the stage has not run),
    /// decrypted with the key `key_column` names when encryption at rest is on.
    fn open_stage_output(
        &self,
        r: &sqlx::any::AnyRow,
        column: &str,
        key_column: &str,
    ) -> Result<Option<Value>> {
        let key_id: Option<String> = r.try_get(key_column)?;
        let text: Option<String> = r.try_get(column)?;
        let text = crate::crypto::open_text(
            self.keys(),
            key_id.as_deref(),
            crate::crypto::Column::StageOutput,
            text,
        )?;
        text.map(|t| serde_json::from_str(&t).context("a stage output is not JSON"))
            .transpose()
    }

    async fn model_draft(&self, message_id: i64) -> Result<Option<DraftVersion>> {
        let row = sqlx::query(
            "SELECT output, key_id, created_at FROM stage_results WHERE message_id = $1 AND stage = 'draft'",
        )
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let output = self
            .open_stage_output(&r, "output", "key_id")?
            .unwrap_or_default();
        Ok(output["draft"].as_str().map(|text| DraftVersion {
            version: 0,
            body: text.to_string(),
            author: "model".into(),
            created_at: r.try_get("created_at").unwrap_or(0),
        }))
    }

    /// Save a new version of the draft (a person's edit), while the message is undecided.
    /// Staged reply actions follow the draft: where a reply's body quotes the previous
    /// draft, that text is replaced by the new one; otherwise the body becomes the draft.
    /// Returns the new version number.
    pub async fn save_draft(&self, message_id: i64, body: &str, user: &str) -> Result<i64> {
        let model = self.model_draft(message_id).await?;
        let mut tx = self.pool.begin().await?;
        // First statement is a write: it takes SQLite's lock before anything is read.
        undecided_guard(&mut tx, message_id).await?;
        // What was approved so far is not what will be sent any more.
        sqlx::query("DELETE FROM approvals WHERE message_id = $1")
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        let last = sqlx::query(
            "SELECT version, body, key_id FROM drafts WHERE message_id = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(message_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (mut version, previous) = match last {
            Some(r) => (
                r.try_get::<i64, _>("version")?,
                draft_body(self.keys(), &r)?,
            ),
            None => (
                0,
                model.as_ref().map(|m| m.body.clone()).unwrap_or_default(),
            ),
        };
        if version == 0
            && let Some(m) = &model
        {
            version = 1;
            insert_draft(
                &mut tx,
                self.keys(),
                message_id,
                1,
                &m.body,
                "model",
                m.created_at,
            )
            .await?;
        }
        version += 1;
        let author = format!("user:{user}");
        insert_draft(
            &mut tx,
            self.keys(),
            message_id,
            version,
            body,
            &author,
            now_ms(),
        )
        .await?;
        let replies = sqlx::query(
            "SELECT id, payload, key_id FROM actions WHERE message_id = $1 AND kind = 'reply' AND status = 'staged'",
        )
        .bind(message_id)
        .fetch_all(&mut *tx)
        .await?;
        for r in replies {
            let id: i64 = r.try_get("id")?;
            let mut payload: Value =
                serde_json::from_str(&crate::action_payload(self.keys(), &r)?)?;
            let old_body = payload["body"].as_str().unwrap_or("").to_string();
            payload["body"] = body_with_draft(&old_body, &previous, body).into();
            let (sealed, key_id) =
                crypto::seal_text(self.keys(), Column::ActionPayload, &payload.to_string())?;
            sqlx::query("UPDATE actions SET payload = $2, key_id = $3 WHERE id = $1")
                .bind(id)
                .bind(sealed)
                .bind(key_id)
                .execute(&mut *tx)
                .await?;
        }
        append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: &author,
                action: "review.edit_draft",
                subject: &format!("message:{message_id}"),
                detail: json!({"version": version, "chars": body.chars().count()}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    // --- actions and decisions -----------------------------------------------------

    pub async fn actions(&self, message_id: i64) -> Result<Vec<ActionRow>> {
        sqlx::query(
            "SELECT id, name, kind, target, payload, key_id, status FROM actions WHERE message_id = $1 ORDER BY id",
        )
        .bind(message_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| crate::action_row(self.keys(), r))
        .collect()
    }

    /// The message an action belongs to.
    pub async fn action_message(&self, action_id: i64) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT message_id FROM actions WHERE id = $1")
            .bind(action_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("message_id")).transpose()?)
    }

    /// Replace a staged action's payload (valid JSON) while its message is undecided. A
    /// reply's target is its payload's `to`: a changed recipient is recomputed here, audited
    /// with the old and new address, and remembered ([`Store::recipient_changes`]), so that
    /// approval can ask for a second approver. Approvals given so far are withdrawn.
    pub async fn edit_action(&self, action_id: i64, payload: &str, user: &str) -> Result<()> {
        let value: Value = serde_json::from_str(payload)
            .map_err(|e| anyhow::anyhow!("the payload is not valid JSON: {e}"))?;
        let (sealed, key_id) =
            crypto::seal_text(self.keys(), Column::ActionPayload, &value.to_string())?;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE actions SET payload = $2, key_id = $3 WHERE id = $1 AND status = 'staged'
             RETURNING message_id, kind, target, staged_target",
        )
        .bind(action_id)
        .bind(sealed)
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            bail!("action {action_id} is not staged (decided already, or no such action)");
        };
        let message_id: i64 = row.try_get("message_id")?;
        let kind: String = row.try_get("kind")?;
        let old_target: String = row.try_get("target")?;
        let staged_target: Option<String> = row.try_get("staged_target")?;
        let mut recipient = Value::Null;
        if kind == "reply" {
            for field in ["to", "subject", "body"] {
                ensure!(
                    value.get(field).is_some_and(Value::is_string),
                    "a reply's payload needs a string `{field}`"
                );
            }
            let to = value["to"].as_str().unwrap_or("").trim();
            ensure!(
                is_one_address(to),
                "a reply's `to` must be one e-mail address, not {to:?}"
            );
            if to != old_target {
                sqlx::query("UPDATE actions SET target = $2, staged_target = $3 WHERE id = $1")
                    .bind(action_id)
                    .bind(to)
                    .bind(staged_target.as_deref().unwrap_or(&old_target))
                    .execute(&mut *tx)
                    .await?;
                recipient = json!({"from": old_target, "to": to});
            }
        }
        undecided_guard(&mut tx, message_id).await?;
        sqlx::query("DELETE FROM approvals WHERE message_id = $1")
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        let mut detail =
            json!({"message": message_id, "payload_sha256": sha256_hex(&value.to_string())});
        if !recipient.is_null() {
            detail["recipient"] = recipient;
        }
        append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: &format!("user:{user}"),
                action: "review.edit_action",
                subject: &format!("action:{action_id}"),
                detail,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The staged actions of a message whose target a reviewer changed: (action id, target
    /// as staged, target now).
    pub async fn recipient_changes(&self, message_id: i64) -> Result<Vec<(i64, String, String)>> {
        recipient_changes_in(&self.pool, message_id).await
    }

    /// Who approved a message that waits for a second approver, with when.
    pub async fn approvals(&self, message_id: i64) -> Result<Vec<(String, i64)>> {
        sqlx::query("SELECT user_name, at FROM approvals WHERE message_id = $1 ORDER BY at")
            .bind(message_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("user_name")?, r.try_get("at")?)))
            .collect()
    }

    /// Approve a processed message: record the decision, mark its staged actions approved
    /// and put each in the outbox, audited as `user:NAME` — one transaction. `allow` is
    /// asked about each action as it stands in that transaction (the egress policy); one
    /// refusal approves nothing.
    ///
    /// A message with a reply whose recipient a reviewer changed needs two approvers: the
    /// first approval is recorded and audited (`review.approve_first`) and releases nothing
    /// ([`Approval::awaiting`]); the approval of another user then decides.
    pub async fn approve(
        &self,
        message_id: i64,
        user: &str,
        allow: &(dyn Fn(&ActionRow) -> Result<(), String> + Sync),
    ) -> Result<Approval> {
        self.approve_with(message_id, user, allow, true).await
    }

    /// [`Store::approve`], with the second approver for a changed recipient required or not
    /// (`[review] second_approver`).
    pub async fn approve_with(
        &self,
        message_id: i64,
        user: &str,
        allow: &(dyn Fn(&ActionRow) -> Result<(), String> + Sync),
        second_approver: bool,
    ) -> Result<Approval> {
        self.approve_confirmed(message_id, user, allow, second_approver, None)
            .await
    }

    /// [`Store::approve_with`], bound to what the reviewer confirmed: with `confirmed` (the
    /// [`staged_digest`] the confirmation showed) the approval is refused with
    /// [`ChangedSinceConfirmed`] when the staged actions differ, checked in its transaction.
    pub async fn approve_confirmed(
        &self,
        message_id: i64,
        user: &str,
        allow: &(dyn Fn(&ActionRow) -> Result<(), String> + Sync),
        second_approver: bool,
        confirmed: Option<&str>,
    ) -> Result<Approval> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        if confirmed.is_some() {
            let staged = staged_in(&mut tx, self.keys(), message_id).await?;
            ensure_confirmed(message_id, &staged, confirmed)?;
        }
        let changes = if second_approver {
            undecided_guard(&mut tx, message_id).await?;
            recipient_changes_in(&mut *tx, message_id).await?
        } else {
            Vec::new()
        };
        let mut approvers = Vec::new();
        if !changes.is_empty() {
            approvers =
                sqlx::query("SELECT user_name FROM approvals WHERE message_id = $1 ORDER BY at")
                    .bind(message_id)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get::<String, _>("user_name"))
                    .collect::<Result<Vec<_>, _>>()?;
            if !approvers.iter().any(|a| a != user) {
                ensure!(
                    approvers.is_empty(),
                    "you approved message {message_id} already: its reply's recipient was changed, so another reviewer must approve it too"
                );
                let processed = sqlx::query("SELECT status FROM messages WHERE id = $1")
                    .bind(message_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get::<String, _>("status"))
                    .transpose()?;
                ensure!(
                    processed.as_deref() == Some("processed"),
                    "message {message_id} is not processed (or does not exist): nothing to decide yet"
                );
                sqlx::query(
                    "INSERT INTO approvals (message_id, user_name, at) VALUES ($1, $2, $3)",
                )
                .bind(message_id)
                .bind(user)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let changed: Vec<Value> = changes
                    .iter()
                    .map(|(id, from, to)| json!({"action": id, "from": from, "to": to}))
                    .collect();
                let audit_seq = append_in(
                    &mut tx,
                    self,
                    &AuditEvent {
                        actor: &format!("user:{user}"),
                        action: "review.approve_first",
                        subject: &format!("message:{message_id}"),
                        detail: json!({"recipient_changed": changed}),
                    },
                )
                .await?;
                tx.commit().await?;
                return Ok(Approval {
                    released: Vec::new(),
                    audit_seq,
                    awaiting: Some(
                        "a reply's recipient was changed: a second reviewer must approve too"
                            .to_string(),
                    ),
                });
            }
            approvers.retain(|a| a != user);
            approvers.push(user.to_string());
            sqlx::query("DELETE FROM approvals WHERE message_id = $1")
                .bind(message_id)
                .execute(&mut *tx)
                .await?;
        }
        decide(
            &mut tx,
            self.keys(),
            message_id,
            "approved",
            user,
            None,
            now,
        )
        .await?;
        // Read again after the decision's write: what is released is what was confirmed.
        let actions = staged_in(&mut tx, self.keys(), message_id).await?;
        ensure_confirmed(message_id, &actions, confirmed)?;
        let hash: String = sqlx::query("SELECT content_hash FROM messages WHERE id = $1")
            .bind(message_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("content_hash")?;
        let mut released = Vec::new();
        for a in &actions {
            if let Err(why) = allow(a) {
                bail!("action {:?} cannot be approved: {why}", a.name);
            }
            sqlx::query("UPDATE actions SET status = 'approved' WHERE id = $1")
                .bind(a.id)
                .execute(&mut *tx)
                .await?;
            // Stable and unique: derived from the message's content, the action and the time.
            let webhook_id = format!(
                "msg_{}",
                &sha256_hex(&format!("{hash}.{}.{now}", a.id))[..32]
            );
            let outbox_id: i64 = sqlx::query(
                "INSERT INTO outbox (action_id, message_id, webhook_id, kind, target, payload, status,
                     attempts, next_attempt_at, created_at, updated_at, key_id)
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7, $8) RETURNING id",
            )
            .bind(a.id)
            .bind(message_id)
            .bind(&webhook_id)
            .bind(&a.kind)
            .bind(&a.target)
            .bind(crypto::seal_text(self.keys(), Column::OutboxPayload, &a.payload)?.0)
            .bind(now)
            .bind(crypto::current_key_id(self.keys()))
            .fetch_one(&mut *tx)
            .await
            .with_context(|| format!("putting action {} in the outbox", a.name))?
            .try_get("id")?;
            released.push((a.id, outbox_id, webhook_id));
        }
        let released_json: Vec<Value> = released
            .iter()
            .map(|r| json!({"action": r.0, "outbox": r.1, "webhook_id": r.2}))
            .collect();
        let audit_seq = append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: &format!("user:{user}"),
                action: "review.approve",
                subject: &format!("message:{message_id}"),
                detail: if approvers.is_empty() {
                    json!({"actions": released_json})
                } else {
                    json!({"actions": released_json, "approvers": approvers})
                },
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Approval {
            released,
            audit_seq,
            awaiting: None,
        })
    }

    /// Reject a message with a reason: nothing it staged is ever sent.
    pub async fn reject(&self, message_id: i64, user: &str, reason: &str) -> Result<i64> {
        let reason = reason.trim();
        ensure!(!reason.is_empty(), "a rejection needs a reason");
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        decide(
            &mut tx,
            self.keys(),
            message_id,
            "rejected",
            user,
            Some(reason),
            now,
        )
        .await?;
        sqlx::query("DELETE FROM approvals WHERE message_id = $1")
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query(
            "UPDATE actions SET status = 'rejected' WHERE message_id = $1 AND status = 'staged'",
        )
        .bind(message_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let seq = append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: &format!("user:{user}"),
                action: "review.reject",
                subject: &format!("message:{message_id}"),
                // The reason may quote the mail: it is kept (encrypted) with the decision,
                // not copied into the audit log.
                detail: json!({"reason_chars": reason.chars().count(), "actions": n}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// File a processed message that has nothing to send: the decision `filed`, audited as
    /// `user:NAME`. A message with a staged action is refused: it is approved or rejected.
    pub async fn file_message(&self, message_id: i64, user: &str) -> Result<i64> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        decide(&mut tx, self.keys(), message_id, "filed", user, None, now).await?;
        let staged: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM actions WHERE message_id = $1 AND status = 'staged'",
        )
        .bind(message_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        ensure!(
            staged == 0,
            "message {message_id} has {staged} action(s) staged: approve or reject it instead of filing it"
        );
        let seq = append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: &format!("user:{user}"),
                action: "review.file",
                subject: &format!("message:{message_id}"),
                detail: Value::Null,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Whether the decision on a message can still be undone: it was rejected or filed, or
    /// approved and the delivery worker has claimed none of its outbox rows yet (none was
    /// ever attempted: an admin's retry resets `attempts` but the attempts stay recorded).
    pub async fn undoable(&self, message_id: i64) -> Result<bool> {
        let claimed: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM outbox o
             WHERE o.message_id = $1 AND (o.status <> 'pending' OR o.attempts > 0
               OR o.lease_owner IS NOT NULL
               OR EXISTS (SELECT 1 FROM outbox_attempts a WHERE a.outbox_id = o.id))",
        )
        .bind(message_id)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        Ok(claimed == 0 && self.decision(message_id).await?.is_some())
    }

    /// Undo the decision on a message while nothing of it reached the delivery worker: its
    /// unclaimed outbox rows are removed, its actions staged again and the decision deleted,
    /// in one transaction, audited as `review.undo`. Refused once the worker claimed any of
    /// its deliveries (a claim counts an attempt, and an attempt is recorded: an admin's
    /// retry resets the count, not the record).
    pub async fn undo_decision(&self, message_id: i64, user: &str) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        // A write first (SQLite's lock; on PostgreSQL the rows a claim would lock).
        let removed = sqlx::query(
            "DELETE FROM outbox WHERE message_id = $1 AND status = 'pending' AND attempts = 0
               AND lease_owner IS NULL
               AND NOT EXISTS (SELECT 1 FROM outbox_attempts a WHERE a.outbox_id = outbox.id)",
        )
        .bind(message_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE message_id = $1")
            .bind(message_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if left > 0 {
            tx.rollback().await?;
            bail!(
                "message {message_id} can no longer be undone: the delivery worker has picked up its actions"
            );
        }
        let decision =
            sqlx::query("DELETE FROM decisions WHERE message_id = $1 RETURNING decision")
                .bind(message_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(decision) = decision else {
            tx.rollback().await?;
            bail!("message {message_id} has no decision to undo");
        };
        let decision: String = decision.try_get("decision")?;
        let restaged = sqlx::query(
            "UPDATE actions SET status = 'staged' WHERE message_id = $1 AND status IN ('approved', 'rejected')",
        )
        .bind(message_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let seq = append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: &format!("user:{user}"),
                action: "review.undo",
                subject: &format!("message:{message_id}"),
                detail: json!({"decision": decision, "outbox_removed": removed, "actions": restaged}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Run `stage` again for an undecided message: its job goes back on the queue with its
    /// attempts reset, and the jobs, results and staged actions of the stages after it are
    /// removed (they run again in turn). The intake workers (`verre intake watch`) pick it
    /// up. `parse` cannot be re-run: its parts and PII tags are the message's record.
    pub async fn rerun_stage(&self, message_id: i64, stage: &str, user: &str) -> Result<()> {
        ensure!(
            stage != "parse",
            "the parse stage cannot be re-run (its output is the message's record)"
        );
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let job = sqlx::query(
            "UPDATE jobs SET state = 'ready', attempts = 0, run_after = $3, lease_owner = NULL,
                 lease_expires = NULL, last_error = NULL, updated_at = $3
             WHERE message_id = $1 AND stage = $2 AND state IN ('done', 'failed') RETURNING id",
        )
        .bind(message_id)
        .bind(stage)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job) = job else {
            bail!("message {message_id} has no finished {stage:?} stage to re-run");
        };
        let job_id: i64 = job.try_get("id")?;
        undecided_guard(&mut tx, message_id).await?;
        let later: Vec<String> =
            sqlx::query("SELECT stage FROM jobs WHERE message_id = $1 AND id > $2 ORDER BY id")
                .bind(message_id)
                .bind(job_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("stage"))
                .collect::<Result<_, _>>()?;
        for s in std::iter::once(stage).chain(later.iter().map(String::as_str)) {
            sqlx::query("DELETE FROM stage_results WHERE message_id = $1 AND stage = $2")
                .bind(message_id)
                .bind(s)
                .execute(&mut *tx)
                .await?;
            if s == "stage" {
                sqlx::query("DELETE FROM actions WHERE message_id = $1 AND status = 'staged'")
                    .bind(message_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query("DELETE FROM jobs WHERE message_id = $1 AND id > $2")
            .bind(message_id)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM quarantine WHERE message_id = $1")
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE messages SET status = 'pending', finished_at = NULL WHERE id = $1")
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        append_in(
            &mut tx,
            self,
            &AuditEvent {
                actor: &format!("user:{user}"),
                action: "review.rerun",
                subject: &format!("message:{message_id}"),
                detail: json!({"stage": stage, "removed": later}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Insert the decision (the first write of a decision's transaction). A message decided
/// already, or not processed, is an error.
async fn decide(
    tx: &mut Transaction<'_, Any>,
    keys: Option<&Keyring>,
    message_id: i64,
    decision: &str,
    user: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<()> {
    let inserted = sqlx::query(
        "INSERT INTO decisions (message_id, decision, reviewer, reason, decided_at, key_id)
         SELECT id, $2, $3, $4, $5, $6 FROM messages WHERE id = $1 AND status = 'processed'
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(message_id)
    .bind(decision)
    .bind(user)
    .bind(crypto::seal_opt(keys, Column::DecisionReason, reason)?)
    .bind(now)
    .bind(reason.and(crypto::current_key_id(keys)))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(());
    }
    let earlier = sqlx::query("SELECT decision, reviewer FROM decisions WHERE message_id = $1")
        .bind(message_id)
        .fetch_optional(&mut **tx)
        .await?;
    match earlier {
        Some(r) => bail!(
            "message {message_id} was {} by {} already",
            r.try_get::<String, _>("decision")?,
            r.try_get::<String, _>("reviewer")?
        ),
        None => bail!(
            "message {message_id} is not processed (or does not exist): nothing to decide yet"
        ),
    }
}

/// Fail unless the message is still undecided. Also a write on SQLite (takes the lock).
async fn undecided_guard(tx: &mut Transaction<'_, Any>, message_id: i64) -> Result<()> {
    sqlx::query("UPDATE messages SET size = size WHERE id = $1")
        .bind(message_id)
        .execute(&mut **tx)
        .await?;
    let d = sqlx::query("SELECT decision FROM decisions WHERE message_id = $1")
        .bind(message_id)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(d) = d {
        bail!(
            "message {message_id} was {} already: it can no longer be changed",
            d.try_get::<String, _>("decision")?
        );
    }
    Ok(())
}

/// Staged actions whose target differs from the one the pipeline staged.
async fn recipient_changes_in<'e, E>(
    executor: E,
    message_id: i64,
) -> Result<Vec<(i64, String, String)>>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    sqlx::query(
        "SELECT id, staged_target, target FROM actions
         WHERE message_id = $1 AND status = 'staged' AND staged_target IS NOT NULL
           AND staged_target <> target ORDER BY id",
    )
    .bind(message_id)
    .fetch_all(executor)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get("id")?,
            r.try_get("staged_target")?,
            r.try_get("target")?,
        ))
    })
    .collect()
}

/// One `local@domain` address, bare or as `Name <local@domain>`: no list, no line breaks.
fn is_one_address(to: &str) -> bool {
    let address = match to.rfind('<') {
        Some(at) if to.ends_with('>') => &to[at + 1..to.len() - 1],
        _ => to,
    };
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    let plain = |s: &str| {
        !s.is_empty()
            && !s
                .chars()
                .any(|c| c.is_whitespace() || ",;<>@\"()[]\\".contains(c))
    };
    !to.chars().any(char::is_control)
        && plain(local)
        && plain(domain)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

/// A draft row's body, decrypted.
fn draft_body(keys: Option<&Keyring>, r: &sqlx::any::AnyRow) -> Result<String> {
    let key_id: Option<String> = r.try_get("key_id")?;
    Ok(crypto::open_text(
        keys,
        key_id.as_deref(),
        Column::DraftBody,
        Some(r.try_get("body")?),
    )?
    .unwrap_or_default())
}

#[allow(clippy::too_many_arguments)]
async fn insert_draft(
    tx: &mut Transaction<'_, Any>,
    keys: Option<&Keyring>,
    message_id: i64,
    version: i64,
    body: &str,
    author: &str,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO drafts (message_id, version, body, author, created_at, key_id)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(message_id)
    .bind(version)
    .bind(crypto::seal_text(keys, Column::DraftBody, body)?.0)
    .bind(author)
    .bind(at)
    .bind(crypto::current_key_id(keys))
    .execute(&mut **tx)
    .await
    .with_context(|| format!("saving draft version {version} of message {message_id}"))?;
    Ok(())
}

fn user_row(r: &sqlx::any::AnyRow) -> Result<User> {
    Ok(User {
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        password_hash: r.try_get("password_hash")?,
        created_at: r.try_get("created_at")?,
    })
}

fn decision_from(keys: Option<&Keyring>, r: &sqlx::any::AnyRow) -> Result<Option<Decision>> {
    let decision: Option<String> = r.try_get("decision")?;
    let Some(decision) = decision else {
        return Ok(None);
    };
    Ok(Some(Decision {
        decision,
        reviewer: r.try_get("reviewer")?,
        reason: crypto::open_text(
            keys,
            r.try_get::<Option<String>, _>("decision_key_id")?
                .as_deref(),
            Column::DecisionReason,
            r.try_get("reason")?,
        )?,
        decided_at: r.try_get("decided_at")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_follows_the_draft() {
        assert_eq!(
            body_with_draft("Hello,\nold text\n-- team", "old text", "new text"),
            "Hello,\nnew text\n-- team"
        );
        assert_eq!(body_with_draft("hand-edited", "old", "new"), "new");
        assert_eq!(body_with_draft("anything", "", "new"), "new");
    }

    #[test]
    fn a_reply_goes_to_one_address() {
        for ok in [
            "a@b.test",
            "Jan Weber <j.weber@example.eu>",
            "x+tag@mail.example.eu",
        ] {
            assert!(is_one_address(ok), "{ok}");
        }
        for bad in [
            "",
            "nobody",
            "a@b.test, c@d.test",
            "a@b.test\r\nBcc: c@d.test",
            "a b@c.test",
            "a@localhost",
            "<a@b.test",
        ] {
            assert!(!is_one_address(bad), "{bad}");
        }
    }

    #[test]
    fn statuses_round_trip() {
        for s in ReviewStatus::ALL {
            assert_eq!(ReviewStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ReviewStatus::of("processed", None), ReviewStatus::ToReview);
        assert_eq!(
            ReviewStatus::of("processed", Some("rejected")),
            ReviewStatus::Rejected
        );
    }
}
