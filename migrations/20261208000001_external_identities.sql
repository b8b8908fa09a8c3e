-- Social login: external identities (Google, Kakao, any OpenID provider).
--
-- An identity at a provider belongs to one account: a sign-up or a link claims
-- the keyed digest of (provider, subject) here first (the primary key settles a
-- race), then writes ExternalIdentityLinked. The table holds no subject, only
-- its HMAC under a server key, so erasing an account only has to drop its
-- claims. Sign-in finds the account by the same digest.
CREATE TABLE external_identity_claims
(
    digest     bytea       PRIMARY KEY,
    user_id    uuid        NOT NULL,
    claimed_at timestamptz NOT NULL
);

CREATE INDEX external_identity_claims_user_idx ON external_identity_claims (user_id);

-- Sign-ins and links on their way through a provider, shared by every node:
-- taken (deleted) when the provider sends the browser back, so a `state` works
-- once; useless after `expires_at`, and rows past it are deleted as new ones
-- come. Keyed by the SHA-256 of the `state` sent to the provider; the browser
-- that started it is named by the SHA-256 of its binding cookie.
CREATE TABLE oauth_flows
(
    state_digest   bytea       PRIMARY KEY,
    provider       text        NOT NULL,
    -- sign_in | link
    purpose        text        NOT NULL,
    -- The account a link is for.
    user_id        uuid,
    browser_digest bytea       NOT NULL,
    -- The app's URL to send the browser back to (on the allowlist), and the
    -- app's own state to hand back with it.
    redirect_uri   text        NOT NULL,
    app_state      text,
    -- What the code exchange and the ID token check need: the PKCE verifier
    -- and the nonce. Secret for minutes; gone with the row.
    pkce_verifier  text        NOT NULL,
    nonce          text,
    expires_at     timestamptz NOT NULL
);

CREATE INDEX oauth_flows_expiry_idx ON oauth_flows (expires_at);
CREATE INDEX oauth_flows_user_idx ON oauth_flows (user_id);

-- The one-time codes the callback hands the app (never a token in a URL):
-- keyed by the code's SHA-256, taken once by POST /v1/auth/oauth/exchange.
CREATE TABLE oauth_handoffs
(
    code_digest  bytea       PRIMARY KEY,
    user_id      uuid        NOT NULL,
    identity_id  uuid        NOT NULL,
    provider     text        NOT NULL,
    -- The provider asserted a second factor that the operator trusts.
    provider_mfa boolean     NOT NULL,
    expires_at   timestamptz NOT NULL
);

CREATE INDEX oauth_handoffs_expiry_idx ON oauth_handoffs (expires_at);
CREATE INDEX oauth_handoffs_user_idx ON oauth_handoffs (user_id);

-- A provider's access and refresh tokens, kept only for providers configured
-- to keep them: sealed with the person's data key (erasure makes them
-- unreadable, and deletes the row).
CREATE TABLE external_identity_tokens
(
    identity_id uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL,
    sealed      text        NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE INDEX external_identity_tokens_user_idx ON external_identity_tokens (user_id);
