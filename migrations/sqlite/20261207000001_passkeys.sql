-- Passkeys: see the PostgreSQL migration of the same name for what each table
-- and column means.
CREATE TABLE passkey_claims
(
    digest     BLOB PRIMARY KEY CHECK (length(digest) = 32),
    user_id    TEXT NOT NULL,
    claimed_at TEXT NOT NULL
) STRICT;

CREATE INDEX passkey_claims_user_idx ON passkey_claims (user_id);

CREATE TABLE webauthn_ceremonies
(
    challenge_id TEXT PRIMARY KEY,
    purpose      TEXT NOT NULL,
    user_id      TEXT,
    state        TEXT NOT NULL,
    expires_at   TEXT NOT NULL
) STRICT;

CREATE INDEX webauthn_ceremonies_expiry_idx ON webauthn_ceremonies (expires_at);
CREATE INDEX webauthn_ceremonies_user_idx ON webauthn_ceremonies (user_id);
