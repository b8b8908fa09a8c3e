-- The embedded (SQLite) store: the same tables as the PostgreSQL migrations one
-- level up, in their final shape (a new embedded database has no legacy data).
-- See docs/decisions/0011-embedded-mode-plan.md for every difference and why.
--
-- Conventions: ids are TEXT (lower-case hyphenated UUIDs, like
-- `events.aggregate_id`); times the application writes are TEXT in sqlx's RFC 3339
-- encoding, always bound from Rust; `events.recorded_at` and
-- `chain_checkpoints.signed_at` are INTEGER microseconds since 1970, because the
-- chain hashes and signatures cover that number.

-- The event log. sqlite-es reads it (its SELECTs name the first seven columns);
-- every insert goes through the chained appender (commands/src/embedded.rs), which
-- runs under the single write lock and sets the last four columns:
--   global_position  commit order (positions are handed out under the write lock,
--                    so position order is commit order);
--   tx_id            always 0 (PostgreSQL's transaction id has no counterpart; the
--                    feed orders by (tx_id, global_position) on both back ends);
--   recorded_at      microseconds since 1970, one value per transaction;
--   chain_hash       sha256(previous chain hash of the aggregate || canonical bytes),
--                    the same bytes as the PostgreSQL trigger computes.
-- No UNIQUE constraint other than the primary key on the columns sqlite-es knows:
-- only a PRIMARY KEY violation (extended code 1555) means "lost the race".
CREATE TABLE events
(
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    sequence        INTEGER NOT NULL CHECK (sequence >= 0),
    event_type      TEXT    NOT NULL,
    event_version   TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    global_position INTEGER NOT NULL CHECK (global_position > 0),
    tx_id           INTEGER NOT NULL DEFAULT 0,
    recorded_at     INTEGER NOT NULL,
    chain_hash      BLOB    NOT NULL CHECK (length(chain_hash) = 32),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
) STRICT;

CREATE UNIQUE INDEX events_position_idx ON events (global_position);
CREATE INDEX events_recorded_at_idx ON events (recorded_at);
CREATE INDEX events_session_user_idx ON events (payload ->> '$.SessionStarted.user_id')
    WHERE event_type = 'SessionStarted';

-- Events are never edited or deleted once written.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only');
END;

-- Part of the layout sqlite-es expects; unused (pure event sourcing).
CREATE TABLE snapshots
(
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    last_sequence    INTEGER NOT NULL CHECK (last_sequence >= 0),
    current_snapshot INTEGER NOT NULL CHECK (current_snapshot >= 0),
    payload          TEXT    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
) STRICT;

-- Signed checkpoints of the whole log (see the PostgreSQL migration
-- `…03_event_chain.sql` for what they mean). AUTOINCREMENT: ids are never reused.
CREATE TABLE chain_checkpoints
(
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    signed_at       INTEGER NOT NULL,
    tx_id           INTEGER NOT NULL,
    global_position INTEGER NOT NULL,
    event_count     INTEGER NOT NULL CHECK (event_count > 0),
    log_hash        BLOB    NOT NULL CHECK (length(log_hash) = 32),
    key_id          TEXT    NOT NULL,
    signature       BLOB    NOT NULL
) STRICT;

CREATE INDEX chain_checkpoints_position_idx ON chain_checkpoints (tx_id, global_position);

CREATE TRIGGER chain_checkpoints_no_update BEFORE UPDATE ON chain_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'chain checkpoints are append-only');
END;

CREATE TRIGGER chain_checkpoints_no_delete BEFORE DELETE ON chain_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'chain checkpoints are append-only');
END;

-- Email uniqueness beside the log, keyed by HMAC digest only (decision 0009).
CREATE TABLE email_claims
(
    digest     BLOB PRIMARY KEY CHECK (length(digest) = 32),
    user_id    TEXT NOT NULL,
    claimed_at TEXT NOT NULL
) STRICT;

CREATE INDEX email_claims_user_idx ON email_claims (user_id);

-- Organization slug uniqueness, like email claims.
CREATE TABLE organization_slugs
(
    slug            TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    claimed_at      TEXT NOT NULL
) STRICT;

-- Per-person data keys for sealed personal data; an erased key leaves a
-- tombstone so that no later write mints a new one (decision 0009).
CREATE TABLE user_data_keys
(
    owner_id   TEXT PRIMARY KEY,
    key        BLOB,
    created_at TEXT NOT NULL,
    erased_at  TEXT,
    CHECK ((key IS NULL) = (erased_at IS NOT NULL)),
    CHECK (key IS NULL OR length(key) = 32)
) STRICT;
