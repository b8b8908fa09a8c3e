//! `keyledger-replay rebuild`: proves the read models are what the log says.
//!
//! Everything happens in ONE `REPEATABLE READ` transaction, so a single snapshot
//! serves three purposes:
//! 1. the live projector's checkpoint is read in it; the projector moves its
//!    checkpoint and its tables in one transaction, so in this snapshot the live
//!    tables hold exactly the events up to that checkpoint;
//! 2. the events up to and including the checkpoint are replayed from it into a
//!    fresh schema. Everything up to a checkpoint is final (the feed only hands out
//!    transactions older than every running one), so nothing is missing;
//! 3. the rebuilt tables are compared with the live ones in it (`EXCEPT` both ways,
//!    all columns), while the live projector keeps running undisturbed.
//!
//! The fresh schema disappears with the transaction (rolled back) unless `keep`
//! is set, in which case it is committed with its own checkpoint row, ready to be
//! inspected or swapped in.
//!
//! Cost: the transaction writes (DDL and rows), so it holds a transaction id for
//! as long as the replay runs; every feed follower in the cluster waits for it to
//! end before it sees newer events (see `projections/src/feed.rs`).
//!
//! On the embedded store the same happens with a scratch file attached beside the
//! live one (see [`sqlite`]); the report and the exit codes are the same. Only the
//! scratch space and the catalogs differ ([`ScratchSpace`], PostgreSQL's here and
//! SQLite's in [`sqlite`]); replaying and comparing are written once
//! ([`replay_and_compare`]).

pub(crate) mod sqlite;

use keyledger_domain::DataKeyWrapping;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyledger_projections::read_models::{FreshReadModels, Target, CHECKPOINT};
use keyledger_projections::{Position, ReadModels, StoredEvent};
use keyledger_storage::{per_backend, Connection, PerBackend};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::personal::Opener;
use crate::stored::select_events;
use crate::ReplayError;
use keyledger_storage::{Database, Engine};

/// How a rebuild runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildOptions {
    /// Commit the rebuilt schema instead of dropping it, to inspect or swap it in.
    pub keep: bool,
    /// Events read per query (all inside the one transaction).
    pub batch_size: i64,
    /// The keys wrapping the data keys (the server's
    /// KEYLEDGER_DATA_KEY_WRAPPING_KEY); `None`: only keys stored before wrapping
    /// open.
    pub data_key_wrapping: Option<Arc<DataKeyWrapping>>,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            keep: false,
            batch_size: 1000,
            data_key_wrapping: None,
        }
    }
}

/// How one rebuilt table compares with its live counterpart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableComparison {
    /// Table name (the same in the fresh schema and in `public`).
    pub table: String,
    /// Rows the replay produced.
    pub rebuilt_rows: i64,
    /// Rows in the live table at the checkpoint's snapshot.
    pub live_rows: i64,
    /// Rows the replay produced that the live table lacks (or has differently).
    pub only_in_rebuild: i64,
    /// Live rows the replay did not produce (or produced differently).
    pub only_in_live: i64,
    /// Columns the live table lacks (schema drift: the table is then unequal).
    pub missing_live_columns: Vec<String>,
    /// Columns only the live table has (schema drift: the table is then unequal).
    pub extra_live_columns: Vec<String>,
    /// Primary keys of a few differing rows, to start an investigation.
    pub sample_keys: Vec<String>,
}

impl TableComparison {
    /// True when both tables hold exactly the same rows and columns.
    pub fn is_equal(&self) -> bool {
        self.only_in_rebuild == 0
            && self.only_in_live == 0
            && self.missing_live_columns.is_empty()
            && self.extra_live_columns.is_empty()
    }

    /// Rows that differ, counted on both sides (a changed row counts twice).
    pub fn differences(&self) -> i64 {
        self.only_in_rebuild + self.only_in_live
    }
}

/// The outcome of [`rebuild`], so that callers can act on it without parsing text.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    /// The fresh schema the read models were rebuilt in (on the embedded store,
    /// the name the scratch file was attached under).
    pub schema: String,
    /// The embedded store's scratch file (`<data dir>/rebuild-<ts>.db`); `None` on
    /// PostgreSQL.
    pub scratch_file: Option<PathBuf>,
    /// Whether that schema was committed (`keep`) or dropped.
    pub kept: bool,
    /// The live projector's checkpoint the rebuild stopped at (inclusive).
    pub checkpoint: Position,
    /// Events replayed.
    pub events: u64,
    /// Time spent reading and applying events.
    pub replay_time: Duration,
    /// One entry per read-model table.
    pub tables: Vec<TableComparison>,
}

impl RebuildReport {
    /// True when every table equals its live counterpart.
    pub fn is_equal(&self) -> bool {
        self.tables.iter().all(TableComparison::is_equal)
    }

    /// Replay throughput, the figure to watch as the log grows.
    pub fn events_per_second(&self) -> f64 {
        let secs = self.replay_time.as_secs_f64();
        if secs > 0.0 {
            self.events as f64 / secs
        } else {
            0.0
        }
    }

    /// Prints the report (what the CLI shows).
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "rebuilt into {} up to checkpoint (tx {}, position {})",
            self.target(),
            self.checkpoint.tx_id,
            self.checkpoint.global_position
        )?;
        writeln!(
            out,
            "replayed {} events in {:.3}s ({:.0} events/s)",
            self.events,
            self.replay_time.as_secs_f64(),
            self.events_per_second()
        )?;
        writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>14} {:>10}  status",
            "table", "rebuilt", "live", "only-rebuilt", "only-live"
        )?;
        for t in &self.tables {
            writeln!(
                out,
                "{:<16} {:>10} {:>10} {:>14} {:>10}  {}",
                t.table,
                t.rebuilt_rows,
                t.live_rows,
                t.only_in_rebuild,
                t.only_in_live,
                if t.is_equal() { "equal" } else { "DIFFERENT" }
            )?;
            if !t.missing_live_columns.is_empty() {
                writeln!(
                    out,
                    "  columns missing in live table: {}",
                    t.missing_live_columns.join(", ")
                )?;
            }
            if !t.extra_live_columns.is_empty() {
                writeln!(
                    out,
                    "  columns only in live table: {}",
                    t.extra_live_columns.join(", ")
                )?;
            }
            if !t.sample_keys.is_empty() {
                writeln!(out, "  differing keys: {}", t.sample_keys.join(" "))?;
            }
        }
        let verdict = if self.is_equal() {
            "EQUAL: the live read models match the event log"
        } else {
            "DIFFERENT: the live read models do not match the event log"
        };
        writeln!(out, "{verdict}")?;
        match (&self.scratch_file, self.kept) {
            (None, true) => writeln!(out, "kept schema {}", self.schema)?,
            (None, false) => writeln!(out, "dropped schema {}", self.schema)?,
            (Some(file), true) => writeln!(out, "kept file {}", file.display())?,
            (Some(file), false) => writeln!(out, "deleted file {}", file.display())?,
        }
        Ok(())
    }

    /// Where the read models were rebuilt, as the report names it.
    fn target(&self) -> String {
        match &self.scratch_file {
            None => format!("schema {}", self.schema),
            Some(file) => format!("file {}", file.display()),
        }
    }
}

/// Rebuilds every read model from the event log into a fresh schema (PostgreSQL)
/// or an attached scratch file (embedded store), compares it with the live tables
/// and prints the result (see the module documentation for why the single
/// transaction makes the comparison exact). The embedded store must be opened
/// for writing ([`crate::Access::WriteBesideServer`]): the scratch file is
/// attached to its writer.
pub async fn rebuild(
    db: &Database,
    options: &RebuildOptions,
    out: &mut dyn Write,
) -> Result<RebuildReport, ReplayError> {
    let report = match db.engine() {
        Engine::Postgres(pool) => rebuild_postgres(pool, options).await?,
        Engine::Sqlite(embedded) => sqlite::rebuild(db, embedded.writer(), options).await?,
    };
    report.write_to(out)?;
    out.flush()?;
    Ok(report)
}

async fn rebuild_postgres(
    pool: &PgPool,
    options: &RebuildOptions,
) -> Result<RebuildReport, ReplayError> {
    let mut tx = pool.begin().await?;
    // Must be the first statement: the snapshot is taken by the next one.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    // Read before the search_path changes, so this is the live (public) checkpoint.
    let checkpoint = ReadModels::checkpoint(&mut tx, CHECKPOINT).await?;

    let schema = schema_name();
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut *tx)
        .await?;
    // The projection code names its tables unqualified; from here on they are the
    // fresh ones. Live tables are reached as `public.<table>`.
    sqlx::raw_sql(&format!("SET LOCAL search_path TO {schema}, public"))
        .execute(&mut *tx)
        .await?;
    ReadModels::install(&mut tx).await?;
    // The comparison needs none of them; a kept schema gets them back below.
    drop_secondary_indexes(&mut tx, &schema).await?;

    // Like the live projector, personal fields are opened before projecting, so
    // the rebuilt rows hold what the live ones hold (clear, or `[erased]`).
    let mut opener = Opener::new(
        &Database::from_pool(pool.clone()),
        options.data_key_wrapping.clone(),
    );
    let mut space = PgScratch { tx, schema };
    let replayed = replay_and_compare(&mut space, checkpoint, &mut opener, options).await?;
    let PgScratch { mut tx, schema } = space;

    if options.keep {
        // The same idempotent DDL: recreates the indexes dropped above.
        ReadModels::install(&mut tx).await?;
        tx.commit().await?;
    } else {
        // Rolling back removes the schema and everything in it; nothing else was
        // written.
        tx.rollback().await?;
    }

    Ok(RebuildReport {
        schema,
        scratch_file: None,
        kept: options.keep,
        checkpoint,
        events: replayed.events,
        replay_time: replayed.replay_time,
        tables: replayed.tables,
    })
}

/// Where a rebuild writes and in which snapshot it reads: the part of a rebuild
/// that is a genuinely different mechanism per back end. On PostgreSQL, a fresh
/// schema first on the `search_path` inside one `REPEATABLE READ` transaction
/// ([`PgScratch`]); on SQLite, a scratch file attached beside the live one, in a
/// transaction whose first read fixed `main`'s snapshot
/// ([`sqlite::SqliteScratch`]). The catalogs that list tables, columns and keys
/// differ too.
pub(crate) trait ScratchSpace {
    /// The feed's next events after `after`, up to `until` (inclusive).
    async fn read_batch(
        &mut self,
        after: Position,
        until: Position,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, ReplayError>;
    /// Where the read models are rebuilt.
    fn target(&mut self) -> Target<'_>;
    /// Records in the rebuilt tables' own checkpoint table how far they got.
    async fn save_checkpoint(&mut self, position: Position) -> Result<(), ReplayError>;
    /// The rebuilt tables (unprefixed names), except the checkpoint table.
    async fn tables(&mut self) -> Result<Vec<String>, ReplayError>;
    /// The columns of the rebuilt table or of the live one, in order.
    async fn columns(&mut self, table: &str, live: bool) -> Result<Vec<String>, ReplayError>;
    /// The primary key of the rebuilt table.
    async fn primary_key(&mut self, table: &str) -> Result<Vec<String>, ReplayError>;
    /// The rebuilt table's qualified name, for SQL.
    fn rebuilt_table(&self, table: &str) -> String;
    /// The schema of the live tables.
    fn live_schema(&self) -> &'static str;
    /// The connection, in the rebuild's snapshot.
    fn conn(&mut self) -> Connection<'_>;
}

/// PostgreSQL's scratch space: a fresh schema, first on the `search_path` of the
/// rebuild's one transaction.
struct PgScratch {
    tx: Transaction<'static, Postgres>,
    schema: String,
}

impl ScratchSpace for PgScratch {
    async fn read_batch(
        &mut self,
        after: Position,
        until: Position,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, ReplayError> {
        read_batch(&mut self.tx, after, until, limit).await
    }

    fn target(&mut self) -> Target<'_> {
        Target::live(PerBackend::Postgres(&mut *self.tx))
    }

    async fn save_checkpoint(&mut self, position: Position) -> Result<(), ReplayError> {
        // The search_path finds the fresh schema's own checkpoint table.
        Ok(ReadModels::save_checkpoint(&mut self.tx, CHECKPOINT, position).await?)
    }

    async fn tables(&mut self) -> Result<Vec<String>, ReplayError> {
        rebuilt_tables(&mut self.tx, &self.schema).await
    }

    async fn columns(&mut self, table: &str, live: bool) -> Result<Vec<String>, ReplayError> {
        let schema = if live { "public" } else { &self.schema };
        columns(&mut self.tx, schema, table).await
    }

    async fn primary_key(&mut self, table: &str) -> Result<Vec<String>, ReplayError> {
        primary_key(&mut self.tx, &self.schema, table).await
    }

    fn rebuilt_table(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(table))
    }

    fn live_schema(&self) -> &'static str {
        "public"
    }

    fn conn(&mut self) -> Connection<'_> {
        PerBackend::Postgres(&mut *self.tx)
    }
}

/// What [`replay_and_compare`] found.
pub(crate) struct Replayed {
    pub(crate) events: u64,
    pub(crate) replay_time: Duration,
    pub(crate) tables: Vec<TableComparison>,
}

/// Replays the events up to `checkpoint` into `space` and compares every
/// rebuilt table with its live counterpart, in the space's snapshot.
pub(crate) async fn replay_and_compare(
    space: &mut impl ScratchSpace,
    checkpoint: Position,
    opener: &mut Opener,
    options: &RebuildOptions,
) -> Result<Replayed, ReplayError> {
    let batch_size = options.batch_size.max(1);
    let started = Instant::now();
    let mut after = Position::START;
    let mut events = 0u64;
    // Users and sessions rows stay in memory across batches (bounded): in one
    // transaction, a row rewritten per batch leaves a chain of versions that
    // every later lookup walks. As many as the switching rebuild keeps by
    // default (memory stays flat).
    let mut models = FreshReadModels::new(crate::SwitchOptions::default().cached_rows);
    loop {
        let mut batch = space.read_batch(after, checkpoint, batch_size).await?;
        opener.open(&mut batch).await?;
        models.apply_to(space.target(), &batch).await?;
        events += batch.len() as u64;
        let full = (batch.len() as i64) == batch_size;
        match batch.last() {
            Some(last) => after = last.position,
            None => break,
        }
        if !full {
            break;
        }
    }
    models.flush_to(space.target()).await?;
    drop(models);
    let replay_time = started.elapsed();
    if events > 0 {
        // Into the scratch space's own checkpoint table: a kept rebuild says
        // where it stands, and can resume.
        space.save_checkpoint(after).await?;
    }

    let mut tables = Vec::new();
    for table in space.tables().await? {
        tables.push(compare(space, &table).await?);
    }
    Ok(Replayed {
        events,
        replay_time,
        tables,
    })
}

/// `keyledger_rebuild_<unix seconds>_<millis>`: sortable, and plain ASCII digits,
/// so it is safe to splice into DDL. `CREATE SCHEMA` (without `IF NOT EXISTS`)
/// refuses a clash instead of mixing two rebuilds.
pub(crate) fn schema_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "keyledger_rebuild_{}_{:03}",
        now.as_secs(),
        now.subsec_millis()
    )
}

/// The feed's order and keyset (as in `projections/src/feed.rs`), bounded by the
/// checkpoint instead of by the running transactions.
async fn read_batch(
    conn: &mut PgConnection,
    after: Position,
    until: Position,
    limit: i64,
) -> Result<Vec<StoredEvent>, ReplayError> {
    let sql = format!(
        "{}
          WHERE (tx_id, global_position) > ($1::text::xid8, $2)
            AND (tx_id, global_position) <= ($3::text::xid8, $4)
          ORDER BY tx_id, global_position
          LIMIT $5",
        select_events()
    );
    let rows = sqlx::query(&sql)
        .bind(after.tx_id.to_string())
        .bind(after.global_position)
        .bind(until.tx_id.to_string())
        .bind(until.global_position)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .iter()
        .map(StoredEvent::from_row)
        .collect::<Result<_, _>>()?)
}

/// Secondary (non-unique) indexes of the fresh schema: dropped while the bulk of
/// the log is replayed and built again in one pass before the switch, which is
/// cheaper than maintaining them row by row. Unique ones stay: upserts need them.
pub(crate) async fn drop_secondary_indexes(
    conn: &mut PgConnection,
    schema: &str,
) -> Result<(), ReplayError> {
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT ic.relname::text FROM pg_index i
           JOIN pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_namespace n ON n.oid = ic.relnamespace
          WHERE n.nspname = $1 AND NOT i.indisunique",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    for index in indexes {
        sqlx::raw_sql(&format!("DROP INDEX {schema}.{}", quote_ident(&index)))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Every table the read-model DDL created, in creation order, except the
/// checkpoint table (bookkeeping, not a projection). Discovered rather than
/// listed, so a read model added to the DDL is checked without touching this tool.
pub(crate) async fn rebuilt_tables(
    conn: &mut PgConnection,
    schema: &str,
) -> Result<Vec<String>, ReplayError> {
    Ok(sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname <> 'projection_checkpoints'
          ORDER BY c.oid",
    )
    .bind(schema)
    .fetch_all(conn)
    .await?)
}

async fn columns(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, ReplayError> {
    Ok(sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_attribute a
          WHERE a.attrelid = to_regclass(format('%I.%I', $1::text, $2::text))
            AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(conn)
    .await?)
}

async fn primary_key(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, ReplayError> {
    Ok(sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
          WHERE i.indrelid = to_regclass(format('%I.%I', $1::text, $2::text))
            AND i.indisprimary
          ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(conn)
    .await?)
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The columns a rebuilt table shares with the live one (in the rebuilt order),
/// the rebuilt ones the live table lacks, and the live ones the rebuild lacks.
pub(crate) fn split_columns<'a>(
    rebuilt: &'a [String],
    live: &[String],
) -> (Vec<&'a String>, Vec<String>, Vec<String>) {
    let common = rebuilt.iter().filter(|c| live.contains(c)).collect();
    let missing = rebuilt
        .iter()
        .filter(|c| !live.contains(c))
        .cloned()
        .collect();
    let extra = live
        .iter()
        .filter(|c| !rebuilt.contains(c))
        .cloned()
        .collect();
    (common, missing, extra)
}

/// Compares a rebuilt table with its live counterpart on every column they
/// share (and flags columns they do not share), within the rebuild's snapshot.
async fn compare(
    space: &mut impl ScratchSpace,
    table: &str,
) -> Result<TableComparison, ReplayError> {
    let rebuilt_columns = space.columns(table, false).await?;
    let live_columns = space.columns(table, true).await?;
    if live_columns.is_empty() {
        return Err(ReplayError::LiveTableMissing(format!(
            "{}.{table}",
            space.live_schema()
        )));
    }
    let (common, missing_live_columns, extra_live_columns) =
        split_columns(&rebuilt_columns, &live_columns);

    let rebuilt = space.rebuilt_table(table);
    let live = format!(
        "{}.{}",
        quote_ident(space.live_schema()),
        quote_ident(table)
    );
    let cols = common
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let only_rebuilt = format!("SELECT {cols} FROM {rebuilt} EXCEPT SELECT {cols} FROM {live}");
    let only_live = format!("SELECT {cols} FROM {live} EXCEPT SELECT {cols} FROM {rebuilt}");
    let counts = format!(
        "SELECT (SELECT count(*) FROM {rebuilt}),
                (SELECT count(*) FROM {live}),
                (SELECT count(*) FROM ({only_rebuilt}) d),
                (SELECT count(*) FROM ({only_live}) d)"
    );
    let (rebuilt_rows, live_rows, only_in_rebuild, only_in_live): (i64, i64, i64, i64) =
        per_backend!(space.conn(), |conn| {
            sqlx::query_as(&counts).fetch_one(conn).await?
        });

    let mut sample_keys = Vec::new();
    let key = space.primary_key(table).await?;
    if only_in_rebuild + only_in_live > 0
        && !key.is_empty()
        && key.iter().all(|k| common.contains(&k))
    {
        let key_expr = key
            .iter()
            .map(|k| format!("CAST({} AS TEXT)", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" || ',' || ");
        let samples = format!(
            "SELECT DISTINCT k FROM (
                SELECT {key_expr} AS k FROM ({only_rebuilt}) a
                UNION ALL
                SELECT {key_expr} AS k FROM ({only_live}) b
             ) d ORDER BY k LIMIT 5"
        );
        sample_keys = per_backend!(space.conn(), |conn| {
            sqlx::query_scalar(&samples).fetch_all(conn).await?
        });
    }

    Ok(TableComparison {
        table: table.to_owned(),
        rebuilt_rows,
        live_rows,
        only_in_rebuild,
        only_in_live,
        missing_live_columns,
        extra_live_columns,
        sample_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_safe_identifiers() {
        let name = schema_name();
        assert!(name.starts_with("keyledger_rebuild_"));
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("users"), "\"users\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn a_table_with_drifted_columns_is_not_equal() {
        let mut t = TableComparison {
            table: "users".into(),
            rebuilt_rows: 1,
            live_rows: 1,
            only_in_rebuild: 0,
            only_in_live: 0,
            missing_live_columns: vec![],
            extra_live_columns: vec![],
            sample_keys: vec![],
        };
        assert!(t.is_equal());
        t.extra_live_columns.push("nickname".into());
        assert!(!t.is_equal());
    }
}
