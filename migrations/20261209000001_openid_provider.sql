-- The OpenID provider's authorization codes (RFC 6749 §4.1): what a sign-in on
-- the hosted pages hands to an app through the browser, exchanged once for
-- tokens. Shared by every node. Keyed by the SHA-256 of the code (the code
-- itself is never stored). A code is redeemed by marking it (`redeemed_at`),
-- not by deleting it, so that a second presentation before it expires is
-- recognised and the session the first one started (`session_id`) is ended.
-- Rows past `expires_at` are deleted as new ones come.
CREATE TABLE oidc_authorization_codes
(
    code_digest        bytea       PRIMARY KEY,
    client_id          uuid        NOT NULL,
    user_id            uuid        NOT NULL,
    redirect_uri       text        NOT NULL,
    -- The granted scope, space-separated; the app's nonce; the PKCE challenge
    -- (S256). None of them is secret.
    scope              text        NOT NULL,
    nonce              text,
    code_challenge     text,
    -- When and how the user proved who they are (`auth_time`, `amr` values
    -- space-separated), and the browser session they did it in.
    auth_time          timestamptz NOT NULL,
    factors            text        NOT NULL,
    browser_session_id uuid        NOT NULL,
    expires_at         timestamptz NOT NULL,
    redeemed_at        timestamptz,
    session_id         uuid
);

CREATE INDEX oidc_authorization_codes_expiry_idx ON oidc_authorization_codes (expires_at);
CREATE INDEX oidc_authorization_codes_user_idx ON oidc_authorization_codes (user_id);
