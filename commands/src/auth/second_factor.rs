//! Second factors: enrolling an authenticator app, backup codes, the login step
//! that asks for a code, and the step-up that proves the account's factors again
//! before a sensitive change.
//!
//! A login whose first factor (password, or a sign-in mail) was right, for an
//! account with a confirmed second factor, records `SecondFactorRequired` and
//! answers an `mfa_token` instead of tokens. The token is derived from the
//! challenge id with a server key ([`MfaTokenKey`]), so nothing that signs in is
//! stored. `POST /v1/mfa/verify` then takes a TOTP code or a backup code.
//!
//! Codes are guessable, so they are bounded like passwords: attempts on one
//! account take turns on this node (the login gate, keyed by the account id)
//! and decide on the account as stored (loaded fresh in the turn), commits are
//! optimistic across nodes, each wrong code counts towards the account's lockout
//! (`SecondFactorFailed`), a challenge dies after
//! [`SECOND_FACTOR_CODE_ATTEMPTS`] wrong codes or with a lock, and no code is
//! checked while the account is locked. So parallel guesses never get more codes
//! checked than the lockout allows.
//!
//! [`MfaTokenKey`]: keyledger_domain::second_factor::MfaTokenKey
//! [`SECOND_FACTOR_CODE_ATTEMPTS`]: keyledger_domain::second_factor::SECOND_FACTOR_CODE_ATTEMPTS

use chrono::{DateTime, Utc};
use keyledger_domain::second_factor::{BackupCodes, SecondFactor};
use keyledger_domain::{
    FactorProof, Field, SealedPasswordHash, SecondFactorCommand, SecondFactorKind, SessionCommand,
    User, UserCommand, UserError, MFA_FACTOR,
};
use uuid::Uuid;

use super::{
    retry_after, store_error, written, AuthError, AuthService, LoginOutcome, RequestContext,
    Written, PASSWORD_FACTOR,
};
use crate::password::Password;
use crate::second_factor::TotpSecret;
use crate::store::{execute_together, Loaded, Refusal, Step};
use keyledger_domain::MailLink;

/// The outcome of a first factor: a session, or a login waiting for its second
/// factor.
pub enum SignIn {
    Complete(LoginOutcome),
    SecondFactorRequired(SecondFactorChallenge),
}

/// A login waiting for its second factor.
pub struct SecondFactorChallenge {
    /// `klf1.…`: shown to the client only, never stored.
    pub mfa_token: String,
    pub expires_in: u64,
    /// The confirmed methods the code may come from (backup codes always may).
    pub methods: Vec<SecondFactorMethod>,
    pub written: Vec<Written>,
}

/// One second factor as its owner (or a login step) sees it: nothing secret.
#[derive(Debug, Clone)]
pub struct SecondFactorMethod {
    pub method_id: Uuid,
    pub kind: SecondFactorKind,
    pub label: &'static str,
    pub confirmed: bool,
    pub added_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<&SecondFactor> for SecondFactorMethod {
    fn from(factor: &SecondFactor) -> Self {
        Self {
            method_id: factor.method_id,
            kind: factor.kind,
            label: factor.kind.label(),
            confirmed: factor.is_confirmed(),
            added_at: factor.added_at,
            last_used_at: factor.last_used_at,
        }
    }
}

impl From<&keyledger_domain::Passkey> for SecondFactorMethod {
    fn from(passkey: &keyledger_domain::Passkey) -> Self {
        Self {
            method_id: passkey.passkey_id,
            kind: SecondFactorKind::Passkey,
            label: SecondFactorKind::Passkey.label(),
            confirmed: true,
            added_at: passkey.registered_at,
            last_used_at: passkey.last_used_at,
        }
    }
}

/// The methods a login step may use: the confirmed second factors, then the
/// passkeys.
fn login_methods(user: &User) -> Vec<SecondFactorMethod> {
    user.confirmed_second_factors()
        .map(SecondFactorMethod::from)
        .chain(user.passkeys.iter().map(SecondFactorMethod::from))
        .collect()
}

/// The account's second factors.
pub struct SecondFactors {
    pub methods: Vec<SecondFactorMethod>,
    pub backup_codes_remaining: usize,
}

/// What `POST /v1/mfa/setup` sets up.
#[derive(Debug, Clone, Copy)]
pub enum NewSecondFactor<'a> {
    Totp,
    /// Codes mailed to the account's verified address.
    Email,
    /// Codes sent by text message to `phone` (E.164, `+` and 8 to 15 digits).
    Sms {
        phone: &'a str,
    },
}

/// A new method, pending until confirmed. An authenticator app's secret is shown
/// here once and never again; email and SMS methods were sent a first code.
pub struct TotpEnrolment {
    pub method_id: Uuid,
    pub kind: SecondFactorKind,
    /// An app's secret, base32, for typing into the app.
    pub secret: Option<String>,
    pub otpauth_uri: Option<String>,
    pub written: Option<Written>,
}

/// `phone` in E.164 (`+`, a country code not starting with 0, 8 to 15 digits in
/// all); spaces, dashes, dots and parentheses people type are dropped.
fn parse_phone(phone: &str) -> Result<String, AuthError> {
    let compact: String = phone
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = compact.strip_prefix('+').ok_or(AuthError::InvalidPhone)?;
    let valid = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if valid {
        Ok(compact)
    } else {
        Err(AuthError::InvalidPhone)
    }
}

/// A confirmed second factor; with the account's first, its backup codes
/// (shown once).
pub struct SecondFactorConfirmed {
    pub backup_codes: Option<Vec<String>>,
    pub written: Option<Written>,
}

/// Where a second factor's text message goes, and the code it carries. Both are
/// secrets to the log: never logged.
pub struct TextRecipient {
    /// E.164.
    pub phone: String,
    pub code: String,
}

/// New backup codes, shown once.
pub struct BackupCodesIssued {
    pub codes: Vec<String>,
    pub written: Option<Written>,
}

/// The login step `challenge_id` of `user`, if it still waits at `now` and the
/// account may answer it: `InvalidMfaToken` when it does not (expired, used,
/// superseded, out of attempts), 429 while the account is locked,
/// `AccountSuspended`.
pub(super) fn waiting_login(
    user: &User,
    challenge_id: Uuid,
    now: DateTime<Utc>,
) -> Result<&keyledger_domain::second_factor::PendingSecondFactor, AuthError> {
    let pending = user
        .pending_second_factor
        .as_ref()
        .filter(|pending| {
            pending.request.request_id == challenge_id && now < pending.request.expires_at
        })
        .ok_or(AuthError::InvalidMfaToken)?;
    if let Some(until) = user.locked_at(now) {
        return Err(retry_after(until, now));
    }
    if user.suspended {
        return Err(AuthError::AccountSuspended);
    }
    Ok(pending)
}

fn refusal(e: UserError) -> AuthError {
    match e {
        UserError::NoSuchSecondFactor => AuthError::SecondFactorNotFound,
        UserError::SecondFactorAlreadyConfirmed => AuthError::SecondFactorNotFound,
        UserError::TooManySecondFactors => AuthError::TooManySecondFactors,
        UserError::NoSecondFactor => AuthError::NoSecondFactor,
        UserError::NotRegistered | UserError::Erased => AuthError::UserNotFound,
        UserError::Suspended => AuthError::AccountSuspended,
        UserError::Locked { until } => retry_after(until, Utc::now()),
        UserError::CodeAlreadyUsed => AuthError::InvalidCode,
        _ => AuthError::Conflict,
    }
}

/// A code to send: for which method, for which login step (none: to confirm a
/// pending method), until when, and who asks (none: an anonymous login step,
/// recorded about the account).
struct SendCode {
    method_id: Uuid,
    challenge: Option<Uuid>,
    expires_at: DateTime<Utc>,
    actor: Option<Uuid>,
}

/// A refusal of a command on a login step: a step that is over (used, expired,
/// superseded, ended by a lock) means signing in again.
fn challenge_refusal(e: UserError) -> AuthError {
    match e {
        UserError::NoSuchRequest | UserError::RequestExpired => AuthError::InvalidMfaToken,
        other => refusal(other),
    }
}

impl AuthService {
    /// Records that the login of `user_id` proved `first_factors` and waits for
    /// a second factor; answers the `mfa_token`. `lock_exempt`: a lockout does
    /// not bar this first factor (a trusted device, a mailed link);
    /// `email_login_request`: the sign-in mail it used up; `rehashed`: the
    /// password's new hash, when the stored one used outdated parameters.
    pub(crate) async fn require_second_factor(
        &self,
        (user_id, loaded): (Uuid, Loaded<User>),
        first_factors: Vec<String>,
        (lock_exempt, email_login_request, rehashed): (
            bool,
            Option<Uuid>,
            Option<SealedPasswordHash>,
        ),
        at: DateTime<Utc>,
        ctx: &RequestContext,
    ) -> Result<SecondFactorChallenge, AuthError> {
        let challenge_id = Uuid::new_v4();
        let id = user_id.to_string();
        let metadata = self.keys.metadata(ctx, at, None, Some(user_id)).await?;
        let command = UserCommand::SecondFactor(SecondFactorCommand::Require {
            challenge_id,
            first_factors,
            lock_exempt,
            email_login_request,
            rehashed,
            expires_at: at + self.settings.mfa_token_ttl,
            at,
        });
        let committed = self
            .users
            .execute_loaded(&id, loaded, command, &metadata)
            .await
            .map_err(|e| {
                store_error(e, |inner| match inner {
                    UserError::NoSuchRequest | UserError::RequestExpired => AuthError::InvalidToken,
                    // Removed since the account was loaded: try again.
                    UserError::NoSecondFactor => AuthError::Conflict,
                    other => refusal(other),
                })
            })?;
        Ok(SecondFactorChallenge {
            mfa_token: self.mfa_tokens.token(user_id, challenge_id),
            expires_in: self.settings.mfa_token_ttl.num_seconds().max(0) as u64,
            methods: login_methods(&committed.aggregate),
            written: written(user_id, &committed).into_iter().collect(),
        })
    }

    /// `POST /v1/mfa/verify`: completes the login waiting behind `mfa_token`
    /// with a TOTP code (of `method_id`, or of any confirmed method) or a backup
    /// code, and starts its session.
    pub async fn verify_second_factor(
        &self,
        mfa_token: &str,
        code: &str,
        method_id: Option<Uuid>,
        device_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<LoginOutcome, AuthError> {
        let (user_id, challenge_id) = self
            .mfa_tokens
            .open(mfa_token)
            .ok_or(AuthError::InvalidMfaToken)?;
        let outcome = self
            .verify_challenge(user_id, challenge_id, (code, method_id), device_token, ctx)
            .await;
        let label = match &outcome {
            Ok(_) => "success",
            Err(AuthError::InvalidCode) => "invalid_code",
            Err(AuthError::InvalidMfaToken) => "invalid_token",
            Err(AuthError::TooManyAttempts { .. }) => "locked",
            Err(_) => "refused",
        };
        metrics::counter!("keyledger_second_factor_logins_total", "outcome" => label).increment(1);
        outcome
    }

    async fn verify_challenge(
        &self,
        user_id: Uuid,
        challenge_id: Uuid,
        (code, method_id): (&str, Option<Uuid>),
        device_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<LoginOutcome, AuthError> {
        let id = user_id.to_string();
        // One code per account at a time on this node, decided on the account
        // as stored: every wrong code is counted before the next is checked.
        let _turn = self.gate.enter(&id).await;
        let loaded = self
            .users
            .load_fresh(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidMfaToken))?;
        let user = loaded.aggregate();
        let pending = waiting_login(user, challenge_id, Utc::now())?;
        let mut factors = pending.first_factors.clone();
        let Some(proof) = self.find_proof(user_id, user, code, method_id).await? else {
            self.reject_code(user_id, loaded, Some(challenge_id), ctx)
                .await?;
            return Err(AuthError::InvalidCode);
        };
        factors.extend([Self::factor_of(user, proof), MFA_FACTOR.to_owned()]);
        let device = device_token.and_then(|token| self.devices.verify(token, user_id));
        let at = Utc::now();
        let session_id = Uuid::new_v4();
        let command = UserCommand::SecondFactor(SecondFactorCommand::CompleteLogin {
            challenge_id,
            session_id,
            proof,
            at,
        });
        self.start_session(
            (user_id, loaded, command),
            (session_id, factors),
            device,
            at,
            ctx,
            || AuthError::InvalidMfaToken,
        )
        .await
    }

    /// Records a wrong code (towards the lockout) for the login step
    /// `challenge_id`, or for a step-up (`None`).
    pub(super) async fn reject_code(
        &self,
        user_id: Uuid,
        loaded: Loaded<User>,
        challenge_id: Option<Uuid>,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let at = Utc::now();
        let command = UserCommand::SecondFactor(SecondFactorCommand::RejectCode {
            challenge_id,
            policy: self.settings.lockout,
            unlock_request_id: Uuid::new_v4(),
            at,
        });
        let metadata = self.keys.metadata(ctx, at, None, Some(user_id)).await?;
        let committed = self
            .users
            .execute_loaded(&user_id.to_string(), loaded, command, &metadata)
            .await
            .map_err(|e| store_error(e, challenge_refusal))?;
        if committed.aggregate.locked_at(at).is_some() {
            metrics::counter!("keyledger_lockouts_total").increment(1);
        }
        Ok(())
    }

    /// What `code` proves on `user`: a TOTP code of a confirmed method (only
    /// `method_id`'s when given) for a time step after the method's last, or an
    /// unused backup code. `None`: wrong, or already used.
    async fn find_proof(
        &self,
        user_id: Uuid,
        user: &User,
        code: &str,
        method_id: Option<Uuid>,
    ) -> Result<Option<FactorProof>, AuthError> {
        let now = u64::try_from(Utc::now().timestamp()).unwrap_or_default();
        let methods = user
            .confirmed_second_factors()
            .filter(|f| method_id.is_none_or(|id| f.method_id == id));
        for factor in methods {
            let Some(secret) = self.open_totp_secret(user_id, factor).await? else {
                continue;
            };
            let Some(step) = secret.matching_step(code, now) else {
                continue;
            };
            if factor.last_used_step.is_none_or(|last| step > last) {
                return Ok(Some(FactorProof::Totp {
                    method_id: factor.method_id,
                    step,
                }));
            }
        }
        let at = Utc::now();
        let sent = user
            .confirmed_second_factors()
            .filter(|f| f.kind.sends_codes() && method_id.is_none_or(|id| f.method_id == id))
            .find_map(|factor| self.sent_code_proof(user_id, factor, code, at));
        if sent.is_some() {
            return Ok(sent);
        }
        Ok(user
            .backup_codes
            .as_ref()
            .and_then(|BackupCodes { digests, used, .. }| {
                self.backup_codes.find(digests, used, code)
            })
            .map(|index| FactorProof::BackupCode { index }))
    }

    /// The proof that `code` is the code sent last to `factor` (an email or
    /// SMS method), still valid at `at`; compared in constant time.
    fn sent_code_proof(
        &self,
        user_id: Uuid,
        factor: &SecondFactor,
        code: &str,
        at: DateTime<Utc>,
    ) -> Option<FactorProof> {
        let pending = factor.pending_code.filter(|p| at < p.expires_at)?;
        let link = MailLink {
            user_id,
            request_id: pending.request_id,
        };
        self.links
            .second_factor_code_matches(link, code)
            .then_some(FactorProof::Code {
                method_id: factor.method_id,
                request_id: pending.request_id,
            })
    }

    /// The `amr` value of what `proof` proved on `user`.
    fn factor_of(user: &User, proof: FactorProof) -> String {
        user.factor_of(proof).to_owned()
    }

    async fn open_totp_secret(
        &self,
        user_id: Uuid,
        factor: &SecondFactor,
    ) -> Result<Option<TotpSecret>, AuthError> {
        let Some(sealed) = &factor.secret else {
            return Ok(None);
        };
        if sealed.owner() != Some(user_id) {
            return Ok(None);
        }
        let clear = self.keys.open(sealed, Field::TotpSecret).await?;
        Ok(TotpSecret::from_base32(&clear))
    }

    /// `POST /v1/mfa/setup`: a new method, pending until
    /// [`Self::confirm_second_factor`]. An authenticator app gets a new secret
    /// (answered once); an email method (the account's address, which must be
    /// verified) and an SMS method (`phone`, E.164) are sent a first code. Needs a
    /// recent authentication (a stolen session must not be able to add a factor
    /// the owner lacks).
    pub async fn setup_second_factor(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        new: NewSecondFactor<'_>,
        ctx: &RequestContext,
    ) -> Result<TotpEnrolment, AuthError> {
        self.require_recent_authentication(user_id, session_id)
            .await?;
        let id = user_id.to_string();
        let loaded = self
            .users
            .load_fresh(&id)
            .await
            .map_err(|e| store_error(e, refusal))?;
        let (email, _) = self.identity(loaded.aggregate()).await?;
        let method_id = Uuid::new_v4();
        let (kind, secret, phone, totp) = match new {
            NewSecondFactor::Totp => {
                let secret = TotpSecret::generate();
                let encoded = secret.to_base32();
                let sealed = self
                    .keys
                    .seal(user_id, Field::TotpSecret, &encoded)
                    .await?
                    .ok_or(AuthError::UserNotFound)?;
                let uri = secret.otpauth_uri(&self.settings.totp_issuer, email.as_str());
                (
                    SecondFactorKind::Totp,
                    Some(sealed),
                    None,
                    Some((encoded, uri)),
                )
            }
            NewSecondFactor::Email => {
                // Codes to an address nobody proved could go to anyone.
                if !loaded.aggregate().email_verified {
                    return Err(AuthError::EmailNotVerified);
                }
                (SecondFactorKind::Email, None, None, None)
            }
            NewSecondFactor::Sms { phone } => {
                let phone = parse_phone(phone)?;
                let sealed = self
                    .keys
                    .seal(user_id, Field::Phone, &phone)
                    .await?
                    .ok_or(AuthError::UserNotFound)?;
                (SecondFactorKind::Sms, None, Some(sealed), None)
            }
        };
        let at = Utc::now();
        let command = UserCommand::SecondFactor(SecondFactorCommand::Add {
            method_id,
            kind,
            secret,
            phone,
            at,
        });
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let mut committed = self
            .users
            .execute_loaded(&id, loaded, command, &metadata)
            .await
            .map_err(|e| store_error(e, refusal))?;
        if kind.sends_codes() {
            let command = UserCommand::SecondFactor(SecondFactorCommand::SendCode {
                method_id,
                request_id: Uuid::new_v4(),
                challenge_id: None,
                expires_at: at + self.settings.mfa_token_ttl,
                at,
            });
            committed = self
                .users
                .execute(&id, command, &metadata)
                .await
                .map_err(|e| store_error(e, refusal))?;
        }
        let (secret, otpauth_uri) = totp.unzip();
        Ok(TotpEnrolment {
            method_id,
            kind,
            otpauth_uri,
            secret,
            written: written(user_id, &committed),
        })
    }

    /// `POST /v1/mfa/methods/{id}/send-code`: a new first code for a pending
    /// email or SMS method of the caller's (the one sent at setup expired or got
    /// lost). At most one per mail interval, as for a login step.
    pub async fn resend_setup_code(
        &self,
        user_id: Uuid,
        method_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let id = user_id.to_string();
        let loaded = self
            .users
            .load_fresh(&id)
            .await
            .map_err(|e| store_error(e, refusal))?;
        let at = Utc::now();
        let pending = loaded
            .aggregate()
            .second_factor(method_id)
            .is_some_and(|f| !f.is_confirmed() && f.kind.sends_codes());
        if !pending {
            return Err(AuthError::SecondFactorNotFound);
        }
        let send = SendCode {
            method_id,
            challenge: None,
            expires_at: at + self.settings.mfa_token_ttl,
            actor: Some(user_id),
        };
        self.send_code(user_id, loaded, send, at, ctx).await
    }

    /// Sends method `send.method_id` of `user_id` a new code, unless one went
    /// out within the mail interval (then nothing: the caller answers alike, so
    /// no route can flood an inbox or a phone).
    async fn send_code(
        &self,
        user_id: Uuid,
        loaded: Loaded<User>,
        send: SendCode,
        at: DateTime<Utc>,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let recent = loaded
            .aggregate()
            .second_factor(send.method_id)
            .and_then(|f| f.pending_code)
            .filter(|p| at < p.expires_at)
            .map(|p| p.requested_at);
        if self.mailed_lately(recent, at) {
            return Ok(None);
        }
        let command = UserCommand::SecondFactor(SecondFactorCommand::SendCode {
            method_id: send.method_id,
            request_id: Uuid::new_v4(),
            challenge_id: send.challenge,
            expires_at: send.expires_at,
            at,
        });
        let (actor, subject) = match send.actor {
            Some(actor) => (Some(actor), None),
            None => (None, Some(user_id)),
        };
        let metadata = self.keys.metadata(ctx, at, actor, subject).await?;
        let committed = self
            .users
            .execute_loaded(&user_id.to_string(), loaded, command, &metadata)
            .await
            .map_err(|e| store_error(e, challenge_refusal))?;
        Ok(written(user_id, &committed))
    }

    /// For the sender of text messages: the number of the SMS method whose code
    /// is `request_id`, and the code; `None` when that code was superseded or
    /// used, or the account (or its key) is gone.
    pub async fn text_recipient(
        &self,
        user_id: Uuid,
        request_id: Uuid,
    ) -> Result<Option<TextRecipient>, AuthError> {
        let loaded = self
            .users
            .load_fresh(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::UserNotFound))?;
        let user = loaded.aggregate();
        if !user.is_registered() || user.erased {
            return Ok(None);
        }
        let factor = user.second_factors.iter().find(|f| {
            f.kind == SecondFactorKind::Sms
                && f.pending_code.is_some_and(|p| p.request_id == request_id)
        });
        let Some(sealed) = factor.and_then(|f| f.phone.as_ref()) else {
            return Ok(None);
        };
        let phone = self.keys.open(sealed, Field::Phone).await?;
        if phone == keyledger_domain::ERASED {
            return Ok(None);
        }
        let code = self.links.second_factor_code(MailLink {
            user_id,
            request_id,
        });
        Ok(Some(TextRecipient { phone, code }))
    }

    /// `POST /v1/mfa/challenge`: sends a code to the email or SMS method
    /// `method_id` for the login waiting behind `mfa_token`. At most one code per
    /// method per mail interval (a request within it is accepted and sends
    /// nothing), so the route cannot flood an inbox or a phone.
    pub async fn send_second_factor_code(
        &self,
        mfa_token: &str,
        method_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let (user_id, challenge_id) = self
            .mfa_tokens
            .open(mfa_token)
            .ok_or(AuthError::InvalidMfaToken)?;
        let id = user_id.to_string();
        let loaded = self
            .users
            .load_fresh(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidMfaToken))?;
        let at = Utc::now();
        let user = loaded.aggregate();
        let open = user
            .pending_second_factor
            .as_ref()
            .is_some_and(|p| p.request.request_id == challenge_id && at < p.request.expires_at);
        if !open {
            return Err(AuthError::InvalidMfaToken);
        }
        let confirmed = user
            .second_factor(method_id)
            .is_some_and(|f| f.is_confirmed() && f.kind.sends_codes());
        if !confirmed {
            return Err(AuthError::SecondFactorNotFound);
        }
        // The code lives as long as the login step waiting for it.
        let expires_at = user
            .pending_second_factor
            .as_ref()
            .map_or(at, |p| p.request.expires_at);
        let send = SendCode {
            method_id,
            challenge: Some(challenge_id),
            expires_at,
            actor: None,
        };
        self.send_code(user_id, loaded, send, at, ctx).await
    }

    /// `POST /v1/mfa/methods/{id}/confirm`: the first code of a pending method
    /// confirms it. The account's first confirmed method also gets backup codes.
    pub async fn confirm_second_factor(
        &self,
        user_id: Uuid,
        method_id: Uuid,
        code: &str,
        ctx: &RequestContext,
    ) -> Result<SecondFactorConfirmed, AuthError> {
        let id = user_id.to_string();
        let loaded = self
            .users
            .load_fresh(&id)
            .await
            .map_err(|e| store_error(e, refusal))?;
        let user = loaded.aggregate();
        let factor = user
            .second_factor(method_id)
            .filter(|f| !f.is_confirmed())
            .ok_or(AuthError::SecondFactorNotFound)?;
        let proof = if factor.kind.sends_codes() {
            self.sent_code_proof(user_id, factor, code, Utc::now())
        } else {
            let secret = self
                .open_totp_secret(user_id, factor)
                .await?
                .ok_or(AuthError::SecondFactorNotFound)?;
            let now = u64::try_from(Utc::now().timestamp()).unwrap_or_default();
            secret
                .matching_step(code, now)
                .map(|step| FactorProof::Totp { method_id, step })
        };
        let proof = proof.ok_or(AuthError::InvalidCode)?;
        let gets_codes = !user.has_second_factor()
            && user
                .backup_codes
                .as_ref()
                .is_none_or(|c| c.remaining() == 0);
        let (codes, digests) = if gets_codes {
            self.backup_codes.generate()
        } else {
            (Vec::new(), Vec::new())
        };
        let at = Utc::now();
        let command = UserCommand::SecondFactor(SecondFactorCommand::Confirm {
            proof,
            backup_code_digests: digests,
            at,
        });
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let committed = self
            .users
            .execute_loaded(&id, loaded, command, &metadata)
            .await
            .map_err(|e| store_error(e, refusal))?;
        Ok(SecondFactorConfirmed {
            backup_codes: gets_codes.then_some(codes),
            written: written(user_id, &committed),
        })
    }

    /// `GET /v1/mfa/methods`.
    pub async fn second_factors(&self, user_id: Uuid) -> Result<SecondFactors, AuthError> {
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, refusal))?;
        let user = loaded.aggregate();
        if !user.is_registered() || user.erased {
            return Err(AuthError::UserNotFound);
        }
        Ok(SecondFactors {
            methods: user
                .second_factors
                .iter()
                .map(SecondFactorMethod::from)
                .chain(user.passkeys.iter().map(SecondFactorMethod::from))
                .collect(),
            backup_codes_remaining: user.backup_codes.as_ref().map_or(0, BackupCodes::remaining),
        })
    }

    /// `DELETE /v1/mfa/methods/{id}`: needs a recent authentication with the
    /// account's factors. With the last confirmed method the backup codes go.
    pub async fn remove_second_factor(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        method_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        self.require_recent_authentication(user_id, session_id)
            .await?;
        let at = Utc::now();
        let command = UserCommand::SecondFactor(SecondFactorCommand::Remove { method_id, at });
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let committed = self
            .users
            .execute(&user_id.to_string(), command, &metadata)
            .await
            .map_err(|e| store_error(e, refusal))?;
        Ok(written(user_id, &committed))
    }

    /// `POST /v1/mfa/backup-codes/regenerate`: new codes replace the old ones.
    /// Needs a recent authentication with the account's factors.
    pub async fn regenerate_backup_codes(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<BackupCodesIssued, AuthError> {
        self.require_recent_authentication(user_id, session_id)
            .await?;
        let (codes, digests) = self.backup_codes.generate();
        let at = Utc::now();
        let command =
            UserCommand::SecondFactor(SecondFactorCommand::RegenerateBackupCodes { digests, at });
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let committed = self
            .users
            .execute(&user_id.to_string(), command, &metadata)
            .await
            .map_err(|e| store_error(e, refusal))?;
        Ok(BackupCodesIssued {
            codes,
            written: written(user_id, &committed),
        })
    }

    /// A platform administrator removes every second factor of `user_id` (the
    /// owner lost them). Resetting an account without any writes nothing.
    pub async fn reset_second_factors(
        &self,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let at = Utc::now();
        let command = UserCommand::SecondFactor(SecondFactorCommand::Reset { at });
        let metadata = self.keys.metadata(ctx, at, None, Some(user_id)).await?;
        match self
            .users
            .execute(&user_id.to_string(), command, &metadata)
            .await
        {
            Ok(committed) => {
                // The passkeys went too: their credential ids are free again.
                self.forget_passkeys(user_id).await?;
                Ok(written(user_id, &committed))
            }
            Err(crate::store::StoreError::Rejected(UserError::NoSecondFactor)) => Ok(None),
            Err(e) => Err(store_error(e, refusal)),
        }
    }

    /// `POST /v1/auth/step-up`: the signed-in caller proves the account's
    /// factors again, so that changes asking for a recent authentication work
    /// for the reauthentication window: the password, and a code when the
    /// account has a second factor. Wrong ones count towards the lockout.
    pub async fn step_up(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        password: &Password,
        code: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<Vec<Written>, AuthError> {
        let session = self
            .sessions
            .load(&session_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::SessionNotFound))?;
        if session.aggregate().user_id != Some(user_id) {
            return Err(AuthError::SessionNotFound);
        }
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, refusal))?;
        let (email, _) = self.identity(loaded.aggregate()).await?;
        let (loaded, password_turn, _) = self
            .check_current_password(user_id, &email, password, ctx)
            .await?;
        let mut factors = vec![PASSWORD_FACTOR.to_owned()];
        let (user_command, loaded, _code_turn) = if loaded.aggregate().has_second_factor() {
            drop(password_turn);
            let id = user_id.to_string();
            let turn = self.gate.enter(&id).await;
            let loaded = self
                .users
                .load_fresh(&id)
                .await
                .map_err(|e| store_error(e, refusal))?;
            let now = Utc::now();
            if let Some(until) = loaded.aggregate().locked_at(now) {
                return Err(retry_after(until, now));
            }
            let proof = match code {
                Some(code) => {
                    self.find_proof(user_id, loaded.aggregate(), code, None)
                        .await?
                }
                None => None,
            };
            let Some(proof) = proof else {
                self.reject_code(user_id, loaded, None, ctx).await?;
                return Err(AuthError::InvalidCode);
            };
            factors.extend([
                Self::factor_of(loaded.aggregate(), proof),
                MFA_FACTOR.to_owned(),
            ]);
            let command = UserCommand::SecondFactor(SecondFactorCommand::Prove {
                proof,
                at: Utc::now(),
            });
            (Some(command), loaded, Some(turn))
        } else {
            (None, loaded, None)
        };
        let at = Utc::now();
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let reauthenticate = SessionCommand::Reauthenticate { factors, at };
        let session_refusal =
            |e: crate::store::StoreError<_>| store_error(e, |_| AuthError::SessionNotFound);
        let Some(command) = user_command else {
            let committed = self
                .sessions
                .execute(&session_id.to_string(), reauthenticate, &metadata)
                .await
                .map_err(session_refusal)?;
            return Ok(written(session_id, &committed).into_iter().collect());
        };
        let session = self
            .sessions
            .load(&session_id.to_string())
            .await
            .map_err(session_refusal)?;
        let (user_committed, session_committed) = execute_together(
            &self.events,
            Step {
                store: &self.users,
                id: &user_id.to_string(),
                loaded,
                command,
            },
            Step {
                store: &self.sessions,
                id: &session_id.to_string(),
                loaded: session,
                command: reauthenticate,
            },
            &metadata,
        )
        .await
        .map_err(|e| {
            store_error(e, |inner| match inner {
                Refusal::First(inner) => refusal(inner),
                Refusal::Second(_) => AuthError::SessionNotFound,
            })
        })?;
        Ok([
            written(user_id, &user_committed),
            written(session_id, &session_committed),
        ]
        .into_iter()
        .flatten()
        .collect())
    }
}
