//! Staged actions and the decisions on messages: edits of a payload, approval (with the
//! digest of what the confirmation showed, and a second approver where a recipient
//! changed), rejection, filing, undo while nothing was picked up, and re-running a stage.
//! Each decision is one transaction with the outbox rows and the audit entries it causes.

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{Any, Row, Transaction};

use super::sha256_hex;
use crate::audit::{AuditEvent, append_in};
use crate::crypto::{self, Column, Keyring};
use crate::{ActionRow, Store, now_ms};

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

impl Store {
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
                let audit_seq = audit_decision(
                    &mut tx,
                    self,
                    user,
                    "review.approve_first",
                    message_id,
                    json!({"recipient_changed": changed}),
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
        let audit_seq = audit_decision(
            &mut tx,
            self,
            user,
            "review.approve",
            message_id,
            if approvers.is_empty() {
                json!({"actions": released_json})
            } else {
                json!({"actions": released_json, "approvers": approvers})
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
        // The reason may quote the mail: it is kept (encrypted) with the decision, not
        // copied into the audit log.
        let detail = json!({"reason_chars": reason.chars().count(), "actions": n});
        let seq = audit_decision(&mut tx, self, user, "review.reject", message_id, detail).await?;
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
        let seq =
            audit_decision(&mut tx, self, user, "review.file", message_id, Value::Null).await?;
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
        let seq = audit_decision(
            &mut tx,
            self,
            user,
            "review.undo",
            message_id,
            json!({"decision": decision, "outbox_removed": removed, "actions": restaged}),
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
        audit_decision(
            &mut tx,
            self,
            user,
            "review.rerun",
            message_id,
            json!({"stage": stage, "removed": later}),
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
pub(super) async fn undecided_guard(tx: &mut Transaction<'_, Any>, message_id: i64) -> Result<()> {
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

/// Append a reviewer's `action` on a message to the audit log, inside the transaction of
/// the decision it records (`user:NAME` on `message:ID`).
async fn audit_decision(
    tx: &mut Transaction<'_, Any>,
    store: &Store,
    user: &str,
    action: &str,
    message_id: i64,
    detail: Value,
) -> Result<i64> {
    append_in(
        tx,
        store,
        &AuditEvent {
            actor: &format!("user:{user}"),
            action,
            subject: &format!("message:{message_id}"),
            detail,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
