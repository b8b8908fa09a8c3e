//! Which database the read side reads the log from and keeps its read models in.
//!
//! One enum rather than generics or trait objects (decision 0011, §2): call sites
//! stay free of type parameters, and every `match` on it is exhaustive, so a
//! feature cannot exist on one back end and be forgotten on the other.

use sqlx::{PgPool, SqlitePool};
use tokio::sync::watch;

use crate::feed::Position;
use crate::read_models::ReadModels;
use crate::read_models_sqlite::SqliteReadModels;

/// The read side's storage.
#[derive(Clone, Debug)]
pub enum ReadStore {
    /// PostgreSQL: log, read models and checkpoints in one database.
    Postgres(PgPool),
    /// The embedded SQLite database of a data directory.
    Sqlite(SqliteStore),
}

/// The embedded store as the read side sees it.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// The process's single writer connection (read models, checkpoints, signed
    /// checkpoints are written through it, in `BEGIN IMMEDIATE` transactions).
    pub writer: SqlitePool,
    /// Read-only connections.
    pub readers: SqlitePool,
    /// Bumped after every commit that wrote events (the appender's signal), so
    /// feed followers wake without polling; `None` for a tool that only reads.
    pub commits: Option<watch::Receiver<u64>>,
}

impl SqliteStore {
    /// A write transaction on the writer. `BEGIN IMMEDIATE` takes the write lock
    /// up front: a deferred transaction that reads first and writes later fails
    /// at once with `SQLITE_BUSY_SNAPSHOT` when another process wrote meanwhile,
    /// instead of waiting for the busy timeout.
    pub async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }
}

impl ReadStore {
    /// Which back end, for logs and `/health`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Where the named feed follower stands (the read-model projector, a relay);
    /// [`Position::START`] when it never saved a position.
    pub async fn checkpoint(&self, name: &str) -> Result<Position, sqlx::Error> {
        match self {
            Self::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                ReadModels::checkpoint(&mut conn, name).await
            }
            Self::Sqlite(store) => {
                let mut conn = store.readers.acquire().await?;
                SqliteReadModels::checkpoint(&mut conn, name).await
            }
        }
    }

    /// Records where the named feed follower stands, on its own (a follower that
    /// writes nothing else, such as the NATS relay).
    pub async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                ReadModels::save_checkpoint(&mut conn, name, position).await
            }
            Self::Sqlite(store) => {
                let mut tx = store.begin_write().await?;
                SqliteReadModels::save_checkpoint(&mut tx, name, position).await?;
                tx.commit().await
            }
        }
    }
}

/// The read-model tables an erasure scrubs in PostgreSQL (those holding clear
/// personal values).
const ERASED_READ_MODELS: &str = "users, sessions, audit_trail";

/// How often a WAL checkpoint is tried before giving up (a reader's open
/// snapshot can keep it from finishing; each try waits up to the busy timeout).
const CHECKPOINT_TRIES: u32 = 5;

impl ReadStore {
    /// Removes from the database files what the projector's erasure scrub deleted
    /// or overwrote (the `users` row, personal values in `sessions` and
    /// `audit_trail`), once that batch is committed. Deleted rows only mark their
    /// bytes as free: PostgreSQL keeps them in the pages even after a plain
    /// `VACUUM`, so `VACUUM (FULL)` rewrites these tables into new files (each is
    /// locked exclusively while it is copied); SQLite zeroes freed content
    /// (`secure_delete`, set on every connection) but keeps the old pages in its
    /// write-ahead log, which a `TRUNCATE` checkpoint empties. The write side's
    /// tables (claims, data keys) are scrubbed by the erasure itself.
    pub async fn scrub_erased_read_models(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(pool) => vacuum_full(pool, ERASED_READ_MODELS).await,
            Self::Sqlite(store) => {
                for _ in 0..CHECKPOINT_TRIES {
                    let (busy, _, _): (i64, i64, i64) =
                        sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                            .fetch_one(&store.writer)
                            .await?;
                    if busy == 0 {
                        return Ok(());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(sqlx::Error::Protocol(
                    "the write-ahead log could not be checkpointed: a reader kept it busy".into(),
                ))
            }
        }
    }
}

/// Creates the read-model tables (and the projection checkpoints) of the store's
/// back end where they are missing; the server runs it at start-up.
pub async fn install_read_models(store: &ReadStore) -> Result<(), sqlx::Error> {
    match store {
        ReadStore::Postgres(pool) => ReadModels::install_in(pool).await,
        ReadStore::Sqlite(store) => SqliteReadModels::install(&store.writer).await,
    }
}

/// `VACUUM (FULL)` of `tables`, once no other session of this database still
/// holds a snapshot, or runs a transaction, that began before the caller's last
/// commit (waiting at most `SNAPSHOT_WAIT`). Why: VACUUM FULL copies a deleted
/// row into the new file while any such session might still see it, so a query
/// that happened to run across the erasure's commit would keep its bytes alive. (The same rule as
/// `keyledger_commands::storage`'s, for the tables each side owns.)
async fn vacuum_full(pool: &sqlx::PgPool, tables: &str) -> Result<(), sqlx::Error> {
    // An xid assigned now is newer than every transaction committed before.
    let now: String =
        sqlx::query_scalar("SELECT (pg_current_xact_id()::text::bigint % 4294967296)::text")
            .fetch_one(pool)
            .await?;
    let deadline = std::time::Instant::now() + SNAPSHOT_WAIT;
    loop {
        let older: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND (age(backend_xmin) > age($1::xid) OR age(backend_xid) > age($1::xid))",
        )
        .bind(&now)
        .fetch_one(pool)
        .await?;
        if older == 0 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            // The vacuum still shortens what is left, but it may copy the erased
            // rows: say so rather than let the guarantee fail silently.
            tracing::warn!(
                sessions = older,
                "an older snapshot outlived the wait; erased rows may survive this vacuum"
            );
            metrics::counter!("keyledger_erasure_scrub_failures_total").increment(1);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Not inside a transaction: VACUUM refuses to run in one.
    sqlx::raw_sql(&format!("VACUUM (FULL) {tables}"))
        .execute(pool)
        .await?;
    Ok(())
}

/// How long a scrub waits for older snapshots to end before it runs anyway.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
