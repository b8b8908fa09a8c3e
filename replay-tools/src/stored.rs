//! Reading rows of the `events` table as [`StoredEvent`]s, in the shape the
//! projector's feed delivers them, from either back end.

use chrono::{DateTime, Utc};
use keyledger_projections::{StoredEvent, EVENT_COLUMNS, SQLITE_EVENT_COLUMNS};
use keyledger_storage::Backend;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

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

/// `SELECT` of every column of a [`StoredEvent`] from the live log of
/// `backend`; decode the rows with [`EventRow::stored_event`].
pub(crate) fn select_live_events(backend: Backend) -> String {
    match backend {
        Backend::Postgres => select_events(),
        Backend::Sqlite => sqlite_select_events(),
    }
}

/// A row selected by [`select_live_events`]: the two back ends store
/// `recorded_at` differently (`timestamptz`, INTEGER microseconds), so each
/// decodes its own way; the queries around them are written once.
pub(crate) trait EventRow {
    fn stored_event(&self) -> Result<StoredEvent, sqlx::Error>;
}

impl EventRow for PgRow {
    fn stored_event(&self) -> Result<StoredEvent, sqlx::Error> {
        StoredEvent::from_row(self)
    }
}

impl EventRow for SqliteRow {
    fn stored_event(&self) -> Result<StoredEvent, sqlx::Error> {
        StoredEvent::from_sqlite_row(self)
    }
}

/// An embedded store's INTEGER microseconds as a time.
pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| sqlx::Error::Decode(format!("{micros} µs is not a time").into()))
}
