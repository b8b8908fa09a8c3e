-- The event store: the single source of truth. Layout required by postgres-es 0.5,
-- plus three columns it never writes (its INSERT names its columns):
--   global_position  order of insertion, the tie-breaker inside one transaction;
--   tx_id            the writing transaction, so readers can follow the log in an order
--                    that never skips a late commit (see projections/src/feed.rs);
--   recorded_at      when the store accepted the event.
-- No UNIQUE constraint other than the primary key may be added here: postgres-es
-- reports every unique violation as an optimistic-concurrency conflict.
CREATE TABLE events
(
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint CHECK (sequence >= 0) NOT NULL,
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    payload         json        NOT NULL,
    metadata        json        NOT NULL,
    global_position bigserial   NOT NULL,
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE INDEX events_feed_idx ON events (tx_id, global_position);
CREATE INDEX events_position_idx ON events (global_position);
CREATE INDEX events_recorded_at_idx ON events USING brin (recorded_at);
-- An account's sessions, for the auditor's history without a read model.
CREATE INDEX events_session_user_idx ON events ((payload -> 'SessionStarted' ->> 'user_id'))
    WHERE event_type = 'SessionStarted';

-- Wake feed readers at commit time (NOTIFY is delivered on commit, and identical
-- notifications within one transaction are folded into one).
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keyledger_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Events are never edited or deleted once written.
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only';
END;
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();

CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- Unused by Keyledger (it runs postgres-es as a pure event store, see
-- commands/src/store.rs) but part of the layout postgres-es expects.
CREATE TABLE snapshots
(
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0) NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Email uniqueness lives beside the event store, not in it: a registration first
-- claims the normalised address here (the primary key decides races), then writes
-- UserRegistered. A claim whose registration never landed can be taken over once
-- it is stale (see commands/src/email_registry.rs).
CREATE TABLE email_claims
(
    email      text        PRIMARY KEY,
    user_id    uuid        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
