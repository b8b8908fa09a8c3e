//! Moving an account to another address: `POST /v1/users/me/email` mails a link
//! to the new address; following it (`POST /v1/auth/verify-email`, which takes
//! change links too) moves the account's address claim and writes
//! `EmailChanged`, which mails a notice to the old address.
//!
//! The request checks the password like a password change does (a wrong one
//! counts towards the lockout). Its answer is the same whether the new address
//! is free or taken; a taken one (or the account's own) gets no mail at all, so
//! the form tells nothing about other accounts and mails no stranger. Whether
//! the new address is free is decided when the link is followed: the address is
//! claimed then, and a lost race is 409 `email_taken`.
//!
//! Both addresses are personal data: sealed with the account's data key in the
//! events (`EmailChangeRequested.new_email`, `EmailChanged.email` and
//! `previous_email`), like `UserRegistered.email`, so erasure makes them
//! unreadable.

use cqrs_es::persist::PersistedEventRepository;
use keyledger_domain::{Email, Field, LinkPurpose, MailLink, User, UserCommand, UserEvent};
use uuid::Uuid;

use super::{store_error, written, AuthError, AuthService, MailRecipient, RequestContext};
use crate::email_registry::EmailRegistry;
use crate::password::Password;
use crate::{StoreError, Written};

/// Which address a queued mail goes to.
#[derive(Clone, Copy)]
pub enum MailAddress<'a> {
    /// The account's address.
    Account,
    /// The new address of the pending change named by the mail's link (nothing
    /// to send once that request is superseded, used or gone).
    PendingNewAddress,
    /// The address the account had before the `EmailChanged` event at the
    /// sequence this picks.
    PreviousAddress(&'a (dyn Fn(usize) -> bool + Sync)),
}

impl AuthService {
    /// `POST /v1/users/me/email`: mails a link to `new_email` that moves the
    /// account there, after checking `password` (see the module docs). `Ok(None)`
    /// when nothing was written: the address is taken, is the account's own, or a
    /// change was mailed within the mail interval.
    pub async fn request_email_change(
        &self,
        user_id: Uuid,
        new_email: &str,
        password: Password,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let new_email = Email::parse(new_email).map_err(|_| AuthError::InvalidEmail)?;
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        let (email, _) = self.identity(loaded.aggregate()).await?;
        let (loaded, _turn, at) = self
            .check_current_password(user_id, &email, &password, ctx)
            .await?;
        let user = loaded.aggregate();
        let lately = user
            .pending_email_change
            .as_ref()
            .map(|p| p.request.requested_at);
        if self.mailed_lately(lately, at) || self.emails.lookup(&new_email).await?.is_some() {
            return Ok(None);
        }
        let key = self
            .keys
            .key_for(user_id)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        let command = UserCommand::RequestEmailChange {
            request_id: Uuid::new_v4(),
            new_email: key.seal(user_id, Field::Email, new_email.as_str()),
            expires_at: at + self.settings.verification_ttl,
            at,
        };
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let committed = self
            .users
            .execute_loaded(&user_id.to_string(), loaded, command, &metadata)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        Ok(written(user_id, &committed))
    }

    /// Follows a change link: claims the new address, writes `EmailChanged`,
    /// gives the old address up. A used, superseded, expired or forged link is
    /// [`AuthError::InvalidToken`]; a new address taken meanwhile is
    /// [`AuthError::EmailTaken`].
    pub(super) async fn confirm_email_change(
        &self,
        link: MailLink,
        ctx: &RequestContext,
    ) -> Result<Vec<Written>, AuthError> {
        let user_id = link.user_id;
        let id = user_id.to_string();
        // Fresh from the log: a link used a moment ago on another node must not
        // pass the check below on a stale copy.
        let loaded = self
            .users
            .load_fresh(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidToken))?;
        let user = loaded.aggregate();
        let now = chrono::Utc::now();
        let Some(pending) = user
            .pending_email_change
            .clone()
            .filter(|p| p.request.request_id == link.request_id && now < p.request.expires_at)
        else {
            return Err(AuthError::InvalidToken);
        };
        if !user.is_registered() || user.erased {
            return Err(AuthError::InvalidToken);
        }
        let (old_email, _) = self.identity(user).await?;
        // Parsed when it was requested; read back as stored.
        let new_email = Email::from_stored(self.keys.open(&pending.new_email, Field::Email).await?);
        let claimed = self.emails.claim(&new_email, user_id).await?;
        // A claim of our own left by an attempt cut short is ours to use.
        if !claimed && self.emails.lookup(&new_email).await? != Some(user_id) {
            return Err(AuthError::EmailTaken);
        }
        let at = chrono::Utc::now();
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let command = UserCommand::ConfirmEmailChange {
            request_id: link.request_id,
            at,
        };
        let committed = match self
            .users
            .execute_loaded(&id, loaded, command, &metadata)
            .await
        {
            Ok(committed) => committed,
            Err(e) => {
                // Give the new address back, unless a concurrent confirmation of
                // the same link moved the account there.
                if claimed && !self.has_address(user_id, &new_email).await {
                    let _ = self.emails.release(&new_email, user_id).await;
                }
                return Err(match e {
                    StoreError::Rejected(_) => AuthError::InvalidToken,
                    other => store_error(other, |_| AuthError::InvalidToken),
                });
            }
        };
        if let Err(error) = self.emails.release(&old_email, user_id).await {
            // The change stands; the old address stays claimed (by this account,
            // which no longer uses it) until an operator or erasure frees it.
            tracing::warn!(%user_id, %error, "the previous address could not be released");
        }
        Ok(written(user_id, &committed).into_iter().collect())
    }

    /// Whether the account's address (fresh from the log) is `email`.
    async fn has_address(&self, user_id: Uuid, email: &Email) -> bool {
        let Ok(loaded) = self.users.load_fresh(&user_id.to_string()).await else {
            return false;
        };
        match self.identity(loaded.aggregate()).await {
            Ok((current, _)) => current == *email,
            Err(_) => false,
        }
    }

    /// Like [`Self::mail_recipient`], to the address `to` picks.
    pub async fn mail_recipient_at(
        &self,
        user_id: Uuid,
        link: Option<(LinkPurpose, Uuid)>,
        to: MailAddress<'_>,
    ) -> Result<Option<MailRecipient>, AuthError> {
        let pending_new = match to {
            MailAddress::Account => return self.mail_recipient(user_id, link).await,
            MailAddress::PendingNewAddress => true,
            MailAddress::PreviousAddress(_) => false,
        };
        let loaded = self
            .users
            .load_fresh(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::UserNotFound))?;
        let user = loaded.aggregate();
        if !user.is_registered() || user.erased {
            return Ok(None);
        }
        let sealed = if pending_new {
            let request_id = link.map(|(_, request_id)| request_id);
            match &user.pending_email_change {
                Some(p) if Some(p.request.request_id) == request_id => p.new_email.clone(),
                _ => return Ok(None),
            }
        } else {
            let MailAddress::PreviousAddress(is_event) = to else {
                return Ok(None);
            };
            match self.previous_address(user_id, is_event).await? {
                Some(sealed) => sealed,
                None => return Ok(None),
            }
        };
        let email = self.keys.open(&sealed, Field::Email).await?;
        if email == keyledger_domain::ERASED {
            return Ok(None);
        }
        let token = link.map(|(purpose, request_id)| {
            self.links.token(
                purpose,
                MailLink {
                    user_id,
                    request_id,
                },
            )
        });
        Ok(Some(MailRecipient {
            email,
            token,
            code: None,
        }))
    }

    /// The sealed `previous_email` of the account's `EmailChanged` event at the
    /// sequence `is_event` picks.
    async fn previous_address(
        &self,
        user_id: Uuid,
        is_event: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<Option<keyledger_domain::PersonalData>, AuthError> {
        let events = self
            .events
            .get_events::<User>(&user_id.to_string())
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let Some(event) = events
            .into_iter()
            .find(|e| e.event_type == "EmailChanged" && is_event(e.sequence))
        else {
            return Ok(None);
        };
        match serde_json::from_value::<UserEvent>(event.payload) {
            Ok(UserEvent::EmailChanged { previous_email, .. }) => Ok(Some(previous_email)),
            _ => Ok(None),
        }
    }
}
