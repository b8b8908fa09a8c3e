//! `keyledger-replay verify`: proves the event log is the one that was written.
//!
//! One pass over the whole log in feed order `(tx_id, global_position)`, in one
//! read-only snapshot:
//! - every event's chain hash is recomputed from its stored bytes and its
//!   predecessor's hash (a modified event, or one moved to another position, fails);
//! - every aggregate's sequence must run 1, 2, 3… in log order (a deleted or
//!   inserted event inside an aggregate, or two swapped ones, fail);
//! - the running log hash is compared with every signed checkpoint when the pass
//!   crosses its position, after checking the checkpoint's Ed25519 signature with a
//!   public key brought from outside the database. This catches what chains alone
//!   cannot: a deleted or forged *last* event of an aggregate, reordering across
//!   aggregates, and an attacker who recomputed every chain hash.
//!
//! It stops at the first problem, naming the event or checkpoint.
//!
//! On the embedded store (SQLite) the same checks run over `main.events` in
//! position order (commit order there, `tx_id` always 0) on ONE connection in ONE
//! read transaction: keyset pages of events, with predecessor and checkpoint
//! look-ups in between (sqlx cannot share a SQLite snapshot between connections).
//!
//! Memory stays flat whatever the log's size: rows stream from the server, and the
//! tip (last sequence and hash) of at most [`VerifyOptions::cached_aggregates`]
//! recently seen aggregates is kept; an aggregate that fell out of that cache has
//! its predecessor looked up again, in one query per chunk of rows.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash as _, Hasher};
use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use keyledger_projections::chain::{
    hex, AuditPublicKey, CanonicalEvent, Checkpoint, Hash, LogState, CHECKPOINT_COLUMNS, ZERO_HASH,
};
use keyledger_projections::Position;
use keyledger_storage::{per_backend, Connection, Database, Engine};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Connection as _, PgPool, Row, SqlitePool};

use crate::ReplayError;

/// Rows checked between two look-ups of evicted predecessors.
const CHUNK: usize = 2048;
/// Checkpoints read per query.
const CHECKPOINT_PAGE: i64 = 1000;

/// How a verification runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The audit keys checkpoints may be signed with. They must come from outside
    /// the database: whoever can write it could otherwise sign a forged log.
    pub public_keys: Vec<AuditPublicKey>,
    /// Aggregates whose chain tip is kept in memory (about 64 bytes each). Bounds
    /// the memory; a smaller cache only costs look-ups.
    pub cached_aggregates: usize,
    /// Log hashes of checkpoints seen by an earlier verification (its summary line
    /// prints the last one). Each must still be there and match: deleting the
    /// newest checkpoints, or every one, is otherwise invisible in the database.
    pub expected_log_hashes: Vec<Hash>,
    /// The schema whose `events` and `chain_checkpoints` are verified: `None` for
    /// the live log (`public`), or a `keyledger_before_reseal_…` schema holding a
    /// log that `keyledger-replay reseal` replaced.
    pub schema: Option<String>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            public_keys: Vec::new(),
            // Two generations of 2^19 hash-table buckets (~30 MB each).
            cached_aggregates: 2 * 450_000,
            expected_log_hashes: Vec::new(),
            schema: None,
        }
    }
}

/// An event, by where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    /// Aggregate type (`user`, `session`, …).
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Sequence within the aggregate.
    pub sequence: i64,
    /// Position in the feed.
    pub position: Position,
}

impl fmt::Display for EventRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {} {} sequence {} at global position {} (tx {})",
            self.aggregate_type,
            self.aggregate_id,
            self.sequence,
            self.position.global_position,
            self.position.tx_id
        )
    }
}

/// What is wrong with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventProblem {
    /// Its stored bytes do not hash to its stored chain hash.
    ContentChanged,
    /// Sequences `expected..sequence` of its aggregate are missing before it.
    Missing {
        /// The first missing sequence.
        expected: i64,
    },
    /// It comes after a later or equal sequence of its aggregate.
    OutOfOrder {
        /// The sequence seen last for this aggregate.
        previous: i64,
    },
    /// Its predecessor sits after it in the log.
    BeforePredecessor {
        /// Where the predecessor sits.
        predecessor: Position,
    },
    /// Its sequence is not a valid start of an aggregate (sequences start at 1).
    BadSequence,
    /// It cannot be read, or its chain hash is missing or not 32 bytes.
    Malformed,
}

impl fmt::Display for EventProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ContentChanged => f.write_str(
                "its content does not match its chain hash (modified, or moved in the log)",
            ),
            Self::Missing { expected } => write!(
                f,
                "sequence {expected} of its aggregate is missing before it (deleted, or moved \
                 later in the log)"
            ),
            Self::OutOfOrder { previous } => write!(
                f,
                "it comes after sequence {previous} of its aggregate (inserted or reordered)"
            ),
            Self::BeforePredecessor { predecessor } => write!(
                f,
                "it comes before its predecessor, which sits at global position {} (tx {}) \
                 (reordered)",
                predecessor.global_position, predecessor.tx_id
            ),
            Self::BadSequence => f.write_str("sequences start at 1 (inserted)"),
            Self::Malformed => {
                f.write_str("it cannot be read, or its chain hash is missing or malformed")
            }
        }
    }
}

/// What is wrong with a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointProblem {
    /// Signed by a key that is not one of [`VerifyOptions::public_keys`].
    UnknownKey,
    /// The signature does not cover what the row says.
    BadSignature,
    /// The log holds another number of events up to its position.
    EventCount {
        /// Events found up to the checkpoint's position.
        found: i64,
    },
    /// The log up to its position hashes to something else.
    LogHash,
}

/// A checkpoint, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRef {
    /// Row id.
    pub id: i64,
    /// When it was signed.
    pub signed_at: DateTime<Utc>,
    /// Position it stands at.
    pub position: Position,
    /// Events it covers.
    pub event_count: i64,
    /// The signing key's PASERK id.
    pub key_id: String,
    /// Its log hash.
    pub log_hash: Hash,
}

impl From<&Checkpoint> for CheckpointRef {
    fn from(c: &Checkpoint) -> Self {
        Self {
            id: c.id,
            signed_at: c.signed_at,
            position: c.state.position,
            event_count: c.state.event_count,
            key_id: c.key_id.clone(),
            log_hash: c.state.log_hash,
        }
    }
}

impl fmt::Display for CheckpointRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checkpoint #{} (signed {} by {}, {} events up to global position {}, tx {})",
            self.id,
            time(self.signed_at),
            self.key_id,
            self.event_count,
            self.position.global_position,
            self.position.tx_id
        )
    }
}

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An event does not fit its chain.
    Event {
        /// The event.
        event: EventRef,
        /// What is wrong with it.
        problem: EventProblem,
    },
    /// A checkpoint does not verify, or the log does not match it.
    Checkpoint {
        /// The checkpoint.
        checkpoint: Box<CheckpointRef>,
        /// What is wrong.
        problem: CheckpointProblem,
        /// The last checkpoint that matched before it: the change lies after that.
        since: Option<Box<CheckpointRef>>,
    },
    /// A checkpoint an earlier verification saw (by its log hash) is gone.
    MissingCheckpoint {
        /// Its log hash.
        log_hash: Hash,
    },
    /// A `reseal_log` row linking a resealed log to the one it replaced is not
    /// signed by any audit key given (forged or altered).
    ResealLink {
        /// Its row id.
        id: i64,
        /// The schema it says holds the old log.
        archive: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Event { event, problem } => write!(f, "{event}: {problem}"),
            Self::Checkpoint {
                checkpoint,
                problem,
                since,
            } => {
                write!(f, "{checkpoint}: ")?;
                match problem {
                    CheckpointProblem::UnknownKey => {
                        return f
                            .write_str("signed by a key that is not one of the audit keys given")
                    }
                    CheckpointProblem::BadSignature => {
                        return f.write_str("its signature does not verify (altered or forged)")
                    }
                    CheckpointProblem::EventCount { found } => write!(
                        f,
                        "the log holds {found} events up to its position instead of {}; \
                         events were deleted or inserted",
                        checkpoint.event_count
                    )?,
                    CheckpointProblem::LogHash => f.write_str(
                        "the log up to its position does not hash to what was signed; \
                         an event was modified, deleted, inserted or reordered",
                    )?,
                }
                match since {
                    Some(good) => write!(
                        f,
                        " after global position {} (tx {}), where checkpoint #{} still matched",
                        good.position.global_position, good.position.tx_id, good.id
                    ),
                    None => f.write_str(" (no earlier checkpoint matched)"),
                }
            }
            Self::ResealLink { id, archive } => write!(
                f,
                "reseal link #{id} (old log kept in schema {archive}): its signature does not \
                 verify with the audit keys given (forged or altered)"
            ),
            Self::MissingCheckpoint { log_hash } => write!(
                f,
                "the expected checkpoint with log hash {} is missing: checkpoints were \
                 deleted, or the log was rolled back",
                hex(log_hash)
            ),
        }
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Events checked (up to the failure, if any).
    pub events: u64,
    /// Checkpoints that verified and matched the log.
    pub checkpoints: u64,
    /// Time taken, connecting excluded.
    pub elapsed: Duration,
    /// The newest checkpoint that matched.
    pub last_checkpoint: Option<CheckpointRef>,
    /// Events after [`Self::last_checkpoint`]: chained, but not yet signed.
    pub unsigned_events: u64,
    /// The first problem found; `None` when the log verified.
    pub failure: Option<Failure>,
}

impl VerifyReport {
    /// True when nothing was found wrong.
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }

    /// Events checked per second.
    pub fn events_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.events as f64 / secs
        } else {
            0.0
        }
    }

    /// The one-line verdict the CLI prints.
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        match &self.failure {
            Some(failure) => writeln!(
                out,
                "TAMPERED: {failure} [{} events and {} checkpoints checked before it]",
                self.events, self.checkpoints
            ),
            None => {
                write!(
                    out,
                    "verified {} events and {} checkpoints in {:.2}s ({:.0} events/s); ",
                    self.events,
                    self.checkpoints,
                    self.elapsed.as_secs_f64(),
                    self.events_per_second()
                )?;
                match &self.last_checkpoint {
                    Some(last) => writeln!(
                        out,
                        "last checkpoint at {} (#{}, log hash {}); {} events after it are \
                         chained but not yet signed",
                        time(last.signed_at),
                        last.id,
                        hex(&last.log_hash),
                        self.unsigned_events
                    ),
                    None => writeln!(
                        out,
                        "no checkpoint yet; {} events are chained but not yet signed",
                        self.unsigned_events
                    ),
                }
            }
        }
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Verifies the whole log and every checkpoint, prints the verdict line and returns
/// the report. A tampered log is an `Ok` report with a [`Failure`]; `Err` means the
/// check could not run.
pub async fn verify(
    db: &Database,
    options: &VerifyOptions,
    out: &mut dyn Write,
) -> Result<VerifyReport, ReplayError> {
    let started = Instant::now();
    let (verifier, failure) = match db.engine() {
        Engine::Postgres(pool) => verify_pg(pool, options).await?,
        Engine::Sqlite(embedded) => verify_sqlite(embedded.readers(), options).await?,
    };
    let last_checkpoint = verifier.last_checkpoint.clone();
    let signed = last_checkpoint.as_ref().map_or(0, |c| c.event_count as u64);
    let report = VerifyReport {
        events: verifier.events,
        checkpoints: verifier.checkpoints,
        elapsed: started.elapsed(),
        unsigned_events: verifier.events.saturating_sub(signed),
        last_checkpoint,
        failure,
    };
    report.write_to(out)?;
    out.flush()?;
    Ok(report)
}

/// PostgreSQL: one pass streaming the log in feed order.
async fn verify_pg<'o>(
    pool: &PgPool,
    options: &'o VerifyOptions,
) -> Result<(Verifier<'o>, Option<Failure>), ReplayError> {
    // Two connections, one snapshot: rows stream on the first while checkpoints and
    // evicted predecessors are read on the second. Read-only, so no transaction id
    // is taken and feed followers are not held back.
    let mut rows_tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *rows_tx)
        .await?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *rows_tx)
        .await?;
    let mut side = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *side)
        .await?;
    // SET takes no parameters; a snapshot id is hex digits and dashes.
    if !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(ReplayError::Database(sqlx::Error::Protocol(format!(
            "unexpected snapshot id {snapshot:?}"
        ))));
    }
    sqlx::raw_sql(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .execute(&mut *side)
        .await?;

    let schema = match options.schema.as_deref() {
        None | Some("public") => "public",
        Some(s)
            if s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
        {
            s
        }
        Some(s) => {
            return Err(ReplayError::Refused(format!(
                "`{s}` is not a schema name (lower-case letters, digits and _)"
            )))
        }
    };
    let mut verifier = Verifier::new(options, &format!("{schema}.events"));
    let mut checkpoints = Checkpoints {
        table: format!("{schema}.chain_checkpoints"),
        ..Checkpoints::default()
    };
    // A resealed log must hold the checkpoint its signed link names (the live log
    // the new log hash, an archive the old one), and every link must be signed.
    let links = crate::reseal::ResealLink::all(&mut side).await?;
    let mut link_failure = None;
    for (i, link) in links.iter().enumerate() {
        if !verifier.keys.iter().any(|k| link.verifies_with(k)) {
            link_failure.get_or_insert(Failure::ResealLink {
                id: link.id,
                archive: link.archive.clone(),
            });
        }
        if schema == "public" && i + 1 == links.len() {
            verifier.expected.push(link.new.log_hash);
        }
        if link.archive == schema {
            verifier.expected.push(link.old.log_hash);
        }
    }
    let failure = if link_failure.is_some() {
        link_failure
    } else {
        let sql = format!(
            "SELECT tx_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
                    sequence, event_type, event_version, payload::text, metadata::text,
                    recorded_at, chain_hash
               FROM {schema}.events
              ORDER BY tx_id, global_position"
        );
        let mut rows = sqlx::query(&sql).fetch(&mut *rows_tx);
        let mut chunk: Vec<PgRow> = Vec::with_capacity(CHUNK);
        loop {
            chunk.clear();
            while chunk.len() < CHUNK {
                match rows.try_next().await? {
                    Some(row) => chunk.push(row),
                    None => break,
                }
            }
            let last_chunk = chunk.len() < CHUNK;
            let decoded: Vec<Decoded<'_>> = chunk.iter().map(EventRow::decode_pg).collect();
            match verifier
                .step(
                    &decoded,
                    last_chunk,
                    &mut checkpoints,
                    &mut Connection::Postgres(&mut side),
                )
                .await?
            {
                Step::Next => {}
                Step::Done(failure) => break failure,
            }
        }
    };
    drop(rows_tx);
    drop(side);
    Ok((verifier, failure))
}

/// The embedded store: sqlx cannot share a SQLite snapshot between connections,
/// so everything is read on ONE connection inside ONE read transaction (WAL: the
/// server's writer is never blocked): events in keyset pages by position (commit
/// order there), predecessors and checkpoints in between. Memory stays flat.
async fn verify_sqlite<'o>(
    pool: &SqlitePool,
    options: &'o VerifyOptions,
) -> Result<(Verifier<'o>, Option<Failure>), ReplayError> {
    if let Some(schema) = options.schema.as_deref().filter(|s| *s != "main") {
        return Err(ReplayError::Refused(format!(
            "--schema {schema}: the embedded store keeps one log (resealed logs are \
             PostgreSQL's)"
        )));
    }
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let mut verifier = Verifier::new(options, "main.events");
    let mut checkpoints = Checkpoints {
        table: "main.chain_checkpoints".to_owned(),
        ..Checkpoints::default()
    };
    let mut after = 0i64;
    let failure = 'pages: loop {
        let page = sqlx::query(
            "SELECT tx_id, global_position, aggregate_type, aggregate_id, sequence,
                    event_type, event_version, payload, metadata, recorded_at, chain_hash
               FROM main.events
              WHERE global_position > $1
              ORDER BY global_position
              LIMIT $2",
        )
        .bind(after)
        .bind(SQLITE_PAGE as i64)
        .fetch_all(&mut *tx)
        .await?;
        let last_page = page.len() < SQLITE_PAGE;
        if let Some(row) = page.last() {
            after = row.try_get(1)?;
        }
        if page.is_empty() {
            break verifier
                .finish_with(&mut checkpoints, &mut Connection::Sqlite(&mut tx))
                .await?;
        }
        let chunks = page.len().div_ceil(CHUNK);
        for (i, chunk) in page.chunks(CHUNK).enumerate() {
            let decoded: Vec<Decoded<'_>> = chunk.iter().map(EventRow::decode_sqlite).collect();
            let last_chunk = last_page && i + 1 == chunks;
            match verifier
                .step(
                    &decoded,
                    last_chunk,
                    &mut checkpoints,
                    &mut Connection::Sqlite(&mut tx),
                )
                .await?
            {
                Step::Next => {}
                Step::Done(failure) => break 'pages failure,
            }
        }
    };
    // Read only: nothing to commit.
    tx.rollback().await?;
    Ok((verifier, failure))
}

/// Events read per query from the embedded store.
const SQLITE_PAGE: usize = 8192;

/// After a chunk: go on, or stop with the verdict.
enum Step {
    Next,
    Done(Option<Failure>),
}

/// A row of a chunk: decoded, or (tampered beyond decoding) what could be read of
/// where it sits.
type Decoded<'r> = Result<EventRow<'r>, EventRef>;

/// One `events` row, borrowed from the wire buffer.
struct EventRow<'r> {
    event: CanonicalEvent<'r>,
    chain_hash: Option<&'r [u8]>,
}

impl<'r> EventRow<'r> {
    fn decode_pg(row: &'r PgRow) -> Decoded<'r> {
        Self::decode(row, |row| {
            Ok(row.try_get::<DateTime<Utc>, _>(9)?.timestamp_micros())
        })
    }

    /// The embedded store's row: the same columns, `recorded_at` already in
    /// microseconds.
    fn decode_sqlite(row: &'r SqliteRow) -> Decoded<'r> {
        Self::decode(row, |row| row.try_get(9))
    }

    /// Both back ends' columns: only `recorded_at` is stored differently. A row
    /// that no longer decodes was tampered with too (a NULL, a type).
    fn decode<R>(
        row: &'r R,
        recorded_at_micros: fn(&'r R) -> Result<i64, sqlx::Error>,
    ) -> Decoded<'r>
    where
        R: Row,
        usize: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Option<&'r [u8]>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let decoded = (|| {
            Ok::<_, sqlx::Error>(Self {
                event: CanonicalEvent {
                    tx_id: row.try_get(0)?,
                    global_position: row.try_get(1)?,
                    aggregate_type: row.try_get(2)?,
                    aggregate_id: row.try_get(3)?,
                    sequence: row.try_get(4)?,
                    event_type: row.try_get(5)?,
                    event_version: row.try_get(6)?,
                    payload: row.try_get(7)?,
                    metadata: row.try_get(8)?,
                    recorded_at_micros: recorded_at_micros(row)?,
                },
                chain_hash: row.try_get(10)?,
            })
        })();
        decoded.map_err(|_| EventRef {
            aggregate_type: row.try_get(2).unwrap_or_default(),
            aggregate_id: row.try_get(3).unwrap_or_default(),
            sequence: row.try_get(4).unwrap_or_default(),
            position: Position {
                tx_id: row.try_get(0).unwrap_or_default(),
                global_position: row.try_get(1).unwrap_or_default(),
            },
        })
    }

    /// Where the event sits in the feed.
    fn position(&self) -> Position {
        Position {
            tx_id: self.event.tx_id,
            global_position: self.event.global_position,
        }
    }

    fn reference(&self) -> EventRef {
        EventRef {
            aggregate_type: self.event.aggregate_type.to_owned(),
            aggregate_id: self.event.aggregate_id.to_owned(),
            sequence: self.event.sequence,
            position: self.position(),
        }
    }
}

fn position_of(row: &Decoded<'_>) -> Position {
    match row {
        Ok(row) => row.position(),
        Err(reference) => reference.position,
    }
}

/// A `chain_checkpoints` row of either back end, which store instants each
/// their own way.
trait CheckpointRow {
    fn checkpoint(&self) -> Result<Checkpoint, sqlx::Error>;
}

impl CheckpointRow for PgRow {
    fn checkpoint(&self) -> Result<Checkpoint, sqlx::Error> {
        Checkpoint::from_row(self)
    }
}

impl CheckpointRow for SqliteRow {
    fn checkpoint(&self) -> Result<Checkpoint, sqlx::Error> {
        Checkpoint::from_sqlite_row(self)
    }
}

/// Checkpoints in log order, read a page at a time from the side connection.
#[derive(Default)]
struct Checkpoints {
    /// `<schema>.chain_checkpoints`.
    table: String,
    buffered: VecDeque<Checkpoint>,
    /// Where the next page starts (position, id).
    after: Option<(Position, i64)>,
    exhausted: bool,
}

impl Checkpoints {
    /// Buffers every checkpoint at or before `until` (all of them for `None`).
    async fn load_until(
        &mut self,
        side: &mut Connection<'_>,
        until: Option<Position>,
    ) -> Result<(), sqlx::Error> {
        while !self.exhausted
            && self
                .buffered
                .back()
                .is_none_or(|c| until.is_none_or(|u| c.state.position <= u))
        {
            let (position, id) = self.after.unwrap_or((Position::START, 0));
            let sql = format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM {}
                  WHERE (tx_id, global_position, id) > ($1, $2, $3)
                  ORDER BY tx_id, global_position, id
                  LIMIT $4",
                self.table
            );
            let page: Vec<Checkpoint> = per_backend!(side, |conn| sqlx::query(&sql)
                .bind(position.tx_id)
                .bind(position.global_position)
                .bind(id)
                .bind(CHECKPOINT_PAGE)
                .fetch_all(&mut **conn)
                .await?
                .iter()
                .map(CheckpointRow::checkpoint)
                .collect::<Result<_, _>>()?);
            self.exhausted = (page.len() as i64) < CHECKPOINT_PAGE;
            for checkpoint in page {
                self.after = Some((checkpoint.state.position, checkpoint.id));
                self.buffered.push_back(checkpoint);
            }
        }
        Ok(())
    }

    /// The next checkpoint standing before `position` (any, for `None`).
    fn next_before(&mut self, position: Option<Position>) -> Option<Checkpoint> {
        let due = self
            .buffered
            .front()
            .is_some_and(|c| position.is_none_or(|p| c.state.position < p));
        if due {
            self.buffered.pop_front()
        } else {
            None
        }
    }
}

/// The last verified event of an aggregate.
#[derive(Clone, Copy)]
struct Tip {
    sequence: i64,
    chain_hash: Hash,
}

/// An aggregate's identity as 128 keyed bits: a fixed 16 bytes per cache entry
/// whatever the id's length. The keys are random per run, so nobody can choose ids
/// that collide (a collision could only raise a false alarm anyway: two
/// aggregates' chains never continue each other).
type AggregateKey = (u64, u64);

/// The keys are already uniformly random: use them as their own hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(32) ^ n;
    }
}

type TipMap = HashMap<AggregateKey, Tip, BuildHasherDefault<KeyHasher>>;

/// The tips of recently seen aggregates in two generations: a full current
/// generation becomes the previous one (dropping the older), and a tip found in the
/// previous generation moves back into the current one. Bounded, and close to
/// least-recently-used at two hash tables' cost.
struct TipCache {
    current: TipMap,
    previous: TipMap,
    generation: usize,
}

impl TipCache {
    fn new(capacity: usize) -> Self {
        let generation = (capacity / 2).max(1);
        Self {
            // Room for one chunk beyond the limit: generations turn between chunks.
            current: TipMap::with_capacity_and_hasher(generation + CHUNK, Default::default()),
            previous: TipMap::default(),
            generation,
        }
    }

    /// Called between chunks only, so that what [`Verifier::prepare`] found cached
    /// stays cached for the whole chunk.
    fn turn_if_full(&mut self) {
        if self.current.len() >= self.generation {
            // Free the oldest generation before allocating the next one.
            self.previous = TipMap::default();
            let fresh =
                TipMap::with_capacity_and_hasher(self.generation + CHUNK, Default::default());
            self.previous = std::mem::replace(&mut self.current, fresh);
        }
    }

    fn contains(&self, key: &AggregateKey) -> bool {
        self.current.contains_key(key) || self.previous.contains_key(key)
    }

    fn get(&mut self, key: &AggregateKey) -> Option<Tip> {
        if let Some(tip) = self.current.get(key) {
            return Some(*tip);
        }
        let tip = self.previous.remove(key)?;
        self.current.insert(*key, tip);
        Some(tip)
    }

    fn set(&mut self, key: AggregateKey, tip: Tip) {
        self.current.insert(key, tip);
    }
}

/// A predecessor read back from the database for an aggregate that fell out of
/// the cache.
#[derive(Clone, Copy)]
struct Predecessor {
    sequence: i64,
    chain_hash: Option<Hash>,
    position: Position,
}

struct Verifier<'o> {
    keys: &'o [AuditPublicKey],
    /// `<schema>.events` (`main.events` on the embedded store).
    events_table: String,
    hash_keys: (RandomState, RandomState),
    cache: TipCache,
    /// This chunk's aggregate keys, row by row (reused).
    chunk_keys: Vec<AggregateKey>,
    /// Aggregates seen earlier in this chunk (reused).
    seen: HashSet<AggregateKey, BuildHasherDefault<KeyHasher>>,
    /// Predecessors looked up for this chunk.
    fetched: HashMap<AggregateKey, Predecessor, BuildHasherDefault<KeyHasher>>,
    log: LogState,
    events: u64,
    checkpoints: u64,
    last_checkpoint: Option<CheckpointRef>,
    /// Expected log hashes not yet met.
    expected: Vec<Hash>,
}

impl<'o> Verifier<'o> {
    fn new(options: &'o VerifyOptions, events_table: &str) -> Self {
        Self {
            keys: &options.public_keys,
            events_table: events_table.to_owned(),
            hash_keys: (RandomState::new(), RandomState::new()),
            cache: TipCache::new(options.cached_aggregates),
            chunk_keys: Vec::with_capacity(CHUNK),
            seen: HashSet::with_capacity_and_hasher(CHUNK, Default::default()),
            fetched: HashMap::default(),
            log: LogState::START,
            events: 0,
            checkpoints: 0,
            last_checkpoint: None,
            expected: options.expected_log_hashes.clone(),
        }
    }

    fn key(&self, aggregate_type: &str, aggregate_id: &str) -> AggregateKey {
        let mut a = self.hash_keys.0.build_hasher();
        let mut b = self.hash_keys.1.build_hasher();
        aggregate_type.hash(&mut a);
        aggregate_id.hash(&mut a);
        aggregate_type.hash(&mut b);
        aggregate_id.hash(&mut b);
        (a.finish(), b.finish())
    }

    /// One chunk of rows in log order: loads the checkpoints it crosses (all that
    /// remain after the last chunk), looks up evicted predecessors, checks every
    /// row and checkpoint, and after the last chunk the remaining checkpoints.
    async fn step(
        &mut self,
        chunk: &[Decoded<'_>],
        last_chunk: bool,
        checkpoints: &mut Checkpoints,
        side: &mut Connection<'_>,
    ) -> Result<Step, sqlx::Error> {
        let until = match chunk.last() {
            Some(row) if !last_chunk => Some(position_of(row)),
            _ => None,
        };
        checkpoints.load_until(side, until).await?;
        if chunk.is_empty() {
            return Ok(Step::Done(self.finish(checkpoints).err()));
        }
        let misses = self.prepare(chunk);
        if !misses.is_empty() {
            self.fetch_predecessors(side, misses).await?;
        }
        if let Err(failure) = self.check_chunk(chunk, checkpoints) {
            return Ok(Step::Done(Some(failure)));
        }
        Ok(if last_chunk {
            Step::Done(self.finish(checkpoints).err())
        } else {
            Step::Next
        })
    }

    /// The log ended on a full page: the remaining checkpoints.
    async fn finish_with(
        &mut self,
        checkpoints: &mut Checkpoints,
        side: &mut Connection<'_>,
    ) -> Result<Option<Failure>, sqlx::Error> {
        checkpoints.load_until(side, None).await?;
        Ok(self.finish(checkpoints).err())
    }

    /// Computes the chunk's keys and lists the predecessors to look up: those of
    /// aggregates that continue here but are neither cached nor earlier in the
    /// chunk. Returns `(types, ids, sequences)` for one look-up query.
    fn prepare(&mut self, chunk: &[Decoded<'_>]) -> Lookups {
        self.cache.turn_if_full();
        self.chunk_keys.clear();
        self.seen.clear();
        self.fetched.clear();
        let mut misses = Lookups::default();
        for row in chunk {
            let (aggregate_type, aggregate_id, sequence) = match row {
                Ok(row) => (
                    row.event.aggregate_type,
                    row.event.aggregate_id,
                    row.event.sequence,
                ),
                // Reported when the check reaches it.
                Err(r) => (r.aggregate_type.as_str(), r.aggregate_id.as_str(), 0),
            };
            let key = self.key(aggregate_type, aggregate_id);
            self.chunk_keys.push(key);
            if self.seen.insert(key) && sequence > 1 && !self.cache.contains(&key) {
                misses.types.push(aggregate_type.to_owned());
                misses.ids.push(aggregate_id.to_owned());
                misses.sequences.push(sequence - 1);
            }
        }
        misses
    }

    async fn fetch_predecessors(
        &mut self,
        side: &mut Connection<'_>,
        misses: Lookups,
    ) -> Result<(), sqlx::Error> {
        let found: Vec<(String, String, Predecessor)> = match side {
            Connection::Postgres(conn) => {
                let sql = format!(
                    "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.chain_hash,
                            e.tx_id::text::bigint AS tx, e.global_position
                       FROM unnest($1::text[], $2::text[], $3::bigint[]) AS m(t, i, s)
                       JOIN {} e
                         ON e.aggregate_type = m.t AND e.aggregate_id = m.i AND e.sequence = m.s",
                    self.events_table
                );
                sqlx::query(&sql)
                    .bind(&misses.types)
                    .bind(&misses.ids)
                    .bind(&misses.sequences)
                    .fetch_all(&mut **conn)
                    .await?
                    .iter()
                    .map(predecessor::<PgRow>)
                    .collect::<Result<_, _>>()?
            }
            // One JSON array of [type, id, sequence] triples; the join probes the
            // primary key once per triple.
            Connection::Sqlite(conn) => {
                let triples = serde_json::Value::Array(
                    misses
                        .types
                        .iter()
                        .zip(&misses.ids)
                        .zip(&misses.sequences)
                        .map(|((t, i), s)| serde_json::json!([t, i, s]))
                        .collect(),
                )
                .to_string();
                let sql = format!(
                    "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.chain_hash,
                            e.tx_id, e.global_position
                       FROM json_each($1) AS m
                       JOIN {} e
                         ON e.aggregate_type = m.value ->> 0
                        AND e.aggregate_id = m.value ->> 1
                        AND e.sequence = m.value ->> 2",
                    self.events_table
                );
                sqlx::query(&sql)
                    .bind(triples)
                    .fetch_all(&mut **conn)
                    .await?
                    .iter()
                    .map(predecessor::<SqliteRow>)
                    .collect::<Result<_, _>>()?
            }
        };
        for (aggregate_type, aggregate_id, predecessor) in found {
            let key = self.key(&aggregate_type, &aggregate_id);
            self.fetched.insert(key, predecessor);
        }
        Ok(())
    }

    fn check_chunk(
        &mut self,
        chunk: &[Decoded<'_>],
        checkpoints: &mut Checkpoints,
    ) -> Result<(), Failure> {
        for (index, row) in chunk.iter().enumerate() {
            let row = match row {
                Ok(row) => row,
                Err(event) => {
                    return Err(Failure::Event {
                        event: event.clone(),
                        problem: EventProblem::Malformed,
                    })
                }
            };
            while let Some(checkpoint) = checkpoints.next_before(Some(row.position())) {
                self.check_checkpoint(&checkpoint)?;
            }
            let key = self.chunk_keys[index];
            self.check_event(key, row)
                .map_err(|problem| Failure::Event {
                    event: row.reference(),
                    problem,
                })?;
        }
        Ok(())
    }

    fn check_event(&mut self, key: AggregateKey, row: &EventRow<'_>) -> Result<(), EventProblem> {
        let event = &row.event;
        let position = row.position();
        let stored = row
            .chain_hash
            .and_then(|h| Hash::try_from(h).ok())
            .ok_or(EventProblem::Malformed)?;
        let previous = match self.cache.get(&key) {
            Some(tip) if event.sequence == tip.sequence + 1 => tip.chain_hash,
            Some(tip) if event.sequence <= tip.sequence => {
                return Err(EventProblem::OutOfOrder {
                    previous: tip.sequence,
                })
            }
            Some(tip) => {
                return Err(EventProblem::Missing {
                    expected: tip.sequence + 1,
                })
            }
            None if event.sequence == 1 => ZERO_HASH,
            None if event.sequence < 1 => return Err(EventProblem::BadSequence),
            None => match self.fetched.get(&key) {
                Some(p) if p.sequence == event.sequence - 1 && p.position < position => {
                    p.chain_hash.ok_or(EventProblem::Malformed)?
                }
                Some(p) if p.sequence == event.sequence - 1 => {
                    return Err(EventProblem::BeforePredecessor {
                        predecessor: p.position,
                    })
                }
                _ => {
                    return Err(EventProblem::Missing {
                        expected: event.sequence - 1,
                    })
                }
            },
        };
        if event.chain_hash(&previous) != stored {
            return Err(EventProblem::ContentChanged);
        }
        self.cache.set(
            key,
            Tip {
                sequence: event.sequence,
                chain_hash: stored,
            },
        );
        self.log.push(position, &stored);
        self.events += 1;
        Ok(())
    }

    fn check_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), Failure> {
        let fail = |problem| Failure::Checkpoint {
            checkpoint: Box::new(checkpoint.into()),
            problem,
            since: self.last_checkpoint.clone().map(Box::new),
        };
        let Some(key) = self.keys.iter().find(|k| k.id() == checkpoint.key_id) else {
            return Err(fail(CheckpointProblem::UnknownKey));
        };
        if !key.verifies(checkpoint) {
            return Err(fail(CheckpointProblem::BadSignature));
        }
        if checkpoint.state.event_count != self.log.event_count {
            return Err(fail(CheckpointProblem::EventCount {
                found: self.log.event_count,
            }));
        }
        if checkpoint.state.log_hash != self.log.log_hash {
            return Err(fail(CheckpointProblem::LogHash));
        }
        self.checkpoints += 1;
        self.last_checkpoint = Some(checkpoint.into());
        self.expected.retain(|h| *h != checkpoint.state.log_hash);
        Ok(())
    }

    /// After the last event: the remaining checkpoints stand at or after it.
    fn finish(&mut self, checkpoints: &mut Checkpoints) -> Result<(), Failure> {
        while let Some(checkpoint) = checkpoints.next_before(None) {
            self.check_checkpoint(&checkpoint)?;
        }
        match self.expected.first() {
            Some(log_hash) => Err(Failure::MissingCheckpoint {
                log_hash: *log_hash,
            }),
            None => Ok(()),
        }
    }
}

/// A predecessor row, the same columns and types on both back ends.
fn predecessor<'r, R>(row: &'r R) -> Result<(String, String, Predecessor), sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<&'r [u8]>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let chain_hash: Option<&[u8]> = row.try_get(3)?;
    Ok((
        row.try_get(0)?,
        row.try_get(1)?,
        Predecessor {
            sequence: row.try_get(2)?,
            chain_hash: chain_hash.and_then(|h| Hash::try_from(h).ok()),
            position: Position {
                tx_id: row.try_get(4)?,
                global_position: row.try_get(5)?,
            },
        },
    ))
}

/// Predecessors to look up, as parallel arrays (for `unnest`, or one JSON array).
#[derive(Default)]
struct Lookups {
    types: Vec<String>,
    ids: Vec<String>,
    sequences: Vec<i64>,
}

impl Lookups {
    fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }
}
