//! Keyledger's domain: the User, Session, Organization, Role, ServiceAccount,
//! OAuthClient and Platform aggregates, the commands they accept and the events they emit.
//!
//! Everything here is pure and deterministic. Anything that comes from outside (the
//! clock, a password hash, a random token) is decided by the write side and carried
//! in the command, so the same events always produce the same state and every rule
//! can be tested with given-events / when-command / then-events.
#![forbid(unsafe_code)]

pub mod catalogue;
pub mod chain;
pub mod device_token;
pub mod external_identity;
pub mod mail_link;
pub mod oauth_client;
pub mod oauth_consent;
pub mod organization;
pub mod passkey;
pub mod permission;
pub mod personal;
pub mod platform;
pub mod role;
pub mod second_factor;
pub mod service_account;
pub mod session;
mod signed_ids;
pub mod upcasting;
pub mod user;
pub mod values;

pub use catalogue::{IntegrationData, DERIVED_EVENT_CATALOGUE, EVENT_CATALOGUE};
pub use external_identity::{
    ExternalIdentity, ExternalIdentityCommand, LinkMethod, NewExternalIdentity, FEDERATED_FACTOR,
};
pub use mail_link::{LinkPurpose, MailLink, MailLinkKey};
pub use oauth_client::{AccessTokenFormat, GrantType, OAuthClient, OAuthClientCommand, SigningAlg};
pub use oauth_consent::{OAuthConsent, OAuthConsentCommand};
pub use passkey::{NewPasskey, Passkey, PasskeyAssertion, PasskeyCommand};
pub use personal::{
    BadDataKeyWrappingKey, CorruptDataKey, DataKey, DataKeyWrapping, DataKeyWrappingKey,
    EmailIndexKey, Field, PersonalData, SealedPasswordHash, UnreadableDataKey, ERASED,
    WRAPPED_DATA_KEY_LEN,
};
pub use second_factor::{
    FactorProof, SecondFactor, SecondFactorCommand, SecondFactorKind, MFA_FACTOR, OTP_FACTOR,
};
pub use session::{Session, SessionCommand, SessionError, SessionEvent, SessionStatus};
pub use user::{
    PendingEmailChange, PendingEmailLogin, PendingRequest, User, UserCommand, UserError, UserEvent,
    EMAIL_FACTOR, EMAIL_LOGIN_CODE_ATTEMPTS,
};
pub use values::{
    Device, DisplayName, Email, LockoutPolicy, PasswordHash, RevocationReason, TokenHash,
    ValueError,
};
