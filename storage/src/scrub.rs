//! Removing what was deleted or overwritten from the database files: one goal,
//! two genuinely different mechanisms.
//!
//! Deleting a row or setting a column to NULL only marks the old bytes as free.
//! In PostgreSQL they stay in the table's pages (a plain `VACUUM` frees the space
//! but does not overwrite it), so `VACUUM (FULL)` rewrites the tables involved
//! into new files and drops the old ones; it holds an exclusive lock on each
//! table while it copies it, which is why it runs once per erasure and only on
//! the tables an erasure touches. In SQLite every connection runs with
//! `secure_delete` (freed content is zeroed in the database file), and the
//! committed pages still sit in the write-ahead log until a checkpoint: a
//! `TRUNCATE` checkpoint copies them into the database file and empties the log
//! file.
//!
//! Neither reaches copies outside the database files: PostgreSQL's WAL segments
//! and archives, replicas and backups keep the old data until the operator's
//! retention removes them (docs/auditing.md, "Erasure").

use std::time::{Duration, Instant};

use sqlx::sqlite::SqlitePool;
use sqlx::PgPool;

use crate::{Database, Engine};

/// The write side's PostgreSQL tables an erasure changes: the email claims (the
/// keyed digest) and the data keys (the wrapped key). The read models are
/// scrubbed by the projector once it applied the erasure.
const ERASURE_TABLES: &str = "email_claims, user_data_keys";

/// The table a rewrap of the data keys overwrote.
const DATA_KEY_TABLES: &str = "user_data_keys";

/// How often a WAL checkpoint is tried before giving up (a reader's open
/// snapshot can keep it from finishing; each try waits up to the busy timeout).
const CHECKPOINT_TRIES: u32 = 5;

/// How long a scrub waits for older snapshots to end before it runs anyway.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

impl Database {
    /// Scrubs what an erasure deleted or overwrote in the write side's tables
    /// (the claim, the data key), once it is committed.
    pub async fn scrub_after_erasure(&self) -> Result<(), sqlx::Error> {
        self.scrub(ERASURE_TABLES).await
    }

    /// Scrubs the data keys alone, after keys were rewrapped: their clear (or
    /// retired-key) forms must not stay in free space.
    pub async fn scrub_data_keys(&self) -> Result<(), sqlx::Error> {
        self.scrub(DATA_KEY_TABLES).await
    }

    /// Scrubs freed bytes: `VACUUM (FULL)` of `postgres_tables` on PostgreSQL,
    /// a `TRUNCATE` checkpoint of the whole write-ahead log on SQLite.
    pub async fn scrub(&self, postgres_tables: &str) -> Result<(), sqlx::Error> {
        match self.engine() {
            Engine::Postgres(pool) => vacuum_full(pool, postgres_tables).await,
            Engine::Sqlite(database) => checkpoint_wal(database.writer()).await,
        }
    }
}

/// `VACUUM (FULL)` of `tables`, once no other session of the cluster still
/// holds a snapshot, or runs a transaction, that began before the caller's last
/// commit (waiting at most [`SNAPSHOT_WAIT`]). Why: VACUUM FULL copies a deleted
/// row into the new file while any such session might still see it, so a query
/// that happened to run across the erasure's commit would keep its bytes alive.
/// The whole cluster, not this database alone: a transaction id is cluster-wide,
/// so a transaction still running in another database keeps every new snapshot's
/// horizon (VACUUM's own included) below the deletion, and the row survives.
pub async fn vacuum_full(pool: &PgPool, tables: &str) -> Result<(), sqlx::Error> {
    // An xid assigned now is newer than every transaction committed before.
    let now: String =
        sqlx::query_scalar("SELECT (pg_current_xact_id()::text::bigint % 4294967296)::text")
            .fetch_one(pool)
            .await?;
    let deadline = Instant::now() + SNAPSHOT_WAIT;
    loop {
        let older: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE pid <> pg_backend_pid()
                AND (age(backend_xmin) > age($1::xid) OR age(backend_xid) > age($1::xid))",
        )
        .bind(&now)
        .fetch_one(pool)
        .await?;
        if older == 0 {
            break;
        }
        if Instant::now() >= deadline {
            // The vacuum still shortens what is left, but it may copy the erased
            // rows: say so rather than let the guarantee fail silently.
            tracing::warn!(
                sessions = older,
                "an older snapshot outlived the wait; erased rows may survive this vacuum"
            );
            metrics::counter!("keyledger_erasure_scrub_failures_total").increment(1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not inside a transaction: VACUUM refuses to run in one.
    sqlx::raw_sql(&format!("VACUUM (FULL) {tables}"))
        .execute(pool)
        .await?;
    Ok(())
}

/// A `TRUNCATE` checkpoint of the write-ahead log through `writer`, retried
/// while a reader's snapshot keeps it from finishing.
pub async fn checkpoint_wal(writer: &SqlitePool) -> Result<(), sqlx::Error> {
    for _ in 0..CHECKPOINT_TRIES {
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(writer)
            .await?;
        if busy == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(sqlx::Error::Protocol(
        "the write-ahead log could not be checkpointed: a reader kept it busy".into(),
    ))
}
