//! Opening PostgreSQL.

use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::OpenError;

/// How long a request waits for a pooled connection before it fails (and
/// answers 503) rather than queueing without end.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection idle at least this long is checked (a round trip) before
/// it is handed out, so one the server closed meanwhile (a restart, an idle
/// timeout, a dropped link) is replaced instead of failing a request. One
/// returned to the pool a moment ago needs no check: under load that is every
/// connection, and the check was a round trip on every transaction (about a tenth
/// of the server's CPU in a refresh, and a message PostgreSQL answers each time).
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Connects to PostgreSQL, creating the database first when it does not exist,
/// and migrates the event store, the write side's tables and the read models'
/// prerequisites.
pub async fn connect_postgres(url: &str, max_connections: u32) -> Result<PgPool, OpenError> {
    if !Postgres::database_exists(url).await? {
        tracing::info!("creating database");
        if let Err(e) = Postgres::create_database(url).await {
            // Another process may have created it meanwhile.
            if !Postgres::database_exists(url).await? {
                return Err(e.into());
            }
        }
    }
    let options: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_IDLE_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await?;
    migrate_postgres(&pool).await?;
    Ok(pool)
}

/// Applies the PostgreSQL migrations (idempotent).
pub async fn migrate_postgres(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations").run(pool).await
}
