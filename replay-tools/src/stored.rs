//! Reading rows of the `events` table as [`StoredEvent`]s, in the shape the
//! projector's feed delivers them.

use keyledger_projections::{StoredEvent, EVENT_COLUMNS};
use sqlx::postgres::PgRow;

/// Every column of a [`StoredEvent`], qualified with `public` so a rebuild's
/// `search_path` cannot redirect it.
pub(crate) fn select_events() -> String {
    format!("SELECT {EVENT_COLUMNS} FROM public.events")
}

pub(crate) fn row_to_event(row: &PgRow) -> Result<StoredEvent, sqlx::Error> {
    StoredEvent::from_row(row)
}
