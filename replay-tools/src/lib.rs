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
//!   was sealed (decision 0010).
//!
//! Every output opens personal data first ([`personal`]): clear values, or
//! `[erased]` once their owner's key is gone; never ciphertext.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

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

use std::str::FromStr;
use std::time::Duration;

use keyledger_projections::FeedError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

pub use export::{export, ExportFormat, ExportOptions, ExportReport, ExportSource};
pub use history::{history, History, HistoryEntry, OutputFormat, UserRef};
pub use personal::email_index_key;
pub use rebuild::{rebuild, RebuildOptions, RebuildReport, TableComparison};
pub use reseal::{reseal, ResealLink, ResealOptions, ResealReport, ResealSigner};
pub use seed::{seed, SeedOptions, SeedReport};
pub use switch::{rebuild_switch, SwitchOptions, SwitchReport};
pub use timeline::{as_of, parse_time, timeline, Timeline, TimelineEntry};
pub use verify::{verify, Failure, VerifyOptions, VerifyReport};

/// Where the tool looks when neither `--database-url` nor `DATABASE_URL` says
/// otherwise: the local development database.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/keyledger";

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
    /// A read model exists in the fresh schema but not in `public`.
    #[error("the live read model `public.{0}` does not exist")]
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
    /// An event could not be encoded as JSON.
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
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
