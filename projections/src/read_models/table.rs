//! Reading and writing read-model rows, once for both back ends: every table
//! module describes its columns and its row's values once ([`Stored`],
//! [`Table`]); the statements here are one text per table, with the dialect's
//! fragments (list membership, the rows of a bound batch) and the codecs of
//! `keyledger_storage`. Only writing rows known to be new differs in mechanism:
//! PostgreSQL's `COPY`, which SQLite lacks ([`write_new`]).

use std::io::Write as _;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use keyledger_storage::{per_backend, Backend, Connection, Id, List, PerBackend};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, Postgres, Row, SqliteConnection};
use uuid::Uuid;

use super::rules::{RowRules, Texts};
use super::tables::SqliteTables;

/// Rows per statement on SQLite: one bound JSON text each, kept to a few
/// megabytes (SQLite's limit on a text is a billion bytes). PostgreSQL binds a
/// whole batch in one statement.
const SQLITE_ROWS_PER_STATEMENT: usize = 5_000;

/// Where a batch is projected: a connection (usually in the checkpoint's
/// transaction) and where the read-model tables are in it. On PostgreSQL the
/// tables are the unqualified names the connection's `search_path` finds (a
/// rebuild puts its scratch schema first); SQLite has no search path, so its
/// names are qualified by a [`SqliteTables`].
pub struct Target<'c> {
    conn: Connection<'c>,
    tables: &'c SqliteTables,
}

static LIVE_TABLES: SqliteTables = SqliteTables::MAIN;

impl<'c> Target<'c> {
    /// The live read models on `conn`'s back end.
    pub fn live(conn: Connection<'c>) -> Self {
        Self {
            conn,
            tables: &LIVE_TABLES,
        }
    }

    /// The read models in `tables` of a SQLite connection (a rebuild's scratch
    /// space).
    pub fn sqlite(conn: &'c mut SqliteConnection, tables: &'c SqliteTables) -> Self {
        Self {
            conn: PerBackend::Sqlite(conn),
            tables,
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        self.conn.backend()
    }

    /// A read-model table's name as this target's statements write it.
    pub(crate) fn table(&self, name: &str) -> String {
        match self.conn {
            PerBackend::Postgres(_) => name.to_owned(),
            PerBackend::Sqlite(_) => self.tables.table(name),
        }
    }

    /// The connection, reborrowed for one statement.
    pub(crate) fn conn(&mut self) -> Connection<'_> {
        match &mut self.conn {
            PerBackend::Postgres(conn) => PerBackend::Postgres(&mut **conn),
            PerBackend::Sqlite(conn) => PerBackend::Sqlite(&mut **conn),
        }
    }
}

/// A column: its name and its PostgreSQL type (what its batch array is cast
/// to; SQLite stores the same value in the type its DDL gives).
pub(crate) struct Column {
    pub(crate) name: &'static str,
    pub(crate) ty: &'static str,
}

pub(crate) const fn column(name: &'static str, ty: &'static str) -> Column {
    Column { name, ty }
}

/// A row's values in column order, handed to whatever a statement binds: arrays
/// for PostgreSQL's `UNNEST`, JSON for SQLite's `json_each`, `COPY` text.
pub(crate) trait Cells<'a> {
    fn id(&mut self, value: Option<Uuid>);
    fn text(&mut self, value: Option<&'a str>);
    fn time(&mut self, value: Option<DateTime<Utc>>);
    fn int4(&mut self, value: i32);
    fn int8(&mut self, value: i64);
    fn bool(&mut self, value: bool);
    fn json(&mut self, value: &'a Value);
}

/// What happens to a written row whose key is already in the table.
pub(crate) enum OnConflict {
    /// Nothing (an append-only table seeing an overlap).
    Ignore,
    /// Replaced when the stored row's `version` is older, so an overlap or a
    /// second projector for a moment is harmless.
    ReplaceOlderVersion,
}

/// A row as the write statements see it: its table, columns (the key first)
/// and values.
pub(crate) trait Stored {
    const TABLE: &'static str;
    const COLUMNS: &'static [Column];
    const ON_CONFLICT: OnConflict;
    /// Hands the row's values over in the order of [`Self::COLUMNS`].
    fn cells<'a>(&'a self, out: &mut impl Cells<'a>);
}

/// A users or sessions row: [`Stored`] keyed by its aggregate id, read back
/// through a record of plain column types.
pub(crate) trait Table: RowRules {
    const TABLE: &'static str;
    /// The key (an aggregate id) first.
    const COLUMNS: &'static [Column];
    /// The row as both back ends decode it (ids as [`Id`], texts owned).
    type Record: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin;
    fn from_record(record: Self::Record, texts: &mut Texts) -> Self;
    /// Hands the row's values over in the order of [`Self::COLUMNS`].
    fn cells<'a>(&'a self, id: Uuid, out: &mut impl Cells<'a>);
}

impl<T: Table> Stored for (Uuid, T) {
    const TABLE: &'static str = T::TABLE;
    const COLUMNS: &'static [Column] = T::COLUMNS;
    const ON_CONFLICT: OnConflict = OnConflict::ReplaceOlderVersion;

    fn cells<'a>(&'a self, out: &mut impl Cells<'a>) {
        self.1.cells(self.0, out);
    }
}

fn column_list(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads the rows of `T` with these ids, in one query.
pub(crate) async fn load<T: Table>(
    target: &mut Target<'_>,
    ids: &[Uuid],
    texts: &mut Texts,
) -> Result<Vec<(Uuid, T)>, sqlx::Error> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        column_list(T::COLUMNS),
        target.table(T::TABLE),
        target.backend().any_of(T::COLUMNS[0].name, "$1"),
    );
    let ids: Vec<Id> = ids.iter().copied().map(Id).collect();
    let records: Vec<(Id, T::Record)> = per_backend!(target.conn(), |conn| {
        sqlx::query(&sql)
            .bind(List(&ids))
            .fetch_all(conn)
            .await?
            .iter()
            .map(|row| Ok((row.try_get::<Id, _>(0)?, T::Record::from_row(row)?)))
            .collect::<Result<_, sqlx::Error>>()?
    });
    Ok(records
        .into_iter()
        .map(|(id, record)| (id.0, T::from_record(record, texts)))
        .collect())
}

/// `INSERT ... SELECT <the batch> ON CONFLICT ...` for `S`'s table, its
/// parameters numbered from `$first`.
fn insert_sql<S: Stored>(target: &Target<'_>, first: usize) -> String {
    let columns = S::COLUMNS;
    let types: Vec<&str> = columns.iter().map(|c| c.ty).collect();
    let key = columns[0].name;
    let on_conflict = match S::ON_CONFLICT {
        OnConflict::Ignore => format!("ON CONFLICT ({key}) DO NOTHING"),
        OnConflict::ReplaceOlderVersion => {
            let set: Vec<String> = columns[1..]
                .iter()
                .map(|c| format!("{0} = excluded.{0}", c.name))
                .collect();
            format!(
                "ON CONFLICT ({key}) DO UPDATE SET {} WHERE t.version < excluded.version",
                set.join(", ")
            )
        }
    };
    format!(
        "INSERT INTO {} AS t ({}) {} {on_conflict}",
        target.table(S::TABLE),
        column_list(columns),
        target.backend().batch_rows_from(&types, first),
    )
}

/// Writes `rows` in a constant number of statements (one on PostgreSQL), each
/// row as [`Stored::ON_CONFLICT`] says.
pub(crate) async fn upsert<S: Stored>(
    target: &mut Target<'_>,
    rows: &[S],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = insert_sql::<S>(target, 1);
    match target.conn() {
        PerBackend::Postgres(conn) => {
            columns_of(rows)
                .bind(sqlx::query(&sql))?
                .execute(conn)
                .await?;
        }
        PerBackend::Sqlite(conn) => {
            for chunk in rows.chunks(SQLITE_ROWS_PER_STATEMENT) {
                let mut json = SqliteJson::with_capacity(chunk.len() * 256);
                for row in chunk {
                    json.start_row();
                    row.cells(&mut json);
                    json.end_row();
                }
                sqlx::query(&sql)
                    .bind(json.finish()?)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(())
}

/// [`upsert`] of three tables' rows at once: on PostgreSQL in ONE statement,
/// the first two as data-modifying `WITH` queries (each runs once and to
/// completion, whether or not anything reads it) before the third, since every
/// statement of a batch's transaction is a round trip. The tables must differ.
pub(crate) async fn upsert_three<A: Stored, B: Stored, C: Stored>(
    target: &mut Target<'_>,
    a: &[A],
    b: &[B],
    c: &[C],
) -> Result<(), sqlx::Error> {
    if target.backend() != Backend::Postgres {
        upsert(target, a).await?;
        upsert(target, b).await?;
        return upsert(target, c).await;
    }
    // Each part's statement, its parameters numbered after the previous
    // parts', and its columns to bind.
    let mut parts: Vec<(String, PgColumns<'_>)> = Vec::with_capacity(3);
    let mut first = 1;
    if !a.is_empty() {
        parts.push((insert_sql::<A>(target, first), columns_of(a)));
        first += A::COLUMNS.len();
    }
    if !b.is_empty() {
        parts.push((insert_sql::<B>(target, first), columns_of(b)));
        first += B::COLUMNS.len();
    }
    if !c.is_empty() {
        parts.push((insert_sql::<C>(target, first), columns_of(c)));
    }
    let Some((last, _)) = parts.last() else {
        return Ok(());
    };
    let mut sql = String::new();
    for (i, (part, _)) in parts[..parts.len() - 1].iter().enumerate() {
        sql.push_str(if i == 0 { "WITH " } else { ", " });
        sql.push_str(&format!("w{i} AS ({part})"));
    }
    if !sql.is_empty() {
        sql.push(' ');
    }
    sql.push_str(last);
    let mut query = sqlx::query(&sql);
    for (_, columns) in parts {
        query = columns.bind(query)?;
    }
    if let PerBackend::Postgres(conn) = target.conn() {
        query.execute(conn).await?;
    }
    Ok(())
}

/// `rows` bound column by column, as [`insert_sql`] reads them.
fn columns_of<S: Stored>(rows: &[S]) -> PgColumns<'_> {
    let mut columns = PgColumns::default();
    for row in rows {
        columns.at = 0;
        row.cells(&mut columns);
    }
    columns
}

/// Writes rows known not to be in the table (a rebuild's fresh tables, one
/// writer seeing every event once). PostgreSQL: by `COPY`, several times
/// cheaper than the idempotent insert, in key order so that neighbouring rows
/// land on the same index pages. SQLite has no `COPY`, and its upsert costs
/// about what an insert does: [`upsert`].
pub(crate) async fn write_new<S: Stored>(
    target: &mut Target<'_>,
    rows: &[S],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let copy = format!(
        "COPY {} ({}) FROM STDIN",
        target.table(S::TABLE),
        column_list(S::COLUMNS)
    );
    match target.conn() {
        PerBackend::Postgres(conn) => copy_in(conn, &copy, rows).await,
        PerBackend::Sqlite(_) => upsert(target, rows).await,
    }
}

async fn copy_in<S: Stored>(
    conn: &mut PgConnection,
    copy: &str,
    rows: &[S],
) -> Result<(), sqlx::Error> {
    let mut data = Vec::with_capacity(rows.len() * 256);
    for row in rows {
        let mut line = CopyLine {
            out: &mut data,
            first: true,
        };
        row.cells(&mut line);
        data.push(b'\n');
    }
    let mut copy = conn.copy_in_raw(copy).await?;
    copy.send(data).await?;
    copy.finish().await?;
    Ok(())
}

/// One array per column, for `UNNEST` (binary encoding: no text to escape).
#[derive(Default)]
struct PgColumns<'a> {
    columns: Vec<PgColumn<'a>>,
    /// The column the next value goes to.
    at: usize,
    /// A row handed a value of another type than an earlier row in the same
    /// column (a table module's bug): the statement is not sent.
    mismatch: bool,
}

enum PgColumn<'a> {
    Id(Vec<Option<Uuid>>),
    Text(Vec<Option<&'a str>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Int4(Vec<i32>),
    Int8(Vec<i64>),
    Bool(Vec<bool>),
    Json(Vec<Json<&'a Value>>),
}

macro_rules! push_cell {
    ($self:ident, $variant:ident, $value:expr) => {{
        if $self.columns.len() == $self.at {
            $self.columns.push(PgColumn::$variant(Vec::new()));
        }
        match &mut $self.columns[$self.at] {
            PgColumn::$variant(values) => values.push($value),
            _ => $self.mismatch = true,
        }
        $self.at += 1;
    }};
}

impl<'a> Cells<'a> for PgColumns<'a> {
    fn id(&mut self, value: Option<Uuid>) {
        push_cell!(self, Id, value)
    }
    fn text(&mut self, value: Option<&'a str>) {
        push_cell!(self, Text, value)
    }
    fn time(&mut self, value: Option<DateTime<Utc>>) {
        push_cell!(self, Time, value)
    }
    fn int4(&mut self, value: i32) {
        push_cell!(self, Int4, value)
    }
    fn int8(&mut self, value: i64) {
        push_cell!(self, Int8, value)
    }
    fn bool(&mut self, value: bool) {
        push_cell!(self, Bool, value)
    }
    fn json(&mut self, value: &'a Value) {
        push_cell!(self, Json, Json(value))
    }
}

impl<'a> PgColumns<'a> {
    fn bind<'q>(
        self,
        mut query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>, sqlx::Error>
    where
        'a: 'q,
    {
        if self.mismatch {
            return Err(sqlx::Error::Encode(
                "a read-model column was handed values of two types".into(),
            ));
        }
        for column in self.columns {
            query = match column {
                PgColumn::Id(values) => query.bind(values),
                PgColumn::Text(values) => query.bind(values),
                PgColumn::Time(values) => query.bind(values),
                PgColumn::Int4(values) => query.bind(values),
                PgColumn::Int8(values) => query.bind(values),
                PgColumn::Bool(values) => query.bind(values),
                PgColumn::Json(values) => query.bind(values),
            };
        }
        Ok(query)
    }
}

/// A JSON array of rows, each an array of its values, for `json_each`: ids and
/// times as the TEXT the SQLite tables hold, booleans as 0/1, `details` as JSON.
struct SqliteJson {
    out: Vec<u8>,
    first_row: bool,
    first_cell: bool,
    error: Option<serde_json::Error>,
}

impl SqliteJson {
    fn with_capacity(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.push(b'[');
        Self {
            out,
            first_row: true,
            first_cell: true,
            error: None,
        }
    }

    fn start_row(&mut self) {
        if !self.first_row {
            self.out.push(b',');
        }
        self.first_row = false;
        self.first_cell = true;
        self.out.push(b'[');
    }

    fn end_row(&mut self) {
        self.out.push(b']');
    }

    fn value(&mut self, value: impl serde::Serialize) {
        if !self.first_cell {
            self.out.push(b',');
        }
        self.first_cell = false;
        if let Err(e) = serde_json::to_writer(&mut self.out, &value) {
            self.error.get_or_insert(e);
        }
    }

    fn finish(mut self) -> Result<String, sqlx::Error> {
        if let Some(e) = self.error {
            return Err(sqlx::Error::Encode(Box::new(e)));
        }
        self.out.push(b']');
        String::from_utf8(self.out).map_err(|e| sqlx::Error::Encode(Box::new(e)))
    }
}

impl<'a> Cells<'a> for SqliteJson {
    fn id(&mut self, value: Option<Uuid>) {
        self.value(value.map(Id))
    }
    fn text(&mut self, value: Option<&'a str>) {
        self.value(value)
    }
    fn time(&mut self, value: Option<DateTime<Utc>>) {
        self.value(value.map(time_text))
    }
    fn int4(&mut self, value: i32) {
        self.value(value)
    }
    fn int8(&mut self, value: i64) {
        self.value(value)
    }
    fn bool(&mut self, value: bool) {
        self.value(u8::from(value))
    }
    fn json(&mut self, value: &'a Value) {
        self.value(value)
    }
}

/// How a time is stored in SQLite: exactly what sqlx binds for a
/// `DateTime<Utc>` (so rows written through `json_each` and times bound by
/// queries compare as text), truncated to microseconds as PostgreSQL keeps them.
pub(crate) fn time_text(time: DateTime<Utc>) -> String {
    time.trunc_subsecs(6)
        .to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// `COPY` text: one field, tab-separated from the previous one unless first.
struct CopyLine<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl CopyLine<'_> {
    fn sep(&mut self) {
        if !self.first {
            self.out.push(b'\t');
        }
        self.first = false;
    }

    fn display(&mut self, value: Option<impl std::fmt::Display>) {
        self.sep();
        match value {
            // Numbers and uuids: nothing to escape.
            Some(v) => {
                let _ = write!(self.out, "{v}");
            }
            None => self.out.extend_from_slice(b"\\N"),
        }
    }
}

impl<'a> Cells<'a> for CopyLine<'_> {
    fn id(&mut self, value: Option<Uuid>) {
        self.display(value)
    }
    fn text(&mut self, value: Option<&'a str>) {
        self.sep();
        match value {
            Some(text) => copy_escape(self.out, text.as_bytes()),
            None => self.out.extend_from_slice(b"\\N"),
        }
    }
    fn time(&mut self, value: Option<DateTime<Utc>>) {
        // Truncated to microseconds, as the binary encoding of the upserts does
        // (PostgreSQL would round the text).
        self.display(value.map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true)))
    }
    fn int4(&mut self, value: i32) {
        self.display(Some(value))
    }
    fn int8(&mut self, value: i64) {
        self.display(Some(value))
    }
    fn bool(&mut self, value: bool) {
        self.display(Some(if value { 't' } else { 'f' }))
    }
    fn json(&mut self, value: &'a Value) {
        self.sep();
        // A `Value` always serializes; its text is escaped like any other.
        let text = value.to_string();
        copy_escape(self.out, text.as_bytes());
    }
}

/// COPY text format escapes backslash, tab, newline and carriage return (other
/// control characters are legal in text and JSON strings escape their own). Shared
/// with `keyledger-replay seed`, which writes the event log by `COPY` too.
pub fn copy_escape(out: &mut Vec<u8>, data: &[u8]) {
    let mut start = 0;
    for (i, &b) in data.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&data[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&data[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_would_misread() {
        let mut out = Vec::new();
        copy_escape(&mut out, b"a\\b\tc\nd\re\x01");
        assert_eq!(out, b"a\\\\b\\tc\\nd\\re\x01");
    }
}
