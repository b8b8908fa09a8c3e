-- The OpenID provider's authorization codes: see the PostgreSQL migration of
-- the same name for what each column is.
CREATE TABLE oidc_authorization_codes
(
    code_digest        BLOB PRIMARY KEY CHECK (length(code_digest) = 32),
    client_id          TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    redirect_uri       TEXT NOT NULL,
    scope              TEXT NOT NULL,
    nonce              TEXT,
    code_challenge     TEXT,
    auth_time          TEXT NOT NULL,
    factors            TEXT NOT NULL,
    browser_session_id TEXT NOT NULL,
    expires_at         TEXT NOT NULL,
    redeemed_at        TEXT,
    session_id         TEXT
) STRICT;

CREATE INDEX oidc_authorization_codes_expiry_idx ON oidc_authorization_codes (expires_at);
CREATE INDEX oidc_authorization_codes_user_idx ON oidc_authorization_codes (user_id);
