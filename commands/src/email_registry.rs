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
use keyledger_storage::{with_readers, with_writer, Database, Id};
use uuid::Uuid;

use crate::claims::{claim, ClaimTable};

const EMAIL_CLAIMS: ClaimTable = ClaimTable {
    table: "email_claims",
    key: "digest",
    holder: "user_id",
    aggregate_type: "user",
};

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

/// A claim older than this whose account never appeared in the event store
/// (the process died between claim and registration) may be taken over.
const STALE_AFTER: Duration = Duration::minutes(5);

/// `email_claims`, on either back end.
#[derive(Clone)]
pub struct EmailClaims {
    db: Database,
    index_key: EmailIndexKey,
    stale_after: Duration,
}

impl EmailClaims {
    pub fn new(db: &Database, index_key: EmailIndexKey) -> Self {
        Self {
            db: db.clone(),
            index_key,
            stale_after: STALE_AFTER,
        }
    }

    fn digest(&self, email: &Email) -> Vec<u8> {
        self.index_key.digest(email).to_vec()
    }

    /// Replaces the addresses of claims written before claims were keyed (migration
    /// 0004) by their digests. Idempotent; the server runs it at start-up, before
    /// serving, since only it holds the index key. Returns how many it converted.
    /// Only PostgreSQL can hold such claims: an embedded database was created
    /// keyed (its `email_claims` has no `email` column), so there it converts
    /// nothing.
    pub async fn convert_legacy_claims(&self) -> Result<u64, sqlx::Error> {
        let Some(pool) = self.db.postgres_pool() else {
            return Ok(0);
        };
        let legacy: Vec<String> =
            sqlx::query_scalar("SELECT email FROM email_claims WHERE email IS NOT NULL")
                .fetch_all(pool)
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
                    .execute(pool)
                    .await?
                    .rows_affected();
        }
        Ok(converted)
    }
}

impl EmailRegistry for EmailClaims {
    async fn claim(&self, email: &Email, user_id: Uuid) -> Result<bool, sqlx::Error> {
        claim(
            &self.db,
            &EMAIL_CLAIMS,
            self.digest(email),
            user_id,
            self.stale_after,
        )
        .await
    }

    async fn release(&self, email: &Email, user_id: Uuid) -> Result<(), sqlx::Error> {
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM email_claims WHERE digest = $1 AND user_id = $2")
                .bind(self.digest(email))
                .bind(Id(user_id))
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    async fn lookup(&self, email: &Email) -> Result<Option<Uuid>, sqlx::Error> {
        let holder: Option<Id> = with_readers!(self.db, |pool| {
            sqlx::query_scalar("SELECT user_id FROM email_claims WHERE digest = $1")
                .bind(self.digest(email))
                .fetch_optional(pool)
                .await?
        });
        Ok(holder.map(Uuid::from))
    }

    async fn release_account(&self, user_id: Uuid) -> Result<(), sqlx::Error> {
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM email_claims WHERE user_id = $1")
                .bind(Id(user_id))
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }
}
