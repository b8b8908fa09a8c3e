//! The PostgreSQL event log as cqrs-es sees it: postgres-es for everything one
//! aggregate does, and a commit of several aggregates' events in one
//! transaction, which postgres-es does not offer (it commits one aggregate at a
//! time). That commit uses postgres-es's own INSERT with the same values, so
//! the rows, and the chain the trigger computes for each, are what postgres-es
//! would have written.
//!
//! The embedded counterpart is [`crate::sqlite_events`]; the mechanisms differ
//! (a trigger chains and numbers events inside PostgreSQL's transaction, while
//! the embedded log does both in Rust under its single writer).

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;

/// postgres-es's INSERT (its column list, so the trigger fills the rest).
const INSERT_EVENT: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// PostgreSQL's SQLSTATE for a unique violation: with the primary key as the
/// table's only unique constraint, another writer committed this sequence first.
const UNIQUE_VIOLATION: &str = "23505";

/// The PostgreSQL event log: postgres-es (reads and one aggregate's commits are
/// its own, reached through `Deref`), plus commits spanning aggregates.
pub struct PostgresChainedEventRepository {
    events: PostgresEventRepository,
    pool: PgPool,
}

impl PostgresChainedEventRepository {
    pub fn new(pool: &PgPool) -> Self {
        Self {
            events: PostgresEventRepository::new(pool.clone()),
            pool: pool.clone(),
        }
    }

    /// Writes each part's events (one aggregate's, in sequence order) in ONE
    /// transaction: all, or none when any part's first sequence is taken (the
    /// primary key answers [`PersistenceError::OptimisticLockError`], as
    /// postgres-es reports it).
    pub async fn append_together(
        &self,
        parts: &[(&'static str, Vec<SerializedEvent>)],
    ) -> Result<(), PersistenceError> {
        let mut tx = self.pool.begin().await.map_err(persistence_error)?;
        for (aggregate_type, events) in parts {
            for event in events {
                let sequence = i64::try_from(event.sequence)
                    .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
                sqlx::query(INSERT_EVENT)
                    .bind(*aggregate_type)
                    .bind(event.aggregate_id.as_str())
                    .bind(sequence)
                    .bind(&event.event_type)
                    .bind(&event.event_version)
                    .bind(&event.payload)
                    .bind(&event.metadata)
                    .execute(&mut *tx)
                    .await
                    .map_err(persistence_error)?;
            }
        }
        tx.commit().await.map_err(persistence_error)
    }
}

impl std::ops::Deref for PostgresChainedEventRepository {
    type Target = PostgresEventRepository;

    fn deref(&self) -> &PostgresEventRepository {
        &self.events
    }
}

/// How cqrs-es hears of a failed commit, sorted as postgres-es sorts its own.
fn persistence_error(error: sqlx::Error) -> PersistenceError {
    match &error {
        sqlx::Error::Database(e) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            PersistenceError::ConnectionError(Box::new(error))
        }
        _ => PersistenceError::UnknownError(Box::new(error)),
    }
}
