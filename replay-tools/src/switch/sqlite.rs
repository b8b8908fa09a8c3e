//! `keyledger-replay rebuild --switch` on the embedded store, while the server
//! serves (its projector hands the read models over through a row, since the
//! server and the tool are two processes on one file).
//!
//! 1. **Replay** the log in feed order into generation-prefixed tables in the
//!    live file (`rb<ts>_users`, ..., created by the read side's own DDL), in short
//!    `BEGIN IMMEDIATE` batches: the server's writer waits at most one batch for
//!    the write lock. The prefixed tables' own checkpoint moves when they hold
//!    everything replayed (at the end of each phase). The live projector is
//!    untouched meanwhile.
//! 2. **Take over** near the head: a row in `projection_handover`. The server's
//!    projector checks for it at its re-check interval and inside every batch's
//!    write transaction, so from the row's commit on it applies no batch; it
//!    stands by until the row is gone. The rest of the log is replayed meanwhile,
//!    every batch refreshing the row (a row left by a tool that died is dropped by
//!    the projector after [`HANDOVER_STALE_AFTER`]).
//! 3. **Switch** in ONE `BEGIN IMMEDIATE`: replay the last events (nothing can
//!    commit meanwhile), rename the live tables to `old<ts>_*` and the rebuilt ones
//!    to the live names (the checkpoint table too, carrying over the other
//!    followers' rows such as the NATS relay's), delete the handover row. A rename
//!    is a change of the schema only: cheap, and atomic with the rest. The
//!    server's connections re-prepare their statements on the new tables at their
//!    next use (SQLite reports the schema change to every prepared statement).
//!    Index names keep their `rb<ts>_` prefix (SQLite cannot rename an index);
//!    the read side's install creates only missing tables, so it adds none.
//! 4. The old tables are dropped, one per transaction, unless `keep_old`.
//!
//! On failure before the switch the prefixed tables and the handover row are
//! removed again; nothing was switched.

use std::io::Write;
use std::time::Instant;

use chrono::{DateTime, Utc};
use keyledger_projections::read_models::{FreshReadModels, CHECKPOINT};
use keyledger_projections::read_models_sqlite::SqliteTables;
use keyledger_projections::{
    handover_requested, Position, SqliteReadModels, StoredEvent, HANDOVER_STALE_AFTER,
};
use keyledger_storage::Database;
use sqlx::{Connection, SqliteConnection, SqlitePool};

use super::{Progress, Replay, ScratchSpace, SwitchOptions, SwitchReport};
use crate::personal::Opener;
use crate::rebuild::quote_ident;
use crate::rebuild::sqlite::{read_batch, stamp, tables_in};
use crate::ReplayError;

/// No upper bound: the switch reads up to the head.
const UNBOUNDED: Position = Position {
    tx_id: 0,
    global_position: i64::MAX,
};

/// The checkpoints table, switched with the read models.
const CHECKPOINTS: &str = "projection_checkpoints";

/// See the module documentation. Progress lines go to `progress`.
pub(crate) async fn rebuild_switch(
    db: &Database,
    pool: &SqlitePool,
    options: &SwitchOptions,
    progress: &mut dyn Write,
) -> Result<SwitchReport, ReplayError> {
    let has_handover: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema
                         WHERE type = 'table' AND name = 'projection_handover')",
    )
    .fetch_one(pool)
    .await?;
    if !has_handover {
        return Err(ReplayError::Refused(
            "this embedded store has no projection_handover table: the server that \
             migrated it is older than this tool and could not hand its read models \
             over; start the newer server once (it migrates), then try again"
                .to_owned(),
        ));
    }
    let generation = stamp();
    let prefix = format!("rb{generation}_");
    let old_prefix = format!("old{generation}_");
    let tables = SqliteTables::new("main", &prefix).expect("a plain prefix");
    // The tool's writing connection (one, like the server's writer).
    let conn = pool.acquire().await?.detach();
    let mut build = Build {
        replay: Replay {
            db,
            wrapping: options.data_key_wrapping.clone(),
            models: FreshReadModels::new(options.cached_rows),
            batch_size: options.batch_size.max(1),
            after: Position::START,
            events: 0,
            meter: Progress::start(db, options.progress_every).await?,
        },
        space: PrefixedTables {
            conn,
            tables,
            handover: None,
        },
    };
    let result = build.run(&old_prefix, options, progress).await;
    if result.is_err() {
        build.space.abandon().await;
    }
    // The long run kept the WAL from being reset; let it be reused (never waits).
    let _ = sqlx::query("PRAGMA main.wal_checkpoint(PASSIVE)")
        .execute(&mut build.space.conn)
        .await;
    let _ = build.space.conn.close().await;
    result
}

/// Generation-prefixed tables in the live file, written through the tool's own
/// connection in short `BEGIN IMMEDIATE` batches, each refreshing the handover
/// request once there is one.
pub(super) struct PrefixedTables {
    conn: SqliteConnection,
    /// `main` with the generation's prefix.
    tables: SqliteTables,
    /// While the read models are handed over: the `requested_at` this tool last
    /// wrote (a refresh that finds another value lost the handover).
    handover: Option<DateTime<Utc>>,
}

impl ScratchSpace for PrefixedTables {
    async fn apply(
        &mut self,
        models: &mut FreshReadModels,
        batch: &[StoredEvent],
    ) -> Result<(), ReplayError> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        refresh_handover(&mut tx, &mut self.handover).await?;
        models.apply_sqlite(&mut tx, &self.tables, batch).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn flush(
        &mut self,
        models: &mut FreshReadModels,
        after: Position,
    ) -> Result<(), ReplayError> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        refresh_handover(&mut tx, &mut self.handover).await?;
        models.flush_sqlite(&mut tx, &self.tables).await?;
        if after != Position::START {
            SqliteReadModels::save_checkpoint_in(&mut tx, &self.tables, CHECKPOINT, after).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Where the replay stands, and the tables it builds.
struct Build<'a> {
    replay: Replay<'a>,
    space: PrefixedTables,
}

impl Build<'_> {
    async fn run(
        &mut self,
        old_prefix: &str,
        options: &SwitchOptions,
        progress: &mut dyn Write,
    ) -> Result<SwitchReport, ReplayError> {
        // The rebuilt tables' indexes are written all over (random ids): a cache
        // of SQLite's default 2 MB would miss on most rows. This connection's own.
        sqlx::raw_sql("PRAGMA cache_size = -131072")
            .execute(&mut self.space.conn)
            .await?;
        let mut tx = self.space.conn.begin_with("BEGIN IMMEDIATE").await?;
        SqliteReadModels::install_into(&mut tx, &self.space.tables).await?;
        tx.commit().await?;
        // Indexes stay: building them afterwards would hold the write lock (and
        // the server's writes) for as long as that takes; kept up batch by batch
        // the cost is spread thin.
        let started = Instant::now();

        // 1. Replay while the live projector runs.
        self.replay
            .until_short(&mut self.space, "replaying", progress)
            .await?;

        // 2. Take over near the head.
        writeln!(
            progress,
            "rebuild: near the head after {} events; asking the projector to hand over",
            self.replay.events
        )?;
        let asked = Instant::now();
        self.space.request_handover(options).await?;
        let lock_wait = asked.elapsed();
        let held_since = Instant::now();
        self.replay
            .until_short(&mut self.space, "catching up", progress)
            .await?;

        // 3. Switch.
        let switched = self.switch(old_prefix).await?;
        let replay_time = started.elapsed();
        let lock_held = held_since.elapsed();

        // 4. The old tables.
        if !options.keep_old {
            for table in &switched {
                let mut tx = self.space.conn.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::raw_sql(&format!(
                    "DROP TABLE IF EXISTS main.{}",
                    quote_ident(&format!("{old_prefix}{table}"))
                ))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(SwitchReport {
            schema: self.space.tables.prefix().to_owned(),
            backup_schema: old_prefix.to_owned(),
            prefixed: true,
            kept_old: options.keep_old,
            tables: switched.into_iter().filter(|t| t != CHECKPOINTS).collect(),
            checkpoint: self.replay.after,
            events: self.replay.events,
            replay_time,
            lock_wait,
            lock_held,
        })
    }

    /// The atomic part (see the module documentation). Returns the tables
    /// switched, checkpoint table last.
    async fn switch(&mut self, old_prefix: &str) -> Result<Vec<String>, ReplayError> {
        let replay = &mut self.replay;
        let space = &mut self.space;
        let mut opener = Opener::new(replay.db, replay.wrapping.clone());
        let mut tx = space.conn.begin_with("BEGIN IMMEDIATE").await?;
        refresh_handover(&mut tx, &mut space.handover).await?;
        // The last events: while this transaction holds the write lock, nothing
        // else commits, so reading until a short batch reaches the true head.
        loop {
            let mut batch = read_batch(&mut tx, replay.after, UNBOUNDED, replay.batch_size).await?;
            opener.open(&mut batch).await?;
            replay
                .models
                .apply_sqlite(&mut tx, &space.tables, &batch)
                .await?;
            replay.events += batch.len() as u64;
            if let Some(last) = batch.last() {
                replay.after = last.position;
            }
            if (batch.len() as i64) < replay.batch_size {
                break;
            }
        }
        replay.models.flush_sqlite(&mut tx, &space.tables).await?;
        if replay.after != Position::START {
            SqliteReadModels::save_checkpoint_in(&mut tx, &space.tables, CHECKPOINT, replay.after)
                .await?;
        }
        let prefix = space.tables.prefix().to_owned();
        if live_table_exists(&mut tx, CHECKPOINTS).await? {
            // The other followers (the NATS relay) keep their checkpoints; they
            // cannot write meanwhile either.
            sqlx::query(&format!(
                "INSERT INTO main.{} (name, tx_id, global_position, updated_at)
                 SELECT name, tx_id, global_position, updated_at FROM main.{CHECKPOINTS}
                  WHERE name <> $1
                 ON CONFLICT (name) DO NOTHING",
                quote_ident(&format!("{prefix}{CHECKPOINTS}"))
            ))
            .bind(CHECKPOINT)
            .execute(&mut *tx)
            .await?;
        }
        let mut switched = tables_in(&mut tx, &space.tables).await?;
        switched.push(CHECKPOINTS.to_owned());
        for table in &switched {
            if live_table_exists(&mut tx, table).await? {
                sqlx::raw_sql(&format!(
                    "ALTER TABLE main.{} RENAME TO {}",
                    quote_ident(table),
                    quote_ident(&format!("{old_prefix}{table}"))
                ))
                .execute(&mut *tx)
                .await?;
            }
            sqlx::raw_sql(&format!(
                "ALTER TABLE main.{} RENAME TO {}",
                quote_ident(&format!("{prefix}{table}")),
                quote_ident(table)
            ))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM main.projection_handover WHERE name = $1")
            .bind(CHECKPOINT)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        space.handover = None;
        Ok(switched)
    }
}

impl PrefixedTables {
    /// Writes the handover row: from its commit on, the server's projector
    /// applies no batch (it checks inside each batch's transaction). The write
    /// lock is retried for up to `lock_timeout` when it stays busy past SQLite's
    /// busy timeout.
    async fn request_handover(&mut self, options: &SwitchOptions) -> Result<(), ReplayError> {
        let deadline = Instant::now() + options.lock_timeout;
        loop {
            match self.try_request_handover().await {
                Err(ReplayError::Database(e)) if is_busy(&e) => {
                    if Instant::now() >= deadline {
                        return Err(ReplayError::Refused(format!(
                            "the write lock stayed busy for {:?}; nothing was switched",
                            options.lock_timeout
                        )));
                    }
                }
                other => return other,
            }
        }
    }

    async fn try_request_handover(&mut self) -> Result<(), ReplayError> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(at) = handover_requested(&mut tx, CHECKPOINT, Utc::now()).await? {
            return Err(ReplayError::Refused(format!(
                "another rebuild --switch asked for the read models at {at} and is still \
                 at work; nothing was switched"
            )));
        }
        let now = Utc::now();
        sqlx::query(
            "INSERT INTO main.projection_handover (name, requested_at) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET requested_at = excluded.requested_at",
        )
        .bind(CHECKPOINT)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.handover = Some(now);
        Ok(())
    }

    /// After a failure: gives the read models back and drops the prefixed tables
    /// (best effort; nothing was switched).
    async fn abandon(&mut self) {
        let cleanup = async {
            let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
            if let Some(mine) = self.handover.take() {
                sqlx::query(
                    "DELETE FROM main.projection_handover WHERE name = $1 AND requested_at = $2",
                )
                .bind(CHECKPOINT)
                .bind(mine)
                .execute(&mut *tx)
                .await?;
            }
            let mut built = tables_in(&mut tx, &self.tables).await?;
            built.push(CHECKPOINTS.to_owned());
            for table in built {
                sqlx::raw_sql(&format!(
                    "DROP TABLE IF EXISTS main.{}",
                    quote_ident(&format!("{}{table}", self.tables.prefix()))
                ))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok::<_, ReplayError>(())
        };
        if let Err(e) = cleanup.await {
            eprintln!(
                "keyledger-replay: could not remove the tables {}* after the failure: {e}",
                self.tables.prefix()
            );
        }
    }
}

/// SQLITE_BUSY (5) and its extended codes.
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 5)
}

/// Keeps this tool's handover request fresh (in the caller's transaction), and
/// fails when the projector dropped it meanwhile as abandoned.
async fn refresh_handover(
    conn: &mut SqliteConnection,
    handover: &mut Option<DateTime<Utc>>,
) -> Result<(), ReplayError> {
    let Some(mine) = *handover else {
        return Ok(());
    };
    let now = Utc::now().max(mine);
    let refreshed = sqlx::query(
        "UPDATE main.projection_handover SET requested_at = $3
          WHERE name = $1 AND requested_at = $2",
    )
    .bind(CHECKPOINT)
    .bind(mine)
    .bind(now)
    .execute(conn)
    .await?;
    if refreshed.rows_affected() == 0 {
        *handover = None;
        return Err(ReplayError::Refused(format!(
            "the projector took the read models back (this tool's handover request \
             went stale after {HANDOVER_STALE_AFTER:?}); nothing was switched"
        )));
    }
    *handover = Some(now);
    Ok(())
}

async fn live_table_exists(conn: &mut SqliteConnection, table: &str) -> Result<bool, ReplayError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = $1)",
    )
    .bind(table)
    .fetch_one(conn)
    .await?)
}
