//! `keyledger-replay`: the auditor's command-line view of the event log.
//!
//! The commands are usable as library calls so that tests (and other tools) can
//! run them against a database of their own and capture what they print:
//! - [`history`]: one account's events (its user aggregate and all its sessions)
//!   in feed order, always through the secret-free integration mapping;
//! - [`rebuild`]: replays the event log into a fresh schema and checks that the
//!   live read models equal what the log says they should be;
//! - [`as_of`] and [`timeline`]: an account at a past instant, and every change
//!   to it with who made it, from where and when;
//! - [`verify`]: checks the hash chains and signed checkpoints (tamper evidence);
//! - [`rebuild_switch`]: rebuilds them beside the live ones while the server
//!   serves, then swaps them in atomically;
//! - [`seed`]: writes a big realistic log for benchmarks;
//! - [`export`]: the audit trail or the public form of the events, streamed as
//!   JSON lines or CSV;
//! - [`reseal`]: the one-time migration of a log written before personal data
//!   was sealed (decision 0010);
//! - [`copy_to_postgres`]: moves an embedded store to PostgreSQL, every chain
//!   hash recomputed by PostgreSQL and compared (decision 0011, §4).
//!
//! Every output opens personal data first ([`personal`]): clear values, or
//! `[erased]` once their owner's key is gone; never ciphertext.
//!
//! Back ends (decision 0011): a [`StoreLocation`] is chosen by the server's rule
//! and opened as a [`LogDb`]. Every command runs on both except `reseal`, which
//! PostgreSQL alone needs (an embedded log is sealed from its first event):
//! `history`, `as-of`, `timeline`, `export` and `verify` open the embedded store
//! read-only beside a running server; `rebuild` and `rebuild --switch` open it
//! read-write without its lock (they work beside the server, see
//! [`open_embedded_read_write`]); `seed` and `copy-to-postgres` take the data
//! directory's lock, so the server must be stopped.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod copy;
pub mod export;
pub mod history;
pub mod personal;
pub mod rebuild;
pub mod reseal;
pub mod seed;
mod stored;
pub mod switch;
pub mod timeline;
pub mod verify;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use keyledger_projections::FeedError;
use keyledger_storage::{connect_options, Durability, EmbeddedError, DATABASE_FILE};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Connection, PgConnection, PgPool, SqlitePool};

pub use copy::{copy_to_postgres, CopyOptions, CopyReport, RelayStart};
pub use export::{export, ExportFormat, ExportOptions, ExportReport, ExportSource};
pub use history::{history, History, HistoryEntry, OutputFormat, UserRef};
pub use personal::{data_key_wrapping, email_index_key};
pub use rebuild::{rebuild, RebuildOptions, RebuildReport, TableComparison};
pub use reseal::{reseal, ResealLink, ResealOptions, ResealReport, ResealSigner};
pub use seed::{seed, SeedOptions, SeedReport, SeedTarget};
pub use switch::{rebuild_switch, SwitchOptions, SwitchReport};
pub use timeline::{as_of, parse_time, timeline, Timeline, TimelineEntry};
pub use verify::{verify, Failure, VerifyOptions, VerifyReport};

/// The data directory the tool reads when neither `--database-url` nor
/// `DATABASE_URL` names a PostgreSQL database and `--data-dir` /
/// `KEYLEDGER_DATA_DIR` say nothing: the server's default.
pub const DEFAULT_DATA_DIR: &str = "keyledger-data";
/// The server's data key wrapping key file in a data directory (its default place).
pub const DATA_KEY_WRAPPING_KEY_FILE: &str = "data-key-wrapping.key";

/// Where the event log lives, chosen by the server's rule (decision 0011): a
/// database URL means PostgreSQL, otherwise the embedded store of a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A PostgreSQL connection URL.
    Postgres(String),
    /// A data directory holding `keyledger.db`.
    Embedded(PathBuf),
}

impl StoreLocation {
    /// PostgreSQL when `database_url` is set and not empty (as for the server),
    /// else the data directory.
    pub fn choose(database_url: Option<&str>, data_dir: &Path) -> Self {
        match database_url.map(str::trim).filter(|url| !url.is_empty()) {
            Some(url) => Self::Postgres(url.to_owned()),
            None => Self::Embedded(data_dir.to_owned()),
        }
    }
}

/// An open event log, on either back end. Commands take it as a [`LogDbRef`]
/// and `match` on it, so a command cannot exist on one back end and be
/// forgotten on the other.
#[derive(Debug, Clone)]
pub enum LogDb {
    /// PostgreSQL: the log, registries and read models in one database.
    Postgres(PgPool),
    /// The embedded store's `keyledger.db` (opened read-only by the read
    /// commands).
    Sqlite(SqlitePool),
}

impl LogDb {
    /// A borrowed view, what the commands take.
    pub fn as_ref(&self) -> LogDbRef<'_> {
        match self {
            Self::Postgres(pool) => LogDbRef::Postgres(pool),
            Self::Sqlite(pool) => LogDbRef::Sqlite(pool),
        }
    }
}

/// A borrowed [`LogDb`]. The commands take `impl Into<LogDbRef>` so that callers
/// holding a bare `&PgPool` (the end-to-end tests, the server's tooling) keep
/// calling them unchanged; inside, it is one exhaustive `match`.
#[derive(Debug, Clone, Copy)]
pub enum LogDbRef<'a> {
    /// PostgreSQL.
    Postgres(&'a PgPool),
    /// The embedded store.
    Sqlite(&'a SqlitePool),
}

impl LogDbRef<'_> {
    /// An owned handle on the same pool (pools are reference-counted).
    pub fn to_log_db(self) -> LogDb {
        match self {
            Self::Postgres(pool) => LogDb::Postgres(pool.clone()),
            Self::Sqlite(pool) => LogDb::Sqlite(pool.clone()),
        }
    }

    /// A handle on the same pool for the read side, so the tools open personal
    /// data and travel in time with exactly the server's code. An embedded
    /// store opened by a tool is read-only (see
    /// [`keyledger_storage::EmbeddedDatabase::read_only`]): a write would fail
    /// rather than compete with a running server.
    pub fn read_store(self) -> keyledger_storage::Database {
        match self {
            Self::Postgres(pool) => keyledger_storage::Database::from_pool(pool.clone()),
            Self::Sqlite(pool) => keyledger_storage::Database::from_embedded(
                keyledger_storage::EmbeddedDatabase::read_only(pool.clone()),
            ),
        }
    }
}

impl<'a> From<&'a PgPool> for LogDbRef<'a> {
    fn from(pool: &'a PgPool) -> Self {
        Self::Postgres(pool)
    }
}

impl<'a> From<&'a SqlitePool> for LogDbRef<'a> {
    fn from(pool: &'a SqlitePool) -> Self {
        Self::Sqlite(pool)
    }
}

impl<'a> From<&'a LogDb> for LogDbRef<'a> {
    fn from(db: &'a LogDb) -> Self {
        db.as_ref()
    }
}

/// Everything that can stop a command; the CLI prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The database refused or lost a query.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored event cannot be decoded (or projected).
    #[error("{0}")]
    Feed(#[from] FeedError),
    /// `--user` is neither a UUID nor an email address.
    #[error("`{0}` is neither a user id (UUID) nor a valid email address")]
    InvalidUser(String),
    /// No event belongs to the requested account.
    #[error("no account found for {0}")]
    UnknownUser(String),
    /// A read model exists in the fresh schema (or scratch file) but not among
    /// the live ones (`public.users`, `main.users`, ...).
    #[error("the live read model `{0}` does not exist")]
    LiveTableMissing(String),
    /// The output could not be written.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// An audit key given to `verify` is not a valid PASERK.
    #[error("audit key: {0}")]
    AuditKey(String),
    /// The command will not run here (a seed outside a benchmark database, ...).
    #[error("{0}")]
    Refused(String),
    /// An email was given without the email index key it is looked up with.
    #[error(
        "no claim holds this address in clear; claims are keyed by the email index key: \
         set KEYLEDGER_EMAIL_INDEX_KEY or pass --email-index-key-file"
    )]
    NoEmailIndexKey,
    /// The email index key given cannot be read or is malformed (never quoted).
    #[error("email index key: {0}")]
    EmailIndexKey(String),
    /// The data key wrapping key given cannot be read or is malformed (never
    /// quoted).
    #[error("data key wrapping key: {0}")]
    DataKeyWrappingKey(String),
    /// An event could not be encoded as JSON.
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The data directory holds no embedded database.
    #[error(
        "no embedded database at {0}: pass --data-dir (or KEYLEDGER_DATA_DIR), or \
         --database-url (or DATABASE_URL) for PostgreSQL"
    )]
    NoEmbeddedDatabase(PathBuf),
    /// The embedded store could not be opened or locked.
    #[error("{0}")]
    Embedded(#[from] EmbeddedError),
    /// `reseal` on the embedded store: PostgreSQL-only by nature.
    #[error(
        "`keyledger-replay reseal` is for PostgreSQL only: it seals logs written before \
         personal data was sealed, and an embedded (SQLite) log is sealed from its first \
         event, so there is nothing to reseal"
    )]
    NothingToReseal,
    /// The PostgreSQL migrations could not be applied to a copy's target.
    #[error("migrating the target: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// PostgreSQL's chain trigger computed another hash than the embedded store
    /// holds for the same event: the copy is rolled back.
    #[error(
        "event {aggregate_type} {aggregate_id} sequence {sequence} at global position \
         {global_position}: PostgreSQL chains it to {postgres}, the embedded log holds \
         {sqlite}; nothing was copied"
    )]
    ChainMismatch {
        /// Aggregate type.
        aggregate_type: String,
        /// Aggregate id.
        aggregate_id: String,
        /// Sequence in the aggregate.
        sequence: i64,
        /// Position in the log.
        global_position: i64,
        /// Hex of the hash the embedded log holds.
        sqlite: String,
        /// Hex of the hash PostgreSQL's trigger computed.
        postgres: String,
    },
}

/// Opens a small pool: the tool runs one command at a time, and a rebuild holds a
/// single transaction, so more connections would only take slots from the server.
///
/// The first connection is opened directly: a pool retries a refused connection
/// until its acquire timeout and then reports only "pool timed out", while an
/// operator with a wrong URL deserves the real reason at once.
pub async fn connect(database_url: &str) -> Result<PgPool, ReplayError> {
    connect_with(database_url, 2).await
}

/// [`connect`] with room for `max_connections` (`reseal` verifies on two
/// connections while its own transaction holds a third).
pub async fn connect_with(database_url: &str, max_connections: u32) -> Result<PgPool, ReplayError> {
    let options = PgConnectOptions::from_str(database_url)?;
    let first = PgConnection::connect_with(&options).await?;
    first.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Opens the log for the read commands: [`connect`] for PostgreSQL, or the data
/// directory's database read-only (see [`open_embedded_read_only`]).
pub async fn open_log(location: &StoreLocation) -> Result<LogDb, ReplayError> {
    Ok(match location {
        StoreLocation::Postgres(url) => LogDb::Postgres(connect(url).await?),
        StoreLocation::Embedded(dir) => LogDb::Sqlite(open_embedded_read_only(dir).await?),
    })
}

/// Opens `<data_dir>/keyledger.db` read-only, beside a running server or not:
/// readers never take the directory's lock, and in WAL mode they neither block
/// the server's writer nor wait for it. Nothing is created: a missing database is
/// an error that says where the tool looked. Two connections: a command streams
/// on one while it looks up data keys on the other.
pub async fn open_embedded_read_only(data_dir: &Path) -> Result<SqlitePool, ReplayError> {
    let path = data_dir.join(DATABASE_FILE);
    if !path.is_file() {
        return Err(ReplayError::NoEmbeddedDatabase(path));
    }
    // The durability setting only matters for writes; a reader never writes.
    let options = connect_options(&path, Durability::Full).read_only(true);
    Ok(SqlitePoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

/// Opens `<data_dir>/keyledger.db` read-write for the tools that write beside a
/// running server (`rebuild`, which attaches its scratch file, and `rebuild
/// --switch`, which builds and swaps tables in the live file). The directory's
/// lock is not taken and nothing is migrated (a tool newer than the server must
/// not change the server's schema under it); writes wait for the server's writer
/// through the busy timeout, like another process's would. Three connections: a
/// command's own transaction, the data-key look-ups, and a reader.
pub async fn open_embedded_read_write(data_dir: &Path) -> Result<SqlitePool, ReplayError> {
    let path = data_dir.join(DATABASE_FILE);
    if !path.is_file() {
        return Err(ReplayError::NoEmbeddedDatabase(path));
    }
    Ok(SqlitePoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(connect_options(&path, Durability::Full))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_means_postgres_and_an_empty_one_is_unset() {
        let dir = Path::new("data");
        assert_eq!(
            StoreLocation::choose(Some("postgres://db/k"), dir),
            StoreLocation::Postgres("postgres://db/k".into())
        );
        for unset in [None, Some(""), Some("  ")] {
            assert_eq!(
                StoreLocation::choose(unset, dir),
                StoreLocation::Embedded(dir.into())
            );
        }
    }
}
