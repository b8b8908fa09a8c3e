//! Users, sessions, the audit trail and projection checkpoints in the embedded
//! SQLite store (decision 0011, rows #12 and #37–#44).
//!
//! Guarantee: the same as [`crate::read_models`] (checkpointed, exactly-once,
//! idempotent), because the rules are the same code: the in-memory fold of
//! `read_models.rs` decides every row, and this module only reads and writes rows
//! in SQLite's dialect. Ids are TEXT (hyphenated), times TEXT in sqlx's encoding
//! of `DateTime<Utc>`, truncated to microseconds as PostgreSQL stores them, and
//! JSON is TEXT; `sql/read_models.sqlite.sql` documents the conventions for
//! whoever queries these tables.
//!
//! Where the tables are is a [`SqliteTables`]: `main` for the live read models,
//! another schema (an `ATTACH`ed scratch file) or a name prefix for a rebuild.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::fmt::Hyphenated;
use uuid::Uuid;

use crate::feed::{FeedError, Position, StoredEvent};
use crate::read_models::{
    self, AuditRows, Db, FreshReadModels, SessionRow, Texts, UserRow, CHECKPOINT, PERSONAL_DETAILS,
};

/// The SQLite DDL of every read model, a template: see [`SqliteReadModels::install_into`].
pub const DDL: &str = include_str!("../sql/read_models.sqlite.sql");

/// Rows per statement when writing: one bound JSON text each, kept to a few
/// megabytes (SQLite's limit on a text is a billion bytes).
const ROWS_PER_STATEMENT: usize = 5_000;

/// Where the read-model tables are in a SQLite connection: a schema (`main`, or
/// the name an `ATTACH DATABASE ... AS name` gave a scratch file) and a prefix of
/// every table and index name (empty, or e.g. `rb1732000000_` for a rebuild
/// beside the live tables in `main`).
///
/// Names are pasted into the SQL, so they are checked to be plain identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteTables {
    schema: Cow<'static, str>,
    prefix: Cow<'static, str>,
}

/// A schema or prefix that is not a plain SQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a plain SQL name (ASCII letters, digits and `_`, not starting with a digit)")]
pub struct InvalidSqliteName(pub String);

impl SqliteTables {
    /// The live read models: unprefixed tables in `main`.
    pub const MAIN: SqliteTables = SqliteTables {
        schema: Cow::Borrowed("main"),
        prefix: Cow::Borrowed(""),
    };

    /// Tables named `<prefix><table>` in `schema`.
    pub fn new(schema: &str, prefix: &str) -> Result<Self, InvalidSqliteName> {
        let plain = |name: &str, may_be_empty: bool| {
            (may_be_empty && name.is_empty())
                || (name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && name.bytes().next().is_some_and(|b| !b.is_ascii_digit()))
        };
        if !plain(schema, false) {
            return Err(InvalidSqliteName(schema.to_owned()));
        }
        if !plain(prefix, true) {
            return Err(InvalidSqliteName(prefix.to_owned()));
        }
        Ok(Self {
            schema: Cow::Owned(schema.to_owned()),
            prefix: Cow::Owned(prefix.to_owned()),
        })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A read-model table's qualified name, e.g. `"rebuild".users`, for SQL.
    pub fn table(&self, name: &str) -> String {
        format!("\"{}\".{}{name}", self.schema, self.prefix)
    }
}

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

    /// Creates the tables of [`DDL`] that are missing from `tables` (each with
    /// its indexes, named with the same prefix). A table that exists is left
    /// alone, indexes included: after a rebuild switch the live tables' indexes
    /// keep their generation-prefixed names (SQLite cannot rename an index).
    /// Runs on the caller's connection, in the caller's transaction if any.
    pub async fn install_into(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
    ) -> Result<(), sqlx::Error> {
        let schema = format!("\"{}\"", tables.schema);
        for (table, section) in ddl_sections() {
            let name = format!("{}{table}", tables.prefix);
            let exists: bool = sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM {schema}.sqlite_schema
                                 WHERE type = 'table' AND name = $1)"
            ))
            .bind(&name)
            .fetch_one(&mut *conn)
            .await?;
            if !exists {
                let sql = section
                    .replace("{schema}", &schema)
                    .replace("{prefix}", &tables.prefix);
                sqlx::raw_sql(&sql).execute(&mut *conn).await?;
            }
        }
        Ok(())
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
        read_models::apply_all_in(&mut Db::Sqlite(conn, tables), events).await
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

impl FreshReadModels {
    /// [`Self::apply`] into SQLite `tables` (for `keyledger-replay rebuild`, an
    /// attached scratch file or prefixed tables); the same rules and eviction.
    pub async fn apply_sqlite(
        &mut self,
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        self.apply_in(&mut Db::Sqlite(conn, tables), events).await
    }

    /// [`Self::flush`] into SQLite `tables`.
    pub async fn flush_sqlite(
        &mut self,
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
    ) -> Result<(), FeedError> {
        self.flush_in(&mut Db::Sqlite(conn, tables)).await
    }
}

/// The `-- table: NAME` sections of [`DDL`] (table name, SQL), in order.
fn ddl_sections() -> Vec<(&'static str, &'static str)> {
    const HEADER: &str = "-- table: ";
    let starts: Vec<usize> = DDL
        .match_indices(&format!("\n{HEADER}"))
        .map(|(i, _)| i + 1)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let end = starts.get(k + 1).copied().unwrap_or(DDL.len());
            let section = &DDL[start..end];
            let name = section[HEADER.len()..]
                .lines()
                .next()
                .unwrap_or_default()
                .trim();
            (name, section)
        })
        .collect()
}

/// How a time is stored: exactly what sqlx binds for a `DateTime<Utc>` (so rows
/// written through `json_each` and times bound by queries compare as text),
/// truncated to microseconds as PostgreSQL keeps them.
pub(crate) fn time_text(time: DateTime<Utc>) -> String {
    time.trunc_subsecs(6)
        .to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn ids_json(ids: &[Uuid]) -> Result<String, sqlx::Error> {
    serde_json::to_string(ids).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

fn rows_json(rows: &impl serde::Serialize) -> Result<String, sqlx::Error> {
    serde_json::to_string(rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Runs `sql` once per [`ROWS_PER_STATEMENT`] items, binding `$1` to the chunk as
/// one JSON array of `row(item)` (the statements read it with `json_each`).
async fn execute_chunked<'a, T, R: serde::Serialize>(
    conn: &mut SqliteConnection,
    sql: &str,
    items: &'a [T],
    row: impl Fn(&'a T) -> R,
) -> Result<(), sqlx::Error> {
    for chunk in items.chunks(ROWS_PER_STATEMENT) {
        let json: Vec<R> = chunk.iter().map(&row).collect();
        sqlx::query(sql)
            .bind(rows_json(&json)?)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn uuid_at(row: &SqliteRow, i: usize) -> Result<Uuid, sqlx::Error> {
    Ok(row.try_get::<Hyphenated, _>(i)?.into_uuid())
}

fn optional_uuid_at(row: &SqliteRow, i: usize) -> Result<Option<Uuid>, sqlx::Error> {
    Ok(row
        .try_get::<Option<Hyphenated>, _>(i)?
        .map(Hyphenated::into_uuid))
}

/// Reading and writing one read-model row type in SQLite (the PostgreSQL
/// counterparts are `ReadModelRow::load` and `save`).
pub(crate) trait SqliteStorage: Sized {
    /// Loads the rows with these ids.
    async fn load_sqlite(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
        ids: &[Uuid],
        texts: &mut Texts,
    ) -> Result<Vec<(Uuid, Self)>, sqlx::Error>;

    /// Upserts the rows, each only over an older version.
    async fn save_sqlite(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
        rows: Vec<(Uuid, Self)>,
    ) -> Result<(), sqlx::Error>;
}

impl SqliteStorage for UserRow {
    async fn load_sqlite(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
        ids: &[Uuid],
        _: &mut Texts,
    ) -> Result<Vec<(Uuid, Self)>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT user_id, email, display_name, created_at, last_login_at,
                    consecutive_failures, locked_until, suspended, platform_admin, version
               FROM {} WHERE user_id IN (SELECT value FROM json_each($1))",
            tables.table("users")
        ))
        .bind(ids_json(ids)?)
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    uuid_at(r, 0)?,
                    Self {
                        email: r.try_get(1)?,
                        display_name: r.try_get(2)?,
                        created_at: r.try_get(3)?,
                        last_login_at: r.try_get(4)?,
                        consecutive_failures: r.try_get(5)?,
                        locked_until: r.try_get(6)?,
                        suspended: r.try_get(7)?,
                        platform_admin: r.try_get(8)?,
                        version: r.try_get(9)?,
                    },
                ))
            })
            .collect()
    }

    async fn save_sqlite(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
        rows: Vec<(Uuid, Self)>,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} AS t (user_id, email, display_name, created_at, last_login_at,
                                  consecutive_failures, locked_until, suspended,
                                  platform_admin, version)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                    value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9
               FROM json_each($1) WHERE true
             ON CONFLICT (user_id) DO UPDATE
                SET email = excluded.email, display_name = excluded.display_name,
                    created_at = excluded.created_at, last_login_at = excluded.last_login_at,
                    consecutive_failures = excluded.consecutive_failures,
                    locked_until = excluded.locked_until, suspended = excluded.suspended,
                    platform_admin = excluded.platform_admin, version = excluded.version
              WHERE t.version < excluded.version",
            tables.table("users")
        );
        execute_chunked(conn, &sql, &rows, |(id, row)| {
            (
                id,
                &row.email,
                &row.display_name,
                time_text(row.created_at),
                row.last_login_at.map(time_text),
                row.consecutive_failures,
                row.locked_until.map(time_text),
                u8::from(row.suspended),
                u8::from(row.platform_admin),
                row.version,
            )
        })
        .await
    }
}

impl SqliteStorage for SessionRow {
    async fn load_sqlite(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
        ids: &[Uuid],
        texts: &mut Texts,
    ) -> Result<Vec<(Uuid, Self)>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT session_id, user_id, ip, user_agent, created_at, last_refreshed_at,
                    expires_at, refresh_count, state, ended_at, end_reason, organization_id,
                    version
               FROM {} WHERE session_id IN (SELECT value FROM json_each($1))",
            tables.table("sessions")
        ))
        .bind(ids_json(ids)?)
        .fetch_all(conn)
        .await?;
        let mut text = |r: &SqliteRow, i: usize| {
            r.try_get::<Option<&str>, _>(i)
                .map(|t| t.map(|t| texts.shared(t)))
        };
        rows.iter()
            .map(|r| {
                Ok((
                    uuid_at(r, 0)?,
                    Self {
                        user_id: uuid_at(r, 1)?,
                        ip: r.try_get::<Option<&str>, _>(2)?.map(Into::into),
                        user_agent: text(r, 3)?,
                        created_at: r.try_get(4)?,
                        last_refreshed_at: r.try_get(5)?,
                        expires_at: r.try_get(6)?,
                        refresh_count: r.try_get(7)?,
                        // NOT NULL: never the default.
                        state: text(r, 8)?.unwrap_or_default(),
                        ended_at: r.try_get(9)?,
                        end_reason: text(r, 10)?,
                        organization_id: optional_uuid_at(r, 11)?,
                        version: r.try_get(12)?,
                    },
                ))
            })
            .collect()
    }

    async fn save_sqlite(
        conn: &mut SqliteConnection,
        tables: &SqliteTables,
        rows: Vec<(Uuid, Self)>,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} AS t (session_id, user_id, ip, user_agent, created_at,
                                  last_refreshed_at, expires_at, refresh_count, state,
                                  ended_at, end_reason, organization_id, version)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                    value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9,
                    value ->> 10, value ->> 11, value ->> 12
               FROM json_each($1) WHERE true
             ON CONFLICT (session_id) DO UPDATE
                SET user_id = excluded.user_id, ip = excluded.ip,
                    user_agent = excluded.user_agent, created_at = excluded.created_at,
                    last_refreshed_at = excluded.last_refreshed_at,
                    expires_at = excluded.expires_at, refresh_count = excluded.refresh_count,
                    state = excluded.state, ended_at = excluded.ended_at,
                    end_reason = excluded.end_reason,
                    organization_id = excluded.organization_id, version = excluded.version
              WHERE t.version < excluded.version",
            tables.table("sessions")
        );
        execute_chunked(conn, &sql, &rows, |(id, row)| {
            (
                id,
                row.user_id,
                row.ip.as_deref(),
                row.user_agent.as_deref(),
                time_text(row.created_at),
                row.last_refreshed_at.map(time_text),
                time_text(row.expires_at),
                row.refresh_count,
                &*row.state,
                row.ended_at.map(time_text),
                row.end_reason.as_deref(),
                row.organization_id,
                row.version,
            )
        })
        .await
    }
}

/// The audit rows of a batch, each inserted unless its position is there
/// already (an overlap).
pub(crate) async fn insert_audit(
    conn: &mut SqliteConnection,
    tables: &SqliteTables,
    rows: AuditRows,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {} (global_position, occurred_at, actor, subject, action, outcome, ip,
                         user_agent, request_id, aggregate_type, aggregate_id, sequence,
                         details)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9,
                value ->> 10, value ->> 11, value -> 12
           FROM json_each($1) WHERE true
         ON CONFLICT (global_position) DO NOTHING",
        tables.table("audit_trail")
    );
    let all: Vec<_> = (0..rows.position.len())
        .map(|i| {
            (
                rows.position[i],
                time_text(rows.occurred_at[i]),
                &rows.actor[i],
                &rows.subject[i],
                &rows.action[i],
                &rows.outcome[i],
                &rows.ip[i],
                &rows.user_agent[i],
                &rows.request_id[i],
                &rows.aggregate_type[i],
                &rows.aggregate_id[i],
                rows.sequence[i],
                &rows.details[i],
            )
        })
        .collect();
    execute_chunked(conn, &sql, &all, |row| row).await
}

/// The erasure's scrub (see `read_models::forget_erased`) in SQLite: the same
/// statements, and the `details` rule applied in Rust by the function the
/// PostgreSQL path mirrors in SQL ([`read_models::scrub_details`]) to the few
/// rows that hold a personal string, written back by position.
pub(crate) async fn forget_erased(
    conn: &mut SqliteConnection,
    tables: &SqliteTables,
    erased: &[Uuid],
) -> Result<(), sqlx::Error> {
    let ids = ids_json(erased)?;
    let (users, sessions, audit) = (
        tables.table("users"),
        tables.table("sessions"),
        tables.table("audit_trail"),
    );
    sqlx::query(&format!(
        "DELETE FROM {users} WHERE user_id IN (SELECT value FROM json_each($1))"
    ))
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "UPDATE {sessions}
            SET ip = CASE WHEN ip IS NULL THEN NULL ELSE $2 END,
                user_agent = CASE WHEN user_agent IS NULL THEN NULL ELSE $2 END
          WHERE user_id IN (SELECT value FROM json_each($1))
            AND (ip IS NOT NULL OR user_agent IS NOT NULL)"
    ))
    .bind(&ids)
    .bind(keyledger_domain::ERASED)
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "UPDATE {audit}
            SET ip = CASE WHEN ip IS NULL THEN NULL ELSE $2 END,
                user_agent = CASE WHEN user_agent IS NULL THEN NULL ELSE $2 END
          WHERE (actor IN (SELECT value FROM json_each($1))
                 OR (actor = 'anonymous' AND subject IN (SELECT value FROM json_each($1))))
            AND (ip IS NOT NULL OR user_agent IS NOT NULL)"
    ))
    .bind(&ids)
    .bind(keyledger_domain::ERASED)
    .execute(&mut *conn)
    .await?;

    let holds_personal = PERSONAL_DETAILS
        .iter()
        .map(|key| format!("json_type(details, '$.{key}') = 'text'"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let rows: Vec<(i64, String)> = sqlx::query_as(&format!(
        "SELECT global_position, details FROM {audit}
          WHERE subject IN (SELECT value FROM json_each($1)) AND ({holds_personal})"
    ))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut scrubbed = Vec::with_capacity(rows.len());
    for (position, details) in rows {
        let mut details: Value =
            serde_json::from_str(&details).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        if read_models::scrub_details(&mut details) {
            scrubbed.push((position, details));
        }
    }
    let sql = format!(
        "UPDATE {audit} AS a SET details = u.value -> 1
           FROM json_each($1) AS u
          WHERE a.global_position = u.value ->> 0"
    );
    execute_chunked(conn, &sql, &scrubbed, |row| row).await
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::future::Future;
    use std::panic::AssertUnwindSafe;
    use std::path::PathBuf;

    use chrono::{Duration, TimeZone};
    use futures::FutureExt as _;
    use keyledger_domain::organization::{
        OrganizationEvent, OrganizationName, OrganizationSlug, RoleRef,
    };
    use keyledger_domain::permission::{BuiltInRole, PermissionSet};
    use keyledger_domain::role::{RoleEvent, RoleName};
    use keyledger_domain::service_account::ServiceAccountEvent;
    use keyledger_domain::values::{Device, PasswordHash, RevocationReason, TokenHash};
    use keyledger_domain::{PersonalData, SessionEvent, UserEvent};
    use serde_json::json;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    use sqlx::types::Json;
    use sqlx::{Connection as _, Executor as _, PgPool};

    use super::*;
    use crate::ReadModels;

    const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

    /// Runs `test` on a fresh PostgreSQL database, dropped afterwards (also when
    /// the test fails).
    async fn with_postgres<F, Fut>(test: F)
    where
        F: FnOnce(PgPool) -> Fut,
        Fut: Future<Output = ()>,
    {
        let name = format!(
            "keyledger_test_{}",
            &Uuid::new_v4().simple().to_string()[..16]
        );
        let mut admin = sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres"))
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let pool = PgPool::connect(&format!("{PG_SERVER}/{name}"))
            .await
            .unwrap();
        let outcome = AssertUnwindSafe(test(pool.clone())).catch_unwind().await;
        pool.close().await;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await
            .unwrap();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    /// A temporary SQLite file (and its WAL), removed on drop.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new() -> Self {
            Self(std::env::temp_dir().join(format!("keyledger-read-models-{}.db", Uuid::new_v4())))
        }

        /// A writer like the embedded store's: one connection, WAL.
        async fn writer(&self) -> SqlitePool {
            SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(&self.0)
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal),
                )
                .await
                .unwrap()
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = self.0.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }

    // ---- a realistic log -------------------------------------------------------

    const ALICE: Uuid = Uuid::from_u128(0xa1);
    const BOB: Uuid = Uuid::from_u128(0xb0b);
    const S1: Uuid = Uuid::from_u128(0x51);
    const S2: Uuid = Uuid::from_u128(0x52);
    const S3: Uuid = Uuid::from_u128(0x53);
    const ORG: Uuid = Uuid::from_u128(0x0a6);
    const ROLE: Uuid = Uuid::from_u128(0x201e);
    const ROBOT: Uuid = Uuid::from_u128(0x5a);

    /// Second `n` of the log, with a fraction of 0, 1, 3, 6 or 9 digits (the
    /// nanoseconds are kept in the events and truncated by both stores).
    fn t(n: i64) -> DateTime<Utc> {
        let nanos = [0, 500_000_000, 123_000_000, 123_456_000, 123_456_789][n as usize % 5];
        Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()
            + Duration::seconds(n)
            + Duration::nanoseconds(nanos)
    }

    #[derive(Default)]
    struct Log {
        events: Vec<StoredEvent>,
        sequences: HashMap<Uuid, i64>,
    }

    impl Log {
        fn push(&mut self, actor: Option<Uuid>, aggregate_type: &str, id: Uuid, payload: Value) {
            let position = self.events.len() as i64 + 1;
            let sequence = self.sequences.entry(id).or_default();
            *sequence += 1;
            let event_type = payload
                .as_object()
                .and_then(|o| o.keys().next().cloned())
                .unwrap();
            let at = t(position);
            let mut metadata = json!({
                "occurred_at": at.to_rfc3339(),
                "actor": actor.map_or("anonymous".to_owned(), |a| a.to_string()),
                "request_id": format!("req-{position}"),
            });
            // Some requests carry the client's address, some do not.
            if position % 3 != 0 {
                metadata["ip"] = json!(format!("198.51.100.{position}"));
                metadata["user_agent"] = json!("Mozilla/5.0 (X11; Linux x86_64) \"quoted\"\ttab");
            }
            self.events.push(StoredEvent {
                position: Position {
                    tx_id: 0,
                    global_position: position,
                },
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: id.to_string(),
                sequence: *sequence,
                event_type,
                event_version: "1.0".into(),
                payload,
                metadata,
                recorded_at: at,
            });
        }

        fn user(&mut self, actor: Option<Uuid>, id: Uuid, event: UserEvent) {
            self.push(actor, "user", id, serde_json::to_value(event).unwrap());
        }

        fn session(&mut self, actor: Option<Uuid>, id: Uuid, event: SessionEvent) {
            self.push(actor, "session", id, serde_json::to_value(event).unwrap());
        }

        fn started(&mut self, user: Uuid, session: Uuid, n: i64) {
            self.session(
                Some(user),
                session,
                SessionEvent::SessionStarted {
                    session_id: session,
                    user_id: user,
                    refresh_token_hash: TokenHash::from_bytes([n as u8; 32]),
                    device: Device::new(
                        Some(format!("203.0.113.{n}")),
                        Some(format!("agent {n} (ünïcode)")),
                    ),
                    started_at: t(n),
                    expires_at: t(n + 3600),
                },
            );
        }
    }

    fn registered(user: Uuid, email: &str, display_name: Option<&str>, n: i64) -> UserEvent {
        UserEvent::UserRegistered {
            user_id: user,
            email: PersonalData::clear(email),
            display_name: display_name.map(PersonalData::clear),
            password_hash: keyledger_domain::SealedPasswordHash::clear(PasswordHash::new(
                "$argon2id$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA".into(),
            )),
            registered_at: t(n),
        }
    }

    /// Three batches: registrations, logins and a failure; refreshes, an
    /// organization with a member, a role and a service account, a lockout, a
    /// logout; unlock, suspension, reuse detection, revocation and Alice's
    /// erasure, with Bob's later events in the same batch.
    fn history() -> Vec<Vec<StoredEvent>> {
        let mut log = Log::default();
        log.user(
            None,
            ALICE,
            registered(ALICE, "alice@example.com", Some("Alice"), 1),
        );
        log.user(
            None,
            ALICE,
            UserEvent::LoginFailed {
                consecutive_failures: 1,
                at: t(2),
            },
        );
        log.user(
            None,
            ALICE,
            UserEvent::UserLoggedIn {
                session_id: S1,
                factors: vec!["pwd".into()],
                at: t(3),
            },
        );
        log.started(ALICE, S1, 4);
        log.user(None, BOB, registered(BOB, "bob@example.com", None, 5));
        let first = log.events.len();

        log.session(
            Some(ALICE),
            S1,
            SessionEvent::TokenRefreshed {
                generation: 1,
                refresh_token_hash: TokenHash::from_bytes([9; 32]),
                at: t(6),
            },
        );
        log.push(
            Some(ALICE),
            "organization",
            ORG,
            serde_json::to_value(OrganizationEvent::OrganizationCreated {
                organization_id: ORG,
                slug: OrganizationSlug::parse("acme").unwrap(),
                name: OrganizationName::parse("Acme").unwrap(),
                owner: ALICE,
                at: t(7),
            })
            .unwrap(),
        );
        log.push(
            Some(ALICE),
            "organization",
            ORG,
            serde_json::to_value(OrganizationEvent::MemberAdded {
                user_id: BOB,
                roles: BTreeSet::from([RoleRef::BuiltIn(BuiltInRole::Member)]),
                at: t(8),
            })
            .unwrap(),
        );
        log.push(
            Some(ALICE),
            "role",
            ROLE,
            serde_json::to_value(RoleEvent::RoleDefined {
                role_id: ROLE,
                organization_id: ORG,
                name: RoleName::parse("billing").unwrap(),
                permissions: PermissionSet::parse(["invoices:read"]).unwrap(),
                at: t(9),
            })
            .unwrap(),
        );
        log.push(
            Some(ALICE),
            "service_account",
            ROBOT,
            serde_json::to_value(ServiceAccountEvent::ServiceAccountCreated {
                service_account_id: ROBOT,
                organization_id: ORG,
                name: OrganizationName::parse("Invoice robot").unwrap(),
                roles: BTreeSet::from([RoleRef::Custom(ROLE)]),
                secret_hash: TokenHash::from_bytes([3; 32]),
                at: t(10),
            })
            .unwrap(),
        );
        log.session(
            Some(ALICE),
            S1,
            SessionEvent::OrganizationSelected {
                organization_id: Some(ORG),
                at: t(11),
            },
        );
        log.user(
            Some(ALICE),
            BOB,
            UserEvent::PlatformAdminGranted { at: t(12) },
        );
        log.user(
            None,
            BOB,
            UserEvent::LoginFailed {
                consecutive_failures: 1,
                at: t(13),
            },
        );
        log.user(
            None,
            BOB,
            UserEvent::AccountLocked {
                locked_until: t(1800),
                failed_attempts: 5,
                at: t(14),
            },
        );
        log.started(BOB, S2, 15);
        log.session(Some(BOB), S2, SessionEvent::UserLoggedOut { at: t(16) });
        let second = log.events.len();

        log.user(Some(ALICE), BOB, UserEvent::AccountUnlocked { at: t(17) });
        log.user(
            Some(ALICE),
            BOB,
            UserEvent::UserSuspended {
                reason: "review".into(),
                at: t(18),
            },
        );
        log.user(Some(ALICE), BOB, UserEvent::UserReactivated { at: t(19) });
        log.started(ALICE, S3, 20);
        log.session(
            None,
            S1,
            SessionEvent::RefreshTokenReuseDetected {
                presented_generation: 0,
                current_generation: 1,
                at: t(21),
            },
        );
        log.session(
            None,
            S1,
            SessionEvent::SessionRevoked {
                reason: RevocationReason::RefreshTokenReuse,
                at: t(22),
            },
        );
        log.session(
            Some(ALICE),
            S3,
            SessionEvent::SessionRevoked {
                reason: RevocationReason::AccountErased,
                at: t(23),
            },
        );
        log.user(Some(ALICE), ALICE, UserEvent::UserErased { at: t(24) });
        log.user(
            Some(BOB),
            BOB,
            UserEvent::PasswordChanged {
                password_hash: keyledger_domain::SealedPasswordHash::clear(PasswordHash::new(
                    "$argon2id$v=19$m=1,t=1,p=1$c2FsdA$bmV3".into(),
                )),
                at: t(25),
            },
        );
        let mut events = log.events;
        let third = events.split_off(second);
        let second = events.split_off(first);
        vec![events, second, third]
    }

    // ---- reading every table back, normalised ----------------------------------

    #[derive(Debug, PartialEq, sqlx::FromRow)]
    struct UserDump {
        user_id: String,
        email: String,
        display_name: Option<String>,
        created_at: DateTime<Utc>,
        last_login_at: Option<DateTime<Utc>>,
        consecutive_failures: i32,
        locked_until: Option<DateTime<Utc>>,
        suspended: bool,
        platform_admin: bool,
        version: i64,
    }

    #[derive(Debug, PartialEq, sqlx::FromRow)]
    struct SessionDump {
        session_id: String,
        user_id: String,
        ip: Option<String>,
        user_agent: Option<String>,
        created_at: DateTime<Utc>,
        last_refreshed_at: Option<DateTime<Utc>>,
        expires_at: DateTime<Utc>,
        refresh_count: i32,
        state: String,
        ended_at: Option<DateTime<Utc>>,
        end_reason: Option<String>,
        organization_id: Option<String>,
        version: i64,
    }

    #[derive(Debug, PartialEq, sqlx::FromRow)]
    struct AuditDump {
        global_position: i64,
        occurred_at: DateTime<Utc>,
        actor: String,
        subject: String,
        action: String,
        outcome: String,
        ip: Option<String>,
        user_agent: Option<String>,
        request_id: Option<String>,
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        details: Json<Value>,
    }

    /// Every row of every read model (checkpoints without their wall-clock
    /// `updated_at`), sorted by primary key.
    #[derive(Debug, PartialEq)]
    struct Dump {
        checkpoints: Vec<(String, i64, i64)>,
        users: Vec<UserDump>,
        sessions: Vec<SessionDump>,
        audit: Vec<AuditDump>,
    }

    impl Dump {
        fn sorted(mut self) -> Self {
            self.checkpoints.sort_by(|a, b| a.0.cmp(&b.0));
            self.users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
            self.sessions
                .sort_by(|a, b| a.session_id.cmp(&b.session_id));
            self.audit.sort_by_key(|a| a.global_position);
            self
        }
    }

    const USER_COLUMNS: &str = "email, display_name, created_at, last_login_at,
        consecutive_failures, locked_until, suspended, platform_admin, version";
    const SESSION_COLUMNS: &str = "ip, user_agent, created_at, last_refreshed_at, expires_at,
        refresh_count, state, ended_at, end_reason";
    const AUDIT_COLUMNS: &str = "global_position, occurred_at, actor, subject, action, outcome,
        ip, user_agent, request_id, aggregate_type, aggregate_id, sequence, details";

    async fn dump_postgres(conn: &mut sqlx::PgConnection) -> Dump {
        Dump {
            checkpoints: sqlx::query_as(
                "SELECT name, tx_id, global_position FROM projection_checkpoints",
            )
            .fetch_all(&mut *conn)
            .await
            .unwrap(),
            users: sqlx::query_as(&format!(
                "SELECT user_id::text AS user_id, {USER_COLUMNS} FROM users"
            ))
            .fetch_all(&mut *conn)
            .await
            .unwrap(),
            sessions: sqlx::query_as(&format!(
                "SELECT session_id::text AS session_id, user_id::text AS user_id,
                        {SESSION_COLUMNS}, organization_id::text AS organization_id, version
                   FROM sessions"
            ))
            .fetch_all(&mut *conn)
            .await
            .unwrap(),
            audit: sqlx::query_as(&format!("SELECT {AUDIT_COLUMNS} FROM audit_trail"))
                .fetch_all(&mut *conn)
                .await
                .unwrap(),
        }
        .sorted()
    }

    async fn dump_sqlite(conn: &mut SqliteConnection, tables: &SqliteTables) -> Dump {
        Dump {
            checkpoints: sqlx::query_as(&format!(
                "SELECT name, tx_id, global_position FROM {}",
                tables.table("projection_checkpoints")
            ))
            .fetch_all(&mut *conn)
            .await
            .unwrap(),
            users: sqlx::query_as(&format!(
                "SELECT user_id, {USER_COLUMNS} FROM {}",
                tables.table("users")
            ))
            .fetch_all(&mut *conn)
            .await
            .unwrap(),
            sessions: sqlx::query_as(&format!(
                "SELECT session_id, user_id, {SESSION_COLUMNS}, organization_id, version
                   FROM {}",
                tables.table("sessions")
            ))
            .fetch_all(&mut *conn)
            .await
            .unwrap(),
            audit: sqlx::query_as(&format!(
                "SELECT {AUDIT_COLUMNS} FROM {}",
                tables.table("audit_trail")
            ))
            .fetch_all(&mut *conn)
            .await
            .unwrap(),
        }
        .sorted()
    }

    /// Projects `batches` into the live SQLite tables the way the runner does.
    async fn project_sqlite(writer: &SqlitePool, batches: &[Vec<StoredEvent>]) {
        SqliteReadModels::install(writer).await.unwrap();
        for batch in batches {
            let last = SqliteReadModels::apply_batch(writer, batch).await.unwrap();
            assert_eq!(last, batch.last().map(|e| e.position));
        }
    }

    // ---- tests -------------------------------------------------------------------

    #[tokio::test]
    async fn both_back_ends_project_the_same_rows() {
        let batches = history();
        let file = TempDb::new();
        let writer = file.writer().await;
        project_sqlite(&writer, &batches).await;
        let mut conn = writer.acquire().await.unwrap();
        let sqlite = dump_sqlite(&mut conn, &SqliteTables::MAIN).await;

        let postgres = {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let batches = batches.clone();
            with_postgres(|pool| async move {
                ReadModels::install_in(&pool).await.unwrap();
                for batch in &batches {
                    ReadModels::apply_batch(&pool, batch).await.unwrap();
                }
                let mut conn = pool.acquire().await.unwrap();
                let live = dump_postgres(&mut conn).await;

                // The fresh path (`COPY`, rows kept across batches) into a
                // scratch schema gives the same tables.
                conn.execute("CREATE SCHEMA rebuild; SET search_path TO rebuild")
                    .await
                    .unwrap();
                ReadModels::install(&mut conn).await.unwrap();
                let mut models = FreshReadModels::new(2);
                for batch in &batches {
                    models.apply(&mut conn, batch).await.unwrap();
                }
                models.flush(&mut conn).await.unwrap();
                let last = batches.last().unwrap().last().unwrap().position;
                ReadModels::save_checkpoint(&mut conn, CHECKPOINT, last)
                    .await
                    .unwrap();
                assert_eq!(dump_postgres(&mut conn).await, live);
                tx.send(live).unwrap();
            })
            .await;
            rx.await.unwrap()
        };

        // The log did what it should, so equality below means something.
        assert_eq!(sqlite.users.len(), 1, "Alice's row is gone, Bob's stays");
        assert_eq!(sqlite.sessions.len(), 3);
        let count = batches.iter().map(Vec::len).sum::<usize>();
        assert_eq!(sqlite.audit.len(), count);
        let erased = Some(keyledger_domain::ERASED);
        assert!(sqlite.sessions.iter().any(|s| s.ip.as_deref() == erased));
        assert!(sqlite.sessions.iter().any(|s| s.organization_id.is_some()));
        assert!(sqlite.audit.iter().any(|a| a.ip.as_deref() == erased));
        assert!(sqlite
            .audit
            .iter()
            .any(|a| a.details.0["email"] == keyledger_domain::ERASED));
        assert!(sqlite
            .audit
            .iter()
            .any(|a| a.details.0["email"] == "bob@example.com"));
        assert_eq!(
            sqlite.checkpoints,
            vec![(CHECKPOINT.to_owned(), 0, count as i64)]
        );
        assert_eq!(postgres, sqlite);

        // Stored as documented: TEXT ids and times, in sqlx's encoding, at
        // microseconds (the event said …04.123456789).
        let (id_type, time_type): (String, String) =
            sqlx::query_as("SELECT typeof(user_id), typeof(created_at) FROM users")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!((id_type.as_str(), time_type.as_str()), ("text", "text"));
        let occurred_at: String =
            sqlx::query_scalar("SELECT occurred_at FROM audit_trail WHERE global_position = 4")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(occurred_at, time_text(t(4)));
        assert_eq!(occurred_at, "2026-03-01T09:00:04.123456+00:00");
    }

    #[tokio::test]
    async fn a_fresh_rebuild_into_an_attached_file_or_prefixed_tables_equals_the_live_tables() {
        let batches = history();
        let file = TempDb::new();
        let scratch = TempDb::new();
        let writer = file.writer().await;
        project_sqlite(&writer, &batches).await;
        let mut conn = writer.acquire().await.unwrap();
        let live = dump_sqlite(&mut conn, &SqliteTables::MAIN).await;

        sqlx::query("ATTACH DATABASE $1 AS rebuild")
            .bind(scratch.0.to_str().unwrap())
            .execute(&mut *conn)
            .await
            .unwrap();
        for tables in [
            SqliteTables::new("rebuild", "").unwrap(),
            SqliteTables::new("main", "rb1_").unwrap(),
        ] {
            SqliteReadModels::install_into(&mut conn, &tables)
                .await
                .unwrap();
            // Few rows in memory, so that rows leave it and come back.
            let mut models = FreshReadModels::new(2);
            for batch in &batches {
                models
                    .apply_sqlite(&mut conn, &tables, batch)
                    .await
                    .unwrap();
            }
            models.flush_sqlite(&mut conn, &tables).await.unwrap();
            let last = batches.last().unwrap().last().unwrap().position;
            SqliteReadModels::save_checkpoint_in(&mut conn, &tables, CHECKPOINT, last)
                .await
                .unwrap();
            assert_eq!(dump_sqlite(&mut conn, &tables).await, live, "{tables:?}");
        }
        // The prefixed tables brought their own indexes; the live ones were not
        // touched by installing them.
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM main.sqlite_schema WHERE type = 'index' AND name LIKE 'rb1_%'
              ORDER BY name",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        assert_eq!(
            indexes,
            [
                "rb1_audit_trail_aggregate_idx",
                "rb1_audit_trail_owner_organization_idx",
                "rb1_audit_trail_subject_idx",
                "rb1_sessions_user_idx",
                "rb1_users_email_idx",
            ]
        );
    }

    #[tokio::test]
    async fn applying_a_batch_again_changes_nothing() {
        let batches = history();
        let file = TempDb::new();
        let writer = file.writer().await;
        project_sqlite(&writer, &batches).await;
        let mut conn = writer.acquire().await.unwrap();
        let once = dump_sqlite(&mut conn, &SqliteTables::MAIN).await;
        drop(conn);

        // The last batch again (with its erasure), then every batch again.
        SqliteReadModels::apply_batch(&writer, batches.last().unwrap())
            .await
            .unwrap();
        for batch in &batches {
            SqliteReadModels::apply_batch(&writer, batch).await.unwrap();
        }
        let mut conn = writer.acquire().await.unwrap();
        assert_eq!(dump_sqlite(&mut conn, &SqliteTables::MAIN).await, once);
    }

    #[tokio::test]
    async fn an_older_event_never_overwrites_a_newer_row() {
        // The first two batches (no erasure): a row written at a later version
        // keeps it when earlier events of its aggregate arrive again.
        let batches = history();
        let file = TempDb::new();
        let writer = file.writer().await;
        project_sqlite(&writer, &batches[..2]).await;
        let mut conn = writer.acquire().await.unwrap();
        let before = dump_sqlite(&mut conn, &SqliteTables::MAIN).await;
        SqliteReadModels::apply_all(&mut conn, &batches[0])
            .await
            .unwrap();
        SqliteReadModels::apply_all(&mut conn, &batches[1][..3])
            .await
            .unwrap();
        assert_eq!(dump_sqlite(&mut conn, &SqliteTables::MAIN).await, before);
        let bob = before
            .users
            .iter()
            .find(|u| u.user_id == BOB.to_string())
            .unwrap();
        assert!(
            bob.platform_admin,
            "Bob is a platform administrator from batch two"
        );
    }

    #[tokio::test]
    async fn the_upsert_itself_only_replaces_an_older_version() {
        // What guards a second projector for a moment: a row folded from a
        // stale read is written over nothing newer.
        let batches = history();
        let file = TempDb::new();
        let writer = file.writer().await;
        project_sqlite(&writer, &batches).await;
        let mut conn = writer.acquire().await.unwrap();
        let before = dump_sqlite(&mut conn, &SqliteTables::MAIN).await;
        let stale_user = UserRow {
            email: "stale@example.com".into(),
            display_name: None,
            created_at: t(0),
            last_login_at: None,
            consecutive_failures: 0,
            locked_until: None,
            suspended: true,
            platform_admin: false,
            version: 1,
        };
        let stale_session = SessionRow {
            user_id: BOB,
            ip: None,
            user_agent: None,
            created_at: t(0),
            last_refreshed_at: None,
            expires_at: t(1),
            refresh_count: 0,
            state: "active".into(),
            ended_at: None,
            end_reason: None,
            organization_id: None,
            version: 1,
        };
        UserRow::save_sqlite(
            &mut conn,
            &SqliteTables::MAIN,
            vec![(BOB, stale_user.clone())],
        )
        .await
        .unwrap();
        SessionRow::save_sqlite(&mut conn, &SqliteTables::MAIN, vec![(S2, stale_session)])
            .await
            .unwrap();
        assert_eq!(dump_sqlite(&mut conn, &SqliteTables::MAIN).await, before);

        let newer = UserRow {
            version: 100,
            ..stale_user
        };
        UserRow::save_sqlite(&mut conn, &SqliteTables::MAIN, vec![(BOB, newer)])
            .await
            .unwrap();
        let loaded = UserRow::load_sqlite(
            &mut conn,
            &SqliteTables::MAIN,
            &[BOB, ALICE],
            &mut Texts::default(),
        )
        .await
        .unwrap();
        assert_eq!(loaded.len(), 1, "Alice was erased");
        assert_eq!((loaded[0].0, loaded[0].1.version), (BOB, 100));
        assert_eq!(loaded[0].1.email, "stale@example.com");
    }

    #[tokio::test]
    async fn install_creates_only_missing_tables_and_checkpoints_round_trip() {
        let file = TempDb::new();
        let writer = file.writer().await;
        SqliteReadModels::install(&writer).await.unwrap();
        SqliteReadModels::install(&writer).await.unwrap();
        let mut conn = writer.acquire().await.unwrap();
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        assert_eq!(
            tables,
            ["audit_trail", "projection_checkpoints", "sessions", "users"]
        );

        assert_eq!(
            SqliteReadModels::checkpoint(&mut conn, "relay")
                .await
                .unwrap(),
            Position::START
        );
        for global_position in [7, 9] {
            let position = Position {
                tx_id: 0,
                global_position,
            };
            SqliteReadModels::save_checkpoint(&mut conn, "relay", position)
                .await
                .unwrap();
            assert_eq!(
                SqliteReadModels::checkpoint(&mut conn, "relay")
                    .await
                    .unwrap(),
                position
            );
        }
        assert_eq!(
            SqliteReadModels::apply_batch(&writer, &[]).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn the_organization_index_serves_the_audit_query_as_written() {
        let file = TempDb::new();
        let writer = file.writer().await;
        SqliteReadModels::install(&writer).await.unwrap();
        let mut conn = writer.acquire().await.unwrap();
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
            "EXPLAIN QUERY PLAN
             SELECT global_position FROM audit_trail
              WHERE action IN ('RoleDefined', 'ServiceAccountCreated')
                AND details ->> 'organization_id' = $1",
        )
        .bind(ORG.to_string())
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        assert!(
            plan.iter()
                .any(|row| row.3.contains("audit_trail_owner_organization_idx")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn sorting_stored_time_text_is_chronological() {
        let base = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        // Whole seconds and 3, 6 and 9 fractional digits, around one boundary.
        let mut times: Vec<DateTime<Utc>> = [
            0,
            1,
            100_000,
            999_999,
            1_000_000,
            1_000_001,
            123_000_000,
            123_400_000,
            123_456_000,
            123_456_001,
            123_456_789,
            500_000_000,
            999_000_000,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            1_001_000_000,
            2_000_000_000,
        ]
        .iter()
        .map(|&nanos| base + Duration::nanoseconds(nanos))
        .chain([Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()])
        .collect();
        times.reverse();

        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        sqlx::query("CREATE TABLE t (bound TEXT NOT NULL, written TEXT NOT NULL) STRICT")
            .execute(&mut conn)
            .await
            .unwrap();
        for time in &times {
            sqlx::query("INSERT INTO t VALUES ($1, $2)")
                .bind(time)
                .bind(time_text(*time))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let mut chronological = times.clone();
        chronological.sort();

        let bound: Vec<DateTime<Utc>> = sqlx::query_scalar("SELECT bound FROM t ORDER BY bound")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(bound, chronological, "the text sqlx binds sorts by time");
        let written: Vec<DateTime<Utc>> =
            sqlx::query_scalar("SELECT written FROM t ORDER BY written")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let truncated: Vec<_> = chronological.iter().map(|t| t.trunc_subsecs(6)).collect();
        assert_eq!(written, truncated, "so does the text rows are written with");

        // What rows are written with is what sqlx binds (for a time already at
        // microseconds), so bound query parameters compare with it as text.
        let same: bool = sqlx::query_scalar("SELECT $1 = $2")
            .bind(time_text(chronological[4]))
            .bind(chronological[4].trunc_subsecs(6))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(same);
    }

    #[test]
    fn the_ddl_has_one_section_per_table() {
        let names: Vec<_> = ddl_sections().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            ["projection_checkpoints", "users", "sessions", "audit_trail"]
        );
        for (name, section) in ddl_sections() {
            assert!(section.contains(&format!("CREATE TABLE {{schema}}.{{prefix}}{name}\n")));
        }
    }

    #[test]
    fn only_plain_names_qualify_tables() {
        assert_eq!(SqliteTables::MAIN.table("users"), "\"main\".users");
        assert_eq!(
            SqliteTables::new("rebuild", "rb_1_")
                .unwrap()
                .table("users"),
            "\"rebuild\".rb_1_users"
        );
        for (schema, prefix) in [("", ""), ("main; DROP", ""), ("1db", ""), ("main", "x\"")] {
            assert!(
                SqliteTables::new(schema, prefix).is_err(),
                "{schema:?} {prefix:?}"
            );
        }
    }
}
