//! Email uniqueness, decided outside the event store.
//!
//! The event store can only guarantee uniqueness per aggregate; "one account per
//! address" spans aggregates. Registration first claims the normalised address in
//! `email_claims` (its unique index settles any race), then writes `UserRegistered`.
//!
//! The table never holds an address: each claim is keyed by the address's
//! [`EmailIndexKey`] digest (decision 0009), so erasing an account only has to drop
//! its claim for the address to be free and unknown again.

use std::future::Future;

use chrono::Duration;
use keyledger_domain::{Email, EmailIndexKey};
use sqlx::PgPool;
use uuid::Uuid;

use keyledger_storage::{Database, EmbeddedDatabase, Engine, Id};

/// The narrow storage contract the write side needs for addresses.
pub trait EmailRegistry: Send + Sync {
    /// Claims `email` for `user_id`. Returns false when another account holds it.
    fn claim(
        &self,
        email: &Email,
        user_id: Uuid,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
    /// Gives a claim back (registration failed after claiming).
    fn release(
        &self,
        email: &Email,
        user_id: Uuid,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// The account holding `email`, if any.
    fn lookup(
        &self,
        email: &Email,
    ) -> impl Future<Output = Result<Option<Uuid>, sqlx::Error>> + Send;
    /// Drops every claim of an account (erasure): its address is free again.
    fn release_account(
        &self,
        user_id: Uuid,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// PostgreSQL `email_claims`.
#[derive(Clone)]
pub struct PgEmailRegistry {
    pool: PgPool,
    index_key: EmailIndexKey,
    /// A claim older than this whose account never appeared in the event store
    /// (the process died between claim and registration) may be taken over.
    stale_after: Duration,
}

impl PgEmailRegistry {
    pub fn new(pool: PgPool, index_key: EmailIndexKey) -> Self {
        Self {
            pool,
            index_key,
            stale_after: Duration::minutes(5),
        }
    }

    fn digest(&self, email: &Email) -> Vec<u8> {
        self.index_key.digest(email).to_vec()
    }

    /// Replaces the addresses of claims written before claims were keyed (migration
    /// 0004) by their digests. Idempotent; the server runs it at start-up, before
    /// serving, since only it holds the index key. Returns how many it converted.
    pub async fn convert_legacy_claims(&self) -> Result<u64, sqlx::Error> {
        let legacy: Vec<String> =
            sqlx::query_scalar("SELECT email FROM email_claims WHERE email IS NOT NULL")
                .fetch_all(&self.pool)
                .await?;
        let mut converted = 0;
        for address in legacy {
            // Stored addresses were normalised when claimed: each is digested as
            // it is (one accepted under older rules must still find its account).
            let email = Email::from_stored(address.clone());
            converted +=
                sqlx::query("UPDATE email_claims SET digest = $1, email = NULL WHERE email = $2")
                    .bind(self.digest(&email))
                    .bind(&address)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
        }
        Ok(converted)
    }
}

impl EmailRegistry for PgEmailRegistry {
    async fn claim(&self, email: &Email, user_id: Uuid) -> Result<bool, sqlx::Error> {
        let digest = self.digest(email);
        let inserted = sqlx::query(
            "INSERT INTO email_claims (digest, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&digest)
        .bind(user_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(true);
        }
        // Take over an orphaned claim: old, and no UserRegistered for its holder.
        let taken_over = sqlx::query(
            "UPDATE email_claims c SET user_id = $2, claimed_at = now()
              WHERE c.digest = $1
                AND c.claimed_at < now() - make_interval(secs => $3)
                AND NOT EXISTS (SELECT 1 FROM events e
                                 WHERE e.aggregate_type = 'user'
                                   AND e.aggregate_id = c.user_id::text)",
        )
        .bind(&digest)
        .bind(user_id)
        .bind(self.stale_after.num_seconds() as f64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken_over == 1)
    }

    async fn release(&self, email: &Email, user_id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM email_claims WHERE digest = $1 AND user_id = $2")
            .bind(self.digest(email))
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn lookup(&self, email: &Email) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar("SELECT user_id FROM email_claims WHERE digest = $1")
            .bind(self.digest(email))
            .fetch_optional(&self.pool)
            .await
    }

    async fn release_account(&self, user_id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM email_claims WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// SQLite `email_claims` (decision 0011, #15–16): the same claims, written through
/// the single writer, with the time bound from Rust.
#[derive(Clone)]
pub struct SqliteEmailRegistry {
    database: EmbeddedDatabase,
    index_key: EmailIndexKey,
    stale_after: Duration,
}

impl SqliteEmailRegistry {
    pub fn new(database: EmbeddedDatabase, index_key: EmailIndexKey) -> Self {
        Self {
            database,
            index_key,
            stale_after: Duration::minutes(5),
        }
    }

    fn digest(&self, email: &Email) -> Vec<u8> {
        self.index_key.digest(email).to_vec()
    }
}

impl EmailRegistry for SqliteEmailRegistry {
    async fn claim(&self, email: &Email, user_id: Uuid) -> Result<bool, sqlx::Error> {
        claim_embedded(
            &self.database,
            "INSERT INTO email_claims (digest, user_id, claimed_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            // Take over an orphaned claim: old, and no UserRegistered for its holder.
            "UPDATE email_claims SET user_id = $2, claimed_at = $3
                  WHERE digest = $1
                    AND claimed_at < $4
                    AND NOT EXISTS (SELECT 1 FROM events e
                                     WHERE e.aggregate_type = 'user'
                                       AND e.aggregate_id = email_claims.user_id)",
            self.digest(email),
            user_id,
            self.stale_after,
        )
        .await
    }

    async fn release(&self, email: &Email, user_id: Uuid) -> Result<(), sqlx::Error> {
        let mut tx = self.database.begin_write().await?;
        sqlx::query("DELETE FROM email_claims WHERE digest = $1 AND user_id = $2")
            .bind(self.digest(email))
            .bind(user_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    async fn lookup(&self, email: &Email) -> Result<Option<Uuid>, sqlx::Error> {
        let holder: Option<Id> =
            sqlx::query_scalar("SELECT user_id FROM email_claims WHERE digest = $1")
                .bind(self.digest(email))
                .fetch_optional(self.database.readers())
                .await?;
        Ok(holder.map(Uuid::from))
    }

    async fn release_account(&self, user_id: Uuid) -> Result<(), sqlx::Error> {
        let mut tx = self.database.begin_write().await?;
        sqlx::query("DELETE FROM email_claims WHERE user_id = $1")
            .bind(user_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}

/// The email registry of either back end.
#[derive(Clone)]
pub enum EmailClaims {
    Postgres(PgEmailRegistry),
    Sqlite(SqliteEmailRegistry),
}

impl EmailClaims {
    pub fn new(storage: &Database, index_key: EmailIndexKey) -> Self {
        match storage.engine() {
            Engine::Postgres(pool) => Self::Postgres(PgEmailRegistry::new(pool.clone(), index_key)),
            Engine::Embedded(database) => {
                Self::Sqlite(SqliteEmailRegistry::new(database.clone(), index_key))
            }
        }
    }

    /// Converts claims written before claims were keyed (see
    /// [`PgEmailRegistry::convert_legacy_claims`]). Only PostgreSQL can hold such
    /// legacy claims: an embedded database was created keyed, so there it
    /// converts nothing.
    pub async fn convert_legacy_claims(&self) -> Result<u64, sqlx::Error> {
        match self {
            Self::Postgres(r) => r.convert_legacy_claims().await,
            Self::Sqlite(_) => Ok(0),
        }
    }
}

impl EmailRegistry for EmailClaims {
    async fn claim(&self, email: &Email, user_id: Uuid) -> Result<bool, sqlx::Error> {
        match self {
            Self::Postgres(r) => r.claim(email, user_id).await,
            Self::Sqlite(r) => r.claim(email, user_id).await,
        }
    }

    async fn release(&self, email: &Email, user_id: Uuid) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(r) => r.release(email, user_id).await,
            Self::Sqlite(r) => r.release(email, user_id).await,
        }
    }

    async fn lookup(&self, email: &Email) -> Result<Option<Uuid>, sqlx::Error> {
        match self {
            Self::Postgres(r) => r.lookup(email).await,
            Self::Sqlite(r) => r.lookup(email).await,
        }
    }

    async fn release_account(&self, user_id: Uuid) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(r) => r.release_account(user_id).await,
            Self::Sqlite(r) => r.release_account(user_id).await,
        }
    }
}

/// A registry's claim (email, slug) on the embedded database: inserts `key` for
/// `holder`, or else takes an orphaned claim over, in one write transaction.
/// `insert` binds `($1 key, $2 holder, $3 now)`; `take_over` binds the same and
/// `$4`, the time before which a claim is old. True when `holder` now holds `key`.
pub(crate) async fn claim_embedded<K>(
    database: &EmbeddedDatabase,
    insert: &str,
    take_over: &str,
    key: K,
    holder: Uuid,
    stale_after: chrono::Duration,
) -> Result<bool, sqlx::Error>
where
    K: for<'q> sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + Clone + Send,
{
    let now = chrono::Utc::now();
    let holder = Id(holder);
    let mut tx = database.begin_write().await?;
    let inserted = sqlx::query(insert)
        .bind(key.clone())
        .bind(holder)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let claimed = inserted == 1
        || sqlx::query(take_over)
            .bind(key)
            .bind(holder)
            .bind(now)
            .bind(now - stale_after)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
    tx.commit().await?;
    Ok(claimed)
}
