//! Keyledger's storage layer: one database handle per process over PostgreSQL or
//! the embedded SQLite engine, with what lets each storage role be written once
//! for both:
//!
//! - [`Database`], the handle: opening and migrating either database; the back
//!   end is a property of the handle ([`Database::backend`]), not of each role;
//! - [`codec`]: value types that bind and decode as each database stores them
//!   today (ids are PostgreSQL `uuid` but SQLite TEXT), so one query text serves
//!   both;
//! - [`dialect`]: the few SQL fragments that differ (JSON paths, instants read
//!   from JSON, list membership, row locks), in one place;
//! - [`with_readers!`], [`with_writer!`] and [`with_transaction!`]: one body of
//!   role code expanded for both pools, so every write on SQLite goes through the
//!   single writer and none on PostgreSQL pays for a transaction it does not need;
//! - strategies where the mechanisms genuinely differ: scrubbing freed bytes
//!   ([`Database::scrub`]) and the exclusive turn ([`Database::turn`]).
#![forbid(unsafe_code)]

pub mod appender;
pub mod codec;
pub mod dialect;
pub mod embedded;
mod postgres;
mod scrub;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod turn;

pub use appender::{AppendError, AppendQueue, EventRow};
pub use codec::{Id, List, Micros};
pub use embedded::{
    connect_options, lock_data_dir, CommitSignal, Durability, EmbeddedDatabase, EmbeddedError,
    EmbeddedSettings, DATABASE_FILE,
};
pub use postgres::{connect_postgres, migrate_postgres};
pub use scrub::{checkpoint_wal, vacuum_full};
pub use turn::Turn;

use sqlx::PgPool;

/// Which database a handle is open on: what the dialect fragments and the few
/// strategies choose by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// Both back ends, for tests that run on each.
    pub const ALL: [Self; 2] = [Self::Postgres, Self::Sqlite];

    /// Its name, as logs and `/health` give it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// A value of one back end's type or the other's: the open pools behind a
/// [`Database`] ([`Engine`]), a connection, connect options. One generic type
/// instead of an enum per role: where the code for both is the same text,
/// [`per_backend!`] expands it once for each; where the mechanisms genuinely
/// differ, a `match` names both arms.
#[derive(Clone, Debug)]
pub enum PerBackend<P, S> {
    Postgres(P),
    Sqlite(S),
}

impl<P, S> PerBackend<P, S> {
    /// Which back end this value belongs to.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Borrows what is inside.
    pub fn as_ref(&self) -> PerBackend<&P, &S> {
        match self {
            Self::Postgres(value) => PerBackend::Postgres(value),
            Self::Sqlite(value) => PerBackend::Sqlite(value),
        }
    }

    /// Borrows what is inside, mutably.
    pub fn as_mut(&mut self) -> PerBackend<&mut P, &mut S> {
        match self {
            Self::Postgres(value) => PerBackend::Postgres(value),
            Self::Sqlite(value) => PerBackend::Sqlite(value),
        }
    }
}

/// The open engine behind a [`Database`]: PostgreSQL's pool or the embedded
/// engine. Public for the role macros and for the few places that take a back
/// end's own pools as they are (the event repository, the read side's store).
#[doc(hidden)]
pub type Engine = PerBackend<PgPool, EmbeddedDatabase>;

/// A connection (usually inside a transaction) on either back end: what a
/// follower that writes in its checkpoint's transaction is handed.
pub type Connection<'c> = PerBackend<&'c mut sqlx::PgConnection, &'c mut sqlx::SqliteConnection>;

/// Runs `$body` with `$x` bound to whatever a [`PerBackend`] value holds; the
/// body is expanded once per back end, so it is written once and typed for each.
#[macro_export]
macro_rules! per_backend {
    ($value:expr, |$x:ident| $body:expr) => {
        match $value {
            $crate::PerBackend::Postgres($x) => $body,
            $crate::PerBackend::Sqlite($x) => $body,
        }
    };
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Embedded(#[from] EmbeddedError),
}

/// The process's one database handle: cheap to clone (the pools inside are
/// shared), and every storage role is built from it.
#[derive(Clone, Debug)]
pub struct Database {
    engine: Engine,
}

impl Database {
    /// Connects to PostgreSQL (creating the database when missing) and applies
    /// the migrations.
    pub async fn open_postgres(url: &str, max_connections: u32) -> Result<Self, OpenError> {
        Ok(Self::from_pool(
            connect_postgres(url, max_connections).await?,
        ))
    }

    /// Opens (creating it when missing) a data directory's embedded database
    /// for a server: takes the directory's lock, applies the migrations.
    pub async fn open_embedded(settings: &EmbeddedSettings) -> Result<Self, OpenError> {
        Ok(Self::from_embedded(EmbeddedDatabase::open(settings).await?))
    }

    /// A handle on a PostgreSQL pool that is already migrated.
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            engine: Engine::Postgres(pool),
        }
    }

    /// A handle on an embedded database that is already open.
    pub fn from_embedded(database: EmbeddedDatabase) -> Self {
        Self {
            engine: Engine::Sqlite(database),
        }
    }

    /// The same database again, with pools of its own (at most `connections`
    /// for reads) on the calling runtime: for a thread that runs a runtime of
    /// its own, such as a tool's reading thread. Nothing is locked, created or
    /// migrated, and a read-only handle stays read-only.
    pub async fn reopen(&self, connections: u32) -> Result<Self, OpenError> {
        Ok(Self {
            engine: match &self.engine {
                Engine::Postgres(pool) => Engine::Postgres(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(connections.max(1))
                        .acquire_timeout(pool.options().get_acquire_timeout())
                        .connect_with((*pool.connect_options()).clone())
                        .await?,
                ),
                Engine::Sqlite(embedded) => Engine::Sqlite(embedded.reopen(connections).await?),
            },
        })
    }

    /// Which back end this is.
    pub fn backend(&self) -> Backend {
        self.engine.backend()
    }

    /// Which back end, for logs and `/health`.
    pub fn kind(&self) -> &'static str {
        self.backend().name()
    }

    #[doc(hidden)]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The PostgreSQL pool, when that is the back end: for what takes a pool
    /// as it is (the read side, postgres-es).
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.engine {
            Engine::Postgres(pool) => Some(pool),
            Engine::Sqlite(_) => None,
        }
    }

    /// The embedded engine, when that is the back end: for what needs its
    /// pools, commit signal or appender as they are (the read side, the event
    /// log).
    pub fn embedded(&self) -> Option<&EmbeddedDatabase> {
        match &self.engine {
            Engine::Postgres(_) => None,
            Engine::Sqlite(database) => Some(database),
        }
    }

    /// Closes the pools (the embedded WAL is checkpointed when its last
    /// connection closes).
    pub async fn close(&self) {
        match &self.engine {
            Engine::Postgres(pool) => pool.close().await,
            Engine::Sqlite(database) => database.close().await,
        }
    }
}

/// Runs `$body` with `$pool` bound to the pool reads go to: PostgreSQL's pool,
/// or the embedded engine's readers (which never block its writer). The body
/// is expanded once per back end, so it is written once and typed for each.
///
/// ```text
/// let holder: Option<Id> = with_readers!(db, |pool| {
///     sqlx::query_scalar(SQL).bind(digest).fetch_optional(pool).await?
/// });
/// ```
#[macro_export]
macro_rules! with_readers {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db.engine() {
            $crate::Engine::Postgres($pool) => $body,
            $crate::Engine::Sqlite(embedded) => {
                let $pool = embedded.readers();
                $body
            }
        }
    };
}

/// Runs `$body` with `$conn: &mut Connection` for writes. On SQLite it is the
/// single writer inside `BEGIN IMMEDIATE` (committed after the body), so writes
/// queue fairly and none fails half-way for having started as a read; on
/// PostgreSQL it is a pooled connection whose statements commit one by one, as
/// plain statements there always did: no `BEGIN`/`COMMIT` round trips for a
/// guarantee the statements do not need. Use `&mut *$conn` for each statement.
/// A body that needs its statements atomic on both uses [`with_transaction!`].
#[macro_export]
macro_rules! with_writer {
    ($db:expr, |$conn:ident| $body:expr) => {
        match $db.engine() {
            $crate::Engine::Postgres(pool) => {
                let mut connection = pool.acquire().await?;
                let $conn = &mut *connection;
                $body
            }
            $crate::Engine::Sqlite(embedded) => {
                let mut transaction = embedded.begin_write().await?;
                let $conn = &mut *transaction;
                let outcome = $body;
                transaction.commit().await?;
                outcome
            }
        }
    };
}

/// Runs `$body` with `$tx: &mut Connection` inside one transaction, committed
/// after the body and rolled back if it returns early: on SQLite the single
/// writer's `BEGIN IMMEDIATE`, on PostgreSQL a plain `BEGIN`. Use `&mut *$tx`
/// for each statement.
#[macro_export]
macro_rules! with_transaction {
    ($db:expr, |$tx:ident| $body:expr) => {
        match $db.engine() {
            $crate::Engine::Postgres(pool) => {
                let mut transaction = pool.begin().await?;
                let $tx = &mut *transaction;
                let outcome = $body;
                transaction.commit().await?;
                outcome
            }
            $crate::Engine::Sqlite(embedded) => {
                let mut transaction = embedded.begin_write().await?;
                let $tx = &mut *transaction;
                let outcome = $body;
                transaction.commit().await?;
                outcome
            }
        }
    };
}
