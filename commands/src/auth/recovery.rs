//! Proving an address and getting back into an account by mail: verification
//! links, password reset, unlocking a locked account, and telling an address's owner that someone tried to
//! register with it.
//!
//! The write side records the request (an event with a random request id); the
//! mail follows from the event (`keyledger_projections::mail_outbox`), and its link
//! carries a token derived from the request id with a server key
//! ([`MailLinkKey`]), so no secret is ever stored. Whether a genuine token still
//! works (the newest request, unused, unexpired) is the account aggregate's rule.
//!
//! Answers never tell whether an address has an account: the requests that name
//! an address answer the same either way, and the API answers them before the
//! work is done (see `api::resources::recovery`).

use chrono::{DateTime, Utc};
use keyledger_domain::{
    Email, LinkPurpose, MailLink, RevocationReason, User, UserCommand, UserError,
};
use uuid::Uuid;

use super::{
    personal_inputs, store_error, written, AuthError, AuthService, NewAccount, RequestContext,
};
use crate::email_registry::EmailRegistry;
use crate::hasher::HashTurn;
use crate::password::Password;
use crate::Written;

/// `KEYLEDGER_EMAIL_VERIFICATION`: whether registration mails a verification
/// link, and whether login requires the address verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailVerification {
    /// No verification mail; registration answers 201 or 409 (the address is
    /// taken), as before verification existed.
    Off,
    /// A verification mail on registration; login works either way. Registration
    /// answers 202 whether the address is new or taken.
    Optional,
    /// As `Optional`, and login refuses an unverified address (after a correct
    /// password only).
    Required,
}

impl EmailVerification {
    pub fn is_on(self) -> bool {
        self != Self::Off
    }
}

/// Where a queued mail goes and what it says, read when it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailRecipient {
    pub email: String,
    /// The link's token, for a mail that carries one.
    pub token: Option<String>,
    /// The sign-in code, for a sign-in mail.
    pub code: Option<String>,
}

impl AuthService {
    pub fn email_verification(&self) -> EmailVerification {
        self.settings.email_verification
    }

    /// Registration while verification is on, after [`Self::check_new_account`]
    /// and [`Self::hashing_turn`]: the API answers before this runs, so neither
    /// the answer nor its time tells whether the address was free. A new address
    /// gets an account and a verification mail; a taken one gets a mail telling
    /// its owner someone tried (the password is hashed either way, in `turn`, so
    /// the hashing pool cannot tell them apart either).
    pub async fn register_unrevealing(
        &self,
        account: NewAccount,
        turn: HashTurn,
        ctx: &RequestContext,
    ) -> Result<Vec<Written>, AuthError> {
        let user_id = Uuid::new_v4();
        if self.emails.claim(&account.email, user_id).await? {
            let registered = self
                .register_claimed_or_release(user_id, account, Some(turn), ctx)
                .await?;
            let mut written = vec![registered.written];
            written.extend(self.request_verification(user_id, ctx).await?);
            return Ok(written);
        }
        let _ = self.hasher.hash(&account.password).await?;
        drop(turn);
        self.notify_registration_attempt(&account.email, ctx).await
    }

    /// Someone tried to register with `email`, which an account has: its owner
    /// is mailed so (at most once per mail interval).
    pub(super) async fn notify_registration_attempt(
        &self,
        email: &Email,
        ctx: &RequestContext,
    ) -> Result<Vec<Written>, AuthError> {
        let Some(owner) = self.emails.lookup(email).await? else {
            return Ok(Vec::new());
        };
        let at = Utc::now();
        let due = |user: &User| !self.mailed_lately(user.last_registration_attempt, at);
        let command = UserCommand::RecordRegistrationAttempt { at };
        Ok(self
            .request_mail(owner, None, at, due, command, ctx)
            .await?
            .into_iter()
            .collect())
    }

    /// Writes `command`, a request that asks for a mail, on `user_id`'s account
    /// as `actor`, when the account is live and `due` says a mail is due (not
    /// within the mail interval of the last one, say). A refusal (verified or
    /// erased meanwhile) writes nothing and is no error: nothing to mail.
    pub(super) async fn request_mail(
        &self,
        user_id: Uuid,
        actor: Option<Uuid>,
        at: DateTime<Utc>,
        due: impl FnOnce(&User) -> bool,
        command: UserCommand,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let id = user_id.to_string();
        let loaded = self
            .users
            .load(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::UserNotFound))?;
        let user = loaded.aggregate();
        if !user.is_registered() || user.erased || !due(user) {
            return Ok(None);
        }
        let metadata = self.keys.metadata(ctx, at, actor, Some(user_id)).await?;
        match self
            .users
            .execute_loaded(&id, loaded, command, &metadata)
            .await
        {
            Ok(committed) => Ok(written(user_id, &committed)),
            Err(crate::StoreError::Rejected(_)) => Ok(None),
            Err(e) => Err(store_error(e, |_: UserError| AuthError::UserNotFound)),
        }
    }

    pub(super) fn mailed_lately(&self, last: Option<DateTime<Utc>>, at: DateTime<Utc>) -> bool {
        last.is_some_and(|last| at - last < self.settings.mail_interval)
    }

    /// Mails `user_id` a new verification link (superseding any earlier one),
    /// unless verification is off, the address is verified, or a link went out
    /// within the mail interval.
    pub async fn request_verification(
        &self,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        if !self.settings.email_verification.is_on() {
            return Ok(None);
        }
        let at = Utc::now();
        let due = |user: &User| {
            !user.email_verified
                && !self.mailed_lately(user.pending_verification.map(|p| p.requested_at), at)
        };
        let command = UserCommand::RequestEmailVerification {
            request_id: Uuid::new_v4(),
            expires_at: at + self.settings.verification_ttl,
            at,
        };
        self.request_mail(user_id, ctx.actor, at, due, command, ctx)
            .await
    }

    /// `POST /v1/auth/resend-verification`: a new link for the account at
    /// `email`, if there is one that is not verified yet. Nothing tells the
    /// caller which.
    pub async fn resend_verification(
        &self,
        email: &str,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        if let Some(user_id) = self.claimant(email).await? {
            self.request_verification(user_id, ctx).await?;
        }
        Ok(())
    }

    /// The account that holds the address `email` (as typed), if any, for the
    /// requests that mail it; whether it is live is the mail request's check.
    pub(super) async fn claimant(&self, email: &str) -> Result<Option<Uuid>, AuthError> {
        let email = Email::parse(email).map_err(|_| AuthError::InvalidEmail)?;
        Ok(self.emails.lookup(&email).await?)
    }

    /// `POST /v1/auth/verify-email`: the address of the link's account is
    /// verified. A forged, used, superseded or expired token is
    /// [`AuthError::InvalidToken`].
    pub async fn verify_email(
        &self,
        token: &str,
        ctx: &RequestContext,
    ) -> Result<Vec<Written>, AuthError> {
        // A change link confirms a new address (see `email_change`).
        if let Some(link) = self.links.open(LinkPurpose::ChangeEmail, token) {
            return self.confirm_email_change(link, ctx).await;
        }
        let link = self
            .links
            .open(LinkPurpose::VerifyEmail, token)
            .ok_or(AuthError::InvalidToken)?;
        let at = Utc::now();
        let command = UserCommand::VerifyEmail {
            request_id: link.request_id,
            at,
        };
        let metadata = self
            .keys
            .metadata(ctx, at, None, Some(link.user_id))
            .await?;
        let committed = self
            .users
            .execute(&link.user_id.to_string(), command, &metadata)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidToken))?;
        Ok(written(link.user_id, &committed).into_iter().collect())
    }

    /// `POST /v1/auth/forgot-password`: mails a reset link to the account at
    /// `email`, if there is one (at most one per mail interval; a new link
    /// supersedes the last). Nothing tells the caller whether there was.
    pub async fn forgot_password(
        &self,
        email: &str,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let Some(user_id) = self.claimant(email).await? else {
            return Ok(());
        };
        let at = Utc::now();
        let due = |user: &User| !self.mailed_lately(user.pending_reset.map(|p| p.requested_at), at);
        let command = UserCommand::RequestPasswordReset {
            request_id: Uuid::new_v4(),
            expires_at: at + self.settings.reset_ttl,
            at,
        };
        self.request_mail(user_id, None, at, due, command, ctx)
            .await
            .map(drop)
    }

    /// `POST /v1/auth/reset-password`: sets a new password through a reset link.
    /// The password policy applies as at registration; every session ends; a
    /// lockout is lifted; the address counts as verified (the link proved it).
    pub async fn reset_password(
        &self,
        token: &str,
        password: Password,
        ctx: &RequestContext,
    ) -> Result<ResetOutcome, AuthError> {
        let link = self
            .links
            .open(LinkPurpose::ResetPassword, token)
            .ok_or(AuthError::InvalidToken)?;
        let id = link.user_id.to_string();
        // Fresh from the log: a link used a moment ago on another node must not
        // pass the early check below on a stale copy.
        let loaded = self
            .users
            .load_fresh(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidToken))?;
        let user = loaded.aggregate();
        if !reset_link_open(user, link, Utc::now()) {
            return Err(AuthError::InvalidToken);
        }
        let (email, display_name) = self.identity(user).await?;
        self.settings
            .password_policy
            .check(&password, &personal_inputs(&email, display_name.as_ref()))
            .map_err(AuthError::WeakPassword)?;
        self.settings
            .password_policy
            .check_not_breached(&password)
            .await?;
        let password_hash = self
            .hash_sealed(link.user_id, &password, ctx)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let at = Utc::now();
        let metadata = self
            .keys
            .metadata(ctx, at, Some(link.user_id), None)
            .await?;
        let command = UserCommand::ResetPassword {
            request_id: link.request_id,
            password_hash,
            at,
        };
        let committed = self
            .users
            .execute_loaded(&id, loaded, command, &metadata)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidToken))?;
        // Read after the commit: a session started before it is in the log by now.
        let sessions = self.active_sessions(link.user_id).await?;
        let ended = self
            .revoke_sessions(
                link.user_id,
                sessions,
                RevocationReason::PasswordReset,
                at,
                Some(link.user_id),
                ctx,
            )
            .await?;
        let mut written_events: Vec<Written> =
            written(link.user_id, &committed).into_iter().collect();
        written_events.extend(ended.written);
        Ok(ResetOutcome {
            user_id: link.user_id,
            ended_sessions: ended.ended_sessions,
            written: written_events,
        })
    }

    /// `POST /v1/auth/unlock`: lifts the lockout whose mail carried the link
    /// (`AccountUnlocked`), so the owner can sign in at once. Works only while
    /// that lock is in force and once; a forged or used token, a lock that
    /// already ran out, or one superseded by a newer lock is
    /// [`AuthError::InvalidToken`].
    pub async fn unlock_with_link(
        &self,
        token: &str,
        ctx: &RequestContext,
    ) -> Result<Vec<Written>, AuthError> {
        let link = self
            .links
            .open(LinkPurpose::Unlock, token)
            .ok_or(AuthError::InvalidToken)?;
        let id = link.user_id.to_string();
        // Fresh from the log: a lock recorded (or lifted) a moment ago on
        // another node must be the one judged.
        let loaded = self
            .users
            .load_fresh(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidToken))?;
        let at = Utc::now();
        let command = UserCommand::UnlockWithLink {
            request_id: link.request_id,
            at,
        };
        let metadata = self
            .keys
            .metadata(ctx, at, None, Some(link.user_id))
            .await?;
        let committed = self
            .users
            .execute_loaded(&id, loaded, command, &metadata)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidToken))?;
        Ok(written(link.user_id, &committed).into_iter().collect())
    }

    /// The address and, for a mail with a link, the link's token, for the mail
    /// of `request_id` to `user_id`. `None`: nothing to send (the account is gone
    /// or erased, or its address cannot be read any more).
    pub async fn mail_recipient(
        &self,
        user_id: Uuid,
        link: Option<(LinkPurpose, Uuid)>,
    ) -> Result<Option<MailRecipient>, AuthError> {
        let loaded = self
            .users
            .load_fresh(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::UserNotFound))?;
        let user = loaded.aggregate();
        if !user.is_registered() || user.erased {
            return Ok(None);
        }
        let email = match self.identity(user).await {
            Ok((email, _)) => email,
            Err(AuthError::Unavailable(why)) => return Err(AuthError::Unavailable(why)),
            Err(_) => return Ok(None),
        };
        let token = link
            .filter(|(purpose, _)| *purpose != LinkPurpose::SecondFactorCode)
            .map(|(purpose, request_id)| {
                self.links.token(
                    purpose,
                    MailLink {
                        user_id,
                        request_id,
                    },
                )
            });
        let code = link.and_then(|(purpose, request_id)| {
            let link = MailLink {
                user_id,
                request_id,
            };
            match purpose {
                LinkPurpose::EmailLogin => Some(self.links.code(link)),
                LinkPurpose::SecondFactorCode => Some(self.links.second_factor_code(link)),
                _ => None,
            }
        });
        Ok(Some(MailRecipient {
            email: email.as_str().to_owned(),
            token,
            code,
        }))
    }
}

/// What a password reset did.
#[derive(Debug)]
pub struct ResetOutcome {
    pub user_id: Uuid,
    pub ended_sessions: Vec<Uuid>,
    pub written: Vec<Written>,
}

/// Whether `link` names `user`'s newest reset request and it is still open at
/// `at` (checked before the password is hashed; the aggregate decides again).
fn reset_link_open(user: &User, link: MailLink, at: DateTime<Utc>) -> bool {
    user.pending_reset
        .is_some_and(|pending| pending.request_id == link.request_id && at < pending.expires_at)
}
