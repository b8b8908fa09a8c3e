//! The read models' entry points on the embedded SQLite store: installing the
//! tables, the projection checkpoints, applying a batch on the single writer.
//! Projecting itself is [`crate::read_models`], one implementation for both back
//! ends. Ids are TEXT (hyphenated), times TEXT in sqlx's encoding of
//! `DateTime<Utc>`, truncated to microseconds as PostgreSQL stores them, and JSON
//! is TEXT; `sql/read_models.sqlite.sql` documents the conventions for whoever
//! queries these tables.

use sqlx::{SqliteConnection, SqlitePool};

use crate::feed::{FeedError, Position, StoredEvent};
use crate::read_models::{tables, FreshReadModels, ReadModels, Target, CHECKPOINT};
pub use crate::read_models::{InvalidSqliteName, SqliteTables};

/// The SQLite DDL of every read model, a template: see
/// [`SqliteReadModels::install_into`].
pub use crate::read_models::tables::SQLITE_DDL as DDL;

/// The read models in SQLite. Same guarantees as [`crate::ReadModels`]; every
/// write goes through the process's single writer connection.
pub struct SqliteReadModels;

impl SqliteReadModels {
    /// Creates the missing read-model tables in `main`, in one `BEGIN IMMEDIATE`
    /// on the writer.
    pub async fn install(writer: &SqlitePool) -> Result<(), sqlx::Error> {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        Self::install_into(&mut tx, &SqliteTables::MAIN).await?;
        tx.commit().await
    }

    /// Creates the tables of [`DDL`] missing from `tables` and the columns
    /// missing from its existing tables (see [`tables::install_into`]).
    pub async fn install_into(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
    ) -> Result<(), sqlx::Error> {
        tables::install_into(conn, tables).await
    }

    /// How far the follower `name` got (the start when it never saved).
    pub async fn checkpoint(
        conn: &mut SqliteConnection,
        name: &str,
    ) -> Result<Position, sqlx::Error> {
        Self::checkpoint_in(conn, &SqliteTables::MAIN, name).await
    }

    /// [`Self::checkpoint`] from the checkpoints table of `tables`.
    pub async fn checkpoint_in(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
        name: &str,
    ) -> Result<Position, sqlx::Error> {
        let table = tables.table("projection_checkpoints");
        let conn = keyledger_storage::Connection::Sqlite(conn);
        crate::checkpoints::checkpoint_in(conn, &table, name).await
    }

    /// Records how far the follower `name` got (in the caller's transaction).
    pub async fn save_checkpoint(
        conn: &mut SqliteConnection,
        name: &str,
        position: Position,
    ) -> Result<(), sqlx::Error> {
        Self::save_checkpoint_in(conn, &SqliteTables::MAIN, name, position).await
    }

    /// [`Self::save_checkpoint`] into the checkpoints table of `tables`.
    pub async fn save_checkpoint_in(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
        name: &str,
        position: Position,
    ) -> Result<(), sqlx::Error> {
        let table = tables.table("projection_checkpoints");
        let conn = keyledger_storage::Connection::Sqlite(conn);
        crate::checkpoints::save_checkpoint_in(conn, &table, name, position).await
    }

    /// One `BEGIN IMMEDIATE` on the writer: applies the batch and moves the
    /// read models' checkpoint to its last event, atomically. `None` for an
    /// empty batch (nothing written).
    pub async fn apply_batch(
        writer: &SqlitePool,
        events: &[StoredEvent],
    ) -> Result<Option<Position>, FeedError> {
        let Some(last) = events.last() else {
            return Ok(None);
        };
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        Self::apply_all(&mut tx, events).await?;
        Self::save_checkpoint(&mut tx, CHECKPOINT, last.position).await?;
        tx.commit().await?;
        Ok(Some(last.position))
    }

    /// Projects events in order into the live tables (in the caller's
    /// transaction): the rules of [`crate::ReadModels::apply_all`], a constant
    /// number of statements per batch.
    pub async fn apply_all(
        conn: &mut SqliteConnection,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        Self::apply_all_in(conn, &SqliteTables::MAIN, events).await
    }

    /// [`Self::apply_all`] into `tables`.
    pub async fn apply_all_in(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        ReadModels::apply_to(Target::sqlite(conn, tables), events).await
    }

    /// [`crate::ReadModels::apply_all_fresh`] into `tables`: for tables being
    /// filled from nothing by one writer that sees every event once.
    pub async fn apply_all_fresh_in(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        FreshReadModels::new(0)
            .apply_sqlite(conn, tables, events)
            .await
    }
}
