//! Reading rows of the `events` table as [`StoredEvent`]s, in the same shape the
//! projector's feed delivers them (its decoder is private to the projections crate).

use keyledger_projections::{Position, StoredEvent};
use sqlx::postgres::PgRow;
use sqlx::Row;

/// The columns of a [`StoredEvent`]; `tx_id` (an `xid8`) travels as a bigint.
/// Qualified with `public` so a rebuild's `search_path` cannot redirect it.
pub(crate) const SELECT_EVENTS: &str =
    "SELECT tx_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
            sequence, event_type, event_version, payload, metadata, recorded_at
       FROM public.events";

pub(crate) fn row_to_event(row: &PgRow) -> Result<StoredEvent, sqlx::Error> {
    Ok(StoredEvent {
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
