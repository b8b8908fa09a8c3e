//! The PostgreSQL event log as cqrs-es sees it: postgres-es for reads, and our
//! own commits, as ONE multi-row `INSERT` for everything one command (or two
//! aggregates' commands together) writes, and single events of concurrent
//! commands committed together (see [`commit_groups`]).
//!
//! postgres-es commits with `BEGIN`, one `INSERT` per event and `COMMIT`: three
//! round trips for a refresh's one event, four for a login's two. A single
//! statement is a transaction of its own in PostgreSQL, as atomic and as
//! durable, so one statement carrying every row does the same in one round trip,
//! which is most of what a refresh costs PostgreSQL besides its commit. The rows
//! are postgres-es's own (its column list, the same values), so the chain the
//! trigger computes for each is what postgres-es would have written: the
//! trigger of a row sees the rows the same statement inserted before it
//! (PostgreSQL's rule for row-level `BEFORE` triggers), and `VALUES` inserts its
//! rows in the order they are listed, so an aggregate's second event finds its
//! first.
//!
//! The embedded counterpart is [`crate::sqlite_events`]; the mechanisms differ
//! (a trigger chains and numbers events inside PostgreSQL's transaction, while
//! the embedded log does both in Rust under its single writer).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};

/// postgres-es's column list, so the trigger fills the rest.
const INSERT_EVENTS: &str =
    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
     VALUES ";

/// The group commit's `INSERT` (see [`commit_groups`]): one array per column,
/// unnested in order; the payloads and metadata bound as postgres-es binds them
/// (`jsonb`, stored as `json`), so the stored text is the same.
const INSERT_GROUP: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[],
                          $6::jsonb[], $7::jsonb[])
     ON CONFLICT DO NOTHING
     RETURNING aggregate_type, aggregate_id, sequence";

/// Bind parameters per row.
const COLUMNS: usize = 7;

/// Rows one statement carries at most; a commit with more (an import's, say)
/// is written in a transaction of several such statements. Far below the
/// protocol's 65,535 parameters, and a statement text per row count stays
/// within what the connection's statement cache keeps.
const ROWS_PER_STATEMENT: usize = 64;

/// PostgreSQL's SQLSTATE for a unique violation: with the primary key as the
/// table's only unique constraint, another writer committed this sequence first.
const UNIQUE_VIOLATION: &str = "23505";

/// The PostgreSQL event log: postgres-es's reads (reached through `Deref`), and
/// commits of one aggregate's or several aggregates' events.
pub struct PostgresChainedEventRepository {
    events: PostgresEventRepository,
    pool: PgPool,
    /// The group committer of single events (see [`commit_groups`]).
    group: Mutex<Option<mpsc::UnboundedSender<PendingEvent>>>,
}

impl PostgresChainedEventRepository {
    pub fn new(pool: &PgPool) -> Self {
        Self {
            events: PostgresEventRepository::new(pool.clone()),
            pool: pool.clone(),
            group: Mutex::new(None),
        }
    }

    /// Commits one aggregate's events, as postgres-es's `persist` would; a
    /// snapshot (which Keyledger never takes) goes to postgres-es. A single
    /// event joins the group commit.
    pub async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        if snapshot_update.is_some() {
            return cqrs_es::persist::PersistedEventRepository::persist::<A>(
                &self.events,
                events,
                snapshot_update,
            )
            .await;
        }
        match events {
            [event] => self.append_single(A::TYPE, event.clone()).await,
            _ => {
                let rows: Vec<(&'static str, &SerializedEvent)> =
                    events.iter().map(|event| (A::TYPE, event)).collect();
                self.append_rows(&rows).await
            }
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
        let rows: Vec<(&'static str, &SerializedEvent)> = parts
            .iter()
            .flat_map(|(aggregate_type, events)| events.iter().map(|e| (*aggregate_type, e)))
            .collect();
        self.append_rows(&rows).await
    }

    async fn append_rows(
        &self,
        rows: &[(&'static str, &SerializedEvent)],
    ) -> Result<(), PersistenceError> {
        match rows.len() {
            0 => Ok(()),
            n if n <= ROWS_PER_STATEMENT => {
                // One statement: its own transaction, one round trip.
                insert(rows)?
                    .execute(&self.pool)
                    .await
                    .map(drop)
                    .map_err(persistence_error)
            }
            _ => {
                let mut tx = self.pool.begin().await.map_err(persistence_error)?;
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    insert(chunk)?
                        .execute(&mut *tx)
                        .await
                        .map_err(persistence_error)?;
                }
                tx.commit().await.map_err(persistence_error)
            }
        }
    }

    /// Hands one event to the group committer (started on first use, on the
    /// caller's runtime, and again should that runtime end) and waits for its
    /// outcome.
    async fn append_single(
        &self,
        aggregate_type: &'static str,
        event: SerializedEvent,
    ) -> Result<(), PersistenceError> {
        let queue = {
            let mut group = self.group.lock().unwrap_or_else(|e| e.into_inner());
            match group.as_ref().filter(|queue| !queue.is_closed()) {
                Some(queue) => queue.clone(),
                None => {
                    // First use, or the runtime that ran the committer is gone
                    // (an HTTP worker's, restarted after a panic).
                    let (sender, receiver) = mpsc::unbounded_channel();
                    tokio::spawn(commit_groups(self.pool.clone(), receiver));
                    group.insert(sender).clone()
                }
            }
        };
        let (reply, outcome) = oneshot::channel();
        queue
            .send(PendingEvent {
                aggregate_type,
                event,
                reply,
            })
            .map_err(|_| group_failed("the group committer has stopped", true))?;
        outcome
            .await
            .map_err(|_| group_failed("the group committer has stopped", true))?
    }
}

/// One event of one aggregate waiting for the group committer, and who waits
/// for its outcome.
struct PendingEvent {
    aggregate_type: &'static str,
    event: SerializedEvent,
    reply: oneshot::Sender<Result<(), PersistenceError>>,
}

/// Single events committed together at most.
const MAX_GROUP: usize = 256;

/// The group commit of single-event appends (a refresh's, a logout's, most
/// commands'). One task takes whatever appends are waiting when it is free
/// and writes them in ONE statement, so concurrent requests share a round
/// trip, a commit and its WAL flush instead of paying one each; under no load
/// a group is one event and costs what its own statement would. Each append
/// still stands or falls alone: `ON CONFLICT DO NOTHING ... RETURNING` says
/// which rows went in, and one that did not lost its race (its sequence was
/// taken), which is what a commit of its own would have been told. Nobody
/// hears back before the statement committed.
///
/// Only single events: an append of several events of one aggregate is all or
/// nothing, and with `DO NOTHING` its second event would chain to a first that
/// another writer committed. Two appends of one aggregate never share a group:
/// the second is decided on the first's outcome, told after the group commits.
async fn commit_groups(pool: PgPool, mut queue: mpsc::UnboundedReceiver<PendingEvent>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        match insert_group(&pool, &group).await {
            Ok(written) => {
                for (pending, written) in group.drain(..).zip(written) {
                    let outcome = if written {
                        Ok(())
                    } else {
                        Err(PersistenceError::OptimisticLockError)
                    };
                    let _ = pending.reply.send(outcome);
                }
            }
            Err(error) if group.len() == 1 => {
                if let Some(pending) = group.pop() {
                    let _ = pending.reply.send(Err(persistence_error(error)));
                }
            }
            Err(error) if !is_connection_error(&error) => {
                // A row the trigger refuses (one with no predecessor: a bug)
                // fails the whole statement; alone, each append gets its own
                // outcome.
                for pending in group.drain(..) {
                    let rows = [(pending.aggregate_type, &pending.event)];
                    let outcome = match insert(&rows) {
                        Ok(query) => query
                            .execute(&pool)
                            .await
                            .map(drop)
                            .map_err(persistence_error),
                        Err(e) => Err(e),
                    };
                    let _ = pending.reply.send(outcome);
                }
            }
            Err(error) => {
                // Whether the statement committed is unknown: each caller
                // trusts only the store from here (a reload).
                let why = error.to_string();
                let connection = is_connection_error(&error);
                for pending in group.drain(..) {
                    let _ = pending.reply.send(Err(group_failed(&why, connection)));
                }
            }
        }
    }
}

/// The group's `INSERT`; answers, for each append in order, whether its event
/// was written. Of two appends of the same event (two commands decided on the
/// same state) only the first is sent: the second lost its race either way.
async fn insert_group(pool: &PgPool, group: &[PendingEvent]) -> Result<Vec<bool>, sqlx::Error> {
    let mut sent = Vec::with_capacity(group.len());
    let mut seen = HashSet::with_capacity(group.len());
    let mut types = Vec::with_capacity(group.len());
    let mut ids = Vec::with_capacity(group.len());
    let mut sequences = Vec::with_capacity(group.len());
    let mut event_types = Vec::with_capacity(group.len());
    let mut versions = Vec::with_capacity(group.len());
    let mut payloads = Vec::with_capacity(group.len());
    let mut metadata = Vec::with_capacity(group.len());
    for pending in group {
        let event = &pending.event;
        let sequence = sequence_of(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let first = seen.insert((
            pending.aggregate_type,
            event.aggregate_id.as_str(),
            sequence,
        ));
        sent.push(first);
        if !first {
            continue;
        }
        types.push(pending.aggregate_type);
        ids.push(event.aggregate_id.as_str());
        sequences.push(sequence);
        event_types.push(event.event_type.as_str());
        versions.push(event.event_version.as_str());
        payloads.push(&event.payload);
        metadata.push(&event.metadata);
    }
    let written: HashSet<(String, String, i64)> = sqlx::query_as(INSERT_GROUP)
        .bind(types)
        .bind(ids)
        .bind(sequences)
        .bind(event_types)
        .bind(versions)
        .bind(payloads)
        .bind(metadata)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    Ok(group
        .iter()
        .zip(sent)
        .map(|(pending, sent)| {
            sent && sequence_of(&pending.event).is_ok_and(|sequence| {
                written.contains(&(
                    pending.aggregate_type.to_owned(),
                    pending.event.aggregate_id.clone(),
                    sequence,
                ))
            })
        })
        .collect())
}

fn sequence_of(event: &SerializedEvent) -> Result<i64, std::num::TryFromIntError> {
    i64::try_from(event.sequence)
}

/// Whether `error` means the database could not be reached (so nothing is
/// known about the statement), as postgres-es sorts its errors.
fn is_connection_error(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

/// A group's failure, told to each of its appends.
#[derive(Debug, thiserror::Error)]
#[error("the group commit of events failed: {0}")]
struct GroupFailed(String);

fn group_failed(why: &str, connection: bool) -> PersistenceError {
    let error = Box::new(GroupFailed(why.to_owned()));
    if connection {
        PersistenceError::ConnectionError(error)
    } else {
        PersistenceError::UnknownError(error)
    }
}

/// The `INSERT` of `rows`, in their order, with their values bound.
fn insert<'q>(
    rows: &[(&'static str, &'q SerializedEvent)],
) -> Result<Query<'q, Postgres, PgArguments>, PersistenceError> {
    let mut query = sqlx::query(statement_for(rows.len()));
    for (aggregate_type, event) in rows {
        let sequence = i64::try_from(event.sequence)
            .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        query = query
            .bind(*aggregate_type)
            .bind(event.aggregate_id.as_str())
            .bind(sequence)
            .bind(event.event_type.as_str())
            .bind(event.event_version.as_str())
            .bind(&event.payload)
            .bind(&event.metadata);
    }
    Ok(query)
}

/// The statement text for `rows` rows (1 to [`ROWS_PER_STATEMENT`]), written
/// once per process: sqlx prepares and caches a statement per distinct text.
fn statement_for(rows: usize) -> &'static str {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        (1..=ROWS_PER_STATEMENT)
            .map(|rows| {
                let mut sql = String::from(INSERT_EVENTS);
                for row in 0..rows {
                    sql.push_str(if row == 0 { "(" } else { ", (" });
                    for column in 0..COLUMNS {
                        let comma = if column == 0 { "" } else { ", " };
                        let _ = write!(sql, "{comma}${}", row * COLUMNS + column + 1);
                    }
                    sql.push(')');
                }
                sql
            })
            .collect()
    });
    &texts[rows - 1]
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
        _ if is_connection_error(&error) => PersistenceError::ConnectionError(Box::new(error)),
        _ => PersistenceError::UnknownError(Box::new(error)),
    }
}
