-- Tamper evidence (docs/decisions/0007-tamper-evidence.md).
--
-- Every event carries `chain_hash`:
--     chain_hash = sha256(previous chain_hash of its aggregate, or 32 zero bytes
--                         || canonical bytes of the event)
-- The canonical bytes are unambiguous: each text field is its UTF-8 bytes prefixed
-- by their length (4 bytes, big-endian), each number 8 bytes big-endian, in this
-- order:
--     aggregate_type, aggregate_id, sequence, event_type, event_version,
--     payload (the stored JSON text, byte for byte), metadata (likewise),
--     recorded_at (microseconds since 1970), tx_id, global_position.
-- `keyledger-replay verify` recomputes exactly this (projections/src/chain.rs).
--
-- Chains are per aggregate so that writers of different aggregates stay
-- independent; the order of the whole log is sealed by the signed checkpoints in
-- `chain_checkpoints` (a running hash over the ordered feed).

ALTER TABLE events ADD COLUMN chain_hash bytea;

-- PL/pgSQL with local variables rather than nested SQL functions: those are not
-- inlined here and cost several times more per insert.
CREATE FUNCTION event_chain_canonical(
    aggregate_type text, aggregate_id text, sequence bigint, event_type text,
    event_version text, payload text, metadata text, recorded_at timestamptz,
    tx_id xid8, global_position bigint
) RETURNS bytea
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    t  bytea := convert_to(aggregate_type, 'UTF8');
    i  bytea := convert_to(aggregate_id, 'UTF8');
    et bytea := convert_to(event_type, 'UTF8');
    ev bytea := convert_to(event_version, 'UTF8');
    p  bytea := convert_to(payload, 'UTF8');
    m  bytea := convert_to(metadata, 'UTF8');
BEGIN
    RETURN int4send(length(t)) || t || int4send(length(i)) || i
        || int8send(sequence)
        || int4send(length(et)) || et || int4send(length(ev)) || ev
        || int4send(length(p)) || p || int4send(length(m)) || m
        || int8send((extract(epoch FROM recorded_at) * 1000000)::bigint)
        || int8send(tx_id::text::bigint)
        || int8send(global_position);
END;
$$;

-- Computed by the database for every insert: postgres-es writes events without
-- knowing this column, and no writer can supply a value of its own. Events of one
-- aggregate are inserted in sequence order (within a transaction too), and the
-- predecessor is committed or in the same transaction, so it is always visible.
CREATE FUNCTION events_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    previous bytea;
BEGIN
    IF NEW.sequence = 1 THEN
        previous := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    ELSE
        SELECT chain_hash INTO previous FROM events
         WHERE aggregate_type = NEW.aggregate_type
           AND aggregate_id = NEW.aggregate_id
           AND sequence = NEW.sequence - 1;
        IF previous IS NULL THEN
            RAISE EXCEPTION 'event % of % % has no predecessor to chain to',
                NEW.sequence, NEW.aggregate_type, NEW.aggregate_id;
        END IF;
    END IF;
    NEW.chain_hash := sha256(previous || event_chain_canonical(
        NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.event_type,
        NEW.event_version, NEW.payload::text, NEW.metadata::text, NEW.recorded_at,
        NEW.tx_id, NEW.global_position));
    RETURN NEW;
END;
$$;

-- Backfill the events written before this migration, aggregate by aggregate in
-- sequence order, with a running fold (a window aggregate) instead of a row loop.
CREATE FUNCTION event_chain_step(previous bytea, canonical bytea) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT sha256(previous || canonical) $$;

CREATE AGGREGATE event_chain_fold(bytea) (
    SFUNC = event_chain_step,
    STYPE = bytea,
    INITCOND = '\x0000000000000000000000000000000000000000000000000000000000000000'
);

-- The append-only trigger refuses every UPDATE; this one is the only exception,
-- inside this migration's transaction.
ALTER TABLE events DISABLE TRIGGER events_append_only;

UPDATE events e
   SET chain_hash = c.chain_hash
  FROM (SELECT aggregate_type, aggregate_id, sequence,
               event_chain_fold(event_chain_canonical(
                   aggregate_type, aggregate_id, sequence, event_type, event_version,
                   payload::text, metadata::text, recorded_at, tx_id, global_position))
                   OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY sequence
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS chain_hash
          FROM events) AS c
 WHERE e.aggregate_type = c.aggregate_type
   AND e.aggregate_id = c.aggregate_id
   AND e.sequence = c.sequence;

ALTER TABLE events ENABLE TRIGGER events_append_only;

DROP AGGREGATE event_chain_fold(bytea);
DROP FUNCTION event_chain_step(bytea, bytea);

ALTER TABLE events ALTER COLUMN chain_hash SET NOT NULL;

CREATE TRIGGER events_chain BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_chain();

-- Signed checkpoints of the whole log, written by the chain signer
-- (projections/src/chain.rs): `log_hash` is the running hash
--     log_0 = 32 zero bytes, log_n = sha256(log_{n-1} || chain_hash_n)
-- over the ordered feed (tx_id, global_position) up to and including the
-- checkpoint's position, which covers `event_count` events. `signature` is Ed25519
-- by the audit key, whose secret never enters the database; `key_id` is the PASERK
-- id (k4.pid) of its public key.
CREATE TABLE chain_checkpoints
(
    id              bigserial   PRIMARY KEY,
    signed_at       timestamptz NOT NULL,
    tx_id           bigint      NOT NULL,
    global_position bigint      NOT NULL,
    event_count     bigint      NOT NULL CHECK (event_count > 0),
    log_hash        bytea       NOT NULL CHECK (octet_length(log_hash) = 32),
    key_id          text        NOT NULL,
    signature       bytea       NOT NULL
);

CREATE INDEX chain_checkpoints_position_idx ON chain_checkpoints (tx_id, global_position);

CREATE FUNCTION chain_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'chain checkpoints are append-only';
END;
$$;

CREATE TRIGGER chain_checkpoints_append_only BEFORE UPDATE OR DELETE ON chain_checkpoints
    FOR EACH ROW EXECUTE FUNCTION chain_checkpoints_append_only();

CREATE TRIGGER chain_checkpoints_no_truncate BEFORE TRUNCATE ON chain_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION chain_checkpoints_append_only();
