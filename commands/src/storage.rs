//! Which database the write side appends to (decision 0011, §2).

use sqlx::PgPool;

use crate::embedded::EmbeddedDatabase;

/// The write side's storage: chosen once at start-up, then matched exhaustively
/// by every role (event store, email and slug claims, data keys, log look-ups),
/// so no feature exists on one back end only.
#[derive(Clone, Debug)]
pub enum Storage {
    Postgres(PgPool),
    Embedded(EmbeddedDatabase),
}

impl Storage {
    /// Which back end, for logs and `/health`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Embedded(_) => "sqlite",
        }
    }
}

/// The write side's PostgreSQL tables an erasure changes: the email claims (the
/// keyed digest) and the data keys (the wrapped key). The read models are
/// scrubbed by the projector once it applied the erasure
/// (`keyledger_projections::ReadStore::scrub_erased_read_models`).
const ERASURE_TABLES: &str = "email_claims, user_data_keys";

/// How often a WAL checkpoint is tried before giving up (a reader's open
/// snapshot can keep it from finishing; each try waits up to the busy timeout).
const CHECKPOINT_TRIES: u32 = 5;

impl Storage {
    /// Removes from the database files what an erasure deleted or overwrote in
    /// the write side's tables (the claim, the data key), once it is committed.
    ///
    /// Why: deleting a row or setting a key to NULL only marks the old bytes as
    /// free. In PostgreSQL they stay in the table's pages (a plain `VACUUM` frees
    /// the space but does not overwrite it), so `VACUUM (FULL)` rewrites the tables
    /// involved into new files and drops the old ones; it holds an exclusive lock
    /// on each table while it copies it, which is why it runs once per erasure and
    /// only on the tables an erasure touches. In SQLite every connection runs with
    /// `secure_delete` (freed content is zeroed in the database file), and the
    /// committed pages still sit in the write-ahead log until a checkpoint: a
    /// `TRUNCATE` checkpoint copies them into the database file and empties the
    /// log file.
    ///
    /// Neither reaches copies outside the database files: PostgreSQL's WAL
    /// segments and archives, replicas and backups keep the old data until the
    /// operator's retention removes them (README, "Erasure").
    pub async fn scrub_after_erasure(&self) -> Result<(), sqlx::Error> {
        self.scrub(ERASURE_TABLES).await
    }

    /// [`Self::scrub_after_erasure`] for the data keys alone, after keys were
    /// rewrapped: the clear (or retired-key) forms must not stay in free space.
    pub async fn scrub_data_keys(&self) -> Result<(), sqlx::Error> {
        self.scrub("user_data_keys").await
    }

    async fn scrub(&self, postgres_tables: &str) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(pool) => {
                // Not inside a transaction: VACUUM refuses to run in one.
                sqlx::raw_sql(&format!("VACUUM (FULL) {postgres_tables}"))
                    .execute(pool)
                    .await?;
                Ok(())
            }
            Self::Embedded(database) => {
                for _ in 0..CHECKPOINT_TRIES {
                    let (busy, _, _): (i64, i64, i64) =
                        sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                            .fetch_one(database.writer())
                            .await?;
                    if busy == 0 {
                        return Ok(());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(sqlx::Error::Protocol(
                    "the write-ahead log could not be checkpointed: a reader kept it busy".into(),
                ))
            }
        }
    }
}
