//! GDPR commands: `verre audit verify|show`, `verre erase`, `verre purge`,
//! `verre gdpr report|keygen|rekey|rotate-key`. The logic lives in verre-store
//! (audit, erase, retention, crypto); this file parses, prints and keeps the audit head file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::DateTime;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use verre_server::gdpr;
use verre_store::erase::Subject;
use verre_store::{AuditEntry, Keyring, Store, crypto};

use crate::intake_cmd::{DbArgs, open_store, open_store_as_up, runtime};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain; exits non-zero and lists the problems when an entry was
    /// edited, removed or reordered, or when the tail recorded at the last check is gone.
    Verify(VerifyArgs),
    /// Print entries, oldest first (the newest --limit).
    Show(ShowArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Where the head (last entry) is recorded between checks, to detect entries cut from
    /// the end (default: $VERRE_HOME/audit.head).
    #[arg(long)]
    pub head_file: Option<PathBuf>,
    /// Neither read nor write the head file.
    #[arg(long)]
    pub no_head: bool,
    /// The file each entry's head was exported to as it was written (default:
    /// $VERRE_AUDIT_SINK_FILE): every head in it must still be in the log.
    #[arg(long, env = "VERRE_AUDIT_SINK_FILE")]
    pub sink: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Only entries about this: `message:12`, `action:7`; an e-mail address or a name
    /// shows its erasure record (the log names erased subjects by a keyed hash).
    #[arg(long)]
    pub subject: Option<String>,
    /// Only actions starting with this: `intake.`, `gdpr.erase`, `review.`.
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EraseArgs {
    /// The data subject: an e-mail address or a full name (case and spacing are ignored).
    #[arg(long)]
    pub subject: String,
    /// Show what would be erased and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The Maildir inbox whose mail not yet stored is searched too (default:
    /// $VERRE_HOME/inbox, `verre up`'s, when it exists).
    #[arg(long)]
    pub inbox: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Args)]
pub struct PurgeArgs {
    /// The verre.toml whose [retention] applies (default: $VERRE_HOME/verre.toml, the one
    /// `verre up` wrote, else ./verre.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Show what would be removed and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Subcommand)]
pub enum GdprCommand {
    /// Records of processing activities (Art. 30), generated from the configuration.
    Report(ReportArgs),
    /// Print a new random data key (64 hex digits) for VERRE_DATA_KEY or a key file.
    Keygen,
    /// Encrypt every row stored in clear or under an older key with the current data key
    /// (the first in VERRE_DATA_KEY / VERRE_DATA_KEY_FILE); old keys must stay listed
    /// until it has finished.
    Rekey {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Rotate the data key of a key file: add a new key in front, re-encrypt everything
    /// with it, then drop the old keys from the file (unless --keep-old).
    RotateKey {
        /// The key file (default: $VERRE_DATA_KEY_FILE). Created when missing.
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[arg(long)]
        keep_old: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Md,
    Json,
}

#[derive(Args)]
pub struct ReportArgs {
    /// The verre.toml describing backends, retention and the controller ([gdpr])
    /// (default: $VERRE_HOME/verre.toml, else ./verre.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Intake pipelines (repeatable): their schema, labels and actions add data categories
    /// and recipients.
    #[arg(long)]
    pub pipeline: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
}

pub fn audit(cmd: AuditCommand) -> Result<()> {
    runtime()?.block_on(async {
        match cmd {
            AuditCommand::Verify(a) => verify(a).await,
            AuditCommand::Show(a) => show(a).await,
        }
    })
}

async fn verify(a: VerifyArgs) -> Result<()> {
    let url = a.db.url()?;
    let store = open_store_as_up(&a.db).await?;
    let mut report = store.audit_verify().await?;
    if let Some(sink) = &a.sink {
        report.problems.extend(store.audit_check_sink(sink).await?);
    }
    let head_file = match (&a.head_file, a.no_head) {
        (_, true) => None,
        (Some(p), false) => Some(p.clone()),
        (None, false) => Some(verre_models::ModelStore::default_home()?.join("audit.head")),
    };
    let db_key = verre_store::redact(&url);
    let mut heads = match &head_file {
        Some(p) => read_heads(p)?,
        None => BTreeMap::new(),
    };
    let recorded = heads.get(&db_key).cloned();
    if let Some(h) = &recorded {
        let seq = h["seq"].as_i64().unwrap_or(0);
        let hash = h["hash"].as_str().unwrap_or_default();
        report
            .problems
            .extend(store.audit_check_head(seq, hash).await?);
    }
    if let (Some(p), true) = (&head_file, report.ok()) {
        heads.insert(
            db_key,
            json!({"seq": report.head_seq, "hash": report.head, "checked_at": verre_store::now_ms()}),
        );
        write_heads(p, &heads)?;
    }
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["ok"] = json!(report.ok());
        v["head_file"] = json!(head_file);
        v["recorded_head"] = json!(recorded);
        v["sink"] = json!(a.sink);
        v["audit_key"] = json!({
            "id": store.audit_key().id(),
            "path": store.audit_key().path(),
            "keyed_after": store.audit_key().keyed_after(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "audit log: {} entries ({} tombstoned), head {} {}",
            report.entries,
            report.tombstones,
            report.head_seq,
            &report.head[..16]
        );
        if let Some(c) = &report.checkpoint {
            println!(
                "starts after retention checkpoint {} ({} entries purged then)",
                c.seq, c.removed
            );
        }
        let key = store.audit_key();
        println!(
            "keyed: HMAC-SHA256 under audit key {} ({}){}",
            key.id(),
            key.path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "in memory".into()),
            key.keyed_after()
                .map(|n| format!(", every entry after {n}"))
                .unwrap_or_default()
        );
        if let Some(sink) = &a.sink {
            println!("sink {}: every exported head checked", sink.display());
        }
        match (&head_file, &recorded) {
            (None, _) => println!("head file: not used (--no-head): a cut tail cannot be seen"),
            (Some(p), None) => println!(
                "head file {}: no earlier check of this database recorded",
                p.display()
            ),
            (Some(p), Some(h)) => println!(
                "head file {}: entry {} recorded at the last check",
                p.display(),
                h["seq"]
            ),
        }
        for p in &report.problems {
            println!("problem at entry {}: {}", p.seq, p.reason);
        }
        if report.ok() {
            println!("ok: the chain is intact");
        }
    }
    if !report.ok() {
        bail!(
            "the audit log failed verification: {} problem(s); the head file was left as it was",
            report.problems.len()
        );
    }
    Ok(())
}

fn read_heads(path: &Path) -> Result<BTreeMap<String, Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("reading the audit head file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_heads(path: &Path, heads: &BTreeMap<String, Value>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("head.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(heads)? + "\n")
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Whether a --subject is a person (e-mail or name) rather than an audit subject such as
/// `message:12`.
fn is_person(s: &str) -> bool {
    s.contains('@') || s.contains(' ') || !s.contains(':')
}

async fn show(a: ShowArgs) -> Result<()> {
    let store = open_store_as_up(&a.db).await?;
    let mut subjects = Vec::new();
    if let Some(s) = &a.subject {
        subjects.push(s.clone());
        if is_person(s) {
            let hash = store.subject_hash(&Subject::parse(s)?).await?;
            subjects.push(format!("subject:{hash}"));
        }
    }
    let entries = store
        .audit_find(&subjects, a.action.as_deref(), a.limit)
        .await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
        return Ok(());
    }
    if entries.is_empty() {
        writeln!(out, "no audit entries match")?;
    }
    for e in &entries {
        writeln!(out, "{}", entry_line(e))?;
    }
    Ok(())
}

fn entry_line(e: &AuditEntry) -> String {
    let detail = match (&e.detail, e.erased_at) {
        (Some(d), _) => d.to_string(),
        (None, Some(at)) => format!("[erased {}]", utc(at)),
        (None, None) => "[detail missing]".into(),
    };
    format!(
        "{:>6}  {}  {}  {}  {}  {}",
        e.seq,
        utc(e.at),
        e.actor,
        e.action,
        if e.subject.is_empty() {
            "-"
        } else {
            &e.subject
        },
        detail
    )
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ` (as a count of ms when past any calendar).
pub(crate) fn utc(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// The inbox erasure searches: `--inbox`, else `verre up`'s when it is a Maildir.
fn erase_inbox(a: &EraseArgs) -> Result<Option<PathBuf>> {
    if let Some(p) = &a.inbox {
        anyhow::ensure!(
            p.join("new").is_dir() && p.join("cur").is_dir(),
            "--inbox {}: not a Maildir (no new/ and cur/)",
            p.display()
        );
        return Ok(Some(p.clone()));
    }
    // No home at all (neither VERRE_HOME nor HOME): no inbox of verre up's to search.
    let Ok(home) = verre_models::ModelStore::default_home() else {
        return Ok(None);
    };
    let inbox = home.join("inbox");
    Ok((inbox.join("new").is_dir() && inbox.join("cur").is_dir()).then_some(inbox))
}

pub fn erase(a: EraseArgs) -> Result<()> {
    runtime()?.block_on(async {
        let subject = Subject::parse(&a.subject)?;
        let store = open_store_as_up(&a.db).await?;
        // Mail not stored yet first: once its file is gone (and its bytes remembered),
        // `verre up` cannot store it behind the erasure's back.
        let inbox = erase_inbox(&a)?;
        let inbox_files = match &inbox {
            Some(dir) => {
                let exe =
                    std::env::current_exe().context("finding the verre binary to parse mail with")?;
                let parser = verre_intake::MailParser::child(exe)?;
                verre_intake::inbox::erase_from_inbox(&store, dir, &subject, &parser, a.dry_run)
                    .await?
            }
            None => Vec::new(),
        };
        let r = store.erase(&subject, "cli", a.dry_run).await?;
        if a.json {
            let mut v = serde_json::to_value(&r)?;
            v["inbox"] = json!(inbox);
            v["inbox_files"] = json!(inbox_files);
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            if let Some(dir) = &inbox {
                println!(
                    "inbox {}: {} {} file(s) not stored yet that mention the subject{}",
                    dir.display(),
                    if a.dry_run { "would remove" } else { "removed" },
                    inbox_files.len(),
                    if inbox_files.is_empty() || a.dry_run {
                        String::new()
                    } else {
                        " (their bytes are remembered as erased: delivered again, they are not stored)".into()
                    }
                );
                for f in &inbox_files {
                    println!("  {}", f.path.display());
                }
            }
            let verb = if a.dry_run { "would erase" } else { "erased" };
            println!(
                "subject: keyed hash {} (the audit log names the subject only by this)",
                r.subject_hash
            );
            println!("{verb} {} message(s):", r.messages.len());
            for m in &r.messages {
                println!(
                    "  message {}  {}  received {}",
                    m.id,
                    m.source_ref,
                    utc(m.received_at)
                );
                let mut review = Vec::new();
                if m.drafts > 0 {
                    review.push(format!("{} draft version(s)", m.drafts));
                }
                if let Some(d) = &m.decision {
                    review.push(format!("decision: {d}"));
                }
                for d in &m.deliveries {
                    review.push(format!(
                        "outbox {} ({}, {}, {} attempt(s))",
                        d.outbox_id, d.kind, d.status, d.attempts
                    ));
                }
                if !review.is_empty() {
                    println!("    {}", review.join("; "));
                }
            }
            let rows: Vec<String> = r.rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
            println!(
                "rows: {}",
                if rows.is_empty() {
                    "none".into()
                } else {
                    rows.join(", ")
                }
            );
            println!(
                "audit entries {}: {}",
                if a.dry_run {
                    "to tombstone"
                } else {
                    "tombstoned"
                },
                r.tombstoned
            );
            if let Some(n) = r.rows.get("ledger") {
                println!(
                    "ledger: {n} row(s) keep their tokens; the API key name that names the subject {} {:?}",
                    if a.dry_run { "would become" } else { "became" },
                    verre_store::erase::ERASED
                );
            }
            if let Some(seq) = r.audit_seq {
                println!("recorded as audit entry {seq} (gdpr.erase)");
            }
            if a.dry_run {
                println!("dry run: nothing was changed");
            }
        }
        for x in &r.retained {
            eprintln!(
                "warning: {}.{} still names the subject ({} rows), kept on purpose: {}",
                x.table,
                x.column,
                x.rows,
                x.why.as_deref().unwrap_or("")
            );
        }
        if !r.residual.is_empty() {
            let left: Vec<String> = r
                .residual
                .iter()
                .map(|x| format!("{}.{} ({} rows)", x.table, x.column, x.rows))
                .collect();
            bail!(
                "the subject is still mentioned in {}: those tables need an entry in the erasure registry (crates/store/src/erase.rs)",
                left.join(", ")
            );
        }
        Ok(())
    })
}

pub fn purge(a: PurgeArgs) -> Result<()> {
    let config = crate::config_file::require(a.config.as_deref())?;
    let retention = config.retention;
    runtime()?.block_on(async {
        if retention.is_empty() {
            println!(
                "{} has no [retention] keys: nothing is purged (docs/CONFIG.md)",
                config.origin
            );
            return Ok(());
        }
        let store = open_store_as_up(&a.db).await?;
        let r = verre_store::retention::purge(&store, &retention, a.dry_run).await?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
            return Ok(());
        }
        let verb = if a.dry_run { "would remove" } else { "removed" };
        println!("retention from {}", config.origin);
        println!(
            "raw messages past raw_days ({}): {verb} the raw bytes of {}",
            days(retention.raw_days),
            r.raw_purged
        );
        println!(
            "messages past extracted_days ({}): {verb} {} with {}",
            days(retention.extracted_days),
            r.messages_deleted,
            r.rows
                .iter()
                .filter(|(t, _)| !t.starts_with("archive_"))
                .map(|(t, n)| format!("{t} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "archived documents past archive_days ({}): {verb} {} with {} passages",
            days(retention.archive_days),
            r.rows.get("archive_documents").unwrap_or(&0),
            r.rows.get("archive_chunks").unwrap_or(&0)
        );
        println!(
            "audit entries past audit_days ({}): {verb} {}{}",
            days(retention.audit_days),
            r.audit_removed,
            r.audit_checkpoint
                .map(|s| format!(" (the chain now starts after entry {s})"))
                .unwrap_or_default()
        );
        if a.dry_run {
            println!("dry run: nothing was changed");
        }
        Ok(())
    })
}

fn days(d: Option<u32>) -> String {
    d.map(|d| format!("{d} days"))
        .unwrap_or_else(|| "not set: kept".into())
}

pub fn gdpr(cmd: GdprCommand) -> Result<()> {
    match cmd {
        GdprCommand::Report(a) => report(a),
        GdprCommand::Keygen => {
            println!("{}", crypto::generate_key()?);
            Ok(())
        }
        GdprCommand::Rekey { db } => runtime()?.block_on(async {
            let store = open_store(&db).await?;
            rekey(&store).await
        }),
        GdprCommand::RotateKey {
            key_file,
            keep_old,
            db,
        } => rotate_key(key_file, keep_old, db),
    }
}

async fn rekey(store: &Store) -> Result<()> {
    let r = store.rekey().await?;
    println!(
        "re-encrypted with key {}: {} messages, {} parts, {} stage results, {} quarantine reasons, {} job errors, {} kept API responses, {} drafts, {} staged actions, {} decisions, {} deliveries, {} delivery attempts, {} evidence, {} corrections",
        r.key_id,
        r.messages,
        r.parts,
        r.stage_results,
        r.quarantine,
        r.jobs,
        r.responses,
        r.drafts,
        r.actions,
        r.decisions,
        r.outbox,
        r.outbox_attempts,
        r.evidence,
        r.corrections
    );
    println!(
        "  and {} archived documents, {} archived passages, {} corrected documents' embeddings",
        r.archive_documents, r.archive_chunks, r.correction_embeddings
    );
    for (id, n) in store.key_usage().await? {
        println!(
            "  {n} rows under {}",
            id.as_deref()
                .unwrap_or("no key (raw bytes purged or empty)")
        );
    }
    Ok(())
}

fn rotate_key(key_file: Option<PathBuf>, keep_old: bool, db: DbArgs) -> Result<()> {
    let path = match key_file.or_else(|| std::env::var_os(crypto::KEY_FILE_ENV).map(PathBuf::from))
    {
        Some(p) => p,
        None => bail!(
            "rotate-key needs a key file (--key-file or {}); with keys in {}, put a new key first (`verre gdpr keygen`), keep the old one after it, and run `verre gdpr rekey`",
            crypto::KEY_FILE_ENV,
            crypto::KEY_ENV
        ),
    };
    let old = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let old_keys: Vec<&str> = old
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    let new_key = crypto::generate_key()?;
    // The new key first, the old ones still readable: safe to interrupt from here on.
    let mut both =
        format!("# verre data keys: the first encrypts, the others only decrypt\n{new_key}\n");
    for k in &old_keys {
        both.push_str(k);
        both.push('\n');
    }
    write_secret(&path, &both)?;
    let keys = Keyring::from_file(&path)?;
    runtime()?.block_on(async {
        let store = open_store(&db).await?.with_keys(Some(keys)).await?;
        rekey(&store).await?;
        let usage = store.key_usage().await?;
        let new_id = Keyring::parse(&new_key, "the new key")?
            .current_id()
            .to_string();
        let still_old = usage
            .iter()
            .any(|(id, n)| *n > 0 && id.as_deref().is_some_and(|id| id != new_id));
        if keep_old || still_old {
            println!(
                "{}: new key {new_id} first, {} old key(s) kept",
                path.display(),
                old_keys.len()
            );
        } else {
            write_secret(&path, &format!("# verre data key\n{new_key}\n"))?;
            println!(
                "{}: now holds only the new key {new_id}; {} old key(s) removed",
                path.display(),
                old_keys.len()
            );
        }
        Ok(())
    })
}

/// Write a key file atomically, readable by its owner only.
fn write_secret(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

// ---- verre gdpr report ----

fn report(a: ReportArgs) -> Result<()> {
    let config = crate::config_file::require(a.config.as_deref())?;
    let mut pipelines = Vec::new();
    for p in &a.pipeline {
        pipelines.push(processing(&verre_intake::Pipeline::load(p)?));
    }
    let records = gdpr::records(
        &config,
        &pipelines,
        Keyring::from_env(),
        verre_store::now_ms(),
    );
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&records)?),
        Format::Md => print!("{}", gdpr::markdown(&records)),
    }
    Ok(())
}

/// What the records say about a pipeline: its fields, labels and where its actions send.
fn processing(p: &verre_intake::Pipeline) -> gdpr::PipelineProcessing {
    let fields = p.extract.schema["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(name, s)| (name.clone(), s["description"].as_str().map(str::to_string)))
                .collect()
        })
        .unwrap_or_default();
    gdpr::PipelineProcessing {
        name: p.name.clone(),
        source: p.path.display().to_string(),
        fields,
        labels: p
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.values.clone()))
            .collect(),
        actions: p
            .actions
            .iter()
            .map(|a| gdpr::ActionRecipient {
                name: a.name.clone(),
                webhook: match &a.kind {
                    verre_intake::pipeline::ActionKind::Webhook { url, .. } => Some(url.clone()),
                    verre_intake::pipeline::ActionKind::Reply { .. } => None,
                },
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_735_689_599_000), "2024-12-31T23:59:59Z");
        assert_eq!(utc(-1_000), "1969-12-31T23:59:59Z");
        assert_eq!(
            utc(i64::MIN),
            format!("{} ms", i64::MIN),
            "past any calendar"
        );
    }

    #[test]
    fn a_person_is_told_from_an_audit_subject() {
        assert!(is_person("jean@example.fr"));
        assert!(is_person("Jean Dupont"));
        assert!(!is_person("message:12"));
    }
}
