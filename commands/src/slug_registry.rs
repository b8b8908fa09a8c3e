//! Organization slug uniqueness, decided outside the event store (like email
//! addresses, see [`crate::email_registry`]).
//!
//! Creating an organization first claims the slug in `organization_slugs`, whose
//! primary key settles a race between two creators, and only then writes
//! `OrganizationCreated`.

use std::future::Future;

use chrono::Duration;
use keyledger_domain::organization::OrganizationSlug;
use sqlx::PgPool;
use uuid::Uuid;

use keyledger_storage::EmbeddedDatabase;
use keyledger_storage::{Database, Engine};

/// The narrow storage contract the write side needs for slugs.
pub trait SlugRegistry: Send + Sync {
    /// Claims `slug` for `organization_id`. Returns false when another
    /// organization holds it.
    fn claim(
        &self,
        slug: &OrganizationSlug,
        organization_id: Uuid,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
    /// Gives a claim back (creation failed after claiming).
    fn release(
        &self,
        slug: &OrganizationSlug,
        organization_id: Uuid,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// A claim older than this whose organization never appeared in the event store
/// (the process died between claim and creation) may be taken over.
const STALE_AFTER: Duration = Duration::minutes(5);

/// PostgreSQL `organization_slugs`.
#[derive(Clone)]
pub struct PgSlugRegistry {
    pool: PgPool,
    stale_after: Duration,
}

impl PgSlugRegistry {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            stale_after: STALE_AFTER,
        }
    }
}

impl SlugRegistry for PgSlugRegistry {
    async fn claim(
        &self,
        slug: &OrganizationSlug,
        organization_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO organization_slugs (slug, organization_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(slug.as_str())
        .bind(organization_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(true);
        }
        // Take over an orphaned claim: old, and no event for its organization.
        let taken_over = sqlx::query(
            "UPDATE organization_slugs c SET organization_id = $2, claimed_at = now()
              WHERE c.slug = $1
                AND c.claimed_at < now() - make_interval(secs => $3)
                AND NOT EXISTS (SELECT 1 FROM events e
                                 WHERE e.aggregate_type = 'organization'
                                   AND e.aggregate_id = c.organization_id::text)",
        )
        .bind(slug.as_str())
        .bind(organization_id)
        .bind(self.stale_after.num_seconds() as f64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken_over == 1)
    }

    async fn release(
        &self,
        slug: &OrganizationSlug,
        organization_id: Uuid,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM organization_slugs WHERE slug = $1 AND organization_id = $2")
            .bind(slug.as_str())
            .bind(organization_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// SQLite `organization_slugs` (decision 0011, #18): the same claims, written
/// through the single writer, with the time bound from Rust.
#[derive(Clone)]
pub struct SqliteSlugRegistry {
    database: EmbeddedDatabase,
    stale_after: Duration,
}

impl SqliteSlugRegistry {
    pub fn new(database: EmbeddedDatabase) -> Self {
        Self {
            database,
            stale_after: STALE_AFTER,
        }
    }
}

impl SlugRegistry for SqliteSlugRegistry {
    async fn claim(
        &self,
        slug: &OrganizationSlug,
        organization_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        crate::email_registry::claim_embedded(
            &self.database,
            "INSERT INTO organization_slugs (slug, organization_id, claimed_at)
                 VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            // Take over an orphaned claim: old, and no event for its organization.
            "UPDATE organization_slugs SET organization_id = $2, claimed_at = $3
                  WHERE slug = $1
                    AND claimed_at < $4
                    AND NOT EXISTS (SELECT 1 FROM events e
                                     WHERE e.aggregate_type = 'organization'
                                       AND e.aggregate_id = organization_slugs.organization_id)",
            slug.as_str().to_owned(),
            organization_id,
            self.stale_after,
        )
        .await
    }

    async fn release(
        &self,
        slug: &OrganizationSlug,
        organization_id: Uuid,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.database.begin_write().await?;
        sqlx::query("DELETE FROM organization_slugs WHERE slug = $1 AND organization_id = $2")
            .bind(slug.as_str())
            .bind(organization_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}

/// The slug registry of either back end.
#[derive(Clone)]
pub enum SlugClaims {
    Postgres(PgSlugRegistry),
    Sqlite(SqliteSlugRegistry),
}

impl SlugClaims {
    pub fn new(storage: &Database) -> Self {
        match storage.engine() {
            Engine::Postgres(pool) => Self::Postgres(PgSlugRegistry::new(pool.clone())),
            Engine::Embedded(database) => Self::Sqlite(SqliteSlugRegistry::new(database.clone())),
        }
    }
}

impl SlugRegistry for SlugClaims {
    async fn claim(
        &self,
        slug: &OrganizationSlug,
        organization_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        match self {
            Self::Postgres(r) => r.claim(slug, organization_id).await,
            Self::Sqlite(r) => r.claim(slug, organization_id).await,
        }
    }

    async fn release(
        &self,
        slug: &OrganizationSlug,
        organization_id: Uuid,
    ) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(r) => r.release(slug, organization_id).await,
            Self::Sqlite(r) => r.release(slug, organization_id).await,
        }
    }
}
