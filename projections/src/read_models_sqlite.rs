//! The read models in the embedded SQLite database.
//!
//! Placeholder with the agreed signatures so that the rest of the read side builds;
//! the real implementation replaces this file.

use sqlx::{SqliteConnection, SqlitePool};

use crate::feed::{FeedError, Position, StoredEvent};

/// Users, sessions and the audit trail in the embedded database.
pub struct SqliteReadModels;

#[allow(unused_variables)]
impl SqliteReadModels {
    /// Creates the read-model tables that are missing.
    pub async fn install(writer: &SqlitePool) -> Result<(), sqlx::Error> {
        unimplemented!("B2")
    }

    /// Where the named follower stands.
    pub async fn checkpoint(
        conn: &mut SqliteConnection,
        name: &str,
    ) -> Result<Position, sqlx::Error> {
        unimplemented!("B2")
    }

    /// Records where the named follower stands.
    pub async fn save_checkpoint(
        conn: &mut SqliteConnection,
        name: &str,
        position: Position,
    ) -> Result<(), sqlx::Error> {
        unimplemented!("B2")
    }

    /// One BEGIN IMMEDIATE on the writer: apply + checkpoint.
    pub async fn apply_batch(
        writer: &SqlitePool,
        events: &[StoredEvent],
    ) -> Result<Option<Position>, FeedError> {
        unimplemented!("B2")
    }
}
