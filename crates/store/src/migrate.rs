//! Schema migrations, one set per backend (`migrations/sqlite`, `migrations/postgres`),
//! embedded in the binary and applied in order, each in its own transaction.
//!
//! Why not `sqlx::migrate!`: that macro needs sqlx's proc-macro crate, which compiles both
//! database drivers (and SQLite's C source) a second time for the host; this runner is the
//! few lines that are needed. On PostgreSQL an advisory lock serialises workers that start
//! together.

use anyhow::{Context, Result};
use sqlx::Row;

use crate::{Backend, Store, now_ms};

/// (version, description, SQL) in order.
type Migration = (i64, &'static str, &'static str);

const SQLITE: &[Migration] = &[
    (
        1,
        "intake",
        include_str!("../migrations/sqlite/0001_intake.sql"),
    ),
    (
        2,
        "audit",
        include_str!("../migrations/sqlite/0002_audit.sql"),
    ),
    (
        3,
        "review",
        include_str!("../migrations/sqlite/0003_review.sql"),
    ),
    (
        4,
        "ledger",
        include_str!("../migrations/sqlite/0004_ledger.sql"),
    ),
    (
        5,
        "gdpr",
        include_str!("../migrations/sqlite/0005_gdpr.sql"),
    ),
    (
        6,
        "forget",
        include_str!("../migrations/sqlite/0006_forget.sql"),
    ),
    (
        7,
        "review guards",
        include_str!("../migrations/sqlite/0007_review_guards.sql"),
    ),
    (
        8,
        "responses",
        include_str!("../migrations/sqlite/0008_responses.sql"),
    ),
    (
        9,
        "sealed reasons",
        include_str!("../migrations/sqlite/0009_sealed_reasons.sql"),
    ),
    (
        10,
        "sealed review",
        include_str!("../migrations/sqlite/0010_sealed_review.sql"),
    ),
    (
        11,
        "archive",
        include_str!("../migrations/sqlite/0011_archive.sql"),
    ),
    (
        12,
        "evidence",
        include_str!("../migrations/sqlite/0012_evidence.sql"),
    ),
    (
        13,
        "correction embeddings",
        include_str!("../migrations/sqlite/0013_correction_embeddings.sql"),
    ),
];

const POSTGRES: &[Migration] = &[
    (
        1,
        "intake",
        include_str!("../migrations/postgres/0001_intake.sql"),
    ),
    (
        2,
        "audit",
        include_str!("../migrations/postgres/0002_audit.sql"),
    ),
    (
        3,
        "review",
        include_str!("../migrations/postgres/0003_review.sql"),
    ),
    (
        4,
        "ledger",
        include_str!("../migrations/postgres/0004_ledger.sql"),
    ),
    (
        5,
        "gdpr",
        include_str!("../migrations/postgres/0005_gdpr.sql"),
    ),
    (
        6,
        "forget",
        include_str!("../migrations/postgres/0006_forget.sql"),
    ),
    (
        7,
        "review guards",
        include_str!("../migrations/postgres/0007_review_guards.sql"),
    ),
    (
        8,
        "responses",
        include_str!("../migrations/postgres/0008_responses.sql"),
    ),
    (
        9,
        "sealed reasons",
        include_str!("../migrations/postgres/0009_sealed_reasons.sql"),
    ),
    (
        10,
        "sealed review",
        include_str!("../migrations/postgres/0010_sealed_review.sql"),
    ),
    (
        11,
        "archive",
        include_str!("../migrations/postgres/0011_archive.sql"),
    ),
    (
        12,
        "evidence",
        include_str!("../migrations/postgres/0012_evidence.sql"),
    ),
    (
        13,
        "correction embeddings",
        include_str!("../migrations/postgres/0013_correction_embeddings.sql"),
    ),
];

/// Arbitrary, fixed: the key of the advisory lock migrations hold on PostgreSQL.
const PG_LOCK_KEY: i64 = 0x7665_7272_655f_6d67;

pub(crate) async fn run(store: &Store) -> Result<()> {
    let migrations = match store.backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    let mut conn = store.pool.acquire().await?;
    if store.backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(PG_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
    }
    let result = apply(&mut conn, migrations).await;
    if store.backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PG_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
    }
    result
}

async fn apply(conn: &mut sqlx::AnyConnection, migrations: &[Migration]) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS verre_migrations (
             version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let applied: Vec<i64> = sqlx::query("SELECT version FROM verre_migrations")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get("version"))
        .collect::<Result<_, _>>()?;
    let newest_known = migrations.last().map(|m| m.0).unwrap_or(0);
    if let Some(v) = applied.iter().find(|v| **v > newest_known) {
        anyhow::bail!(
            "the database has migration {v}, newer than this verre knows ({newest_known}): upgrade verre"
        );
    }
    for (version, description, sql) in migrations {
        if applied.contains(version) {
            continue;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // A write first: on SQLite it takes the database's write lock, so a second process
        // migrating at the same moment waits here and then sees the migration applied.
        sqlx::query("UPDATE verre_migrations SET applied_at = applied_at WHERE version < 0")
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("SELECT version FROM verre_migrations WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        if done.is_some() {
            tx.rollback().await?;
            continue;
        }
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("applying migration {version} ({description})"))?;
        sqlx::query(
            "INSERT INTO verre_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(version)
        .bind(*description)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}
