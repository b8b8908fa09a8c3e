//! `keyledger-replay export`: the audit trail, or the event log in its public form,
//! as JSON lines or CSV, in constant memory whatever the log's size.
//!
//! Rows are streamed from ONE query (`fetch`, so PostgreSQL sends them as they are
//! read and nothing is collected) through a buffered writer. One statement means one
//! snapshot: the export is consistent even while the server writes. A read-only
//! statement takes no transaction id, so it does not hold the ordered feed back.
//! On the embedded store the statement is likewise one read transaction (WAL: it
//! never blocks the server's writer), over `main.events` in position order, which
//! is commit order there.
//!
//! Secrets: audit rows only hold the secret-free `details` the projector wrote;
//! raw events only leave through [`HistoryEntry::from_stored`], i.e. the
//! integration mapping NATS consumers get. A stored payload is never written.
//!
//! Personal data: events are opened in batches of [`OPEN_BATCH`] by
//! [`crate::personal::Opener`] (clear values, or `[erased]` once the owner's key is
//! gone; never ciphertext). Reading and opening (decrypting) run on a thread of
//! their own while this one maps and writes the previous batch: the export is
//! bound by the tool's CPU, and the machine has a second core. Audit rows were opened by the projector, which scrubs
//! them on erasure; a sealed string still found in one leaves as `[erased]`.

use keyledger_domain::DataKeyWrapping;
use std::io::{BufWriter, Write};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use keyledger_domain::personal::sealed_owner;
use keyledger_domain::ERASED;
use keyledger_projections::StoredEvent;
use keyledger_storage::{with_readers, Backend, Database, Engine};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use tokio::sync::mpsc;

use crate::history::HistoryEntry;
use crate::personal::{no_ciphertext, Opener};
use crate::stored::{select_events, sqlite_select_events, EventRow};
use crate::ReplayError;

/// Events read from the stream before their personal fields are opened together.
const OPEN_BATCH: usize = 2000;

/// The output's shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line.
    #[default]
    JsonLines,
    /// RFC 4180 CSV with a header row; nested JSON travels as a JSON string column.
    Csv,
}

impl FromStr for ExportFormat {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "jsonl" | "json" => Ok(Self::JsonLines),
            "csv" => Ok(Self::Csv),
            other => Err(format!("unknown format `{other}` (jsonl or csv)")),
        }
    }
}

/// What is exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExportSource {
    /// `audit_trail` rows, by global position; time filters apply to `occurred_at`.
    #[default]
    AuditTrail,
    /// Every event of the log in feed order, through the secret-free mapping;
    /// time filters apply to `recorded_at` (indexed), and only final events (those
    /// the ordered feed would deliver) are included.
    Events,
}

/// How an export runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Rows or events from.
    pub source: ExportSource,
    /// Output shape.
    pub format: ExportFormat,
    /// Inclusive lower bound on time.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound on time.
    pub to: Option<DateTime<Utc>>,
    /// The keys wrapping the data keys (the server's
    /// KEYLEDGER_DATA_KEY_WRAPPING_KEY); `None`: only keys stored before wrapping
    /// open.
    pub data_key_wrapping: Option<Arc<DataKeyWrapping>>,
}

/// What an export wrote, for the closing line on stderr.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExportReport {
    /// Data rows written (the CSV header not counted).
    pub rows: u64,
    /// Wall time from the query to the last byte flushed.
    pub elapsed: Duration,
}

impl ExportReport {
    /// Throughput, the figure the benchmark records.
    pub fn rows_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.rows as f64 / secs
        } else {
            0.0
        }
    }
}

/// Columns of an audit-trail export, in CSV order.
pub const AUDIT_COLUMNS: [&str; 13] = [
    "global_position",
    "occurred_at",
    "actor",
    "subject",
    "action",
    "outcome",
    "ip",
    "user_agent",
    "request_id",
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "details",
];

/// Columns of an event export, in CSV order (the fields of [`HistoryEntry`]).
pub const EVENT_COLUMNS: [&str; 12] = [
    "event_id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "occurred_at",
    "schema_version",
    "tx_id",
    "global_position",
    "recorded_at",
    "data",
    "metadata",
];

/// One audit row as exported (borrowing nothing from the database row, which is
/// dropped at once).
#[derive(Debug, Serialize)]
struct AuditRow {
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
    details: Value,
}

/// An `audit_trail` row of either back end, which store `details` each their
/// own way.
trait AuditTrailRow {
    fn audit_row(&self) -> Result<AuditRow, sqlx::Error>;
}

impl AuditTrailRow for PgRow {
    fn audit_row(&self) -> Result<AuditRow, sqlx::Error> {
        AuditRow::decode(self, self.try_get(12)?)
    }
}

/// The embedded store's row: `details` is JSON text (`occurred_at`, RFC 3339
/// text, decodes like PostgreSQL's timestamptz).
impl AuditTrailRow for SqliteRow {
    fn audit_row(&self) -> Result<AuditRow, sqlx::Error> {
        let details: &str = self.try_get(12)?;
        let details =
            serde_json::from_str(details).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        AuditRow::decode(self, details)
    }
}

impl AuditRow {
    /// Every column but `details`, which each back end stores its own way.
    fn decode<'r, R>(row: &'r R, details: Value) -> Result<Self, sqlx::Error>
    where
        R: Row,
        usize: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Self {
            global_position: row.try_get(0)?,
            occurred_at: row.try_get(1)?,
            actor: row.try_get(2)?,
            subject: row.try_get(3)?,
            action: row.try_get(4)?,
            outcome: row.try_get(5)?,
            ip: row.try_get(6)?,
            user_agent: row.try_get(7)?,
            request_id: row.try_get(8)?,
            aggregate_type: row.try_get(9)?,
            aggregate_id: row.try_get(10)?,
            sequence: row.try_get(11)?,
            details,
        })
    }

    /// The projector wrote these columns opened (and scrubbed them on erasure);
    /// should a row still hold a sealed string, it leaves as `[erased]`, never
    /// as ciphertext.
    fn guard_personal_data(&mut self) {
        for value in [&mut self.ip, &mut self.user_agent].into_iter().flatten() {
            if sealed_owner(value).is_some() {
                *value = ERASED.to_owned();
            }
        }
        no_ciphertext(&mut self.details);
    }

    fn csv_record(&self) -> Result<[String; 13], ReplayError> {
        Ok([
            self.global_position.to_string(),
            timestamp(&self.occurred_at),
            self.actor.clone(),
            self.subject.clone(),
            self.action.clone(),
            self.outcome.clone(),
            self.ip.clone().unwrap_or_default(),
            self.user_agent.clone().unwrap_or_default(),
            self.request_id.clone().unwrap_or_default(),
            self.aggregate_type.clone(),
            self.aggregate_id.clone(),
            self.sequence.to_string(),
            serde_json::to_string(&self.details)?,
        ])
    }
}

fn event_record(entry: &HistoryEntry) -> Result<[String; 12], ReplayError> {
    let e = &entry.event;
    Ok([
        e.event_id.to_string(),
        e.event_type.clone(),
        e.aggregate_type.clone(),
        e.aggregate_id.clone(),
        e.sequence.to_string(),
        timestamp(&e.occurred_at),
        e.schema_version.clone(),
        entry.tx_id.to_string(),
        entry.global_position.to_string(),
        timestamp(&entry.recorded_at),
        serde_json::to_string(&e.data)?,
        serde_json::to_string(&e.metadata)?,
    ])
}

fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Either output shape behind one `write` call per row.
enum Sink<'a> {
    Json(BufWriter<&'a mut dyn Write>),
    Csv(Box<csv::Writer<&'a mut dyn Write>>),
}

impl<'a> Sink<'a> {
    /// Large buffers: the bottleneck is syscalls per row, not memory.
    const BUFFER: usize = 256 * 1024;

    fn new(
        format: ExportFormat,
        out: &'a mut dyn Write,
        header: &[&str],
    ) -> Result<Self, ReplayError> {
        Ok(match format {
            ExportFormat::JsonLines => Self::Json(BufWriter::with_capacity(Self::BUFFER, out)),
            ExportFormat::Csv => {
                let mut writer = csv::WriterBuilder::new()
                    .buffer_capacity(Self::BUFFER)
                    .from_writer(out);
                writer.write_record(header).map_err(csv_error)?;
                Self::Csv(Box::new(writer))
            }
        })
    }

    fn json<T: Serialize>(&mut self, value: &T) -> Result<(), ReplayError> {
        if let Self::Json(out) = self {
            serde_json::to_writer(&mut *out, value)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn csv<const N: usize>(
        &mut self,
        record: impl FnOnce() -> Result<[String; N], ReplayError>,
    ) -> Result<(), ReplayError> {
        if let Self::Csv(out) = self {
            out.write_record(record()?).map_err(csv_error)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<(), ReplayError> {
        match self {
            Self::Json(mut out) => out.flush()?,
            Self::Csv(mut out) => out.flush()?,
        }
        Ok(())
    }
}

fn csv_error(e: csv::Error) -> ReplayError {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => ReplayError::Output(io),
        other => ReplayError::Output(std::io::Error::other(format!("{other:?}"))),
    }
}

/// Streams the chosen rows to `out` (see the module documentation) and reports
/// how many were written and how fast.
pub async fn export(
    db: &Database,
    options: &ExportOptions,
    out: &mut dyn Write,
) -> Result<ExportReport, ReplayError> {
    let started = Instant::now();
    let header: &[&str] = match options.source {
        ExportSource::AuditTrail => &AUDIT_COLUMNS,
        ExportSource::Events => &EVENT_COLUMNS,
    };
    let mut sink = Sink::new(options.format, out, header)?;
    let mut rows = 0u64;
    match options.source {
        ExportSource::AuditTrail => audit_trail(db, options, &mut sink, &mut rows).await?,
        ExportSource::Events => {
            // At most two opened batches wait for this thread: memory stays constant.
            let (sender, mut batches) = mpsc::channel(2);
            let connect = db.clone();
            let (from, to) = (options.from, options.to);
            let wrapping = options.data_key_wrapping.clone();
            let reader = std::thread::Builder::new()
                .name("export-reader".to_owned())
                .spawn(move || read_opened_events(connect, from, to, wrapping, sender))?;
            let mut written = Ok(());
            while let Some(batch) = batches.recv().await {
                written = write_events(batch, &mut sink, &mut rows);
                if written.is_err() {
                    break;
                }
            }
            // Dropping the receiver stops a reader that is still going.
            drop(batches);
            let reader_ended = reader.join();
            written?;
            if reader_ended.is_err() {
                // It panicked: what was written is not the whole log.
                return Err(ReplayError::Output(std::io::Error::other(
                    "the export's reading thread stopped unexpectedly; the output is incomplete",
                )));
            }
        }
    }
    sink.finish()?;
    Ok(ExportReport {
        rows,
        elapsed: started.elapsed(),
    })
}

/// The audit trail is a read model: the server builds it when it starts (on
/// the embedded store, in `keyledger.db`). Times are bound as instants: a
/// `timestamptz` on PostgreSQL, and on SQLite the RFC 3339 text the read
/// models store, whose order is chronological (all in UTC, bound from Rust
/// alike).
async fn audit_trail(
    db: &Database,
    options: &ExportOptions,
    sink: &mut Sink<'_>,
    rows: &mut u64,
) -> Result<(), ReplayError> {
    let backend = db.backend();
    if backend == Backend::Sqlite {
        let exists: bool = with_readers!(db, |pool| {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema
                                 WHERE type = 'table' AND name = 'audit_trail')",
            )
            .fetch_one(pool)
            .await?
        });
        if !exists {
            return Err(ReplayError::Refused(
                "the embedded store has no audit trail yet: the server builds its read models \
                 when it starts (export --events reads the log itself)"
                    .into(),
            ));
        }
    }
    // PostgreSQL cannot tell a NULL parameter's type from `$1 IS NULL` alone.
    let (from, to) = match backend {
        Backend::Postgres => ("$1::timestamptz", "$2::timestamptz"),
        Backend::Sqlite => ("$1", "$2"),
    };
    let sql = format!(
        "SELECT {} FROM {}.audit_trail
          WHERE ({from} IS NULL OR occurred_at >= {from})
            AND ({to} IS NULL OR occurred_at < {to})
          ORDER BY global_position",
        AUDIT_COLUMNS.join(", "),
        backend.live_schema(),
    );
    with_readers!(db, |pool| {
        let mut conn = pool.acquire().await?;
        let mut stream = sqlx::query(&sql)
            .bind(options.from)
            .bind(options.to)
            .fetch(&mut *conn);
        while let Some(row) = stream.try_next().await? {
            write_audit(row.audit_row()?, sink, rows)?;
        }
    });
    Ok(())
}

/// One audit row out, guarded (see [`AuditRow::guard_personal_data`]).
fn write_audit(
    mut audit: AuditRow,
    sink: &mut Sink<'_>,
    rows: &mut u64,
) -> Result<(), ReplayError> {
    audit.guard_personal_data();
    sink.json(&audit)?;
    sink.csv(|| audit.csv_record())?;
    *rows += 1;
    Ok(())
}

fn write_events(
    batch: Result<Vec<StoredEvent>, ReplayError>,
    sink: &mut Sink<'_>,
    rows: &mut u64,
) -> Result<(), ReplayError> {
    for stored in batch? {
        let entry = HistoryEntry::from_stored(&stored)?;
        sink.json(&entry)?;
        sink.csv(|| event_record(&entry))?;
        *rows += 1;
    }
    Ok(())
}

/// The reading thread of an events export: its own runtime and connections
/// (the caller's database reopened with two: the stream, and the opener's key
/// queries), ONE statement, and batches of opened events sent in order; an
/// error is sent as the last item.
fn read_opened_events(
    db: Database,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    wrapping: Option<Arc<DataKeyWrapping>>,
    sender: mpsc::Sender<Result<Vec<StoredEvent>, ReplayError>>,
) {
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
        if let Err(e) = stream_opened_events(&db, from, to, wrapping, &sender).await {
            let _ = sender.send(Err(e)).await;
        }
    });
}

/// The statement differs: PostgreSQL reads in feed order up to the oldest
/// transaction still open (later events may still be joined by earlier ones)
/// and compares `recorded_at` as a `timestamptz`; the embedded store's writers
/// serialise, so every event with a position is final, and `recorded_at` is
/// compared in microseconds.
async fn stream_opened_events(
    db: &Database,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    wrapping: Option<Arc<DataKeyWrapping>>,
    sender: &mpsc::Sender<Result<Vec<StoredEvent>, ReplayError>>,
) -> Result<(), ReplayError> {
    let db = db.reopen(2).await?;
    let opener = Opener::new(&db, wrapping);
    match db.engine() {
        Engine::Postgres(pool) => {
            let sql = format!(
                "{}
                  WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
                    AND ($1::timestamptz IS NULL OR recorded_at >= $1)
                    AND ($2::timestamptz IS NULL OR recorded_at < $2)
                  ORDER BY tx_id, global_position",
                select_events()
            );
            let mut conn = pool.acquire().await?;
            let stream = sqlx::query(&sql)
                .bind(from)
                .bind(to)
                .fetch(&mut *conn)
                .map(|row| row.and_then(|row| row.stored_event()));
            send_opened(stream, opener, sender).await
        }
        Engine::Sqlite(embedded) => {
            let sql = format!(
                "{}
                  WHERE ($1 IS NULL OR recorded_at >= $1)
                    AND ($2 IS NULL OR recorded_at < $2)
                  ORDER BY global_position",
                sqlite_select_events()
            );
            let mut conn = embedded.readers().acquire().await?;
            let stream = sqlx::query(&sql)
                .bind(from.map(|t| t.timestamp_micros()))
                .bind(to.map(|t| t.timestamp_micros()))
                .fetch(&mut *conn)
                .map(|row| row.and_then(|row| row.stored_event()));
            send_opened(stream, opener, sender).await
        }
    }
}

/// Opens the stream's events a batch at a time (one key query per batch, keys
/// cached by the opener within its bound), so memory stays constant, and sends
/// each batch in order.
async fn send_opened(
    mut stream: impl Stream<Item = Result<StoredEvent, sqlx::Error>> + Unpin,
    mut opener: Opener,
    sender: &mpsc::Sender<Result<Vec<StoredEvent>, ReplayError>>,
) -> Result<(), ReplayError> {
    let mut batch: Vec<StoredEvent> = Vec::with_capacity(OPEN_BATCH);
    loop {
        let event = stream.try_next().await?;
        let done = event.is_none();
        if let Some(event) = event {
            batch.push(event);
        }
        if batch.len() == OPEN_BATCH || (done && !batch.is_empty()) {
            opener.open(&mut batch).await?;
            let opened = std::mem::replace(&mut batch, Vec::with_capacity(OPEN_BATCH));
            if sender.send(Ok(opened)).await.is_err() {
                // The writer stopped (its own error): nothing more to read.
                return Ok(());
            }
        }
        if done {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("jsonl".parse(), Ok(ExportFormat::JsonLines));
        assert_eq!("csv".parse(), Ok(ExportFormat::Csv));
        assert!("xml".parse::<ExportFormat>().is_err());
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines_and_reads_back() {
        let mut out = Vec::new();
        {
            let mut sink = Sink::new(ExportFormat::Csv, &mut out, &["a", "b"]).unwrap();
            sink.csv(|| Ok(["x,y".to_owned(), "{\"k\":\"v\\n\"}\nnext".to_owned()]))
                .unwrap();
            sink.finish().unwrap();
        }
        let mut reader = csv::Reader::from_reader(out.as_slice());
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(&rows[0][0], "x,y");
        assert_eq!(&rows[0][1], "{\"k\":\"v\\n\"}\nnext");
    }
}
