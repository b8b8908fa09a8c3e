//! The embedded event log as cqrs-es sees it: sqlite-es reads over the readers,
//! and appends go to the embedded engine's chained group committer
//! ([`keyledger_storage::AppendQueue`]). sqlite-es's own `persist` is never
//! called (it would fail on `chain_hash NOT NULL`, loudly).
//!
//! Two event repositories remain because the mechanisms differ: PostgreSQL
//! chains events in a trigger and numbers them from a sequence inside
//! the transaction ([`crate::postgres_events`]), while SQLite has no SHA-256 in
//! SQL and numbers events under its single writer's lock, in groups.

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use keyledger_storage::{AppendError, AppendQueue, EmbeddedDatabase, EventRow};
use serde_json::Value;
use sqlite_es::SqliteEventRepository;

/// The embedded event log: sqlite-es for reads, the chained appender for writes.
pub struct SqliteChainedEventRepository {
    reads: SqliteEventRepository,
    appends: AppendQueue,
}

impl SqliteChainedEventRepository {
    /// Reads through the database's readers; appends go to its group committer.
    pub fn new(database: &EmbeddedDatabase) -> Self {
        Self {
            reads: SqliteEventRepository::new(database.readers().clone()),
            appends: database.appends().clone(),
        }
    }

    async fn append<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
    ) -> Result<(), PersistenceError> {
        self.appends
            .append(A::TYPE, rows(events)?)
            .await
            .map_err(persistence_error)
    }

    /// Writes each part's events (one aggregate's, in sequence order) as one
    /// append of the group committer: all, or none when any part's first
    /// sequence is taken ([`PersistenceError::OptimisticLockError`]).
    pub async fn append_together(
        &self,
        parts: &[(&'static str, Vec<SerializedEvent>)],
    ) -> Result<(), PersistenceError> {
        let mut rows_of = Vec::with_capacity(parts.len());
        for (aggregate_type, events) in parts {
            rows_of.push((*aggregate_type, rows(events)?));
        }
        self.appends
            .append_together(rows_of)
            .await
            .map_err(persistence_error)
    }
}

/// The rows to insert for `events`, their payload and metadata as the exact
/// text that is stored and hashed.
fn rows(events: &[SerializedEvent]) -> Result<Vec<EventRow>, PersistenceError> {
    let mut rows = Vec::with_capacity(events.len());
    for event in events {
        rows.push(EventRow {
            aggregate_id: event.aggregate_id.clone(),
            sequence: i64::try_from(event.sequence)
                .map_err(|_| refused(AppendError::OutOfRange))?,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            payload: serde_json::to_string(&event.payload)?,
            metadata: serde_json::to_string(&event.metadata)?,
        });
    }
    Ok(rows)
}

/// How cqrs-es hears of a refused append: a lost race as the optimistic-lock
/// error it retries on, a connection that could not be had as postgres-es
/// reports one, anything else as unknown.
fn persistence_error(error: AppendError) -> PersistenceError {
    match error {
        AppendError::Conflict => PersistenceError::OptimisticLockError,
        AppendError::GroupFailed {
            connection: true, ..
        } => PersistenceError::ConnectionError(Box::new(error)),
        other => refused(other),
    }
}

fn refused(why: AppendError) -> PersistenceError {
    PersistenceError::UnknownError(Box::new(why))
}

impl PersistedEventRepository for SqliteChainedEventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.reads.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        if snapshot_update.is_some() {
            return Err(refused(AppendError::SnapshotsUnsupported));
        }
        if events.is_empty() {
            return Ok(());
        }
        self.append::<A>(events).await
    }

    // Never called by Keyledger (replays read the feed). sqlite-es's streams run
    // in a spawned task that unwraps database errors, so they are refused here
    // rather than delegated.
    async fn stream_events<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        Err(refused(AppendError::StreamingUnsupported))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Err(refused(AppendError::StreamingUnsupported))
    }
}
