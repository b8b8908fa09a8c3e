-- Organization slug uniqueness lives beside the event store, like email_claims: an
-- organization is created by first claiming its slug here (the primary key decides
-- races between creators), then writing OrganizationCreated. A claim whose
-- organization never appeared in the event store can be taken over once it is
-- stale (see commands/src/slug_registry.rs).
CREATE TABLE organization_slugs
(
    slug            text        PRIMARY KEY,
    organization_id uuid        NOT NULL,
    claimed_at      timestamptz NOT NULL DEFAULT now()
);
