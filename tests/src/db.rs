//! SQL against a test's store on either back end, for what the API does not show
//! (stored events, read-model rows, registries).
//!
//! A statement is one text when it is portable, or a pair `(postgres, sqlite)`
//! when the dialects differ ([`Sql`]). Parameters are [`Bind`]s: an id binds as a
//! `uuid` on PostgreSQL and as lower-case hyphenated text on SQLite, the way each
//! stores ids. Rows decode into any type both back ends can decode (tuples of
//! `String`, `i64`, `bool`, `Option<…>`, `Vec<u8>`, `DateTime<Utc>`,
//! `sqlx::types::Json<…>`, or a `#[derive(sqlx::FromRow)]` struct of those): ids
//! come back as text (`SELECT CAST(user_id AS TEXT)` on PostgreSQL).
//!
//! Reads on SQLite use the server's read-only pool, writes its single writer.

use keyledger_domain::chain::{CanonicalEvent, ZERO_HASH};
use keyledger_storage::{EmbeddedDatabase, Engine};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, FromRow};
use uuid::Uuid;

use crate::RawEvent;

/// A test's store: the server's own pools, whichever back end it runs on.
#[derive(Clone, Debug)]
pub struct TestDb(pub Engine);

/// A statement: the same text on both back ends, or one text per back end.
#[derive(Clone, Copy, Debug)]
pub struct Sql<'a> {
    pub postgres: &'a str,
    pub sqlite: &'a str,
}

impl<'a> From<&'a str> for Sql<'a> {
    fn from(both: &'a str) -> Self {
        Self {
            postgres: both,
            sqlite: both,
        }
    }
}

impl<'a> From<(&'a str, &'a str)> for Sql<'a> {
    fn from((postgres, sqlite): (&'a str, &'a str)) -> Self {
        Self { postgres, sqlite }
    }
}

/// A statement parameter.
#[derive(Clone, Copy, Debug)]
pub enum Bind<'a> {
    Text(&'a str),
    Int(i64),
    /// A `uuid` on PostgreSQL, hyphenated text on SQLite.
    Id(Uuid),
    Bytes(&'a [u8]),
    /// SQL NULL (as text).
    Null,
}

impl<'a> From<&'a str> for Bind<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(v)
    }
}

impl<'a> From<&'a String> for Bind<'a> {
    fn from(v: &'a String) -> Self {
        Self::Text(v)
    }
}

impl From<i64> for Bind<'_> {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<Uuid> for Bind<'_> {
    fn from(v: Uuid) -> Self {
        Self::Id(v)
    }
}

impl<'a> From<&'a [u8]> for Bind<'a> {
    fn from(v: &'a [u8]) -> Self {
        Self::Bytes(v)
    }
}

/// A row type both back ends decode.
pub trait FromBoth:
    for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{
}

impl<T> FromBoth for T where
    T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{
}

fn pg_arguments(binds: &[Bind<'_>]) -> PgArguments {
    let mut args = PgArguments::default();
    for bind in binds {
        match *bind {
            Bind::Text(v) => args.add(v),
            Bind::Int(v) => args.add(v),
            Bind::Id(v) => args.add(v),
            Bind::Bytes(v) => args.add(v),
            Bind::Null => args.add(None::<String>),
        }
        .expect("a bindable value");
    }
    args
}

fn sqlite_arguments<'q>(binds: &[Bind<'q>]) -> SqliteArguments<'q> {
    let mut args = SqliteArguments::default();
    for bind in binds {
        match *bind {
            Bind::Text(v) => args.add(v),
            Bind::Int(v) => args.add(v),
            Bind::Id(v) => args.add(v.hyphenated().to_string()),
            Bind::Bytes(v) => args.add(v),
            Bind::Null => args.add(None::<String>),
        }
        .expect("a bindable value");
    }
    args
}

impl TestDb {
    /// Every row of a query.
    pub async fn rows<T: FromBoth>(&self, sql: impl Into<Sql<'_>>, binds: &[Bind<'_>]) -> Vec<T> {
        let sql = sql.into();
        match &self.0 {
            Engine::Postgres(pool) => sqlx::query_as_with(sql.postgres, pg_arguments(binds))
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", sql.postgres)),
            Engine::Sqlite(db) => sqlx::query_as_with(sql.sqlite, sqlite_arguments(binds))
                .fetch_all(db.readers())
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", sql.sqlite)),
        }
    }

    /// The one row a query must return.
    pub async fn row<T: FromBoth>(&self, sql: impl Into<Sql<'_>>, binds: &[Bind<'_>]) -> T {
        let sql = sql.into();
        let mut rows = self.rows(sql, binds).await;
        assert_eq!(rows.len(), 1, "expected one row from {sql:?}");
        rows.remove(0)
    }

    /// The row a query returns, if any (at most one).
    pub async fn optional_row<T: FromBoth>(
        &self,
        sql: impl Into<Sql<'_>>,
        binds: &[Bind<'_>],
    ) -> Option<T> {
        let sql = sql.into();
        let mut rows = self.rows(sql, binds).await;
        assert!(rows.len() <= 1, "expected at most one row from {sql:?}");
        rows.pop()
    }

    /// The one value of the one row a query returns (a count, say).
    pub async fn scalar<T>(&self, sql: impl Into<Sql<'_>>, binds: &[Bind<'_>]) -> T
    where
        (T,): FromBoth,
    {
        self.row::<(T,)>(sql, binds).await.0
    }

    /// The first column of every row.
    pub async fn scalars<T>(&self, sql: impl Into<Sql<'_>>, binds: &[Bind<'_>]) -> Vec<T>
    where
        (T,): FromBoth,
    {
        self.rows::<(T,)>(sql, binds)
            .await
            .into_iter()
            .map(|(v,)| v)
            .collect()
    }

    /// Runs a statement (on SQLite through the server's writer); the number of
    /// rows it changed, or the error (tests of what the store refuses want it).
    pub async fn execute(
        &self,
        sql: impl Into<Sql<'_>>,
        binds: &[Bind<'_>],
    ) -> Result<u64, sqlx::Error> {
        let sql = sql.into();
        match &self.0 {
            Engine::Postgres(pool) => sqlx::query_with(sql.postgres, pg_arguments(binds))
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Engine::Sqlite(db) => sqlx::query_with(sql.sqlite, sqlite_arguments(binds))
                .execute(db.writer())
                .await
                .map(|r| r.rows_affected()),
        }
    }

    /// Appends one event as it is. On PostgreSQL the trigger sets its position,
    /// transaction, time and chain hash; on SQLite this does what the chained
    /// appender does, under the same write lock (`BEGIN IMMEDIATE`).
    pub async fn append_raw_event(&self, event: RawEvent<'_>) {
        match &self.0 {
            Engine::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                         event_version, payload, metadata)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(event.aggregate_type)
                .bind(event.aggregate_id)
                .bind(event.sequence)
                .bind(event.event_type)
                .bind(event.event_version)
                .bind(event.payload)
                .bind(event.metadata)
                .execute(pool)
                .await
                .expect("raw event appended");
            }
            Engine::Sqlite(db) => append_chained(db, event).await.expect("raw event appended"),
        }
    }
}

async fn append_chained(db: &EmbeddedDatabase, event: RawEvent<'_>) -> Result<(), sqlx::Error> {
    let mut tx = db.writer().begin_with("BEGIN IMMEDIATE").await?;
    append_chained_in(&mut tx, event).await?;
    tx.commit().await
}

/// Appends one event to an embedded store as the chained appender does, inside a
/// write transaction the caller holds (`BEGIN IMMEDIATE`, on any connection: a
/// test playing another writer holds it open).
pub async fn append_chained_in(
    tx: &mut sqlx::SqliteConnection,
    event: RawEvent<'_>,
) -> Result<(), sqlx::Error> {
    let payload = event.payload.to_string();
    let metadata = event.metadata.to_string();
    let last: Option<i64> = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(&mut *tx)
        .await?;
    let previous = if event.sequence == 1 {
        ZERO_HASH
    } else {
        let hash: Vec<u8> = sqlx::query_scalar(
            "SELECT chain_hash FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
        )
        .bind(event.aggregate_type)
        .bind(event.aggregate_id)
        .bind(event.sequence - 1)
        .fetch_one(&mut *tx)
        .await?;
        hash.try_into().expect("chain hashes are 32 bytes")
    };
    let global_position = last.unwrap_or(0) + 1;
    let recorded_at_micros = chrono::Utc::now().timestamp_micros();
    let hash = CanonicalEvent {
        aggregate_type: event.aggregate_type,
        aggregate_id: event.aggregate_id,
        sequence: event.sequence,
        event_type: event.event_type,
        event_version: event.event_version,
        payload: &payload,
        metadata: &metadata,
        recorded_at_micros,
        tx_id: 0,
        global_position,
    }
    .chain_hash(&previous);
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, global_position, tx_id, recorded_at, chain_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10)",
    )
    .bind(event.aggregate_type)
    .bind(event.aggregate_id)
    .bind(event.sequence)
    .bind(event.event_type)
    .bind(event.event_version)
    .bind(&payload)
    .bind(&metadata)
    .bind(global_position)
    .bind(recorded_at_micros)
    .bind(hash.as_slice())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{spawn_app, PASSWORD};

    fn raw<'a>(id: &'a str, sequence: i64, payload: &'a serde_json::Value) -> RawEvent<'a> {
        RawEvent {
            aggregate_type: "user",
            aggregate_id: id,
            sequence,
            event_type: "UserLoggedIn",
            event_version: "1.0",
            payload,
            metadata: payload,
        }
    }

    #[tokio::test]
    async fn raw_events_on_sqlite_are_chained_like_the_appender_chains_them() {
        let dir = keyledger_storage::testing::temp_data_dir("testdb");
        let db = EmbeddedDatabase::open(&keyledger_storage::testing::embedded_settings(&dir, 2))
            .await
            .unwrap();
        let store = TestDb(Engine::Sqlite(db.clone()));
        let user = Uuid::new_v4();
        let id = user.to_string();
        let payload = json!({"UserLoggedIn": {"method": "password"}});
        store.append_raw_event(raw(&id, 1, &payload)).await;
        store.append_raw_event(raw(&id, 2, &payload)).await;

        type Row = (i64, String, String, i64, Vec<u8>);
        let rows: Vec<Row> = store
            .rows(
                "SELECT sequence, payload, metadata, recorded_at, chain_hash FROM events
                  WHERE aggregate_id = $1 ORDER BY sequence",
                &[user.into()],
            )
            .await;
        let mut previous = ZERO_HASH;
        for (position, (sequence, payload, metadata, recorded_at, hash)) in rows.iter().enumerate()
        {
            let expected = CanonicalEvent {
                aggregate_type: "user",
                aggregate_id: &id,
                sequence: *sequence,
                event_type: "UserLoggedIn",
                event_version: "1.0",
                payload,
                metadata,
                recorded_at_micros: *recorded_at,
                tx_id: 0,
                global_position: position as i64 + 1,
            }
            .chain_hash(&previous);
            assert_eq!(hash.as_slice(), expected.as_slice());
            previous = expected;
        }
        assert_eq!(rows.len(), 2);
        let count: i64 = store.scalar("SELECT count(*) FROM events", &[]).await;
        assert_eq!(count, 2);
        let types: Vec<String> = store
            .scalars(
                (
                    "SELECT event_type FROM events WHERE sequence > $1::bigint",
                    "SELECT event_type FROM events WHERE sequence > $1",
                ),
                &[1i64.into()],
            )
            .await;
        assert_eq!(types, ["UserLoggedIn"]);
        // The log refuses edits, through the writer as from anywhere.
        assert!(store
            .execute("UPDATE events SET event_type = 'Tampered'", &[])
            .await
            .is_err());
        db.close().await;
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_helpers_read_a_postgres_server_as_the_tests_did_with_raw_sql() {
        let app = spawn_app().await;
        let (email, _) = app.signed_in_user().await;
        app.login(&email, "not the password at all").await;
        app.read_models_caught_up().await;

        let events = app.stored_events().await;
        assert_eq!(events.len() as i64, app.count_events().await);
        assert_eq!(events[0].event_type, "UserRegistered");
        let user = events[0].aggregate_id.clone();
        assert_eq!(
            app.event_types("user", &user).await,
            ["UserRegistered", "UserLoggedIn", "LoginFailed"]
        );
        let actions: Vec<String> = app
            .audit_rows()
            .await
            .into_iter()
            .map(|r| r.action)
            .collect();
        assert_eq!(actions.len(), events.len());
        assert!(actions.contains(&"LoginFailed".to_owned()));
        let by_id: String = app
            .db()
            .scalar(
                "SELECT email FROM users WHERE user_id = $1",
                &[user.parse::<Uuid>().unwrap().into()],
            )
            .await;
        assert_eq!(by_id, email);

        // A raw event is chained by the trigger and reaches the read side.
        let payload = json!({"UserLoggedIn": {
            "session_id": Uuid::new_v4(), "method": "password", "at": chrono::Utc::now()}});
        let metadata =
            json!({"occurred_at": chrono::Utc::now(), "actor": user, "request_id": "raw"});
        app.append_raw_event(RawEvent {
            metadata: &metadata,
            ..raw(&user, 4, &payload)
        })
        .await;
        app.read_models_caught_up().await;
        let raw_row = app
            .audit_rows()
            .await
            .into_iter()
            .find(|r| r.request_id.as_deref() == Some("raw"))
            .expect("the raw event was projected");
        assert_eq!(raw_row.sequence, 4);
        assert_eq!(raw_row.details["factors"], json!(["pwd"]));
        assert_eq!(
            app.login(&email, PASSWORD).await.status(),
            reqwest::StatusCode::OK
        );
    }
}
