//! Which database the write side appends to (decision 0011, §2).

use sqlx::PgPool;

use crate::embedded::EmbeddedDatabase;

/// The write side's storage: chosen once at start-up, then matched exhaustively
/// by every role (event store, email and slug claims, data keys, log look-ups),
/// so no feature exists on one back end only.
#[derive(Clone, Debug)]
pub enum Storage {
    Postgres(PgPool),
    Embedded(EmbeddedDatabase),
}

impl Storage {
    /// Which back end, for logs and `/health`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Embedded(_) => "sqlite",
        }
    }
}
