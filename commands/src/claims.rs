//! Unique keys claimed outside the event store (email digests, organization
//! slugs).
//!
//! The event store settles races per aggregate only; a key that must be unique
//! across aggregates is claimed in its table first (the primary key settles a
//! race between two claimants), and only then is the aggregate's first event
//! written. A process can die in between: a claim older than `stale_after` whose
//! holder never appeared in the event log is an orphan and may be taken over.

use chrono::{Duration, Utc};
use keyledger_storage::{with_writer, Database, Id};
use sqlx::{Encode, Postgres, Sqlite, Type};
use uuid::Uuid;

/// A table of claims: `key` is unique, `holder` is the aggregate holding it.
pub(crate) struct ClaimTable {
    pub table: &'static str,
    pub key: &'static str,
    pub holder: &'static str,
    /// The holder's aggregate type in the event log: once it has an event, the
    /// claim is no orphan.
    pub aggregate_type: &'static str,
}

/// Claims `key` for `holder`, taking over an orphaned claim. Returns false when
/// another holder has it.
pub(crate) async fn claim<K>(
    db: &Database,
    table: &ClaimTable,
    key: K,
    holder: Uuid,
    stale_after: Duration,
) -> Result<bool, sqlx::Error>
where
    K: for<'q> Encode<'q, Postgres>
        + Type<Postgres>
        + for<'q> Encode<'q, Sqlite>
        + Type<Sqlite>
        + Clone
        + Send
        + Sync,
{
    let ClaimTable {
        table: name,
        key: key_column,
        holder: holder_column,
        aggregate_type,
    } = table;
    let insert = format!(
        "INSERT INTO {name} ({key_column}, {holder_column}, claimed_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING"
    );
    let take_over = format!(
        "UPDATE {name} SET {holder_column} = $2, claimed_at = $3
          WHERE {key_column} = $1
            AND claimed_at < $4
            AND NOT EXISTS (SELECT 1 FROM events e
                             WHERE e.aggregate_type = '{aggregate_type}'
                               AND e.aggregate_id = CAST({name}.{holder_column} AS TEXT))"
    );
    let holder = Id(holder);
    let now = Utc::now();
    Ok(with_writer!(db, |conn| {
        let inserted = sqlx::query(&insert)
            .bind(key.clone())
            .bind(holder)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        inserted == 1
            || sqlx::query(&take_over)
                .bind(key.clone())
                .bind(holder)
                .bind(now)
                .bind(now - stale_after)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                == 1
    }))
}
