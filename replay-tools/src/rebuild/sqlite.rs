//! `keyledger-replay rebuild` on the embedded store: its scratch space is an
//! attached file, since SQLite has no schemas to put fresh tables in.
//!
//! The live file stays `main`; a scratch file `<data dir>/rebuild-<ts>.db` is
//! attached as `rebuild`. One transaction on that connection serves the same three
//! purposes as PostgreSQL's `REPEATABLE READ` one:
//! 1. its first statement reads the live projector's checkpoint from `main`, which
//!    starts the read transaction on `main`: from then on the connection sees `main`
//!    as it was at that instant (WAL snapshot), while the server goes on writing;
//! 2. the events up to and including that checkpoint are replayed from
//!    `main.events` into `rebuild.*`. Writes on the embedded store are serialised
//!    and positions handed out under the write lock, so everything up to a
//!    committed position is there;
//! 3. every rebuilt table is compared with `main`'s (`EXCEPT` both ways).
//!
//! Locks are per file in WAL mode: writing `rebuild.*` never blocks the server's
//! writer. The server's WAL cannot be checkpointed past the snapshot while the
//! rebuild runs, so it grows meanwhile and is reused afterwards.
//!
//! With `keep`, the transaction is committed and the file stays (with its own
//! checkpoint row and its indexes); otherwise it is rolled back and deleted.
//!
//! This module is SQLite's scratch space ([`SqliteScratch`]) and catalogs;
//! replaying and comparing are [`super::replay_and_compare`], as on PostgreSQL.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use keyledger_projections::read_models::{SqliteTables, Target, CHECKPOINT};
use keyledger_projections::{Position, SqliteReadModels, StoredEvent};
use keyledger_storage::PerBackend;
use sqlx::{Connection, Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::{quote_ident, replay_and_compare, RebuildOptions, RebuildReport, ScratchSpace};
use crate::personal::Opener;
use crate::stored::sqlite_select_events;
use crate::ReplayError;

/// The name the scratch file is attached under.
const SCRATCH_SCHEMA: &str = "rebuild";

/// The data directory of an embedded store's pool (where its `keyledger.db` is).
pub(crate) fn data_dir_of(pool: &SqlitePool) -> PathBuf {
    pool.connect_options()
        .get_filename()
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

/// `<unix seconds><millis>`: sortable plain digits, safe in file and table names.
pub(crate) fn stamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}{:03}", now.as_secs(), now.subsec_millis())
}

/// See the module documentation.
pub(crate) async fn rebuild(
    db: &keyledger_storage::Database,
    pool: &SqlitePool,
    options: &RebuildOptions,
) -> Result<RebuildReport, ReplayError> {
    let path = data_dir_of(pool).join(format!("rebuild-{}.db", stamp()));
    // Created here, empty (an empty file is an empty database): the store's
    // connections may not create files, and a name taken already (another
    // rebuild in the same millisecond) is refused rather than shared.
    // Private like the store it copies (0600; its journal takes the same mode).
    let mut scratch = std::fs::File::options();
    scratch.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut scratch, 0o600);
    if let Err(e) = scratch.open(&path) {
        return Err(ReplayError::Refused(format!(
            "cannot create the scratch file {}: {e}",
            path.display()
        )));
    }
    // A connection of its own: ATTACH belongs to one connection.
    let mut conn = pool.acquire().await?.detach();
    let attached = sqlx::query("ATTACH DATABASE $1 AS rebuild")
        .bind(path.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await;
    let result = match attached {
        Ok(_) => rebuild_in_scratch_file(db, &mut conn, &path, options).await,
        Err(e) => Err(e.into()),
    };
    // Whatever happened, the scratch file goes unless it was kept.
    let _ = sqlx::query("DETACH DATABASE rebuild")
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    let kept = matches!(&result, Ok(report) if report.kept);
    if !kept {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
    result
}

async fn rebuild_in_scratch_file(
    db: &keyledger_storage::Database,
    conn: &mut SqliteConnection,
    path: &Path,
    options: &RebuildOptions,
) -> Result<RebuildReport, ReplayError> {
    // The scratch file is disposable until kept: no fsync, a large cache. It is
    // new, so its rollback journal stays nearly empty (pages past a file's
    // original end are not journaled).
    sqlx::raw_sql(
        "PRAGMA rebuild.synchronous = OFF;
         PRAGMA rebuild.cache_size = -131072;",
    )
    .execute(&mut *conn)
    .await?;
    let tables = SqliteTables::new(SCRATCH_SCHEMA, "").expect("a plain name");

    let mut tx = conn.begin().await?;
    // The first statement of the transaction reads `main`: the snapshot.
    let checkpoint = SqliteReadModels::checkpoint(&mut tx, CHECKPOINT).await?;
    SqliteReadModels::install_into(&mut tx, &tables).await?;
    // The comparison needs none of them; a kept file gets them back below.
    let indexes = drop_secondary_indexes(&mut tx, &tables).await?;

    // Personal fields opened as the live projector opens them (clear, or
    // `[erased]`), with the data keys read beside the snapshot, as on PostgreSQL.
    let mut opener = Opener::new(db, options.data_key_wrapping.clone());
    let mut space = SqliteScratch { tx, tables };
    let replayed = replay_and_compare(&mut space, checkpoint, &mut opener, options).await?;
    let SqliteScratch { mut tx, .. } = space;

    if options.keep {
        for sql in &indexes {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(RebuildReport {
        schema: SCRATCH_SCHEMA.to_owned(),
        scratch_file: Some(path.to_owned()),
        kept: options.keep,
        checkpoint,
        events: replayed.events,
        replay_time: replayed.replay_time,
        tables: replayed.tables,
    })
}

/// SQLite's scratch space: the tables in the attached scratch file, written in
/// a transaction whose first read fixed `main`'s snapshot.
struct SqliteScratch<'c> {
    tx: Transaction<'c, Sqlite>,
    tables: SqliteTables,
}

impl ScratchSpace for SqliteScratch<'_> {
    async fn read_batch(
        &mut self,
        after: Position,
        until: Position,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, ReplayError> {
        read_batch(&mut self.tx, after, until, limit).await
    }

    fn target(&mut self) -> Target<'_> {
        Target::sqlite(&mut self.tx, &self.tables)
    }

    async fn save_checkpoint(&mut self, position: Position) -> Result<(), ReplayError> {
        Ok(
            SqliteReadModels::save_checkpoint_in(&mut self.tx, &self.tables, CHECKPOINT, position)
                .await?,
        )
    }

    async fn tables(&mut self) -> Result<Vec<String>, ReplayError> {
        tables_in(&mut self.tx, &self.tables).await
    }

    async fn columns(&mut self, table: &str, live: bool) -> Result<Vec<String>, ReplayError> {
        if live {
            columns(&mut self.tx, "main", table).await
        } else {
            let name = format!("{}{table}", self.tables.prefix());
            columns(&mut self.tx, self.tables.schema(), &name).await
        }
    }

    async fn primary_key(&mut self, table: &str) -> Result<Vec<String>, ReplayError> {
        let name = format!("{}{table}", self.tables.prefix());
        primary_key(&mut self.tx, self.tables.schema(), &name).await
    }

    fn rebuilt_table(&self, table: &str) -> String {
        format!(
            "{}.{}",
            quote_ident(self.tables.schema()),
            quote_ident(&format!("{}{table}", self.tables.prefix()))
        )
    }

    fn live_schema(&self) -> &'static str {
        "main"
    }

    fn conn(&mut self) -> keyledger_storage::Connection<'_> {
        PerBackend::Sqlite(&mut *self.tx)
    }
}

/// The feed's order after `after` up to `until` (the rebuild's checkpoint, or
/// a position at `i64::MAX` for everything), on the caller's own
/// connection (so in its snapshot or its write transaction).
pub(crate) async fn read_batch(
    conn: &mut SqliteConnection,
    after: Position,
    until: Position,
    limit: i64,
) -> Result<Vec<StoredEvent>, ReplayError> {
    let sql = format!(
        "{} WHERE global_position > $1 AND global_position <= $2
             ORDER BY global_position LIMIT $3",
        sqlite_select_events()
    );
    let rows = sqlx::query(&sql)
        .bind(after.global_position)
        .bind(until.global_position)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .iter()
        .map(StoredEvent::from_sqlite_row)
        .collect::<Result<_, _>>()?)
}

/// Drops the secondary (non-unique) indexes of the read-model tables in `tables`
/// (the bulk of the log is cheaper to write without them) and returns the
/// statements that create them again, qualified with the schema.
pub(crate) async fn drop_secondary_indexes(
    conn: &mut SqliteConnection,
    tables: &SqliteTables,
) -> Result<Vec<String>, ReplayError> {
    let schema = quote_ident(tables.schema());
    let indexes: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT name, sql FROM {schema}.sqlite_schema
          WHERE type = 'index' AND sql IS NOT NULL
            AND substr(tbl_name, 1, length($1)) = $1
          ORDER BY rowid"
    ))
    .bind(tables.prefix())
    .fetch_all(&mut *conn)
    .await?;
    let mut recreate = Vec::new();
    for (name, sql) in indexes {
        if sql.to_ascii_uppercase().starts_with("CREATE UNIQUE") {
            continue;
        }
        sqlx::raw_sql(&format!("DROP INDEX {schema}.{}", quote_ident(&name)))
            .execute(&mut *conn)
            .await?;
        recreate.push(qualified_index_sql(&sql, tables.schema()));
    }
    Ok(recreate)
}

/// `CREATE INDEX name ON ...` as SQLite keeps it in `sqlite_schema`, made to create
/// the index in `schema` again (the stored text may or may not carry it).
fn qualified_index_sql(sql: &str, schema: &str) -> String {
    const CREATE: &str = "CREATE INDEX ";
    let rest = sql.get(CREATE.len()..).unwrap_or_default();
    let rest = rest.trim_start();
    let unqualified = [format!("\"{schema}\"."), format!("{schema}.")]
        .iter()
        .find_map(|q| rest.strip_prefix(q.as_str()))
        .unwrap_or(rest);
    format!("{CREATE}\"{schema}\".{unqualified}")
}

/// Every table the read-model DDL created in `tables` (a scratch file holds
/// nothing else; in `main` they are the ones carrying the prefix), without the
/// prefix, in creation order, except the checkpoint table (bookkeeping, not a
/// projection). Discovered rather than listed, so a read model added to the DDL
/// is checked and switched without touching this tool.
pub(crate) async fn tables_in(
    conn: &mut SqliteConnection,
    tables: &SqliteTables,
) -> Result<Vec<String>, ReplayError> {
    let names: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT name FROM {}.sqlite_schema
          WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
            AND substr(name, 1, length($1)) = $1
          ORDER BY rowid",
        quote_ident(tables.schema())
    ))
    .bind(tables.prefix())
    .fetch_all(conn)
    .await?;
    Ok(names
        .into_iter()
        .filter_map(|name| name.strip_prefix(tables.prefix()).map(str::to_owned))
        .filter(|name| name != "projection_checkpoints")
        .collect())
}

async fn columns(
    conn: &mut SqliteConnection,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, ReplayError> {
    Ok(
        sqlx::query_scalar("SELECT name FROM pragma_table_info($1, $2) ORDER BY cid")
            .bind(table)
            .bind(schema)
            .fetch_all(conn)
            .await?,
    )
}

async fn primary_key(
    conn: &mut SqliteConnection,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, ReplayError> {
    Ok(
        sqlx::query_scalar("SELECT name FROM pragma_table_info($1, $2) WHERE pk > 0 ORDER BY pk")
            .bind(table)
            .bind(schema)
            .fetch_all(conn)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_statements_are_qualified_once() {
        for stored in [
            "CREATE INDEX users_email_idx ON users (email)",
            "CREATE INDEX \"rebuild\".users_email_idx ON users (email)",
            "CREATE INDEX rebuild.users_email_idx ON users (email)",
        ] {
            assert_eq!(
                qualified_index_sql(stored, "rebuild"),
                "CREATE INDEX \"rebuild\".users_email_idx ON users (email)"
            );
        }
    }

    #[test]
    fn stamps_are_plain_digits() {
        let s = stamp();
        assert!(
            s.len() >= 13 && s.bytes().all(|b| b.is_ascii_digit()),
            "{s}"
        );
    }
}
