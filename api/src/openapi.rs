//! The OpenAPI 3.1 document, generated from the code that serves the API.
//!
//! * Each handler in [`crate::resources`] carries `#[utoipa::path]` (method, path,
//!   request body, success answers) and names the failures it can answer with in a
//!   type made by `failures!`. Failures are rendered through [`ApiError`]'s own `error_response`
//!   (and [`json_error`] for bodies actix refuses), so the status, `error` code,
//!   `message`, `reasons` and headers in the document are exactly what the server sends.
//! * Routes are registered (each resource's `routes`, see [`crate::resources`]) as
//!   [`Endpoint`]s through `utoipa-actix-web`, whose `service` only accepts services
//!   that bring their own documentation. An [`Endpoint`] builds its actix resource from the path and methods
//!   of its `#[utoipa::path]`, so what is served and what is documented cannot drift
//!   apart; its 405 fallback and the rate limits ([`RateLimited`]) document
//!   their answers on the operations they guard.
//! * `GET /openapi.json` serves the document collected while registering; `GET /docs`
//!   renders the same document as plain HTML (no script, nothing from another origin).

use std::collections::BTreeMap;

use actix_web::body::MessageBody;
use actix_web::dev::{AppService, HttpServiceFactory};
use actix_web::http::Method;
use actix_web::{web, FromRequest, Handler, Responder, ResponseError};
use keyledger_commands::{
    AuthError, OAuthClientError, OrganizationError, Password, PasswordPolicy,
};
use keyledger_domain::LockoutPolicy;
use serde_json::Value;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation, PathItem, Paths};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as OpenApiDoc, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::{AppExt, OpenApiFactory};

use crate::error::{json_error, ApiError};

/// Name of the bearer security scheme in the document.
pub const BEARER: &str = "bearer";

/// Name of the error envelope schema in the document.
pub const ERROR_BODY: &str = "ErrorBody";

/// The parts of the document that belong to no route: info, tags, the bearer scheme
/// and the error envelope. Paths are added by registration.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keyledger",
        description = "Event-sourced authentication: registration, login, refresh-token \
rotation, sessions and token validation.\n\n\
Every error is the envelope `ErrorBody` (`{\"error\": \"<code>\", \"message\": \"<text>\"}`, \
plus `reasons` for `weak_password`); `Retry-After` accompanies 429 and 503. Unknown paths \
answer 404 `not_found`, known paths with another method 405 `method_not_allowed`. Request \
bodies are never decompressed: a `Content-Encoding` other than `identity` answers 415 \
`unsupported_content_encoding`. Every response carries an `x-request-id` and the security \
headers `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, a \
`Content-Security-Policy` with `frame-ancestors 'none'` and, unless the route says \
otherwise, `Cache-Control: no-store`.\n\n\
Every `/v1` route is rate limited by class: credential routes per client address (an IPv6 client by its /64) \
and per account, token checks (`validate`, `authorize`, `permissions`, `keys`) per client address with a budget sized for a gateway, \
management routes per token subject (per client address when anonymous); when a budget is spent they \
answer 429 `rate_limited` with `Retry-After`."
    ),
    tags(
        (name = "auth", description = "Accounts, logins, tokens and sessions"),
        (name = "users", description = "An account holder's own account: erasure, and the invitations to organizations addressed to it"),
        (name = "keys", description = "Public keys for verifying access tokens"),
        (name = "access", description = "Authorization decisions, organization-scoped tokens and \
service-account tokens"),
        (name = "organizations", description = "Organizations, members, roles and service accounts. \
Anything of an organization the caller does not belong to answers 404."),
        (name = "admin", description = "Platform administration"),
        (name = "audit", description = "The audit trail and accounts as they were at a past \
instant, for platform administrators and callers holding `audit:read`"),
        (name = "operations", description = "Health and metrics for the platform"),
        (name = "docs", description = "This document and its rendering"),
        (name = "passkeys", description = "Passkeys (WebAuthn): registering and managing them, \
signing in with one, and accounts that have passkeys and no password"),
        (name = "pages", description = "Pages served to browsers: passkey sign-in and registration"),
        (name = "oidc", description = "Keyledger as an OpenID provider: the registry of OAuth/OpenID \
clients (platform administrators, and organization owners and admins for their organization) \
and the consents users gave them"),
    ),
    modifiers(&Shared)
)]
pub struct ApiDoc;

struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("PASETO v4.public")
                    .description(Some(
                        "An access token from login or refresh, sent as \
                         `Authorization: Bearer v4.public.…`. PASETO `v4.public` (Ed25519), \
                         short-lived; verify it offline with the keys of `GET /v1/auth/keys`.",
                    ))
                    .build(),
            ),
        );
        components
            .schemas
            .insert(ERROR_BODY.to_owned(), RefOr::T(error_body_schema()));
    }
}

fn string_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// The envelope every error leaves in (see [`crate::error`]); `error` lists every code.
fn error_body_schema() -> Schema {
    let mut codes: Vec<String> = every_error().iter().map(|e| render(e).code).collect();
    codes.sort();
    codes.dedup();
    ObjectBuilder::new()
        .description(Some("Every error answer."))
        .property(
            "error",
            string_schema()
                .description(Some("Stable machine-readable code."))
                .enum_values(Some(codes)),
        )
        .required("error")
        .property(
            "message",
            string_schema().description(Some("Text safe to show; never a cause.")),
        )
        .required("message")
        .property(
            "reasons",
            ArrayBuilder::new().items(string_schema()).description(Some(
                "Only with `weak_password`: why the password was refused.",
            )),
        )
        .build()
        .into()
}

/// One instance of every error the API can answer with, for the `ErrorBody` code list
/// and for tests. The `match` in `listed` has no wildcard, so a new [`ApiError`] or
/// [`AuthError`] variant does not compile until it is handled there (and added here).
pub fn every_error() -> Vec<ApiError> {
    let all = vec![
        AuthError::InvalidEmail.into(),
        AuthError::InvalidDisplayName.into(),
        AuthError::EmailTaken.into(),
        weak_password().into(),
        AuthError::InvalidCredentials.into(),
        too_many_attempts().into(),
        AuthError::Overloaded.into(),
        AuthError::TooManyConcurrentAttempts.into(),
        AuthError::InvalidRefreshToken.into(),
        refresh_token_reused().into(),
        AuthError::SessionNotFound.into(),
        AuthError::OrganizationNotFound.into(),
        AuthError::AccountSuspended.into(),
        AuthError::UserNotFound.into(),
        AuthError::Conflict.into(),
        AuthError::LastAdmin.into(),
        AuthError::ReauthenticationRequired.into(),
        AuthError::CutoffInFuture.into(),
        AuthError::EmailNotVerified.into(),
        AuthError::InvalidToken.into(),
        AuthError::EmailLoginOff.into(),
        AuthError::InvalidMfaToken.into(),
        AuthError::InvalidCode.into(),
        AuthError::SecondFactorNotFound.into(),
        AuthError::NoSecondFactor.into(),
        AuthError::TooManySecondFactors.into(),
        AuthError::InvalidPhone.into(),
        AuthError::MfaEnrollmentRequired.into(),
        AuthError::InvalidChallenge.into(),
        AuthError::InvalidPasskey.into(),
        AuthError::PasskeyAlreadyRegistered.into(),
        AuthError::PasskeyNotFound.into(),
        AuthError::TooManyPasskeys.into(),
        AuthError::InvalidPasskeyName.into(),
        AuthError::LastWayToSignIn.into(),
        // AccountExists, IdentityInUse, TooManyExternalIdentities and
        // ProviderEmailMissing reach the app only as a callback's `error=`.
        AuthError::InvalidState.into(),
        AuthError::ProviderAlreadyLinked.into(),
        AuthError::ExternalIdentityNotFound.into(),
        ApiError::ProviderUnavailable,
        ApiError::UnknownProvider,
        ApiError::CsrfFailed,
        ApiError::OriginNotAllowed,
        unavailable().into(),
        ApiError::Unauthorized,
        invalid_json(),
        missing_field(),
        json_error(actix_web::error::JsonPayloadError::Overflow { limit: 65536 }),
        json_error(actix_web::error::JsonPayloadError::ContentType),
        crate::error::unreadable_body(),
        ApiError::UnsupportedContentEncoding,
        ApiError::NotFound,
        ApiError::Forbidden,
        ApiError::MethodNotAllowed,
        rate_limited(),
        ApiError::Internal("example".into()),
    ];
    let mut all = all;
    all.extend(organization_errors().into_iter().map(ApiError::from));
    all.extend(oauth_client_errors().into_iter().map(ApiError::from));
    // The request checks of the access, organization and admin routes.
    all.extend([
        crate::resources::access::invalid_permission(),
        crate::resources::access::missing_organization(),
        crate::resources::access::invalid_request(),
        crate::resources::access::unsupported_grant_type(),
        crate::resources::organizations::unknown_role(),
        crate::resources::organizations::invalid_roles(),
        crate::resources::invitations::invalid_invitee(),
        crate::resources::admin::invalid_query(),
        crate::resources::admin::invalid_reason(),
        crate::resources::audit::invalid_filter(),
        crate::resources::audit::invalid_cursor(),
        crate::resources::audit::invalid_time(),
        crate::resources::social::bad_redirect_uri(),
        crate::resources::social::bad_app_state(),
        crate::resources::social::tokens_not_kept(),
        crate::resources::oidc_clients::malformed_query(),
        crate::resources::oidc::unknown_client(),
        crate::resources::oidc::unregistered_redirect(),
        crate::resources::oidc::unparsable(),
        crate::resources::oidc::invalid_logout(),
        crate::resources::oidc::invalid_grant("example"),
        crate::resources::oidc::unauthorized_client("example"),
        crate::resources::oidc::invalid_scope(),
        ApiError::InsufficientScope,
    ]);
    all.iter().for_each(listed);
    all
}

/// Every organization error; the `match` has no wildcard, so a new variant does not
/// compile until it is listed.
fn organization_errors() -> Vec<OrganizationError> {
    use OrganizationError as E;
    let all = vec![
        E::InvalidSlug,
        E::InvalidName,
        E::InvalidRoleName,
        E::InvalidPermission,
        E::InvalidSettings,
        E::SlugTaken,
        E::NotFound,
        E::RoleNotFound,
        E::UserNotFound,
        E::ServiceAccountNotFound,
        E::AlreadyMember,
        E::InvalidEmail,
        E::InvitationNotFound,
        E::InvitationExpired,
        E::NotMember,
        E::LastOwner,
        E::NoRoles,
        E::CannotGrant,
        E::Suspended,
        E::InvalidClient,
        E::Conflict,
        E::Unavailable("example".into()),
    ];
    for e in &all {
        match e {
            E::InvalidSlug
            | E::InvalidName
            | E::InvalidRoleName
            | E::InvalidPermission
            | E::InvalidSettings
            | E::SlugTaken
            | E::NotFound
            | E::RoleNotFound
            | E::UserNotFound
            | E::ServiceAccountNotFound
            | E::AlreadyMember
            | E::InvalidEmail
            | E::InvitationNotFound
            | E::InvitationExpired
            | E::NotMember
            | E::LastOwner
            | E::NoRoles
            | E::CannotGrant
            | E::Suspended
            | E::InvalidClient
            | E::Conflict
            | E::Unavailable(_) => {}
        }
    }
    all
}

/// Every OAuth client error; the `match` has no wildcard, so a new variant does
/// not compile until it is listed.
fn oauth_client_errors() -> Vec<OAuthClientError> {
    use keyledger_commands::OAuthClientRule as R;
    use OAuthClientError as E;
    let all = vec![
        E::Refused(R::InvalidName),
        E::Refused(R::InvalidRedirectUri),
        E::Refused(R::InvalidPostLogoutRedirectUri),
        E::Refused(R::RedirectUriRequired),
        E::Refused(R::UnknownScope),
        E::Refused(R::NoGrantType),
        E::Refused(R::RefreshTokenWithoutCode),
        E::Refused(R::PublicClientCredentials),
        E::Refused(R::PublicClientSecret),
        E::NotFound,
        E::ScopeNotAllowed,
        E::ConsentNotFound,
        E::UserNotFound,
        E::AccountSuspended,
        E::InvalidClient,
        E::Conflict,
        E::Unavailable("example".into()),
    ];
    for e in &all {
        match e {
            E::Refused(R::InvalidName)
            | E::Refused(R::InvalidRedirectUri)
            | E::Refused(R::InvalidPostLogoutRedirectUri)
            | E::Refused(R::RedirectUriRequired)
            | E::Refused(R::UnknownScope)
            | E::Refused(R::NoGrantType)
            | E::Refused(R::RefreshTokenWithoutCode)
            | E::Refused(R::PublicClientCredentials)
            | E::Refused(R::PublicClientSecret)
            // Never wrapped (answered as NotFound and Conflict), so not listed.
            | E::Refused(R::NotFound | R::AlreadyRegistered | R::SecretRequired)
            | E::NotFound
            | E::ScopeNotAllowed
            | E::ConsentNotFound
            | E::UserNotFound
            | E::AccountSuspended
            | E::InvalidClient
            | E::Conflict
            | E::Unavailable(_) => {}
        }
    }
    all
}

/// Errors answered by the router itself rather than by an operation (unknown paths).
pub fn router_errors() -> Vec<ApiError> {
    // The CORS preflight of an origin not allowed (see `browser_session::cors`).
    vec![ApiError::NotFound, ApiError::OriginNotAllowed]
}

fn listed(error: &ApiError) {
    match error {
        ApiError::Auth(
            AuthError::InvalidEmail
            | AuthError::InvalidDisplayName
            | AuthError::EmailTaken
            | AuthError::WeakPassword(_)
            | AuthError::InvalidCredentials
            | AuthError::TooManyAttempts { .. }
            | AuthError::Overloaded
            | AuthError::TooManyConcurrentAttempts
            | AuthError::InvalidRefreshToken
            | AuthError::RefreshTokenReused { .. }
            | AuthError::SessionNotFound
            | AuthError::OrganizationNotFound
            | AuthError::AccountSuspended
            | AuthError::UserNotFound
            | AuthError::Conflict
            | AuthError::LastAdmin
            | AuthError::ReauthenticationRequired
            | AuthError::CutoffInFuture
            | AuthError::EmailNotVerified
            | AuthError::InvalidToken
            | AuthError::EmailLoginOff
            | AuthError::InvalidMfaToken
            | AuthError::InvalidCode
            | AuthError::SecondFactorNotFound
            | AuthError::NoSecondFactor
            | AuthError::TooManySecondFactors
            | AuthError::InvalidPhone
            | AuthError::MfaEnrollmentRequired
            | AuthError::InvalidChallenge
            | AuthError::InvalidPasskey
            | AuthError::PasskeyAlreadyRegistered
            | AuthError::PasskeyNotFound
            | AuthError::TooManyPasskeys
            | AuthError::InvalidPasskeyName
            | AuthError::LastWayToSignIn
            | AuthError::InvalidState
            | AuthError::AccountExists
            | AuthError::IdentityInUse
            | AuthError::ProviderAlreadyLinked
            | AuthError::TooManyExternalIdentities
            | AuthError::ExternalIdentityNotFound
            | AuthError::ProviderEmailMissing
            | AuthError::Unavailable(_),
        )
        | ApiError::Unauthorized
        // json_error's `invalid_json`, `invalid_request`, `invalid_body` and the route checks listed above.
        | ApiError::BadRequest { .. }
        | ApiError::PayloadTooLarge
        | ApiError::UnsupportedMediaType
        | ApiError::UnsupportedContentEncoding
        | ApiError::NotFound
        | ApiError::Forbidden
        | ApiError::Organization(_)
        | ApiError::OAuthClient(_)
        | ApiError::MethodNotAllowed
        | ApiError::RateLimited { .. }
        | ApiError::ProviderUnavailable
        | ApiError::UnknownProvider
        | ApiError::CsrfFailed
        | ApiError::OriginNotAllowed
        | ApiError::InsufficientScope
        | ApiError::Internal(_) => {}
    }
}

/// The per-IP rate limit's answer.
pub fn rate_limited() -> ApiError {
    ApiError::RateLimited {
        retry_after: std::time::Duration::from_secs(1),
    }
}

/// What the default password policy says about a guessable password.
pub fn weak_password() -> AuthError {
    let weak = PasswordPolicy::default()
        .check(&Password::new("password1".into()), &[])
        .expect_err("a guessable password is refused");
    AuthError::WeakPassword(weak)
}

/// A login refused during the default lockout.
pub fn too_many_attempts() -> AuthError {
    let seconds = LockoutPolicy::default().duration.num_seconds().max(1) as u64;
    AuthError::TooManyAttempts {
        retry_after: std::time::Duration::from_secs(seconds),
    }
}

pub fn refresh_token_reused() -> AuthError {
    AuthError::RefreshTokenReused {
        session_id: uuid::Uuid::nil(),
        written: None,
    }
}

pub fn unavailable() -> AuthError {
    AuthError::Unavailable("example".into())
}

/// A body that is not JSON, as the JSON extractor reports it.
pub fn invalid_json() -> ApiError {
    let broken = serde_json::from_str::<Value>("{").expect_err("not JSON");
    json_error(actix_web::error::JsonPayloadError::Deserialize(broken))
}

/// Well-formed JSON without a required field, as the JSON extractor reports it.
pub fn missing_field() -> ApiError {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Example {
        email: String,
    }
    let missing = serde_json::from_str::<Example>("{}").expect_err("a field is missing");
    json_error(actix_web::error::JsonPayloadError::Deserialize(missing))
}

/// One way a request can fail.
pub enum Failure {
    /// An [`ApiError`], documented as its own `error_response` renders it.
    Api(ApiError),
    /// The rate limits of the `/v1` routes (see `crate::rate_limit`).
    RateLimited,
}

/// Failures an operation can answer with; built from [`ApiError`]s, [`AuthError`]s
/// and the groups below.
pub struct Failures(pub Vec<Failure>);

impl From<ApiError> for Failures {
    fn from(error: ApiError) -> Self {
        Self(vec![Failure::Api(error)])
    }
}

impl From<OrganizationError> for Failures {
    fn from(error: OrganizationError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<OAuthClientError> for Failures {
    fn from(error: OAuthClientError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<AuthError> for Failures {
    fn from(error: AuthError) -> Self {
        ApiError::from(error).into()
    }
}

/// What the JSON extractor answers for a body it refuses (via `JsonConfig`'s handler).
pub fn json_body() -> Failures {
    use actix_web::error::JsonPayloadError as E;
    Failures(
        [
            invalid_json(),
            missing_field(),
            json_error(E::Overflow { limit: 65536 }),
            json_error(E::ContentType),
            json_error(E::Payload(
                actix_web::error::PayloadError::EncodingCorrupted,
            )),
            ApiError::UnsupportedContentEncoding,
        ]
        .into_iter()
        .map(Failure::Api)
        .collect(),
    )
}

/// What the [`crate::extract::Body`] extractor answers.
pub fn raw_body() -> Failures {
    Failures(
        [
            ApiError::PayloadTooLarge,
            crate::error::unreadable_body(),
            ApiError::UnsupportedContentEncoding,
        ]
        .into_iter()
        .map(Failure::Api)
        .collect(),
    )
}

/// What the [`crate::extract::Authenticated`] extractor answers.
pub fn bearer() -> Failures {
    Failures(vec![
        Failure::Api(ApiError::Unauthorized),
        // A session cookie instead of the bearer token, on a state-changing
        // request without an allowed origin and the CSRF token.
        Failure::Api(ApiError::CsrfFailed),
        Failure::Api(ApiError::Internal("application state missing".into())),
    ])
}

/// Declares a unit type implementing [`utoipa::IntoResponses`] that documents the
/// given failures (each an [`ApiError`], an [`AuthError`] or a [`Failures`] group), for
/// use in `#[utoipa::path(responses(...))]`.
macro_rules! failures {
    ($(#[$meta:meta])* $vis:vis $name:ident = [$($failure:expr),* $(,)?]) => {
        $(#[$meta])*
        $vis struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::Response>,
            > {
                let mut responses = std::collections::BTreeMap::new();
                $(
                    $crate::openapi::document_failures(
                        &mut responses,
                        $crate::openapi::Failures::from($failure),
                    );
                )*
                responses
            }
        }
    };
}
pub(crate) use failures;

/// An error as the server sends it.
struct Rendered {
    status: u16,
    code: String,
    message: String,
    body: Value,
    headers: Vec<(String, String)>,
}

fn render(error: &ApiError) -> Rendered {
    // Rendering a 5xx logs its cause; documentation is not a failure.
    let response =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            error.error_response()
        });
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != actix_web::http::header::CONTENT_TYPE)
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let bytes = response
        .into_body()
        .try_into_bytes()
        .unwrap_or_else(|_| panic!("error bodies are buffered JSON"));
    let body: Value = serde_json::from_slice(&bytes).expect("error bodies are JSON");
    Rendered {
        status,
        code: body["error"].as_str().unwrap_or_default().to_owned(),
        message: body["message"].as_str().unwrap_or_default().to_owned(),
        body,
        headers,
    }
}

/// Adds failures to a response map, merging those that share a status.
pub fn document_failures(responses: &mut BTreeMap<String, RefOr<Response>>, failures: Failures) {
    for failure in failures.0 {
        match failure {
            Failure::Api(error) => document_error(responses, &render(&error)),
            Failure::RateLimited => document_error(responses, &render(&rate_limited())),
        }
    }
}

fn response_for(responses: &mut BTreeMap<String, RefOr<Response>>, status: u16) -> &mut Response {
    let entry = responses.entry(status.to_string()).or_insert_with(|| {
        let reason = actix_web::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        RefOr::T(Response::new(format!("{reason}.\n")))
    });
    match entry {
        RefOr::T(response) => response,
        RefOr::Ref(_) => unreachable!("failure responses are never references"),
    }
}

fn document_error(responses: &mut BTreeMap<String, RefOr<Response>>, error: &Rendered) {
    let response = response_for(responses, error.status);
    let line = format!("\n- `{}`: {}", error.code, error.message);
    if !response.description.contains(&format!("`{}`", error.code)) {
        response.description.push_str(&line);
    }
    let content = response
        .content
        .entry("application/json".to_owned())
        .or_insert_with(|| {
            RefOr::T(Content::new(Some(RefOr::<Schema>::Ref(
                Ref::from_schema_name(ERROR_BODY),
            ))))
        });
    if let RefOr::T(content) = content {
        content
            .examples
            .entry(error.code.clone())
            .or_insert_with(|| {
                RefOr::T(
                    ExampleBuilder::new()
                        .summary(error.message.clone())
                        .value(Some(error.body.clone()))
                        .build(),
                )
            });
    }
    for (name, value) in &error.headers {
        document_header(response, name, value, &format!("`{}`", error.code));
    }
}

fn document_header(response: &mut Response, name: &str, value: &str, with: &str) {
    let header = response.headers.entry(name.to_owned()).or_insert_with(|| {
        let (schema, meaning) = if value.parse::<u64>().is_ok() {
            (
                ObjectBuilder::new().schema_type(Type::Integer),
                "Seconds to wait before trying again.",
            )
        } else {
            (string_schema(), "How to authenticate.")
        };
        RefOr::T(
            HeaderBuilder::new()
                .schema(Some(schema.build()))
                .description(Some(format!("{meaning} Sent with:")))
                .example(Some(
                    value
                        .parse::<u64>()
                        .map_or_else(|_| value.into(), Value::from),
                ))
                .build(),
        )
    });
    if let RefOr::T(header) = header {
        let description = header.description.get_or_insert_with(String::new);
        if !description.contains(with) {
            description.push_str(if description.ends_with(':') {
                " "
            } else {
                ", "
            });
            description.push_str(with);
        }
    }
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
        &mut item.query,
    ]
    .into_iter()
    .flatten()
    .chain(item.additional_operations.values_mut())
}

fn add_failures(paths: &mut Paths, failures: impl Fn() -> Failures) {
    for item in paths.paths.values_mut() {
        for operation in operations_mut(item) {
            document_failures(&mut operation.responses.responses, failures());
        }
    }
}

fn actix_method(method: &HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}

/// A route served exactly where and how its `#[utoipa::path]` says: the actix resource
/// is built from the documented path and methods, and any other method on that path
/// answers 405 `method_not_allowed` (documented on the path's operations). Create it with
/// `endpoint!`.
pub struct Endpoint {
    docs: Vec<Box<dyn OpenApiFactory>>,
    resource: actix_web::Resource,
    allowed: Vec<String>,
}

thread_local! {
    /// Whether routes registered on this thread are being documented. Only
    /// [`document`] does it; the HTTP workers register the same routes without
    /// building their documentation (about 9 MB per worker, kept by the worker
    /// thread's allocator arena after use) and serve the one document built at
    /// start-up.
    static DOCUMENTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Endpoint {
    pub fn new<P, F, Args>(doc: P, handler: F) -> Self
    where
        P: utoipa::Path + OpenApiFactory + 'static,
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        Self {
            docs: Vec::new(),
            resource: web::resource(P::path()),
            allowed: Vec::new(),
        }
        .also(doc, handler)
    }

    /// Serves another operation on the same path (actix answers 405 from the first
    /// resource that matches a path, so operations sharing a path share a resource).
    pub fn also<P, F, Args>(mut self, doc: P, handler: F) -> Self
    where
        P: utoipa::Path + OpenApiFactory + 'static,
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        for method in P::methods() {
            let method = actix_method(&method);
            self.allowed.push(method.to_string());
            self.resource = self.resource.route(web::method(method).to(handler.clone()));
        }
        self.docs.push(Box::new(doc));
        self
    }
}

impl HttpServiceFactory for Endpoint {
    fn register(self, config: &mut AppService) {
        let allow = self.allowed.join(", ");
        let not_allowed = move || {
            let allow = allow.clone();
            async move {
                let mut response =
                    actix_web::ResponseError::error_response(&ApiError::MethodNotAllowed);
                if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allow) {
                    response
                        .headers_mut()
                        .insert(actix_web::http::header::ALLOW, value);
                }
                response
            }
        };
        self.resource
            .default_service(web::to(not_allowed))
            .register(config);
    }
}

impl OpenApiFactory for Endpoint {
    fn paths(&self) -> Paths {
        let mut paths = Paths::new();
        if DOCUMENTING.get() {
            for doc in &self.docs {
                paths.merge(doc.paths());
            }
            add_failures(&mut paths, || ApiError::MethodNotAllowed.into());
        }
        paths
    }

    fn schemas(&self, schemas: &mut Vec<(String, RefOr<Schema>)>) {
        if DOCUMENTING.get() {
            for doc in &self.docs {
                doc.schemas(schemas);
            }
        }
    }
}

/// `endpoint!(module::handler)`, or several handlers of one path:
/// `endpoint!(module::get_x, module::update_x)`.
macro_rules! endpoint {
    ($module:ident :: $handler:ident $(, $more_module:ident :: $more:ident)* $(,)?) => {
        pastey::paste! {
            $crate::openapi::Endpoint::new($module::[<__path_ $handler>], $module::$handler)
            $(.also($more_module::[<__path_ $more>], $more_module::$more))*
        }
    };
}
pub(crate) use endpoint;

/// Services behind a rate limit: their operations document its 429. Wrap every
/// scope whose paths `rate_limit::Class::of` classifies.
pub struct RateLimited<S>(pub S);

impl<S: HttpServiceFactory> HttpServiceFactory for RateLimited<S> {
    fn register(self, config: &mut AppService) {
        self.0.register(config);
    }
}

impl<S: OpenApiFactory> OpenApiFactory for RateLimited<S> {
    fn paths(&self) -> Paths {
        let mut paths = self.0.paths();
        add_failures(&mut paths, || Failures(vec![Failure::RateLimited]));
        paths
    }

    fn schemas(&self, schemas: &mut Vec<(String, RefOr<Schema>)>) {
        self.0.schemas(schemas);
    }
}

/// The document of every route the server registers, without running it (for tools
/// that export the specification).
pub fn document() -> OpenApiDoc {
    let was = DOCUMENTING.replace(true);
    let app = actix_web::App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi());
    let document = crate::startup::routes(app).split_for_parts().1;
    DOCUMENTING.set(was);
    document
}
