//! The ordered, checkpointable feed of the event log.
//!
//! postgres-es numbers events per aggregate only. We add `global_position`
//! (bigserial) and `tx_id` (the writing transaction's `xid8`). Neither is handed out
//! in commit order: transaction A can take position 5 and commit after B took 6, so a
//! reader that saw 6 and checkpointed it would never see 5.
//!
//! The fix: read only rows whose transaction is older than every transaction still
//! running (`tx_id < pg_snapshot_xmin(pg_current_snapshot())`) and order by
//! `(tx_id, global_position)`. Once a transaction id is below the snapshot's xmin, no
//! transaction with a smaller id can still commit, so everything before a checkpoint
//! is final and nothing is ever skipped. Per aggregate this order matches sequence
//! order, because a writer that lost nothing to a race started its transaction after
//! the previous writer committed. The cost: a long transaction anywhere in the
//! cluster holds the feed back until it ends.
//!
//! The embedded SQLite store needs none of this: all writes of a data directory
//! are serialised (one writer connection in the server, `BEGIN IMMEDIATE` for any
//! other process), and the appender hands out `global_position` under that write
//! lock, so position order is commit order and no position below one a reader has
//! seen can still commit. Its `tx_id` is always 0, so ordering by
//! `global_position` is ordering by `(tx_id, global_position)`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::sqlite::SqliteRow;
use sqlx::{PgPool, Row};
use tokio::sync::watch;

use crate::store::ReadStore;

/// A point in the feed; everything at or before it has been handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub tx_id: i64,
    pub global_position: i64,
}

impl Position {
    pub const START: Position = Position {
        tx_id: 0,
        global_position: 0,
    };
}

/// One row of the event log, as the feed delivers it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// Decodes a row selected with [`EVENT_COLUMNS`].
    ///
    /// Events stored in an older shape come out in the current one (see
    /// `keyledger_domain::upcasting`), with the version they were brought to.
    pub fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Self::decoded(row, row.try_get("recorded_at")?).map(Self::upcast)
    }

    /// Decodes a row of the embedded store selected with
    /// [`SQLITE_EVENT_COLUMNS`], upcast like [`Self::from_row`].
    pub fn from_sqlite_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        let recorded_at = micros_to_time(row.try_get("recorded_at")?, "recorded_at")?;
        Self::decoded(row, recorded_at).map(Self::upcast)
    }

    fn upcast(mut self) -> Self {
        if keyledger_domain::upcasting::is_outdated(
            &self.aggregate_type,
            &self.event_type,
            &self.event_version,
        ) {
            let (version, payload) = keyledger_domain::upcasting::upcast(
                &self.aggregate_type,
                &self.event_type,
                &self.event_version,
                std::mem::take(&mut self.payload),
            );
            self.event_version = version;
            self.payload = payload;
        }
        self
    }

    /// A row of either back end (`recorded_at` decoded by the caller, since the
    /// back ends store it differently).
    fn decoded<'r, R>(row: &'r R, recorded_at: DateTime<Utc>) -> Result<Self, sqlx::Error>
    where
        R: Row,
        &'r str: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Value: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Self {
            position: Position {
                tx_id: row.try_get("tx")?,
                global_position: row.try_get("global_position")?,
            },
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
            recorded_at,
        })
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }

    /// When it happened according to the command (falls back to storage time).
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.meta("occurred_at")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(self.recorded_at, |t| t.with_timezone(&Utc))
    }
}

/// Where an event sits and what it is, without its data.
#[derive(Debug, Clone)]
pub struct EventHeader {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored event {position:?} cannot be read: {reason}")]
    Corrupt { position: Position, reason: String },
    #[error("nats error: {0}")]
    Nats(String),
}

/// Why a stored payload did not deserialize, without serde's message: that can
/// quote the offending value, and payloads hold password and token hashes.
pub fn describe_payload_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "i/o error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected shape for its event type",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{kind} (line {}, column {})", e.line(), e.column())
}

/// An INTEGER of microseconds since 1970 (how the embedded store keeps the times
/// that hashes and signatures cover) as a time. Decoded by hand: sqlx would read
/// an INTEGER `DateTime` as seconds.
pub(crate) fn micros_to_time(micros: i64, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("{micros} microseconds is out of range for a time").into(),
    })
}

macro_rules! event_columns {
    () => {
        "tx_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id, sequence,
         event_type, event_version, payload, metadata, recorded_at"
    };
}

/// The columns of a [`StoredEvent`], for any reader of PostgreSQL's `events`
/// table (`tx_id`, an `xid8`, travels as a bigint). Pair with
/// [`StoredEvent::from_row`].
pub const EVENT_COLUMNS: &str = event_columns!();

const SELECT: &str = concat!("SELECT ", event_columns!(), " FROM events");

macro_rules! sqlite_event_columns {
    () => {
        "tx_id AS tx, global_position, aggregate_type, aggregate_id, sequence,
         event_type, event_version, payload, metadata, recorded_at"
    };
}

/// [`EVENT_COLUMNS`] for the embedded store (`tx_id` is a plain INTEGER there).
/// Pair with [`StoredEvent::from_sqlite_row`].
pub const SQLITE_EVENT_COLUMNS: &str = sqlite_event_columns!();

const SQLITE_SELECT: &str = concat!("SELECT ", sqlite_event_columns!(), " FROM events");

/// Reads the event log in feed order, from either back end. On the embedded
/// store it reads through the read-only pool, so followers never queue behind
/// the writer.
#[derive(Clone)]
pub struct EventFeed {
    store: ReadStore,
}

impl EventFeed {
    pub fn new(store: ReadStore) -> Self {
        Self { store }
    }

    /// The store this feed reads.
    pub fn store(&self) -> &ReadStore {
        &self.store
    }

    /// Up to `limit` final events after `after`. Deliberately unfiltered: a
    /// follower's position must move past every event, not only those it cares for.
    pub async fn read_after(
        &self,
        after: Position,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, FeedError> {
        match &self.store {
            ReadStore::Postgres(pool) => pg_read_after(pool, after, limit).await,
            ReadStore::Sqlite(store) => {
                // No xmin filter here or below: writes are serialised and positions
                // are handed out under the write lock, so every position below a
                // committed one is committed too (see the module documentation).
                let sql = format!(
                    "{SQLITE_SELECT}
                      WHERE global_position > $1
                      ORDER BY global_position
                      LIMIT $2"
                );
                let rows = sqlx::query(&sql)
                    .bind(after.global_position)
                    .bind(limit)
                    .fetch_all(&store.readers)
                    .await?;
                rows.iter().map(sqlite_row_to_event).collect()
            }
        }
    }

    /// Like [`Self::read_after`], but only events of `aggregate_types` carry their
    /// payload and metadata (the others come as `null`): one query, for followers
    /// that must move past every event but read few (the access view).
    pub async fn read_after_keeping(
        &self,
        after: Position,
        limit: i64,
        aggregate_types: &[&str],
    ) -> Result<Vec<StoredEvent>, FeedError> {
        match &self.store {
            ReadStore::Postgres(pool) => {
                pg_read_after_keeping(pool, after, limit, aggregate_types).await
            }
            ReadStore::Sqlite(store) => {
                let types = serde_json::to_string(aggregate_types)
                    .map_err(|e| FeedError::Database(sqlx::Error::Encode(e.into())))?;
                let rows = sqlx::query(
                    "SELECT tx_id AS tx, global_position, aggregate_type, aggregate_id,
                            sequence, event_type, event_version, recorded_at,
                            CASE WHEN aggregate_type IN (SELECT value FROM json_each($3))
                                 THEN payload ELSE 'null' END AS payload,
                            CASE WHEN aggregate_type IN (SELECT value FROM json_each($3))
                                 THEN metadata ELSE 'null' END AS metadata
                       FROM events
                      WHERE global_position > $1
                      ORDER BY global_position
                      LIMIT $2",
                )
                .bind(after.global_position)
                .bind(limit)
                .bind(types)
                .fetch_all(&store.readers)
                .await?;
                rows.iter().map(sqlite_row_to_event).collect()
            }
        }
    }

    /// Like [`Self::read_after`] but without payloads and metadata, for followers
    /// that only need to know which event happened where (the revocation view).
    pub async fn read_headers_after(
        &self,
        after: Position,
        limit: i64,
    ) -> Result<Vec<EventHeader>, FeedError> {
        match &self.store {
            ReadStore::Postgres(pool) => pg_read_headers_after(pool, after, limit).await,
            ReadStore::Sqlite(store) => {
                let rows = sqlx::query(
                    "SELECT tx_id AS tx, global_position, aggregate_type, aggregate_id,
                            event_type, metadata ->> '$.occurred_at' AS occurred_at,
                            recorded_at
                       FROM events
                      WHERE global_position > $1
                      ORDER BY global_position
                      LIMIT $2",
                )
                .bind(after.global_position)
                .bind(limit)
                .fetch_all(&store.readers)
                .await?;
                rows.iter()
                    .map(|row| {
                        let recorded_at =
                            micros_to_time(row.try_get("recorded_at")?, "recorded_at")?;
                        header(row, recorded_at)
                    })
                    .collect()
            }
        }
    }

    /// Positions and chain hashes only, in feed order: all the chain signer needs
    /// to extend its running log hash (see [`crate::chain`]), without the payloads.
    pub async fn read_chain_after(
        &self,
        after: Position,
        limit: i64,
    ) -> Result<Vec<(Position, [u8; 32])>, FeedError> {
        let rows: Vec<(i64, i64, Vec<u8>)> = match &self.store {
            ReadStore::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT tx_id::text::bigint AS tx, global_position, chain_hash
                       FROM events
                      WHERE (tx_id, global_position) > ($1::text::xid8, $2)
                        AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
                      ORDER BY tx_id, global_position
                      LIMIT $3",
                )
                .bind(after.tx_id.to_string())
                .bind(after.global_position)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            ReadStore::Sqlite(store) => {
                sqlx::query_as(
                    "SELECT tx_id AS tx, global_position, chain_hash
                       FROM events
                      WHERE global_position > $1
                      ORDER BY global_position
                      LIMIT $2",
                )
                .bind(after.global_position)
                .bind(limit)
                .fetch_all(&store.readers)
                .await?
            }
        };
        rows.into_iter()
            .map(|(tx_id, global_position, hash)| {
                let position = Position {
                    tx_id,
                    global_position,
                };
                let hash =
                    <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| FeedError::Corrupt {
                        position,
                        reason: "chain hash is not 32 bytes".into(),
                    })?;
                Ok((position, hash))
            })
            .collect()
    }

    /// Where one written event sits in the feed.
    pub async fn position_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<Option<Position>, FeedError> {
        let row: Option<(i64, i64)> = match &self.store {
            ReadStore::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT tx_id::text::bigint AS tx, global_position FROM events
                      WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
                )
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(sequence)
                .fetch_optional(pool)
                .await?
            }
            ReadStore::Sqlite(store) => {
                sqlx::query_as(
                    "SELECT tx_id AS tx, global_position FROM events
                      WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
                )
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(sequence)
                .fetch_optional(&store.readers)
                .await?
            }
        };
        Ok(row.map(position))
    }

    /// The latest committed event of one type in one aggregate's history, for
    /// followers that keep only the newest of a fact however old it is (the
    /// session cut-off) and so cannot start from a recent position.
    pub async fn latest_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
    ) -> Result<Option<StoredEvent>, FeedError> {
        const WHERE: &str = "WHERE aggregate_type = $1 AND aggregate_id = $2 AND event_type = $3
                             ORDER BY sequence DESC LIMIT 1";
        match &self.store {
            ReadStore::Postgres(pool) => {
                let row = sqlx::query(&format!("{SELECT} {WHERE}"))
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(event_type)
                    .fetch_optional(pool)
                    .await?;
                row.map(row_to_event).transpose()
            }
            ReadStore::Sqlite(store) => {
                let row = sqlx::query(&format!("{SQLITE_SELECT} {WHERE}"))
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind(event_type)
                    .fetch_optional(&store.readers)
                    .await?;
                row.as_ref().map(sqlite_row_to_event).transpose()
            }
        }
    }

    /// The newest final position (for lag figures and for "rebuild up to here").
    pub async fn head(&self) -> Result<Position, FeedError> {
        let row: Option<(i64, i64)> = match &self.store {
            ReadStore::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT tx_id::text::bigint AS tx, global_position FROM events
                      WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
                      ORDER BY tx_id DESC, global_position DESC LIMIT 1",
                )
                .fetch_optional(pool)
                .await?
            }
            ReadStore::Sqlite(store) => {
                sqlx::query_as(
                    "SELECT tx_id AS tx, global_position FROM events
                      ORDER BY global_position DESC LIMIT 1",
                )
                .fetch_optional(&store.readers)
                .await?
            }
        };
        Ok(row.map_or(Position::START, position))
    }

    /// The position just before the first event recorded at or after `since`;
    /// followers that only care about recent history start there.
    pub async fn position_before(&self, since: DateTime<Utc>) -> Result<Position, FeedError> {
        let row: Option<(i64, i64)> = match &self.store {
            ReadStore::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT tx_id::text::bigint AS tx, global_position FROM events
                      WHERE recorded_at >= $1
                      ORDER BY tx_id, global_position LIMIT 1",
                )
                .bind(since)
                .fetch_optional(pool)
                .await?
            }
            ReadStore::Sqlite(store) => {
                // `recorded_at` is INTEGER microseconds there.
                sqlx::query_as(
                    "SELECT tx_id AS tx, global_position FROM events
                      WHERE recorded_at >= $1
                      ORDER BY global_position LIMIT 1",
                )
                .bind(since.timestamp_micros())
                .fetch_optional(&store.readers)
                .await?
            }
        };
        match row {
            Some((tx_id, global_position)) => Ok(Position {
                tx_id,
                global_position: global_position - 1,
            }),
            None => self.head().await,
        }
    }
}

fn position((tx_id, global_position): (i64, i64)) -> Position {
    Position {
        tx_id,
        global_position,
    }
}

/// [`EventFeed::read_after`] on PostgreSQL, through any connection: a follower
/// that writes what it read does the read in its own transaction.
pub(crate) async fn pg_read_after<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    after: Position,
    limit: i64,
) -> Result<Vec<StoredEvent>, FeedError> {
    let sql = format!(
        "{SELECT}
          WHERE (tx_id, global_position) > ($1::text::xid8, $2)
            AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY tx_id, global_position
          LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(after.tx_id.to_string())
        .bind(after.global_position)
        .bind(limit)
        .fetch_all(executor)
        .await?;
    rows.into_iter().map(row_to_event).collect()
}

async fn pg_read_after_keeping(
    pool: &PgPool,
    after: Position,
    limit: i64,
    aggregate_types: &[&str],
) -> Result<Vec<StoredEvent>, FeedError> {
    let types: Vec<String> = aggregate_types.iter().map(|t| (*t).to_owned()).collect();
    let rows = sqlx::query(
        "SELECT tx_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
                sequence, event_type, event_version, recorded_at,
                CASE WHEN aggregate_type = ANY($4) THEN payload ELSE 'null'::json END
                    AS payload,
                CASE WHEN aggregate_type = ANY($4) THEN metadata ELSE 'null'::json END
                    AS metadata
           FROM events
          WHERE (tx_id, global_position) > ($1::text::xid8, $2)
            AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY tx_id, global_position
          LIMIT $3",
    )
    .bind(after.tx_id.to_string())
    .bind(after.global_position)
    .bind(limit)
    .bind(&types)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(row_to_event).collect()
}

async fn pg_read_headers_after(
    pool: &PgPool,
    after: Position,
    limit: i64,
) -> Result<Vec<EventHeader>, FeedError> {
    let rows = sqlx::query(
        "SELECT tx_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
                event_type, metadata ->> 'occurred_at' AS occurred_at, recorded_at
           FROM events
          WHERE (tx_id, global_position) > ($1::text::xid8, $2)
            AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY tx_id, global_position
          LIMIT $3",
    )
    .bind(after.tx_id.to_string())
    .bind(after.global_position)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| header(row, row.try_get("recorded_at")?))
        .collect()
}

/// An [`EventHeader`] from a row of either back end (`recorded_at` decoded by the
/// caller, since the back ends store it differently).
fn header<'r, R>(row: &'r R, recorded_at: DateTime<Utc>) -> Result<EventHeader, FeedError>
where
    R: Row,
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let occurred_at: Option<String> = row.try_get("occurred_at")?;
    Ok(EventHeader {
        position: Position {
            tx_id: row.try_get("tx")?,
            global_position: row.try_get("global_position")?,
        },
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        occurred_at: occurred_at
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map_or(recorded_at, |t| t.with_timezone(&Utc)),
    })
}

fn row_to_event(row: PgRow) -> Result<StoredEvent, FeedError> {
    Ok(StoredEvent::from_row(&row)?)
}

fn sqlite_row_to_event(row: &SqliteRow) -> Result<StoredEvent, FeedError> {
    Ok(StoredEvent::from_sqlite_row(row)?)
}

/// Wakes feed followers: on every commit that wrote events (LISTEN/NOTIFY on
/// PostgreSQL, the appender's in-process commit signal on the embedded store), and
/// on a short tick: on PostgreSQL because an unrelated long transaction that held
/// the feed back sends no notification when it ends, on the embedded store because
/// another process (the replay tools) may write without signalling this one.
#[derive(Clone)]
pub struct FeedSignal {
    rx: watch::Receiver<u64>,
}

impl FeedSignal {
    pub const TICK: Duration = Duration::from_millis(250);

    /// Starts the task that wakes followers. On PostgreSQL it listens for
    /// notifications and reconnects by itself when the database returns.
    pub fn start(store: &ReadStore) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(0u64);
        let handle = match store {
            ReadStore::Postgres(pool) => tokio::spawn(Self::listen(pool.clone(), tx)),
            ReadStore::Sqlite(store) => tokio::spawn(Self::follow(store.commits.clone(), tx)),
        };
        (Self { rx }, handle)
    }

    async fn listen(pool: PgPool, tx: watch::Sender<u64>) {
        let mut counter = 0u64;
        loop {
            match PgListener::connect_with(&pool).await {
                Ok(mut listener) => {
                    if listener.listen("keyledger_events").await.is_ok() {
                        // A notification or a quiet tick both wake followers;
                        // a listener error ends the loop and reconnects.
                        while let Ok(Ok(_)) | Err(_) =
                            tokio::time::timeout(Self::TICK, listener.recv()).await
                        {
                            counter += 1;
                            if tx.send(counter).is_err() {
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event notification listener cannot connect")
                }
            }
            counter += 1;
            if tx.send(counter).is_err() {
                return;
            }
            tokio::time::sleep(Self::TICK).await;
        }
    }

    /// The embedded store: a commit signalled in process or a quiet tick both
    /// wake followers. Without a signal (or once its sender is gone) only the
    /// tick remains.
    async fn follow(mut commits: Option<watch::Receiver<u64>>, tx: watch::Sender<u64>) {
        let mut counter = 0u64;
        loop {
            match commits.as_mut() {
                Some(rx) => {
                    if let Ok(Err(_)) = tokio::time::timeout(Self::TICK, rx.changed()).await {
                        commits = None;
                    }
                }
                None => tokio::time::sleep(Self::TICK).await,
            }
            counter += 1;
            if tx.send(counter).is_err() {
                return;
            }
        }
    }

    /// Returns after the next wake-up (or at once if one was missed).
    pub async fn wait(&mut self) {
        if self.rx.changed().await.is_err() {
            // The listener is gone (shutdown): fall back to the tick.
            tokio::time::sleep(Self::TICK).await;
        }
    }
}
