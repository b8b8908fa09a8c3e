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

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgListener;
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
    /// Decodes a row selected with [`EVENT_COLUMNS`].
    ///
    /// Events stored in an older shape come out in the current one (see
    /// `keyledger_domain::upcasting`), with the version they were brought to.
    pub fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Self::decoded(row).map(Self::upcast)
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

    fn decoded(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
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
            recorded_at: row.try_get("recorded_at")?,
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

macro_rules! event_columns {
    () => {
        "tx_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id, sequence,
         event_type, event_version, payload, metadata, recorded_at"
    };
}

/// The columns of a [`StoredEvent`], for any reader of the `events` table
/// (`tx_id`, an `xid8`, travels as a bigint). Pair with [`StoredEvent::from_row`].
pub const EVENT_COLUMNS: &str = event_columns!();

const SELECT: &str = concat!("SELECT ", event_columns!(), " FROM events");

/// Reads the event log in feed order.
#[derive(Clone)]
pub struct EventFeed {
    pool: PgPool,
}

impl EventFeed {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Up to `limit` final events after `after`. Deliberately unfiltered: a
    /// follower's position must move past every event, not only those it cares for.
    pub async fn read_after(
        &self,
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
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(row_to_event).collect()
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
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(row_to_event).collect()
    }

    /// Like [`Self::read_after`] but without payloads and metadata, for followers
    /// that only need to know which event happened where (the revocation view).
    pub async fn read_headers_after(
        &self,
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
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let recorded_at: DateTime<Utc> = row.try_get("recorded_at")?;
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
            })
            .collect()
    }

    /// Positions and chain hashes only, in feed order: all the chain signer needs
    /// to extend its running log hash (see [`crate::chain`]), without the payloads.
    pub async fn read_chain_after(
        &self,
        after: Position,
        limit: i64,
    ) -> Result<Vec<(Position, [u8; 32])>, FeedError> {
        let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
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
        .fetch_all(&self.pool)
        .await?;
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
        let row = sqlx::query(
            "SELECT tx_id::text::bigint AS tx, global_position FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Position {
            tx_id: r.get("tx"),
            global_position: r.get("global_position"),
        }))
    }

    /// The newest final position (for lag figures and for "rebuild up to here").
    pub async fn head(&self) -> Result<Position, FeedError> {
        let row = sqlx::query(
            "SELECT tx_id::text::bigint AS tx, global_position FROM events
              WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY tx_id DESC, global_position DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map_or(Position::START, |r| Position {
            tx_id: r.get("tx"),
            global_position: r.get("global_position"),
        }))
    }

    /// The position just before the first event recorded at or after `since`;
    /// followers that only care about recent history start there.
    pub async fn position_before(&self, since: DateTime<Utc>) -> Result<Position, FeedError> {
        let row = sqlx::query(
            "SELECT tx_id::text::bigint AS tx, global_position FROM events
              WHERE recorded_at >= $1
              ORDER BY tx_id, global_position LIMIT 1",
        )
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Position {
                tx_id: r.get("tx"),
                global_position: r.get::<i64, _>("global_position") - 1,
            }),
            None => self.head().await,
        }
    }
}

fn row_to_event(row: sqlx::postgres::PgRow) -> Result<StoredEvent, FeedError> {
    Ok(StoredEvent::from_row(&row)?)
}

/// Wakes feed followers: on every commit that wrote events (LISTEN/NOTIFY), and
/// on a short tick, because an unrelated long transaction that held the feed back
/// sends no notification when it ends.
#[derive(Clone)]
pub struct FeedSignal {
    rx: watch::Receiver<u64>,
}

impl FeedSignal {
    pub const TICK: Duration = Duration::from_millis(250);

    /// Starts the listener task; it reconnects by itself when the database returns.
    pub fn start(pool: PgPool) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(0u64);
        let handle = tokio::spawn(async move {
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
        });
        (Self { rx }, handle)
    }

    /// Returns after the next wake-up (or at once if one was missed).
    pub async fn wait(&mut self) {
        if self.rx.changed().await.is_err() {
            // The listener is gone (shutdown): fall back to the tick.
            tokio::time::sleep(Self::TICK).await;
        }
    }
}
