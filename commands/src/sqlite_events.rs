//! The embedded event log's appender (decision 0011, inventory #13–14).
//!
//! PostgreSQL chains every event in a trigger and hands out positions from a
//! sequence. SQLite has no SHA-256 in SQL, so this repository does both itself,
//! inside one `BEGIN IMMEDIATE` transaction on the single writer connection:
//! positions are handed out under the write lock and are therefore commit order,
//! and the chain hash is `keyledger_domain::chain`'s, the same bytes the trigger
//! hashes. Reads go to sqlite-es over the reader pool; sqlite-es's own `persist`
//! is never called (it would fail on `chain_hash NOT NULL`, loudly).

use std::collections::HashMap;

use chrono::Utc;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use keyledger_domain::chain::{CanonicalEvent, Hash, ZERO_HASH};
use serde_json::Value;
use sqlite_es::SqliteEventRepository;
use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};

use crate::embedded::{CommitSignal, EmbeddedDatabase};

/// SQLite's extended result code for a PRIMARY KEY violation: another writer
/// committed this aggregate's sequence first. The only code that means a lost
/// race (the unique index on `global_position` cannot be violated under the
/// write lock; if it were, that is a bug and reported as such).
const SQLITE_CONSTRAINT_PRIMARYKEY: &str = "1555";

/// Why the appender refused a commit (wrapped in a [`PersistenceError`]).
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The same refusal as the PostgreSQL trigger's: an event can only follow
    /// its aggregate's previous one.
    #[error("event {sequence} of {aggregate_type} {aggregate_id} has no predecessor to chain to")]
    MissingPredecessor {
        aggregate_type: String,
        aggregate_id: String,
        sequence: usize,
    },
    /// Keyledger stores no snapshots (see `store.rs`).
    #[error("the embedded event log stores no snapshots")]
    SnapshotsUnsupported,
    /// sqlite-es's streams unwrap database errors inside a spawned task.
    #[error("streaming events is not supported by the embedded event log")]
    StreamingUnsupported,
    #[error("sequence or position out of range")]
    OutOfRange,
}

/// The embedded event log: sqlite-es for reads, our own chained `persist`.
pub struct SqliteChainedEventRepository {
    reads: SqliteEventRepository,
    writer: SqlitePool,
    commits: CommitSignal,
}

impl SqliteChainedEventRepository {
    /// Reads through the database's readers, writes through its one writer, and
    /// wakes its in-process feed followers after each commit.
    pub fn new(database: &EmbeddedDatabase) -> Self {
        Self {
            reads: SqliteEventRepository::new(database.readers().clone()),
            writer: database.writer().clone(),
            commits: database.commits().clone(),
        }
    }

    async fn append<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
    ) -> Result<(), PersistenceError> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(persistence_error)?;
        let last: Option<(i64, i64)> = sqlx::query_as(
            "SELECT global_position, recorded_at FROM events
              ORDER BY global_position DESC LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(persistence_error)?;
        let (mut position, last_recorded_at) = last.unwrap_or((0, i64::MIN));
        // One time per transaction, like PostgreSQL's now(); never earlier than
        // the log's last event, so recorded_at follows position order even if the
        // clock steps back (the feed finds positions by time).
        let recorded_at = Utc::now().timestamp_micros().max(last_recorded_at);
        // Chain hashes written by this transaction, for events that follow one
        // another within it.
        let mut written: HashMap<(&str, usize), Hash> = HashMap::new();
        for event in events {
            position += 1;
            let sequence = event.sequence;
            let previous = match sequence.checked_sub(1) {
                Some(0) => ZERO_HASH,
                Some(before) => match written.get(&(event.aggregate_id.as_str(), before)) {
                    Some(hash) => *hash,
                    None => predecessor::<A>(&mut tx, &event.aggregate_id, sequence).await?,
                },
                // Sequences start at 1: a 0 has nothing to follow.
                None => return Err(missing_predecessor::<A>(&event.aggregate_id, sequence)),
            };
            // This exact text is stored and hashed.
            let payload = serde_json::to_string(&event.payload)?;
            let metadata = serde_json::to_string(&event.metadata)?;
            let sequence_column =
                i64::try_from(sequence).map_err(|_| refused(AppendError::OutOfRange))?;
            let hash = CanonicalEvent {
                aggregate_type: A::TYPE,
                aggregate_id: &event.aggregate_id,
                sequence: sequence_column,
                event_type: &event.event_type,
                event_version: &event.event_version,
                payload: &payload,
                metadata: &metadata,
                recorded_at_micros: recorded_at,
                tx_id: 0,
                global_position: position,
            }
            .chain_hash(&previous);
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata, global_position,
                                     tx_id, recorded_at, chain_hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10)",
            )
            .bind(A::TYPE)
            .bind(&event.aggregate_id)
            .bind(sequence_column)
            .bind(&event.event_type)
            .bind(&event.event_version)
            .bind(&payload)
            .bind(&metadata)
            .bind(position)
            .bind(recorded_at)
            .bind(hash.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(persistence_error)?;
            written.insert((event.aggregate_id.as_str(), sequence), hash);
        }
        tx.commit().await.map_err(persistence_error)?;
        self.commits.committed();
        Ok(())
    }
}

/// The chain hash of the aggregate's event `sequence - 1`, which must exist.
async fn predecessor<A: Aggregate>(
    tx: &mut Transaction<'_, Sqlite>,
    aggregate_id: &str,
    sequence: usize,
) -> Result<Hash, PersistenceError> {
    let previous = i64::try_from(sequence - 1).map_err(|_| refused(AppendError::OutOfRange))?;
    let stored: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT chain_hash FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .bind(previous)
    .fetch_optional(&mut **tx)
    .await
    .map_err(persistence_error)?;
    stored
        .and_then(|bytes| Hash::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| missing_predecessor::<A>(aggregate_id, sequence))
}

fn missing_predecessor<A: Aggregate>(aggregate_id: &str, sequence: usize) -> PersistenceError {
    refused(AppendError::MissingPredecessor {
        aggregate_type: A::TYPE.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        sequence,
    })
}

fn refused(why: AppendError) -> PersistenceError {
    PersistenceError::UnknownError(Box::new(why))
}

/// Sorts a database error the way postgres-es does: a lost race is an optimistic
/// lock error, a connection that could not be had (including SQLite's busy
/// timeout, another process holding the write lock) a connection error,
/// anything else unexpected.
fn persistence_error(error: sqlx::Error) -> PersistenceError {
    match &error {
        sqlx::Error::Database(e) => match e.code().as_deref() {
            Some(SQLITE_CONSTRAINT_PRIMARYKEY) => PersistenceError::OptimisticLockError,
            Some(code) if is_busy(code) => PersistenceError::ConnectionError(Box::new(error)),
            _ => PersistenceError::UnknownError(Box::new(error)),
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => PersistenceError::ConnectionError(Box::new(error)),
        _ => PersistenceError::UnknownError(Box::new(error)),
    }
}

/// SQLITE_BUSY (5) and its extended codes (their low byte is 5).
fn is_busy(code: &str) -> bool {
    code.parse::<i32>().is_ok_and(|c| c & 0xff == 5)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_codes_are_recognised_by_their_primary_code() {
        for busy in ["5", "261", "517", "773"] {
            assert!(is_busy(busy), "{busy}");
        }
        for other in ["1555", "2067", "19", "6"] {
            assert!(!is_busy(other), "{other}");
        }
    }
}
