-- Social login: see the PostgreSQL migration of the same name for what each
-- table and column means.
CREATE TABLE external_identity_claims
(
    digest     BLOB PRIMARY KEY CHECK (length(digest) = 32),
    user_id    TEXT NOT NULL,
    claimed_at TEXT NOT NULL
) STRICT;

CREATE INDEX external_identity_claims_user_idx ON external_identity_claims (user_id);

CREATE TABLE oauth_flows
(
    state_digest   BLOB PRIMARY KEY CHECK (length(state_digest) = 32),
    provider       TEXT NOT NULL,
    purpose        TEXT NOT NULL,
    user_id        TEXT,
    browser_digest BLOB NOT NULL,
    redirect_uri   TEXT NOT NULL,
    app_state      TEXT,
    pkce_verifier  TEXT NOT NULL,
    nonce          TEXT,
    expires_at     TEXT NOT NULL
) STRICT;

CREATE INDEX oauth_flows_expiry_idx ON oauth_flows (expires_at);
CREATE INDEX oauth_flows_user_idx ON oauth_flows (user_id);

CREATE TABLE oauth_handoffs
(
    code_digest  BLOB PRIMARY KEY CHECK (length(code_digest) = 32),
    user_id      TEXT NOT NULL,
    identity_id  TEXT NOT NULL,
    provider     TEXT NOT NULL,
    provider_mfa INTEGER NOT NULL,
    expires_at   TEXT NOT NULL
) STRICT;

CREATE INDEX oauth_handoffs_expiry_idx ON oauth_handoffs (expires_at);
CREATE INDEX oauth_handoffs_user_idx ON oauth_handoffs (user_id);

CREATE TABLE external_identity_tokens
(
    identity_id TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;

CREATE INDEX external_identity_tokens_user_idx ON external_identity_tokens (user_id);
