//! Reading rows of the `events` table as [`StoredEvent`]s, in the shape the
//! projector's feed delivers them, from either back end.

use chrono::{DateTime, Utc};
use keyledger_projections::{EVENT_COLUMNS, SQLITE_EVENT_COLUMNS};

/// Every column of a [`StoredEvent`], qualified with `public` so a rebuild's
/// `search_path` cannot redirect it. Pair with [`StoredEvent::from_row`].
pub(crate) fn select_events() -> String {
    format!("SELECT {EVENT_COLUMNS} FROM public.events")
}

/// Every column of a [`StoredEvent`] from the embedded store's `main.events`
/// (`main`, so that an attached file can never stand in for it). Pair with
/// [`StoredEvent::from_sqlite_row`].
pub(crate) fn sqlite_select_events() -> String {
    format!("SELECT {SQLITE_EVENT_COLUMNS} FROM main.events")
}

/// An embedded store's INTEGER microseconds as a time.
pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| sqlx::Error::Decode(format!("{micros} µs is not a time").into()))
}
