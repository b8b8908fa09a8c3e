//! Reading rows of the `events` table as [`StoredEvent`]s, in the shape the
//! projector's feed delivers them, from either back end.

use chrono::{DateTime, Utc};
use keyledger_projections::{Position, StoredEvent, EVENT_COLUMNS};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// Every column of a [`StoredEvent`], qualified with `public` so a rebuild's
/// `search_path` cannot redirect it.
pub(crate) fn select_events() -> String {
    format!("SELECT {EVENT_COLUMNS} FROM public.events")
}

pub(crate) fn row_to_event(row: &PgRow) -> Result<StoredEvent, sqlx::Error> {
    StoredEvent::from_row(row)
}

/// The embedded store's columns in the order [`sqlite_row_to_event`] reads them
/// (`tx_id` is always 0 there; it is read anyway, it is part of the position).
pub(crate) const SQLITE_EVENT_COLUMNS: &str =
    "tx_id, global_position, aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata, recorded_at";

/// Every column of a [`StoredEvent`] from the embedded store's `main.events`
/// (`main`, so that an attached file can never stand in for it).
pub(crate) fn sqlite_select_events() -> String {
    format!("SELECT {SQLITE_EVENT_COLUMNS} FROM main.events")
}

/// Decodes a row selected with [`SQLITE_EVENT_COLUMNS`]. Payload and metadata are
/// JSON text; `recorded_at` is microseconds since 1970 (sqlx would read an
/// INTEGER as seconds). Events stored in an older shape come out in the current
/// one, as from the feed.
pub(crate) fn sqlite_row_to_event(row: &SqliteRow) -> Result<StoredEvent, sqlx::Error> {
    let position = Position {
        tx_id: row.try_get(0)?,
        global_position: row.try_get(1)?,
    };
    let json = |index: usize| -> Result<serde_json::Value, sqlx::Error> {
        let text: &str = row.try_get(index)?;
        // serde's message could quote the value (payloads hold password hashes).
        serde_json::from_str(text).map_err(|e| {
            sqlx::Error::Decode(
                format!(
                    "stored event at global position {}: {}",
                    position.global_position,
                    keyledger_projections::feed::describe_payload_error(&e)
                )
                .into(),
            )
        })
    };
    let mut event = StoredEvent {
        position,
        aggregate_type: row.try_get(2)?,
        aggregate_id: row.try_get(3)?,
        sequence: row.try_get(4)?,
        event_type: row.try_get(5)?,
        event_version: row.try_get(6)?,
        payload: json(7)?,
        metadata: json(8)?,
        recorded_at: from_micros(row.try_get(9)?)?,
    };
    if keyledger_domain::upcasting::is_outdated(
        &event.aggregate_type,
        &event.event_type,
        &event.event_version,
    ) {
        let (version, payload) = keyledger_domain::upcasting::upcast(
            &event.aggregate_type,
            &event.event_type,
            &event.event_version,
            std::mem::take(&mut event.payload),
        );
        event.event_version = version;
        event.payload = payload;
    }
    Ok(event)
}

/// An embedded store's INTEGER microseconds as a time.
pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| sqlx::Error::Decode(format!("{micros} µs is not a time").into()))
}
