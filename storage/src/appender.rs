//! The embedded event log's appender.
//!
//! PostgreSQL chains every event in a trigger and hands out positions from a
//! sequence. SQLite has no SHA-256 in SQL, so the embedded engine does both
//! itself, inside `BEGIN IMMEDIATE` transactions on the single writer
//! connection, each committing a group of appends ([`AppendQueue`]): positions
//! are handed out under the write lock and are therefore commit order, and the
//! chain hash is `keyledger_domain::chain`'s, the same bytes the trigger hashes.

use chrono::Utc;
use keyledger_domain::chain::{CanonicalEvent, Hash, ZERO_HASH};
use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::embedded::CommitSignal;

/// SQLite's extended result code for a PRIMARY KEY violation: another writer
/// committed this aggregate's sequence first. The only code that means a lost
/// race (the unique index on `global_position` cannot be violated under the
/// write lock; if it were, that is a bug and reported as such).
const SQLITE_CONSTRAINT_PRIMARYKEY: &str = "1555";

/// Why an append was not written.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another append committed this aggregate's sequence first: a lost race,
    /// which the caller may retry on fresh state.
    #[error("another append committed this sequence first")]
    Conflict,
    /// The same refusal as the PostgreSQL trigger's: an event can only follow
    /// its aggregate's previous one.
    #[error("event {sequence} of {aggregate_type} {aggregate_id} has no predecessor to chain to")]
    MissingPredecessor {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
    },
    /// Keyledger stores no snapshots (optimistic concurrency is enough).
    #[error("the embedded event log stores no snapshots")]
    SnapshotsUnsupported,
    /// sqlite-es's streams unwrap database errors inside a spawned task.
    #[error("streaming events is not supported by the embedded event log")]
    StreamingUnsupported,
    #[error("sequence or position out of range")]
    OutOfRange,
    /// The group committer is gone (the runtime is shutting down).
    #[error("the embedded event log's committer has stopped")]
    CommitterStopped,
    /// The append's group could not be committed; nothing of it was written.
    /// `connection` says whether a connection could not be had (including
    /// SQLite's busy timeout: another process holding the write lock), as
    /// postgres-es sorts its errors.
    #[error("the group of appends could not be committed: {why}")]
    GroupFailed { why: String, connection: bool },
}

/// An event ready to insert, its payload and metadata as the exact JSON text
/// that is stored and hashed.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: String,
    pub metadata: String,
}

/// Appends waiting for the group committer.
///
/// Every write of the process goes through one connection, and with `full`
/// durability every commit waits for its own WAL sync; a request also waits for
/// each of its statements' round trips to sqlx's connection thread, during which
/// nobody else can use the connection. So one task takes whatever appends are
/// waiting when it is free (up to [`MAX_GROUP`]) and commits them in ONE
/// transaction: one `BEGIN`, one read of the log's head, one sync, one
/// `COMMIT` for all of them. Each append still stands or falls alone: a lost race
/// (the PRIMARY KEY) aborts only its own statement, and an append of several
/// events runs under a savepoint. Its caller hears back only after the `COMMIT`:
/// nothing is acknowledged before it is on disk.
#[derive(Clone)]
pub struct AppendQueue(mpsc::UnboundedSender<PendingAppend>);

/// Appends committed together at most (a group holds the write lock for as long
/// as its inserts take: about 0.1 ms each).
const MAX_GROUP: usize = 128;

/// One append as the committer takes it: the events of one aggregate, or of
/// several that must be written together (all or none).
struct PendingAppend {
    parts: Vec<(&'static str, Vec<EventRow>)>,
    reply: oneshot::Sender<Result<(), AppendError>>,
}

impl PendingAppend {
    fn rows(&self) -> usize {
        self.parts.iter().map(|(_, rows)| rows.len()).sum()
    }
}

impl AppendQueue {
    /// Starts the committer on the current runtime; it ends when the last queue
    /// handle is dropped.
    pub(crate) fn start(writer: SqlitePool, commits: CommitSignal) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(commit_groups(writer, commits, receiver));
        Self(sender)
    }

    /// Appends `rows` (one aggregate's events, in sequence order); answers once
    /// their group is committed. Sequences start at 1: a 0 has nothing to follow.
    pub async fn append(
        &self,
        aggregate_type: &'static str,
        rows: Vec<EventRow>,
    ) -> Result<(), AppendError> {
        self.append_together(vec![(aggregate_type, rows)]).await
    }

    /// Appends the events of several aggregates (each part one aggregate's, in
    /// sequence order) as one append: all of them are written, or, should any
    /// part lose its race or have nothing to follow, none. Answers once their
    /// group is committed.
    pub async fn append_together(
        &self,
        parts: Vec<(&'static str, Vec<EventRow>)>,
    ) -> Result<(), AppendError> {
        for (aggregate_type, rows) in &parts {
            if let Some(row) = rows.iter().find(|row| row.sequence < 1) {
                return Err(AppendError::MissingPredecessor {
                    aggregate_type: (*aggregate_type).to_owned(),
                    aggregate_id: row.aggregate_id.clone(),
                    sequence: row.sequence,
                });
            }
        }
        let (reply, outcome) = oneshot::channel();
        self.0
            .send(PendingAppend { parts, reply })
            .map_err(|_| AppendError::CommitterStopped)?;
        outcome.await.map_err(|_| AppendError::CommitterStopped)?
    }
}

async fn commit_groups(
    writer: SqlitePool,
    commits: CommitSignal,
    mut queue: mpsc::UnboundedReceiver<PendingAppend>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        match commit_group(&writer, &group).await {
            Ok(outcomes) => {
                // Followers wake for events only, not for a group all refused.
                if outcomes.iter().any(Result::is_ok) {
                    commits.committed();
                }
                for (append, outcome) in group.drain(..).zip(outcomes) {
                    let _ = append.reply.send(outcome);
                }
            }
            // Nothing of the group was committed (the transaction was rolled
            // back when it was dropped).
            Err(error) => {
                let connection = is_connection_error(&error);
                let why = error.to_string();
                for append in group.drain(..) {
                    let _ = append.reply.send(Err(AppendError::GroupFailed {
                        why: why.clone(),
                        connection,
                    }));
                }
            }
        }
    }
}

/// Commits `group` in one transaction, with each append's own outcome; an error
/// means the whole group failed and nothing was committed.
async fn commit_group(
    writer: &SqlitePool,
    group: &[PendingAppend],
) -> Result<Vec<Result<(), AppendError>>, sqlx::Error> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let last: Option<(i64, i64)> = sqlx::query_as(
        "SELECT global_position, recorded_at FROM events
          ORDER BY global_position DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (mut position, last_recorded_at) = last.unwrap_or((0, i64::MIN));
    // One time per transaction, like PostgreSQL's now(); never earlier than the
    // log's last event, so recorded_at follows position order even if the clock
    // steps back (the feed finds positions by time).
    let recorded_at = Utc::now().timestamp_micros().max(last_recorded_at);
    let mut outcomes = Vec::with_capacity(group.len());
    for append in group {
        // A lost race can only hit the first event of an aggregate's part
        // (sequences are consecutive), which aborts that one statement and
        // nothing else; an append of several events is guarded so none of it
        // stays.
        let guarded = append.rows() > 1;
        if guarded {
            sqlx::query("SAVEPOINT append").execute(&mut *tx).await?;
        }
        let before = position;
        match insert_append(&mut tx, append, &mut position, recorded_at).await {
            Ok(()) => outcomes.push(Ok(())),
            Err(Refusal::Database(error)) => return Err(error),
            Err(refusal) => {
                if guarded {
                    sqlx::query("ROLLBACK TO append").execute(&mut *tx).await?;
                }
                // Positions stay gapless: the refused append took none.
                position = before;
                outcomes.push(Err(refusal.into_append_error()));
            }
        }
        if guarded {
            sqlx::query("RELEASE append").execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Why one append of a group was not written.
enum Refusal {
    /// Another append committed this aggregate's sequence first.
    Conflict,
    MissingPredecessor {
        aggregate_type: &'static str,
        aggregate_id: String,
        sequence: i64,
    },
    /// Anything else: the transaction may be gone, so the group fails.
    Database(sqlx::Error),
}

impl Refusal {
    fn into_append_error(self) -> AppendError {
        match self {
            Self::Conflict => AppendError::Conflict,
            Self::MissingPredecessor {
                aggregate_type,
                aggregate_id,
                sequence,
            } => AppendError::MissingPredecessor {
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id,
                sequence,
            },
            Self::Database(error) => AppendError::GroupFailed {
                connection: is_connection_error(&error),
                why: error.to_string(),
            },
        }
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(e)
                if e.code().as_deref() == Some(SQLITE_CONSTRAINT_PRIMARYKEY) =>
            {
                Self::Conflict
            }
            _ => Self::Database(error),
        }
    }
}

/// Inserts one append's events at the positions after `position`, each chained
/// to its aggregate's previous event (written by this transaction or before).
async fn insert_append(
    tx: &mut Transaction<'_, Sqlite>,
    append: &PendingAppend,
    position: &mut i64,
    recorded_at: i64,
) -> Result<(), Refusal> {
    for (aggregate_type, rows) in &append.parts {
        insert_rows(tx, aggregate_type, rows, position, recorded_at).await?;
    }
    Ok(())
}

/// Inserts one aggregate's events of an append.
async fn insert_rows(
    tx: &mut Transaction<'_, Sqlite>,
    aggregate_type: &'static str,
    rows: &[EventRow],
    position: &mut i64,
    recorded_at: i64,
) -> Result<(), Refusal> {
    // The part's event written last, which its next event usually follows.
    let mut previous: Option<(&str, i64, Hash)> = None;
    for row in rows {
        *position += 1;
        let before = match previous {
            Some((id, sequence, hash))
                if id == row.aggregate_id && sequence + 1 == row.sequence =>
            {
                hash
            }
            _ if row.sequence == 1 => ZERO_HASH,
            _ => predecessor(tx, aggregate_type, row).await?,
        };
        let hash = CanonicalEvent {
            aggregate_type,
            aggregate_id: &row.aggregate_id,
            sequence: row.sequence,
            event_type: &row.event_type,
            event_version: &row.event_version,
            payload: &row.payload,
            metadata: &row.metadata,
            recorded_at_micros: recorded_at,
            tx_id: 0,
            global_position: *position,
        }
        .chain_hash(&before);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata, global_position,
                                 tx_id, recorded_at, chain_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10)",
        )
        .bind(aggregate_type)
        .bind(&row.aggregate_id)
        .bind(row.sequence)
        .bind(&row.event_type)
        .bind(&row.event_version)
        .bind(&row.payload)
        .bind(&row.metadata)
        .bind(*position)
        .bind(recorded_at)
        .bind(hash.as_slice())
        .execute(&mut **tx)
        .await?;
        previous = Some((&row.aggregate_id, row.sequence, hash));
    }
    Ok(())
}

/// The chain hash of the aggregate's event before `row`, which must exist.
async fn predecessor(
    tx: &mut Transaction<'_, Sqlite>,
    aggregate_type: &'static str,
    row: &EventRow,
) -> Result<Hash, Refusal> {
    let stored: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT chain_hash FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
    )
    .bind(aggregate_type)
    .bind(&row.aggregate_id)
    .bind(row.sequence - 1)
    .fetch_optional(&mut **tx)
    .await?;
    stored
        .and_then(|bytes| Hash::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| Refusal::MissingPredecessor {
            aggregate_type,
            aggregate_id: row.aggregate_id.clone(),
            sequence: row.sequence,
        })
}

/// Whether a failed group met a connection that could not be had (including
/// SQLite's busy timeout: another process holding the write lock); anything
/// else is unexpected. (A lost race never fails a group: it is one append's own
/// outcome.)
fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => e.code().as_deref().is_some_and(is_busy),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// SQLITE_BUSY (5) and its extended codes (their low byte is 5).
fn is_busy(code: &str) -> bool {
    code.parse::<i32>().is_ok_and(|c| c & 0xff == 5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedDatabase;

    fn pending(
        id: &str,
        sequences: &[i64],
    ) -> (PendingAppend, oneshot::Receiver<Result<(), AppendError>>) {
        let (reply, outcome) = oneshot::channel();
        let rows = sequences
            .iter()
            .map(|&sequence| EventRow {
                aggregate_id: id.to_owned(),
                sequence,
                event_type: "Probe".into(),
                event_version: "1.0".into(),
                payload: format!(r#"{{"Probe":{{"n":{sequence}}}}}"#),
                metadata: "{}".into(),
            })
            .collect();
        let append = PendingAppend {
            parts: vec![("probe", rows)],
            reply,
        };
        (append, outcome)
    }

    async fn temporary_database() -> (EmbeddedDatabase, std::path::PathBuf) {
        let data_dir = crate::testing::temp_data_dir("group-commit");
        let db = EmbeddedDatabase::open(&crate::testing::embedded_settings(&data_dir, 1))
            .await
            .unwrap();
        (db, data_dir)
    }

    async fn remove(db: EmbeddedDatabase, data_dir: std::path::PathBuf) {
        db.close().await;
        drop(db);
        let _ = std::fs::remove_dir_all(&data_dir);
    }

    #[tokio::test]
    async fn a_group_commits_together_and_each_append_stands_or_falls_alone() {
        let (db, data_dir) = temporary_database().await;
        let first = [pending("a", &[1]).0];
        let outcomes = commit_group(db.writer(), &first).await.unwrap();
        assert!(outcomes[0].is_ok());

        let group: Vec<PendingAppend> = [
            ("b", &[1, 2][..]),
            ("a", &[1][..]),    // taken: a lost race
            ("c", &[2][..]),    // nothing to follow
            ("a", &[2, 3][..]), // follows what the group's earlier appends left
            ("d", &[1, 3][..]), // its second event has nothing to follow: none stays
            ("e", &[1][..]),
        ]
        .iter()
        .map(|(id, sequences)| pending(id, sequences).0)
        .collect();
        let outcomes = commit_group(db.writer(), &group).await.unwrap();
        let kinds: Vec<&str> = outcomes
            .iter()
            .map(|o| match o {
                Ok(()) => "ok",
                Err(AppendError::Conflict) => "conflict",
                Err(e) if e.to_string().contains("no predecessor") => "gap",
                Err(e) => panic!("unexpected {e}"),
            })
            .collect();
        assert_eq!(kinds, ["ok", "conflict", "gap", "ok", "gap", "ok"]);

        let stored: Vec<(String, i64, i64, i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT aggregate_id, sequence, global_position, recorded_at, payload, chain_hash
               FROM events ORDER BY global_position",
        )
        .fetch_all(db.readers())
        .await
        .unwrap();
        let keys: Vec<(&str, i64, i64)> = stored
            .iter()
            .map(|(id, sequence, position, ..)| (id.as_str(), *sequence, *position))
            .collect();
        // Gapless positions: a refused append took none.
        assert_eq!(
            keys,
            [
                ("a", 1, 1),
                ("b", 1, 2),
                ("b", 2, 3),
                ("a", 2, 4),
                ("a", 3, 5),
                ("e", 1, 6)
            ]
        );
        // One transaction, one time, after the first group's.
        assert!(stored[1..].iter().all(|row| row.3 == stored[1].3));
        assert!(stored[0].3 <= stored[1].3);
        // Every hash chains to its aggregate's previous event.
        let mut last: std::collections::HashMap<&str, Hash> = Default::default();
        for (id, sequence, position, recorded_at, payload, hash) in &stored {
            let before = last.get(id.as_str()).copied().unwrap_or(ZERO_HASH);
            let expected = CanonicalEvent {
                aggregate_type: "probe",
                aggregate_id: id,
                sequence: *sequence,
                event_type: "Probe",
                event_version: "1.0",
                payload,
                metadata: "{}",
                recorded_at_micros: *recorded_at,
                tx_id: 0,
                global_position: *position,
            }
            .chain_hash(&before);
            assert_eq!(hash.as_slice(), expected.as_slice(), "{id} #{sequence}");
            last.insert(id, expected);
        }
        remove(db, data_dir).await;
    }

    #[tokio::test]
    async fn concurrent_appends_are_grouped_and_every_caller_hears_its_own_outcome() {
        let (db, data_dir) = temporary_database().await;
        let row = |id: String| EventRow {
            aggregate_id: id,
            sequence: 1,
            event_type: "Probe".into(),
            event_version: "1.0".into(),
            payload: "{}".into(),
            metadata: "{}".into(),
        };
        // 200 callers, half of them racing for the same 100 ids.
        let appends = (0..200).map(|n| {
            let queue = db.appends().clone();
            let id = format!("agg-{}", n % 100);
            async move { queue.append("probe", vec![row(id)]).await }
        });
        let outcomes = futures::future::join_all(appends).await;
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        let lost = outcomes
            .iter()
            .filter(|o| matches!(o, Err(AppendError::Conflict)))
            .count();
        assert_eq!((won, lost), (100, 100));
        let positions: Vec<i64> =
            sqlx::query_scalar("SELECT global_position FROM events ORDER BY global_position")
                .fetch_all(db.readers())
                .await
                .unwrap();
        assert_eq!(positions, (1..=100).collect::<Vec<_>>());
        // Queued together, committed together: far fewer commits than appends.
        let commits = *db.commits().subscribe().borrow();
        assert!(commits <= 4, "{commits} commits for 200 appends");
        remove(db, data_dir).await;
    }

    #[tokio::test]
    async fn an_append_of_several_aggregates_is_written_whole_or_not_at_all() {
        let (db, data_dir) = temporary_database().await;
        let rows = |id: &str, sequences: &[i64]| pending(id, sequences).0.parts.remove(0).1;
        let queue = db.appends();
        queue.append("probe", rows("a", &[1])).await.unwrap();
        // The second part's sequence is taken: the first part stays out too.
        let lost = queue
            .append_together(vec![("probe", rows("b", &[1])), ("probe", rows("a", &[1]))])
            .await;
        assert!(matches!(lost, Err(AppendError::Conflict)), "{lost:?}");
        queue
            .append_together(vec![
                ("probe", rows("a", &[2])),
                ("other", rows("a", &[1, 2])),
            ])
            .await
            .unwrap();
        let stored: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence, global_position
               FROM events ORDER BY global_position",
        )
        .fetch_all(db.readers())
        .await
        .unwrap();
        let stored: Vec<(&str, &str, i64, i64)> = stored
            .iter()
            .map(|(t, id, s, p)| (t.as_str(), id.as_str(), *s, *p))
            .collect();
        assert_eq!(
            stored,
            [
                ("probe", "a", 1, 1),
                ("probe", "a", 2, 2),
                ("other", "a", 1, 3),
                ("other", "a", 2, 4)
            ]
        );
        remove(db, data_dir).await;
    }

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
