//! Email uniqueness, decided outside the event store.
//!
//! The event store can only guarantee uniqueness per aggregate; "one account per
//! address" spans aggregates. Registration first claims the normalised address in
//! `email_claims` (its primary key settles any race), then writes `UserRegistered`.

use std::future::Future;

use chrono::Duration;
use keyledger_domain::Email;
use sqlx::PgPool;
use uuid::Uuid;

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
}

/// PostgreSQL `email_claims`.
#[derive(Clone)]
pub struct PgEmailRegistry {
    pool: PgPool,
    /// A claim older than this whose account never appeared in the event store
    /// (the process died between claim and registration) may be taken over.
    stale_after: Duration,
}

impl PgEmailRegistry {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            stale_after: Duration::minutes(5),
        }
    }
}

impl EmailRegistry for PgEmailRegistry {
    async fn claim(&self, email: &Email, user_id: Uuid) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO email_claims (email, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(email.as_str())
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
              WHERE c.email = $1
                AND c.claimed_at < now() - make_interval(secs => $3)
                AND NOT EXISTS (SELECT 1 FROM events e
                                 WHERE e.aggregate_type = 'user'
                                   AND e.aggregate_id = c.user_id::text)",
        )
        .bind(email.as_str())
        .bind(user_id)
        .bind(self.stale_after.num_seconds() as f64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken_over == 1)
    }

    async fn release(&self, email: &Email, user_id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM email_claims WHERE email = $1 AND user_id = $2")
            .bind(email.as_str())
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn lookup(&self, email: &Email) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar("SELECT user_id FROM email_claims WHERE email = $1")
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await
    }
}
