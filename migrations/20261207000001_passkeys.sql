-- Passkeys (decision 0020).
--
-- A credential id belongs to one account: registration claims the id's keyed
-- digest here first (the primary key settles a race), then writes
-- PasskeyRegistered. The table holds no credential id, only its HMAC under a
-- server key, so erasing an account only has to drop its claims.
CREATE TABLE passkey_claims
(
    digest     bytea       PRIMARY KEY,
    user_id    uuid        NOT NULL,
    claimed_at timestamptz NOT NULL
);

CREATE INDEX passkey_claims_user_idx ON passkey_claims (user_id);

-- WebAuthn ceremonies between their start and their finish: the challenge and
-- what webauthn-rs needs to check the answer, shared by every node. A row is
-- taken (deleted) before its answer is checked, so a challenge works once; it
-- is useless after `expires_at`, and rows past it are deleted as new ones come.
CREATE TABLE webauthn_ceremonies
(
    challenge_id uuid        PRIMARY KEY,
    -- registration | sign_in | second_factor | sign_up
    purpose      text        NOT NULL,
    -- The account it is for; none for a sign-in without an account hint.
    user_id      uuid,
    -- webauthn-rs's state (JSON): the challenge and, for a sign-in, the
    -- allowed credentials. Nothing secret; erasure deletes the account's rows.
    state        text        NOT NULL,
    expires_at   timestamptz NOT NULL
);

CREATE INDEX webauthn_ceremonies_expiry_idx ON webauthn_ceremonies (expires_at);
CREATE INDEX webauthn_ceremonies_user_idx ON webauthn_ceremonies (user_id);
