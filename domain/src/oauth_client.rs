//! The OAuthClient aggregate: an application registered to sign users in with
//! Keyledger as its OpenID provider (or, confidential, to get tokens of its own
//! with the client-credentials grant).
//!
//! Every rule about what a client may be lives here, so that no path (the admin
//! API, a future import) can store a client the protocol endpoints would have to
//! second-guess: redirect URIs are absolute, without a fragment, and https but
//! for the loopback addresses and the private-use schemes of native apps (RFC
//! 8252); a client that may use the code flow has somewhere to return to; a
//! public client (a browser or native app, which cannot keep a secret) has no
//! secret and no client-credentials grant; scopes come from the set this
//! provider serves. Like a service account's, a confidential client's secret is
//! random and high-entropy, so only its SHA-256 hash is stored; it is shown to
//! whoever registered or rotated it once.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::TokenHash;

/// The scopes this provider serves, in the order they are kept and shown.
pub const KNOWN_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];

/// At most this many redirect URIs (and as many post-logout ones) per client.
pub const MAX_REDIRECT_URIS: usize = 20;

/// The longest redirect URI accepted.
pub const MAX_REDIRECT_URI_LEN: usize = 2000;

/// How a client may get tokens at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

impl GrantType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
        }
    }
}

/// The form of the access tokens issued to a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessTokenFormat {
    /// PASETO v4.public, as the first-party API issues.
    #[default]
    Paseto,
    /// RFC 9068 `at+jwt`, for gateways that verify JWTs against the JWKS.
    Jwt,
}

/// A JWS algorithm a client's tokens are signed with.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SigningAlg {
    EdDSA,
    ES256,
    RS256,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
        }
    }

    /// The default for JWT access tokens.
    pub const DEFAULT_ACCESS_TOKEN: Self = Self::EdDSA;
    /// The default for ID tokens: RS256, which OpenID Connect Discovery requires of
    /// every provider and some relying parties accept alone.
    pub const DEFAULT_ID_TOKEN: Self = Self::RS256;
}

/// What an administrator may set on a client (all of it at registration, any of
/// it later), as stored: validated and normalised by the aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSettings {
    /// 1 to 100 printable characters, trimmed.
    pub name: String,
    /// Where the code flow may return to, compared by exact match.
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may return to, compared by exact match.
    pub post_logout_redirect_uris: Vec<String>,
    /// The scopes the client may ask for, in the order of [`KNOWN_SCOPES`].
    pub scopes: Vec<String>,
    /// In a fixed order (that of [`GrantType`]), each once.
    pub grant_types: Vec<GrantType>,
    /// A first-party client's users see no consent page.
    pub first_party: bool,
    pub access_token_format: AccessTokenFormat,
    /// For JWT access tokens: EdDSA, ES256 or RS256 (RFC 9068 §2.1 makes RS256
    /// mandatory to implement).
    pub access_token_alg: SigningAlg,
    /// RS256, EdDSA or ES256.
    pub id_token_alg: SigningAlg,
}

/// Changes to a client's settings; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientChanges {
    pub name: Option<String>,
    pub redirect_uris: Option<Vec<String>>,
    pub post_logout_redirect_uris: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub grant_types: Option<Vec<GrantType>>,
    pub first_party: Option<bool>,
    pub access_token_format: Option<AccessTokenFormat>,
    pub access_token_alg: Option<SigningAlg>,
    pub id_token_alg: Option<SigningAlg>,
}

/// Requests to the registry. Ids, times and secret hashes are decided by the
/// write side; the settings arrive as the administrator typed them and are
/// checked here.
#[derive(Debug, Clone, PartialEq)]
pub enum OAuthClientCommand {
    Register {
        client_id: Uuid,
        /// `None`: registered by a platform administrator for the platform.
        organization_id: Option<Uuid>,
        confidential: bool,
        settings: ClientSettings,
        /// Required for a confidential client, refused for a public one.
        secret_hash: Option<TokenHash>,
        registered_by: Uuid,
        at: DateTime<Utc>,
    },
    Update {
        changes: ClientChanges,
        at: DateTime<Utc>,
    },
    /// Replaces a confidential client's secret: the previous one stops working
    /// at once.
    RotateSecret {
        secret_hash: TokenHash,
        at: DateTime<Utc>,
    },
    Delete {
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OAuthClientEvent {
    OAuthClientRegistered {
        client_id: Uuid,
        organization_id: Option<Uuid>,
        confidential: bool,
        #[serde(flatten)]
        settings: ClientSettings,
        /// SHA-256 of a confidential client's secret; never published.
        secret_hash: Option<TokenHash>,
        registered_by: Uuid,
        at: DateTime<Utc>,
    },
    /// The whole of the settings after the change (not only what changed), so
    /// that applying it only sets state.
    OAuthClientUpdated {
        #[serde(flatten)]
        settings: ClientSettings,
        at: DateTime<Utc>,
    },
    OAuthClientSecretRotated {
        secret_hash: TokenHash,
        at: DateTime<Utc>,
    },
    OAuthClientDeleted {
        at: DateTime<Utc>,
    },
}

impl OAuthClientEvent {
    pub const TYPES: &'static [&'static str] = &[
        "OAuthClientRegistered",
        "OAuthClientUpdated",
        "OAuthClientSecretRotated",
        "OAuthClientDeleted",
    ];
}

impl DomainEvent for OAuthClientEvent {
    fn event_type(&self) -> String {
        match self {
            Self::OAuthClientRegistered { .. } => "OAuthClientRegistered",
            Self::OAuthClientUpdated { .. } => "OAuthClientUpdated",
            Self::OAuthClientSecretRotated { .. } => "OAuthClientSecretRotated",
            Self::OAuthClientDeleted { .. } => "OAuthClientDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why the registry refused a command. Messages are safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthClientError {
    #[error("the client already exists")]
    AlreadyRegistered,
    #[error("no such client")]
    NotFound,
    #[error("a client name is 1 to 100 printable characters")]
    InvalidName,
    #[error("a redirect URI is absolute, without a fragment, at most 2000 characters, and https (http only for 127.0.0.1, [::1] or localhost; or a private-use scheme such as com.example.app:/callback); at most 20 of them")]
    InvalidRedirectUri,
    #[error("a post-logout redirect URI follows the rules of a redirect URI; at most 20 of them")]
    InvalidPostLogoutRedirectUri,
    #[error("a client allowed the authorization_code grant needs at least one redirect URI")]
    RedirectUriRequired,
    #[error("a scope is one of openid, profile, email, offline_access")]
    UnknownScope,
    #[error("a client needs at least one grant type")]
    NoGrantType,
    #[error("the refresh_token grant comes with the authorization_code grant")]
    RefreshTokenWithoutCode,
    #[error("a public client cannot use the client_credentials grant")]
    PublicClientCredentials,
    /// A public client has no secret to set or rotate.
    #[error("a public client has no secret")]
    PublicClientSecret,
    /// A confidential client without a secret: a fault of the write side.
    #[error("a confidential client needs a secret")]
    SecretRequired,
}

/// Whether `uri` may be a redirect URI: absolute, no fragment, no user info,
/// and https, http to a loopback host, or a private-use scheme (a reverse domain
/// name, RFC 8252 7.1).
pub fn is_valid_redirect_uri(uri: &str) -> bool {
    if uri.is_empty()
        || uri.len() > MAX_REDIRECT_URI_LEN
        || uri.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    let Ok(parsed) = url::Url::parse(uri) else {
        return false;
    };
    if parsed.fragment().is_some() || uri.contains('#') {
        return false;
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return false;
    }
    match parsed.scheme() {
        "https" => parsed.host().is_some(),
        "http" => matches!(
            parsed.host(),
            Some(url::Host::Domain("localhost"))
                | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
                | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
        ),
        // A private-use scheme is a reverse domain name (`com.example.app`), so a
        // scheme without a dot (javascript:, data:, file:, ftp:) is not one.
        scheme => scheme.contains('.'),
    }
}

/// Checks and normalises a list of redirect URIs: each valid, kept once, in the
/// order given.
fn checked_uris(
    raw: Vec<String>,
    invalid: OAuthClientError,
) -> Result<Vec<String>, OAuthClientError> {
    if raw.len() > MAX_REDIRECT_URIS || !raw.iter().all(|uri| is_valid_redirect_uri(uri)) {
        return Err(invalid);
    }
    let mut seen = BTreeSet::new();
    Ok(raw
        .into_iter()
        .filter(|uri| seen.insert(uri.clone()))
        .collect())
}

/// Known scopes only, each once, in the order of [`KNOWN_SCOPES`].
pub fn normalise_scopes<S: AsRef<str>>(raw: &[S]) -> Result<Vec<String>, OAuthClientError> {
    if raw.iter().any(|s| !KNOWN_SCOPES.contains(&s.as_ref())) {
        return Err(OAuthClientError::UnknownScope);
    }
    Ok(KNOWN_SCOPES
        .iter()
        .filter(|known| raw.iter().any(|s| s.as_ref() == **known))
        .map(|s| (*s).to_owned())
        .collect())
}

fn client_name(raw: &str) -> Result<String, OAuthClientError> {
    let trimmed = raw.trim();
    let count = trimmed.chars().count();
    if count == 0 || count > 100 || trimmed.chars().any(char::is_control) {
        return Err(OAuthClientError::InvalidName);
    }
    Ok(trimmed.to_owned())
}

impl ClientSettings {
    /// The settings as they are stored: every value checked and normalised, and
    /// the rules between them kept for a client that is `confidential` or not.
    pub fn validated(self, confidential: bool) -> Result<Self, OAuthClientError> {
        let name = client_name(&self.name)?;
        let redirect_uris = checked_uris(self.redirect_uris, OAuthClientError::InvalidRedirectUri)?;
        let post_logout_redirect_uris = checked_uris(
            self.post_logout_redirect_uris,
            OAuthClientError::InvalidPostLogoutRedirectUri,
        )?;
        let scopes = normalise_scopes(&self.scopes)?;
        let grants: BTreeSet<GrantType> = self.grant_types.into_iter().collect();
        if grants.is_empty() {
            return Err(OAuthClientError::NoGrantType);
        }
        let code = grants.contains(&GrantType::AuthorizationCode);
        if code && redirect_uris.is_empty() {
            return Err(OAuthClientError::RedirectUriRequired);
        }
        if grants.contains(&GrantType::RefreshToken) && !code {
            return Err(OAuthClientError::RefreshTokenWithoutCode);
        }
        if !confidential && grants.contains(&GrantType::ClientCredentials) {
            return Err(OAuthClientError::PublicClientCredentials);
        }
        Ok(Self {
            name,
            redirect_uris,
            post_logout_redirect_uris,
            scopes,
            grant_types: grants.into_iter().collect(),
            first_party: self.first_party,
            access_token_format: self.access_token_format,
            access_token_alg: self.access_token_alg,
            id_token_alg: self.id_token_alg,
        })
    }

    /// These settings with `changes` made.
    pub fn changed(&self, changes: ClientChanges) -> Self {
        let current = self.clone();
        Self {
            name: changes.name.unwrap_or(current.name),
            redirect_uris: changes.redirect_uris.unwrap_or(current.redirect_uris),
            post_logout_redirect_uris: changes
                .post_logout_redirect_uris
                .unwrap_or(current.post_logout_redirect_uris),
            scopes: changes.scopes.unwrap_or(current.scopes),
            grant_types: changes.grant_types.unwrap_or(current.grant_types),
            first_party: changes.first_party.unwrap_or(current.first_party),
            access_token_format: changes
                .access_token_format
                .unwrap_or(current.access_token_format),
            access_token_alg: changes.access_token_alg.unwrap_or(current.access_token_alg),
            id_token_alg: changes.id_token_alg.unwrap_or(current.id_token_alg),
        }
    }
}

/// A client's current state, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OAuthClient {
    pub client_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub confidential: bool,
    pub settings: Option<ClientSettings>,
    pub secret_hash: Option<TokenHash>,
    pub registered_by: Option<Uuid>,
    pub registered_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub secret_rotated_at: Option<DateTime<Utc>>,
    pub deleted: bool,
}

impl OAuthClient {
    /// Registered and not deleted.
    pub fn is_live(&self) -> bool {
        self.client_id.is_some() && self.settings.is_some() && !self.deleted
    }

    fn ensure_live(&self) -> Result<&ClientSettings, OAuthClientError> {
        match &self.settings {
            Some(settings) if self.is_live() => Ok(settings),
            _ => Err(OAuthClientError::NotFound),
        }
    }
}

impl Aggregate for OAuthClient {
    const TYPE: &'static str = "oauth_client";
    type Command = OAuthClientCommand;
    type Event = OAuthClientEvent;
    type Error = OAuthClientError;
    type Services = ();

    async fn handle(
        &mut self,
        command: OAuthClientCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), OAuthClientError> {
        use OAuthClientCommand as C;
        use OAuthClientEvent as E;
        let event = match command {
            C::Register {
                client_id,
                organization_id,
                confidential,
                settings,
                secret_hash,
                registered_by,
                at,
            } => {
                if self.client_id.is_some() {
                    return Err(OAuthClientError::AlreadyRegistered);
                }
                match (confidential, &secret_hash) {
                    (true, None) => return Err(OAuthClientError::SecretRequired),
                    (false, Some(_)) => return Err(OAuthClientError::PublicClientSecret),
                    _ => {}
                }
                E::OAuthClientRegistered {
                    client_id,
                    organization_id,
                    confidential,
                    settings: settings.validated(confidential)?,
                    secret_hash,
                    registered_by,
                    at,
                }
            }
            C::Update { changes, at } => {
                let current = self.ensure_live()?;
                let settings = current.changed(changes).validated(self.confidential)?;
                if settings == *current {
                    return Ok(());
                }
                E::OAuthClientUpdated { settings, at }
            }
            C::RotateSecret { secret_hash, at } => {
                self.ensure_live()?;
                if !self.confidential {
                    return Err(OAuthClientError::PublicClientSecret);
                }
                E::OAuthClientSecretRotated { secret_hash, at }
            }
            C::Delete { at } => {
                self.ensure_live()?;
                E::OAuthClientDeleted { at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: OAuthClientEvent) {
        use OAuthClientEvent as E;
        match event {
            E::OAuthClientRegistered {
                client_id,
                organization_id,
                confidential,
                settings,
                secret_hash,
                registered_by,
                at,
            } => {
                self.client_id = Some(client_id);
                self.organization_id = organization_id;
                self.confidential = confidential;
                self.settings = Some(settings);
                self.secret_hash = secret_hash;
                self.registered_by = Some(registered_by);
                self.registered_at = Some(at);
            }
            E::OAuthClientUpdated { settings, at } => {
                self.settings = Some(settings);
                self.updated_at = Some(at);
            }
            E::OAuthClientSecretRotated { secret_hash, at } => {
                self.secret_hash = Some(secret_hash);
                self.secret_rotated_at = Some(at);
            }
            E::OAuthClientDeleted { .. } => self.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    type ClientTest = TestFramework<OAuthClient>;

    fn t(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + chrono::Duration::minutes(minute)
    }

    fn id() -> Uuid {
        Uuid::from_u128(7)
    }

    fn admin() -> Uuid {
        Uuid::from_u128(1)
    }

    fn settings() -> ClientSettings {
        ClientSettings {
            name: "Billing portal".into(),
            redirect_uris: vec!["https://billing.example.com/callback".into()],
            post_logout_redirect_uris: vec!["https://billing.example.com/".into()],
            scopes: vec!["openid".into(), "email".into()],
            grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
            first_party: false,
            access_token_format: AccessTokenFormat::Paseto,
            access_token_alg: SigningAlg::EdDSA,
            id_token_alg: SigningAlg::RS256,
        }
    }

    fn register(confidential: bool, settings: ClientSettings) -> OAuthClientCommand {
        OAuthClientCommand::Register {
            client_id: id(),
            organization_id: Some(Uuid::from_u128(2)),
            confidential,
            settings,
            secret_hash: confidential.then(|| TokenHash::from_bytes([1; 32])),
            registered_by: admin(),
            at: t(0),
        }
    }

    fn registered(confidential: bool) -> OAuthClientEvent {
        OAuthClientEvent::OAuthClientRegistered {
            client_id: id(),
            organization_id: Some(Uuid::from_u128(2)),
            confidential,
            settings: settings(),
            secret_hash: confidential.then(|| TokenHash::from_bytes([1; 32])),
            registered_by: admin(),
            at: t(0),
        }
    }

    fn refused(confidential: bool, settings: ClientSettings, error: OAuthClientError) {
        ClientTest::with(())
            .given_no_previous_events()
            .when(register(confidential, settings))
            .then_expect_error(error);
    }

    #[test]
    fn registering_records_the_settings_and_the_secret_hash() {
        ClientTest::with(())
            .given_no_previous_events()
            .when(register(true, settings()))
            .then_expect_events(vec![registered(true)]);
        ClientTest::with(())
            .given(vec![registered(true)])
            .when(register(true, settings()))
            .then_expect_error(OAuthClientError::AlreadyRegistered);
    }

    #[test]
    fn registering_normalises_the_settings() {
        let typed = ClientSettings {
            name: "  Billing portal ".into(),
            redirect_uris: vec![
                "https://billing.example.com/callback".into(),
                "https://billing.example.com/callback".into(),
            ],
            scopes: vec!["email".into(), "openid".into(), "email".into()],
            grant_types: vec![
                GrantType::RefreshToken,
                GrantType::AuthorizationCode,
                GrantType::RefreshToken,
            ],
            ..settings()
        };
        ClientTest::with(())
            .given_no_previous_events()
            .when(register(true, typed))
            .then_expect_events(vec![registered(true)]);
    }

    #[test]
    fn a_public_client_has_no_secret_and_no_client_credentials() {
        ClientTest::with(())
            .given_no_previous_events()
            .when(register(false, settings()))
            .then_expect_events(vec![registered(false)]);
        refused(
            false,
            ClientSettings {
                grant_types: vec![GrantType::AuthorizationCode, GrantType::ClientCredentials],
                ..settings()
            },
            OAuthClientError::PublicClientCredentials,
        );
        let with_secret = OAuthClientCommand::Register {
            client_id: id(),
            organization_id: None,
            confidential: false,
            settings: settings(),
            secret_hash: Some(TokenHash::from_bytes([1; 32])),
            registered_by: admin(),
            at: t(0),
        };
        ClientTest::with(())
            .given_no_previous_events()
            .when(with_secret)
            .then_expect_error(OAuthClientError::PublicClientSecret);
        ClientTest::with(())
            .given(vec![registered(false)])
            .when(OAuthClientCommand::RotateSecret {
                secret_hash: TokenHash::from_bytes([2; 32]),
                at: t(1),
            })
            .then_expect_error(OAuthClientError::PublicClientSecret);
    }

    #[test]
    fn a_confidential_client_needs_a_secret() {
        let without = OAuthClientCommand::Register {
            client_id: id(),
            organization_id: None,
            confidential: true,
            settings: settings(),
            secret_hash: None,
            registered_by: admin(),
            at: t(0),
        };
        ClientTest::with(())
            .given_no_previous_events()
            .when(without)
            .then_expect_error(OAuthClientError::SecretRequired);
    }

    #[test]
    fn redirect_uris_are_absolute_https_or_loopback_or_private_use_without_fragment() {
        for good in [
            "https://app.example.com/callback",
            "https://app.example.com:8443/cb?tenant=1",
            "http://127.0.0.1:8080/callback",
            "http://127.0.0.1/callback",
            "http://[::1]:53124/cb",
            "http://localhost:3000/auth/callback",
            "com.example.app:/oauth2redirect",
            "com.example.app://callback",
        ] {
            assert!(is_valid_redirect_uri(good), "{good}");
        }
        for bad in [
            "",
            "/callback",
            "app.example.com/callback",
            "http://app.example.com/callback",
            "http://192.168.1.10/callback",
            "http://localhost.example.com/cb",
            "https://app.example.com/callback#fragment",
            "https://app.example.com/callback#",
            "https://user:pass@app.example.com/cb",
            "javascript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "ftp://files.example.com/",
            "https://app.example.com/call back",
            "https://app.example.com/\ncallback",
        ] {
            assert!(!is_valid_redirect_uri(bad), "{bad:?}");
        }
        let long = format!(
            "https://app.example.com/{}",
            "a".repeat(MAX_REDIRECT_URI_LEN)
        );
        assert!(!is_valid_redirect_uri(&long));
        refused(
            true,
            ClientSettings {
                redirect_uris: vec!["http://app.example.com/callback".into()],
                ..settings()
            },
            OAuthClientError::InvalidRedirectUri,
        );
        refused(
            true,
            ClientSettings {
                post_logout_redirect_uris: vec!["https://app.example.com/#bye".into()],
                ..settings()
            },
            OAuthClientError::InvalidPostLogoutRedirectUri,
        );
        let many = (0..=MAX_REDIRECT_URIS)
            .map(|i| format!("https://app.example.com/{i}"))
            .collect();
        refused(
            true,
            ClientSettings {
                redirect_uris: many,
                ..settings()
            },
            OAuthClientError::InvalidRedirectUri,
        );
    }

    #[test]
    fn the_code_flow_needs_a_redirect_uri_and_refresh_needs_the_code_flow() {
        refused(
            true,
            ClientSettings {
                redirect_uris: vec![],
                ..settings()
            },
            OAuthClientError::RedirectUriRequired,
        );
        refused(
            true,
            ClientSettings {
                grant_types: vec![GrantType::RefreshToken, GrantType::ClientCredentials],
                ..settings()
            },
            OAuthClientError::RefreshTokenWithoutCode,
        );
        refused(
            true,
            ClientSettings {
                grant_types: vec![],
                ..settings()
            },
            OAuthClientError::NoGrantType,
        );
        // A machine client needs no redirect URI.
        let machine = ClientSettings {
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            scopes: vec![],
            grant_types: vec![GrantType::ClientCredentials],
            ..settings()
        };
        assert!(machine.validated(true).is_ok());
    }

    #[test]
    fn scopes_names_and_algorithms_are_checked() {
        refused(
            true,
            ClientSettings {
                scopes: vec!["openid".into(), "admin".into()],
                ..settings()
            },
            OAuthClientError::UnknownScope,
        );
        for name in ["", "   ", "tab\there", &"n".repeat(101)] {
            refused(
                true,
                ClientSettings {
                    name: name.to_owned(),
                    ..settings()
                },
                OAuthClientError::InvalidName,
            );
        }
        for alg in [SigningAlg::RS256, SigningAlg::EdDSA, SigningAlg::ES256] {
            let s = ClientSettings {
                id_token_alg: alg,
                ..settings()
            };
            assert!(s.validated(true).is_ok(), "{alg:?}");
            // RFC 9068 §2.1: RS256 is among a JWT access token's algorithms.
            let s = ClientSettings {
                access_token_alg: alg,
                ..settings()
            };
            assert!(s.validated(true).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn an_update_records_the_whole_settings_and_only_when_something_changed() {
        let changed = ClientSettings {
            name: "Billing".into(),
            first_party: true,
            ..settings()
        };
        ClientTest::with(())
            .given(vec![registered(true)])
            .when(OAuthClientCommand::Update {
                changes: ClientChanges {
                    name: Some(" Billing ".into()),
                    first_party: Some(true),
                    ..ClientChanges::default()
                },
                at: t(1),
            })
            .then_expect_events(vec![OAuthClientEvent::OAuthClientUpdated {
                settings: changed,
                at: t(1),
            }]);
        ClientTest::with(())
            .given(vec![registered(true)])
            .when(OAuthClientCommand::Update {
                changes: ClientChanges {
                    name: Some("Billing portal".into()),
                    ..ClientChanges::default()
                },
                at: t(1),
            })
            .then_expect_events(vec![]);
        // The rules hold for the settings as they would become.
        ClientTest::with(())
            .given(vec![registered(false)])
            .when(OAuthClientCommand::Update {
                changes: ClientChanges {
                    grant_types: Some(vec![GrantType::ClientCredentials]),
                    ..ClientChanges::default()
                },
                at: t(1),
            })
            .then_expect_error(OAuthClientError::PublicClientCredentials);
        ClientTest::with(())
            .given(vec![registered(true)])
            .when(OAuthClientCommand::Update {
                changes: ClientChanges {
                    redirect_uris: Some(vec![]),
                    ..ClientChanges::default()
                },
                at: t(1),
            })
            .then_expect_error(OAuthClientError::RedirectUriRequired);
    }

    #[test]
    fn rotating_replaces_the_secret() {
        ClientTest::with(())
            .given(vec![registered(true)])
            .when(OAuthClientCommand::RotateSecret {
                secret_hash: TokenHash::from_bytes([2; 32]),
                at: t(1),
            })
            .then_expect_events(vec![OAuthClientEvent::OAuthClientSecretRotated {
                secret_hash: TokenHash::from_bytes([2; 32]),
                at: t(1),
            }]);
        let mut client = OAuthClient::default();
        client.apply(registered(true));
        client.apply(OAuthClientEvent::OAuthClientSecretRotated {
            secret_hash: TokenHash::from_bytes([2; 32]),
            at: t(1),
        });
        assert_eq!(client.secret_hash, Some(TokenHash::from_bytes([2; 32])));
        assert_eq!(client.secret_rotated_at, Some(t(1)));
    }

    #[test]
    fn a_deleted_or_unknown_client_accepts_nothing() {
        let deleted = OAuthClientEvent::OAuthClientDeleted { at: t(1) };
        let commands = || {
            [
                OAuthClientCommand::Update {
                    changes: ClientChanges {
                        name: Some("x".into()),
                        ..ClientChanges::default()
                    },
                    at: t(2),
                },
                OAuthClientCommand::RotateSecret {
                    secret_hash: TokenHash::from_bytes([3; 32]),
                    at: t(2),
                },
                OAuthClientCommand::Delete { at: t(2) },
            ]
        };
        for command in commands() {
            ClientTest::with(())
                .given(vec![registered(true), deleted.clone()])
                .when(command)
                .then_expect_error(OAuthClientError::NotFound);
        }
        for command in commands() {
            ClientTest::with(())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(OAuthClientError::NotFound);
        }
        ClientTest::with(())
            .given(vec![registered(true)])
            .when(OAuthClientCommand::Delete { at: t(1) })
            .then_expect_events(vec![deleted.clone()]);
        // Its id is never registered again.
        ClientTest::with(())
            .given(vec![registered(true), deleted])
            .when(register(true, settings()))
            .then_expect_error(OAuthClientError::AlreadyRegistered);
    }

    #[test]
    fn applying_any_event_twice_equals_applying_it_once() {
        let history = vec![
            registered(true),
            OAuthClientEvent::OAuthClientUpdated {
                settings: ClientSettings {
                    name: "Billing".into(),
                    ..settings()
                },
                at: t(1),
            },
            OAuthClientEvent::OAuthClientSecretRotated {
                secret_hash: TokenHash::from_bytes([2; 32]),
                at: t(2),
            },
            OAuthClientEvent::OAuthClientDeleted { at: t(3) },
        ];
        let (mut once, mut twice) = (OAuthClient::default(), OAuthClient::default());
        for event in history {
            once.apply(event.clone());
            twice.apply(event.clone());
            twice.apply(event);
            assert_eq!(once, twice);
        }
    }

    #[test]
    fn the_wire_names_are_stable() {
        let json = serde_json::to_value(registered(true)).unwrap();
        let body = &json["OAuthClientRegistered"];
        assert_eq!(
            body["grant_types"],
            serde_json::json!(["authorization_code", "refresh_token"])
        );
        assert_eq!(body["access_token_format"], "paseto");
        assert_eq!(body["access_token_alg"], "EdDSA");
        assert_eq!(body["id_token_alg"], "RS256");
        assert_eq!(body["name"], "Billing portal");
        assert_eq!(body["secret_hash"], "01".repeat(32));
        let back: OAuthClientEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, registered(true));
    }
}
