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

use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyledger_storage::{
    per_backend, with_readers, Backend, Connection, Database, Engine, List, Micros,
};
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::sqlite::SqliteRow;
use sqlx::{PgPool, Row};
use tokio::sync::watch;

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
    /// Decodes a row of either back end selected with [`EVENT_COLUMNS`] (or
    /// [`SQLITE_EVENT_COLUMNS`]).
    ///
    /// Events stored in an older shape come out in the current one (see
    /// `keyledger_domain::upcasting`), with the version they were brought to.
    pub fn from_row<'r, R>(row: &'r R) -> Result<Self, sqlx::Error>
    where
        R: Row,
        &'r str: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Value: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Micros: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        // Payload and metadata the query left out for this event (see
        // [`EventFeed::read_after_keeping`]) read as `null`.
        let payload: Option<Value> = row.try_get("payload")?;
        let metadata: Option<Value> = row.try_get("metadata")?;
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
            payload: payload.unwrap_or_default(),
            metadata: metadata.unwrap_or_default(),
            recorded_at: row.try_get::<Micros, _>("recorded_at")?.0,
        }
        .upcast())
    }

    /// [`Self::from_row`], for callers that name the embedded store's rows.
    pub fn from_sqlite_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Self::from_row(row)
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

impl EventHeader {
    fn from_row<'r, R>(row: &'r R) -> Result<Self, sqlx::Error>
    where
        R: Row,
        &'r str: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Micros: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let occurred_at: Option<String> = row.try_get("occurred_at")?;
        let recorded_at = row.try_get::<Micros, _>("recorded_at")?.0;
        Ok(Self {
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

/// The columns of a [`StoredEvent`], for any reader of PostgreSQL's `events`
/// table (`tx_id`, an `xid8`, travels as a bigint). Pair with
/// [`StoredEvent::from_row`].
pub const EVENT_COLUMNS: &str = "tx_id::text::bigint AS tx, global_position, aggregate_type,
    aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at";

/// [`EVENT_COLUMNS`] for the embedded store (`tx_id` is a plain INTEGER there).
pub const SQLITE_EVENT_COLUMNS: &str = "tx_id AS tx, global_position, aggregate_type,
    aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at";

/// [`EVENT_COLUMNS`] of `backend`.
pub fn event_columns(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => EVENT_COLUMNS,
        Backend::Sqlite => SQLITE_EVENT_COLUMNS,
    }
}

/// Where the back ends' feeds genuinely differ: which rows are final and in
/// what order they come (see the module documentation). Every feed query is
/// written once around these pieces. Each query binds the position it reads
/// after as `$1` (the transaction id, as text for PostgreSQL's `xid8`) and `$2`
/// (the global position); the embedded store's condition reads `$2` only (sqlx
/// leaves an argument the statement does not name unbound).
pub(crate) struct FeedOrder {
    /// The transaction id as a bigint.
    tx: &'static str,
    /// Rows after the position `($1, $2)` that are final.
    after: &'static str,
    /// Rows that are final.
    settled: &'static str,
    /// Feed order.
    pub(crate) order: &'static str,
    /// Feed order, newest first.
    newest_first: &'static str,
}

impl FeedOrder {
    pub(crate) fn of(backend: Backend) -> Self {
        match backend {
            // By transaction id, once no older transaction can still commit.
            Backend::Postgres => Self {
                tx: "tx_id::text::bigint",
                after: "(tx_id, global_position) > ($1::text::xid8, $2)
                        AND tx_id < pg_snapshot_xmin(pg_current_snapshot())",
                settled: "tx_id < pg_snapshot_xmin(pg_current_snapshot())",
                order: "tx_id, global_position",
                newest_first: "tx_id DESC, global_position DESC",
            },
            // One writer hands out positions in commit order: every row is final.
            Backend::Sqlite => Self {
                tx: "tx_id",
                after: "global_position > $2",
                settled: "TRUE",
                order: "global_position",
                newest_first: "global_position DESC",
            },
        }
    }
}

/// The feed's statements for one back end, formatted once per feed.
struct FeedQueries {
    read_after: String,
    read_after_keeping: String,
    read_headers_after: String,
    read_chain_after: String,
    position_of: String,
    latest_of: String,
    head: String,
    position_before: String,
}

impl FeedQueries {
    fn new(backend: Backend) -> Self {
        let FeedOrder {
            tx,
            after,
            settled,
            order,
            newest_first,
        } = FeedOrder::of(backend);
        let columns = event_columns(backend);
        let keeping = backend.any_of("aggregate_type", "$4");
        let occurred_at = backend.json_text("metadata", &["occurred_at"]);
        Self {
            read_after: format!(
                "SELECT {columns} FROM events WHERE {after} ORDER BY {order} LIMIT $3"
            ),
            read_after_keeping: format!(
                "SELECT {tx} AS tx, global_position, aggregate_type, aggregate_id, sequence,
                        event_type, event_version, recorded_at,
                        CASE WHEN {keeping} THEN payload END AS payload,
                        CASE WHEN {keeping} THEN metadata END AS metadata
                   FROM events WHERE {after} ORDER BY {order} LIMIT $3"
            ),
            read_headers_after: format!(
                "SELECT {tx} AS tx, global_position, aggregate_type, aggregate_id, event_type,
                        {occurred_at} AS occurred_at, recorded_at
                   FROM events WHERE {after} ORDER BY {order} LIMIT $3"
            ),
            read_chain_after: format!(
                "SELECT {tx} AS tx, global_position, chain_hash
                   FROM events WHERE {after} ORDER BY {order} LIMIT $3"
            ),
            position_of: format!(
                "SELECT {tx} AS tx, global_position FROM events
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3"
            ),
            latest_of: format!(
                "SELECT {columns} FROM events
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND event_type = $3
                  ORDER BY sequence DESC LIMIT 1"
            ),
            head: format!(
                "SELECT {tx} AS tx, global_position FROM events
                  WHERE {settled} ORDER BY {newest_first} LIMIT 1"
            ),
            position_before: format!(
                "SELECT {tx} AS tx, global_position FROM events
                  WHERE recorded_at >= $1 ORDER BY {order} LIMIT 1"
            ),
        }
    }
}

/// Reads the event log in feed order, from either back end. On the embedded
/// store it reads through the read-only pool, so followers never queue behind
/// the writer.
#[derive(Clone)]
pub struct EventFeed {
    db: Database,
    queries: Arc<FeedQueries>,
}

impl EventFeed {
    pub fn new(db: Database) -> Self {
        Self {
            queries: Arc::new(FeedQueries::new(db.backend())),
            db,
        }
    }

    /// The database this feed reads.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Up to `limit` final events after `after`. Deliberately unfiltered: a
    /// follower's position must move past every event, not only those it cares for.
    pub async fn read_after(
        &self,
        after: Position,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, FeedError> {
        let sql = &self.queries.read_after;
        let events = with_readers!(self.db, |pool| {
            let rows = sqlx::query(sql)
                .bind(after.tx_id.to_string())
                .bind(after.global_position)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(StoredEvent::from_row)
                .collect::<Result<_, _>>()?
        });
        Ok(events)
    }

    /// [`Self::read_after`] on `conn`: a follower that writes what it read does
    /// the read in its own transaction.
    pub(crate) async fn read_after_on(
        &self,
        conn: Connection<'_>,
        after: Position,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, FeedError> {
        let sql = &self.queries.read_after;
        let events = per_backend!(conn, |conn| {
            let rows = sqlx::query(sql)
                .bind(after.tx_id.to_string())
                .bind(after.global_position)
                .bind(limit)
                .fetch_all(conn)
                .await?;
            rows.iter()
                .map(StoredEvent::from_row)
                .collect::<Result<_, _>>()?
        });
        Ok(events)
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
        let sql = &self.queries.read_after_keeping;
        let events = with_readers!(self.db, |pool| {
            let rows = sqlx::query(sql)
                .bind(after.tx_id.to_string())
                .bind(after.global_position)
                .bind(limit)
                .bind(List(aggregate_types))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(StoredEvent::from_row)
                .collect::<Result<_, _>>()?
        });
        Ok(events)
    }

    /// Like [`Self::read_after`] but without payloads and metadata, for followers
    /// that only need to know which event happened where (the revocation view).
    pub async fn read_headers_after(
        &self,
        after: Position,
        limit: i64,
    ) -> Result<Vec<EventHeader>, FeedError> {
        let sql = &self.queries.read_headers_after;
        let headers = with_readers!(self.db, |pool| {
            let rows = sqlx::query(sql)
                .bind(after.tx_id.to_string())
                .bind(after.global_position)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(EventHeader::from_row)
                .collect::<Result<_, _>>()?
        });
        Ok(headers)
    }

    /// Positions and chain hashes only, in feed order: all the chain signer needs
    /// to extend its running log hash (see [`crate::chain`]), without the payloads.
    pub async fn read_chain_after(
        &self,
        after: Position,
        limit: i64,
    ) -> Result<Vec<(Position, [u8; 32])>, FeedError> {
        let sql = &self.queries.read_chain_after;
        let rows: Vec<(i64, i64, Vec<u8>)> = with_readers!(self.db, |pool| {
            sqlx::query_as(sql)
                .bind(after.tx_id.to_string())
                .bind(after.global_position)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
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
        let sql = &self.queries.position_of;
        let row: Option<(i64, i64)> = with_readers!(self.db, |pool| {
            sqlx::query_as(sql)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(sequence)
                .fetch_optional(pool)
                .await?
        });
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
        let sql = &self.queries.latest_of;
        let event = with_readers!(self.db, |pool| {
            let row = sqlx::query(sql)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(event_type)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(StoredEvent::from_row).transpose()?
        });
        Ok(event)
    }

    /// The newest final position (for lag figures and for "rebuild up to here").
    pub async fn head(&self) -> Result<Position, FeedError> {
        let sql = &self.queries.head;
        let row: Option<(i64, i64)> = with_readers!(self.db, |pool| {
            sqlx::query_as(sql).fetch_optional(pool).await?
        });
        Ok(row.map_or(Position::START, position))
    }

    /// The position just before the first event recorded at or after `since`;
    /// followers that only care about recent history start there.
    pub async fn position_before(&self, since: DateTime<Utc>) -> Result<Position, FeedError> {
        let sql = &self.queries.position_before;
        let row: Option<(i64, i64)> = with_readers!(self.db, |pool| {
            sqlx::query_as(sql)
                .bind(Micros(since))
                .fetch_optional(pool)
                .await?
        });
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
    pub fn start(db: &Database) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(0u64);
        let handle = match db.engine() {
            Engine::Postgres(pool) => tokio::spawn(Self::listen(pool.clone(), tx)),
            Engine::Sqlite(embedded) => {
                tokio::spawn(Self::follow(Some(embedded.commits().subscribe()), tx))
            }
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
