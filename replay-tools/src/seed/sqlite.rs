//! `keyledger-replay seed` into an embedded store: the same simulation as on
//! PostgreSQL, written as rows with their positions and chain hashes, since
//! SQLite has no trigger to number and chain them.
//!
//! The data directory's lock is held (the server must be stopped; a missing
//! directory is created and migrated, as the server would), so this is the only
//! writer and positions can be handed out by the simulation itself, from the
//! log's head on. Each chunk is one `BEGIN IMMEDIATE` of multi-row INSERTs with
//! every column the chained appender sets: `tx_id` 0, `recorded_at` in
//! microseconds and the chain hash computed in Rust with the appender's function
//! (`keyledger_domain::chain::CanonicalEvent`), each aggregate's previous hash
//! kept by the simulation beside its sequence. `VACUUM; ANALYZE` at the end, as
//! PostgreSQL's seed ends with `VACUUM (ANALYZE)`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use keyledger_storage::EmbeddedDatabase;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Sqlite, SqliteConnection};

use super::{
    report_progress, spawn_generator, ChunkData, EventRow, Format, Rows, SeedOptions, SeedReport,
};
use crate::ReplayError;

/// Columns per event row; rows per statement keep the bound values well under
/// SQLite's limit of 32,766.
const EVENT_COLUMNS: usize = 11;
const ROWS_PER_STATEMENT: usize = 2_000;

/// The name a data directory is judged by (its last component, resolved when the
/// path ends in `.` or `..`).
pub(crate) fn dir_name(dir: &Path) -> String {
    let resolved = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    resolved
        .file_name()
        .or_else(|| dir.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// See the module documentation.
pub(crate) async fn seed(
    db: &EmbeddedDatabase,
    options: &SeedOptions,
    progress: &mut dyn Write,
) -> Result<SeedReport, ReplayError> {
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events")
        .fetch_one(db.writer())
        .await?;
    let started = Instant::now();
    let (generator, mut rx) = spawn_generator(options, Format::Sqlite(head + 1));
    let mut conn = db.writer().acquire().await?;
    // Aggregate ids are random, so the primary key's pages are hit all over the
    // table: a cache of SQLite's default 2 MB misses on almost every insert.
    sqlx::raw_sql("PRAGMA cache_size = -262144")
        .execute(&mut *conn)
        .await?;
    let mut written = 0u64;
    let mut last_report = Instant::now();
    while let Some(chunk) = rx.recv().await {
        let ChunkData::Sqlite(rows) = &chunk.data else {
            return Err(ReplayError::Refused(
                "the seed generator sent COPY text".into(),
            ));
        };
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
        insert_rows(&mut tx, rows).await?;
        tx.commit().await?;
        written += chunk.count;
        report_progress(progress, &mut last_report, started, written, options.events)?;
    }
    let mut report = generator
        .join()
        .map_err(|_| ReplayError::Refused("the seed generator panicked".into()))?;
    report.events = written;
    report.elapsed = started.elapsed();
    // Pages laid out in order and the planner's statistics current, as after
    // PostgreSQL's VACUUM (ANALYZE); then the WAL (which VACUUM filled) is emptied.
    let vacuum = Instant::now();
    sqlx::raw_sql("VACUUM; ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);")
        .execute(&mut *conn)
        .await?;
    report.vacuum = vacuum.elapsed();
    Ok(report)
}

/// One chunk's rows, in multi-row INSERTs (the caller's transaction).
async fn insert_rows(conn: &mut SqliteConnection, rows: &Rows) -> Result<(), ReplayError> {
    for part in rows.events.chunks(ROWS_PER_STATEMENT) {
        let sql = values_sql(
            "INSERT INTO main.events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata, global_position, tx_id, recorded_at, chain_hash)",
            part.len(),
            EVENT_COLUMNS,
        );
        let mut query = sqlx::query(&sql);
        for row in part {
            query = bind_event(query, row);
        }
        query.execute(&mut *conn).await?;
    }
    for part in rows.keys.chunks(ROWS_PER_STATEMENT) {
        let sql = values_sql(
            "INSERT INTO main.user_data_keys (owner_id, key, created_at)",
            part.len(),
            3,
        );
        let mut query = sqlx::query(&sql);
        for (owner, key, at) in part {
            query = query.bind(owner.to_string()).bind(key.to_vec()).bind(*at);
        }
        query.execute(&mut *conn).await?;
    }
    for part in rows.claims.chunks(ROWS_PER_STATEMENT) {
        let sql = values_sql(
            "INSERT INTO main.email_claims (digest, user_id, claimed_at)",
            part.len(),
            3,
        );
        let mut query = sqlx::query(&sql);
        for (digest, user, at) in part {
            query = query.bind(digest.to_vec()).bind(user.to_string()).bind(*at);
        }
        query.execute(&mut *conn).await?;
    }
    for part in rows.slugs.chunks(ROWS_PER_STATEMENT) {
        let sql = values_sql(
            "INSERT INTO main.organization_slugs (slug, organization_id, claimed_at)",
            part.len(),
            3,
        );
        let mut query = sqlx::query(&sql);
        for (slug, organization, at) in part {
            query = query
                .bind(slug.clone())
                .bind(organization.to_string())
                .bind(*at);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

fn bind_event<'q>(
    query: Query<'q, Sqlite, SqliteArguments<'q>>,
    row: &'q EventRow,
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    query
        .bind(row.aggregate_type)
        .bind(row.aggregate_id.as_str())
        .bind(row.sequence)
        .bind(row.event_type.as_str())
        .bind(row.event_version.as_str())
        .bind(row.payload.as_str())
        .bind(row.metadata.as_str())
        .bind(row.global_position)
        .bind(0_i64)
        .bind(row.recorded_at_micros)
        .bind(&row.chain_hash[..])
}

/// `<insert> VALUES (?, ...), (...)` for `rows` rows of `columns` values.
/// Anonymous `?` placeholders, bound in order: sqlx looks every numbered one up
/// by name, which SQLite answers by scanning all of them, so a statement of
/// thousands of `$n` spent nearly all its time binding.
fn values_sql(insert: &str, rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    format!("{insert} VALUES {}", vec![row.as_str(); rows].join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_placeholders_row_by_row() {
        assert_eq!(
            values_sql("INSERT INTO t (a, b)", 2, 2),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
    }

    #[test]
    fn a_data_dir_is_judged_by_its_last_component() {
        assert_eq!(
            dir_name(Path::new("/tmp/x/keyledger-bench")),
            "keyledger-bench"
        );
        assert_eq!(
            dir_name(Path::new("no-such-dir-bench")),
            "no-such-dir-bench"
        );
    }
}
