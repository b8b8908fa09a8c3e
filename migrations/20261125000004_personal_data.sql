-- Erasure without rewriting history (decision 0009).
--
-- Personal fields inside events are sealed with a data key of the person they are
-- about. The keys live here, outside the append-only log: erasing a person sets
-- their key to NULL (the row stays as a tombstone, so no later write can create a
-- fresh key for an erased account), and from then on their sealed fields open for
-- nobody, while every event and its hash stay as written.
CREATE TABLE user_data_keys
(
    owner_id   uuid        PRIMARY KEY,
    key        bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    erased_at  timestamptz,
    CHECK ((key IS NULL) = (erased_at IS NOT NULL)),
    CHECK (key IS NULL OR length(key) = 32)
);

-- Email claims are keyed by HMAC-SHA256(email index key, normalised address): the
-- index key is configuration (never in the database), so a copy of this table does
-- not reveal who has an account. Claims written before this migration keep their
-- address in `email` until the server's first start converts them (it holds the
-- key); new claims never store it.
ALTER TABLE email_claims DROP CONSTRAINT email_claims_pkey;
ALTER TABLE email_claims ALTER COLUMN email DROP NOT NULL;
ALTER TABLE email_claims ADD COLUMN digest bytea;
CREATE UNIQUE INDEX email_claims_digest_idx ON email_claims (digest);
CREATE UNIQUE INDEX email_claims_legacy_email_idx ON email_claims (email) WHERE email IS NOT NULL;
CREATE INDEX email_claims_user_idx ON email_claims (user_id);
ALTER TABLE email_claims ADD CONSTRAINT email_claims_keyed
    CHECK (digest IS NOT NULL OR email IS NOT NULL);
