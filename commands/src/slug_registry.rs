//! Organization slug uniqueness, decided outside the event store (like email
//! addresses, see [`crate::email_registry`]).
//!
//! Creating an organization first claims the slug in `organization_slugs`, whose
//! primary key settles a race between two creators, and only then writes
//! `OrganizationCreated`.

use chrono::Duration;
use keyledger_domain::organization::OrganizationSlug;
use sqlx::PgPool;
use uuid::Uuid;

/// PostgreSQL `organization_slugs`.
#[derive(Clone)]
pub struct PgSlugRegistry {
    pool: PgPool,
    /// A claim older than this whose organization never appeared in the event
    /// store (the process died between claim and creation) may be taken over.
    stale_after: Duration,
}

impl PgSlugRegistry {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            stale_after: Duration::minutes(5),
        }
    }

    /// Claims `slug` for `organization_id`. Returns false when another
    /// organization holds it.
    pub async fn claim(
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

    /// Gives a claim back (creation failed after claiming).
    pub async fn release(
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
