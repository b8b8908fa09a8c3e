//! Keyledger's write side: turns requests into domain commands, decides everything
//! the pure aggregates must not (time, hashes, random tokens, signatures), and
//! commits the resulting events to the event store under optimistic concurrency.
#![forbid(unsafe_code)]

pub mod auth;
mod claims;
pub mod data_keys;
pub mod email_registry;
pub mod federation;
pub mod hasher;
pub mod jwt;
pub mod legacy_hash;
pub mod log_lookups;
pub mod login_gate;
pub mod login_timing;
pub mod oauth_clients;
pub mod oidc_codes;
pub mod organizations;
pub mod passkeys;
pub mod password;
mod platform_admins;
pub mod postgres_events;
pub mod second_factor;
pub mod slug_registry;
pub mod sqlite_events;
pub mod store;
mod token_cache;
pub mod tokens;

pub use auth::openid::{AccessTokenForm, AppClient, AppTokens, RefreshTokenStatus};
pub use auth::{
    random_secret, AuthError, AuthService, AuthSettings, BackupCodesIssued, EmailLoginProof,
    EmailVerification, ExternalIdentityView, FederatedProfile, FederationDone, ImportError,
    ImportOutcome, ImportedAccount, LoginOutcome, MailAddress, MailRecipient, MembershipLookup,
    NewSecondFactor, PasskeyAdded, PasskeyOptions, PasskeySignUp, PasskeyView, PasswordChange,
    Registered, RequestContext, ResetOutcome, SecondFactorChallenge, SecondFactorConfirmed,
    SecondFactorMethod, SecondFactors, SelectedOrganization, SessionCutoffLookup, SessionsCutOff,
    SessionsEnded, SignIn, TextRecipient, TokenPair, TotpEnrolment, UserErasure, UserSuspension,
    VerifiedAddresses, Written, MAX_REASON_CHARS, PASSWORD_FACTOR,
};
pub use data_keys::{DataKeyStore, DataKeys, PersonalDataSealer};
pub use email_registry::{EmailClaims, EmailRegistry};
pub use hasher::{HashError, HasherSettings, PasswordHasher};
pub use jwt::{
    ClientGrant, JwsAlg, JwsKeyMaterial, JwtGrant, JwtKeys, RetiredJwsKey, ACCESS_TOKEN_TYP,
};
pub use log_lookups::EventLogLookups;
pub use oauth_clients::{
    AccessTokenFormat, ClientUpdate, ClientView, ConsentView, GrantType, NewClient,
    OAuthClientError, OAuthClientRule, OAuthClientSecret, OAuthClients, RegisteredClient,
    SigningAlg,
};
pub use oidc_codes::{AuthorizationCodes, AuthorizationGrant, Redemption};
pub use organizations::{
    ensure_covers, validate_settings, ClientSecret, CreatedServiceAccount, InvitationTarget,
    MalformedClientSecret, OrganizationError, OrganizationService, ServiceToken,
    DEFAULT_INVITATION_TTL, MAX_SETTINGS, MAX_SETTING_KEY_CHARS, MAX_SETTING_VALUE_CHARS,
};
pub use password::{
    BreachCheckFailure, BreachRefusal, BreachedPasswords, Password, PasswordPolicy, WeakPassword,
    BREACHED_REASON,
};
pub use postgres_events::PostgresChainedEventRepository;
pub use slug_registry::{SlugClaims, SlugRegistry};
pub use sqlite_events::SqliteChainedEventRepository;
pub use store::{event_store, AggregateStore, Committed, EventRepository, Loaded, StoreError};
pub use tokens::{
    AccessClaims, AccessScope, PublicKeyInfo, RefreshToken, RetiredPublicKey, SessionClaims,
    SubjectKind, TokenError, TokenIssuer, TokenSettings, CLOCK_SKEW,
};
