//! Which database the read side reads the log from and keeps its read models in.
//!
//! One enum rather than generics or trait objects (decision 0011, §2): call sites
//! stay free of type parameters, and every `match` on it is exhaustive, so a
//! feature cannot exist on one back end and be forgotten on the other.

use keyledger_storage::{checkpoint_wal, vacuum_full};
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
            Self::Sqlite(store) => checkpoint_wal(&store.writer).await,
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
