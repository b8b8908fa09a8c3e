//! Second factors of an account: authenticator apps (TOTP, RFC 6238), the backup
//! codes that stand in for them, and the login step that asks for one.
//!
//! The aggregate never sees a code. The write side checks a code against the
//! method's secret (opened with the person's data key) or against the backup codes'
//! keyed digests, and tells the aggregate what matched ([`FactorProof`]). The
//! aggregate keeps the rules that need the account's history: a time step is
//! accepted once per method (RFC 6238 §5.2, replay), a backup code once, a login
//! step only while its challenge is open, and wrong codes count towards the
//! lockout like wrong passwords.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::passkey::PasskeyAssertion;
use crate::personal::PersonalData;
use crate::user::{PendingRequest, User, UserError, UserEvent};
use crate::values::LockoutPolicy;

/// The `amr` value (RFC 8176) of a one-time code: an authenticator app's or a
/// backup code.
pub const OTP_FACTOR: &str = "otp";

/// The `amr` value (RFC 8176) that says more than one factor was used.
pub const MFA_FACTOR: &str = "mfa";

/// Wrong codes one login step takes before it stops working (fewer when the
/// lockout comes first).
pub const SECOND_FACTOR_CODE_ATTEMPTS: u32 = 5;

/// Backup codes handed out at once.
pub const BACKUP_CODE_COUNT: usize = 10;

/// Methods (pending or confirmed) one account may have: enough for a phone and
/// its replacement, few enough that the account stays small to load.
pub const MAX_SECOND_FACTORS: usize = 10;

/// What kind of second factor a method is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactorKind {
    /// An authenticator app (Google Authenticator, Authy, 1Password…) that
    /// computes RFC 6238 codes from a shared secret.
    Totp,
    /// A code mailed to the account's (verified) address when asked for.
    Email,
    /// A code sent by text message to a phone number when asked for.
    Sms,
    /// A passkey (see `crate::passkey`): listed with the methods a login step
    /// may use, kept and managed as a passkey, never set up as a method.
    Passkey,
}

impl SecondFactorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Passkey => "passkey",
        }
    }

    /// What a sign-in page shows for it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Totp => "Authenticator app",
            Self::Email => "Code by email",
            Self::Sms => "Code by text message",
            Self::Passkey => "Passkey",
        }
    }

    /// Whether its codes are sent on demand (and so need a challenge first).
    pub fn sends_codes(self) -> bool {
        matches!(self, Self::Email | Self::Sms)
    }

    /// The `amr` value (RFC 8176) of a code from it.
    pub fn factor(self) -> &'static str {
        match self {
            Self::Totp => OTP_FACTOR,
            Self::Email => crate::user::EMAIL_FACTOR,
            Self::Sms => SMS_FACTOR,
            // A passkey's own value depends on whether it may be synced
            // (`Passkey::key_factor`); this is the kind's, for a hardware key.
            Self::Passkey => crate::passkey::HARDWARE_KEY_FACTOR,
        }
    }
}

/// The `amr` value (RFC 8176) of a code sent by text message.
pub const SMS_FACTOR: &str = "sms";

/// One second factor of an account, pending until a first code confirms it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondFactor {
    pub method_id: Uuid,
    pub kind: SecondFactorKind,
    /// The TOTP secret, sealed with the person's data key (erasure makes it
    /// unreadable); only the write side opens it.
    pub secret: Option<PersonalData>,
    /// Where an SMS method's codes go (E.164), sealed like the secret.
    #[serde(default)]
    pub phone: Option<PersonalData>,
    /// The code sent last (email and SMS methods), until used or replaced.
    #[serde(default)]
    pub pending_code: Option<PendingRequest>,
    pub added_at: DateTime<Utc>,
    pub confirmed_at: Option<DateTime<Utc>>,
    /// The last TOTP time step accepted: a code of this step or an earlier one
    /// is refused, so a code works once.
    pub last_used_step: Option<u64>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl SecondFactor {
    pub fn is_confirmed(&self) -> bool {
        self.confirmed_at.is_some()
    }

    fn accepts_step(&self, step: u64) -> bool {
        self.last_used_step.is_none_or(|last| step > last)
    }

    /// Whether `proof` names this method's code sent last, still valid at `at`.
    fn sent_code(&self, proof: FactorProof, at: DateTime<Utc>) -> Result<(), UserError> {
        let FactorProof::Code { request_id, .. } = proof else {
            return Err(UserError::NoSuchSecondFactor);
        };
        self.pending_code
            .ok_or(UserError::CodeAlreadyUsed)?
            .completes(request_id, at)
            .map_err(|_| UserError::CodeAlreadyUsed)
    }
}

/// The account's backup codes: their keyed digests (never the codes) and which
/// were used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupCodes {
    pub digests: Vec<String>,
    pub used: Vec<bool>,
    pub generated_at: DateTime<Utc>,
}

impl BackupCodes {
    pub fn remaining(&self) -> usize {
        self.used.iter().filter(|used| !**used).count()
    }

    /// Whether code `index` exists and was not used.
    pub fn is_usable(&self, index: u32) -> bool {
        self.used.get(index as usize).is_some_and(|used| !used)
    }
}

/// What the write side found a code to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorProof {
    /// A TOTP code of method `method_id`, for time step `step`.
    Totp { method_id: Uuid, step: u64 },
    /// The backup code at `index` (of [`BackupCodes::digests`]).
    BackupCode { index: u32 },
    /// The code of method `method_id`'s sent code `request_id` (email, SMS).
    Code { method_id: Uuid, request_id: Uuid },
    /// A passkey's assertion, verified by the write side.
    Passkey(PasskeyAssertion),
}

impl FactorProof {
    fn method_id(self) -> Option<Uuid> {
        match self {
            Self::Totp { method_id, .. } | Self::Code { method_id, .. } => Some(method_id),
            Self::BackupCode { .. } | Self::Passkey(_) => None,
        }
    }
}

/// A login that proved its first factor and waits for the second: the challenge
/// names it (the `mfa_token` is derived from the id with a server key and never
/// stored), `first_factors` is what was proved already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingSecondFactor {
    pub request: PendingRequest,
    pub first_factors: Vec<String>,
    pub failed_codes: u32,
}

/// Requests about second factors, a part of [`crate::UserCommand`].
#[derive(Debug, Clone, PartialEq)]
pub enum SecondFactorCommand {
    /// A new method, pending until confirmed. `secret` is sealed by the write side.
    Add {
        method_id: Uuid,
        kind: SecondFactorKind,
        secret: Option<PersonalData>,
        phone: Option<PersonalData>,
        at: DateTime<Utc>,
    },
    /// The first valid code of a pending method (`step`, checked by the write
    /// side). When it is the account's first confirmed method and the account has
    /// no backup codes, `backup_code_digests` become them.
    Confirm {
        proof: FactorProof,
        backup_code_digests: Vec<String>,
        at: DateTime<Utc>,
    },
    /// Send a code to an email or SMS method (`request_id` names it; the code is
    /// derived from it with a server key): to confirm a pending method, or for the
    /// open login step `challenge_id`.
    SendCode {
        method_id: Uuid,
        request_id: Uuid,
        challenge_id: Option<Uuid>,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    Remove {
        method_id: Uuid,
        at: DateTime<Utc>,
    },
    /// New backup codes replace the old ones (used or not).
    RegenerateBackupCodes {
        digests: Vec<String>,
        at: DateTime<Utc>,
    },
    /// A platform administrator removes every method and the backup codes (the
    /// owner lost them all).
    Reset {
        at: DateTime<Utc>,
    },
    /// The first factor of a login was right and the account has a second factor:
    /// the login waits for it. Refused like a login (locked, suspended), except
    /// that `lock_exempt` (a trusted device, or a mailed sign-in link) is not
    /// barred by a lockout. `email_login_request`: the first factor was the
    /// sign-in mail of that request, which this uses up. `rehashed`: the
    /// password's new hash when the stored one used outdated parameters.
    Require {
        challenge_id: Uuid,
        first_factors: Vec<String>,
        lock_exempt: bool,
        email_login_request: Option<Uuid>,
        rehashed: Option<crate::personal::SealedPasswordHash>,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A right code for the open login step `challenge_id`: the login is done.
    CompleteLogin {
        challenge_id: Uuid,
        session_id: Uuid,
        proof: FactorProof,
        at: DateTime<Utc>,
    },
    /// A right code from a signed-in caller proving themselves again (step-up).
    Prove {
        proof: FactorProof,
        at: DateTime<Utc>,
    },
    /// A wrong code: for the login step `challenge_id`, or (`None`) from a
    /// signed-in caller stepping up. Counts towards the lockout.
    RejectCode {
        challenge_id: Option<Uuid>,
        policy: LockoutPolicy,
        unlock_request_id: Uuid,
        at: DateTime<Utc>,
    },
}

impl User {
    /// Whether the account has a confirmed second factor or a passkey (so a
    /// password login needs one of them).
    pub fn has_second_factor(&self) -> bool {
        self.second_factors.iter().any(SecondFactor::is_confirmed) || !self.passkeys.is_empty()
    }

    /// The confirmed methods, in the order they were added.
    pub fn confirmed_second_factors(&self) -> impl Iterator<Item = &SecondFactor> {
        self.second_factors.iter().filter(|f| f.is_confirmed())
    }

    pub fn second_factor(&self, method_id: Uuid) -> Option<&SecondFactor> {
        self.second_factors
            .iter()
            .find(|f| f.method_id == method_id)
    }

    /// Whether `proof` is a code the account takes now: a confirmed method's step
    /// after its last accepted one, or an unused backup code.
    fn check_proof(&self, proof: FactorProof, at: DateTime<Utc>) -> Result<(), UserError> {
        match proof {
            FactorProof::Totp { method_id, step } => {
                let factor = self
                    .second_factor(method_id)
                    .filter(|f| f.is_confirmed())
                    .ok_or(UserError::NoSuchSecondFactor)?;
                if factor.accepts_step(step) {
                    Ok(())
                } else {
                    Err(UserError::CodeAlreadyUsed)
                }
            }
            FactorProof::BackupCode { index } => {
                if self.has_second_factor()
                    && self
                        .backup_codes
                        .as_ref()
                        .is_some_and(|c| c.is_usable(index))
                {
                    Ok(())
                } else {
                    Err(UserError::CodeAlreadyUsed)
                }
            }
            FactorProof::Code { method_id, .. } => {
                let factor = self
                    .second_factor(method_id)
                    .filter(|f| f.is_confirmed())
                    .ok_or(UserError::NoSuchSecondFactor)?;
                factor.sent_code(proof, at)
            }
            FactorProof::Passkey(assertion) => self.check_assertion(assertion),
        }
    }

    /// The `amr` value (RFC 8176) of what `proof` proved: `otp` for an app's
    /// or a backup code, the method's own for a sent code (`email`, `sms`).
    pub fn factor_of(&self, proof: FactorProof) -> &'static str {
        match proof {
            FactorProof::Totp { .. } | FactorProof::BackupCode { .. } => OTP_FACTOR,
            FactorProof::Code { method_id, .. } => self
                .second_factor(method_id)
                .map_or(OTP_FACTOR, |f| f.kind.factor()),
            FactorProof::Passkey(assertion) => self.passkey_factor(assertion),
        }
    }

    async fn write_proof(&mut self, sink: &EventSink<Self>, proof: FactorProof, at: DateTime<Utc>) {
        let event = match proof {
            FactorProof::Passkey(assertion) => {
                self.write_passkey_use(sink, assertion, at).await;
                return;
            }
            FactorProof::Totp { method_id, step } => UserEvent::SecondFactorUsed {
                method_id,
                step: Some(step),
                at,
            },
            FactorProof::Code { method_id, .. } => UserEvent::SecondFactorUsed {
                method_id,
                step: None,
                at,
            },
            FactorProof::BackupCode { index } => UserEvent::BackupCodeUsed {
                index,
                remaining: self
                    .backup_codes
                    .as_ref()
                    .map_or(0, |c| c.remaining().saturating_sub(1) as u32),
                at,
            },
        };
        sink.write(event, self).await;
    }

    /// The open login step `challenge_id` at `at`.
    fn open_challenge(&self, challenge_id: Uuid, at: DateTime<Utc>) -> Result<(), UserError> {
        self.pending_second_factor
            .as_ref()
            .ok_or(UserError::NoSuchRequest)?
            .request
            .completes(challenge_id, at)
    }

    pub(crate) async fn handle_second_factor(
        &mut self,
        command: SecondFactorCommand,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        self.ensure_registered()?;
        match command {
            SecondFactorCommand::Add {
                method_id,
                kind,
                secret,
                phone,
                at,
            } => {
                if self.second_factors.len() >= MAX_SECOND_FACTORS {
                    return Err(UserError::TooManySecondFactors);
                }
                let added = UserEvent::SecondFactorAdded {
                    method_id,
                    kind,
                    secret,
                    phone,
                    at,
                };
                sink.write(added, self).await;
            }
            SecondFactorCommand::Confirm {
                proof,
                backup_code_digests,
                at,
            } => {
                let method_id = proof.method_id().ok_or(UserError::NoSuchSecondFactor)?;
                let factor = self
                    .second_factor(method_id)
                    .ok_or(UserError::NoSuchSecondFactor)?;
                if factor.is_confirmed() {
                    return Err(UserError::SecondFactorAlreadyConfirmed);
                }
                let step = match proof {
                    FactorProof::Totp { step, .. } => Some(step),
                    _ => {
                        factor.sent_code(proof, at)?;
                        None
                    }
                };
                let first = !self.has_second_factor();
                let confirmed = UserEvent::SecondFactorConfirmed {
                    method_id,
                    step,
                    at,
                };
                sink.write(confirmed, self).await;
                let has_codes = self
                    .backup_codes
                    .as_ref()
                    .is_some_and(|c| c.remaining() > 0);
                if first && !has_codes && !backup_code_digests.is_empty() {
                    let codes = UserEvent::BackupCodesRegenerated {
                        code_digests: backup_code_digests,
                        at,
                    };
                    sink.write(codes, self).await;
                }
            }
            SecondFactorCommand::SendCode {
                method_id,
                request_id,
                challenge_id,
                expires_at,
                at,
            } => {
                let factor = self
                    .second_factor(method_id)
                    .filter(|f| f.kind.sends_codes())
                    .ok_or(UserError::NoSuchSecondFactor)?;
                let kind = factor.kind;
                match challenge_id {
                    // A login step asks only for confirmed methods, and not
                    // while the account is locked.
                    Some(challenge_id) => {
                        if !factor.is_confirmed() {
                            return Err(UserError::NoSuchSecondFactor);
                        }
                        self.open_challenge(challenge_id, at)?;
                        self.ensure_unlocked(at)?;
                    }
                    None => {
                        if factor.is_confirmed() {
                            return Err(UserError::SecondFactorAlreadyConfirmed);
                        }
                    }
                }
                let sent = UserEvent::SecondFactorCodeSent {
                    method_id,
                    channel: kind,
                    request_id,
                    expires_at,
                    at,
                };
                sink.write(sent, self).await;
            }
            SecondFactorCommand::Remove { method_id, at } => {
                let factor = self
                    .second_factor(method_id)
                    .ok_or(UserError::NoSuchSecondFactor)?;
                let last = factor.is_confirmed()
                    && self.confirmed_second_factors().count() == 1
                    && self.passkeys.is_empty();
                let removed = UserEvent::SecondFactorRemoved {
                    method_id,
                    backup_codes_revoked: last && self.backup_codes.is_some(),
                    at,
                };
                sink.write(removed, self).await;
            }
            SecondFactorCommand::RegenerateBackupCodes { digests, at } => {
                if !self.has_second_factor() {
                    return Err(UserError::NoSecondFactor);
                }
                let codes = UserEvent::BackupCodesRegenerated {
                    code_digests: digests,
                    at,
                };
                sink.write(codes, self).await;
            }
            SecondFactorCommand::Reset { at } => {
                if self.second_factors.is_empty()
                    && self.backup_codes.is_none()
                    && self.passkeys.is_empty()
                {
                    return Err(UserError::NoSecondFactor);
                }
                sink.write(UserEvent::SecondFactorsReset { at }, self).await;
            }
            SecondFactorCommand::Require {
                challenge_id,
                first_factors,
                lock_exempt,
                email_login_request,
                rehashed,
                expires_at,
                at,
            } => {
                if !self.has_second_factor() {
                    return Err(UserError::NoSecondFactor);
                }
                if let Some(request_id) = email_login_request {
                    self.pending_email_login
                        .ok_or(UserError::NoSuchRequest)?
                        .request
                        .completes(request_id, at)?;
                }
                if !lock_exempt {
                    self.ensure_unlocked(at)?;
                }
                if self.suspended {
                    return Err(UserError::Suspended);
                }
                let required = UserEvent::SecondFactorRequired {
                    challenge_id,
                    first_factors,
                    expires_at,
                    at,
                };
                sink.write(required, self).await;
                // Reading the mail proved the address is the owner's.
                if email_login_request.is_some() && !self.email_verified {
                    sink.write(UserEvent::EmailVerified { at }, self).await;
                }
                if let Some(password_hash) = rehashed {
                    sink.write(UserEvent::PasswordRehashed { password_hash, at }, self)
                        .await;
                }
            }
            SecondFactorCommand::CompleteLogin {
                challenge_id,
                session_id,
                proof,
                at,
            } => {
                self.open_challenge(challenge_id, at)?;
                self.ensure_unlocked(at)?;
                if self.suspended {
                    return Err(UserError::Suspended);
                }
                self.check_proof(proof, at)?;
                let mut factors = self
                    .pending_second_factor
                    .as_ref()
                    .map(|p| p.first_factors.clone())
                    .unwrap_or_default();
                factors.extend([self.factor_of(proof).to_owned(), MFA_FACTOR.to_owned()]);
                self.write_proof(sink, proof, at).await;
                let logged_in = UserEvent::UserLoggedIn {
                    session_id,
                    factors,
                    at,
                };
                sink.write(logged_in, self).await;
            }
            SecondFactorCommand::Prove { proof, at } => {
                self.ensure_unlocked(at)?;
                self.check_proof(proof, at)?;
                self.write_proof(sink, proof, at).await;
            }
            SecondFactorCommand::RejectCode {
                challenge_id,
                policy,
                unlock_request_id,
                at,
            } => {
                if let Some(challenge_id) = challenge_id {
                    self.open_challenge(challenge_id, at)?;
                }
                self.ensure_unlocked(at)?;
                let failed = |consecutive_failures| UserEvent::SecondFactorFailed {
                    consecutive_failures,
                    at,
                };
                self.write_failure(sink, failed, policy, unlock_request_id, at)
                    .await;
            }
        }
        Ok(())
    }

    /// Applies a second-factor event (see [`crate::UserEvent`]); `false` for
    /// any other event.
    pub(crate) fn apply_second_factor(&mut self, event: &UserEvent) -> bool {
        match event {
            UserEvent::SecondFactorAdded {
                method_id,
                kind,
                secret,
                phone,
                at,
            } => self.second_factors.push(SecondFactor {
                method_id: *method_id,
                kind: *kind,
                secret: secret.clone(),
                phone: phone.clone(),
                pending_code: None,
                added_at: *at,
                confirmed_at: None,
                last_used_step: None,
                last_used_at: None,
            }),
            UserEvent::SecondFactorConfirmed {
                method_id,
                step,
                at,
            } => {
                if let Some(factor) = self.factor_mut(*method_id) {
                    factor.confirmed_at = Some(*at);
                    factor.last_used_step = *step;
                    factor.last_used_at = Some(*at);
                    factor.pending_code = None;
                }
            }
            UserEvent::SecondFactorRemoved {
                method_id,
                backup_codes_revoked,
                ..
            } => {
                self.second_factors.retain(|f| f.method_id != *method_id);
                if *backup_codes_revoked {
                    self.backup_codes = None;
                }
            }
            UserEvent::BackupCodesRegenerated { code_digests, at } => {
                self.backup_codes = Some(BackupCodes {
                    used: vec![false; code_digests.len()],
                    digests: code_digests.clone(),
                    generated_at: *at,
                });
            }
            UserEvent::BackupCodeUsed { index, .. } => {
                if let Some(used) = self
                    .backup_codes
                    .as_mut()
                    .and_then(|c| c.used.get_mut(*index as usize))
                {
                    *used = true;
                }
            }
            UserEvent::SecondFactorUsed {
                method_id,
                step,
                at,
            } => {
                if let Some(factor) = self.factor_mut(*method_id) {
                    if step.is_some() {
                        factor.last_used_step = *step;
                    }
                    factor.last_used_at = Some(*at);
                    factor.pending_code = None;
                }
            }
            UserEvent::SecondFactorCodeSent {
                method_id,
                request_id,
                expires_at,
                at,
                ..
            } => {
                if let Some(factor) = self.factor_mut(*method_id) {
                    factor.pending_code = Some(PendingRequest {
                        request_id: *request_id,
                        requested_at: *at,
                        expires_at: *expires_at,
                    });
                }
            }
            UserEvent::SecondFactorsReset { .. } => {
                self.second_factors.clear();
                self.backup_codes = None;
                self.pending_second_factor = None;
                self.passkeys.clear();
            }
            UserEvent::SecondFactorRequired {
                challenge_id,
                first_factors,
                expires_at,
                at,
            } => {
                // The sign-in mail that proved the first factor is used up.
                if first_factors.iter().any(|f| f == crate::user::EMAIL_FACTOR) {
                    self.pending_email_login = None;
                }
                self.pending_second_factor = Some(PendingSecondFactor {
                    request: PendingRequest {
                        request_id: *challenge_id,
                        requested_at: *at,
                        expires_at: *expires_at,
                    },
                    first_factors: first_factors.clone(),
                    failed_codes: 0,
                });
            }
            UserEvent::SecondFactorFailed {
                consecutive_failures,
                ..
            } => {
                self.consecutive_failures = *consecutive_failures;
                if *consecutive_failures == 1 {
                    self.locked_until = None;
                    self.pending_unlock = None;
                }
                self.pending_second_factor =
                    self.pending_second_factor.take().and_then(|mut pending| {
                        pending.failed_codes += 1;
                        (pending.failed_codes < SECOND_FACTOR_CODE_ATTEMPTS).then_some(pending)
                    });
            }
            _ => return false,
        }
        true
    }

    fn factor_mut(&mut self, method_id: Uuid) -> Option<&mut SecondFactor> {
        self.second_factors
            .iter_mut()
            .find(|f| f.method_id == method_id)
    }
}

const MFA_TOKEN_PREFIX: &str = "klf1.";
const MFA_TOKEN_LABEL: &[u8] = b"keyledger mfa token v1\0";

/// The server key that makes the `mfa_token` of a login waiting for its second
/// factor: `klf1.` and the base64url of the account id, the challenge id (recorded
/// in `SecondFactorRequired`) and an HMAC-SHA256 over both. Nothing secret is
/// stored; whether a genuine token still works (newest challenge, unexpired,
/// attempts left, unused) is the account aggregate's decision.
#[derive(Clone)]
pub struct MfaTokenKey([u8; 32]);

impl MfaTokenKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn signer(&self) -> crate::signed_ids::IdPairSigner {
        crate::signed_ids::IdPairSigner::new(self.0, MFA_TOKEN_PREFIX, MFA_TOKEN_LABEL)
    }

    pub fn token(&self, user_id: Uuid, challenge_id: Uuid) -> String {
        self.signer().issue(user_id, challenge_id)
    }

    /// The account and challenge a genuine token names.
    pub fn open(&self, token: &str) -> Option<(Uuid, Uuid)> {
        self.signer().open(token)
    }
}

impl std::fmt::Debug for MfaTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MfaTokenKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::user::UserCommand;

    type UserTest = TestFramework<User>;

    fn t(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minute)
    }

    fn method() -> Uuid {
        Uuid::from_u128(10)
    }

    fn challenge() -> Uuid {
        Uuid::from_u128(20)
    }

    fn registered() -> UserEvent {
        UserEvent::UserRegistered {
            user_id: Uuid::from_u128(1),
            email: PersonalData::clear("ada@example.com"),
            display_name: None,
            password_hash: Some(crate::SealedPasswordHash::clear(crate::PasswordHash::new(
                "$argon2id$stub".into(),
            ))),
            registered_at: t(0),
        }
    }

    fn added() -> UserEvent {
        UserEvent::SecondFactorAdded {
            method_id: method(),
            kind: SecondFactorKind::Totp,
            secret: Some(PersonalData::clear("sealed")),
            phone: None,
            at: t(1),
        }
    }

    fn confirmed(step: u64) -> UserEvent {
        UserEvent::SecondFactorConfirmed {
            method_id: method(),
            step: Some(step),
            at: t(2),
        }
    }

    fn codes() -> UserEvent {
        UserEvent::BackupCodesRegenerated {
            code_digests: vec!["d0".into(), "d1".into()],
            at: t(2),
        }
    }

    fn required(minute: i64) -> UserEvent {
        UserEvent::SecondFactorRequired {
            challenge_id: challenge(),
            first_factors: vec!["pwd".into()],
            expires_at: t(minute + 5),
            at: t(minute),
        }
    }

    fn command(command: SecondFactorCommand) -> UserCommand {
        UserCommand::SecondFactor(command)
    }

    fn complete(proof: FactorProof, minute: i64) -> UserCommand {
        command(SecondFactorCommand::CompleteLogin {
            challenge_id: challenge(),
            session_id: Uuid::from_u128(30),
            proof,
            at: t(minute),
        })
    }

    #[test]
    fn the_first_confirmed_factor_brings_backup_codes() {
        UserTest::with(())
            .given(vec![registered(), added()])
            .when(command(SecondFactorCommand::Confirm {
                proof: FactorProof::Totp {
                    method_id: method(),
                    step: 100,
                },
                backup_code_digests: vec!["d0".into(), "d1".into()],
                at: t(2),
            }))
            .then_expect_events(vec![confirmed(100), codes()]);
    }

    #[test]
    fn a_confirmed_factor_is_not_confirmed_again() {
        UserTest::with(())
            .given(vec![registered(), added(), confirmed(100)])
            .when(command(SecondFactorCommand::Confirm {
                proof: FactorProof::Totp {
                    method_id: method(),
                    step: 101,
                },
                backup_code_digests: vec![],
                at: t(3),
            }))
            .then_expect_error(UserError::SecondFactorAlreadyConfirmed);
    }

    #[test]
    fn a_login_step_completes_with_a_later_time_step() {
        UserTest::with(())
            .given(vec![
                registered(),
                added(),
                confirmed(100),
                codes(),
                required(3),
            ])
            .when(complete(
                FactorProof::Totp {
                    method_id: method(),
                    step: 101,
                },
                4,
            ))
            .then_expect_events(vec![
                UserEvent::SecondFactorUsed {
                    method_id: method(),
                    step: Some(101),
                    at: t(4),
                },
                UserEvent::UserLoggedIn {
                    session_id: Uuid::from_u128(30),
                    factors: vec!["pwd".into(), "otp".into(), "mfa".into()],
                    at: t(4),
                },
            ]);
    }

    #[test]
    fn a_time_step_already_used_is_refused() {
        UserTest::with(())
            .given(vec![registered(), added(), confirmed(100), required(3)])
            .when(complete(
                FactorProof::Totp {
                    method_id: method(),
                    step: 100,
                },
                4,
            ))
            .then_expect_error(UserError::CodeAlreadyUsed);
    }

    #[test]
    fn a_backup_code_works_once() {
        let used = UserEvent::BackupCodeUsed {
            index: 1,
            remaining: 1,
            at: t(4),
        };
        UserTest::with(())
            .given(vec![
                registered(),
                added(),
                confirmed(100),
                codes(),
                required(3),
            ])
            .when(complete(FactorProof::BackupCode { index: 1 }, 4))
            .then_expect_events(vec![
                used.clone(),
                UserEvent::UserLoggedIn {
                    session_id: Uuid::from_u128(30),
                    factors: vec!["pwd".into(), "otp".into(), "mfa".into()],
                    at: t(4),
                },
            ]);
        UserTest::with(())
            .given(vec![
                registered(),
                added(),
                confirmed(100),
                codes(),
                used,
                required(5),
            ])
            .when(complete(FactorProof::BackupCode { index: 1 }, 6))
            .then_expect_error(UserError::CodeAlreadyUsed);
    }

    #[test]
    fn a_login_step_expires_and_is_used_up() {
        let proof = FactorProof::Totp {
            method_id: method(),
            step: 101,
        };
        UserTest::with(())
            .given(vec![registered(), added(), confirmed(100), required(3)])
            .when(complete(proof, 9))
            .then_expect_error(UserError::RequestExpired);
        UserTest::with(())
            .given(vec![
                registered(),
                added(),
                confirmed(100),
                required(3),
                UserEvent::SecondFactorUsed {
                    method_id: method(),
                    step: Some(101),
                    at: t(4),
                },
                UserEvent::UserLoggedIn {
                    session_id: Uuid::from_u128(30),
                    factors: vec!["pwd".into(), "otp".into(), "mfa".into()],
                    at: t(4),
                },
            ])
            .when(complete(
                FactorProof::Totp {
                    method_id: method(),
                    step: 102,
                },
                4,
            ))
            .then_expect_error(UserError::NoSuchRequest);
    }

    #[test]
    fn wrong_codes_lock_the_account_and_end_the_login_step() {
        let policy = LockoutPolicy {
            max_failures: 2,
            duration: Duration::minutes(30),
        };
        let reject = |minute| {
            command(SecondFactorCommand::RejectCode {
                challenge_id: Some(challenge()),
                policy,
                unlock_request_id: Uuid::from_u128(40),
                at: t(minute),
            })
        };
        let failed = UserEvent::SecondFactorFailed {
            consecutive_failures: 1,
            at: t(4),
        };
        UserTest::with(())
            .given(vec![registered(), added(), confirmed(100), required(3)])
            .when(reject(4))
            .then_expect_events(vec![failed.clone()]);
        UserTest::with(())
            .given(vec![
                registered(),
                added(),
                confirmed(100),
                required(3),
                failed.clone(),
            ])
            .when(reject(4))
            .then_expect_events(vec![
                UserEvent::SecondFactorFailed {
                    consecutive_failures: 2,
                    at: t(4),
                },
                UserEvent::AccountLocked {
                    locked_until: t(34),
                    failed_attempts: 2,
                    unlock_request_id: Some(Uuid::from_u128(40)),
                    at: t(4),
                },
            ]);
        let mut user = User::default();
        for event in [
            registered(),
            added(),
            confirmed(100),
            required(3),
            failed,
            UserEvent::SecondFactorFailed {
                consecutive_failures: 2,
                at: t(4),
            },
            UserEvent::AccountLocked {
                locked_until: t(34),
                failed_attempts: 2,
                unlock_request_id: Some(Uuid::from_u128(40)),
                at: t(4),
            },
        ] {
            cqrs_es::Aggregate::apply(&mut user, event);
        }
        assert_eq!(user.pending_second_factor, None);
    }

    #[test]
    fn removing_the_last_confirmed_factor_revokes_the_backup_codes() {
        UserTest::with(())
            .given(vec![registered(), added(), confirmed(100), codes()])
            .when(command(SecondFactorCommand::Remove {
                method_id: method(),
                at: t(5),
            }))
            .then_expect_events(vec![UserEvent::SecondFactorRemoved {
                method_id: method(),
                backup_codes_revoked: true,
                at: t(5),
            }]);
    }

    #[test]
    fn backup_codes_need_a_confirmed_factor() {
        UserTest::with(())
            .given(vec![registered(), added()])
            .when(command(SecondFactorCommand::RegenerateBackupCodes {
                digests: vec!["d".into()],
                at: t(5),
            }))
            .then_expect_error(UserError::NoSecondFactor);
    }

    #[test]
    fn a_sent_code_completes_a_login_once_and_only_the_newest_works() {
        let email_method = Uuid::from_u128(11);
        let added = UserEvent::SecondFactorAdded {
            method_id: email_method,
            kind: SecondFactorKind::Email,
            secret: None,
            phone: None,
            at: t(1),
        };
        let confirmed = UserEvent::SecondFactorConfirmed {
            method_id: email_method,
            step: None,
            at: t(2),
        };
        let sent = |request: u128| UserEvent::SecondFactorCodeSent {
            method_id: email_method,
            channel: SecondFactorKind::Email,
            request_id: Uuid::from_u128(request),
            expires_at: t(8),
            at: t(3),
        };
        let proof = |request: u128| FactorProof::Code {
            method_id: email_method,
            request_id: Uuid::from_u128(request),
        };
        UserTest::with(())
            .given(vec![
                registered(),
                added.clone(),
                confirmed.clone(),
                required(3),
                sent(50),
            ])
            .when(complete(proof(50), 4))
            .then_expect_events(vec![
                UserEvent::SecondFactorUsed {
                    method_id: email_method,
                    step: None,
                    at: t(4),
                },
                UserEvent::UserLoggedIn {
                    session_id: Uuid::from_u128(30),
                    factors: vec!["pwd".into(), "email".into(), "mfa".into()],
                    at: t(4),
                },
            ]);
        // A newer code replaces it.
        UserTest::with(())
            .given(vec![
                registered(),
                added.clone(),
                confirmed.clone(),
                required(3),
                sent(50),
                sent(51),
            ])
            .when(complete(proof(50), 4))
            .then_expect_error(UserError::CodeAlreadyUsed);
        // A login step asks only for its own challenge.
        UserTest::with(())
            .given(vec![registered(), added, confirmed])
            .when(command(SecondFactorCommand::SendCode {
                method_id: email_method,
                request_id: Uuid::from_u128(52),
                challenge_id: Some(challenge()),
                expires_at: t(8),
                at: t(3),
            }))
            .then_expect_error(UserError::NoSuchRequest);
    }

    #[test]
    fn an_mfa_token_opens_under_its_key_only() {
        let key = MfaTokenKey::new([3; 32]);
        let token = key.token(Uuid::from_u128(1), challenge());
        assert!(token.starts_with("klf1."));
        assert_eq!(key.open(&token), Some((Uuid::from_u128(1), challenge())));
        assert_eq!(MfaTokenKey::new([4; 32]).open(&token), None);
    }
}
