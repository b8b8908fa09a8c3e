-- Mail waiting to go out, and what became of it: see the PostgreSQL migration of
-- the same name for what each column means.
CREATE TABLE mail_outbox
(
    mail_id         TEXT    PRIMARY KEY,
    user_id         TEXT    NOT NULL,
    template        TEXT    NOT NULL,
    request_id      TEXT,
    expires_at      TEXT,
    queued_at       TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'sent', 'failed', 'dropped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    leased_until    TEXT,
    last_error      TEXT,
    done_at         TEXT
) STRICT;

CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX mail_outbox_user_idx ON mail_outbox (user_id);
