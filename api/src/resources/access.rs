//! "May this subject do this here?" for the rest of the platform, organization-scoped
//! tokens, and the client-credentials grant for service accounts.
//!
//! `authorize` is the platform's hot path: one signature check per token and a
//! lookup in the in-memory access view, never a query.

use actix_web::{web, HttpRequest, HttpResponse};
use keyledger_commands::{AccessClaims, AuthError, OrganizationError, SubjectKind};
use keyledger_domain::permission::Permission;
use keyledger_projections::Subject;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{bearer_claims, live_claims, Authenticated, Body, Context};
use crate::openapi::endpoint;
use crate::openapi::{bearer, failures, json_body, raw_body, unavailable};
use crate::resources::organizations::{path_id, standing, subject_of};
use crate::resources::Routes;
use crate::state::{AppState, State};

/// The permission that lets a caller ask about someone else's permissions (parsed
/// once).
static PERMISSIONS_READ: std::sync::LazyLock<Permission> =
    std::sync::LazyLock::new(|| Permission::parse("permissions:read").expect("a valid permission"));

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// The access token of the subject in question (a user's or a service account's).
    token: String,
    organization_id: Uuid,
    /// A concrete `resource:action` permission (no wildcard).
    #[schema(example = "invoices:read")]
    permission: String,
}

/// The decision.
#[derive(Serialize, ToSchema)]
pub struct AuthorizeResponse {
    allowed: bool,
    /// `granted`, `invalid_token`, `not_a_member`, `permission_not_granted`,
    /// `account_suspended`, `organization_suspended` or
    /// `token_scoped_to_another_organization`.
    #[schema(example = "granted")]
    reason: &'static str,
}

failures!(
    /// What `authorize` can answer besides 200.
    pub AuthorizeFailures = [
        json_body(),
        invalid_permission(),
        ApiError::Unauthorized,
    ]
);

pub fn invalid_permission() -> ApiError {
    ApiError::bad_request(
        "invalid_permission",
        "a permission is `resource:action` in lower case, without wildcard",
    )
}

/// Decide for a subject token
///
/// Holding the subject token is what entitles a caller to the decision: no
/// `Authorization` header is needed, and one that is sent (it must be live) changes
/// nothing, so a caller learns the same with a header as without one. An invalid,
/// expired or revoked subject token is answered
/// `{"allowed": false, "reason": "invalid_token"}`.
#[utoipa::path(
    post,
    path = "/authorize",
    tag = "access",
    request_body = AuthorizeRequest,
    responses(
        (status = 200, description = "Whether the subject may, and why.", body = AuthorizeResponse),
        AuthorizeFailures,
    )
)]
pub async fn authorize(
    state: State,
    req: HttpRequest,
    body: web::Json<AuthorizeRequest>,
) -> Result<HttpResponse, ApiError> {
    let permission = Permission::parse(&body.permission)
        .ok()
        .filter(|p| !p.is_wildcard())
        .ok_or_else(invalid_permission)?;
    let org = body.organization_id;
    // A header that is sent must hold a live token (401 otherwise), but it changes
    // nothing of the answer: holding the subject token is what entitles a caller to
    // it, so a header-less call and one from a caller without `permissions:read`
    // answer alike (the one could always drop its header to become the other).
    bearer_claims(&req)?;
    let Some(claims) = live_claims(&state, &body.token) else {
        return Ok(HttpResponse::Ok().json(AuthorizeResponse {
            allowed: false,
            reason: "invalid_token",
        }));
    };
    let subject = subject_of(&claims);
    let decision = if claims.organization_id.is_some_and(|scoped| scoped != org) {
        AuthorizeResponse {
            allowed: false,
            reason: "token_scoped_to_another_organization",
        }
    } else {
        let d = state.access.read(|m| m.decide(subject, &org, &permission));
        AuthorizeResponse {
            allowed: d.allowed,
            reason: d.reason,
        }
    };
    let allowed = if decision.allowed { "true" } else { "false" };
    metrics::counter!("keyledger_authorize_total", "allowed" => allowed).increment(1);
    Ok(HttpResponse::Ok().json(decision))
}

/// Whether `caller` may ask about `subject` in `org`: it is the subject, or it holds
/// `permissions:read` there. Anyone else: 403 (nothing about the organization is
/// revealed either way).
fn entitled(
    state: &AppState,
    caller: &AccessClaims,
    subject: Option<Subject>,
    org: &Uuid,
) -> Result<(), ApiError> {
    if subject == Some(subject_of(caller)) {
        return Ok(());
    }
    let allowed = state
        .access
        .read(|m| standing(m, caller, org).is_ok_and(|held| held.allows(&PERMISSIONS_READ)));
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PermissionsQuery {
    /// The organization in question. Required; read as an optional string so that a
    /// missing or malformed one is refused with the route's own message.
    #[param(required = true, value_type = String, format = Uuid)]
    organization_id: Option<String>,
}

/// A subject's effective permissions in one organization.
#[derive(Serialize, ToSchema)]
pub struct EffectivePermissions {
    user_id: Uuid,
    organization_id: Uuid,
    /// Role labels: built-in names or custom role ids.
    roles: Vec<String>,
    /// The union of the roles' permissions; empty while the account or organization
    /// is suspended.
    permissions: Vec<String>,
}

failures!(
    /// What `permissions` can answer besides 200.
    pub PermissionsFailures = [
        bearer(),
        missing_organization(),
        ApiError::NotFound,
    ]
);

pub fn missing_organization() -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        "organization_id is required and must be a uuid",
    )
}

/// Effective permissions of a user in an organization
///
/// For the user themself, or a caller holding `permissions:read` in the organization.
/// Anything else — not a member, an unknown user or organization, or a caller not
/// entitled to ask — answers 404.
#[utoipa::path(
    get,
    path = "/permissions/{user_id}",
    tag = "access",
    security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "A user (or a service account id)."), PermissionsQuery),
    responses(
        (status = 200, description = "The user's roles and permissions there.", body = EffectivePermissions),
        PermissionsFailures,
    )
)]
pub async fn permissions(
    state: State,
    caller: Authenticated,
    path: web::Path<String>,
    query: web::Query<PermissionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let org: Uuid = query
        .organization_id
        .as_deref()
        .and_then(|raw| raw.parse().ok())
        .ok_or_else(missing_organization)?;
    let id = path_id(&path)?;
    let caller = caller.0;
    let subject = state.access.read(|m| {
        if m.service_account(&org, &id).is_some() {
            Subject::ServiceAccount(id)
        } else {
            Subject::User(id)
        }
    });
    entitled(&state, &caller, Some(subject), &org).map_err(|_| ApiError::NotFound)?;
    let answer = state.access.read(|m| {
        let roles = m.roles_of(subject, &org)?;
        let permissions = m.effective_permissions(subject, &org)?;
        Some(EffectivePermissions {
            user_id: id,
            organization_id: org,
            roles: roles.iter().map(|r| r.label()).collect(),
            permissions: permissions.iter().map(ToString::to_string).collect(),
        })
    });
    Ok(HttpResponse::Ok().json(answer.ok_or(ApiError::NotFound)?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchOrganizationRequest {
    /// An organization the caller belongs to, or `null` for an unscoped token.
    organization_id: Option<Uuid>,
}

/// Always `Bearer`.
#[derive(Serialize, ToSchema)]
enum BearerType {
    Bearer,
}

/// An access token scoped to one organization.
#[derive(Serialize, ToSchema)]
pub struct ScopedToken {
    /// PASETO `v4.public`, carrying `org` and `roles` claims when scoped.
    access_token: String,
    token_type: BearerType,
    expires_in: u64,
    organization_id: Option<Uuid>,
    roles: Vec<String>,
}

failures!(
    /// What `switch_organization` can answer besides 200.
    pub SwitchOrganizationFailures = [
        json_body(),
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        AuthError::MfaEnrollmentRequired,
        AuthError::ReauthenticationRequired,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Scope the session to an organization
///
/// Answers a new access token carrying the organization and the caller's roles in it,
/// so other modules can decide locally; the session's later refreshes keep the scope
/// (with the roles of the moment). Not a member: 404. An organization whose `mfa`
/// setting is `required` refuses a member without a confirmed second factor (403
/// `mfa_enrollment_required`) and a session that did not prove it (401
/// `reauthentication_required`: sign in with it, or step up); a refresh of a
/// session scoped to it that no longer meets this answers an unscoped token.
#[utoipa::path(
    post,
    path = "/switch-organization",
    tag = "access",
    security(("bearer" = [])),
    request_body = SwitchOrganizationRequest,
    responses(
        (status = 200, description = "A scoped access token; `Cache-Control: no-store`.", body = ScopedToken),
        SwitchOrganizationFailures,
    )
)]
pub async fn switch_organization(
    state: State,
    ctx: Context,
    caller: Authenticated,
    body: web::Json<SwitchOrganizationRequest>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    if claims.kind != SubjectKind::User {
        return Err(ApiError::Forbidden);
    }
    let ctx = ctx.acting_as(&claims);
    let selected = state
        .auth
        .select_organization(
            claims.session_id,
            claims.user_id,
            body.organization_id,
            &ctx,
        )
        .await
        .map_err(|e| match e {
            AuthError::OrganizationNotFound => ApiError::NotFound,
            other => other.into(),
        })?;
    state.settle(selected.written).await;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(ScopedToken {
            access_token: selected.access_token,
            token_type: BearerType::Bearer,
            expires_in: selected.expires_in,
            organization_id: selected.organization_id,
            roles: selected.roles,
        }))
}

/// An OAuth 2.0 token request (RFC 6749 §4.1.3, §4.4, §6), as a form or JSON.
/// The client authenticates with `client_id` and `client_secret` here
/// (`client_secret_post`) or with HTTP Basic (`client_secret_basic`), not both;
/// a public client sends only its `client_id`.
#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    /// `authorization_code`, `refresh_token` or `client_credentials`.
    #[schema(example = "client_credentials")]
    grant_type: String,
    /// The OpenID client's id, or the service account's id for
    /// `client_credentials`.
    client_id: Option<String>,
    /// The client's secret (the service account's, for `client_credentials`).
    client_secret: Option<String>,
    /// `authorization_code`: the code the redirect brought.
    code: Option<String>,
    /// `authorization_code`: the redirect URI the code was sent to.
    redirect_uri: Option<String>,
    /// `authorization_code`: the PKCE verifier (RFC 7636).
    code_verifier: Option<String>,
    /// `refresh_token`: the refresh token.
    refresh_token: Option<String>,
    /// `refresh_token`: a narrower scope than was granted, for this access token.
    scope: Option<String>,
}

/// An OAuth 2.0 token response (no refresh token: ask again with the secret).
#[derive(Serialize, ToSchema)]
pub struct ServiceTokenResponse {
    access_token: String,
    token_type: BearerType,
    expires_in: u64,
    organization_id: Uuid,
    roles: Vec<String>,
}

failures!(
    /// What `token` can answer besides 200.
    pub TokenFailures = [
        raw_body(),
        json_body(),
        invalid_request(),
        unsupported_grant_type(),
        crate::resources::oidc::invalid_grant("example"),
        crate::resources::oidc::unauthorized_client("example"),
        crate::resources::oidc::invalid_scope(),
        OrganizationError::InvalidClient,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Reads the body as a form or as JSON, by its content type; either way a refusal
/// says where, never what (the body holds a secret).
fn token_request(req: &HttpRequest, body: &[u8]) -> Result<TokenRequest, ApiError> {
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut request: TokenRequest = if content_type.starts_with("application/x-www-form-urlencoded")
    {
        serde_urlencoded::from_bytes(body).map_err(|_| invalid_request())?
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice(body).map_err(|e| {
            crate::error::json_error(actix_web::error::JsonPayloadError::Deserialize(e))
        })?
    } else {
        return Err(ApiError::UnsupportedMediaType);
    };
    // RFC 6749 §3.2: a parameter without a value is as if omitted.
    if request.grant_type.is_empty() {
        return Err(invalid_request());
    }
    for value in [
        &mut request.client_id,
        &mut request.client_secret,
        &mut request.code,
        &mut request.redirect_uri,
        &mut request.code_verifier,
        &mut request.refresh_token,
        &mut request.scope,
    ] {
        crate::resources::oidc::present(value);
    }
    Ok(request)
}

pub fn invalid_request() -> ApiError {
    ApiError::bad_request(
        "invalid_request",
        "the form needs grant_type and the grant's parameters, each once",
    )
}

pub fn unsupported_grant_type() -> ApiError {
    ApiError::bad_request(
        "unsupported_grant_type",
        "grant_type must be authorization_code, refresh_token or client_credentials",
    )
}

/// Token endpoint (OAuth 2.0, OpenID Connect)
///
/// - `authorization_code`: an app exchanges the code of the user's sign-in
///   (`/v1/oidc/authorize`) for an access token, an ID token (scope `openid`) and a
///   refresh token (when the client may refresh): once, with the same `redirect_uri`
///   and the PKCE `code_verifier`. A code presented twice ends the session the
///   first exchange started.
/// - `refresh_token`: a new access token and the next refresh token, for the client
///   the session was granted to (rotation and reuse detection as `/v1/auth/refresh`).
/// - `client_credentials`: a service account's token (`client_id` is its id).
///
/// The client authenticates with HTTP Basic or `client_id`/`client_secret` in the
/// body (form or JSON); a public client sends its `client_id` only. An unknown
/// client, a wrong or rotated secret, a deleted account and a suspended
/// organization all answer 401 `invalid_client`.
#[utoipa::path(
    post,
    path = "/token",
    tag = "access",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Tokens; `Cache-Control: no-store`. A service \
            account's answer is `ServiceTokenResponse`, an app's `AppTokenResponse`.",
            body = ServiceTokenResponse),
        TokenFailures,
    )
)]
pub async fn token(
    state: State,
    limits: crate::rate_limit::Limits,
    ctx: crate::extract::Context,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    use crate::resources::oidc;
    let body = token_request(&req, &body.0)?;
    let credentials = oidc::ClientCredentials::of(
        &req,
        body.client_id.as_deref(),
        body.client_secret.as_deref(),
    )?;
    let address = crate::rate_limit::context_address(ctx.0.ip.as_deref());
    match body.grant_type.as_str() {
        "client_credentials" => {}
        "authorization_code" | "refresh_token" => {
            let id = credentials.client_id.clone().unwrap_or_default();
            let client = limits
                .accounts
                .attempt(
                    &id,
                    address,
                    |e: &ApiError| {
                        matches!(
                            e,
                            ApiError::OAuthClient(
                                keyledger_commands::OAuthClientError::InvalidClient
                            )
                        )
                    },
                    oidc::authenticate_client(&state, &credentials),
                )
                .await?;
            return if body.grant_type == "authorization_code" {
                oidc::code_grant(
                    &state,
                    &ctx.0,
                    &client,
                    body.code.as_deref(),
                    body.redirect_uri.as_deref(),
                    body.code_verifier.as_deref(),
                )
                .await
            } else {
                oidc::refresh_grant(
                    &state,
                    &ctx.0,
                    &client,
                    body.refresh_token.as_deref(),
                    body.scope.as_deref(),
                )
                .await
            };
        }
        _ => return Err(unsupported_grant_type()),
    }
    let (Some(id), Some(secret)) = (credentials.client_id, credentials.secret) else {
        return Err(OrganizationError::InvalidClient.into());
    };
    let issued = limits
        .accounts
        .attempt(
            &id,
            address,
            |e| matches!(e, OrganizationError::InvalidClient),
            state.organizations.client_credentials(&id, &secret),
        )
        .await
        .map_err(|e| match e {
            // RFC 6749 §5.2: HTTP Basic failed, so the answer names the scheme.
            ApiError::Organization(OrganizationError::InvalidClient) if credentials.basic => {
                keyledger_commands::OAuthClientError::InvalidClient.into()
            }
            other => other,
        })?;
    // RFC 6749 §5.1: an answer holding a token is never stored.
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Pragma", "no-cache"))
        .json(ServiceTokenResponse {
            access_token: issued.access_token,
            token_type: BearerType::Bearer,
            expires_in: issued.expires_in,
            organization_id: issued.organization_id,
            roles: issued.roles,
        }))
}

/// The write side's view of memberships (for organization-scoped tokens) and of
/// verified addresses (for tokens' `email_verified`), served from the access view.
pub struct Memberships(pub keyledger_projections::AccessView);

impl keyledger_commands::MembershipLookup for Memberships {
    fn roles(&self, user_id: Uuid, organization_id: Uuid) -> Option<Vec<String>> {
        self.0.read(|m| {
            let org = m.organization(&organization_id)?;
            if org.suspended || m.is_suspended(&user_id) {
                return None;
            }
            let roles = m.roles_of(Subject::User(user_id), &organization_id)?;
            Some(roles.iter().map(|r| r.label()).collect())
        })
    }

    fn requires_second_factor(&self, organization_id: Uuid) -> bool {
        self.0.read(|m| {
            m.organization(&organization_id)
                .is_some_and(|o| o.requires_second_factor())
        })
    }
}

impl keyledger_commands::VerifiedAddresses for Memberships {
    fn is_verified(&self, user_id: Uuid) -> bool {
        self.0.read(|m| m.is_email_verified(&user_id))
    }
}

/// Registers the authorization and token-exchange routes in `/v1/auth`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.auth = routes
        .auth
        .service(endpoint!(self::authorize))
        .service(endpoint!(self::permissions))
        .service(endpoint!(self::switch_organization))
        .service(endpoint!(self::token));
    routes
}
