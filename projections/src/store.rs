//! Which database the read side reads the log from and keeps its read models in.
//!
//! One enum rather than generics or trait objects (decision 0011, §2): call sites
//! stay free of type parameters, and every `match` on it is exhaustive, so a
//! feature cannot exist on one back end and be forgotten on the other.

use sqlx::{PgPool, SqlitePool};
use tokio::sync::watch;

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

impl ReadStore {
    /// Which back end, for logs and `/health`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }
}
