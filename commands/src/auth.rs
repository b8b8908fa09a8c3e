//! The authentication use cases: register, log in, refresh, log out, end a session,
//! pick the organization a session acts in, and the platform administrator's
//! account controls (suspension, platform admin rights).
//!
//! Each method decides what the aggregates must not (clock, hashes, tokens), runs
//! one or two commands, and reports what it wrote so the API can wait for its own
//! writes to be projected before answering.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use keyledger_domain::{
    DisplayName, Email, EmailIndexKey, Field, LockoutPolicy, PasswordHash, PersonalData,
    RevocationReason, SealedPasswordHash, Session, SessionCommand, SessionError, SessionEvent,
    SessionStatus, User, UserCommand, UserError,
};
use uuid::Uuid;

use crate::data_keys::PersonalDataSealer;
use crate::email_registry::{EmailClaims, EmailRegistry};
use crate::hasher::{HashError, HashTurn, PasswordHasher};
use crate::log_lookups::EventLogLookups;
use crate::login_gate::{LoginGate, SprayDetector, SprayPolicy, UnknownAccountThrottle};
use crate::login_timing::LoginTimings;
use crate::password::{BreachRefusal, Password, PasswordPolicy, WeakPassword};
use crate::platform_admins::PlatformAdminGuard;
use crate::store::{
    event_store, execute_together, AggregateStore, Committed, EventRepository, Loaded, Refusal,
    Step, StoreError,
};
use crate::tokens::{AccessScope, RefreshToken, SessionClaims, TokenIssuer};
use keyledger_domain::device_token::DeviceTokenKey;
use keyledger_domain::platform::{
    Platform, PlatformCommand, PlatformError, SuspiciousActivityKind, PLATFORM_ID,
};
use keyledger_domain::second_factor::MfaTokenKey;
use keyledger_domain::MailLinkKey;
use keyledger_storage::Database;

use crate::second_factor::BackupCodeKey;

mod email_change;
mod email_login;
mod federation;
pub mod openid;
mod passkeys;
mod recovery;
mod second_factor;

pub use email_change::MailAddress;
pub use email_login::EmailLoginProof;
pub use federation::{random_secret, ExternalIdentityView, FederatedProfile, FederationDone};
pub use passkeys::{PasskeyAdded, PasskeyOptions, PasskeySignUp, PasskeyView};
pub use recovery::{EmailVerification, MailRecipient, ResetOutcome};
pub use second_factor::{
    BackupCodesIssued, NewSecondFactor, SecondFactorChallenge, SecondFactorConfirmed,
    SecondFactorMethod, SecondFactors, SignIn, TextRecipient, TotpEnrolment,
};

/// Rules from configuration.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub lockout: LockoutPolicy,
    /// Absolute lifetime of a session (and so of its refresh tokens).
    pub session_ttl: Duration,
    pub password_policy: PasswordPolicy,
    /// How recent the caller's password check (the login that started the session)
    /// must be for an action against another administrator, or an administrator's
    /// own erasure: a stolen session alone must not be enough to lock out the
    /// platform's administrators.
    pub reauthentication_window: Duration,
    /// A session not refreshed (or, never refreshed, started) within this long
    /// can no longer be refreshed; `None`: only the absolute lifetime applies.
    pub session_idle_timeout: Option<Duration>,
    /// How long after a rotation the token it rotated may be presented again as
    /// a retry of a refresh whose answer was lost (see `SessionCommand::Refresh`).
    pub refresh_reuse_grace: Duration,
    /// Live sessions one account may have; a login beyond it ends the oldest
    /// (0: no cap). Bounds what a leaked password, or a client that logs in on
    /// every start, can pile up.
    pub max_sessions_per_user: usize,
    /// Password-spraying detection per client address.
    pub spraying: SprayPolicy,
    /// Progressive delay before the hard lock: the answer to the third
    /// consecutive failure waits this long, each later one twice as long as the
    /// one before, until the lockout; zero turns it off.
    pub failure_delay: std::time::Duration,
    /// Whether addresses are verified by mail, and whether login waits for it.
    pub email_verification: EmailVerification,
    /// How long a mailed verification link works.
    pub verification_ttl: Duration,
    /// How long a mailed password-reset link works.
    pub reset_ttl: Duration,
    /// The least time between two mails of one kind to one account (a new
    /// request within it is accepted and ignored), so that nobody can flood an
    /// inbox through the forms that ask for a mail.
    pub mail_interval: Duration,
    /// Whether an account can sign in with a link or code mailed to its address.
    pub email_login: bool,
    /// How long a mailed sign-in link and code work.
    pub email_login_ttl: Duration,
    /// How long a login may wait for its second factor (the `mfa_token`'s life).
    pub mfa_token_ttl: Duration,
    /// The issuer authenticator apps show beside the account's codes.
    pub totp_issuer: String,
    /// Whom passkeys are made for (RP id, name, allowed origins).
    pub relying_party: crate::passkeys::RelyingParty,
    /// How long a WebAuthn ceremony may take between its start and finish.
    pub passkey_ceremony_ttl: Duration,
    /// How long a sign-in or link may take at a provider (the `state`'s life).
    pub federation_flow_ttl: Duration,
    /// How long the one-time code of a provider's sign-in works.
    pub federation_code_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            lockout: LockoutPolicy::default(),
            session_ttl: Duration::days(30),
            password_policy: PasswordPolicy::default(),
            reauthentication_window: Duration::minutes(5),
            session_idle_timeout: None,
            refresh_reuse_grace: Duration::seconds(10),
            max_sessions_per_user: 0,
            spraying: SprayPolicy::default(),
            failure_delay: std::time::Duration::from_secs(1),
            email_verification: EmailVerification::Optional,
            verification_ttl: Duration::hours(24),
            reset_ttl: Duration::minutes(15),
            mail_interval: Duration::seconds(60),
            email_login: false,
            email_login_ttl: Duration::minutes(10),
            mfa_token_ttl: Duration::minutes(5),
            totp_issuer: "Keyledger".to_owned(),
            relying_party: crate::passkeys::RelyingParty::default(),
            passkey_ceremony_ttl: Duration::minutes(5),
            federation_flow_ttl: Duration::minutes(10),
            federation_code_ttl: Duration::seconds(60),
        }
    }
}

/// Facts about the request, captured once at the HTTP edge and stored as event
/// metadata (the audit trail's who, from where and when; the address and user
/// agent sealed, see [`PersonalDataSealer::metadata`]).
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The authenticated caller, when there is one.
    pub actor: Option<Uuid>,
}

/// What an erasure did: the events to wait for, and the sessions it ended.
#[derive(Debug, Default)]
pub struct UserErasure {
    pub ended_sessions: Vec<Uuid>,
    pub written: Vec<Written>,
}

/// Registration input that passed every check that depends on the input alone
/// (see `AuthService::check_new_account`).
pub struct NewAccount {
    email: Email,
    display_name: Option<DisplayName>,
    password: Password,
}

fn seal_identity(
    key: &keyledger_domain::DataKey,
    user_id: Uuid,
    email: &Email,
    display_name: Option<&DisplayName>,
) -> (PersonalData, Option<PersonalData>) {
    (
        key.seal(user_id, Field::Email, email.as_str()),
        display_name.map(|name| key.seal(user_id, Field::DisplayName, name.as_str())),
    )
}

/// A new account's personal fields, sealed (see `AuthService::seal_new_account`).
struct SealedAccount {
    email: PersonalData,
    display_name: Option<PersonalData>,
    password_hash: SealedPasswordHash,
}

/// An event the caller may want to see projected before answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub sequence: usize,
}

pub(crate) fn written<A: cqrs_es::Aggregate>(
    id: impl ToString,
    committed: &Committed<A>,
) -> Option<Written> {
    committed.last_sequence().map(|sequence| Written {
        aggregate_type: A::TYPE,
        aggregate_id: id.to_string(),
        sequence,
    })
}

/// Tokens handed to a client. The refresh token is shown here and never again.
#[derive(Debug)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: RefreshToken,
    pub expires_in: u64,
    pub session_id: Uuid,
    pub user_id: Uuid,
}

pub struct LoginOutcome {
    pub tokens: TokenPair,
    pub written: Vec<Written>,
    /// Older sessions the login ended to stay within the per-user cap.
    pub ended_sessions: Vec<Uuid>,
    /// Proof for this client's next logins that it logged in to this account
    /// before (see `keyledger_domain::device_token`): shown to the client only.
    pub device_token: String,
}

pub struct Registered {
    pub user_id: Uuid,
    pub email: Email,
    pub written: Written,
}

/// One account from another system, as `keyledger users import` reads it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportedAccount {
    pub email: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    /// The old system's hash (see `crate::legacy_hash` for the accepted forms).
    pub password_hash: String,
}

impl std::fmt::Debug for ImportedAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedAccount")
            .field("email_verified", &self.email_verified)
            .finish_non_exhaustive()
    }
}

/// What importing one account did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    Imported(Uuid),
    /// The address is already taken (imported by an earlier run, or registered).
    AlreadyPresent,
}

/// Why one account was not imported; nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("email address is not valid")]
    InvalidEmail,
    #[error("display name must be 1 to 100 printable characters")]
    InvalidDisplayName,
    /// The address is claimed by a registration that has not landed (yet); the
    /// claim is taken over once stale, so a later run imports the line.
    #[error("the address is held by an unfinished registration; run the import again later")]
    ClaimPending,
    #[error(transparent)]
    Hash(#[from] crate::legacy_hash::MalformedHash),
    #[error(transparent)]
    Write(#[from] AuthError),
}

/// Where the write side learns a user's current roles in an organization.
///
/// Memberships live in Organization aggregates, but a token is issued on every
/// refresh: replaying organizations there would be far too slow. The API keeps an
/// access view of memberships and answers from it, so a scoped token reflects the
/// roles as projected at issue time.
pub trait MembershipLookup: Send + Sync {
    /// The member's role labels (`RoleRef::label`), or `None` when the user is not
    /// a member, or the organization or the user is suspended: in all of those
    /// cases no token may be scoped to the organization.
    fn roles(&self, user_id: Uuid, organization_id: Uuid) -> Option<Vec<String>>;

    /// Whether `organization_id` requires its members to have a second factor
    /// (its `mfa` setting is `required`). From the same view: a refresh asks it
    /// for every scoped session and loads the account only when it says yes.
    fn requires_second_factor(&self, organization_id: Uuid) -> bool;
}

/// Where the write side learns whether an account's address is verified, for
/// the `email_verified` claim of the tokens a refresh or an organization switch
/// issues: from the in-memory view every node keeps (a refresh is a hot path).
pub trait VerifiedAddresses: Send + Sync {
    fn is_verified(&self, user_id: Uuid) -> bool;
}

/// Where the write side learns the platform's session cut-off (sessions started
/// before it have ended, see `keyledger_domain::platform`).
///
/// Refreshing is a hot path: the API answers from the in-memory view every node
/// keeps for token validation, so a refresh and a validation refuse the same
/// sessions, at the same moment on each node.
pub trait SessionCutoffLookup: Send + Sync {
    /// Whether a session that started at `started_at` was ended by the cut-off.
    fn is_cut_off(&self, started_at: DateTime<Utc>) -> bool;
}

/// The platform's session cut-off after [`AuthService::revoke_sessions_before`].
#[derive(Debug)]
pub struct SessionsCutOff {
    /// The cut-off in force: the one asked for, or a later one already recorded.
    pub before: DateTime<Utc>,
    /// When the request was handled: the event's time when one was written.
    pub at: DateTime<Utc>,
    /// `None` when an equal or later cut-off was already in force.
    pub written: Option<Written>,
}

/// The answer to [`AuthService::select_organization`]: an access token for the
/// same session, scoped as asked. The refresh token is unchanged.
#[derive(Debug)]
pub struct SelectedOrganization {
    pub access_token: String,
    pub expires_in: u64,
    pub organization_id: Option<Uuid>,
    pub roles: Vec<String>,
    /// `None` when the session was already scoped that way.
    pub written: Option<Written>,
}

/// What suspending an account did.
#[derive(Debug)]
pub struct UserSuspension {
    /// Sessions revoked because of it.
    pub ended_sessions: Vec<Uuid>,
    pub written: Vec<Written>,
}

/// What ending every session of an account ("log out everywhere") did.
#[derive(Debug, Default)]
pub struct SessionsEnded {
    /// The sessions it ended (not those that had already ended).
    pub ended_sessions: Vec<Uuid>,
    pub written: Vec<Written>,
}

/// What a password change did besides replacing the password.
#[derive(Debug)]
pub struct PasswordChange {
    /// The account's other sessions, ended by it.
    pub ended_sessions: Vec<Uuid>,
    pub written: Vec<Written>,
}

/// The `amr` value (RFC 8176) of a password.
pub const PASSWORD_FACTOR: &str = "pwd";

/// The longest reason kept for a suspension; it goes into the audit trail, which
/// should not be a place to store documents.
pub const MAX_REASON_CHARS: usize = 500;

/// A free-text reason as recorded: trimmed, without control characters (they
/// would reach terminals and log viewers), and at most [`MAX_REASON_CHARS`].
pub(crate) fn audit_reason(raw: &str) -> String {
    let printable: String = raw.chars().filter(|c| !c.is_control()).collect();
    printable.trim().chars().take(MAX_REASON_CHARS).collect()
}

/// Outcomes a caller must tell apart. Messages are safe to show.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("email address is not valid")]
    InvalidEmail,
    #[error("display name must be 1 to 100 printable characters")]
    InvalidDisplayName,
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error(transparent)]
    WeakPassword(WeakPassword),
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("too many failed attempts")]
    TooManyAttempts { retry_after: std::time::Duration },
    #[error("the server is busy, try again shortly")]
    Overloaded,
    /// This client already has its share of the password-hashing pool in use.
    #[error("too many password checks from this address at once, try again shortly")]
    TooManyConcurrentAttempts,
    #[error("the refresh token is not valid")]
    InvalidRefreshToken,
    #[error("the refresh token was already used; the session has been revoked")]
    RefreshTokenReused {
        session_id: Uuid,
        written: Option<Written>,
    },
    #[error("no such session")]
    SessionNotFound,
    /// Not a member of that organization, or it does not exist, or it (or the
    /// account) is suspended: the caller cannot tell which.
    #[error("no such organization")]
    OrganizationNotFound,
    /// Only ever answered to a caller who gave the right password.
    #[error("the account is suspended")]
    AccountSuspended,
    #[error("no such account")]
    UserNotFound,
    #[error("the account is being changed concurrently, try again")]
    Conflict,
    /// The change would leave the platform without an active administrator.
    #[error("the platform's last active administrator cannot be removed")]
    LastAdmin,
    /// The caller's last password check is too long ago for this action.
    #[error("sign in again to confirm this action")]
    ReauthenticationRequired,
    /// A session cut-off further in the future than clocks can differ.
    #[error("the cut-off may not lie in the future")]
    CutoffInFuture,
    /// Only ever answered to a caller who gave the right password.
    #[error("the email address is not verified yet; follow the link mailed to it")]
    EmailNotVerified,
    /// A mailed link's token that is forged, used, superseded or expired, or a
    /// wrong sign-in code.
    #[error("the link or code is not valid (used, expired, replaced by a newer one, or mistyped)")]
    InvalidToken,
    /// Sign-in by email is not turned on (`KEYLEDGER_EMAIL_LOGIN`).
    #[error("sign-in by email is not available on this server")]
    EmailLoginOff,
    /// An `mfa_token` that is forged, expired, used, superseded by a newer
    /// login, out of attempts, or ended by a lock: the login starts again.
    #[error("the sign-in step is no longer valid; sign in again")]
    InvalidMfaToken,
    /// A second-factor code that is wrong or already used (which part was
    /// wrong is not told).
    #[error("the code is not valid")]
    InvalidCode,
    #[error("no such second factor")]
    SecondFactorNotFound,
    #[error("the account has no confirmed second factor")]
    NoSecondFactor,
    #[error("the account has as many second factors as it may")]
    TooManySecondFactors,
    #[error("the phone number must be in international form: + and 8 to 15 digits")]
    InvalidPhone,
    /// The organization requires a second factor and the account has none
    /// confirmed: set one up (`POST /v1/mfa/setup`) and sign in with it.
    #[error("this organization requires a second factor; set one up and sign in with it")]
    MfaEnrollmentRequired,
    /// A passkey ceremony's `challenge_id` that is unknown, used or expired.
    #[error("the passkey challenge is not valid (used, expired or unknown); start again")]
    InvalidChallenge,
    /// A passkey's answer that did not verify: wrong origin or RP id, a
    /// signature that does not match, a credential of no (or another) account,
    /// a counter that went backwards. Which one is not told.
    #[error("the passkey could not be verified")]
    InvalidPasskey,
    /// A credential already registered (to this account or another).
    #[error("this passkey is already registered")]
    PasskeyAlreadyRegistered,
    #[error("no such passkey")]
    PasskeyNotFound,
    #[error("the account has as many passkeys as it may")]
    TooManyPasskeys,
    #[error("a passkey name must be 1 to 100 printable characters")]
    InvalidPasskeyName,
    /// Removing it would leave the account no way to sign in.
    #[error("this is the account's last way to sign in; add another first")]
    LastWayToSignIn,
    /// A provider's callback whose `state` is unknown, used, expired, another
    /// provider's, or came to a browser other than the one that started it.
    #[error("the sign-in with the provider is not valid (used, expired or started elsewhere); start again")]
    InvalidState,
    /// The provider's address has an account here that may not be linked
    /// automatically (one side did not verify the address): sign in to it and
    /// link the provider from there.
    #[error("an account with this address exists; sign in to it and link the provider there")]
    AccountExists,
    /// The provider's identity is linked to another account.
    #[error("this identity is linked to another account")]
    IdentityInUse,
    #[error("the account already has an identity of this provider")]
    ProviderAlreadyLinked,
    #[error("the account has as many linked identities as it may")]
    TooManyExternalIdentities,
    #[error("no such linked identity")]
    ExternalIdentityNotFound,
    /// A first sign-in needs an address, and the provider gave none.
    #[error("the provider did not share an email address; allow it and try again")]
    ProviderEmailMissing,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Overloaded => Self::Overloaded,
            HashError::ClientBusy => Self::TooManyConcurrentAttempts,
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<BreachRefusal> for AuthError {
    fn from(e: BreachRefusal) -> Self {
        match e {
            BreachRefusal::Breached(weak) => Self::WeakPassword(weak),
            BreachRefusal::Unavailable => {
                Self::Unavailable("the breached-password check is unavailable".into())
            }
        }
    }
}

impl From<sqlx::Error> for AuthError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

fn store_error<E: std::error::Error>(
    e: StoreError<E>,
    rejected: impl FnOnce(E) -> AuthError,
) -> AuthError {
    match e {
        StoreError::Rejected(inner) => rejected(inner),
        StoreError::Conflict => AuthError::Conflict,
        StoreError::Unavailable(why) => AuthError::Unavailable(why),
    }
}

/// What a password must not be built from: the address, its local part, the name.
fn personal_inputs<'a>(email: &'a Email, display_name: Option<&'a DisplayName>) -> Vec<&'a str> {
    let local_part = email.as_str().split('@').next().unwrap_or_default();
    let mut inputs = vec![email.as_str(), local_part];
    inputs.extend(display_name.map(DisplayName::as_str));
    inputs
}

fn retry_after(until: DateTime<Utc>, now: DateTime<Utc>) -> AuthError {
    let secs = (until - now).num_seconds().max(1) as u64;
    AuthError::TooManyAttempts {
        retry_after: std::time::Duration::from_secs(secs),
    }
}

/// The write side's account use cases. Personal fields reach events only sealed
/// (`keys`), and addresses are looked up through their keyed digest (`emails`).
pub struct AuthService {
    log: EventLogLookups,
    /// The event log itself, for a login's commit of its account's and its
    /// session's events together.
    events: EventRepository,
    users: AggregateStore<User>,
    sessions: AggregateStore<Session>,
    platform: AggregateStore<Platform>,
    /// Keys the digest of client addresses in recorded detections.
    address_digest_key: [u8; 32],
    emails: EmailClaims,
    keys: Arc<PersonalDataSealer>,
    memberships: OnceLock<Arc<dyn MembershipLookup>>,
    cutoff: OnceLock<Arc<dyn SessionCutoffLookup>>,
    verified: OnceLock<Arc<dyn VerifiedAddresses>>,
    hasher: PasswordHasher,
    tokens: Arc<TokenIssuer>,
    gate: LoginGate,
    unknown: UnknownAccountThrottle,
    /// Signs and checks device tokens.
    devices: DeviceTokenKey,
    /// Failures from trusted devices, counted per account and device (keyed
    /// `"{user_id}/{device_id}"`): a trusted device locks only itself out. Per
    /// process and in memory, like `unknown`.
    device_failures: UnknownAccountThrottle,
    spray: SprayDetector,
    /// What a real account's failed login costs beyond an unknown one's, for the
    /// unknown-email path to spend too (see `login_timing`).
    timing: LoginTimings,
    settings: AuthSettings,
    admins: PlatformAdminGuard,
    /// Signs and opens the tokens of mailed links.
    links: MailLinkKey,
    /// Makes and opens the `mfa_token` of logins waiting for a second factor.
    mfa_tokens: MfaTokenKey,
    /// Digests backup codes.
    backup_codes: BackupCodeKey,
    /// WebAuthn ceremonies between start and finish.
    ceremonies: crate::passkeys::Ceremonies,
    /// Which account holds which credential id.
    passkey_claims: crate::passkeys::PasskeyClaims,
    /// Makes the stand-in credential ids of a sign-in naming an address
    /// without passkeys (so the answer does not tell).
    passkey_decoys: [u8; 32],
    /// Sign-ins and links on their way through a provider, and their one-time
    /// codes.
    oauth_flows: crate::federation::OAuthFlows,
    /// Which account holds which identity at which provider.
    identity_claims: crate::federation::IdentityClaims,
    /// Provider tokens kept for providers configured to keep them.
    kept_tokens: crate::federation::KeptTokens,
    /// Keys the CSRF tokens of cookie sessions (see [`AuthService::csrf_token`]).
    csrf_key: [u8; 32],
}

impl AuthService {
    /// The account use cases over `storage`'s event log and registries.
    pub fn new(
        storage: &Database,
        hasher: PasswordHasher,
        tokens: Arc<TokenIssuer>,
        settings: AuthSettings,
        keys: Arc<PersonalDataSealer>,
        email_index: EmailIndexKey,
    ) -> Self {
        let links = MailLinkKey::new(email_index.derive("mail links"));
        let mfa_tokens = MfaTokenKey::new(email_index.derive("mfa tokens"));
        let backup_codes = BackupCodeKey::new(email_index.derive("backup codes"));
        Self {
            log: EventLogLookups::new(storage),
            events: EventRepository::new(storage),
            users: AggregateStore::new(event_store(storage), ()),
            sessions: AggregateStore::new(event_store(storage), ()),
            platform: AggregateStore::new(event_store(storage), ()),
            address_digest_key: email_index.derive("client address digests"),
            devices: DeviceTokenKey::new(email_index.derive("device tokens")),
            device_failures: UnknownAccountThrottle::default(),
            spray: SprayDetector::new(settings.spraying),
            emails: EmailClaims::new(storage, email_index.clone()),
            keys,
            memberships: OnceLock::new(),
            cutoff: OnceLock::new(),
            verified: OnceLock::new(),
            hasher,
            tokens,
            gate: LoginGate::default(),
            unknown: UnknownAccountThrottle::default(),
            timing: LoginTimings::default(),
            links,
            mfa_tokens,
            backup_codes,
            ceremonies: crate::passkeys::Ceremonies::new(storage),
            passkey_claims: crate::passkeys::PasskeyClaims::new(
                storage,
                email_index.derive("passkey credential ids"),
            ),
            passkey_decoys: email_index.derive("passkey decoy credential ids"),
            oauth_flows: crate::federation::OAuthFlows::new(storage),
            identity_claims: crate::federation::IdentityClaims::new(
                storage,
                email_index.derive("external identity subjects"),
            ),
            kept_tokens: crate::federation::KeptTokens::new(storage),
            csrf_key: email_index.derive("csrf tokens"),
            settings,
            admins: PlatformAdminGuard::new(storage),
        }
    }

    pub fn tokens(&self) -> &TokenIssuer {
        &self.tokens
    }

    /// The CSRF token of session `session_id` in cookie mode: an HMAC of the
    /// session id under a server key. A browser's script reads it from its
    /// cookie (or the sign-in's answer) and sends it in a header; another site
    /// can neither read it nor make one, and it needs no storage. It lives as
    /// long as its session (a refresh keeps it).
    pub fn csrf_token(&self, session_id: Uuid) -> String {
        use base64::Engine;
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.csrf_key)
            .expect("HMAC takes any key length");
        mac.update(session_id.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Connects the membership view, once: the API builds it after this service
    /// (it is fed by the projections). Until then nobody counts as a member, so
    /// no scoped token is issued. A second call is ignored.
    pub fn set_memberships(&self, lookup: Arc<dyn MembershipLookup>) {
        let _ = self.memberships.set(lookup);
    }

    /// Connects the session cut-off view, once, like [`Self::set_memberships`].
    /// Until then no cut-off is known.
    pub fn set_session_cutoff(&self, lookup: Arc<dyn SessionCutoffLookup>) {
        let _ = self.cutoff.set(lookup);
    }

    /// Connects the view of verified addresses, once, like
    /// [`Self::set_memberships`]. Until then no address counts as verified.
    pub fn set_verified_addresses(&self, lookup: Arc<dyn VerifiedAddresses>) {
        let _ = self.verified.set(lookup);
    }

    /// Whether `user_id`'s address is verified, from memory (refreshing is a hot
    /// path), for the access token's claim.
    fn is_verified(&self, user_id: Uuid) -> bool {
        self.verified.get().is_some_and(|v| v.is_verified(user_id))
    }

    fn is_cut_off(&self, started_at: DateTime<Utc>) -> bool {
        self.cutoff.get().is_some_and(|c| c.is_cut_off(started_at))
    }

    /// Refuses a session that authenticated with `factors` a token scoped to
    /// `organization_id` when the organization requires a second factor: the
    /// account has none (`MfaEnrollmentRequired`), or the session did not prove
    /// it (`ReauthenticationRequired`: sign in with it, or step up). Loads the
    /// account only for such an organization.
    async fn require_organization_second_factor(
        &self,
        user_id: Uuid,
        organization_id: Uuid,
        factors: &[String],
    ) -> Result<(), AuthError> {
        let required = self
            .memberships
            .get()
            .is_some_and(|m| m.requires_second_factor(organization_id));
        if !required {
            return Ok(());
        }
        if !self.has_second_factor(user_id).await? {
            return Err(AuthError::MfaEnrollmentRequired);
        }
        if !factors.iter().any(|f| f == keyledger_domain::MFA_FACTOR) {
            return Err(AuthError::ReauthenticationRequired);
        }
        Ok(())
    }

    /// The scope a token of `user_id` may carry in `organization_id`, if any.
    fn scope_for(&self, user_id: Uuid, organization_id: Uuid) -> Option<AccessScope> {
        let roles = self.memberships.get()?.roles(user_id, organization_id)?;
        Some(AccessScope {
            organization_id,
            roles,
        })
    }

    pub async fn register(
        &self,
        email: &str,
        password: Password,
        display_name: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<Registered, AuthError> {
        let account = self
            .check_new_account(email, password, display_name)
            .await?;
        self.register_checked(account, ctx).await
    }

    /// A turn in the hashing pool for the client of `ctx`, asked for before
    /// answering a request whose hash runs after the answer: refused (429
    /// `too_many_concurrent_attempts`) while the client has its share in use,
    /// whatever the request is about, so the refusal tells nothing either.
    pub fn hashing_turn(&self, ctx: &RequestContext) -> Result<HashTurn, AuthError> {
        Ok(self.hasher.admit(ctx.ip.as_deref())?)
    }

    /// What registration refuses whatever accounts exist: a malformed address or
    /// name, a weak or breached password. Its answer and its time depend on the
    /// input only.
    pub async fn check_new_account(
        &self,
        email: &str,
        password: Password,
        display_name: Option<&str>,
    ) -> Result<NewAccount, AuthError> {
        let email = Email::parse(email).map_err(|_| AuthError::InvalidEmail)?;
        let display_name = display_name
            .map(DisplayName::parse)
            .transpose()
            .map_err(|_| AuthError::InvalidDisplayName)?;
        self.settings
            .password_policy
            .check(&password, &personal_inputs(&email, display_name.as_ref()))
            .map_err(AuthError::WeakPassword)?;
        self.settings
            .password_policy
            .check_not_breached(&password)
            .await?;
        Ok(NewAccount {
            email,
            display_name,
            password,
        })
    }

    /// Registers an account whose input passed [`Self::check_new_account`].
    pub async fn register_checked(
        &self,
        account: NewAccount,
        ctx: &RequestContext,
    ) -> Result<Registered, AuthError> {
        let user_id = Uuid::new_v4();
        if !self.emails.claim(&account.email, user_id).await? {
            return Err(AuthError::EmailTaken);
        }
        self.register_claimed_or_release(user_id, account, None, ctx)
            .await
    }

    /// Registers `account` under `user_id`, whose address is claimed for it,
    /// hashing its password in `turn` of the hashing pool (or in one asked for
    /// now); a failure gives the claim up.
    async fn register_claimed_or_release(
        &self,
        user_id: Uuid,
        account: NewAccount,
        turn: Option<HashTurn>,
        ctx: &RequestContext,
    ) -> Result<Registered, AuthError> {
        let NewAccount {
            email,
            display_name,
            password,
        } = account;
        let result = self
            .register_claimed(user_id, email.clone(), display_name, &password, turn, ctx)
            .await;
        if result.is_err() {
            // Best effort: a claim left behind is taken over once stale.
            let _ = self.emails.release(&email, user_id).await;
        }
        result
    }

    async fn register_claimed(
        &self,
        user_id: Uuid,
        email: Email,
        display_name: Option<DisplayName>,
        password: &Password,
        turn: Option<HashTurn>,
        ctx: &RequestContext,
    ) -> Result<Registered, AuthError> {
        // Unless given, asked for once the address is claimed: a lost race for
        // the address (409) costs no hash, so it takes no turn either.
        let hashing = match turn {
            Some(turn) => turn,
            None => self.hasher.admit(ctx.ip.as_deref())?,
        };
        let password_hash = self.hasher.hash(password).await?;
        drop(hashing);
        let at = Utc::now();
        let sealed = self
            .seal_new_account(user_id, &email, display_name.as_ref(), &password_hash)
            .await?;
        let command = UserCommand::Register {
            user_id,
            email: sealed.email,
            display_name: sealed.display_name,
            password_hash: sealed.password_hash,
            at,
        };
        let committed = self
            .users
            .execute_new(
                &user_id.to_string(),
                command,
                &self.keys.metadata(ctx, at, Some(user_id), None).await?,
            )
            .await
            .map_err(|e| store_error(e, |_| AuthError::EmailTaken))?;
        let written = written(user_id, &committed).ok_or(AuthError::Conflict)?;
        Ok(Registered {
            user_id,
            email,
            written,
        })
    }

    /// `password` hashed in the client's turn of the hashing pool and sealed with
    /// `user_id`'s data key, as a new password is stored; `None` when the key is
    /// gone (the account was erased).
    async fn hash_sealed(
        &self,
        user_id: Uuid,
        password: &Password,
        ctx: &RequestContext,
    ) -> Result<Option<SealedPasswordHash>, AuthError> {
        let hashing = self.hasher.admit(ctx.ip.as_deref())?;
        let password_hash = self.hasher.hash(password).await?;
        drop(hashing);
        Ok(self
            .keys
            .seal_password_hash(user_id, &password_hash)
            .await?)
    }

    /// A new account's personal fields sealed with its data key, as registration
    /// and import store them.
    async fn seal_new_account(
        &self,
        user_id: Uuid,
        email: &Email,
        display_name: Option<&DisplayName>,
        password_hash: &PasswordHash,
    ) -> Result<SealedAccount, AuthError> {
        let key = self.new_account_key(user_id).await?;
        let (email, display_name) = seal_identity(&key, user_id, email, display_name);
        Ok(SealedAccount {
            email,
            display_name,
            password_hash: SealedPasswordHash::seal(&key, user_id, password_hash),
        })
    }

    /// A new account's address and name sealed with its data key, as every
    /// registration stores them (with a password or a passkey).
    pub(crate) async fn seal_new_identity(
        &self,
        user_id: Uuid,
        email: &Email,
        display_name: Option<&DisplayName>,
    ) -> Result<(PersonalData, Option<PersonalData>), AuthError> {
        let key = self.new_account_key(user_id).await?;
        Ok(seal_identity(&key, user_id, email, display_name))
    }

    async fn new_account_key(&self, user_id: Uuid) -> Result<keyledger_domain::DataKey, AuthError> {
        // A fresh id has no tombstone, so its key is always there.
        self.keys.key_for(user_id).await?.ok_or(AuthError::Conflict)
    }

    /// Moves in one account from another system (`keyledger users import`): claims
    /// the address, then writes `UserRegistered` and `UserImported` in one commit
    /// with the old system's hash sealed like any other, so a line is either wholly
    /// imported or not at all. An address already claimed is
    /// [`ImportOutcome::AlreadyPresent`] (a re-run skips what an earlier run
    /// imported). The first successful login re-hashes the password with Argon2id.
    pub async fn import_user(
        &self,
        account: &ImportedAccount,
        ctx: &RequestContext,
    ) -> Result<ImportOutcome, ImportError> {
        let email = Email::parse(&account.email).map_err(|_| ImportError::InvalidEmail)?;
        let display_name = account
            .display_name
            .as_deref()
            .map(DisplayName::parse)
            .transpose()
            .map_err(|_| ImportError::InvalidDisplayName)?;
        let scheme = crate::legacy_hash::format_of(&account.password_hash)?;
        let password_hash = PasswordHash::new(account.password_hash.clone());

        let user_id = Uuid::new_v4();
        if !self
            .emails
            .claim(&email, user_id)
            .await
            .map_err(AuthError::from)?
        {
            // A claim whose registration never landed (an import or registration
            // cut short) is no account: say so rather than skip the line for good.
            return match self.find_user_id(email.as_str()).await? {
                Some(_) => Ok(ImportOutcome::AlreadyPresent),
                None => Err(ImportError::ClaimPending),
            };
        }
        let result = async {
            let at = Utc::now();
            let sealed = self
                .seal_new_account(user_id, &email, display_name.as_ref(), &password_hash)
                .await?;
            let command = UserCommand::Import {
                user_id,
                email: sealed.email,
                display_name: sealed.display_name,
                password_hash: sealed.password_hash,
                email_verified: account.email_verified,
                scheme: scheme.to_owned(),
                at,
            };
            self.users
                .execute_new(
                    &user_id.to_string(),
                    command,
                    &self.keys.metadata(ctx, at, None, Some(user_id)).await?,
                )
                .await
                .map_err(|e| store_error(e, |_| AuthError::EmailTaken))?;
            Ok::<_, AuthError>(())
        }
        .await;
        match result {
            Ok(()) => Ok(ImportOutcome::Imported(user_id)),
            Err(e) => {
                // Best effort: a claim left behind is taken over once stale.
                let _ = self.emails.release(&email, user_id).await;
                Err(e.into())
            }
        }
    }

    /// A login from a client without a device token.
    pub async fn login(
        &self,
        email: &str,
        password: Password,
        ctx: &RequestContext,
    ) -> Result<SignIn, AuthError> {
        self.login_from_device(email, password, None, ctx).await
    }

    /// One password check at most per attempt, none while locked, and the same
    /// answer (and about the same time) whether or not the account exists.
    ///
    /// A `device_token` issued by an earlier login to this account makes the
    /// client trusted: the account's lockout (which failures from anywhere can
    /// start) does not bar it; its own failures lock only itself out. A token
    /// that does not verify for this account is ignored.
    pub async fn login_from_device(
        &self,
        email: &str,
        password: Password,
        device_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<SignIn, AuthError> {
        let policy = self.settings.lockout;
        let Ok(email) = Email::parse(email) else {
            // No account can have this address (registration parses it the same
            // way), so answering at once reveals nothing about accounts, and a
            // flood of malformed addresses costs no hashing time at all.
            metrics::counter!("keyledger_logins_total", "outcome" => "malformed_email")
                .increment(1);
            return Err(AuthError::InvalidCredentials);
        };
        let _turn = self.gate.enter(email.as_str()).await;

        let sprayer = ctx
            .ip
            .as_deref()
            .and_then(|ip| self.spray.throttled_until(ip, Utc::now()));
        let Some(user_id) = self.emails.lookup(&email).await? else {
            if let Some(until) = sprayer {
                return Err(self.refuse_sprayer(until));
            }
            return self.fail_unknown(&email, &password, ctx, false).await;
        };
        let device = device_token.and_then(|token| self.devices.verify(token, user_id));
        if let (Some(until), None) = (sprayer, device) {
            // A trusted device behind the same address (an office's NAT) still
            // gets in.
            return Err(self.refuse_sprayer(until));
        }
        let device_key = device.map(|device| format!("{user_id}/{device}"));
        let loading = Instant::now();
        let mut loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        if device.is_none() && loaded.aggregate().locked_at(Utc::now()).is_some() {
            // A refusal commits nothing, so nothing would notice that an unlock
            // written elsewhere (another node, `keyledger admin unlock`) moved
            // past this process's cached copy: a lockout is confirmed from the
            // stored history before it refuses.
            loaded = self
                .users
                .load_fresh(&user_id.to_string())
                .await
                .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        }
        self.timing.load.record(loading.elapsed());
        // A claim whose registration has not landed (yet) is no account.
        if !loaded.aggregate().is_registered() {
            return self.fail_unknown(&email, &password, ctx, true).await;
        }
        let user = loaded.aggregate().clone();

        let now = Utc::now();
        let locked = match &device_key {
            Some(key) => self.device_failures.locked_until(key, now),
            None => user.locked_at(now),
        };
        if let Some(until) = locked {
            metrics::counter!("keyledger_logins_total", "outcome" => "locked").increment(1);
            return Err(retry_after(until, now));
        }
        let Some(stored) = user.password_hash.as_ref() else {
            // An account that signs in with passkeys only: the same work and
            // answer as a wrong password, so nothing tells it has no password.
            let _hashing = self.hasher.admit(ctx.ip.as_deref())?;
            self.hasher.verify_dummy(&password).await?;
            return Err(AuthError::InvalidCredentials);
        };
        let hashing = self.hasher.admit(ctx.ip.as_deref())?;
        let Some(stored) = self.keys.open_password_hash(user_id, stored).await? else {
            // Sealed for a key that is gone: nothing can match.
            self.hasher.verify_dummy(&password).await?;
            return Err(AuthError::InvalidCredentials);
        };
        let verification = self.hasher.verify(&password, &stored).await?;
        let at = Utc::now();
        if !verification.matches {
            drop(hashing);
            if let Some(key) = &device_key {
                // Counted against this device only, still within the turn.
                let locked = self.device_failures.record_failure(key, at, policy);
                metrics::counter!("keyledger_logins_total", "outcome" => "invalid_credentials")
                    .increment(1);
                if locked.is_some() {
                    metrics::counter!("keyledger_lockouts_total").increment(1);
                }
                let failures = self.device_failures.failures(key, at);
                tokio::time::sleep(self.failure_pause(failures)).await;
                return Err(AuthError::InvalidCredentials);
            }
            self.watch_for_spraying(&email, &password, ctx).await;
            // The caller proved nothing: the failure is recorded against the
            // account (its subject) with an anonymous actor.
            let recording = Instant::now();
            let committed = self
                .users
                .execute_loaded(
                    &user_id.to_string(),
                    loaded,
                    UserCommand::RecordLoginFailure {
                        policy,
                        // Names the unlock link if this failure locks the account.
                        unlock_request_id: Uuid::new_v4(),
                        at,
                    },
                    &self.keys.metadata(ctx, at, None, Some(user_id)).await?,
                )
                .await
                .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
            self.timing.record_failure.record(recording.elapsed());
            let locked = committed.aggregate.locked_at(at).is_some();
            metrics::counter!("keyledger_logins_total", "outcome" => "invalid_credentials")
                .increment(1);
            if locked {
                metrics::counter!("keyledger_lockouts_total").increment(1);
            }
            // Still within the turn: the next attempt on this address waits too.
            let failures = committed.aggregate.consecutive_failures;
            tokio::time::sleep(self.failure_pause(failures)).await;
            return Err(AuthError::InvalidCredentials);
        }

        if self.settings.email_verification == EmailVerification::Required && !user.email_verified {
            // A refusal commits nothing, so a verification written elsewhere is
            // confirmed from the stored history first (as a lockout is).
            loaded = self
                .users
                .load_fresh(&user_id.to_string())
                .await
                .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
            if !loaded.aggregate().email_verified {
                metrics::counter!("keyledger_logins_total", "outcome" => "email_not_verified")
                    .increment(1);
                return Err(AuthError::EmailNotVerified);
            }
        }
        let rehashed = if verification.needs_rehash {
            let hash = self.hasher.hash(&password).await?;
            self.keys.seal_password_hash(user_id, &hash).await?
        } else {
            None
        };
        drop(hashing);
        if loaded.aggregate().has_second_factor() {
            let challenge = self
                .require_second_factor(
                    (user_id, loaded),
                    vec![PASSWORD_FACTOR.to_owned()],
                    (device.is_some(), None, rehashed),
                    at,
                    ctx,
                )
                .await?;
            metrics::counter!("keyledger_logins_total", "outcome" => "second_factor_required")
                .increment(1);
            if let Some(key) = &device_key {
                self.device_failures.forget(key);
            }
            return Ok(SignIn::SecondFactorRequired(challenge));
        }
        let session_id = Uuid::new_v4();
        let command = UserCommand::RecordLoginSuccess {
            session_id,
            rehashed,
            trusted_device: device.is_some(),
            at,
        };
        let outcome = self
            .start_session(
                (user_id, loaded, command),
                (session_id, vec![PASSWORD_FACTOR.to_owned()]),
                device,
                at,
                ctx,
                || AuthError::InvalidCredentials,
            )
            .await?;
        metrics::counter!("keyledger_logins_total", "outcome" => "success").increment(1);
        if let Some(key) = &device_key {
            self.device_failures.forget(key);
        }
        Ok(SignIn::Complete(outcome))
    }

    /// Starts session `session_id` for `user_id`: commits the account's
    /// `command` (a login that names the session) and the session's start in one
    /// transaction, keeps the account within its session cap, and answers the
    /// token pair and a device token (for `device`, or a new one). A lockout or
    /// a suspension refusing the login is told to the caller (who proved the
    /// credential, so may know); any other refusal is `refused()`.
    ///
    /// One transaction for both: a suspension or erasure committed after the
    /// account was loaded takes the user's next sequence, so the login conflicts
    /// and its retry is refused by the account itself; one committed after this
    /// login finds the new session when it sweeps the account's sessions (its
    /// sweep starts after its own commit). Either way no session outlives a
    /// suspension or an erasure.
    pub(crate) async fn start_session(
        &self,
        login: (Uuid, Loaded<User>, UserCommand),
        session: (Uuid, Vec<String>),
        device: Option<Uuid>,
        at: DateTime<Utc>,
        ctx: &RequestContext,
        refused: impl Fn() -> AuthError,
    ) -> Result<LoginOutcome, AuthError> {
        self.start_session_for(login, session, device, at, ctx, refused, None)
            .await
    }

    /// [`Self::start_session`], for Keyledger's own API (`app: None`) or for an
    /// app's authorization code: the session is then granted to that client and
    /// its access token made as the client asks.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_session_for(
        &self,
        (user_id, loaded, command): (Uuid, Loaded<User>, UserCommand),
        (session_id, factors): (Uuid, Vec<String>),
        device: Option<Uuid>,
        at: DateTime<Utc>,
        ctx: &RequestContext,
        refused: impl Fn() -> AuthError,
        app: Option<&openid::AppSession<'_>>,
    ) -> Result<LoginOutcome, AuthError> {
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let refresh_token = RefreshToken::generate(session_id, 0);
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
                loaded: Loaded::new_aggregate(),
                command: SessionCommand::Start {
                    session_id,
                    user_id,
                    refresh_token_hash: refresh_token.hash(),
                    device: self.keys.device(ctx, user_id).await?,
                    factors,
                    at,
                    expires_at: at + self.settings.session_ttl,
                    client: app.map(openid::AppSession::command_client),
                },
            },
            &metadata,
        )
        .await
        .map_err(|e| {
            store_error(e, |inner| match inner {
                Refusal::First(UserError::Locked { until }) => retry_after(until, at),
                Refusal::First(UserError::Suspended) => AuthError::AccountSuspended,
                // A second factor was confirmed since the account was loaded:
                // the client tries again and is asked for it.
                Refusal::First(UserError::SecondFactorRequired) => AuthError::Conflict,
                Refusal::First(_) => refused(),
                Refusal::Second(_) => AuthError::Conflict,
            })
        })?;
        let capped = self
            .end_sessions_beyond_cap(user_id, session_id, ctx, at)
            .await?;
        let session = SessionClaims {
            session_id,
            started_at: at,
            email_verified: user_committed.aggregate.email_verified,
            factors: &session_committed.aggregate.factors,
        };
        let tokens = match app {
            None => self.pair(user_id, session, refresh_token, None)?,
            Some(app) => TokenPair {
                access_token: self.app_access_token(user_id, session, None, app)?,
                refresh_token,
                expires_in: self.tokens.access_ttl().as_secs(),
                session_id,
                user_id,
            },
        };
        let device_token = self
            .devices
            .issue(user_id, device.unwrap_or_else(Uuid::new_v4));
        Ok(LoginOutcome {
            device_token,
            tokens,
            written: [
                written(user_id, &user_committed),
                written(session_id, &session_committed),
            ]
            .into_iter()
            .flatten()
            .chain(capped.written)
            .collect(),
            ended_sessions: capped.ended_sessions,
        })
    }

    /// The answer for an address without an account, after the work and time a
    /// real account's answer takes: a dummy password check, and a pause drawn from
    /// how long loading a real account (unless `loaded`: it was) and recording its
    /// failure took lately (see `login_timing`).
    async fn fail_unknown(
        &self,
        email: &Email,
        password: &Password,
        ctx: &RequestContext,
        loaded: bool,
    ) -> Result<SignIn, AuthError> {
        let load = if loaded {
            std::time::Duration::ZERO
        } else {
            self.timing.load.sample()
        };
        let now = Utc::now();
        if let Some(until) = self.unknown.locked_until(email.as_str(), now) {
            metrics::counter!("keyledger_logins_total", "outcome" => "locked").increment(1);
            // A locked real account answers once loaded, without a check.
            self.timing.pause(load).await;
            return Err(retry_after(until, now));
        }
        let hashing = self.hasher.admit(ctx.ip.as_deref())?;
        self.hasher.verify_dummy(password).await?;
        drop(hashing);
        self.unknown
            .record_failure(email.as_str(), Utc::now(), self.settings.lockout);
        self.watch_for_spraying(email, password, ctx).await;
        let failures = self.unknown.failures(email.as_str(), Utc::now());
        self.timing
            .pause(load + self.timing.record_failure.sample() + self.failure_pause(failures))
            .await;
        metrics::counter!("keyledger_logins_total", "outcome" => "invalid_credentials")
            .increment(1);
        Err(AuthError::InvalidCredentials)
    }

    /// Counts a failed login towards password-spraying detection for the
    /// client's address (see [`SprayDetector`]: keyed hashes only), and records a
    /// detection as `SuspiciousActivityDetected` (once per address and window:
    /// the detector reports only the failure that starts a throttle).
    async fn watch_for_spraying(&self, email: &Email, password: &Password, ctx: &RequestContext) {
        let Some(ip) = ctx.ip.as_deref() else {
            return;
        };
        let now = Utc::now();
        let Some(detected) = self
            .spray
            .record_failure(ip, email.as_str(), password.expose(), now)
        else {
            return;
        };
        metrics::counter!("keyledger_password_spraying_detected_total").increment(1);
        // The address is personal data and stays out of the log; the request id
        // ties this line to the access log an operator already keeps.
        tracing::warn!(
            request_id = %ctx.request_id,
            accounts = detected.accounts,
            throttled_until = %detected.throttled_until,
            "password spraying detected: one password on many accounts from one address; the address is throttled"
        );
        let command = PlatformCommand::RecordSuspiciousActivity {
            kind: SuspiciousActivityKind::PasswordSpraying,
            client_address_digest: self.client_address_digest(ip),
            accounts_count: u32::try_from(detected.accounts).unwrap_or(u32::MAX),
            window_secs: self.settings.spraying.window.num_seconds().max(0) as u64,
            at: now,
        };
        // The attacker is nobody's account: no actor, no subject, so no address
        // is sealed into the metadata either.
        let recorded = match self.keys.metadata(ctx, now, None, None).await {
            Ok(metadata) => self
                .platform
                .execute(PLATFORM_ID, command, &metadata)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = recorded {
            // The throttle holds either way; only the record is missing.
            tracing::error!(request_id = %ctx.request_id, %error, "password spraying could not be recorded");
        }
    }

    /// A keyed digest of a client address (hex HMAC-SHA256 under a key derived
    /// from the email index key): the same on every node and across restarts, so
    /// detections of one address can be told apart from others' and correlated,
    /// yet the address cannot be read back from the event log or NATS.
    fn client_address_digest(&self, address: &str) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.address_digest_key)
            .expect("HMAC accepts keys of any length");
        mac.update(address.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Ends every session of every user started before `before` (`None`: now),
    /// with one `SessionsRevokedBefore` on the platform. A cut-off at or before
    /// the one in force writes nothing; either way the answer is the cut-off in
    /// force. Read from the stored history, not this process's cache, so the
    /// answer includes a cut-off another node recorded.
    pub async fn revoke_sessions_before(
        &self,
        before: Option<DateTime<Utc>>,
        reason: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<SessionsCutOff, AuthError> {
        let at = Utc::now();
        let command = PlatformCommand::RevokeSessionsBefore {
            before: before.unwrap_or(at),
            reason: reason.map(audit_reason).filter(|r| !r.is_empty()),
            at,
        };
        let loaded = self
            .platform
            .load_fresh(PLATFORM_ID)
            .await
            .map_err(|e| store_error(e, |_| AuthError::Conflict))?;
        let committed = self
            .platform
            .execute_loaded(
                PLATFORM_ID,
                loaded,
                command,
                &self.keys.metadata(ctx, at, None, None).await?,
            )
            .await
            .map_err(|e| {
                store_error(e, |inner| match inner {
                    PlatformError::CutoffInFuture => AuthError::CutoffInFuture,
                })
            })?;
        Ok(SessionsCutOff {
            before: committed
                .aggregate
                .sessions_revoked_before
                .unwrap_or(before.unwrap_or(at)),
            at,
            written: written(PLATFORM_ID, &committed),
        })
    }

    /// How long the answer to the `failures`th consecutive failure waits: nothing
    /// for the first two, then doubling from `failure_delay`, and nothing once the
    /// failure locked the account (the lockout takes over).
    fn failure_pause(&self, failures: u32) -> std::time::Duration {
        if failures < 3 || failures >= self.settings.lockout.max_failures {
            return std::time::Duration::ZERO;
        }
        self.settings.failure_delay * 2u32.saturating_pow((failures - 3).min(16))
    }

    fn refuse_sprayer(&self, until: DateTime<Utc>) -> AuthError {
        metrics::counter!("keyledger_logins_total", "outcome" => "spraying").increment(1);
        retry_after(until, Utc::now())
    }

    fn pair(
        &self,
        user_id: Uuid,
        session: SessionClaims<'_>,
        refresh_token: RefreshToken,
        scope: Option<&AccessScope>,
    ) -> Result<TokenPair, AuthError> {
        let session_id = session.session_id;
        let (access_token, _) = self
            .tokens
            .issue_for_session(user_id, session, scope)
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            expires_in: self.tokens.access_ttl().as_secs(),
            session_id,
            user_id,
        })
    }

    /// Rotates the refresh token. Presenting a rotated token revokes the session
    /// (the events are written) and answers [`AuthError::RefreshTokenReused`].
    /// A session granted to an app refreshes only at the token endpoint, for
    /// that app ([`Self::refresh_app_session`]).
    pub async fn refresh(&self, token: &str, ctx: &RequestContext) -> Result<TokenPair, AuthError> {
        let rotated = self.rotate(token, None, ctx).await?;
        let session = SessionClaims {
            session_id: rotated.session_id,
            started_at: rotated.started_at,
            email_verified: self.is_verified(rotated.user_id),
            factors: &rotated.factors,
        };
        self.pair(
            rotated.user_id,
            session,
            rotated.next,
            rotated.scope.as_ref(),
        )
    }

    /// The rotation both refreshes share: `client_id` is the app presenting
    /// the token (`None`: Keyledger's own API), which must be the one the
    /// session was granted to.
    pub(crate) async fn rotate(
        &self,
        token: &str,
        client_id: Option<Uuid>,
        ctx: &RequestContext,
    ) -> Result<openid::Rotated, AuthError> {
        let presented = RefreshToken::parse(token).map_err(|_| AuthError::InvalidRefreshToken)?;
        let session_id = presented.session_id();
        let id = session_id.to_string();
        let loaded = self
            .sessions
            .load(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidRefreshToken))?;
        // Ended by the platform's cut-off, though its own history does not say so
        // (one event ended every such session).
        let started_at = loaded.aggregate().started_at;
        if started_at.is_some_and(|started| self.is_cut_off(started)) {
            return Err(AuthError::InvalidRefreshToken);
        }
        // The successor of the session's current token: the presented one's
        // successor, unless this is a retry of a refresh whose answer was lost,
        // which supersedes that answer. On any outcome but a rotation `next` is
        // never handed out.
        let next = RefreshToken::generate(
            session_id,
            loaded.aggregate().generation().saturating_add(1),
        );
        // The holder of the session's refresh token acts as its user.
        let actor = loaded.aggregate().user_id;
        let at = Utc::now();
        let committed = self
            .sessions
            .execute_loaded(
                &id,
                loaded,
                SessionCommand::Refresh {
                    presented: presented.hash(),
                    presented_generation: presented.generation(),
                    next: next.hash(),
                    at,
                    idle_timeout: self.settings.session_idle_timeout,
                    reuse_grace: self.settings.refresh_reuse_grace,
                    client_id,
                },
                &self.keys.metadata(ctx, at, actor, None).await?,
            )
            .await
            .map_err(|e| {
                store_error(e, |inner: SessionError| match inner {
                    SessionError::NotFound
                    | SessionError::Ended
                    | SessionError::Expired
                    | SessionError::Idle
                    | SessionError::UnknownRefreshToken
                    | SessionError::WrongClient
                    | SessionError::AlreadyStarted => AuthError::InvalidRefreshToken,
                })
            })?;
        let reused = committed
            .events
            .iter()
            .any(|e| matches!(e.payload, SessionEvent::RefreshTokenReuseDetected { .. }));
        if reused {
            metrics::counter!("keyledger_refresh_reuse_total").increment(1);
            return Err(AuthError::RefreshTokenReused {
                session_id,
                written: written(session_id, &committed),
            });
        }
        let user_id = committed
            .aggregate
            .user_id
            .ok_or(AuthError::InvalidRefreshToken)?;
        // A session that left the organization (or whose organization was
        // suspended, or now requires a second factor the session did not prove)
        // keeps working, unscoped: none of that is a reason to log someone out.
        // The rotation is committed, so a failure to load the account here
        // leaves the token unscoped rather than losing the new refresh token.
        let mut scope = committed
            .aggregate
            .organization_id
            .and_then(|org| self.scope_for(user_id, org));
        if let Some(org) = scope.as_ref().map(|s| s.organization_id) {
            let factors = &committed.aggregate.factors;
            if self
                .require_organization_second_factor(user_id, org, factors)
                .await
                .is_err()
            {
                scope = None;
            }
        }
        let started_at = started_at.ok_or(AuthError::InvalidRefreshToken)?;
        Ok(openid::Rotated {
            session_id,
            user_id,
            next,
            started_at,
            authenticated_at: committed.aggregate.authenticated_at.unwrap_or(started_at),
            factors: committed.aggregate.factors.clone(),
            scope,
            client: committed.aggregate.client.clone(),
            written: written(session_id, &committed),
        })
    }

    /// Scopes the caller's session to `organization_id` (or to none) and answers
    /// with an access token that says so. Later refreshes keep the scope. The
    /// refresh token does not change: it is bound to the session, not the scope.
    pub async fn select_organization(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        organization_id: Option<Uuid>,
        ctx: &RequestContext,
    ) -> Result<SelectedOrganization, AuthError> {
        let scope = match organization_id {
            Some(org) => Some(
                self.scope_for(user_id, org)
                    .ok_or(AuthError::OrganizationNotFound)?,
            ),
            None => None,
        };
        let id = session_id.to_string();
        let loaded = self
            .sessions
            .load(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::SessionNotFound))?;
        let session = loaded.aggregate();
        let at = Utc::now();
        // An expired session must not mint access tokens that outlive it.
        let live = session.user_id == Some(user_id)
            && session.status == SessionStatus::Active
            && session.expires_at.is_some_and(|end| end > at);
        let Some(started_at) = session.started_at.filter(|s| live && !self.is_cut_off(*s)) else {
            return Err(AuthError::SessionNotFound);
        };
        let factors = session.factors.clone();
        if let Some(org) = organization_id {
            self.require_organization_second_factor(user_id, org, &factors)
                .await?;
        }
        let written = if session.organization_id == organization_id {
            None
        } else {
            let committed = self
                .sessions
                .execute_loaded(
                    &id,
                    loaded,
                    SessionCommand::SelectOrganization {
                        organization_id,
                        at,
                    },
                    &self.keys.metadata(ctx, at, Some(user_id), None).await?,
                )
                .await
                .map_err(|e| store_error(e, |_| AuthError::SessionNotFound))?;
            written(session_id, &committed)
        };
        let (access_token, _) = self
            .tokens
            .issue_for_session(
                user_id,
                SessionClaims {
                    session_id,
                    started_at,
                    email_verified: self.is_verified(user_id),
                    factors: &factors,
                },
                scope.as_ref(),
            )
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        Ok(SelectedOrganization {
            access_token,
            expires_in: self.tokens.access_ttl().as_secs(),
            organization_id,
            roles: scope.map(|s| s.roles).unwrap_or_default(),
            written,
        })
    }

    /// Replaces the password of a signed-in user who proved the current one, then
    /// ends every other live session of the account but `keep_session` (the
    /// caller's): whoever else held the old password may hold a session too. The
    /// sessions are found in the event log after the change is committed, as
    /// suspension and erasure find them, not in the read model, which may not have
    /// projected a session started a moment ago. A wrong current password counts
    /// towards the lockout like a failed login, so this is no way around it.
    pub async fn change_password(
        &self,
        user_id: Uuid,
        current: Password,
        new: Password,
        keep_session: Uuid,
        ctx: &RequestContext,
    ) -> Result<PasswordChange, AuthError> {
        let id = user_id.to_string();
        let loaded = self
            .users
            .load(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        let (email, display_name) = self.identity(loaded.aggregate()).await?;
        self.settings
            .password_policy
            .check(&new, &personal_inputs(&email, display_name.as_ref()))
            .map_err(AuthError::WeakPassword)?;
        let (loaded, _turn, at) = self
            .check_current_password(user_id, &email, &current, ctx)
            .await?;
        // Only once the caller proved the current password: the range API is not
        // an oracle for whoever holds a token.
        self.settings
            .password_policy
            .check_not_breached(&new)
            .await?;
        let password_hash = self
            .hash_sealed(user_id, &new, ctx)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let committed = self
            .users
            .execute_loaded(
                &id,
                loaded,
                UserCommand::ChangePassword { password_hash, at },
                &metadata,
            )
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        // Read after the commit: a session started before it is in the log by now.
        let others = self.active_sessions(user_id).await?;
        let ended = self
            .revoke_sessions(
                user_id,
                others.into_iter().filter(|id| *id != keep_session),
                RevocationReason::PasswordChanged,
                at,
                Some(user_id),
                ctx,
            )
            .await?;
        let mut written_events: Vec<Written> = written(user_id, &committed).into_iter().collect();
        written_events.extend(ended.written);
        Ok(PasswordChange {
            ended_sessions: ended.ended_sessions,
            written: written_events,
        })
    }

    /// Ends the caller's own session.
    pub async fn logout(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let at = Utc::now();
        self.end_session(
            user_id,
            session_id,
            ctx,
            at,
            SessionCommand::Logout { at },
            Some(user_id),
        )
        .await
    }

    /// Ends one of the caller's sessions. Someone else's session answers
    /// [`AuthError::SessionNotFound`], exactly like one that does not exist.
    pub async fn revoke_session(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let at = Utc::now();
        let command = SessionCommand::Revoke {
            reason: RevocationReason::UserRequest,
            at,
        };
        self.end_session(user_id, session_id, ctx, at, command, Some(user_id))
            .await
    }

    /// Ends every live session of `user_id`, the caller's own included ("log out
    /// everywhere", for a lost phone or a shared computer). The sessions are found
    /// in the event log, as suspension and password change find them: the read
    /// model may not have projected a session started a moment ago, and missing
    /// one would leave exactly the session the user fears. `actor` as for
    /// [`Self::end_session`]: the user themselves, or `None` for an administrator
    /// named by the context.
    pub async fn end_all_sessions(
        &self,
        user_id: Uuid,
        reason: RevocationReason,
        actor: Option<Uuid>,
        ctx: &RequestContext,
    ) -> Result<SessionsEnded, AuthError> {
        let sessions = self.active_sessions(user_id).await?;
        self.revoke_sessions(user_id, sessions, reason, Utc::now(), actor, ctx)
            .await
    }

    /// Revokes each of `sessions` of `user_id` for `reason`, as `actor`; a session
    /// that ended meanwhile is passed over (nothing left to end). Every path that
    /// ends sessions in bulk (password change, suspension, erasure, the session
    /// cap, log out everywhere) goes through here.
    async fn revoke_sessions(
        &self,
        user_id: Uuid,
        sessions: impl IntoIterator<Item = Uuid>,
        reason: RevocationReason,
        at: DateTime<Utc>,
        actor: Option<Uuid>,
        ctx: &RequestContext,
    ) -> Result<SessionsEnded, AuthError> {
        let mut ended = SessionsEnded::default();
        for session_id in sessions {
            let command = SessionCommand::Revoke { reason, at };
            match self
                .end_session(user_id, session_id, ctx, at, command, actor)
                .await
            {
                Ok(Some(w)) => {
                    ended.ended_sessions.push(session_id);
                    ended.written.push(w);
                }
                Ok(None) | Err(AuthError::SessionNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ended)
    }

    /// Ends `session_id` if it belongs to `user_id`; `actor` is recorded as who did
    /// it (`None`: the context's actor, such as an administrator).
    async fn end_session(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        ctx: &RequestContext,
        at: DateTime<Utc>,
        command: SessionCommand,
        actor: Option<Uuid>,
    ) -> Result<Option<Written>, AuthError> {
        let id = session_id.to_string();
        let loaded = self
            .sessions
            .load(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::SessionNotFound))?;
        if loaded.aggregate().user_id != Some(user_id) {
            return Err(AuthError::SessionNotFound);
        }
        match self
            .sessions
            .execute_loaded(
                &id,
                loaded,
                command,
                &self.keys.metadata(ctx, at, actor, Some(user_id)).await?,
            )
            .await
        {
            Ok(committed) => Ok(written(session_id, &committed)),
            // Already ended: the caller's wish is fulfilled.
            Err(StoreError::Rejected(SessionError::Ended)) => Ok(None),
            Err(e) => Err(store_error(e, |_| AuthError::SessionNotFound)),
        }
    }
}

/// Account administration: what a platform administrator (or the bootstrap CLI)
/// does to accounts. Who may call these is decided by the API.
impl AuthService {
    /// Blocks the account and revokes every session it still has, so that its
    /// refresh tokens stop working at once (and its access tokens as soon as the
    /// revocation is projected).
    ///
    /// Idempotent: suspending a suspended account writes no user event but still
    /// sweeps its sessions, which makes a repeated call a way to finish a sweep
    /// that was interrupted.
    pub async fn suspend_user(
        &self,
        user_id: Uuid,
        reason: &str,
        ctx: &RequestContext,
    ) -> Result<UserSuspension, AuthError> {
        let turn = self.admins.turn().await?;
        self.ensure_not_last_admin(user_id).await?;
        let at = Utc::now();
        let command = UserCommand::Suspend {
            reason: audit_reason(reason),
            at,
        };
        let mut written_events: Vec<Written> = self
            .run_user_command(user_id, command, at, ctx)
            .await?
            .into_iter()
            .collect();
        // Committed: a later change in the turn sees this one in the log.
        drop(turn);
        let sessions = self.active_sessions(user_id).await?;
        let ended = self
            .revoke_sessions(
                user_id,
                sessions,
                RevocationReason::Administrative,
                at,
                None,
                ctx,
            )
            .await?;
        written_events.extend(ended.written);
        Ok(UserSuspension {
            ended_sessions: ended.ended_sessions,
            written: written_events,
        })
    }

    /// Lets a suspended account log in again (its old sessions stay ended).
    /// Reactivating an active account is not an error and writes nothing.
    pub async fn reactivate_user(
        &self,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let at = Utc::now();
        self.run_user_command(user_id, UserCommand::Reactivate { at }, at, ctx)
            .await
    }

    /// Lifts a lockout before it runs out (an operator answering an owner locked
    /// out by someone else's guesses). Unlocking an account that is not locked is
    /// not an error and writes nothing.
    pub async fn unlock_user(
        &self,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let at = Utc::now();
        self.run_user_command(user_id, UserCommand::Unlock { at }, at, ctx)
            .await
    }

    /// Checks the password of a signed-in account before an irreversible action
    /// (erasure): like a login, a wrong one counts towards the lockout and none is
    /// checked while locked.
    pub async fn reauthenticate(
        &self,
        user_id: Uuid,
        password: &Password,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        let (email, _) = self.identity(loaded.aggregate()).await?;
        // The erasure that follows takes its own turns; the gate is let go here.
        self.check_current_password(user_id, &email, password, ctx)
            .await
            .map(drop)
    }

    /// What stands in for the password when an account without one (it signs
    /// in with passkeys) erases itself: a session that signed in, or stepped
    /// up, within the reauthentication window, with its factors. An account with
    /// a password must give it (`InvalidCredentials`).
    pub async fn require_passwordless_reauthentication(
        &self,
        user_id: Uuid,
        session_id: Uuid,
    ) -> Result<(), AuthError> {
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        if loaded.aggregate().has_password() {
            return Err(AuthError::InvalidCredentials);
        }
        self.require_recent_authentication(user_id, session_id)
            .await
    }

    /// The account's address and name in clear (the password policy and the login
    /// gate need them); an account without them (erased) has no password to prove.
    async fn identity(&self, user: &User) -> Result<(Email, Option<DisplayName>), AuthError> {
        let Some(sealed) = &user.email else {
            return Err(AuthError::InvalidCredentials);
        };
        // Parsed when it was registered; read back as stored, so an address taken
        // under older, laxer rules still works.
        let email = Email::from_stored(self.keys.open(sealed, Field::Email).await?);
        let display_name = match &user.display_name {
            Some(name) => DisplayName::parse(&self.keys.open(name, Field::DisplayName).await?).ok(),
            None => None,
        };
        Ok((email, display_name))
    }

    /// Checks a signed-in account's current password exactly like a login does:
    /// in the address's turn at the login gate, on the account as it stands once
    /// the turn is ours (so the lockout holds under concurrent attempts, decision
    /// 0003), never while locked, and a wrong one recorded towards the lockout. On
    /// success the caller keeps the turn while it writes, and gets the account back
    /// with the time of the check.
    async fn check_current_password(
        &self,
        user_id: Uuid,
        email: &Email,
        password: &Password,
        ctx: &RequestContext,
    ) -> Result<(Loaded<User>, tokio::sync::MutexGuard<'_, ()>, DateTime<Utc>), AuthError> {
        let turn = self.gate.enter(email.as_str()).await;
        // Loaded in our turn: an account read before it may miss the failures
        // recorded by the attempts that held the turn meanwhile.
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        let Some(stored) = loaded.aggregate().password_hash.clone() else {
            return Err(AuthError::InvalidCredentials);
        };
        let Some(stored) = self.keys.open_password_hash(user_id, &stored).await? else {
            self.hasher.verify_dummy(password).await?;
            return Err(AuthError::InvalidCredentials);
        };
        let now = Utc::now();
        if let Some(until) = loaded.aggregate().locked_at(now) {
            return Err(retry_after(until, now));
        }
        let hashing = self.hasher.admit(ctx.ip.as_deref())?;
        let verification = self.hasher.verify(password, &stored).await?;
        drop(hashing);
        let at = Utc::now();
        if verification.matches {
            return Ok((loaded, turn, at));
        }
        let policy = self.settings.lockout;
        self.users
            .execute_loaded(
                &user_id.to_string(),
                loaded,
                UserCommand::RecordLoginFailure {
                    policy,
                    unlock_request_id: Uuid::new_v4(),
                    at,
                },
                &self.keys.metadata(ctx, at, Some(user_id), None).await?,
            )
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        Err(AuthError::InvalidCredentials)
    }

    /// Forgets a person (GDPR erasure, decision 0009) without touching the log:
    /// writes `UserErased`, ends every session, frees the address (its claim goes)
    /// and destroys the data key, after which every personal field the log holds
    /// about them opens for nobody. The account can never log in again. Who may
    /// erase (the holder after [`Self::reauthenticate`], or an administrator) is
    /// decided by the caller.
    ///
    /// Idempotent: erasing an erased account writes no event but finishes whatever
    /// an interrupted erasure left (sessions, claim, key).
    pub async fn erase_user(
        &self,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<UserErasure, AuthError> {
        let id = user_id.to_string();
        let loaded = self
            .users
            .load(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::UserNotFound))?;
        let user = loaded.aggregate().clone();
        if !user.is_registered() {
            return Err(AuthError::UserNotFound);
        }
        let at = Utc::now();
        let mut erasure = UserErasure::default();
        if !user.erased {
            let turn = self.admins.turn().await?;
            // Logins to the account take turns at the login gate: holding the
            // address's turn, no login commits between this load and commit, so
            // a stream of logins cannot make the erasure lose every race.
            let address = self.identity(&user).await.ok().map(|(email, _)| email);
            let _login_turn = match &address {
                Some(email) => Some(self.gate.enter(email.as_str()).await),
                None => None,
            };
            let loaded = self
                .users
                .load_fresh(&id)
                .await
                .map_err(|e| store_error(e, |_| AuthError::UserNotFound))?;
            self.ensure_not_last_admin(user_id).await?;
            let metadata = self.keys.metadata(ctx, at, None, Some(user_id)).await?;
            match self
                .users
                .execute_loaded(&id, loaded, UserCommand::Erase { at }, &metadata)
                .await
            {
                Ok(committed) => erasure.written.extend(written(user_id, &committed)),
                Err(StoreError::Rejected(UserError::Erased)) => {}
                Err(e) => return Err(store_error(e, |_| AuthError::Conflict)),
            }
            drop(turn);
        }
        let sessions = self.active_sessions(user_id).await?;
        let ended = self
            .revoke_sessions(
                user_id,
                sessions,
                RevocationReason::AccountErased,
                at,
                None,
                ctx,
            )
            .await?;
        erasure.ended_sessions.extend(ended.ended_sessions);
        erasure.written.extend(ended.written);
        self.emails.release_account(user_id).await?;
        self.forget_passkeys(user_id).await?;
        self.forget_external_identities(user_id).await?;
        self.keys.erase(user_id).await?;
        metrics::counter!("keyledger_erasures_total").increment(1);
        Ok(erasure)
    }

    /// Idempotent: granting to an administrator writes nothing.
    pub async fn grant_platform_admin(
        &self,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let at = Utc::now();
        self.run_user_command(user_id, UserCommand::GrantPlatformAdmin { at }, at, ctx)
            .await
    }

    /// Idempotent: revoking from a non-administrator writes nothing. Refused
    /// (`LastAdmin`) for the last active administrator.
    pub async fn revoke_platform_admin(
        &self,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let _turn = self.admins.turn().await?;
        self.ensure_not_last_admin(user_id).await?;
        let at = Utc::now();
        self.run_user_command(user_id, UserCommand::RevokePlatformAdmin { at }, at, ctx)
            .await
    }

    /// Refuses (`LastAdmin`) when `user_id` is the platform's only active
    /// administrator, from the event log. Inside the admin turn this is the rule
    /// itself; outside it, an early answer before a change writes anything (the
    /// turn still decides).
    pub async fn ensure_not_last_admin(&self, user_id: Uuid) -> Result<(), AuthError> {
        if self.admins.is_last_active_admin(user_id).await? {
            return Err(AuthError::LastAdmin);
        }
        Ok(())
    }

    /// Refuses (`ReauthenticationRequired`) unless the user proved who they
    /// are in `session_id`, the caller's, within the reauthentication window: at
    /// its login, or by a step-up (`POST /v1/auth/step-up`) since; and, when the
    /// account has a second factor, with it. Read from the session's own events,
    /// so a session started a moment ago on another node counts.
    pub async fn require_recent_authentication(
        &self,
        user_id: Uuid,
        session_id: Uuid,
    ) -> Result<(), AuthError> {
        let loaded = self
            .sessions
            .load(&session_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::ReauthenticationRequired))?;
        let session = loaded.aggregate();
        let recent = session.user_id == Some(user_id)
            && session
                .authenticated_at
                .is_some_and(|at| Utc::now() - at <= self.settings.reauthentication_window);
        if !recent {
            return Err(AuthError::ReauthenticationRequired);
        }
        self.require_second_factor_in(user_id, &session.factors)
            .await
    }

    /// Refuses (`ReauthenticationRequired`) a change to an account with a
    /// second factor unless the session `session_id` proved it within the
    /// reauthentication window. Accounts without one pass: the change checks
    /// their password itself (a password or address change, an erasure).
    pub async fn require_recent_second_factor(
        &self,
        user_id: Uuid,
        session_id: Uuid,
    ) -> Result<(), AuthError> {
        if !self.has_second_factor(user_id).await? {
            return Ok(());
        }
        self.require_recent_authentication(user_id, session_id)
            .await
    }

    async fn has_second_factor(&self, user_id: Uuid) -> Result<bool, AuthError> {
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::UserNotFound))?;
        Ok(loaded.aggregate().has_second_factor())
    }

    /// Refuses when the account has a second factor and `factors` (how the
    /// session last authenticated) do not include one.
    async fn require_second_factor_in(
        &self,
        user_id: Uuid,
        factors: &[String],
    ) -> Result<(), AuthError> {
        let proved = factors.iter().any(|f| f == keyledger_domain::MFA_FACTOR);
        if proved || !self.has_second_factor(user_id).await? {
            Ok(())
        } else {
            Err(AuthError::ReauthenticationRequired)
        }
    }

    /// The account registered under `email`, for operator tools that name accounts
    /// by address. A claimed address whose registration never landed is no
    /// account.
    pub async fn find_user_id(&self, email: &str) -> Result<Option<Uuid>, AuthError> {
        let email = Email::parse(email).map_err(|_| AuthError::InvalidEmail)?;
        let Some(user_id) = self.emails.lookup(&email).await? else {
            return Ok(None);
        };
        Ok(self.user_exists(user_id).await?.then_some(user_id))
    }

    /// Whether `user_id` is a live account (suspended ones included). An erased
    /// account never counts: its id stays taken but names nobody.
    pub async fn user_exists(&self, user_id: Uuid) -> Result<bool, AuthError> {
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::UserNotFound))?;
        let user = loaded.aggregate();
        Ok(user.is_registered() && !user.erased)
    }

    /// Runs an administrative command on an account. A command that would only
    /// restate the current state (suspend the suspended, grant to an admin…) is
    /// answered with `Ok(None)`.
    async fn run_user_command(
        &self,
        user_id: Uuid,
        command: UserCommand,
        at: DateTime<Utc>,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let result = self
            .users
            .execute(
                &user_id.to_string(),
                command,
                &self.keys.metadata(ctx, at, None, Some(user_id)).await?,
            )
            .await;
        match result {
            Ok(committed) => Ok(written(user_id, &committed)),
            Err(StoreError::Rejected(
                UserError::Suspended
                | UserError::NotSuspended
                | UserError::AlreadyPlatformAdmin
                | UserError::NotPlatformAdmin
                | UserError::NotLocked,
            )) => Ok(None),
            Err(e) => Err(store_error(e, |inner| match inner {
                UserError::NotRegistered => AuthError::UserNotFound,
                _ => AuthError::Conflict,
            })),
        }
    }

    /// Ends the oldest live sessions of `user_id` beyond
    /// [`AuthSettings::max_sessions_per_user`], never `just_started`. One read of
    /// the event log per login, and only with a cap set; two logins racing may
    /// both end the same oldest session, or one too many, never leave more than
    /// the cap.
    async fn end_sessions_beyond_cap(
        &self,
        user_id: Uuid,
        just_started: Uuid,
        ctx: &RequestContext,
        at: DateTime<Utc>,
    ) -> Result<SessionsEnded, AuthError> {
        let cap = self.settings.max_sessions_per_user;
        if cap == 0 {
            return Ok(SessionsEnded::default());
        }
        let live = self.active_sessions(user_id).await?;
        let excess = live.len().saturating_sub(cap);
        let oldest = live
            .into_iter()
            .filter(|id| *id != just_started)
            .take(excess);
        self.revoke_sessions(
            user_id,
            oldest,
            RevocationReason::SessionLimit,
            at,
            Some(user_id),
            ctx,
        )
        .await
    }

    /// Live sessions of `user_id` (not ended or expired), oldest first, read from
    /// the event store itself: the write side does not depend on read models.
    async fn active_sessions(&self, user_id: Uuid) -> Result<Vec<Uuid>, AuthError> {
        Ok(self.log.active_session_ids(user_id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_trimmed_stripped_of_control_characters_and_bounded() {
        assert_eq!(audit_reason("  fraud\u{1b}[31m \u{7}\n"), "fraud[31m");
        assert_eq!(
            audit_reason(&"x".repeat(2 * MAX_REASON_CHARS))
                .chars()
                .count(),
            MAX_REASON_CHARS
        );
    }
}
