//! `keyledger-replay rebuild --switch`: rebuilds the read models into a fresh
//! schema while the server keeps serving, then swaps them in atomically.
//!
//! 1. **Replay** the log in feed order into a fresh schema, one transaction per
//!    batch. No long transaction: the ordered feed of every node keeps flowing, and
//!    a crash leaves a schema that is simply dropped. The live projector is
//!    untouched meanwhile. Users and sessions rows stay in memory across batches
//!    (bounded, see `FreshReadModels`) and are written when they leave it; the
//!    schema's own `read_models` checkpoint moves when the tables hold everything
//!    replayed (at the end of each phase below).
//! 2. **Take over** near the head: queue for the read-model projector's advisory
//!    lock (`keyledger:read_models`). The leader sees the waiter at its next
//!    re-check (at most a second), lets go between two batches and stands by; the
//!    rest of the log is replayed while the lock is held, so nothing else writes
//!    the read models.
//! 3. **Switch** in ONE transaction: the live tables move to a backup schema and the
//!    rebuilt ones (checkpoint table included, carrying over the other followers'
//!    rows such as the NATS relay's) into `public`. The API names tables
//!    unqualified, so every query sees either all old or all new tables, never a
//!    half-built one. The lock is released after the commit and the projector
//!    resumes from the rebuilt checkpoint.
//! 4. The backup schema is dropped unless `keep_old`.
//!
//! The tables are the ones `projections/sql/read_models.sql` creates, discovered
//! in the fresh schema at run time: a read model added there is switched too.
//!
//! The embedded store does the same with generation-prefixed tables in the live
//! file and a handover row instead of the lock (see [`sqlite`]). Only those
//! mechanisms are written per back end (the [`ScratchSpace`] a batch goes to,
//! taking over, the switch); reading, opening, folding and progress are one
//! [`Replay`].

pub(crate) mod sqlite;

use keyledger_domain::DataKeyWrapping;
use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyledger_projections::read_models::{FreshReadModels, CHECKPOINT};
use keyledger_projections::{lock_key, EventFeed, Position, ReadModels, StoredEvent};
use keyledger_storage::{with_readers, Database, Engine};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::mpsc;

use crate::personal::Opener;
use crate::rebuild::{rebuilt_tables, schema_name};
use crate::ReplayError;

/// How a switching rebuild runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchOptions {
    /// Events per batch (and per transaction).
    pub batch_size: i64,
    /// Keep the old tables in their backup schema instead of dropping them.
    pub keep_old: bool,
    /// How long to wait for the live projector to hand its lock over.
    pub lock_timeout: Duration,
    /// Seconds between progress lines.
    pub progress_every: Duration,
    /// Users and sessions rows kept in memory across batches, each (a few
    /// hundred bytes per row): lookups and rewrites saved against memory.
    pub cached_rows: usize,
    /// The keys wrapping the data keys (the server's
    /// KEYLEDGER_DATA_KEY_WRAPPING_KEY); `None`: only keys stored before wrapping
    /// open.
    pub data_key_wrapping: Option<Arc<DataKeyWrapping>>,
}

impl Default for SwitchOptions {
    fn default() -> Self {
        Self {
            batch_size: 2500,
            keep_old: false,
            lock_timeout: Duration::from_secs(60),
            progress_every: Duration::from_secs(1),
            cached_rows: 70_000,
            data_key_wrapping: None,
        }
    }
}

/// What a switching rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchReport {
    /// The schema the read models were rebuilt in (its tables are now in `public`;
    /// the schema itself is dropped). On the embedded store, the prefix the
    /// tables were built under in the live file (`rb<ts>_`).
    pub schema: String,
    /// Where the old tables went. On the embedded store, the prefix they were
    /// renamed to (`old<ts>_`).
    pub backup_schema: String,
    /// True on the embedded store, where [`Self::schema`] and
    /// [`Self::backup_schema`] are table-name prefixes, not schemas.
    pub prefixed: bool,
    /// Whether the backup schema was kept.
    pub kept_old: bool,
    /// The tables switched, in creation order.
    pub tables: Vec<String>,
    /// The checkpoint the new read models start from.
    pub checkpoint: Position,
    /// Events replayed.
    pub events: u64,
    /// Time from the first read to the switch's commit.
    pub replay_time: Duration,
    /// Time spent queued for the projector's lock.
    pub lock_wait: Duration,
    /// Time the lock was held (catch-up and switch): how long the live read models
    /// did not advance.
    pub lock_held: Duration,
}

impl SwitchReport {
    /// Replay throughput.
    pub fn events_per_second(&self) -> f64 {
        let secs = self.replay_time.as_secs_f64();
        if secs > 0.0 {
            self.events as f64 / secs
        } else {
            0.0
        }
    }

    /// Prints the report (what the CLI shows on stdout).
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let (built, lock, old) = if self.prefixed {
            (
                format!("tables {}*", self.schema),
                "handover",
                format!("tables {}*", self.backup_schema),
            )
        } else {
            (
                format!("schema {}", self.schema),
                "lock",
                format!("schema {}", self.backup_schema),
            )
        };
        writeln!(
            out,
            "rebuilt {} events into {built} in {:.3}s ({:.0} events/s)",
            self.events,
            self.replay_time.as_secs_f64(),
            self.events_per_second()
        )?;
        writeln!(
            out,
            "switched {} at checkpoint (tx {}, position {}); waited {:.3}s for the projector's {lock}, held it {:.3}s",
            self.tables.join(", "),
            self.checkpoint.tx_id,
            self.checkpoint.global_position,
            self.lock_wait.as_secs_f64(),
            self.lock_held.as_secs_f64()
        )?;
        if self.kept_old {
            writeln!(out, "old tables kept in {old}")
        } else {
            writeln!(out, "dropped old tables ({old})")
        }
    }
}

/// Rough size of the job, for the ETA: events at the start plus what was
/// appended since (positions are dense enough for an estimate).
struct Progress {
    started: Instant,
    last_line: Instant,
    every: Duration,
    total_at_start: u64,
    head_at_start: i64,
    reported_first_pass: bool,
}

/// `max(global_position)` of the log.
async fn head(db: &Database) -> Result<Option<i64>, ReplayError> {
    let sql = format!(
        "SELECT max(global_position) FROM {}.events",
        db.backend().live_schema()
    );
    Ok(with_readers!(db, |pool| {
        sqlx::query_scalar(&sql).fetch_one(pool).await?
    }))
}

impl Progress {
    async fn start(db: &Database, every: Duration) -> Result<Self, ReplayError> {
        let sql = format!(
            "SELECT count(*), max(global_position) FROM {}.events",
            db.backend().live_schema()
        );
        let (total, head): (i64, Option<i64>) =
            with_readers!(db, |pool| sqlx::query_as(&sql).fetch_one(pool).await?);
        Ok(Self {
            started: Instant::now(),
            last_line: Instant::now(),
            every,
            total_at_start: total.max(0) as u64,
            head_at_start: head.unwrap_or(0),
            reported_first_pass: false,
        })
    }

    async fn tick(
        &mut self,
        db: &Database,
        done: u64,
        phase: &str,
        out: &mut dyn Write,
    ) -> Result<(), ReplayError> {
        // Also once when the log as it was at the start is done, so that a short
        // run reports its rate too.
        let first_pass_done = !self.reported_first_pass && done >= self.total_at_start;
        if self.last_line.elapsed() < self.every && !first_pass_done {
            return Ok(());
        }
        self.reported_first_pass |= first_pass_done;
        self.last_line = Instant::now();
        let head = head(db).await?;
        let appended = (head.unwrap_or(0) - self.head_at_start).max(0) as u64;
        let total = (self.total_at_start + appended).max(done);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 {
            format!("{:.0}s", (total - done) as f64 / rate)
        } else {
            "?".to_owned()
        };
        writeln!(
            out,
            "rebuild: {phase}: {done}/{total} events ({:.1}%), {rate:.0} events/s, ETA {eta}",
            if total > 0 {
                done as f64 * 100.0 / total as f64
            } else {
                100.0
            }
        )?;
        out.flush()?;
        Ok(())
    }
}

/// Where a switching rebuild writes while the live tables serve: a fresh
/// PostgreSQL schema on a connection of its own (its `search_path`), or
/// generation-prefixed tables in the embedded store's live file
/// ([`sqlite::PrefixedTables`]). The mechanisms differ, and so do taking over
/// from the projector and the switch itself; the replay into either is written
/// once ([`Replay`]).
trait ScratchSpace {
    /// Applies one batch and commits it (rows kept in `models` are written
    /// later: the checkpoint waits for [`Self::flush`]).
    async fn apply(
        &mut self,
        models: &mut FreshReadModels,
        batch: &[StoredEvent],
    ) -> Result<(), ReplayError>;

    /// Writes every row still only in memory and moves the scratch tables'
    /// checkpoint to `after`, in one transaction: from here they hold the log
    /// up to it.
    async fn flush(
        &mut self,
        models: &mut FreshReadModels,
        after: Position,
    ) -> Result<(), ReplayError>;
}

/// The fresh schema, through the connection whose `search_path` names it.
impl ScratchSpace for PgConnection {
    async fn apply(
        &mut self,
        models: &mut FreshReadModels,
        batch: &[StoredEvent],
    ) -> Result<(), ReplayError> {
        let mut tx = self.begin().await?;
        models.apply(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn flush(
        &mut self,
        models: &mut FreshReadModels,
        after: Position,
    ) -> Result<(), ReplayError> {
        let mut tx = self.begin().await?;
        models.flush(&mut tx).await?;
        if after != Position::START {
            ReadModels::save_checkpoint(&mut tx, CHECKPOINT, after).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The next batch of the feed with its personal fields opened, as the live
/// projector opens them before projecting (so the switched-in tables hold the same).
async fn read_opened(
    feed: &EventFeed,
    opener: &mut Opener,
    after: Position,
    limit: i64,
) -> Result<Vec<StoredEvent>, ReplayError> {
    let mut batch = feed.read_after(after, limit).await?;
    opener.open(&mut batch).await?;
    Ok(batch)
}

/// Reads and opens batches from `after` on a thread of its own (its own runtime
/// and connections: the database reopened there) until one comes back short,
/// and sends them in order; an error is sent as the last item. Decoding and
/// opening (decrypting) then run on the second core while this thread folds
/// and the database writes. On the embedded store the thread reads through
/// read-only connections, which can never take the write lock.
fn spawn_reader(
    db: &Database,
    wrapping: Option<Arc<DataKeyWrapping>>,
    after: Position,
    limit: i64,
) -> Result<(JoinHandle<()>, Batches), ReplayError> {
    // One batch waits while the next is read: memory stays bounded.
    let (sender, batches) = mpsc::channel(1);
    let db = db.clone();
    let reader = std::thread::Builder::new()
        .name("rebuild-reader".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = sender.blocking_send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async {
                if let Err(e) = read_until_short(&db, wrapping, after, limit, &sender).await {
                    let _ = sender.send(Err(e)).await;
                }
            });
        })?;
    Ok((reader, batches))
}

type Batches = mpsc::Receiver<Result<Vec<StoredEvent>, ReplayError>>;

async fn read_until_short(
    db: &Database,
    wrapping: Option<Arc<DataKeyWrapping>>,
    mut after: Position,
    limit: i64,
    sender: &mpsc::Sender<Result<Vec<StoredEvent>, ReplayError>>,
) -> Result<(), ReplayError> {
    let db = db.reopen(2).await?;
    let feed = EventFeed::new(db.clone());
    let mut opener = Opener::new(&db, wrapping);
    loop {
        let batch = read_opened(&feed, &mut opener, after, limit).await?;
        let short = (batch.len() as i64) < limit;
        if let Some(last) = batch.last() {
            after = last.position;
        }
        // A closed channel: the replay stopped (its own error).
        if sender.send(Ok(batch)).await.is_err() || short {
            return Ok(());
        }
    }
}

/// Where the replay stands.
struct Replay<'a> {
    db: &'a Database,
    wrapping: Option<Arc<DataKeyWrapping>>,
    models: FreshReadModels,
    batch_size: i64,
    after: Position,
    events: u64,
    meter: Progress,
}

impl Replay<'_> {
    /// Replays batches into `scratch` until one comes back short (the head is
    /// less than a batch away), then writes what is left in memory with the
    /// checkpoint. The batches are read and opened on another thread (see
    /// [`spawn_reader`]) while the current one is folded here and written by
    /// the database.
    async fn until_short(
        &mut self,
        scratch: &mut impl ScratchSpace,
        phase: &str,
        progress: &mut dyn Write,
    ) -> Result<(), ReplayError> {
        let (reader, mut batches) =
            spawn_reader(self.db, self.wrapping.clone(), self.after, self.batch_size)?;
        let replayed = self.apply_all(scratch, &mut batches, phase, progress).await;
        // Dropping the receiver stops a reader that is still going.
        drop(batches);
        let reader_ended = reader.join();
        let reached_head = replayed?;
        if reader_ended.is_err() || !reached_head {
            return Err(ReplayError::Refused(
                "the rebuild's reading thread stopped unexpectedly; nothing was switched"
                    .to_owned(),
            ));
        }
        scratch.flush(&mut self.models, self.after).await
    }

    /// Applies the batches as they come; true once a short one was applied.
    async fn apply_all(
        &mut self,
        scratch: &mut impl ScratchSpace,
        batches: &mut Batches,
        phase: &str,
        progress: &mut dyn Write,
    ) -> Result<bool, ReplayError> {
        while let Some(batch) = batches.recv().await {
            let batch = batch?;
            let short = (batch.len() as i64) < self.batch_size;
            if let Some(last) = batch.last().map(|e| e.position) {
                scratch.apply(&mut self.models, &batch).await?;
                self.after = last;
                self.events += batch.len() as u64;
                self.meter
                    .tick(self.db, self.events, phase, progress)
                    .await?;
            }
            if short {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Rebuilds every read model and switches it in (see the module documentation).
/// Progress lines go to `progress` (stderr in the CLI), the report to `out`. The
/// embedded store must be opened for writing beside the server
/// ([`crate::Access::WriteBesideServer`]).
pub async fn rebuild_switch(
    db: &Database,
    options: &SwitchOptions,
    progress: &mut dyn Write,
    out: &mut dyn Write,
) -> Result<SwitchReport, ReplayError> {
    let report = match db.engine() {
        Engine::Postgres(pool) => switch_postgres(db, pool, options, progress).await?,
        Engine::Sqlite(embedded) => {
            sqlite::rebuild_switch(db, embedded.writer(), options, progress).await?
        }
    };
    report.write_to(out)?;
    out.flush()?;
    Ok(report)
}

async fn switch_postgres(
    db: &Database,
    pool: &PgPool,
    options: &SwitchOptions,
    progress: &mut dyn Write,
) -> Result<SwitchReport, ReplayError> {
    let batch_size = options.batch_size.max(1);
    let schema = schema_name();
    // A connection of its own whose search_path points at the fresh schema (the
    // projection code names tables unqualified). Detached: it never goes back to
    // the pool with that search_path.
    let mut conn = pool.acquire().await?.detach();
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await?;
    let result =
        replay_and_switch(db, pool, &mut conn, &schema, batch_size, options, progress).await;
    match result {
        Ok(report) => Ok(report),
        Err(e) => {
            // Nothing was switched: the fresh schema is only clutter.
            let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut conn)
                .await;
            Err(e)
        }
    }
}

async fn replay_and_switch(
    db: &Database,
    pool: &PgPool,
    conn: &mut PgConnection,
    schema: &str,
    batch_size: i64,
    options: &SwitchOptions,
    progress: &mut dyn Write,
) -> Result<SwitchReport, ReplayError> {
    // A lost commit of this session (a crash) loses whole batches of a schema that
    // is dropped then anyway; waiting for the WAL flush per batch buys nothing.
    sqlx::raw_sql(&format!(
        "SET search_path TO {schema}; SET synchronous_commit TO off"
    ))
    .execute(&mut *conn)
    .await?;
    ReadModels::install(conn).await?;
    crate::rebuild::drop_secondary_indexes(conn, schema).await?;
    let mut replay = Replay {
        db,
        wrapping: options.data_key_wrapping.clone(),
        models: FreshReadModels::new(options.cached_rows),
        batch_size,
        after: Position::START,
        events: 0,
        meter: Progress::start(db, options.progress_every).await?,
    };
    let started = Instant::now();

    // 1. Replay while the live projector runs, until a batch comes back short
    //    (the head is less than one batch away).
    replay.until_short(conn, "replaying", progress).await?;
    // The same idempotent DDL the server runs: recreates the dropped indexes.
    let indexing = Instant::now();
    sqlx::raw_sql("SET maintenance_work_mem TO '256MB'")
        .execute(&mut *conn)
        .await?;
    ReadModels::install(conn).await?;
    writeln!(
        progress,
        "rebuild: indexes built in {:.1}s",
        indexing.elapsed().as_secs_f64()
    )?;

    // 2. Take the projector's lock: the leader hands it over between batches.
    writeln!(
        progress,
        "rebuild: near the head after {} events; waiting for the projector's lock",
        replay.events
    )?;
    let lock_started = Instant::now();
    let mut lock = pool.acquire().await?.detach();
    sqlx::raw_sql(&format!(
        "SET lock_timeout = '{}ms'",
        options.lock_timeout.as_millis().max(1)
    ))
    .execute(&mut lock)
    .await?;
    let key = lock_key(CHECKPOINT);
    if let Err(e) = sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(&key)
        .execute(&mut lock)
        .await
    {
        return Err(match e.as_database_error().and_then(|d| d.code()) {
            Some(code) if code == "55P03" => ReplayError::Refused(format!(
                "the read-model projector did not hand its lock over within {:?} \
                 (is a server older than this tool running?); nothing was switched",
                options.lock_timeout
            )),
            _ => e.into(),
        });
    }
    let lock_wait = lock_started.elapsed();
    let held_since = Instant::now();

    // 3. Catch up what arrived meanwhile; nothing else writes read models now.
    replay.until_short(conn, "catching up", progress).await?;

    let backup = format!("{schema}_old");
    let tables = rebuilt_tables(conn, schema).await?;
    let mut all_tables = tables.clone();
    all_tables.push("projection_checkpoints".to_owned());
    let mut attempt = 0;
    loop {
        attempt += 1;
        match switch(conn, schema, &backup, &all_tables).await {
            Ok(()) => break,
            // A long query on a live table kept the switch from its locks; it
            // gave up rather than stall the API behind it. Try again.
            Err(ReplayError::Database(e))
                if attempt < 5
                    && e.as_database_error().and_then(|d| d.code()).as_deref() == Some("55P03") =>
            {
                writeln!(
                    progress,
                    "rebuild: the switch waited too long for a table lock; retrying"
                )?;
            }
            Err(e) => return Err(e),
        }
    }
    let replay_time = started.elapsed();
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(&key)
        .execute(&mut lock)
        .await;
    drop(lock);
    let lock_held = held_since.elapsed();

    sqlx::raw_sql(&format!("DROP SCHEMA {schema}"))
        .execute(&mut *conn)
        .await?;
    if !options.keep_old {
        sqlx::raw_sql(&format!("DROP SCHEMA {backup} CASCADE"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(SwitchReport {
        schema: schema.to_owned(),
        backup_schema: backup,
        prefixed: false,
        kept_old: options.keep_old,
        tables,
        checkpoint: replay.after,
        events: replay.events,
        replay_time,
        lock_wait,
        lock_held,
    })
}

/// The atomic part: one transaction moves the live tables out and the rebuilt
/// ones in. Waits at most 5 s for each table lock (see the caller).
async fn switch(
    conn: &mut PgConnection,
    schema: &str,
    backup: &str,
    tables: &[String],
) -> Result<(), ReplayError> {
    let mut tx = conn.begin().await?;
    sqlx::raw_sql("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(&format!("CREATE SCHEMA {backup}"))
        .execute(&mut *tx)
        .await?;
    // Other followers (the NATS relay) keep their checkpoints: copied under a lock
    // that holds their writes until the tables have moved.
    let live_checkpoints: bool =
        sqlx::query_scalar("SELECT to_regclass('public.projection_checkpoints') IS NOT NULL")
            .fetch_one(&mut *tx)
            .await?;
    if live_checkpoints {
        sqlx::raw_sql(&format!(
            "LOCK TABLE public.projection_checkpoints IN EXCLUSIVE MODE;
             INSERT INTO {schema}.projection_checkpoints (name, tx_id, global_position, updated_at)
             SELECT name, tx_id, global_position, updated_at FROM public.projection_checkpoints
              WHERE name <> '{CHECKPOINT}'
             ON CONFLICT (name) DO NOTHING"
        ))
        .execute(&mut *tx)
        .await?;
    }
    for table in tables {
        let t = crate::rebuild::quote_ident(table);
        sqlx::raw_sql(&format!(
            "ALTER TABLE IF EXISTS public.{t} SET SCHEMA {backup};
             ALTER TABLE {schema}.{t} SET SCHEMA public"
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
