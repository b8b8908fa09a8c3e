//! The OAuth client registry: applications that sign users in with Keyledger as
//! their OpenID provider, and the consent each user gave them.
//!
//! The API decides who may act on a client (a platform administrator on any, an
//! organization's administrator on that organization's); the aggregate
//! (`keyledger_domain::oauth_client`) decides what a client may be. This service
//! decides what the aggregate must not: ids, times and secrets.
//!
//! Everything the protocol endpoints ask ([`OAuthClients::find`],
//! [`OAuthClients::authenticate`], [`OAuthClients::consented_scopes`]) is read
//! from the stored history, never from this process's cache: a secret rotated, a
//! client deleted or a consent revoked on another node counts here at once.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use keyledger_domain::oauth_client::{
    normalise_scopes, ClientChanges, ClientSettings, OAuthClient, OAuthClientCommand,
    OAuthClientError as DomainError,
};
pub use keyledger_domain::oauth_client::{
    AccessTokenFormat, GrantType, OAuthClientError as OAuthClientRule, SigningAlg,
};
use keyledger_domain::{OAuthConsentCommand, TokenHash, User, UserCommand, UserError};
use keyledger_storage::{with_readers, Database};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::RequestContext;
use crate::data_keys::PersonalDataSealer;
use crate::log_lookups::EventLogLookups;
use crate::store::{event_store, AggregateStore, StoreError};

/// A registered client as the protocol endpoints and the admin API see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientView {
    pub client_id: Uuid,
    /// None: registered by a platform admin.
    pub organization_id: Option<Uuid>,
    pub name: String,
    /// false: public client (PKCE required, no secret).
    pub confidential: bool,
    /// Exact match.
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// Allowed scopes, e.g. openid profile email offline_access.
    pub scopes: Vec<String>,
    pub grant_types: Vec<GrantType>,
    /// true: no consent page.
    pub first_party: bool,
    pub access_token_format: AccessTokenFormat,
    /// For Jwt access tokens: EdDSA (default) or ES256.
    pub access_token_alg: SigningAlg,
    /// RS256 (default), EdDSA or ES256.
    pub id_token_alg: SigningAlg,
}

impl ClientView {
    fn of(client: &OAuthClient) -> Option<Self> {
        let settings = client.settings.clone().filter(|_| client.is_live())?;
        let ClientSettings {
            name,
            redirect_uris,
            post_logout_redirect_uris,
            scopes,
            grant_types,
            first_party,
            access_token_format,
            access_token_alg,
            id_token_alg,
        } = settings;
        Some(Self {
            client_id: client.client_id?,
            organization_id: client.organization_id,
            name,
            confidential: client.confidential,
            redirect_uris,
            post_logout_redirect_uris,
            scopes,
            grant_types,
            first_party,
            access_token_format,
            access_token_alg,
            id_token_alg,
        })
    }
}

/// A client to register, as an administrator described it (checked by the
/// aggregate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClient {
    pub organization_id: Option<Uuid>,
    pub name: String,
    pub confidential: bool,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<GrantType>,
    pub first_party: bool,
    pub access_token_format: AccessTokenFormat,
    pub access_token_alg: SigningAlg,
    pub id_token_alg: SigningAlg,
}

/// Changes to a client; `None` keeps a setting.
pub type ClientUpdate = ClientChanges;

/// A client's secret: `klc_` + base64url(256 random bits). Only its SHA-256
/// hash is stored, so it is shown once, at registration or rotation. `Debug`
/// never prints it.
pub struct OAuthClientSecret(String);

impl OAuthClientSecret {
    const PREFIX: &'static str = "klc_";

    pub fn generate() -> Self {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).expect("the operating system's random source failed");
        Self(format!("{}{}", Self::PREFIX, URL_SAFE_NO_PAD.encode(raw)))
    }

    /// What is stored: SHA-256 of the whole secret (256 random bits: a slow
    /// password hash would add nothing).
    pub fn hash(&self) -> TokenHash {
        digest(&self.0)
    }

    /// The secret itself, to hand to the administrator once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for OAuthClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OAuthClientSecret(<redacted>)")
    }
}

fn digest(secret: &str) -> TokenHash {
    TokenHash::from_bytes(Sha256::digest(secret.as_bytes()).into())
}

/// A registered client and, for a confidential one, its secret (shown once).
#[derive(Debug)]
pub struct RegisteredClient {
    pub client: ClientView,
    pub client_secret: Option<OAuthClientSecret>,
}

/// A consent as its giver sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsentView {
    pub client_id: Uuid,
    pub client_name: String,
    pub scopes: Vec<String>,
    pub granted_at: DateTime<Utc>,
}

/// Outcomes a caller must tell apart. Messages are safe to show to clients.
#[derive(Debug, thiserror::Error)]
pub enum OAuthClientError {
    /// A rule of the client's settings, as the registry words it (its name,
    /// redirect URIs, grants, scopes; a public client has no secret).
    #[error(transparent)]
    Refused(OAuthClientRule),
    /// Unknown, deleted or malformed: one answer.
    #[error("no such client")]
    NotFound,
    #[error("the client may not ask for this scope")]
    ScopeNotAllowed,
    #[error("no consent given to this client")]
    ConsentNotFound,
    #[error("no such user")]
    UserNotFound,
    #[error("the account is suspended")]
    AccountSuspended,
    /// Deliberately one answer for every failed client authentication.
    #[error("client authentication failed")]
    InvalidClient,
    #[error("the client is being changed concurrently, try again")]
    Conflict,
    /// The detail is for logs; the message shown is generic.
    #[error("the service is temporarily unavailable")]
    Unavailable(String),
}

impl From<DomainError> for OAuthClientError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound => Self::NotFound,
            // A fresh id that exists, or a secret this service always makes for
            // a confidential client: someone else got there first, or a bug.
            DomainError::AlreadyRegistered | DomainError::SecretRequired => Self::Conflict,
            rule => Self::Refused(rule),
        }
    }
}

impl From<UserError> for OAuthClientError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::NotRegistered | UserError::Erased => Self::UserNotFound,
            UserError::Suspended => Self::AccountSuspended,
            UserError::NoSuchConsent => Self::ConsentNotFound,
            other => Self::Unavailable(format!("unexpected refusal: {other}")),
        }
    }
}

impl From<sqlx::Error> for OAuthClientError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

fn store_error<E>(e: StoreError<E>) -> OAuthClientError
where
    E: std::error::Error,
    OAuthClientError: From<E>,
{
    match e {
        StoreError::Rejected(inner) => inner.into(),
        StoreError::Conflict => OAuthClientError::Conflict,
        StoreError::Unavailable(why) => OAuthClientError::Unavailable(why),
    }
}

/// Compared against when the client has no stored secret (unknown, deleted or
/// public), so that every authentication costs the same comparison.
const STAND_IN_HASH: [u8; 32] = [0; 32];

/// What "no secret presented" compares as: never equal to [`STAND_IN_HASH`].
const NOTHING_PRESENTED: [u8; 32] = [0xff; 32];

/// A secret longer than this is not one of ours (they are 47 characters); it is
/// not hashed, so its size costs nothing.
const MAX_SECRET_LEN: usize = 256;

/// The ids of registered clients (deleted ones too), from the event log.
const REGISTERED_CLIENTS: &str = "SELECT aggregate_id FROM events
      WHERE aggregate_type = 'oauth_client' AND sequence = 1
      ORDER BY aggregate_id";

/// The registry's use cases over one database. Cheap to clone: clones share the
/// stores (and their caches).
#[derive(Clone)]
pub struct OAuthClients {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    clients: AggregateStore<OAuthClient>,
    users: AggregateStore<User>,
    log: EventLogLookups,
    /// Seals the caller's address and user agent in event metadata.
    keys: Arc<PersonalDataSealer>,
}

impl OAuthClients {
    pub fn new(storage: &Database, keys: Arc<PersonalDataSealer>) -> Self {
        Self {
            inner: Arc::new(Inner {
                db: storage.clone(),
                clients: AggregateStore::new(event_store(storage), ()),
                users: AggregateStore::new(event_store(storage), ()),
                log: EventLogLookups::new(storage),
                keys,
            }),
        }
    }

    /// The client of `client_id` as stored now.
    async fn load(&self, client_id: Uuid) -> Result<OAuthClient, OAuthClientError> {
        let loaded = self
            .inner
            .clients
            .load_fresh(&client_id.to_string())
            .await
            .map_err(store_error)?;
        Ok(loaded.aggregate().clone())
    }

    /// Whether the client's organization, if it has one, is suspended: its
    /// clients then act as if they did not exist, as its service accounts do.
    async fn organization_suspended(&self, client: &OAuthClient) -> Result<bool, OAuthClientError> {
        match client.organization_id {
            Some(org) if client.is_live() => Ok(self.inner.log.organization_suspended(org).await?),
            _ => Ok(false),
        }
    }

    /// A live (registered, not deleted) client; None for an unknown, deleted or
    /// malformed id, and for a client of a suspended organization.
    pub async fn find(&self, client_id: &str) -> Result<Option<ClientView>, OAuthClientError> {
        let Some(id) = parse_client_id(client_id) else {
            return Ok(None);
        };
        self.find_by_id(id).await
    }

    /// A live client whatever its organization's state (for its administrators).
    pub async fn get(&self, client_id: Uuid) -> Result<Option<ClientView>, OAuthClientError> {
        Ok(ClientView::of(&self.load(client_id).await?))
    }

    /// [`Self::find`] for an id already parsed.
    pub async fn find_by_id(
        &self,
        client_id: Uuid,
    ) -> Result<Option<ClientView>, OAuthClientError> {
        let client = self.load(client_id).await?;
        if self.organization_suspended(&client).await? {
            return Ok(None);
        }
        Ok(ClientView::of(&client))
    }

    /// Client authentication at the token/revoke/introspect endpoints: a
    /// confidential client must present its current secret (constant-time
    /// compare of SHA-256 digests); a public client must present none. Any
    /// failure is [`OAuthClientError::InvalidClient`]; an unknown client is
    /// looked up and compared like a known one.
    pub async fn authenticate(
        &self,
        client_id: &str,
        secret: Option<&str>,
    ) -> Result<ClientView, OAuthClientError> {
        let result = self.authenticate_client(client_id, secret).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(OAuthClientError::InvalidClient) => "invalid_client",
            Err(_) => "error",
        };
        metrics::counter!("keyledger_oauth_client_authentications_total", "outcome" => outcome)
            .increment(1);
        result
    }

    async fn authenticate_client(
        &self,
        client_id: &str,
        secret: Option<&str>,
    ) -> Result<ClientView, OAuthClientError> {
        use OAuthClientError::InvalidClient;
        let id = parse_client_id(client_id).ok_or(InvalidClient)?;
        let presented = match secret {
            Some(s) if s.len() <= MAX_SECRET_LEN => digest(s),
            _ => TokenHash::from_bytes(NOTHING_PRESENTED),
        };
        let client = self.load(id).await?;
        let stored = client
            .secret_hash
            .unwrap_or(TokenHash::from_bytes(STAND_IN_HASH));
        // Both sides evaluated, no shortcut that would time differently.
        let secret_matches = stored == presented;
        let accepted = if client.confidential {
            secret_matches & secret.is_some()
        } else {
            secret.is_none()
        };
        let view = ClientView::of(&client).filter(|_| accepted);
        let Some(view) = view else {
            return Err(InvalidClient);
        };
        if self.organization_suspended(&client).await? {
            return Err(InvalidClient);
        }
        Ok(view)
    }

    /// Registers a client on behalf of `by` (the administrator, recorded in the
    /// event). A confidential client gets a fresh secret, shown here only.
    pub async fn register(
        &self,
        by: Uuid,
        client: NewClient,
        ctx: &RequestContext,
    ) -> Result<RegisteredClient, OAuthClientError> {
        let client_id = Uuid::new_v4();
        let secret = client.confidential.then(OAuthClientSecret::generate);
        let at = Utc::now();
        let NewClient {
            organization_id,
            name,
            confidential,
            redirect_uris,
            post_logout_redirect_uris,
            scopes,
            grant_types,
            first_party,
            access_token_format,
            access_token_alg,
            id_token_alg,
        } = client;
        let command = OAuthClientCommand::Register {
            client_id,
            organization_id,
            confidential,
            settings: ClientSettings {
                name,
                redirect_uris,
                post_logout_redirect_uris,
                scopes,
                grant_types,
                first_party,
                access_token_format,
                access_token_alg,
                id_token_alg,
            },
            secret_hash: secret.as_ref().map(OAuthClientSecret::hash),
            registered_by: by,
            at,
        };
        let committed = self
            .inner
            .clients
            .execute_new(
                &client_id.to_string(),
                command,
                &self.inner.keys.metadata(ctx, at, None, None).await?,
            )
            .await
            .map_err(store_error)?;
        let view = ClientView::of(&committed.aggregate).ok_or(OAuthClientError::Conflict)?;
        Ok(RegisteredClient {
            client: view,
            client_secret: secret,
        })
    }

    /// Changes a client's settings (the rules hold for the settings as they
    /// become); nothing is written when nothing changes.
    pub async fn update(
        &self,
        client_id: Uuid,
        changes: ClientUpdate,
        ctx: &RequestContext,
    ) -> Result<ClientView, OAuthClientError> {
        let at = Utc::now();
        let committed = self
            .inner
            .clients
            .execute(
                &client_id.to_string(),
                OAuthClientCommand::Update { changes, at },
                &self.inner.keys.metadata(ctx, at, None, None).await?,
            )
            .await
            .map_err(store_error)?;
        ClientView::of(&committed.aggregate).ok_or(OAuthClientError::NotFound)
    }

    /// Replaces a confidential client's secret; the old one stops working at
    /// once. The new one is shown here only.
    pub async fn rotate_secret(
        &self,
        client_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<(ClientView, OAuthClientSecret), OAuthClientError> {
        let secret = OAuthClientSecret::generate();
        let at = Utc::now();
        let committed = self
            .inner
            .clients
            .execute(
                &client_id.to_string(),
                OAuthClientCommand::RotateSecret {
                    secret_hash: secret.hash(),
                    at,
                },
                &self.inner.keys.metadata(ctx, at, None, None).await?,
            )
            .await
            .map_err(store_error)?;
        let view = ClientView::of(&committed.aggregate).ok_or(OAuthClientError::NotFound)?;
        Ok((view, secret))
    }

    /// Deletes a client: it authenticates no more and [`Self::find`] answers
    /// None. Its id is never used again.
    pub async fn delete(
        &self,
        client_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<(), OAuthClientError> {
        let at = Utc::now();
        self.inner
            .clients
            .execute(
                &client_id.to_string(),
                OAuthClientCommand::Delete { at },
                &self.inner.keys.metadata(ctx, at, None, None).await?,
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// The live clients, of one organization (`Some`) or all (`None`), by name.
    /// Read from the event log (a client registry is small): the ids of every
    /// client ever registered, then each client's stored history.
    pub async fn list(
        &self,
        organization_id: Option<Uuid>,
    ) -> Result<Vec<ClientView>, OAuthClientError> {
        let ids: Vec<String> = with_readers!(self.inner.db, |pool| {
            sqlx::query_scalar(REGISTERED_CLIENTS)
                .fetch_all(pool)
                .await?
        });
        let mut clients = Vec::new();
        for id in ids.iter().filter_map(|id| id.parse::<Uuid>().ok()) {
            let client = self.load(id).await?;
            if organization_id.is_some() && client.organization_id != organization_id {
                continue;
            }
            clients.extend(ClientView::of(&client));
        }
        clients.sort_by(|a, b| a.name.cmp(&b.name).then(a.client_id.cmp(&b.client_id)));
        Ok(clients)
    }

    /// Scopes the user has consented to for this client (empty: none).
    pub async fn consented_scopes(
        &self,
        user_id: Uuid,
        client_id: Uuid,
    ) -> Result<Vec<String>, OAuthClientError> {
        let user = self.user(user_id).await?;
        Ok(user
            .oauth_consent(client_id)
            .map(|c| c.scopes.clone())
            .unwrap_or_default())
    }

    /// Remembers consent (an event on the user's aggregate; scopes are unioned
    /// with those consented before). The scopes must be known and allowed to
    /// the client; nothing is written when all were consented to already.
    pub async fn grant_consent(
        &self,
        user_id: Uuid,
        client_id: Uuid,
        scopes: &[String],
        ctx: &RequestContext,
    ) -> Result<(), OAuthClientError> {
        let scopes = normalise_scopes(scopes)?;
        let client = self
            .find_by_id(client_id)
            .await?
            .ok_or(OAuthClientError::NotFound)?;
        if !scopes.iter().all(|s| client.scopes.contains(s)) {
            return Err(OAuthClientError::ScopeNotAllowed);
        }
        let at = Utc::now();
        let command = UserCommand::OAuthConsent(OAuthConsentCommand::Grant {
            client_id,
            scopes,
            at,
        });
        self.inner
            .users
            .execute(
                &user_id.to_string(),
                command,
                &self
                    .inner
                    .keys
                    .metadata(ctx, at, None, Some(user_id))
                    .await?,
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Forgets the user's consent to `client_id` (whether or not the client
    /// still exists): the next sign-in through it asks again.
    pub async fn revoke_consent(
        &self,
        user_id: Uuid,
        client_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<(), OAuthClientError> {
        let at = Utc::now();
        let command = UserCommand::OAuthConsent(OAuthConsentCommand::Revoke { client_id, at });
        self.inner
            .users
            .execute(
                &user_id.to_string(),
                command,
                &self
                    .inner
                    .keys
                    .metadata(ctx, at, None, Some(user_id))
                    .await?,
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// The user's consents to clients that still exist, by client name.
    pub async fn consents(&self, user_id: Uuid) -> Result<Vec<ConsentView>, OAuthClientError> {
        let user = self.user(user_id).await?;
        let mut out = Vec::with_capacity(user.oauth_consents.len());
        for (client_id, consent) in &user.oauth_consents {
            let Some(client) = self.find_by_id(*client_id).await? else {
                continue;
            };
            out.push(ConsentView {
                client_id: *client_id,
                client_name: client.name,
                scopes: consent.scopes.clone(),
                granted_at: consent.granted_at,
            });
        }
        out.sort_by(|a, b| {
            a.client_name
                .cmp(&b.client_name)
                .then(a.client_id.cmp(&b.client_id))
        });
        Ok(out)
    }

    /// The user as stored now; an unknown or erased account is `UserNotFound`.
    async fn user(&self, user_id: Uuid) -> Result<User, OAuthClientError> {
        let loaded = self
            .inner
            .users
            .load_fresh(&user_id.to_string())
            .await
            .map_err(store_error)?;
        let user = loaded.aggregate();
        if !user.is_registered() || user.erased {
            return Err(OAuthClientError::UserNotFound);
        }
        Ok(user.clone())
    }
}

/// A client id as presented: a uuid, surrounding spaces ignored; anything
/// longer than a uuid URN is refused unparsed.
fn parse_client_id(raw: &str) -> Option<Uuid> {
    if raw.len() > 64 {
        return None;
    }
    raw.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_only_their_hash_is_kept() {
        let secret = OAuthClientSecret::generate();
        assert!(secret.expose().starts_with("klc_"));
        assert_eq!(secret.expose().len(), 4 + 43);
        assert_eq!(secret.hash(), digest(secret.expose()));
        assert_ne!(OAuthClientSecret::generate().hash(), secret.hash());
        let shown = format!("{secret:?}");
        assert!(!shown.contains(&secret.expose()[4..]));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn the_stand_ins_never_match_each_other() {
        assert_ne!(
            TokenHash::from_bytes(STAND_IN_HASH),
            TokenHash::from_bytes(NOTHING_PRESENTED)
        );
    }

    #[test]
    fn client_ids_are_uuids_and_bounded() {
        let id = Uuid::new_v4();
        assert_eq!(parse_client_id(&id.to_string()), Some(id));
        assert_eq!(parse_client_id(&format!(" {id} ")), Some(id));
        assert_eq!(parse_client_id("billing"), None);
        assert_eq!(parse_client_id(&"a".repeat(10_000)), None);
    }

    /// Compiles only if the service's futures can move between threads.
    #[allow(dead_code)]
    fn service_futures_are_send(service: &OAuthClients, ctx: &RequestContext) {
        fn assert_send<T: Send>(_: T) {}
        let id = Uuid::nil();
        assert_send(service.find(""));
        assert_send(service.authenticate("", None));
        assert_send(service.consented_scopes(id, id));
        assert_send(service.grant_consent(id, id, &[], ctx));
        assert_send(service.list(None));
        assert_send(service.consents(id));
    }
}
