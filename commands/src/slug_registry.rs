//! Organization slug uniqueness, decided outside the event store (like email
//! addresses, see [`crate::email_registry`]).
//!
//! Creating an organization first claims the slug in `organization_slugs`, whose
//! primary key settles a race between two creators, and only then writes
//! `OrganizationCreated`.

use std::future::Future;

use chrono::Duration;
use keyledger_domain::organization::OrganizationSlug;
use uuid::Uuid;

use keyledger_storage::{with_writer, Database, Id};

use crate::claims::{claim, ClaimTable};

const SLUG_CLAIMS: ClaimTable = ClaimTable {
    table: "organization_slugs",
    key: "slug",
    holder: "organization_id",
    aggregate_type: "organization",
};

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

/// `organization_slugs`, on either back end.
#[derive(Clone)]
pub struct SlugClaims {
    db: Database,
    stale_after: Duration,
}

impl SlugClaims {
    pub fn new(db: &Database) -> Self {
        Self {
            db: db.clone(),
            stale_after: STALE_AFTER,
        }
    }
}

impl SlugRegistry for SlugClaims {
    async fn claim(
        &self,
        slug: &OrganizationSlug,
        organization_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        let slug = slug.as_str().to_owned();
        claim(
            &self.db,
            &SLUG_CLAIMS,
            slug,
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
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM organization_slugs WHERE slug = $1 AND organization_id = $2")
                .bind(slug.as_str())
                .bind(Id(organization_id))
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }
}
