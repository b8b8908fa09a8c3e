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
//!   hash recomputed by PostgreSQL and compared, so the copy carries its tamper
//!   evidence instead of trusting the file it came from.
//!
//! Every output opens personal data first ([`personal`]): clear values, or
//! `[erased]` once their owner's key is gone; never ciphertext.
//!
//! Back ends (decision 0011): every command takes the storage layer's
//! [`Database`] handle, [`open`]ed by the server's rule. Every command runs on
//! both except `reseal`, which PostgreSQL alone needs (an embedded log is sealed
//! from its first event): `history`, `as-of`, `timeline`, `export` and `verify`
//! open the embedded store read-only beside a running server; `rebuild` and
//! `rebuild --switch` open it read-write without its lock (they work beside the
//! server); `seed` and `copy-to-postgres` take the data directory's lock, so the
//! server must be stopped.
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
use keyledger_storage::{Durability, EmbeddedDatabase, EmbeddedError, EmbeddedSettings};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

pub use keyledger_storage::Database;

pub use copy::{copy_to_postgres, CopyOptions, CopyReport, RelayStart};
pub use export::{export, ExportFormat, ExportOptions, ExportReport, ExportSource};
pub use history::{history, History, HistoryEntry, OutputFormat, UserRef};
pub use personal::{data_key_wrapping, email_index_key, lookup_email_index_key};
pub use rebuild::{rebuild, RebuildOptions, RebuildReport, TableComparison};
pub use reseal::{reseal, ResealLink, ResealOptions, ResealReport, ResealSigner};
pub use seed::{seed, SeedOptions, SeedReport};
pub use switch::{rebuild_switch, SwitchOptions, SwitchReport};
pub use timeline::{as_of, parse_time, timeline, Timeline, TimelineEntry};
pub use verify::{verify, Failure, VerifyOptions, VerifyReport};

/// The data directory the tool reads when neither `--database-url` nor
/// `DATABASE_URL` names a PostgreSQL database and `--data-dir` /
/// `KEYLEDGER_DATA_DIR` say nothing: the server's default.
pub const DEFAULT_DATA_DIR: &str = "keyledger-data";
/// The server's data key wrapping key file in a data directory (its default place).
pub const DATA_KEY_WRAPPING_KEY_FILE: &str = "data-key-wrapping.key";
/// The server's email index key file in a data directory (its default place, as
/// `KEYLEDGER_EMAIL_INDEX_KEY_FILE`'s default): `--user <email>` looks there when no
/// key is given.
pub const EMAIL_INDEX_KEY_FILE: &str = "email-index.key";

/// How a command opens the store, which decides what it may do beside a
/// running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only (`history`, `as-of`, `timeline`, `export`, `verify`): the
    /// embedded store is opened read-only beside a running server.
    Read,
    /// Writes beside a running server (`rebuild`, `rebuild --switch`): the
    /// embedded store is opened read-write without its lock, nothing migrated.
    WriteBesideServer,
    /// Owns the store (`seed`): the embedded data directory's lock is taken
    /// (the server must be stopped) and a missing one is created and migrated.
    Own,
}

/// The server's rule for which store: a database URL that is set and not
/// empty names PostgreSQL; `None` means the data directory's embedded store.
pub fn postgres_url(database_url: Option<&str>) -> Option<&str> {
    database_url.map(str::trim).filter(|url| !url.is_empty())
}

/// Opens the store a command works on, by the server's rule (decision 0011):
/// a database URL that is set and not empty means PostgreSQL ([`connect`],
/// never migrated: a tool newer than the server must not change its schema),
/// otherwise the embedded store of `data_dir`, as `access` says.
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
    access: Access,
) -> Result<Database, ReplayError> {
    if let Some(url) = postgres_url(database_url) {
        return Ok(Database::from_pool(connect(url).await?));
    }
    // Two readers: a command streams on one while it looks up data keys on
    // the other.
    let embedded = match access {
        Access::Read => EmbeddedDatabase::open_read_only(data_dir, 2).await,
        Access::WriteBesideServer => EmbeddedDatabase::open_beside_server(data_dir, 2).await,
        // A benchmark's disposable data: no fsync per chunk (a crash of the
        // seed leaves a prefix of whole chunks, which is still a consistent log).
        Access::Own => {
            EmbeddedDatabase::open(&EmbeddedSettings {
                data_dir: data_dir.to_owned(),
                durability: Durability::Normal,
                readers: 1,
            })
            .await
        }
    };
    match embedded {
        Ok(embedded) => Ok(Database::from_embedded(embedded)),
        Err(EmbeddedError::Missing(path)) => Err(ReplayError::NoEmbeddedDatabase(path)),
        Err(e) => Err(e.into()),
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
    /// The database could not be opened again (for a reading thread).
    #[error("{0}")]
    Open(#[from] keyledger_storage::OpenError),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_means_postgres_and_an_empty_one_is_unset() {
        assert_eq!(
            postgres_url(Some("postgres://db/k")),
            Some("postgres://db/k")
        );
        for unset in [None, Some(""), Some("  ")] {
            assert_eq!(postgres_url(unset), None);
        }
    }
}
