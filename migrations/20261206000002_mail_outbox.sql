-- Mail waiting to go out, and what became of it (decision 0018).
--
-- A row is the effect of one event that asks for a mail (a verification or reset
-- link, a notice): the mail follower inserts it after the event is committed, and
-- the sender delivers it, at least once, retrying with backoff. It holds no
-- secret and no address: the link's token is derived when the mail is sent (from
-- a server key and `request_id`), and the address is read from the account then
-- (so an erased account's mail is dropped, not sent).
CREATE TABLE mail_outbox
(
    -- The event's id (as on NATS): the mail's Message-ID, so a repeat is
    -- recognisable, and the key that makes queueing an event twice harmless.
    mail_id         uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL,
    template        text        NOT NULL,
    request_id      uuid,
    -- When the request's link stops working (no point sending it after).
    expires_at      timestamptz,
    queued_at       timestamptz NOT NULL,
    -- pending → sent | failed (every attempt used) | dropped (nothing to send:
    -- the account is gone or the link expired).
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'sent', 'failed', 'dropped')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    -- A sender took the row until then; another node may take it after.
    leased_until    timestamptz,
    -- Why the last attempt failed (the SMTP server's answer; never the body).
    last_error      text,
    done_at         timestamptz
);

CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX mail_outbox_user_idx ON mail_outbox (user_id);
