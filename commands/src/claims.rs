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

/// Claims keyed by an HMAC, under a server key, of what they stand for (a
/// passkey's credential id, a provider's id of a person): the table holds no
/// identifier of a person, so erasing an account only has to drop its rows.
#[derive(Clone)]
pub(crate) struct KeyedClaims {
    db: Database,
    key: [u8; 32],
    table: &'static ClaimTable,
    /// A claim older than this whose holder never appeared in the event log
    /// (a registration that died before its commit) may be taken over.
    stale_after: Duration,
}

impl KeyedClaims {
    pub(crate) fn new(
        db: &Database,
        key: [u8; 32],
        table: &'static ClaimTable,
        stale_after: Duration,
    ) -> Self {
        Self {
            db: db.clone(),
            key,
            table,
            stale_after,
        }
    }

    /// The HMAC of `parts`, a NUL between each (no part holds one, so the
    /// parts cannot be regrouped into the same digest).
    pub(crate) fn digest(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                hmac::Mac::update(&mut mac, &[0]);
            }
            hmac::Mac::update(&mut mac, part);
        }
        hmac::Mac::finalize(mac).into_bytes().to_vec()
    }

    /// Claims `digest` for `holder`: false when a holder has it already (this
    /// one included).
    pub(crate) async fn claim(&self, digest: Vec<u8>, holder: Uuid) -> Result<bool, sqlx::Error> {
        claim(&self.db, self.table, digest, holder, self.stale_after).await
    }

    /// Who holds `digest`, if anyone.
    pub(crate) async fn holder(&self, digest: Vec<u8>) -> Result<Option<Uuid>, sqlx::Error> {
        let ClaimTable {
            table, key, holder, ..
        } = self.table;
        let select = format!("SELECT {holder} FROM {table} WHERE {key} = $1");
        let row: Option<(Id,)> = keyledger_storage::with_readers!(self.db, |pool| {
            sqlx::query_as(&select)
                .bind(digest)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(id,)| id.into()))
    }

    /// Gives `digest` back, if `holder` holds it.
    pub(crate) async fn release(&self, digest: Vec<u8>, holder: Uuid) -> Result<(), sqlx::Error> {
        let ClaimTable {
            table,
            key,
            holder: holder_column,
            ..
        } = self.table;
        let delete = format!("DELETE FROM {table} WHERE {key} = $1 AND {holder_column} = $2");
        with_writer!(self.db, |conn| {
            sqlx::query(&delete)
                .bind(digest)
                .bind(Id(holder))
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Drops every claim of `holder` (erasure).
    pub(crate) async fn release_holder(&self, holder: Uuid) -> Result<(), sqlx::Error> {
        let ClaimTable {
            table,
            holder: holder_column,
            ..
        } = self.table;
        let delete = format!("DELETE FROM {table} WHERE {holder_column} = $1");
        with_writer!(self.db, |conn| {
            sqlx::query(&delete)
                .bind(Id(holder))
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }
}
