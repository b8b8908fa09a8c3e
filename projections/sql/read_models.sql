-- Read models. Disposable: every table here is rebuilt from the event log by
-- `keyledger-replay rebuild`, which runs this same file in a fresh schema.
CREATE TABLE IF NOT EXISTS projection_checkpoints
(
    name            text        PRIMARY KEY,
    tx_id           bigint      NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS users
(
    user_id              uuid        PRIMARY KEY,
    email                text        NOT NULL,
    display_name         text,
    created_at           timestamptz NOT NULL,
    last_login_at        timestamptz,
    consecutive_failures integer     NOT NULL DEFAULT 0,
    locked_until         timestamptz,
    suspended            boolean     NOT NULL DEFAULT false,
    platform_admin       boolean     NOT NULL DEFAULT false,
    version              bigint      NOT NULL,
    -- The last password change (NULL until the first); rehashes do not count.
    password_changed_at  timestamptz,
    -- The owner proved the address is theirs (a link mailed to it, or the system
    -- an account was imported from said so).
    email_verified       boolean     NOT NULL DEFAULT false,
    -- The second factors as a JSON array of {method_id, kind, confirmed}: which
    -- kinds of confirmed factor the account has (GET /v1/auth/me). Nothing secret.
    second_factors       text        NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS users_email_idx ON users (email);

CREATE TABLE IF NOT EXISTS sessions
(
    session_id        uuid        PRIMARY KEY,
    user_id           uuid        NOT NULL,
    ip                text,
    user_agent        text,
    created_at        timestamptz NOT NULL,
    last_refreshed_at timestamptz,
    expires_at        timestamptz NOT NULL,
    refresh_count     integer     NOT NULL DEFAULT 0,
    state             text        NOT NULL,
    ended_at          timestamptz,
    end_reason        text,
    organization_id   uuid,
    version           bigint      NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user_idx ON sessions (user_id, created_at);

-- One row per security-relevant event; append-only.
CREATE TABLE IF NOT EXISTS audit_trail
(
    global_position bigint      PRIMARY KEY,
    occurred_at     timestamptz NOT NULL,
    actor           text        NOT NULL,
    subject         text        NOT NULL,
    action          text        NOT NULL,
    outcome         text        NOT NULL,
    ip              text,
    user_agent      text,
    request_id      text,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    details         jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_trail_subject_idx ON audit_trail (subject, occurred_at);
-- An organization's rows for its auditors (GET /v1/audit/events?organization_id=):
-- its own aggregate, and the roles and service accounts created in it.
CREATE INDEX IF NOT EXISTS audit_trail_aggregate_idx ON audit_trail (aggregate_type, aggregate_id);
CREATE INDEX IF NOT EXISTS audit_trail_owner_organization_idx
    ON audit_trail ((details ->> 'organization_id'))
    WHERE action IN ('RoleDefined', 'ServiceAccountCreated');

-- Columns added after the first release: databases created earlier get them here.
ALTER TABLE users ADD COLUMN IF NOT EXISTS suspended boolean NOT NULL DEFAULT false;
ALTER TABLE users ADD COLUMN IF NOT EXISTS platform_admin boolean NOT NULL DEFAULT false;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS organization_id uuid;
ALTER TABLE users ADD COLUMN IF NOT EXISTS password_changed_at timestamptz;
ALTER TABLE users ADD COLUMN IF NOT EXISTS email_verified boolean NOT NULL DEFAULT false;
ALTER TABLE users ADD COLUMN IF NOT EXISTS second_factors text NOT NULL DEFAULT '[]';
