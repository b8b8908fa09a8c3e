//! Mail as an effect of committed events: the events that ask for a mail are
//! queued in `mail_outbox`, and a sender drains the queue (decision 0018).
//!
//! Two steps, because they fail differently. Queueing follows the feed as an
//! [`AtLeastOnce`] follower with a checkpoint of its own: it needs only the
//! database, so it never holds the feed back for long, and queueing an event twice
//! is harmless (the row's key is the event's id). Sending is a loop over due rows
//! ([`MailOutbox::take_due`]) that may wait minutes for an SMTP server to come
//! back, retrying each mail with its own backoff, without holding back the read
//! models, the relay or other mails. A row holds no secret and no address: the
//! sender derives the link's token from `request_id` and reads the address from
//! the account when it sends.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use keyledger_domain::{SecondFactorKind, UserEvent};
use keyledger_storage::{with_readers, with_writer, Database, Id};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::feed::{EventFeed, FeedError, Position, StoredEvent};
use crate::follower::{AtLeastOnce, Step};
use crate::integration::{DomainPayload, IntegrationEvent};

/// The checkpoint (and leadership lock) of the queueing follower.
pub const CHECKPOINT: &str = "mail_outbox";

/// Which mail an event asks for, by template name (the sender's templates carry
/// the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    VerifyEmail,
    RegistrationAttempt,
    PasswordReset,
    PasswordChanged,
    /// To the pending new address of an address change.
    EmailChangeVerify,
    /// To the address an `EmailChanged` event left (its `previous_email`).
    EmailChangedNotice,
    /// The account was locked; the mail carries the lock's unlock link.
    AccountLocked,
    /// A sign-in link and code (sign-in by email).
    EmailLogin,
    /// A second factor's code, for an email method.
    SecondFactorCode,
    /// A second factor's code by text message, for an SMS method (queued and
    /// retried like a mail, sent to the method's number).
    SecondFactorSms,
}

impl MailKind {
    pub const ALL: [MailKind; 10] = [
        Self::VerifyEmail,
        Self::RegistrationAttempt,
        Self::PasswordReset,
        Self::PasswordChanged,
        Self::EmailChangeVerify,
        Self::EmailChangedNotice,
        Self::AccountLocked,
        Self::EmailLogin,
        Self::SecondFactorCode,
        Self::SecondFactorSms,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::RegistrationAttempt => "registration_attempt",
            Self::PasswordReset => "password_reset",
            Self::PasswordChanged => "password_changed",
            Self::EmailChangeVerify => "email_change_verify",
            Self::EmailChangedNotice => "email_changed_notice",
            Self::AccountLocked => "account_locked",
            Self::EmailLogin => "email_login",
            Self::SecondFactorCode => "second_factor_code",
            Self::SecondFactorSms => "second_factor_sms",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A mail an event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMail {
    /// The event's id: the mail's Message-ID.
    pub mail_id: Uuid,
    pub user_id: Uuid,
    pub kind: MailKind,
    /// The request whose link the mail carries, and when the link stops working.
    pub request: Option<(Uuid, DateTime<Utc>)>,
    pub queued_at: DateTime<Utc>,
}

/// The mail `event` asks for, if any.
pub fn mail_for(event: &StoredEvent) -> Result<Option<QueuedMail>, FeedError> {
    const ASKING: &[&str] = &[
        "EmailVerificationRequested",
        "RegistrationAttempted",
        "PasswordResetRequested",
        "PasswordReset",
        "PasswordChanged",
        "EmailChangeRequested",
        "EmailChanged",
        "AccountLocked",
        "EmailLoginRequested",
        "SecondFactorCodeSent",
    ];
    if event.aggregate_type != "user" || !ASKING.contains(&event.event_type.as_str()) {
        return Ok(None);
    }
    let DomainPayload::User(payload) = DomainPayload::decode(event)? else {
        return Ok(None);
    };
    let (kind, request) = match payload {
        UserEvent::EmailVerificationRequested {
            request_id,
            expires_at,
            ..
        } => (MailKind::VerifyEmail, Some((request_id, expires_at))),
        UserEvent::PasswordResetRequested {
            request_id,
            expires_at,
            ..
        } => (MailKind::PasswordReset, Some((request_id, expires_at))),
        UserEvent::EmailChangeRequested {
            request_id,
            expires_at,
            ..
        } => (MailKind::EmailChangeVerify, Some((request_id, expires_at))),
        UserEvent::EmailChanged { .. } => (MailKind::EmailChangedNotice, None),
        UserEvent::EmailLoginRequested {
            request_id,
            expires_at,
            ..
        } => (MailKind::EmailLogin, Some((request_id, expires_at))),
        UserEvent::SecondFactorCodeSent {
            channel,
            request_id,
            expires_at,
            ..
        } => match channel {
            SecondFactorKind::Sms => (MailKind::SecondFactorSms, Some((request_id, expires_at))),
            _ => (MailKind::SecondFactorCode, Some((request_id, expires_at))),
        },
        // The link works while the lock is in force. A lock written before
        // unlock links (1.0, no request) gets no mail.
        UserEvent::AccountLocked {
            unlock_request_id: Some(request_id),
            locked_until,
            ..
        } => (MailKind::AccountLocked, Some((request_id, locked_until))),
        UserEvent::RegistrationAttempted { .. } => (MailKind::RegistrationAttempt, None),
        UserEvent::PasswordReset { .. } | UserEvent::PasswordChanged { .. } => {
            (MailKind::PasswordChanged, None)
        }
        _ => return Ok(None),
    };
    let user_id = event.aggregate_id.parse().map_err(|_| FeedError::Corrupt {
        position: event.position,
        reason: "user id is not a uuid".into(),
    })?;
    Ok(Some(QueuedMail {
        mail_id: IntegrationEvent::event_id(
            &event.aggregate_type,
            &event.aggregate_id,
            event.sequence,
        ),
        user_id,
        kind,
        request,
        queued_at: event.recorded_at,
    }))
}

/// Queues the mails of the feed's events (see the module docs).
pub struct MailQueue {
    db: Database,
    /// Events older than this when read get no mail: a server that starts on an
    /// old log (its first start with mail, a restored backup) must not mail
    /// about the past.
    max_age: Duration,
    /// Wakes this node's sender when mails were queued.
    queued: Arc<Notify>,
}

impl MailQueue {
    pub fn new(db: Database, max_age: Duration, queued: Arc<Notify>) -> Self {
        Self {
            db,
            max_age,
            queued,
        }
    }

    async fn queue(&self, events: &[StoredEvent]) -> Result<(), FeedError> {
        let now = Utc::now();
        let mut mails = Vec::new();
        for event in events {
            if now - event.recorded_at > self.max_age {
                continue;
            }
            if let Some(mail) = mail_for(event)? {
                mails.push(mail);
            }
        }
        if mails.is_empty() {
            return Ok(());
        }
        let queued = mails.len();
        with_writer!(self.db, |conn| {
            for mail in &mails {
                let (request_id, expires_at) = match mail.request {
                    Some((id, at)) => (Some(Id(id)), Some(at)),
                    None => (None, None),
                };
                sqlx::query(
                    "INSERT INTO mail_outbox (mail_id, user_id, template, request_id,
                                              expires_at, queued_at, next_attempt_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (mail_id) DO NOTHING",
                )
                .bind(Id(mail.mail_id))
                .bind(Id(mail.user_id))
                .bind(mail.kind.name())
                .bind(request_id)
                .bind(expires_at)
                .bind(mail.queued_at)
                .bind(mail.queued_at)
                .execute(&mut *conn)
                .await?;
            }
        });
        metrics::counter!("keyledger_mail_queued_total").increment(queued as u64);
        self.queued.notify_one();
        Ok(())
    }
}

impl AtLeastOnce for MailQueue {
    fn name(&self) -> String {
        CHECKPOINT.into()
    }

    fn resume<'a>(&'a mut self, _feed: &'a EventFeed, _position: Position) -> Step<'a> {
        Box::pin(async { Ok(()) })
    }

    fn deliver<'a>(&'a mut self, events: &'a [StoredEvent]) -> Step<'a> {
        Box::pin(self.queue(events))
    }

    fn failed(&self, error: &FeedError) {
        tracing::warn!(error = %error, "mail queue is behind; retrying");
    }
}

/// A queued mail a sender has taken (see [`MailOutbox::take_due`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueMail {
    pub mail_id: Uuid,
    pub user_id: Uuid,
    pub kind: MailKind,
    pub request: Option<(Uuid, DateTime<Utc>)>,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

#[derive(sqlx::FromRow)]
struct DueRow {
    mail_id: Id,
    user_id: Id,
    template: String,
    request_id: Option<Id>,
    expires_at: Option<DateTime<Utc>>,
    attempts: i32,
}

/// How a mail's sending ended for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailEnd {
    Sent,
    /// Every attempt failed.
    Failed,
    /// Nothing to send: the account is gone, or the link expired before it
    /// could be sent.
    Dropped,
}

impl MailEnd {
    fn state(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
        }
    }
}

/// A mail that was never delivered, for operators.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UndeliveredMail {
    pub mail_id: Id,
    pub user_id: Id,
    pub template: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub done_at: Option<DateTime<Utc>>,
}

/// The queue's rows, for senders and operators.
#[derive(Clone)]
pub struct MailOutbox {
    db: Database,
}

impl MailOutbox {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Takes the mail due longest ago, if any, for `lease` (counting the
    /// attempt): no other sender takes it until the lease runs out, so a sender
    /// that dies mid-send leaves it to another one later. Two senders racing for
    /// the same row: one gets it, the other gets nothing this time.
    pub async fn take_due(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<DueMail>, sqlx::Error> {
        const TAKE: &str = "UPDATE mail_outbox SET leased_until = $1, attempts = attempts + 1
             WHERE mail_id = (SELECT mail_id FROM mail_outbox
                               WHERE state = 'pending' AND next_attempt_at <= $2
                                 AND (leased_until IS NULL OR leased_until <= $2)
                               ORDER BY next_attempt_at LIMIT 1)
               AND state = 'pending' AND (leased_until IS NULL OR leased_until <= $2)
         RETURNING mail_id, user_id, template, request_id, expires_at, attempts";
        let row: Option<DueRow> = with_writer!(self.db, |conn| {
            sqlx::query_as(TAKE)
                .bind(now + lease)
                .bind(now)
                .fetch_optional(&mut *conn)
                .await?
        });
        let Some(row) = row else {
            return Ok(None);
        };
        let Some(kind) = MailKind::from_name(&row.template) else {
            // Written by a newer version that knows more mails: leave it to one.
            tracing::warn!(template = %row.template, "queued mail of an unknown kind");
            return Ok(None);
        };
        Ok(Some(DueMail {
            mail_id: row.mail_id.0,
            user_id: row.user_id.0,
            kind,
            request: row.request_id.map(|id| id.0).zip(row.expires_at),
            attempts: row.attempts.max(0) as u32,
        }))
    }

    /// The mail's sending ended (`error`: why, for a failed or dropped one).
    pub async fn end(
        &self,
        mail_id: Uuid,
        end: MailEnd,
        now: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        with_writer!(self.db, |conn| {
            sqlx::query(
                "UPDATE mail_outbox SET state = $1, done_at = $2, last_error = $3,
                        leased_until = NULL
                  WHERE mail_id = $4",
            )
            .bind(end.state())
            .bind(now)
            .bind(error)
            .bind(Id(mail_id))
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// The attempt failed and another one is due at `next`.
    pub async fn retry_at(
        &self,
        mail_id: Uuid,
        next: DateTime<Utc>,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        with_writer!(self.db, |conn| {
            sqlx::query(
                "UPDATE mail_outbox SET next_attempt_at = $1, last_error = $2,
                        leased_until = NULL
                  WHERE mail_id = $3",
            )
            .bind(next)
            .bind(error)
            .bind(Id(mail_id))
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// Mails that failed or were dropped, newest first.
    pub async fn undelivered(&self, limit: i64) -> Result<Vec<UndeliveredMail>, sqlx::Error> {
        Ok(with_readers!(self.db, |pool| {
            sqlx::query_as(
                "SELECT mail_id, user_id, template, state, attempts, last_error, queued_at,
                        done_at
                   FROM mail_outbox WHERE state IN ('failed', 'dropped')
                  ORDER BY done_at DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }

    /// How many mails are waiting to be sent (for a gauge).
    pub async fn pending(&self) -> Result<i64, sqlx::Error> {
        Ok(with_readers!(self.db, |pool| {
            sqlx::query_scalar("SELECT count(*) FROM mail_outbox WHERE state = 'pending'")
                .fetch_one(pool)
                .await?
        }))
    }

    /// The ids of every mail queued for `user_id`, sent or not.
    pub async fn mail_ids_of(&self, user_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
        let ids: Vec<Id> = with_readers!(self.db, |pool| {
            sqlx::query_scalar("SELECT mail_id FROM mail_outbox WHERE user_id = $1")
                .bind(Id(user_id))
                .fetch_all(pool)
                .await?
        });
        Ok(ids.into_iter().map(|id| id.0).collect())
    }

    /// Forgets an erased account's mails, sent or not: the rows say when it was
    /// mailed and about what.
    pub async fn forget_user(&self, user_id: Uuid) -> Result<(), sqlx::Error> {
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM mail_outbox WHERE user_id = $1")
                .bind(Id(user_id))
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }
}
