//! The User aggregate: an account, its credential and its login history.
//!
//! The aggregate owns the lockout rule. The write side serialises password checks per
//! account and asks this aggregate before every check, so the rule holds even when
//! many attempts arrive at once.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::external_identity::{
    ExternalIdentity, ExternalIdentityCommand, LinkMethod, NewExternalIdentity,
};
use crate::oauth_consent::{OAuthConsentCommand, OAuthConsents};
use crate::passkey::{NewPasskey, Passkey, PasskeyCommand};
use crate::personal::{PersonalData, SealedPasswordHash};
use crate::second_factor::{
    BackupCodes, PendingSecondFactor, SecondFactor, SecondFactorCommand, SecondFactorKind,
    MFA_FACTOR,
};
use crate::values::LockoutPolicy;

/// Requests to change an account. Times and hashes are decided by the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    /// `email`, `display_name` and `password_hash` arrive sealed with the
    /// account's data key (see `crate::personal`): the aggregate never needs them
    /// in clear.
    Register {
        user_id: Uuid,
        email: PersonalData,
        display_name: Option<PersonalData>,
        password_hash: SealedPasswordHash,
        at: DateTime<Utc>,
    },
    /// An account that signs in with a passkey and has no password: it
    /// registers (`UserRegistered` without a password hash) and keeps the
    /// passkey its registration ceremony made, in one commit.
    RegisterWithPasskey {
        user_id: Uuid,
        email: PersonalData,
        display_name: Option<PersonalData>,
        passkey: NewPasskey,
        at: DateTime<Utc>,
    },
    /// An account that a provider's sign-in created: it registers without a
    /// password (`UserRegistered` without a hash), its address verified when the
    /// provider said so, and keeps the identity, in one commit.
    RegisterWithExternalIdentity {
        user_id: Uuid,
        email: PersonalData,
        display_name: Option<PersonalData>,
        email_verified: bool,
        identity: NewExternalIdentity,
        at: DateTime<Utc>,
    },
    /// An account moved in from another system (`keyledger users import`): it
    /// registers like [`Self::Register`] and records that it was imported. Its
    /// `password_hash` is the old system's (bcrypt, PBKDF2, scrypt or Argon2),
    /// sealed like any other; the first successful login replaces it with Argon2id.
    Import {
        user_id: Uuid,
        email: PersonalData,
        display_name: Option<PersonalData>,
        password_hash: SealedPasswordHash,
        email_verified: bool,
        scheme: String,
        at: DateTime<Utc>,
    },
    /// The password matched. `rehashed` carries a new hash when the stored one used
    /// outdated parameters.
    RecordLoginSuccess {
        session_id: Uuid,
        rehashed: Option<SealedPasswordHash>,
        /// The client proved with a device token that it logged in to this
        /// account before: a lockout (which bars unknown clients) does not bar it,
        /// and its login ends the lockout.
        trusted_device: bool,
        at: DateTime<Utc>,
    },
    /// An app exchanged the authorization code of the user's sign-in on the
    /// hosted pages (OpenID Connect): session `session_id` is the app's own,
    /// started with the `factors` the user proved in that sign-in. Written as a
    /// login of that session; refused once the account is suspended or gone,
    /// whatever the code says.
    StartAppSession {
        session_id: Uuid,
        factors: Vec<String>,
        at: DateTime<Utc>,
    },
    /// The password did not match. `unlock_request_id` is random, chosen by the
    /// write side: if this failure locks the account, it names the lock's unlock
    /// request (the mailed unlock link's token is derived from it).
    RecordLoginFailure {
        policy: LockoutPolicy,
        unlock_request_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Lift a lockout before it runs out (an operator action).
    Unlock {
        at: DateTime<Utc>,
    },
    /// The owner followed the unlock link of the lock whose unlock request is
    /// `request_id`. Works only while that lock is in force, and only once.
    UnlockWithLink {
        request_id: Uuid,
        at: DateTime<Utc>,
    },
    /// The caller has already verified the current password.
    ChangePassword {
        password_hash: SealedPasswordHash,
        at: DateTime<Utc>,
    },
    /// A platform administrator blocks the account: no login until reactivated.
    /// Ending its sessions is the write side's job (they are other aggregates).
    Suspend {
        reason: String,
        at: DateTime<Utc>,
    },
    Reactivate {
        at: DateTime<Utc>,
    },
    /// Platform administrators manage every account and organization.
    GrantPlatformAdmin {
        at: DateTime<Utc>,
    },
    RevokePlatformAdmin {
        at: DateTime<Utc>,
    },
    /// Forget the person (GDPR erasure). The write side ends the sessions, frees the
    /// email and deletes the data key; the event records only that it happened.
    Erase {
        at: DateTime<Utc>,
    },
    /// Mail a link that proves the account's address is its owner's. A new
    /// request supersedes the pending one. `request_id` is random and names the
    /// request; the link's token is derived from it by the write side and never
    /// stored.
    RequestEmailVerification {
        request_id: Uuid,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// The owner followed the link of request `request_id`.
    VerifyEmail {
        request_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Someone tried to register an account with this account's address: its owner
    /// is told by mail instead of the registrant being told the address is taken.
    RecordRegistrationAttempt {
        at: DateTime<Utc>,
    },
    /// Mail a password-reset link (the owner forgot the password). Only the
    /// newest request works.
    RequestPasswordReset {
        request_id: Uuid,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// The owner followed the reset link of request `request_id` and chose a new
    /// password (already checked against the policy and hashed). Ending the
    /// sessions is the write side's job.
    ResetPassword {
        request_id: Uuid,
        password_hash: SealedPasswordHash,
        at: DateTime<Utc>,
    },
    /// Mail a link to `new_email` (sealed with the account's data key) that moves
    /// the account to it. The caller has checked the password. A new request
    /// supersedes the pending one.
    RequestEmailChange {
        request_id: Uuid,
        new_email: PersonalData,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// The owner followed the change link of request `request_id` (the write
    /// side has claimed the new address).
    ConfirmEmailChange {
        request_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Mail a sign-in link and code (sign-in by email). A new request supersedes
    /// the pending one; the link and the code are derived from `request_id` by
    /// the write side and never stored.
    RequestEmailLogin {
        request_id: Uuid,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// The owner proved they read the sign-in mail of request `request_id`: by
    /// its link (`by_code: false`, an unguessable token, so a lockout does not
    /// bar it, as a reset link is not barred) or by its short code (`by_code:
    /// true`, guessable, so refused while the account is locked).
    CompleteEmailLogin {
        request_id: Uuid,
        session_id: Uuid,
        by_code: bool,
        at: DateTime<Utc>,
    },
    /// A wrong code was given for the pending sign-in request `request_id`: it
    /// counts towards the lockout as a wrong password does.
    RejectEmailLoginCode {
        request_id: Uuid,
        policy: LockoutPolicy,
        unlock_request_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Second factors and the login step that asks for one (see
    /// `crate::second_factor`).
    SecondFactor(SecondFactorCommand),
    /// Passkeys (see `crate::passkey`).
    Passkey(PasskeyCommand),
    /// External identities (see `crate::external_identity`).
    ExternalIdentity(ExternalIdentityCommand),
    /// Consent to OAuth clients (see `crate::oauth_consent`).
    OAuthConsent(OAuthConsentCommand),
}

/// The `UserLoggedIn.factors` value of a sign-in by email (a one-time link or code
/// mailed to the address). RFC 8176 registers no value for it.
pub const EMAIL_FACTOR: &str = "email";

/// How many wrong codes a sign-in request takes before it stops working (fewer
/// when the lockout comes first).
pub const EMAIL_LOGIN_CODE_ATTEMPTS: u32 = 5;

/// A mailed sign-in request and the wrong codes given for it so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEmailLogin {
    pub request: PendingRequest,
    pub failed_codes: u32,
}

/// A requested change of address: the request, and the new address (sealed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingEmailChange {
    pub request: PendingRequest,
    pub new_email: PersonalData,
}

/// A mailed request that a link (or code) completes: which one, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub request_id: Uuid,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl PendingRequest {
    /// Whether `request_id` is this request and still open at `at`.
    pub(crate) fn completes(self, request_id: Uuid, at: DateTime<Utc>) -> Result<(), UserError> {
        if self.request_id != request_id {
            Err(UserError::NoSuchRequest)
        } else if at >= self.expires_at {
            Err(UserError::RequestExpired)
        } else {
            Ok(())
        }
    }
}

/// Facts about an account. Every event carries the derived values (failure count,
/// lock end) so that applying it only sets state: applying an event twice gives the
/// same state as once, and projections never recompute rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    /// Version 4.0: `password_hash` is null for an account that signs in with
    /// passkeys only; 3.0 sealed `password_hash` too; 2.0 sealed `email` and
    /// `display_name`; 1.0 held all of them in clear (same JSON shape, see
    /// `crate::upcasting`).
    UserRegistered {
        user_id: Uuid,
        email: PersonalData,
        display_name: Option<PersonalData>,
        password_hash: Option<SealedPasswordHash>,
        registered_at: DateTime<Utc>,
    },
    /// Follows `UserRegistered` in the same commit when the account was moved in
    /// from another system. `scheme` names the old hash's algorithm
    /// (`bcrypt`, `pbkdf2-sha256`, `scrypt`, `argon2`), never the hash itself;
    /// `email_verified` is what the old system said about the address.
    UserImported {
        email_verified: bool,
        scheme: String,
        at: DateTime<Utc>,
    },
    /// Version 2.0: `factors` (RFC 8176 `amr` values, `["pwd"]` for a password)
    /// replaced 1.0's single `method`; see `crate::upcasting`.
    UserLoggedIn {
        session_id: Uuid,
        factors: Vec<String>,
        at: DateTime<Utc>,
    },
    LoginFailed {
        consecutive_failures: u32,
        at: DateTime<Utc>,
    },
    /// Version 2.0: `unlock_request_id` names the lock's unlock request (the
    /// mailed unlock link's token is derived from it; not published). 1.0 had no
    /// such field and reads as `None` (no link: see `crate::upcasting`).
    AccountLocked {
        locked_until: DateTime<Utc>,
        failed_attempts: u32,
        #[serde(default)]
        unlock_request_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    AccountUnlocked {
        at: DateTime<Utc>,
    },
    /// Version 2.0: `password_hash` is sealed with the account's data key; 1.0
    /// held it in clear (same JSON shape).
    PasswordChanged {
        password_hash: SealedPasswordHash,
        at: DateTime<Utc>,
    },
    /// Version 2.0: as `PasswordChanged`.
    PasswordRehashed {
        password_hash: SealedPasswordHash,
        at: DateTime<Utc>,
    },
    UserSuspended {
        reason: String,
        at: DateTime<Utc>,
    },
    UserReactivated {
        at: DateTime<Utc>,
    },
    PlatformAdminGranted {
        at: DateTime<Utc>,
    },
    PlatformAdminRevoked {
        at: DateTime<Utc>,
    },
    /// The account was erased: no personal data here, and none readable anywhere
    /// in the log after it (its data key is gone).
    UserErased {
        at: DateTime<Utc>,
    },
    /// A verification link was mailed to the account's address. The token in
    /// the link is not here: it is derived from `request_id` with a server key.
    EmailVerificationRequested {
        request_id: Uuid,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// The owner proved the address is theirs (a verification or reset link).
    EmailVerified {
        at: DateTime<Utc>,
    },
    /// Someone tried to register with this account's address; its owner was told.
    RegistrationAttempted {
        at: DateTime<Utc>,
    },
    /// A password-reset link was mailed; it supersedes any earlier one.
    PasswordResetRequested {
        request_id: Uuid,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// The password was replaced through a reset link: the pending reset is used
    /// up and the failure count starts again. Sealed like `PasswordChanged`.
    PasswordReset {
        password_hash: SealedPasswordHash,
        at: DateTime<Utc>,
    },
    /// A link that moves the account to `new_email` (sealed, like
    /// `UserRegistered.email`) was mailed to that address; it supersedes any
    /// earlier change request.
    EmailChangeRequested {
        request_id: Uuid,
        new_email: PersonalData,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// The account moved from `previous_email` to `email` (both sealed) through
    /// the change link, which proved the new address is the owner's.
    EmailChanged {
        email: PersonalData,
        previous_email: PersonalData,
        at: DateTime<Utc>,
    },
    /// A sign-in link and code were mailed (sign-in by email); they supersede any
    /// earlier ones. Neither is here: both are derived from `request_id` with a
    /// server key. A sign-in through them is a `UserLoggedIn` with the factor
    /// `email`.
    EmailLoginRequested {
        request_id: Uuid,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A wrong sign-in code was given. `consecutive_failures` counts it with the
    /// wrong passwords (an `AccountLocked` follows when it reaches the lockout).
    EmailLoginCodeRejected {
        consecutive_failures: u32,
        at: DateTime<Utc>,
    },
    /// A second factor was added, pending until a first code confirms it.
    /// `secret` is the authenticator app's shared secret, sealed with the
    /// person's data key (erasure makes it unreadable); never published.
    SecondFactorAdded {
        method_id: Uuid,
        kind: SecondFactorKind,
        secret: Option<PersonalData>,
        /// An SMS method's number (E.164), sealed like an address.
        #[serde(default)]
        phone: Option<PersonalData>,
        at: DateTime<Utc>,
    },
    /// A first valid code (of TOTP time step `step`; none for a code that was
    /// sent) confirmed the method: logins need a second factor from now on.
    SecondFactorConfirmed {
        method_id: Uuid,
        step: Option<u64>,
        at: DateTime<Utc>,
    },
    /// The method is gone; with the last confirmed one the backup codes go too
    /// (`backup_codes_revoked`).
    SecondFactorRemoved {
        method_id: Uuid,
        backup_codes_revoked: bool,
        at: DateTime<Utc>,
    },
    /// New single-use backup codes replace any earlier ones. Only their keyed
    /// digests are here (never published); the codes were shown once.
    BackupCodesRegenerated {
        code_digests: Vec<String>,
        at: DateTime<Utc>,
    },
    /// Backup code `index` was used (a login or a step-up) and works no more.
    BackupCodeUsed {
        index: u32,
        remaining: u32,
        at: DateTime<Utc>,
    },
    /// A code of method `method_id` for TOTP time step `step` was accepted (a
    /// login or a step-up): no code of that step or an earlier one works again.
    SecondFactorUsed {
        method_id: Uuid,
        step: Option<u64>,
        at: DateTime<Utc>,
    },
    /// A code was sent to an email or SMS method (to confirm it, or for a login
    /// step). The code is not here: it is derived from `request_id` with a
    /// server key when the mail or message is sent. Only the newest code of a
    /// method works, once, until `expires_at`.
    SecondFactorCodeSent {
        method_id: Uuid,
        channel: SecondFactorKind,
        request_id: Uuid,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A platform administrator removed every second factor, passkey and backup
    /// code (the owner lost them all; without a password, a reset link gives
    /// the account one).
    SecondFactorsReset {
        at: DateTime<Utc>,
    },
    /// A login proved `first_factors` and waits for a second factor, through
    /// the challenge `challenge_id` (the `mfa_token` is derived from it with a
    /// server key; neither the token nor a code is here).
    SecondFactorRequired {
        challenge_id: Uuid,
        first_factors: Vec<String>,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A wrong second-factor code. `consecutive_failures` counts it with the
    /// wrong passwords (an `AccountLocked` follows when it reaches the lockout).
    SecondFactorFailed {
        consecutive_failures: u32,
        at: DateTime<Utc>,
    },
    /// A passkey was registered. `credential` (its id and public key, as
    /// webauthn-rs serialises them) and `passkey_name` are sealed with the
    /// person's data key; nothing here is secret, but both identify a person.
    /// `counter` is the authenticator's signature counter then (0: it keeps
    /// none); `discoverable`: whether it said it keeps the credential itself.
    PasskeyRegistered {
        passkey_id: Uuid,
        credential: PersonalData,
        passkey_name: PersonalData,
        counter: u32,
        backup_eligible: bool,
        backup_state: bool,
        discoverable: Option<bool>,
        at: DateTime<Utc>,
    },
    PasskeyRenamed {
        passkey_id: Uuid,
        passkey_name: PersonalData,
        at: DateTime<Utc>,
    },
    /// The passkey is gone; when it was the account's last second factor, the
    /// backup codes go too (`backup_codes_revoked`).
    PasskeyRemoved {
        passkey_id: Uuid,
        backup_codes_revoked: bool,
        at: DateTime<Utc>,
    },
    /// The passkey signed a challenge (a sign-in, a second factor): its counter
    /// and backup flags as the authenticator reported them.
    PasskeyUsed {
        passkey_id: Uuid,
        counter: u32,
        backup_eligible: bool,
        backup_state: bool,
        at: DateTime<Utc>,
    },
    /// An assertion of the passkey came with a signature counter that did not
    /// move forward (`presented_counter` ≤ `stored_counter`): the credential may
    /// have been cloned. The assertion was refused.
    PasskeyCloneSuspected {
        passkey_id: Uuid,
        stored_counter: u32,
        presented_counter: u32,
        at: DateTime<Utc>,
    },
    /// An identity at provider `provider` now signs in to this account.
    /// `external_subject` (the provider's id of the person) and `external_email`
    /// (the address the provider gave) are sealed with the person's data key;
    /// `email_verified` is what the provider said of that address; `method`
    /// says how the link came about. No provider token is here.
    ExternalIdentityLinked {
        identity_id: Uuid,
        provider: String,
        external_subject: PersonalData,
        external_email: Option<PersonalData>,
        email_verified: bool,
        method: LinkMethod,
        at: DateTime<Utc>,
    },
    ExternalIdentityUnlinked {
        identity_id: Uuid,
        provider: String,
        at: DateTime<Utc>,
    },
    /// The person allowed OAuth client `client_id` the `scopes` (the whole set
    /// allowed now: the earlier set and the new scopes together).
    OAuthConsentGranted {
        client_id: Uuid,
        scopes: Vec<String>,
        at: DateTime<Utc>,
    },
    /// The person took back what `client_id` was allowed.
    OAuthConsentRevoked {
        client_id: Uuid,
        at: DateTime<Utc>,
    },
}

impl UserEvent {
    /// Every user event type, for the event catalogue and its tests.
    pub const TYPES: &'static [&'static str] = &[
        "UserRegistered",
        "UserImported",
        "UserLoggedIn",
        "LoginFailed",
        "AccountLocked",
        "AccountUnlocked",
        "PasswordChanged",
        "PasswordRehashed",
        "UserSuspended",
        "UserReactivated",
        "PlatformAdminGranted",
        "PlatformAdminRevoked",
        "UserErased",
        "EmailVerificationRequested",
        "EmailVerified",
        "RegistrationAttempted",
        "PasswordResetRequested",
        "PasswordReset",
        "EmailChangeRequested",
        "EmailChanged",
        "EmailLoginRequested",
        "EmailLoginCodeRejected",
        "SecondFactorAdded",
        "SecondFactorConfirmed",
        "SecondFactorRemoved",
        "BackupCodesRegenerated",
        "BackupCodeUsed",
        "SecondFactorUsed",
        "SecondFactorsReset",
        "SecondFactorRequired",
        "SecondFactorFailed",
        "SecondFactorCodeSent",
        "PasskeyRegistered",
        "PasskeyRenamed",
        "PasskeyRemoved",
        "PasskeyUsed",
        "PasskeyCloneSuspected",
        "ExternalIdentityLinked",
        "ExternalIdentityUnlinked",
        "OAuthConsentGranted",
        "OAuthConsentRevoked",
    ];
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::UserImported { .. } => "UserImported",
            Self::UserLoggedIn { .. } => "UserLoggedIn",
            Self::LoginFailed { .. } => "LoginFailed",
            Self::AccountLocked { .. } => "AccountLocked",
            Self::AccountUnlocked { .. } => "AccountUnlocked",
            Self::PasswordChanged { .. } => "PasswordChanged",
            Self::PasswordRehashed { .. } => "PasswordRehashed",
            Self::UserSuspended { .. } => "UserSuspended",
            Self::UserReactivated { .. } => "UserReactivated",
            Self::PlatformAdminGranted { .. } => "PlatformAdminGranted",
            Self::PlatformAdminRevoked { .. } => "PlatformAdminRevoked",
            Self::UserErased { .. } => "UserErased",
            Self::EmailVerificationRequested { .. } => "EmailVerificationRequested",
            Self::EmailVerified { .. } => "EmailVerified",
            Self::RegistrationAttempted { .. } => "RegistrationAttempted",
            Self::PasswordResetRequested { .. } => "PasswordResetRequested",
            Self::PasswordReset { .. } => "PasswordReset",
            Self::EmailChangeRequested { .. } => "EmailChangeRequested",
            Self::EmailChanged { .. } => "EmailChanged",
            Self::EmailLoginRequested { .. } => "EmailLoginRequested",
            Self::EmailLoginCodeRejected { .. } => "EmailLoginCodeRejected",
            Self::SecondFactorAdded { .. } => "SecondFactorAdded",
            Self::SecondFactorConfirmed { .. } => "SecondFactorConfirmed",
            Self::SecondFactorRemoved { .. } => "SecondFactorRemoved",
            Self::BackupCodesRegenerated { .. } => "BackupCodesRegenerated",
            Self::BackupCodeUsed { .. } => "BackupCodeUsed",
            Self::SecondFactorUsed { .. } => "SecondFactorUsed",
            Self::SecondFactorsReset { .. } => "SecondFactorsReset",
            Self::SecondFactorRequired { .. } => "SecondFactorRequired",
            Self::SecondFactorFailed { .. } => "SecondFactorFailed",
            Self::SecondFactorCodeSent { .. } => "SecondFactorCodeSent",
            Self::PasskeyRegistered { .. } => "PasskeyRegistered",
            Self::PasskeyRenamed { .. } => "PasskeyRenamed",
            Self::PasskeyRemoved { .. } => "PasskeyRemoved",
            Self::PasskeyUsed { .. } => "PasskeyUsed",
            Self::PasskeyCloneSuspected { .. } => "PasskeyCloneSuspected",
            Self::ExternalIdentityLinked { .. } => "ExternalIdentityLinked",
            Self::ExternalIdentityUnlinked { .. } => "ExternalIdentityUnlinked",
            Self::OAuthConsentGranted { .. } => "OAuthConsentGranted",
            Self::OAuthConsentRevoked { .. } => "OAuthConsentRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "4.0",
            Self::UserLoggedIn { .. }
            | Self::AccountLocked { .. }
            | Self::PasswordChanged { .. }
            | Self::PasswordRehashed { .. } => "2.0",
            _ => "1.0",
        }
        .to_owned()
    }
}

/// Why the aggregate refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("the account already exists")]
    AlreadyRegistered,
    #[error("no such account")]
    NotRegistered,
    #[error("the account is locked until {until}")]
    Locked { until: DateTime<Utc> },
    #[error("the account is not locked")]
    NotLocked,
    #[error("the account is suspended")]
    Suspended,
    #[error("the account is not suspended")]
    NotSuspended,
    #[error("the account is already a platform administrator")]
    AlreadyPlatformAdmin,
    #[error("the account is not a platform administrator")]
    NotPlatformAdmin,
    #[error("the account was erased")]
    Erased,
    #[error("the address is already verified")]
    EmailAlreadyVerified,
    /// Never requested, superseded by a newer request, or already used.
    #[error("no such pending request")]
    NoSuchRequest,
    #[error("the request has expired")]
    RequestExpired,
    #[error("no such second factor")]
    NoSuchSecondFactor,
    #[error("the second factor is already confirmed")]
    SecondFactorAlreadyConfirmed,
    #[error("the account has as many second factors as it may")]
    TooManySecondFactors,
    #[error("the account has no second factor")]
    NoSecondFactor,
    /// A TOTP code of a time step already used, or a used backup code.
    #[error("the code was already used")]
    CodeAlreadyUsed,
    /// A login of an account with a second factor that did not go through the
    /// second-factor step.
    #[error("the login needs a second factor")]
    SecondFactorRequired,
    #[error("no such passkey")]
    NoSuchPasskey,
    #[error("the passkey is already registered")]
    PasskeyExists,
    #[error("the account has as many passkeys as it may")]
    TooManyPasskeys,
    /// Removing it would leave the account no way to sign in.
    #[error("the account's last way to sign in")]
    LastWayToSignIn,
    /// The signature counter did not move forward: a possible clone.
    #[error("the passkey's signature counter did not increase")]
    PasskeyCounterRegressed,
    /// A clone was reported for a counter that is in fact fine.
    #[error("the passkey's signature counter increased")]
    PasskeyCounterAccepted,
    #[error("no such external identity")]
    NoSuchExternalIdentity,
    /// One identity per provider and account.
    #[error("the account already has an identity of this provider")]
    ProviderAlreadyLinked,
    #[error("the account has as many external identities as it may")]
    TooManyExternalIdentities,
    #[error("no consent given to this client")]
    NoSuchConsent,
}

/// Current state of one account, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub user_id: Option<Uuid>,
    pub email: Option<PersonalData>,
    pub display_name: Option<PersonalData>,
    /// Sealed (or clear, from old events): the write side opens it to verify.
    pub password_hash: Option<SealedPasswordHash>,
    pub registered_at: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub locked_until: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub suspended: bool,
    pub platform_admin: bool,
    /// Imported from another system whose record said the address was verified.
    #[serde(default)]
    pub email_verified: bool,
    /// Erased accounts refuse every command; their id is never reused.
    #[serde(default)]
    pub erased: bool,
    /// The verification link mailed last, until it is used.
    #[serde(default)]
    pub pending_verification: Option<PendingRequest>,
    /// The password-reset link mailed last, until it is used.
    #[serde(default)]
    pub pending_reset: Option<PendingRequest>,
    /// The unlock link of the lock in force (it expires with the lock), until it
    /// is used or the lock ends otherwise (unlock, login, reset).
    #[serde(default)]
    pub pending_unlock: Option<PendingRequest>,
    /// When someone last tried to register with this account's address (its
    /// owner was mailed then).
    #[serde(default)]
    pub last_registration_attempt: Option<DateTime<Utc>>,
    /// The address change mailed last, until it is confirmed.
    #[serde(default)]
    pub pending_email_change: Option<PendingEmailChange>,
    /// The sign-in link and code mailed last, until used, locked out or out of
    /// attempts.
    #[serde(default)]
    pub pending_email_login: Option<PendingEmailLogin>,
    /// Authenticator apps, pending and confirmed.
    #[serde(default)]
    pub second_factors: Vec<SecondFactor>,
    #[serde(default)]
    pub backup_codes: Option<BackupCodes>,
    /// The login waiting for a second factor, until it gets one, runs out of
    /// attempts or time, or a lock ends it.
    #[serde(default)]
    pub pending_second_factor: Option<PendingSecondFactor>,
    #[serde(default)]
    pub passkeys: Vec<Passkey>,
    /// Accounts at other identity providers that sign in to this one.
    #[serde(default)]
    pub external_identities: Vec<ExternalIdentity>,
    /// What the person allowed each OAuth client, by client id.
    #[serde(default)]
    pub oauth_consents: OAuthConsents,
}

impl User {
    pub fn is_registered(&self) -> bool {
        self.user_id.is_some()
    }

    /// The end of a lockout still in force at `at`, if any.
    pub fn locked_at(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.locked_until.filter(|until| *until > at)
    }

    pub(crate) fn ensure_registered(&self) -> Result<(), UserError> {
        if self.erased {
            Err(UserError::Erased)
        } else if self.is_registered() {
            Ok(())
        } else {
            Err(UserError::NotRegistered)
        }
    }

    pub(crate) fn ensure_unlocked(&self, at: DateTime<Utc>) -> Result<(), UserError> {
        match self.locked_at(at) {
            Some(until) => Err(UserError::Locked { until }),
            None => Ok(()),
        }
    }

    /// Writes the `UserRegistered` of an account without a password (it signs
    /// in with a passkey or an external identity, written next in the same
    /// commit).
    async fn write_passwordless_registration(
        &mut self,
        sink: &EventSink<Self>,
        user_id: Uuid,
        (email, display_name): (PersonalData, Option<PersonalData>),
        at: DateTime<Utc>,
    ) -> Result<(), UserError> {
        if self.is_registered() || self.erased {
            return Err(UserError::AlreadyRegistered);
        }
        let registered = UserEvent::UserRegistered {
            user_id,
            email,
            display_name,
            password_hash: None,
            registered_at: at,
        };
        sink.write(registered, self).await;
        Ok(())
    }

    /// Writes one more failure (`failed` of the new count: a wrong password or a
    /// wrong code) and, when the count reaches `policy`'s threshold, the lock it
    /// starts. A lockout that has run out starts a fresh count.
    pub(crate) async fn write_failure(
        &mut self,
        sink: &EventSink<Self>,
        failed: impl FnOnce(u32) -> UserEvent,
        policy: LockoutPolicy,
        unlock_request_id: Uuid,
        at: DateTime<Utc>,
    ) {
        let previous = if self.locked_until.is_some() {
            0
        } else {
            self.consecutive_failures
        };
        let consecutive_failures = previous.saturating_add(1);
        sink.write(failed(consecutive_failures), self).await;
        if consecutive_failures >= policy.max_failures {
            let locked = UserEvent::AccountLocked {
                locked_until: at + policy.duration,
                failed_attempts: consecutive_failures,
                unlock_request_id: Some(unlock_request_id),
                at,
            };
            sink.write(locked, self).await;
        }
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: UserCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        match command {
            UserCommand::Register {
                user_id,
                email,
                display_name,
                password_hash,
                at,
            } => {
                if self.is_registered() {
                    return Err(UserError::AlreadyRegistered);
                }
                let event = UserEvent::UserRegistered {
                    user_id,
                    email,
                    display_name,
                    password_hash: Some(password_hash),
                    registered_at: at,
                };
                sink.write(event, self).await;
            }
            UserCommand::RegisterWithPasskey {
                user_id,
                email,
                display_name,
                passkey,
                at,
            } => {
                self.write_passwordless_registration(sink, user_id, (email, display_name), at)
                    .await?;
                self.write_new_passkey(sink, passkey, at).await?;
            }
            UserCommand::RegisterWithExternalIdentity {
                user_id,
                email,
                display_name,
                email_verified,
                identity,
                at,
            } => {
                self.write_passwordless_registration(sink, user_id, (email, display_name), at)
                    .await?;
                if email_verified {
                    sink.write(UserEvent::EmailVerified { at }, self).await;
                }
                self.write_link(sink, identity, LinkMethod::SignUp, at)
                    .await?;
            }
            UserCommand::Import {
                user_id,
                email,
                display_name,
                password_hash,
                email_verified,
                scheme,
                at,
            } => {
                if self.is_registered() || self.erased {
                    return Err(UserError::AlreadyRegistered);
                }
                let registered = UserEvent::UserRegistered {
                    user_id,
                    email,
                    display_name,
                    password_hash: Some(password_hash),
                    registered_at: at,
                };
                sink.write(registered, self).await;
                let imported = UserEvent::UserImported {
                    email_verified,
                    scheme,
                    at,
                };
                sink.write(imported, self).await;
            }
            UserCommand::RecordLoginSuccess {
                session_id,
                rehashed,
                trusted_device,
                at,
            } => {
                self.ensure_registered()?;
                if !trusted_device {
                    self.ensure_unlocked(at)?;
                }
                if self.suspended {
                    return Err(UserError::Suspended);
                }
                if self.has_second_factor() {
                    return Err(UserError::SecondFactorRequired);
                }
                let logged_in = UserEvent::UserLoggedIn {
                    session_id,
                    factors: vec!["pwd".to_owned()],
                    at,
                };
                sink.write(logged_in, self).await;
                if let Some(password_hash) = rehashed {
                    sink.write(UserEvent::PasswordRehashed { password_hash, at }, self)
                        .await;
                }
            }
            UserCommand::StartAppSession {
                session_id,
                factors,
                at,
            } => {
                self.ensure_registered()?;
                if self.suspended {
                    return Err(UserError::Suspended);
                }
                let logged_in = UserEvent::UserLoggedIn {
                    session_id,
                    factors,
                    at,
                };
                sink.write(logged_in, self).await;
            }
            UserCommand::RecordLoginFailure {
                policy,
                unlock_request_id,
                at,
            } => {
                self.ensure_registered()?;
                self.ensure_unlocked(at)?;
                let failed = |consecutive_failures| UserEvent::LoginFailed {
                    consecutive_failures,
                    at,
                };
                self.write_failure(sink, failed, policy, unlock_request_id, at)
                    .await;
            }
            UserCommand::Unlock { at } => {
                self.ensure_registered()?;
                if self.locked_at(at).is_none() {
                    return Err(UserError::NotLocked);
                }
                sink.write(UserEvent::AccountUnlocked { at }, self).await;
            }
            UserCommand::UnlockWithLink { request_id, at } => {
                self.ensure_registered()?;
                // The request expires with its lock; a newer lock replaced it;
                // an unlock, login or reset cleared it.
                self.pending_unlock
                    .ok_or(UserError::NoSuchRequest)?
                    .completes(request_id, at)?;
                if self.locked_at(at).is_none() {
                    return Err(UserError::NoSuchRequest);
                }
                sink.write(UserEvent::AccountUnlocked { at }, self).await;
            }
            UserCommand::ChangePassword { password_hash, at } => {
                self.ensure_registered()?;
                sink.write(UserEvent::PasswordChanged { password_hash, at }, self)
                    .await;
            }
            UserCommand::Suspend { reason, at } => {
                self.ensure_registered()?;
                if self.suspended {
                    return Err(UserError::Suspended);
                }
                sink.write(UserEvent::UserSuspended { reason, at }, self)
                    .await;
            }
            UserCommand::Reactivate { at } => {
                self.ensure_registered()?;
                if !self.suspended {
                    return Err(UserError::NotSuspended);
                }
                sink.write(UserEvent::UserReactivated { at }, self).await;
            }
            UserCommand::GrantPlatformAdmin { at } => {
                self.ensure_registered()?;
                if self.platform_admin {
                    return Err(UserError::AlreadyPlatformAdmin);
                }
                sink.write(UserEvent::PlatformAdminGranted { at }, self)
                    .await;
            }
            UserCommand::RevokePlatformAdmin { at } => {
                self.ensure_registered()?;
                if !self.platform_admin {
                    return Err(UserError::NotPlatformAdmin);
                }
                sink.write(UserEvent::PlatformAdminRevoked { at }, self)
                    .await;
            }
            UserCommand::Erase { at } => {
                self.ensure_registered()?;
                sink.write(UserEvent::UserErased { at }, self).await;
            }
            UserCommand::RequestEmailVerification {
                request_id,
                expires_at,
                at,
            } => {
                self.ensure_registered()?;
                if self.email_verified {
                    return Err(UserError::EmailAlreadyVerified);
                }
                let requested = UserEvent::EmailVerificationRequested {
                    request_id,
                    expires_at,
                    at,
                };
                sink.write(requested, self).await;
            }
            UserCommand::VerifyEmail { request_id, at } => {
                self.ensure_registered()?;
                self.pending_verification
                    .ok_or(UserError::NoSuchRequest)?
                    .completes(request_id, at)?;
                sink.write(UserEvent::EmailVerified { at }, self).await;
            }
            UserCommand::RecordRegistrationAttempt { at } => {
                self.ensure_registered()?;
                sink.write(UserEvent::RegistrationAttempted { at }, self)
                    .await;
            }
            UserCommand::RequestPasswordReset {
                request_id,
                expires_at,
                at,
            } => {
                self.ensure_registered()?;
                let requested = UserEvent::PasswordResetRequested {
                    request_id,
                    expires_at,
                    at,
                };
                sink.write(requested, self).await;
            }
            UserCommand::ResetPassword {
                request_id,
                password_hash,
                at,
            } => {
                self.ensure_registered()?;
                self.pending_reset
                    .ok_or(UserError::NoSuchRequest)?
                    .completes(request_id, at)?;
                if self.locked_at(at).is_some() {
                    sink.write(UserEvent::AccountUnlocked { at }, self).await;
                }
                sink.write(UserEvent::PasswordReset { password_hash, at }, self)
                    .await;
                // Following a link mailed to the address proves it is the owner's.
                if !self.email_verified {
                    sink.write(UserEvent::EmailVerified { at }, self).await;
                }
            }
            UserCommand::RequestEmailChange {
                request_id,
                new_email,
                expires_at,
                at,
            } => {
                self.ensure_registered()?;
                let requested = UserEvent::EmailChangeRequested {
                    request_id,
                    new_email,
                    expires_at,
                    at,
                };
                sink.write(requested, self).await;
            }
            UserCommand::ConfirmEmailChange { request_id, at } => {
                self.ensure_registered()?;
                let pending = self
                    .pending_email_change
                    .clone()
                    .ok_or(UserError::NoSuchRequest)?;
                pending.request.completes(request_id, at)?;
                let previous_email = self.email.clone().ok_or(UserError::NotRegistered)?;
                let changed = UserEvent::EmailChanged {
                    email: pending.new_email,
                    previous_email,
                    at,
                };
                sink.write(changed, self).await;
            }
            UserCommand::RequestEmailLogin {
                request_id,
                expires_at,
                at,
            } => {
                self.ensure_registered()?;
                if self.suspended {
                    return Err(UserError::Suspended);
                }
                let requested = UserEvent::EmailLoginRequested {
                    request_id,
                    expires_at,
                    at,
                };
                sink.write(requested, self).await;
            }
            UserCommand::CompleteEmailLogin {
                request_id,
                session_id,
                by_code,
                at,
            } => {
                self.ensure_registered()?;
                self.pending_email_login
                    .ok_or(UserError::NoSuchRequest)?
                    .request
                    .completes(request_id, at)?;
                if by_code {
                    self.ensure_unlocked(at)?;
                }
                if self.suspended {
                    return Err(UserError::Suspended);
                }
                if self.has_second_factor() {
                    return Err(UserError::SecondFactorRequired);
                }
                let logged_in = UserEvent::UserLoggedIn {
                    session_id,
                    factors: vec![EMAIL_FACTOR.to_owned()],
                    at,
                };
                sink.write(logged_in, self).await;
                // Reading the mail proved the address is the owner's.
                if !self.email_verified {
                    sink.write(UserEvent::EmailVerified { at }, self).await;
                }
            }
            UserCommand::RejectEmailLoginCode {
                request_id,
                policy,
                unlock_request_id,
                at,
            } => {
                self.ensure_registered()?;
                self.pending_email_login
                    .ok_or(UserError::NoSuchRequest)?
                    .request
                    .completes(request_id, at)?;
                self.ensure_unlocked(at)?;
                let failed = |consecutive_failures| UserEvent::EmailLoginCodeRejected {
                    consecutive_failures,
                    at,
                };
                self.write_failure(sink, failed, policy, unlock_request_id, at)
                    .await;
            }
            UserCommand::SecondFactor(command) => {
                self.handle_second_factor(command, sink).await?;
            }
            UserCommand::Passkey(command) => {
                self.handle_passkey(command, sink).await?;
            }
            UserCommand::ExternalIdentity(command) => {
                self.handle_external_identity(command, sink).await?;
            }
            UserCommand::OAuthConsent(command) => {
                self.handle_oauth_consent(command, sink).await?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: UserEvent) {
        if self.apply_second_factor(&event)
            || self.apply_passkey(&event)
            || self.apply_external_identity(&event)
            || self.apply_oauth_consent(&event)
        {
            return;
        }
        match event {
            UserEvent::UserRegistered {
                user_id,
                email,
                display_name,
                password_hash,
                registered_at,
            } => {
                self.user_id = Some(user_id);
                self.email = Some(email);
                self.display_name = display_name;
                self.password_hash = password_hash;
                self.registered_at = Some(registered_at);
            }
            UserEvent::UserImported { email_verified, .. } => {
                self.email_verified = email_verified;
            }
            UserEvent::UserLoggedIn { at, factors, .. } => {
                self.consecutive_failures = 0;
                self.locked_until = None;
                self.pending_unlock = None;
                self.last_login_at = Some(at);
                // A sign-in by email used the pending request up.
                if factors.iter().any(|factor| factor == EMAIL_FACTOR) {
                    self.pending_email_login = None;
                }
                if factors.iter().any(|factor| factor == MFA_FACTOR) {
                    self.pending_second_factor = None;
                }
                self.note_federated_login(&factors, at);
            }
            UserEvent::LoginFailed {
                consecutive_failures,
                ..
            } => {
                self.consecutive_failures = consecutive_failures;
                // Counting restarted after an expired lockout.
                if consecutive_failures == 1 {
                    self.locked_until = None;
                    self.pending_unlock = None;
                }
            }
            UserEvent::AccountLocked {
                locked_until,
                unlock_request_id,
                at,
                ..
            } => {
                self.locked_until = Some(locked_until);
                // Its code was being guessed (or the password was): the owner
                // asks for a new sign-in mail.
                self.pending_email_login = None;
                self.pending_second_factor = None;
                self.pending_unlock = unlock_request_id.map(|request_id| PendingRequest {
                    request_id,
                    requested_at: at,
                    expires_at: locked_until,
                });
            }
            UserEvent::AccountUnlocked { .. } => {
                self.locked_until = None;
                self.consecutive_failures = 0;
                self.pending_unlock = None;
            }
            UserEvent::PasswordChanged { password_hash, .. }
            | UserEvent::PasswordRehashed { password_hash, .. } => {
                self.password_hash = Some(password_hash);
            }
            UserEvent::UserSuspended { .. } => self.suspended = true,
            UserEvent::UserReactivated { .. } => self.suspended = false,
            UserEvent::PlatformAdminGranted { .. } => self.platform_admin = true,
            UserEvent::PlatformAdminRevoked { .. } => self.platform_admin = false,
            UserEvent::UserErased { .. } => {
                self.erased = true;
                self.email = None;
                self.display_name = None;
                self.password_hash = None;
                self.platform_admin = false;
                self.suspended = false;
                self.pending_verification = None;
                self.pending_reset = None;
                self.pending_email_change = None;
                self.pending_unlock = None;
                self.pending_email_login = None;
                self.second_factors.clear();
                self.backup_codes = None;
                self.pending_second_factor = None;
                self.passkeys.clear();
                self.external_identities.clear();
                self.oauth_consents.clear();
            }
            UserEvent::EmailVerificationRequested {
                request_id,
                expires_at,
                at,
            } => {
                self.pending_verification = Some(PendingRequest {
                    request_id,
                    requested_at: at,
                    expires_at,
                });
            }
            UserEvent::EmailVerified { .. } => {
                self.email_verified = true;
                self.pending_verification = None;
            }
            UserEvent::RegistrationAttempted { at } => {
                self.last_registration_attempt = Some(at);
            }
            UserEvent::PasswordResetRequested {
                request_id,
                expires_at,
                at,
            } => {
                self.pending_reset = Some(PendingRequest {
                    request_id,
                    requested_at: at,
                    expires_at,
                });
            }
            UserEvent::PasswordReset { password_hash, .. } => {
                self.password_hash = Some(password_hash);
                self.pending_reset = None;
                self.consecutive_failures = 0;
                self.pending_unlock = None;
            }
            UserEvent::EmailChangeRequested {
                request_id,
                new_email,
                expires_at,
                at,
            } => {
                self.pending_email_change = Some(PendingEmailChange {
                    request: PendingRequest {
                        request_id,
                        requested_at: at,
                        expires_at,
                    },
                    new_email,
                });
            }
            // The link proved the new address is the owner's. Links mailed to the
            // old address (verification, reset) no longer work.
            UserEvent::EmailChanged { email, .. } => {
                self.email = Some(email);
                self.email_verified = true;
                self.pending_email_change = None;
                self.pending_verification = None;
                self.pending_reset = None;
                self.pending_email_login = None;
            }
            UserEvent::EmailLoginRequested {
                request_id,
                expires_at,
                at,
            } => {
                self.pending_email_login = Some(PendingEmailLogin {
                    request: PendingRequest {
                        request_id,
                        requested_at: at,
                        expires_at,
                    },
                    failed_codes: 0,
                });
            }
            UserEvent::EmailLoginCodeRejected {
                consecutive_failures,
                ..
            } => {
                self.consecutive_failures = consecutive_failures;
                if consecutive_failures == 1 {
                    self.locked_until = None;
                    self.pending_unlock = None;
                }
                self.pending_email_login = self.pending_email_login.and_then(|mut pending| {
                    pending.failed_codes += 1;
                    (pending.failed_codes < EMAIL_LOGIN_CODE_ATTEMPTS).then_some(pending)
                });
            }
            // Applied by `apply_second_factor` above.
            UserEvent::SecondFactorAdded { .. }
            | UserEvent::SecondFactorConfirmed { .. }
            | UserEvent::SecondFactorRemoved { .. }
            | UserEvent::BackupCodesRegenerated { .. }
            | UserEvent::BackupCodeUsed { .. }
            | UserEvent::SecondFactorUsed { .. }
            | UserEvent::SecondFactorsReset { .. }
            | UserEvent::SecondFactorRequired { .. }
            | UserEvent::SecondFactorFailed { .. }
            | UserEvent::SecondFactorCodeSent { .. }
            // Applied by `apply_passkey` above.
            | UserEvent::PasskeyRegistered { .. }
            | UserEvent::PasskeyRenamed { .. }
            | UserEvent::PasskeyRemoved { .. }
            | UserEvent::PasskeyUsed { .. }
            | UserEvent::PasskeyCloneSuspected { .. }
            // Applied by `apply_external_identity` above.
            | UserEvent::ExternalIdentityLinked { .. }
            | UserEvent::ExternalIdentityUnlinked { .. }
            // Applied by `apply_oauth_consent` above.
            | UserEvent::OAuthConsentGranted { .. }
            | UserEvent::OAuthConsentRevoked { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use cqrs_es::test::TestFramework;

    use super::*;

    type UserTest = TestFramework<User>;

    fn t(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minute)
    }

    fn id() -> Uuid {
        Uuid::from_u128(1)
    }

    fn hash(n: u8) -> SealedPasswordHash {
        // Sealed in real use; the aggregate carries whatever it is given.
        SealedPasswordHash::clear(crate::values::PasswordHash::new(format!(
            "$argon2id$v=19$m=19456,t=2,p=1$salt{n}$hash{n}"
        )))
    }

    fn registered() -> UserEvent {
        UserEvent::UserRegistered {
            user_id: id(),
            // Sealed in real use; the aggregate carries whatever it is given.
            email: PersonalData::clear("alice@example.com"),
            display_name: Some(PersonalData::clear("Alice")),
            password_hash: Some(hash(1)),
            registered_at: t(0),
        }
    }

    fn failed(n: u32, minute: i64) -> UserEvent {
        UserEvent::LoginFailed {
            consecutive_failures: n,
            at: t(minute),
        }
    }

    fn policy() -> LockoutPolicy {
        LockoutPolicy::default()
    }

    fn locked_at(minute: i64) -> UserEvent {
        UserEvent::AccountLocked {
            locked_until: t(minute) + Duration::minutes(30),
            failed_attempts: 5,
            unlock_request_id: Some(unlock_request(minute)),
            at: t(minute),
        }
    }

    /// The unlock request of a lock made at `minute`.
    fn unlock_request(minute: i64) -> Uuid {
        Uuid::from_u128(5000 + minute as u128)
    }

    fn locked_at_5() -> Vec<UserEvent> {
        let mut given = four_failures();
        given.extend([failed(5, 5), locked_at(5)]);
        given
    }

    fn unlock_with_link(lock_minute: i64, minute: i64) -> UserCommand {
        UserCommand::UnlockWithLink {
            request_id: unlock_request(lock_minute),
            at: t(minute),
        }
    }

    #[test]
    fn the_unlock_link_lifts_the_lock_it_was_mailed_for() {
        UserTest::with(())
            .given(locked_at_5())
            .when(unlock_with_link(5, 6))
            .then_expect_events(vec![UserEvent::AccountUnlocked { at: t(6) }]);
        let mut user = User::default();
        for event in locked_at_5() {
            user.apply(event);
        }
        assert_eq!(
            user.pending_unlock,
            Some(PendingRequest {
                request_id: unlock_request(5),
                requested_at: t(5),
                expires_at: t(35),
            })
        );
        user.apply(UserEvent::AccountUnlocked { at: t(6) });
        assert_eq!(user.locked_at(t(6)), None);
        assert_eq!(user.consecutive_failures, 0);
        assert_eq!(user.pending_unlock, None);
    }

    #[test]
    fn the_unlock_link_works_once() {
        let mut used = locked_at_5();
        used.push(UserEvent::AccountUnlocked { at: t(6) });
        UserTest::with(())
            .given(used)
            .when(unlock_with_link(5, 7))
            .then_expect_error(UserError::NoSuchRequest);
    }

    #[test]
    fn the_unlock_link_expires_with_its_lock() {
        // Locked at minute 5 for 30 minutes.
        UserTest::with(())
            .given(locked_at_5())
            .when(unlock_with_link(5, 35))
            .then_expect_error(UserError::RequestExpired);
        // And a failure after the lock ran out forgets it.
        let mut given = locked_at_5();
        given.push(failed(1, 36));
        UserTest::with(())
            .given(given)
            .when(unlock_with_link(5, 36))
            .then_expect_error(UserError::NoSuchRequest);
    }

    #[test]
    fn a_newer_lock_supersedes_the_older_unlock_link() {
        let mut given = locked_at_5();
        given.extend([
            failed(1, 40),
            failed(2, 41),
            failed(3, 42),
            failed(4, 43),
            failed(5, 44),
            locked_at(44),
        ]);
        UserTest::with(())
            .given(given.clone())
            .when(unlock_with_link(5, 45))
            .then_expect_error(UserError::NoSuchRequest);
        UserTest::with(())
            .given(given)
            .when(unlock_with_link(44, 45))
            .then_expect_events(vec![UserEvent::AccountUnlocked { at: t(45) }]);
    }

    #[test]
    fn an_unlock_login_or_reset_ends_the_unlock_link() {
        let ended_by = [
            UserEvent::AccountUnlocked { at: t(6) },
            UserEvent::UserLoggedIn {
                session_id: Uuid::nil(),
                factors: vec!["pwd".into()],
                at: t(6),
            },
            UserEvent::PasswordReset {
                password_hash: hash(9),
                at: t(6),
            },
        ];
        for event in ended_by {
            let mut given = locked_at_5();
            given.push(event.clone());
            UserTest::with(())
                .given(given)
                .when(unlock_with_link(5, 7))
                .then_expect_error(UserError::NoSuchRequest);
        }
    }

    #[test]
    fn a_forged_or_unknown_unlock_request_is_refused() {
        UserTest::with(())
            .given(locked_at_5())
            .when(unlock_with_link(4, 6))
            .then_expect_error(UserError::NoSuchRequest);
        UserTest::with(())
            .given(vec![registered()])
            .when(unlock_with_link(5, 6))
            .then_expect_error(UserError::NoSuchRequest);
        UserTest::with(())
            .given_no_previous_events()
            .when(unlock_with_link(5, 6))
            .then_expect_error(UserError::NotRegistered);
        let mut erased = locked_at_5();
        erased.push(UserEvent::UserErased { at: t(6) });
        UserTest::with(())
            .given(erased)
            .when(unlock_with_link(5, 7))
            .then_expect_error(UserError::Erased);
    }

    /// An `AccountLocked` 1.0 (before unlock links) has no unlock request: its
    /// lock holds, and no link opens it.
    #[test]
    fn a_lock_stored_as_1_0_reads_without_an_unlock_link() {
        let stored = serde_json::json!({"AccountLocked": {
            "locked_until": t(35),
            "failed_attempts": 5,
            "at": t(5),
        }});
        let event: UserEvent = serde_json::from_value(stored).unwrap();
        assert_eq!(
            event,
            UserEvent::AccountLocked {
                locked_until: t(35),
                failed_attempts: 5,
                unlock_request_id: None,
                at: t(5),
            }
        );
        assert_eq!(event.event_version(), "2.0");
        let mut given = four_failures();
        given.extend([failed(5, 5), event]);
        UserTest::with(())
            .given(given)
            .when(UserCommand::UnlockWithLink {
                request_id: Uuid::nil(),
                at: t(6),
            })
            .then_expect_error(UserError::NoSuchRequest);
    }

    fn four_failures() -> Vec<UserEvent> {
        vec![
            registered(),
            failed(1, 1),
            failed(2, 2),
            failed(3, 3),
            failed(4, 4),
        ]
    }

    #[test]
    fn register_emits_user_registered() {
        let UserEvent::UserRegistered {
            user_id,
            email,
            display_name,
            password_hash,
            registered_at,
        } = registered()
        else {
            unreachable!()
        };
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::Register {
                user_id,
                email,
                display_name,
                password_hash: password_hash.expect("registered with a password"),
                at: registered_at,
            })
            .then_expect_events(vec![registered()]);
    }

    fn import(at: DateTime<Utc>) -> UserCommand {
        UserCommand::Import {
            user_id: id(),
            email: PersonalData::clear("alice@example.com"),
            display_name: Some(PersonalData::clear("Alice")),
            password_hash: hash(1),
            email_verified: true,
            scheme: "bcrypt".into(),
            at,
        }
    }

    #[test]
    fn import_registers_and_records_the_import() {
        UserTest::with(())
            .given_no_previous_events()
            .when(import(t(0)))
            .then_expect_events(vec![
                registered(),
                UserEvent::UserImported {
                    email_verified: true,
                    scheme: "bcrypt".into(),
                    at: t(0),
                },
            ]);
    }

    #[test]
    fn import_of_an_existing_account_is_refused() {
        UserTest::with(())
            .given(vec![registered()])
            .when(import(t(1)))
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn register_twice_is_refused() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::Register {
                user_id: id(),
                email: PersonalData::clear("alice@example.com"),
                display_name: None,
                password_hash: hash(2),
                at: t(1),
            })
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn login_success_records_the_session() {
        let session_id = Uuid::from_u128(9);
        UserTest::with(())
            .given(vec![registered(), failed(1, 1)])
            .when(UserCommand::RecordLoginSuccess {
                session_id,
                rehashed: None,
                trusted_device: false,
                at: t(2),
            })
            .then_expect_events(vec![UserEvent::UserLoggedIn {
                session_id,
                factors: vec!["pwd".into()],
                at: t(2),
            }]);
    }

    #[test]
    fn an_apps_session_is_a_login_with_the_factors_of_the_sign_in() {
        let session_id = Uuid::from_u128(9);
        let factors = vec!["pwd".to_owned(), "otp".to_owned(), "mfa".to_owned()];
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::StartAppSession {
                session_id,
                factors: factors.clone(),
                at: t(2),
            })
            .then_expect_events(vec![UserEvent::UserLoggedIn {
                session_id,
                factors,
                at: t(2),
            }]);
    }

    #[test]
    fn no_app_session_starts_for_a_suspended_or_unknown_account() {
        let start = || UserCommand::StartAppSession {
            session_id: Uuid::from_u128(9),
            factors: vec!["pwd".to_owned()],
            at: t(3),
        };
        UserTest::with(())
            .given(vec![
                registered(),
                UserEvent::UserSuspended {
                    reason: "abuse".into(),
                    at: t(2),
                },
            ])
            .when(start())
            .then_expect_error(UserError::Suspended);
        UserTest::with(())
            .given_no_previous_events()
            .when(start())
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn login_success_with_outdated_hash_records_the_rehash() {
        let session_id = Uuid::from_u128(9);
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::RecordLoginSuccess {
                session_id,
                rehashed: Some(hash(2)),
                trusted_device: false,
                at: t(2),
            })
            .then_expect_events(vec![
                UserEvent::UserLoggedIn {
                    session_id,
                    factors: vec!["pwd".into()],
                    at: t(2),
                },
                UserEvent::PasswordRehashed {
                    password_hash: hash(2),
                    at: t(2),
                },
            ]);
    }

    #[test]
    fn login_success_for_unknown_account_is_refused() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::RecordLoginSuccess {
                session_id: Uuid::nil(),
                rehashed: None,
                trusted_device: false,
                at: t(0),
            })
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn login_success_while_locked_is_refused() {
        let mut given = four_failures();
        given.extend([failed(5, 5), locked_at(5)]);
        UserTest::with(())
            .given(given)
            .when(UserCommand::RecordLoginSuccess {
                session_id: Uuid::nil(),
                rehashed: None,
                trusted_device: false,
                at: t(6),
            })
            .then_expect_error(UserError::Locked {
                until: t(5) + Duration::minutes(30),
            });
    }

    #[test]
    fn a_trusted_device_logs_in_while_locked() {
        let mut given = four_failures();
        given.extend([failed(5, 5), locked_at(5)]);
        UserTest::with(())
            .given(given)
            .when(UserCommand::RecordLoginSuccess {
                session_id: Uuid::nil(),
                rehashed: None,
                trusted_device: true,
                at: t(6),
            })
            .then_expect_events(vec![UserEvent::UserLoggedIn {
                session_id: Uuid::nil(),
                factors: vec!["pwd".to_owned()],
                at: t(6),
            }]);
    }

    #[test]
    fn a_failure_counts_up() {
        UserTest::with(())
            .given(vec![registered(), failed(1, 1)])
            .when(UserCommand::RecordLoginFailure {
                policy: policy(),
                unlock_request_id: unlock_request(2),
                at: t(2),
            })
            .then_expect_events(vec![failed(2, 2)]);
    }

    #[test]
    fn the_fifth_consecutive_failure_locks_the_account() {
        UserTest::with(())
            .given(four_failures())
            .when(UserCommand::RecordLoginFailure {
                policy: policy(),
                unlock_request_id: unlock_request(5),
                at: t(5),
            })
            .then_expect_events(vec![failed(5, 5), locked_at(5)]);
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut given = four_failures();
        given.push(UserEvent::UserLoggedIn {
            session_id: Uuid::nil(),
            factors: vec!["pwd".into()],
            at: t(5),
        });
        UserTest::with(())
            .given(given)
            .when(UserCommand::RecordLoginFailure {
                policy: policy(),
                unlock_request_id: unlock_request(6),
                at: t(6),
            })
            .then_expect_events(vec![failed(1, 6)]);
    }

    #[test]
    fn a_failure_while_locked_is_refused_without_counting() {
        let mut given = four_failures();
        given.extend([failed(5, 5), locked_at(5)]);
        UserTest::with(())
            .given(given)
            .when(UserCommand::RecordLoginFailure {
                policy: policy(),
                unlock_request_id: unlock_request(10),
                at: t(10),
            })
            .then_expect_error(UserError::Locked { until: t(35) });
    }

    #[test]
    fn after_the_lockout_runs_out_counting_starts_again() {
        let mut given = four_failures();
        given.extend([failed(5, 5), locked_at(5)]);
        UserTest::with(())
            .given(given)
            .when(UserCommand::RecordLoginFailure {
                policy: policy(),
                unlock_request_id: unlock_request(36),
                at: t(36),
            })
            .then_expect_events(vec![failed(1, 36)]);
    }

    #[test]
    fn lockout_threshold_and_duration_come_from_the_policy() {
        let policy = LockoutPolicy {
            max_failures: 2,
            duration: Duration::minutes(1),
        };
        UserTest::with(())
            .given(vec![registered(), failed(1, 1)])
            .when(UserCommand::RecordLoginFailure {
                policy,
                unlock_request_id: unlock_request(2),
                at: t(2),
            })
            .then_expect_events(vec![
                failed(2, 2),
                UserEvent::AccountLocked {
                    locked_until: t(3),
                    failed_attempts: 2,
                    unlock_request_id: Some(unlock_request(2)),
                    at: t(2),
                },
            ]);
    }

    #[test]
    fn a_failure_for_unknown_account_is_refused() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::RecordLoginFailure {
                policy: policy(),
                unlock_request_id: unlock_request(0),
                at: t(0),
            })
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn unlock_lifts_a_lockout() {
        let mut given = four_failures();
        given.extend([failed(5, 5), locked_at(5)]);
        UserTest::with(())
            .given(given)
            .when(UserCommand::Unlock { at: t(6) })
            .then_expect_events(vec![UserEvent::AccountUnlocked { at: t(6) }]);
    }

    #[test]
    fn unlock_of_an_unlocked_account_is_refused() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::Unlock { at: t(1) })
            .then_expect_error(UserError::NotLocked);
    }

    #[test]
    fn unlock_of_unknown_account_is_refused() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::Unlock { at: t(1) })
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn change_password_records_the_new_hash() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::ChangePassword {
                password_hash: hash(3),
                at: t(1),
            })
            .then_expect_events(vec![UserEvent::PasswordChanged {
                password_hash: hash(3),
                at: t(1),
            }]);
    }

    #[test]
    fn change_password_of_unknown_account_is_refused() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::ChangePassword {
                password_hash: hash(3),
                at: t(1),
            })
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn a_suspended_account_cannot_log_in_until_reactivated() {
        let suspended = UserEvent::UserSuspended {
            reason: "fraud".into(),
            at: t(1),
        };
        UserTest::with(())
            .given(vec![registered(), suspended.clone()])
            .when(UserCommand::RecordLoginSuccess {
                session_id: Uuid::nil(),
                rehashed: None,
                trusted_device: false,
                at: t(2),
            })
            .then_expect_error(UserError::Suspended);
        UserTest::with(())
            .given(vec![registered(), suspended.clone()])
            .when(UserCommand::Reactivate { at: t(2) })
            .then_expect_events(vec![UserEvent::UserReactivated { at: t(2) }]);
        UserTest::with(())
            .given(vec![
                registered(),
                suspended,
                UserEvent::UserReactivated { at: t(2) },
            ])
            .when(UserCommand::RecordLoginSuccess {
                session_id: Uuid::nil(),
                rehashed: None,
                trusted_device: false,
                at: t(3),
            })
            .then_expect_events(vec![UserEvent::UserLoggedIn {
                session_id: Uuid::nil(),
                factors: vec!["pwd".into()],
                at: t(3),
            }]);
    }

    #[test]
    fn suspending_twice_or_reactivating_an_active_account_is_refused() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::Suspend {
                reason: "abuse".into(),
                at: t(1),
            })
            .then_expect_events(vec![UserEvent::UserSuspended {
                reason: "abuse".into(),
                at: t(1),
            }]);
        UserTest::with(())
            .given(vec![
                registered(),
                UserEvent::UserSuspended {
                    reason: "abuse".into(),
                    at: t(1),
                },
            ])
            .when(UserCommand::Suspend {
                reason: "again".into(),
                at: t(2),
            })
            .then_expect_error(UserError::Suspended);
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::Reactivate { at: t(1) })
            .then_expect_error(UserError::NotSuspended);
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::Suspend {
                reason: "x".into(),
                at: t(1),
            })
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn platform_admin_is_granted_and_revoked_once() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::GrantPlatformAdmin { at: t(1) })
            .then_expect_events(vec![UserEvent::PlatformAdminGranted { at: t(1) }]);
        UserTest::with(())
            .given(vec![
                registered(),
                UserEvent::PlatformAdminGranted { at: t(1) },
            ])
            .when(UserCommand::GrantPlatformAdmin { at: t(2) })
            .then_expect_error(UserError::AlreadyPlatformAdmin);
        UserTest::with(())
            .given(vec![
                registered(),
                UserEvent::PlatformAdminGranted { at: t(1) },
            ])
            .when(UserCommand::RevokePlatformAdmin { at: t(2) })
            .then_expect_events(vec![UserEvent::PlatformAdminRevoked { at: t(2) }]);
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::RevokePlatformAdmin { at: t(1) })
            .then_expect_error(UserError::NotPlatformAdmin);
    }

    /// The snapshot store of cqrs-es 0.5.0 applies committed events a second time;
    /// applying must therefore only set state.
    #[test]
    fn applying_any_event_twice_equals_applying_it_once() {
        let mut history = four_failures();
        history.extend([
            failed(5, 5),
            locked_at(5),
            UserEvent::AccountUnlocked { at: t(6) },
            UserEvent::UserLoggedIn {
                session_id: Uuid::nil(),
                factors: vec!["pwd".into()],
                at: t(7),
            },
            UserEvent::PasswordChanged {
                password_hash: hash(4),
                at: t(8),
            },
            UserEvent::PasswordRehashed {
                password_hash: hash(5),
                at: t(9),
            },
            UserEvent::UserSuspended {
                reason: "x".into(),
                at: t(10),
            },
            UserEvent::UserReactivated { at: t(11) },
            UserEvent::PlatformAdminGranted { at: t(12) },
            UserEvent::PlatformAdminRevoked { at: t(13) },
            verification_requested(1, 13),
            UserEvent::EmailVerified { at: t(13) },
            UserEvent::RegistrationAttempted { at: t(13) },
            reset_requested(2, 13),
            UserEvent::PasswordReset {
                password_hash: hash(6),
                at: t(13),
            },
            change_requested(3, 13, "new@example.com"),
            UserEvent::EmailChanged {
                email: PersonalData::clear("new@example.com"),
                previous_email: PersonalData::clear("alice@example.com"),
                at: t(13),
            },
            UserEvent::UserErased { at: t(14) },
        ]);
        let mut once = User::default();
        let mut twice = User::default();
        for event in history {
            once.apply(event.clone());
            twice.apply(event.clone());
            twice.apply(event);
            assert_eq!(once, twice);
        }
    }

    fn request(n: u128) -> Uuid {
        Uuid::from_u128(1000 + n)
    }

    /// Request `n`, made at `minute`, open for 15 minutes.
    fn verification_requested(n: u128, minute: i64) -> UserEvent {
        UserEvent::EmailVerificationRequested {
            request_id: request(n),
            expires_at: t(minute + 15),
            at: t(minute),
        }
    }

    fn reset_requested(n: u128, minute: i64) -> UserEvent {
        UserEvent::PasswordResetRequested {
            request_id: request(n),
            expires_at: t(minute + 15),
            at: t(minute),
        }
    }

    fn reset(n: u128, minute: i64) -> UserCommand {
        UserCommand::ResetPassword {
            request_id: request(n),
            password_hash: hash(9),
            at: t(minute),
        }
    }

    #[test]
    fn a_verification_request_is_recorded_until_the_address_is_verified() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::RequestEmailVerification {
                request_id: request(1),
                expires_at: t(16),
                at: t(1),
            })
            .then_expect_events(vec![verification_requested(1, 1)]);
        UserTest::with(())
            .given(vec![registered(), UserEvent::EmailVerified { at: t(1) }])
            .when(UserCommand::RequestEmailVerification {
                request_id: request(2),
                expires_at: t(17),
                at: t(2),
            })
            .then_expect_error(UserError::EmailAlreadyVerified);
    }

    #[test]
    fn only_the_newest_verification_link_verifies_and_only_once() {
        let given = || {
            vec![
                registered(),
                verification_requested(1, 1),
                verification_requested(2, 2),
            ]
        };
        let verify = |n, minute| UserCommand::VerifyEmail {
            request_id: request(n),
            at: t(minute),
        };
        UserTest::with(())
            .given(given())
            .when(verify(2, 3))
            .then_expect_events(vec![UserEvent::EmailVerified { at: t(3) }]);
        // Superseded.
        UserTest::with(())
            .given(given())
            .when(verify(1, 3))
            .then_expect_error(UserError::NoSuchRequest);
        // Used.
        let mut used = given();
        used.push(UserEvent::EmailVerified { at: t(3) });
        UserTest::with(())
            .given(used)
            .when(verify(2, 4))
            .then_expect_error(UserError::NoSuchRequest);
        // Expired: request 2 was open until minute 17.
        UserTest::with(())
            .given(given())
            .when(verify(2, 17))
            .then_expect_error(UserError::RequestExpired);
        // Never requested.
        UserTest::with(())
            .given(vec![registered()])
            .when(verify(1, 3))
            .then_expect_error(UserError::NoSuchRequest);
    }

    #[test]
    fn a_reset_sets_the_password_and_verifies_the_address() {
        UserTest::with(())
            .given(vec![registered(), reset_requested(1, 1)])
            .when(reset(1, 2))
            .then_expect_events(vec![
                UserEvent::PasswordReset {
                    password_hash: hash(9),
                    at: t(2),
                },
                UserEvent::EmailVerified { at: t(2) },
            ]);
    }

    #[test]
    fn a_reset_lifts_a_lockout_and_starts_the_count_again() {
        let mut given = four_failures();
        given.extend([failed(5, 5), locked_at(5), reset_requested(1, 6)]);
        let events = vec![
            UserEvent::AccountUnlocked { at: t(7) },
            UserEvent::PasswordReset {
                password_hash: hash(9),
                at: t(7),
            },
            UserEvent::EmailVerified { at: t(7) },
        ];
        UserTest::with(())
            .given(given.clone())
            .when(reset(1, 7))
            .then_expect_events(events.clone());
        let mut user = User::default();
        for event in given.into_iter().chain(events) {
            user.apply(event);
        }
        assert_eq!(user.locked_at(t(8)), None);
        assert_eq!(user.consecutive_failures, 0);
        assert_eq!(user.password_hash, Some(hash(9)));
    }

    #[test]
    fn a_reset_link_works_once_only_while_newest_and_until_it_expires() {
        let given = || vec![registered(), reset_requested(1, 1), reset_requested(2, 2)];
        UserTest::with(())
            .given(given())
            .when(reset(1, 3))
            .then_expect_error(UserError::NoSuchRequest);
        UserTest::with(())
            .given(given())
            .when(reset(2, 17))
            .then_expect_error(UserError::RequestExpired);
        let mut used = given();
        used.push(UserEvent::PasswordReset {
            password_hash: hash(9),
            at: t(3),
        });
        UserTest::with(())
            .given(used)
            .when(reset(2, 4))
            .then_expect_error(UserError::NoSuchRequest);
        UserTest::with(())
            .given(vec![registered()])
            .when(reset(1, 3))
            .then_expect_error(UserError::NoSuchRequest);
    }

    fn change_requested(n: u128, minute: i64, new_email: &str) -> UserEvent {
        UserEvent::EmailChangeRequested {
            request_id: request(n),
            new_email: PersonalData::clear(new_email),
            expires_at: t(minute + 15),
            at: t(minute),
        }
    }

    fn confirm_change(n: u128, minute: i64) -> UserCommand {
        UserCommand::ConfirmEmailChange {
            request_id: request(n),
            at: t(minute),
        }
    }

    #[test]
    fn an_email_change_request_is_recorded_with_the_sealed_new_address() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::RequestEmailChange {
                request_id: request(1),
                new_email: PersonalData::clear("new@example.com"),
                expires_at: t(16),
                at: t(1),
            })
            .then_expect_events(vec![change_requested(1, 1, "new@example.com")]);
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::RequestEmailChange {
                request_id: request(1),
                new_email: PersonalData::clear("new@example.com"),
                expires_at: t(16),
                at: t(1),
            })
            .then_expect_error(UserError::NotRegistered);
    }

    #[test]
    fn confirming_a_change_moves_the_account_and_keeps_the_previous_address() {
        let given = vec![registered(), change_requested(1, 1, "new@example.com")];
        let changed = UserEvent::EmailChanged {
            email: PersonalData::clear("new@example.com"),
            previous_email: PersonalData::clear("alice@example.com"),
            at: t(2),
        };
        UserTest::with(())
            .given(given.clone())
            .when(confirm_change(1, 2))
            .then_expect_events(vec![changed.clone()]);
        let mut user = User::default();
        for event in given.into_iter().chain([changed]) {
            user.apply(event);
        }
        assert_eq!(user.email, Some(PersonalData::clear("new@example.com")));
        assert!(user.email_verified);
        assert_eq!(user.pending_email_change, None);
    }

    #[test]
    fn only_the_newest_change_link_works_once_and_until_it_expires() {
        let given = || {
            vec![
                registered(),
                change_requested(1, 1, "first@example.com"),
                change_requested(2, 2, "second@example.com"),
            ]
        };
        // The newest moves to its own address.
        UserTest::with(())
            .given(given())
            .when(confirm_change(2, 3))
            .then_expect_events(vec![UserEvent::EmailChanged {
                email: PersonalData::clear("second@example.com"),
                previous_email: PersonalData::clear("alice@example.com"),
                at: t(3),
            }]);
        // Superseded.
        UserTest::with(())
            .given(given())
            .when(confirm_change(1, 3))
            .then_expect_error(UserError::NoSuchRequest);
        // Expired: request 2 was open until minute 17.
        UserTest::with(())
            .given(given())
            .when(confirm_change(2, 17))
            .then_expect_error(UserError::RequestExpired);
        // Used.
        let mut used = given();
        used.push(UserEvent::EmailChanged {
            email: PersonalData::clear("second@example.com"),
            previous_email: PersonalData::clear("alice@example.com"),
            at: t(3),
        });
        UserTest::with(())
            .given(used)
            .when(confirm_change(2, 4))
            .then_expect_error(UserError::NoSuchRequest);
        // Never requested.
        UserTest::with(())
            .given(vec![registered()])
            .when(confirm_change(1, 3))
            .then_expect_error(UserError::NoSuchRequest);
    }

    #[test]
    fn links_mailed_to_the_old_address_stop_working_after_a_change() {
        let given = vec![
            registered(),
            verification_requested(1, 1),
            reset_requested(2, 1),
            change_requested(3, 1, "new@example.com"),
            UserEvent::EmailChanged {
                email: PersonalData::clear("new@example.com"),
                previous_email: PersonalData::clear("alice@example.com"),
                at: t(2),
            },
        ];
        UserTest::with(())
            .given(given.clone())
            .when(reset(2, 3))
            .then_expect_error(UserError::NoSuchRequest);
        UserTest::with(())
            .given(given)
            .when(UserCommand::VerifyEmail {
                request_id: request(1),
                at: t(3),
            })
            .then_expect_error(UserError::NoSuchRequest);
    }

    #[test]
    fn erasure_forgets_a_pending_change() {
        let mut user = User::default();
        user.apply(registered());
        user.apply(change_requested(1, 1, "new@example.com"));
        user.apply(UserEvent::UserErased { at: t(2) });
        assert_eq!(user.pending_email_change, None);
    }

    #[test]
    fn a_registration_attempt_on_a_taken_address_is_recorded_for_its_owner() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::RecordRegistrationAttempt { at: t(1) })
            .then_expect_events(vec![UserEvent::RegistrationAttempted { at: t(1) }]);
    }

    #[test]
    fn erasure_records_only_the_fact() {
        UserTest::with(())
            .given(vec![registered(), failed(1, 1)])
            .when(UserCommand::Erase { at: t(5) })
            .then_expect_events(vec![UserEvent::UserErased { at: t(5) }]);
    }

    #[test]
    fn an_erased_account_refuses_every_command() {
        let erased = || vec![registered(), UserEvent::UserErased { at: t(5) }];
        let commands = vec![
            UserCommand::RecordLoginSuccess {
                session_id: Uuid::from_u128(9),
                rehashed: None,
                trusted_device: false,
                at: t(6),
            },
            UserCommand::RecordLoginFailure {
                policy: policy(),
                unlock_request_id: unlock_request(6),
                at: t(6),
            },
            UserCommand::UnlockWithLink {
                request_id: unlock_request(6),
                at: t(6),
            },
            UserCommand::ChangePassword {
                password_hash: hash(2),
                at: t(6),
            },
            UserCommand::Suspend {
                reason: "x".into(),
                at: t(6),
            },
            UserCommand::GrantPlatformAdmin { at: t(6) },
            UserCommand::Erase { at: t(6) },
            UserCommand::RequestEmailVerification {
                request_id: request(1),
                expires_at: t(60),
                at: t(6),
            },
            UserCommand::RequestPasswordReset {
                request_id: request(1),
                expires_at: t(60),
                at: t(6),
            },
            UserCommand::RecordRegistrationAttempt { at: t(6) },
            UserCommand::RequestEmailChange {
                request_id: request(1),
                new_email: PersonalData::clear("new@example.com"),
                expires_at: t(60),
                at: t(6),
            },
            UserCommand::ConfirmEmailChange {
                request_id: request(1),
                at: t(6),
            },
        ];
        for command in commands {
            UserTest::with(())
                .given(erased())
                .when(command)
                .then_expect_error(UserError::Erased);
        }
        // The id is never reused either.
        UserTest::with(())
            .given(erased())
            .when(UserCommand::Register {
                user_id: id(),
                email: PersonalData::clear("new@example.com"),
                display_name: None,
                password_hash: hash(3),
                at: t(7),
            })
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn an_erased_account_keeps_nothing_personal_in_its_state() {
        let mut user = User::default();
        user.apply(registered());
        user.apply(UserEvent::PlatformAdminGranted { at: t(1) });
        user.apply(UserEvent::UserErased { at: t(2) });
        assert!(user.erased);
        assert_eq!(user.email, None);
        assert_eq!(user.display_name, None);
        assert_eq!(user.password_hash, None);
        assert!(!user.platform_admin);
    }

    #[test]
    fn every_event_type_is_listed() {
        let mut listed: Vec<_> = UserEvent::TYPES.to_vec();
        listed.sort_unstable();
        listed.dedup();
        assert_eq!(listed.len(), UserEvent::TYPES.len());
        assert_eq!(registered().event_type(), "UserRegistered");
    }

    fn email_login_request(n: u128, minute: i64) -> UserEvent {
        UserEvent::EmailLoginRequested {
            request_id: Uuid::from_u128(9000 + n),
            expires_at: t(minute + 10),
            at: t(minute),
        }
    }

    fn complete_email_login(n: u128, by_code: bool, minute: i64) -> UserCommand {
        UserCommand::CompleteEmailLogin {
            request_id: Uuid::from_u128(9000 + n),
            session_id: Uuid::from_u128(77),
            by_code,
            at: t(minute),
        }
    }

    fn wrong_code(n: u128, minute: i64) -> UserCommand {
        UserCommand::RejectEmailLoginCode {
            request_id: Uuid::from_u128(9000 + n),
            policy: policy(),
            unlock_request_id: unlock_request(minute),
            at: t(minute),
        }
    }

    fn email_logged_in(minute: i64) -> UserEvent {
        UserEvent::UserLoggedIn {
            session_id: Uuid::from_u128(77),
            factors: vec![EMAIL_FACTOR.into()],
            at: t(minute),
        }
    }

    fn state_after(events: Vec<UserEvent>) -> User {
        let mut user = User::default();
        for event in events {
            user.apply(event);
        }
        user
    }

    #[test]
    fn a_sign_in_mail_signs_in_once_and_proves_the_address() {
        UserTest::with(())
            .given(vec![registered(), email_login_request(1, 1)])
            .when(complete_email_login(1, false, 2))
            .then_expect_events(vec![
                email_logged_in(2),
                UserEvent::EmailVerified { at: t(2) },
            ]);
        UserTest::with(())
            .given(vec![
                registered(),
                email_login_request(1, 1),
                email_logged_in(2),
                UserEvent::EmailVerified { at: t(2) },
            ])
            .when(complete_email_login(1, true, 3))
            .then_expect_error(UserError::NoSuchRequest);
    }

    #[test]
    fn only_the_newest_sign_in_mail_works_and_only_until_it_expires() {
        UserTest::with(())
            .given(vec![
                registered(),
                email_login_request(1, 1),
                email_login_request(2, 2),
            ])
            .when(complete_email_login(1, false, 3))
            .then_expect_error(UserError::NoSuchRequest);
        UserTest::with(())
            .given(vec![registered(), email_login_request(1, 1)])
            .when(complete_email_login(1, true, 11))
            .then_expect_error(UserError::RequestExpired);
    }

    #[test]
    fn a_wrong_code_counts_towards_the_lockout_like_a_wrong_password() {
        let mut given = vec![registered(), failed(1, 1), failed(2, 2), failed(3, 3)];
        given.push(email_login_request(1, 4));
        UserTest::with(())
            .given(given.clone())
            .when(wrong_code(1, 5))
            .then_expect_events(vec![UserEvent::EmailLoginCodeRejected {
                consecutive_failures: 4,
                at: t(5),
            }]);
        given.push(UserEvent::EmailLoginCodeRejected {
            consecutive_failures: 4,
            at: t(5),
        });
        UserTest::with(())
            .given(given.clone())
            .when(wrong_code(1, 6))
            .then_expect_events(vec![
                UserEvent::EmailLoginCodeRejected {
                    consecutive_failures: 5,
                    at: t(6),
                },
                locked_at(6),
            ]);
        // The lock ends the request: the owner asks for a new mail.
        given.extend([
            UserEvent::EmailLoginCodeRejected {
                consecutive_failures: 5,
                at: t(6),
            },
            locked_at(6),
        ]);
        assert_eq!(state_after(given.clone()).pending_email_login, None);
        given.push(email_login_request(2, 7));
        // While locked the code is refused, and so is guessing it ...
        UserTest::with(())
            .given(given.clone())
            .when(complete_email_login(2, true, 8))
            .then_expect_error(UserError::Locked { until: t(36) });
        UserTest::with(())
            .given(given.clone())
            .when(wrong_code(2, 8))
            .then_expect_error(UserError::Locked { until: t(36) });
        // ... but the link, which cannot be guessed, signs in and ends the lock.
        UserTest::with(())
            .given(given.clone())
            .when(complete_email_login(2, false, 8))
            .then_expect_events(vec![
                email_logged_in(8),
                UserEvent::EmailVerified { at: t(8) },
            ]);
        given.push(email_logged_in(8));
        let user = state_after(given);
        assert_eq!(user.locked_at(t(8)), None);
        assert_eq!(user.consecutive_failures, 0);
    }

    #[test]
    fn a_code_stops_working_after_a_few_wrong_ones_even_below_the_lockout() {
        let lenient = LockoutPolicy {
            max_failures: 100,
            ..policy()
        };
        let mut given = vec![registered(), email_login_request(1, 1)];
        for n in 1..=EMAIL_LOGIN_CODE_ATTEMPTS {
            let rejected = UserEvent::EmailLoginCodeRejected {
                consecutive_failures: n,
                at: t(2),
            };
            UserTest::with(())
                .given(given.clone())
                .when(UserCommand::RejectEmailLoginCode {
                    request_id: Uuid::from_u128(9001),
                    policy: lenient,
                    unlock_request_id: Uuid::nil(),
                    at: t(2),
                })
                .then_expect_events(vec![rejected.clone()]);
            given.push(rejected);
        }
        assert_eq!(state_after(given.clone()).pending_email_login, None);
        UserTest::with(())
            .given(given)
            .when(complete_email_login(1, true, 3))
            .then_expect_error(UserError::NoSuchRequest);
    }

    #[test]
    fn a_suspended_account_gets_no_sign_in_mail_and_cannot_use_one() {
        let suspended = UserEvent::UserSuspended {
            reason: "fraud".into(),
            at: t(2),
        };
        UserTest::with(())
            .given(vec![registered(), suspended.clone()])
            .when(UserCommand::RequestEmailLogin {
                request_id: Uuid::from_u128(9001),
                expires_at: t(13),
                at: t(3),
            })
            .then_expect_error(UserError::Suspended);
        UserTest::with(())
            .given(vec![registered(), email_login_request(1, 1), suspended])
            .when(complete_email_login(1, false, 3))
            .then_expect_error(UserError::Suspended);
    }

    #[test]
    fn a_password_login_leaves_a_pending_sign_in_mail_working() {
        let password_login = UserEvent::UserLoggedIn {
            session_id: Uuid::from_u128(5),
            factors: vec!["pwd".into()],
            at: t(2),
        };
        UserTest::with(())
            .given(vec![
                registered(),
                email_login_request(1, 1),
                password_login,
            ])
            .when(complete_email_login(1, false, 3))
            .then_expect_events(vec![
                email_logged_in(3),
                UserEvent::EmailVerified { at: t(3) },
            ]);
    }
}
