//! The OAuth/OpenID client registry (`/v1/oidc/clients…`) and a user's remembered
//! consents (`/v1/auth/me/consents…`).
//!
//! Who may act on a client: a platform administrator (unscoped token) on any; an
//! owner or admin of an organization on that organization's clients, registered
//! with its `organization_id`. Anyone else learns nothing: a client they may not
//! manage answers 404 as if it did not exist. Only a platform administrator makes
//! a client first-party (its users see no consent page), since that speaks for
//! every user of the platform.
//!
//! A confidential client's secret is in the answer to its registration and to a
//! rotation (`Cache-Control: no-store`), and nowhere else: only its hash is kept.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_commands::{
    AccessClaims, AccessTokenFormat, ClientUpdate, ClientView, GrantType, NewClient,
    OAuthClientError, OAuthClientRule, OrganizationError, SigningAlg, SubjectKind,
};
use keyledger_domain::organization::RoleRef;
use keyledger_domain::permission::BuiltInRole;
use keyledger_projections::Subject;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{Authenticated, Context};
use crate::openapi::endpoint;
use crate::openapi::{bearer, failures, json_body, unavailable};
use crate::resources::organizations::{in_scope, path_id};
use crate::resources::Routes;
use crate::state::{AppState, State};

/// How a client may get tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

impl From<Grant> for GrantType {
    fn from(grant: Grant) -> Self {
        match grant {
            Grant::AuthorizationCode => Self::AuthorizationCode,
            Grant::RefreshToken => Self::RefreshToken,
            Grant::ClientCredentials => Self::ClientCredentials,
        }
    }
}

impl From<GrantType> for Grant {
    fn from(grant: GrantType) -> Self {
        match grant {
            GrantType::AuthorizationCode => Self::AuthorizationCode,
            GrantType::RefreshToken => Self::RefreshToken,
            GrantType::ClientCredentials => Self::ClientCredentials,
        }
    }
}

/// The form of a client's access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenFormat {
    /// PASETO v4.public, as the first-party API issues.
    Paseto,
    /// RFC 9068 `at+jwt`, verifiable with `GET /v1/oidc/jwks`.
    Jwt,
}

impl From<TokenFormat> for AccessTokenFormat {
    fn from(format: TokenFormat) -> Self {
        match format {
            TokenFormat::Paseto => Self::Paseto,
            TokenFormat::Jwt => Self::Jwt,
        }
    }
}

impl From<AccessTokenFormat> for TokenFormat {
    fn from(format: AccessTokenFormat) -> Self {
        match format {
            AccessTokenFormat::Paseto => Self::Paseto,
            AccessTokenFormat::Jwt => Self::Jwt,
        }
    }
}

/// A JWS algorithm.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Alg {
    EdDSA,
    ES256,
    RS256,
}

impl From<Alg> for SigningAlg {
    fn from(alg: Alg) -> Self {
        match alg {
            Alg::EdDSA => Self::EdDSA,
            Alg::ES256 => Self::ES256,
            Alg::RS256 => Self::RS256,
        }
    }
}

impl From<SigningAlg> for Alg {
    fn from(alg: SigningAlg) -> Self {
        match alg {
            SigningAlg::EdDSA => Self::EdDSA,
            SigningAlg::ES256 => Self::ES256,
            SigningAlg::RS256 => Self::RS256,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_scopes() -> Vec<String> {
    vec!["openid".to_owned()]
}

fn default_grants() -> Vec<Grant> {
    vec![Grant::AuthorizationCode, Grant::RefreshToken]
}

fn default_access_alg() -> Alg {
    Alg::EdDSA
}

fn default_id_alg() -> Alg {
    Alg::RS256
}

fn default_format() -> TokenFormat {
    TokenFormat::Paseto
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterClientRequest {
    /// The organization the client belongs to; required of an organization's
    /// administrator, optional for a platform administrator (absent: the platform's).
    organization_id: Option<Uuid>,
    /// 1 to 100 printable characters.
    #[schema(example = "Billing portal")]
    name: String,
    /// `true` (default): a server-side app with a secret; `false`: a public client
    /// (browser or native app, PKCE, no secret, no `client_credentials`).
    #[serde(default = "default_true")]
    confidential: bool,
    /// Exact-match redirect URIs (at most 20): https, http only to 127.0.0.1,
    /// [::1] or localhost, or a private-use scheme (`com.example.app:/callback`);
    /// no fragment. At least one with `authorization_code`.
    #[serde(default)]
    #[schema(example = json!(["https://billing.example.com/callback"]))]
    redirect_uris: Vec<String>,
    /// Where RP-initiated logout may return to; same rules.
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    /// Of `openid`, `profile`, `email`, `offline_access` (default `["openid"]`).
    #[serde(default = "default_scopes")]
    #[schema(example = json!(["openid", "email"]))]
    scopes: Vec<String>,
    /// Default `["authorization_code", "refresh_token"]`.
    #[serde(default = "default_grants")]
    grant_types: Vec<Grant>,
    /// No consent page for its users; platform administrators only.
    #[serde(default)]
    first_party: bool,
    /// Default `paseto`.
    #[serde(default = "default_format")]
    access_token_format: TokenFormat,
    /// For `jwt` access tokens: `EdDSA` (default), `ES256` or `RS256`.
    #[serde(default = "default_access_alg")]
    access_token_alg: Alg,
    /// `RS256` (default), `EdDSA` or `ES256`.
    #[serde(default = "default_id_alg")]
    id_token_alg: Alg,
}

/// Changes to a client; absent fields stay as they are. Whether it is
/// confidential and its organization never change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateClientRequest {
    name: Option<String>,
    redirect_uris: Option<Vec<String>>,
    post_logout_redirect_uris: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    grant_types: Option<Vec<Grant>>,
    /// Platform administrators only.
    first_party: Option<bool>,
    access_token_format: Option<TokenFormat>,
    access_token_alg: Option<Alg>,
    id_token_alg: Option<Alg>,
}

/// A registered client (never its secret).
#[derive(Serialize, ToSchema)]
pub struct ClientResponse {
    client_id: Uuid,
    /// Absent: a client of the platform.
    organization_id: Option<Uuid>,
    name: String,
    confidential: bool,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    scopes: Vec<String>,
    grant_types: Vec<Grant>,
    first_party: bool,
    access_token_format: TokenFormat,
    access_token_alg: Alg,
    id_token_alg: Alg,
}

impl From<ClientView> for ClientResponse {
    fn from(view: ClientView) -> Self {
        Self {
            client_id: view.client_id,
            organization_id: view.organization_id,
            name: view.name,
            confidential: view.confidential,
            redirect_uris: view.redirect_uris,
            post_logout_redirect_uris: view.post_logout_redirect_uris,
            scopes: view.scopes,
            grant_types: view.grant_types.into_iter().map(Grant::from).collect(),
            first_party: view.first_party,
            access_token_format: view.access_token_format.into(),
            access_token_alg: view.access_token_alg.into(),
            id_token_alg: view.id_token_alg.into(),
        }
    }
}

/// A client with its secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct ClientCredentials {
    #[serde(flatten)]
    client: ClientResponse,
    /// A confidential client's `client_secret` (absent for a public client); only
    /// its hash is kept, so it cannot be shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ClientList {
    clients: Vec<ClientResponse>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientFilter {
    /// Only the clients of this organization (required of an organization's
    /// administrator; a platform administrator without it sees every client).
    organization_id: Option<Uuid>,
}

/// What the app's `QueryConfig` answers for a malformed `organization_id`.
pub fn malformed_query() -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        "the query string has a malformed or mistyped parameter",
    )
}

/// Whether the caller is a platform administrator acting platform-wide.
fn platform_admin(state: &AppState, claims: &AccessClaims) -> bool {
    claims.kind == SubjectKind::User
        && claims.organization_id.is_none()
        && state.access.read(|m| m.is_platform_admin(&claims.user_id))
}

/// 404 unless the caller stands in `org` (as `/v1/organizations/{org}` decides),
/// 403 unless as its owner or admin, 409 when it is suspended.
fn ensure_organization_admin(
    state: &AppState,
    claims: &AccessClaims,
    org: &Uuid,
) -> Result<(), ApiError> {
    if claims.kind != SubjectKind::User {
        return Err(ApiError::Forbidden);
    }
    let (roles, suspended) = state.access.read(|m| {
        let roles = m.roles_of(Subject::User(claims.user_id), org).cloned();
        (roles, m.organization(org).map(|o| o.suspended))
    });
    let (Some(roles), Some(suspended)) = (roles, suspended) else {
        return Err(ApiError::NotFound);
    };
    in_scope(claims, org)?;
    let admin = [BuiltInRole::Owner, BuiltInRole::Admin]
        .into_iter()
        .any(|role| roles.contains(&RoleRef::BuiltIn(role)));
    if !admin {
        return Err(ApiError::Forbidden);
    }
    if suspended {
        return Err(OrganizationError::Suspended.into());
    }
    Ok(())
}

/// The client of `raw` if the caller may manage it; 404 otherwise.
async fn managed_client(
    state: &AppState,
    claims: &AccessClaims,
    raw: &str,
) -> Result<ClientView, ApiError> {
    let client_id = path_id(raw)?;
    let client = state
        .oauth_clients
        .get(client_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if platform_admin(state, claims) {
        return Ok(client);
    }
    match client.organization_id {
        Some(org) => match ensure_organization_admin(state, claims, &org) {
            Ok(()) => Ok(client),
            // A suspended organization's clients are still its own.
            Err(ApiError::Organization(OrganizationError::Suspended)) => {
                Err(ApiError::Organization(OrganizationError::Suspended))
            }
            Err(_) => Err(ApiError::NotFound),
        },
        None => Err(ApiError::NotFound),
    }
}

failures!(
    /// What `register_client` can answer besides 201.
    pub RegisterClientFailures = [
        json_body(),
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        OAuthClientError::Refused(OAuthClientRule::InvalidName),
        OAuthClientError::Refused(OAuthClientRule::InvalidRedirectUri),
        OAuthClientError::Refused(OAuthClientRule::InvalidPostLogoutRedirectUri),
        OAuthClientError::Refused(OAuthClientRule::RedirectUriRequired),
        OAuthClientError::Refused(OAuthClientRule::UnknownScope),
        OAuthClientError::Refused(OAuthClientRule::NoGrantType),
        OAuthClientError::Refused(OAuthClientRule::RefreshTokenWithoutCode),
        OAuthClientError::Refused(OAuthClientRule::PublicClientCredentials),
        OrganizationError::Suspended,
        OAuthClientError::Conflict,
        unavailable(),
    ]
);

/// Register a client
///
/// A platform administrator registers any client (`organization_id` optional); an
/// organization's owner or admin registers clients of that organization. A
/// confidential client's secret is in this answer and never again.
#[utoipa::path(
    post,
    path = "/clients",
    tag = "oidc",
    security(("bearer" = [])),
    request_body = RegisterClientRequest,
    responses(
        (status = 201, description = "Registered; `Cache-Control: no-store`.", body = ClientCredentials),
        RegisterClientFailures,
    )
)]
pub async fn register_client(
    state: State,
    ctx: Context,
    caller: Authenticated,
    body: web::Json<RegisterClientRequest>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    let body = body.into_inner();
    if platform_admin(&state, &claims) {
        if let Some(org) = body.organization_id {
            if state.access.read(|m| m.organization(&org).is_none()) {
                return Err(ApiError::NotFound);
            }
        }
    } else {
        let org = body.organization_id.ok_or(ApiError::Forbidden)?;
        ensure_organization_admin(&state, &claims, &org)?;
        if body.first_party {
            return Err(ApiError::Forbidden);
        }
    }
    let client = NewClient {
        organization_id: body.organization_id,
        name: body.name,
        confidential: body.confidential,
        redirect_uris: body.redirect_uris,
        post_logout_redirect_uris: body.post_logout_redirect_uris,
        scopes: body.scopes,
        grant_types: body.grant_types.into_iter().map(GrantType::from).collect(),
        first_party: body.first_party,
        access_token_format: body.access_token_format.into(),
        access_token_alg: body.access_token_alg.into(),
        id_token_alg: body.id_token_alg.into(),
    };
    let ctx = ctx.acting_as(&claims);
    let registered = state
        .oauth_clients
        .register(claims.user_id, client, &ctx)
        .await?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(ClientCredentials {
            client: registered.client.into(),
            client_secret: registered
                .client_secret
                .map(|secret| secret.expose().to_owned()),
        }))
}

failures!(
    /// What `list_clients` can answer besides 200.
    pub ListClientsFailures = [
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        OrganizationError::Suspended,
        malformed_query(),
        unavailable(),
    ]
);

/// The registered clients
///
/// A platform administrator sees every client, or one organization's with
/// `organization_id`; an organization's owner or admin passes its
/// `organization_id`. Never a secret.
#[utoipa::path(
    get,
    path = "/clients",
    tag = "oidc",
    security(("bearer" = [])),
    params(ClientFilter),
    responses(
        (status = 200, description = "Every live client asked for, by name.", body = ClientList),
        ListClientsFailures,
    )
)]
pub async fn list_clients(
    state: State,
    caller: Authenticated,
    query: web::Query<ClientFilter>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    let organization_id = query.organization_id;
    if !platform_admin(&state, &claims) {
        let org = organization_id.ok_or(ApiError::Forbidden)?;
        ensure_organization_admin(&state, &claims, &org)?;
    }
    let clients = state.oauth_clients.list(organization_id).await?;
    Ok(HttpResponse::Ok().json(ClientList {
        clients: clients.into_iter().map(ClientResponse::from).collect(),
    }))
}

failures!(
    /// What `get_client` can answer besides 200.
    pub GetClientFailures = [
        bearer(),
        ApiError::NotFound,
        OrganizationError::Suspended,
        unavailable(),
    ]
);

/// One client
#[utoipa::path(
    get,
    path = "/clients/{client_id}",
    tag = "oidc",
    security(("bearer" = [])),
    params(("client_id" = Uuid, Path, description = "A client the caller manages; any other answers 404.")),
    responses(
        (status = 200, description = "The client (never its secret).", body = ClientResponse),
        GetClientFailures,
    )
)]
pub async fn get_client(
    state: State,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let client = managed_client(&state, &caller.0, &path).await?;
    Ok(HttpResponse::Ok().json(ClientResponse::from(client)))
}

failures!(
    /// What `update_client` can answer besides 200.
    pub UpdateClientFailures = [
        json_body(),
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        OAuthClientError::Refused(OAuthClientRule::InvalidName),
        OAuthClientError::Refused(OAuthClientRule::InvalidRedirectUri),
        OAuthClientError::Refused(OAuthClientRule::InvalidPostLogoutRedirectUri),
        OAuthClientError::Refused(OAuthClientRule::RedirectUriRequired),
        OAuthClientError::Refused(OAuthClientRule::UnknownScope),
        OAuthClientError::Refused(OAuthClientRule::NoGrantType),
        OAuthClientError::Refused(OAuthClientRule::RefreshTokenWithoutCode),
        OAuthClientError::Refused(OAuthClientRule::PublicClientCredentials),
        OrganizationError::Suspended,
        OAuthClientError::Conflict,
        unavailable(),
    ]
);

/// Change a client
///
/// Absent fields stay as they are; the rules hold for the client as it becomes.
/// Only a platform administrator changes `first_party`.
#[utoipa::path(
    patch,
    path = "/clients/{client_id}",
    tag = "oidc",
    security(("bearer" = [])),
    params(("client_id" = Uuid, Path, description = "A client the caller manages; any other answers 404.")),
    request_body = UpdateClientRequest,
    responses(
        (status = 200, description = "The client as it is now.", body = ClientResponse),
        UpdateClientFailures,
    )
)]
pub async fn update_client(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<UpdateClientRequest>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    let client = managed_client(&state, &claims, &path).await?;
    let body = body.into_inner();
    if body.first_party.is_some_and(|f| f != client.first_party) && !platform_admin(&state, &claims)
    {
        return Err(ApiError::Forbidden);
    }
    let changes = ClientUpdate {
        name: body.name,
        redirect_uris: body.redirect_uris,
        post_logout_redirect_uris: body.post_logout_redirect_uris,
        scopes: body.scopes,
        grant_types: body
            .grant_types
            .map(|grants| grants.into_iter().map(GrantType::from).collect()),
        first_party: body.first_party,
        access_token_format: body.access_token_format.map(Into::into),
        access_token_alg: body.access_token_alg.map(Into::into),
        id_token_alg: body.id_token_alg.map(Into::into),
    };
    let ctx = ctx.acting_as(&claims);
    let updated = state
        .oauth_clients
        .update(client.client_id, changes, &ctx)
        .await?;
    Ok(HttpResponse::Ok().json(ClientResponse::from(updated)))
}

failures!(
    /// What `delete_client` can answer besides 204.
    pub DeleteClientFailures = [
        bearer(),
        ApiError::NotFound,
        OrganizationError::Suspended,
        OAuthClientError::Conflict,
        unavailable(),
    ]
);

/// Delete a client
///
/// Its secret stops working and it can no longer sign anyone in, at once.
#[utoipa::path(
    delete,
    path = "/clients/{client_id}",
    tag = "oidc",
    security(("bearer" = [])),
    params(("client_id" = Uuid, Path, description = "A client the caller manages; any other answers 404.")),
    responses(
        (status = 204, description = "Deleted."),
        DeleteClientFailures,
    )
)]
pub async fn delete_client(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    let client = managed_client(&state, &claims, &path).await?;
    let ctx = ctx.acting_as(&claims);
    state.oauth_clients.delete(client.client_id, &ctx).await?;
    Ok(HttpResponse::NoContent().finish())
}

failures!(
    /// What `rotate_client_secret` can answer besides 200.
    pub RotateClientSecretFailures = [
        bearer(),
        ApiError::NotFound,
        OAuthClientError::Refused(OAuthClientRule::PublicClientSecret),
        OrganizationError::Suspended,
        OAuthClientError::Conflict,
        unavailable(),
    ]
);

/// Issue a new client secret
///
/// The previous secret stops working at once. The new one is in this answer and
/// never again. A public client has no secret (409).
#[utoipa::path(
    post,
    path = "/clients/{client_id}/secret",
    tag = "oidc",
    security(("bearer" = [])),
    params(("client_id" = Uuid, Path, description = "A client the caller manages; any other answers 404.")),
    responses(
        (status = 200, description = "The new secret, shown once; `Cache-Control: no-store`.", body = ClientCredentials),
        RotateClientSecretFailures,
    )
)]
pub async fn rotate_client_secret(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    let client = managed_client(&state, &claims, &path).await?;
    let ctx = ctx.acting_as(&claims);
    let (client, secret) = state
        .oauth_clients
        .rotate_secret(client.client_id, &ctx)
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(ClientCredentials {
            client: client.into(),
            client_secret: Some(secret.expose().to_owned()),
        }))
}

// ---------------------------------------------------------------- consents

/// What the signed-in user allowed one application.
#[derive(Serialize, ToSchema)]
pub struct ConsentResponse {
    client_id: Uuid,
    client_name: String,
    scopes: Vec<String>,
    granted_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct ConsentList {
    consents: Vec<ConsentResponse>,
}

failures!(
    /// What `list_consents` can answer besides 200.
    pub ListConsentsFailures = [bearer(), ApiError::Forbidden, unavailable()]
);

/// The applications the caller allowed
///
/// Every client the signed-in user consented to (and that still exists), with the
/// scopes allowed. Service accounts have none (403).
#[utoipa::path(
    get,
    path = "/me/consents",
    tag = "oidc",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's consents, by client name.", body = ConsentList),
        ListConsentsFailures,
    )
)]
pub async fn list_consents(state: State, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    if claims.kind != SubjectKind::User {
        return Err(ApiError::Forbidden);
    }
    let consents = match state.oauth_clients.consents(claims.user_id).await {
        Ok(consents) => consents,
        // Erased meanwhile: nothing to show.
        Err(OAuthClientError::UserNotFound) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(HttpResponse::Ok().json(ConsentList {
        consents: consents
            .into_iter()
            .map(|c| ConsentResponse {
                client_id: c.client_id,
                client_name: c.client_name,
                scopes: c.scopes,
                granted_at: c.granted_at,
            })
            .collect(),
    }))
}

failures!(
    /// What `revoke_consent` can answer besides 204.
    pub RevokeConsentFailures = [
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        OAuthClientError::Conflict,
        unavailable(),
    ]
);

/// Take back a consent
///
/// The application's next sign-in asks the user again.
#[utoipa::path(
    delete,
    path = "/me/consents/{client_id}",
    tag = "oidc",
    security(("bearer" = [])),
    params(("client_id" = Uuid, Path, description = "A client the caller consented to; any other answers 404.")),
    responses(
        (status = 204, description = "Forgotten."),
        RevokeConsentFailures,
    )
)]
pub async fn revoke_consent(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    if claims.kind != SubjectKind::User {
        return Err(ApiError::Forbidden);
    }
    let client_id = path_id(&path)?;
    let ctx = ctx.acting_as(&claims);
    state
        .oauth_clients
        .revoke_consent(claims.user_id, client_id, &ctx)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Registers the client registry in `/v1/oidc` and the consents in `/v1/auth`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.oidc = routes
        .oidc
        .service(endpoint!(self::register_client, self::list_clients))
        .service(endpoint!(
            self::get_client,
            self::update_client,
            self::delete_client
        ))
        .service(endpoint!(self::rotate_client_secret));
    routes.auth = routes
        .auth
        .service(endpoint!(self::list_consents))
        .service(endpoint!(self::revoke_consent));
    routes
}
