-- Read models in the embedded (SQLite) store: the same tables, column names and
-- indexes as read_models.sql (PostgreSQL), with SQLite types. Disposable like
-- those: every table is rebuilt from the event log by `keyledger-replay rebuild`.
--
-- FOR WHOEVER QUERIES THESE TABLES (the API's SQLite queries):
--   * ids (user_id, session_id, organization_id) are TEXT, lower-case hyphenated
--     UUIDs (`Uuid::to_string()`). Bind `id.to_string()` or `id.hyphenated()`,
--     never a `Uuid` (sqlx would bind 16 bytes as a BLOB, which equals no TEXT);
--     decode through `uuid::fmt::Hyphenated` or a `String`.
--   * times are TEXT in sqlx's encoding of `DateTime<Utc>` (RFC 3339 with
--     `+00:00` and 0, 3, 6 or 9 fractional digits as needed), truncated to
--     microseconds like PostgreSQL's timestamptz. Within UTC that text sorts
--     chronologically, so `ORDER BY`, `<` and `>` work on it directly, provided
--     the other side is bound from Rust as a `DateTime<Utc>` too. Never compare
--     with SQLite's date functions (`datetime('now')` has another format).
--   * booleans (suspended, platform_admin) are INTEGER 0/1 (sqlx reads `bool`).
--   * bigint and integer are INTEGER (64-bit).
--   * `audit_trail.details` is JSON as TEXT. Read a key with exactly
--     `details ->> 'organization_id'` (a plain key, as in PostgreSQL): the partial
--     index below is on that expression, and SQLite uses an expression index
--     only for the same expression (`'$.organization_id'` would not match).
--   * `= ANY($1)` is `IN (SELECT value FROM json_each($1))`, with a JSON array bound.
--   * `now()` does not exist: bind the time from Rust.
--
-- How `SqliteReadModels::install` runs this file: each section starting with a
-- `-- table: NAME` line is run only when that table is missing from the target
-- schema (after a rebuild switch the live tables' indexes carry
-- generation-prefixed names, because SQLite cannot rename an index, so
-- `CREATE INDEX IF NOT EXISTS` would add duplicates). To a table that exists,
-- each column line of its `CREATE TABLE` that the table lacks is added with
-- `ALTER TABLE ... ADD COLUMN <the line>` (SQLite has no `ADD COLUMN IF NOT
-- EXISTS`): a column added in a later release is written here, at the end of its
-- table, one column per line, nullable or with a default.
-- `{schema}` becomes the quoted schema name (`"main"`, or an attached database
-- such as `"rebuild"`), `{prefix}` a table-name prefix (empty, or `rb<ts>_` for a
-- rebuild beside the live tables).

-- table: projection_checkpoints
CREATE TABLE {schema}.{prefix}projection_checkpoints
(
    name            TEXT    PRIMARY KEY,
    tx_id           INTEGER NOT NULL,
    global_position INTEGER NOT NULL,
    updated_at      TEXT    NOT NULL
) STRICT;

-- table: users
CREATE TABLE {schema}.{prefix}users
(
    user_id              TEXT    PRIMARY KEY,
    email                TEXT    NOT NULL,
    display_name         TEXT,
    created_at           TEXT    NOT NULL,
    last_login_at        TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    locked_until         TEXT,
    suspended            INTEGER NOT NULL DEFAULT 0,
    platform_admin       INTEGER NOT NULL DEFAULT 0,
    version              INTEGER NOT NULL,
    password_changed_at  TEXT,
    email_verified       INTEGER NOT NULL DEFAULT 0,
    second_factors       TEXT    NOT NULL DEFAULT '[]'
) STRICT;
CREATE INDEX {schema}.{prefix}users_email_idx ON {prefix}users (email);

-- table: sessions
CREATE TABLE {schema}.{prefix}sessions
(
    session_id        TEXT    PRIMARY KEY,
    user_id           TEXT    NOT NULL,
    ip                TEXT,
    user_agent        TEXT,
    created_at        TEXT    NOT NULL,
    last_refreshed_at TEXT,
    expires_at        TEXT    NOT NULL,
    refresh_count     INTEGER NOT NULL DEFAULT 0,
    state             TEXT    NOT NULL,
    ended_at          TEXT,
    end_reason        TEXT,
    organization_id   TEXT,
    version           INTEGER NOT NULL
) STRICT;
CREATE INDEX {schema}.{prefix}sessions_user_idx ON {prefix}sessions (user_id, created_at);

-- table: audit_trail
-- One row per security-relevant event; append-only.
CREATE TABLE {schema}.{prefix}audit_trail
(
    global_position INTEGER PRIMARY KEY,
    occurred_at     TEXT    NOT NULL,
    actor           TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    ip              TEXT,
    user_agent      TEXT,
    request_id      TEXT,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    sequence        INTEGER NOT NULL,
    details         TEXT    NOT NULL
) STRICT;
CREATE INDEX {schema}.{prefix}audit_trail_subject_idx ON {prefix}audit_trail (subject, occurred_at);
-- An organization's rows for its auditors (GET /v1/audit/events?organization_id=):
-- its own aggregate, and the roles and service accounts created in it.
CREATE INDEX {schema}.{prefix}audit_trail_aggregate_idx
    ON {prefix}audit_trail (aggregate_type, aggregate_id);
CREATE INDEX {schema}.{prefix}audit_trail_owner_organization_idx
    ON {prefix}audit_trail (details ->> 'organization_id')
    WHERE action IN ('RoleDefined', 'ServiceAccountCreated');
