-- `keyledger-replay rebuild --switch` on the embedded store asks the server's
-- read-model projector to hand the read models over (decision 0011, #35), as it
-- queues for the projector's advisory lock on PostgreSQL.
--
-- The tool inserts a row named after the projection (`read_models`) and keeps
-- `requested_at` fresh while it catches up; the projector checks for the row at its
-- re-check interval, and again inside every batch's write transaction, and applies
-- no batch while a fresh row exists. The tool deletes the row in the transaction
-- that swaps the rebuilt tables in. A row not refreshed for 30 seconds (a tool
-- killed half-way) is abandoned: the projector deletes it and resumes.
--
-- `requested_at` is TEXT in sqlx's RFC 3339 encoding, bound from Rust like every
-- other time the application writes, so it compares as text.
CREATE TABLE projection_handover
(
    name         TEXT PRIMARY KEY,
    requested_at TEXT NOT NULL
) STRICT;
