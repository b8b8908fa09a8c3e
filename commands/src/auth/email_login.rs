//! Sign-in by email (passwordless, off unless `KEYLEDGER_EMAIL_LOGIN=on`): the
//! account's address is mailed a link and a short code; either starts a session.
//!
//! As with the other mailed requests, the event holds only a random request id;
//! the link's token and the code are derived from it with a server key when the
//! mail is sent ([`MailLinkKey`]), so nothing that signs in is ever stored. Only
//! the newest request works, once, until it expires.
//!
//! The link is unguessable, so it signs in even while a lockout bars passwords
//! (as a reset link does), and ends the lockout. The code is six digits, so it is
//! guessable: each wrong code counts towards the account's lockout like a wrong
//! password (`EmailLoginCodeRejected`), a request dies after
//! [`EMAIL_LOGIN_CODE_ATTEMPTS`] wrong codes or with a lock, and codes are refused
//! while the account is locked. Attempts on one address take turns on this node
//! (the login gate) and commit under optimistic concurrency across nodes, so
//! parallel guesses are each counted: never more wrong codes are checked than
//! the rules allow.
//!
//! Nothing tells whether an address has an account: the request is answered
//! before the look-up (see `api::resources::email_login`), and a code for an
//! address without an account, or without a pending request, is refused like a
//! wrong one, after a pause drawn from the time real refusals take.
//!
//! [`EMAIL_LOGIN_CODE_ATTEMPTS`]: keyledger_domain::EMAIL_LOGIN_CODE_ATTEMPTS
//! [`MailLinkKey`]: keyledger_domain::MailLinkKey

use chrono::Utc;
use keyledger_domain::{Email, LinkPurpose, MailLink, User, UserCommand};
use uuid::Uuid;

use super::{store_error, AuthError, AuthService, RequestContext, SignIn};
use crate::email_registry::EmailRegistry;
use crate::store::Loaded;

/// What proves the caller read the sign-in mail.
#[derive(Debug, Clone, Copy)]
pub enum EmailLoginProof<'a> {
    /// The `token` query parameter of the mailed link.
    Link(&'a str),
    /// The address and the code the mail shows.
    Code { email: &'a str, code: &'a str },
}

impl AuthService {
    /// Whether sign-in by email is on (`KEYLEDGER_EMAIL_LOGIN`).
    pub fn email_login_enabled(&self) -> bool {
        self.settings.email_login
    }

    /// `POST /v1/auth/email-login`: mails a sign-in link and code to the account
    /// at `email`, if there is one that is not suspended (at most one mail per
    /// mail interval; a new one supersedes the last). Nothing tells the caller
    /// whether there was.
    pub async fn request_email_login(
        &self,
        email: &str,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        if !self.settings.email_login {
            return Err(AuthError::EmailLoginOff);
        }
        let Some(user_id) = self.claimant(email).await? else {
            return Ok(());
        };
        let at = Utc::now();
        let due = |user: &User| {
            !user.suspended
                && !self.mailed_lately(user.pending_email_login.map(|p| p.request.requested_at), at)
        };
        let command = UserCommand::RequestEmailLogin {
            request_id: Uuid::new_v4(),
            expires_at: at + self.settings.email_login_ttl,
            at,
        };
        self.request_mail(user_id, None, at, due, command, ctx)
            .await
            .map(drop)
    }

    /// `POST /v1/auth/email-login/verify`: a new session for the account whose
    /// sign-in mail `proof` comes from. A forged, used, superseded or expired
    /// link, and a wrong code (or one for an address without a pending request),
    /// are [`AuthError::InvalidToken`]. `device_token` keeps the client's device
    /// id, as at password login.
    pub async fn email_login(
        &self,
        proof: EmailLoginProof<'_>,
        device_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<SignIn, AuthError> {
        if !self.settings.email_login {
            return Err(AuthError::EmailLoginOff);
        }
        let outcome = match proof {
            EmailLoginProof::Link(token) => {
                let link = self
                    .links
                    .open(LinkPurpose::EmailLogin, token)
                    .ok_or(AuthError::InvalidToken)?;
                let loaded = self
                    .users
                    .load(&link.user_id.to_string())
                    .await
                    .map_err(|e| store_error(e, |_| AuthError::InvalidToken))?;
                self.complete_email_login(link, loaded, false, device_token, ctx)
                    .await
            }
            EmailLoginProof::Code { email, code } => {
                self.email_login_by_code(email, code, device_token, ctx)
                    .await
            }
        };
        let label = match &outcome {
            Ok(_) => "success",
            Err(AuthError::InvalidToken) => "invalid",
            Err(AuthError::TooManyAttempts { .. }) => "locked",
            Err(_) => "refused",
        };
        metrics::counter!("keyledger_email_logins_total", "outcome" => label).increment(1);
        outcome
    }

    async fn email_login_by_code(
        &self,
        email: &str,
        code: &str,
        device_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<SignIn, AuthError> {
        let Ok(email) = Email::parse(email) else {
            // No account can have it: answering at once reveals nothing.
            return Err(AuthError::InvalidToken);
        };
        // One attempt per address at a time on this node: the count of wrong
        // codes is decided on the newest state.
        let _turn = self.gate.enter(email.as_str()).await;
        let Some(user_id) = self.emails.lookup(&email).await? else {
            return self.refuse_code(false).await;
        };
        let id = user_id.to_string();
        // Fresh from the log: the request may have been written by another
        // node a moment ago, and this node's cached copy would not know it
        // (nor which code is current).
        let loaded = self
            .users
            .load_fresh(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidToken))?;
        let now = Utc::now();
        let pending = loaded
            .aggregate()
            .pending_email_login
            .filter(|pending| now < pending.request.expires_at);
        let Some(pending) = pending else {
            return self.refuse_code(true).await;
        };
        let link = MailLink {
            user_id,
            request_id: pending.request.request_id,
        };
        if self.links.code_matches(link, code) {
            return self
                .complete_email_login(link, loaded, true, device_token, ctx)
                .await;
        }
        let at = Utc::now();
        let command = UserCommand::RejectEmailLoginCode {
            request_id: link.request_id,
            policy: self.settings.lockout,
            unlock_request_id: Uuid::new_v4(),
            at,
        };
        let metadata = self.keys.metadata(ctx, at, None, Some(user_id)).await?;
        let committed = self
            .users
            .execute_loaded(&id, loaded, command, &metadata)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidToken))?;
        if committed.aggregate.locked_at(at).is_some() {
            metrics::counter!("keyledger_lockouts_total").increment(1);
        }
        // No progressive pause as after a wrong password: an address without an
        // account counts no failures, so a growing pause would tell the two
        // apart. A request allows only a few codes anyway.
        Err(AuthError::InvalidToken)
    }

    /// The refusal of a code for an address without an account (`loaded`:
    /// false) or without a pending request, after about the time a real wrong
    /// code takes (loading the account, recording the failure).
    async fn refuse_code(&self, loaded: bool) -> Result<SignIn, AuthError> {
        let load = if loaded {
            std::time::Duration::ZERO
        } else {
            self.timing.load.sample()
        };
        self.timing
            .pause(load + self.timing.record_failure.sample())
            .await;
        Err(AuthError::InvalidToken)
    }

    async fn complete_email_login(
        &self,
        link: MailLink,
        loaded: Loaded<User>,
        by_code: bool,
        device_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<SignIn, AuthError> {
        let device = device_token.and_then(|token| self.devices.verify(token, link.user_id));
        let at = Utc::now();
        if loaded.aggregate().has_second_factor() {
            // The mail proved the first factor; the second is still owed. As
            // for the sign-in itself, a link is not barred by a lockout and a
            // code is.
            let challenge = self
                .require_second_factor(
                    (link.user_id, loaded),
                    vec![keyledger_domain::EMAIL_FACTOR.to_owned()],
                    (!by_code, Some(link.request_id), None),
                    at,
                    ctx,
                )
                .await?;
            return Ok(SignIn::SecondFactorRequired(challenge));
        }
        let session_id = Uuid::new_v4();
        let command = UserCommand::CompleteEmailLogin {
            request_id: link.request_id,
            session_id,
            by_code,
            at,
        };
        self.start_session(
            (link.user_id, loaded, command),
            (session_id, vec![keyledger_domain::EMAIL_FACTOR.to_owned()]),
            device,
            at,
            ctx,
            || AuthError::InvalidToken,
        )
        .await
        .map(SignIn::Complete)
    }
}
