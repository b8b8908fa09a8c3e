//! The one place where failures become HTTP answers.
//!
//! Every error leaves as `{"error": "<stable code>", "message": "<safe text>"}`.
//! Causes of 5xx answers are logged, never sent.

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use keyledger_commands::{AuthError, OAuthClientError, OrganizationError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("a valid bearer access token is required")]
    Unauthorized,
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("the request body is too large")]
    PayloadTooLarge,
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// A `Content-Encoding` other than `identity`: bodies are never inflated, so a
    /// small compressed body cannot make the server allocate far past the body limit.
    #[error("request bodies are accepted without Content-Encoding (identity) only")]
    UnsupportedContentEncoding,
    #[error("no such resource")]
    NotFound,
    #[error("the caller may not do this")]
    Forbidden,
    #[error(transparent)]
    Organization(#[from] OrganizationError),
    #[error(transparent)]
    OAuthClient(#[from] OAuthClientError),
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    #[error("too many requests from this address")]
    RateLimited { retry_after: Duration },
    /// A sign-in provider that failed repeatedly (its circuit breaker is open),
    /// timed out or answered with a server error.
    #[error("the sign-in provider is unavailable, try again later")]
    ProviderUnavailable,
    /// A state-changing request authenticated by a session cookie came from an
    /// origin that is not allowed, or without the session's CSRF token.
    #[error("the request must come from an allowed origin and carry the session's CSRF token (X-CSRF-Token)")]
    CsrfFailed,
    /// A CORS preflight from an origin not in `KEYLEDGER_CORS_ORIGINS`.
    #[error("this origin may not call the API from a browser")]
    OriginNotAllowed,
    /// No sign-in provider of that name is configured.
    #[error("no sign-in provider of that name is configured")]
    UnknownProvider,
    /// A valid access token whose scope does not cover the route (RFC 6750 §3.1).
    #[error("the access token's scope does not allow this")]
    InsufficientScope,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Auth(e) => match e {
                AuthError::InvalidEmail => "invalid_email",
                AuthError::InvalidDisplayName => "invalid_display_name",
                AuthError::EmailTaken => "email_taken",
                AuthError::WeakPassword(_) => "weak_password",
                AuthError::InvalidCredentials => "invalid_credentials",
                AuthError::TooManyAttempts { .. } => "too_many_attempts",
                AuthError::Overloaded => "overloaded",
                AuthError::TooManyConcurrentAttempts => "too_many_concurrent_attempts",
                AuthError::InvalidRefreshToken => "invalid_refresh_token",
                AuthError::RefreshTokenReused { .. } => "refresh_token_reused",
                AuthError::SessionNotFound => "session_not_found",
                AuthError::OrganizationNotFound | AuthError::UserNotFound => "not_found",
                AuthError::AccountSuspended => "account_suspended",
                AuthError::Conflict => "conflict",
                AuthError::LastAdmin => "last_admin",
                AuthError::ReauthenticationRequired => "reauthentication_required",
                AuthError::CutoffInFuture => "cutoff_in_future",
                AuthError::EmailNotVerified => "email_not_verified",
                AuthError::InvalidToken => "invalid_token",
                AuthError::EmailLoginOff => "email_login_disabled",
                AuthError::InvalidMfaToken => "invalid_mfa_token",
                AuthError::InvalidCode => "invalid_code",
                AuthError::SecondFactorNotFound => "second_factor_not_found",
                AuthError::NoSecondFactor => "no_second_factor",
                AuthError::TooManySecondFactors => "too_many_second_factors",
                AuthError::InvalidPhone => "invalid_phone",
                AuthError::MfaEnrollmentRequired => "mfa_enrollment_required",
                AuthError::InvalidChallenge => "invalid_challenge",
                AuthError::InvalidPasskey => "invalid_passkey",
                AuthError::PasskeyAlreadyRegistered => "passkey_already_registered",
                AuthError::PasskeyNotFound => "passkey_not_found",
                AuthError::TooManyPasskeys => "too_many_passkeys",
                AuthError::InvalidPasskeyName => "invalid_name",
                AuthError::LastWayToSignIn => "last_sign_in_method",
                AuthError::InvalidState => "invalid_state",
                AuthError::AccountExists => "account_exists",
                AuthError::IdentityInUse => "identity_in_use",
                AuthError::ProviderAlreadyLinked => "provider_already_linked",
                AuthError::TooManyExternalIdentities => "too_many_identities",
                AuthError::ExternalIdentityNotFound => "identity_not_found",
                AuthError::ProviderEmailMissing => "email_required",
                AuthError::Unavailable(_) => "unavailable",
            },
            Self::Unauthorized => "invalid_token",
            Self::BadRequest { code, .. } => code,
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UnsupportedContentEncoding => "unsupported_content_encoding",
            Self::NotFound => "not_found",
            Self::Forbidden => "forbidden",
            Self::Organization(e) => organization_code(e),
            Self::OAuthClient(e) => oauth_client_code(e),
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::ProviderUnavailable => "provider_unavailable",
            Self::UnknownProvider => "unknown_provider",
            Self::CsrfFailed => "csrf_failed",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::InsufficientScope => "insufficient_scope",
            Self::Internal(_) => "internal_error",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Auth(AuthError::TooManyAttempts { retry_after })
            | Self::RateLimited { retry_after } => Some(*retry_after),
            Self::ProviderUnavailable => Some(Duration::from_secs(5)),
            Self::Auth(
                AuthError::Overloaded
                | AuthError::TooManyConcurrentAttempts
                | AuthError::Conflict
                | AuthError::Unavailable(_),
            )
            | Self::Organization(OrganizationError::Conflict | OrganizationError::Unavailable(_))
            | Self::OAuthClient(OAuthClientError::Conflict | OAuthClientError::Unavailable(_)) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Auth(e) => match e {
                AuthError::InvalidEmail
                | AuthError::InvalidDisplayName
                | AuthError::WeakPassword(_)
                | AuthError::CutoffInFuture
                | AuthError::InvalidPasskeyName
                | AuthError::InvalidPhone => StatusCode::UNPROCESSABLE_ENTITY,
                AuthError::EmailTaken
                | AuthError::Conflict
                | AuthError::LastAdmin
                | AuthError::NoSecondFactor
                | AuthError::TooManySecondFactors
                | AuthError::PasskeyAlreadyRegistered
                | AuthError::TooManyPasskeys
                | AuthError::LastWayToSignIn
                | AuthError::AccountExists
                | AuthError::IdentityInUse
                | AuthError::ProviderAlreadyLinked
                | AuthError::TooManyExternalIdentities => StatusCode::CONFLICT,
                AuthError::InvalidCredentials
                | AuthError::ReauthenticationRequired
                | AuthError::InvalidRefreshToken
                | AuthError::InvalidMfaToken
                | AuthError::InvalidCode
                | AuthError::InvalidPasskey
                | AuthError::RefreshTokenReused { .. } => StatusCode::UNAUTHORIZED,
                AuthError::TooManyAttempts { .. } | AuthError::TooManyConcurrentAttempts => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                AuthError::Overloaded | AuthError::Unavailable(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                AuthError::SessionNotFound
                | AuthError::OrganizationNotFound
                | AuthError::UserNotFound
                | AuthError::SecondFactorNotFound
                | AuthError::PasskeyNotFound
                | AuthError::ExternalIdentityNotFound => StatusCode::NOT_FOUND,
                AuthError::AccountSuspended
                | AuthError::EmailNotVerified
                | AuthError::MfaEnrollmentRequired => StatusCode::FORBIDDEN,
                AuthError::InvalidToken
                | AuthError::InvalidChallenge
                | AuthError::InvalidState
                | AuthError::ProviderEmailMissing => StatusCode::BAD_REQUEST,
                AuthError::EmailLoginOff => StatusCode::NOT_FOUND,
            },
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType | Self::UnsupportedContentEncoding => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Organization(e) => organization_status(e),
            Self::OAuthClient(e) => oauth_client_status(e),
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ProviderUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnknownProvider => StatusCode::NOT_FOUND,
            Self::CsrfFailed | Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::InsufficientScope => StatusCode::FORBIDDEN,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let message = match self {
            Self::Auth(AuthError::Unavailable(cause))
            | Self::Organization(OrganizationError::Unavailable(cause))
            | Self::OAuthClient(OAuthClientError::Unavailable(cause))
            | Self::Internal(cause) => {
                tracing::error!(%cause, code = self.code(), "request failed");
                if status.is_server_error() && matches!(self, Self::Internal(_)) {
                    "internal error".to_owned()
                } else {
                    "a backing service is unavailable, try again shortly".to_owned()
                }
            }
            other => other.to_string(),
        };
        let mut body = json!({ "error": self.code(), "message": message });
        if let Self::Auth(AuthError::WeakPassword(weak)) = self {
            body["reasons"] = json!(weak.reasons);
        }
        let mut response = HttpResponse::build(status);
        if let Some(after) = self.retry_after() {
            response.insert_header((header::RETRY_AFTER, after.as_secs().max(1).to_string()));
        }
        if let Self::InsufficientScope = self {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
            ));
        }
        if status == StatusCode::UNAUTHORIZED && matches!(self, Self::Unauthorized) {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            ));
        }
        // RFC 6749 5.2: a failed client authentication names the scheme the
        // client may use (HTTP Basic, `client_secret_basic`).
        if matches!(self, Self::OAuthClient(OAuthClientError::InvalidClient)) {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"keyledger\""),
            ));
        }
        response.json(body)
    }
}

fn organization_code(e: &OrganizationError) -> &'static str {
    use OrganizationError as E;
    match e {
        E::InvalidSlug => "invalid_slug",
        E::InvalidName => "invalid_name",
        E::InvalidRoleName => "invalid_role_name",
        E::InvalidPermission => "invalid_permission",
        E::InvalidSettings => "invalid_settings",
        E::SlugTaken => "slug_taken",
        // Whatever is missing, the answer is the same as for a wrong id.
        E::NotFound | E::RoleNotFound | E::ServiceAccountNotFound | E::NotMember => "not_found",
        E::UserNotFound => "user_not_found",
        E::AlreadyMember => "already_member",
        E::InvalidEmail => "invalid_email",
        // Someone else's invitation is as absent as one that never existed.
        E::InvitationNotFound => "not_found",
        E::InvitationExpired => "invitation_expired",
        E::LastOwner => "last_owner",
        E::NoRoles => "no_roles",
        E::CannotGrant => "cannot_grant",
        E::Suspended => "organization_suspended",
        E::InvalidClient => "invalid_client",
        E::Conflict => "conflict",
        E::Unavailable(_) => "unavailable",
    }
}

fn organization_status(e: &OrganizationError) -> StatusCode {
    use OrganizationError as E;
    match e {
        E::InvalidSlug
        | E::InvalidName
        | E::InvalidRoleName
        | E::InvalidPermission
        | E::InvalidSettings
        | E::InvalidEmail
        | E::NoRoles => StatusCode::UNPROCESSABLE_ENTITY,
        E::SlugTaken | E::AlreadyMember | E::LastOwner | E::Suspended | E::Conflict => {
            StatusCode::CONFLICT
        }
        E::NotFound
        | E::RoleNotFound
        | E::ServiceAccountNotFound
        | E::NotMember
        | E::InvitationNotFound => StatusCode::NOT_FOUND,
        E::InvitationExpired => StatusCode::GONE,
        E::UserNotFound => StatusCode::UNPROCESSABLE_ENTITY,
        E::CannotGrant => StatusCode::FORBIDDEN,
        E::InvalidClient => StatusCode::UNAUTHORIZED,
        E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn oauth_client_code(e: &OAuthClientError) -> &'static str {
    use keyledger_commands::OAuthClientRule as R;
    use OAuthClientError as E;
    match e {
        E::Refused(R::InvalidName) => "invalid_name",
        E::Refused(R::InvalidRedirectUri) => "invalid_redirect_uri",
        E::Refused(R::InvalidPostLogoutRedirectUri) => "invalid_post_logout_redirect_uri",
        E::Refused(R::RedirectUriRequired) => "redirect_uri_required",
        E::Refused(R::UnknownScope) => "invalid_scope",
        E::Refused(R::NoGrantType) => "invalid_grant_types",
        E::Refused(R::RefreshTokenWithoutCode) => "invalid_grant_types",
        E::Refused(R::PublicClientCredentials) => "invalid_grant_types",
        E::Refused(R::PublicClientSecret) => "public_client",
        // Never wrapped: the commands answer these as NotFound and Conflict.
        E::Refused(R::NotFound) => "not_found",
        E::Refused(R::AlreadyRegistered | R::SecretRequired) => "conflict",
        E::ScopeNotAllowed => "invalid_scope",
        // Whatever is missing, the answer is the same as for a wrong id.
        E::NotFound | E::ConsentNotFound | E::UserNotFound => "not_found",
        E::AccountSuspended => "account_suspended",
        E::InvalidClient => "invalid_client",
        E::Conflict => "conflict",
        E::Unavailable(_) => "unavailable",
    }
}

fn oauth_client_status(e: &OAuthClientError) -> StatusCode {
    use keyledger_commands::OAuthClientRule as R;
    use OAuthClientError as E;
    match e {
        E::Refused(R::InvalidName)
        | E::Refused(R::InvalidRedirectUri)
        | E::Refused(R::InvalidPostLogoutRedirectUri)
        | E::Refused(R::RedirectUriRequired)
        | E::Refused(R::UnknownScope)
        | E::Refused(R::NoGrantType)
        | E::Refused(R::RefreshTokenWithoutCode)
        | E::Refused(R::PublicClientCredentials)
        | E::ScopeNotAllowed => StatusCode::UNPROCESSABLE_ENTITY,
        E::Refused(R::PublicClientSecret | R::AlreadyRegistered | R::SecretRequired)
        | E::Conflict => StatusCode::CONFLICT,
        E::Refused(R::NotFound) => StatusCode::NOT_FOUND,
        E::NotFound | E::ConsentNotFound | E::UserNotFound => StatusCode::NOT_FOUND,
        E::AccountSuspended => StatusCode::FORBIDDEN,
        E::InvalidClient => StatusCode::UNAUTHORIZED,
        E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Maps actix's own extractor failures (bad JSON, wrong content type, too large)
/// into the same envelope.
pub fn json_error(err: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::OverflowKnownLength { .. } | E::Overflow { .. } => ApiError::PayloadTooLarge,
        E::ContentType => ApiError::UnsupportedMediaType,
        // Valid JSON that lacks a required field is an incomplete request, not bad JSON.
        E::Deserialize(e) if is_missing_field(&e) => {
            ApiError::bad_request("invalid_request", json_message(&e))
        }
        E::Deserialize(e) => ApiError::bad_request("invalid_json", json_message(&e)),
        E::Payload(actix_web::error::PayloadError::Overflow) => ApiError::PayloadTooLarge,
        // Its text is a cause (`Some(Custom { kind: UnexpectedEof, .. })`), not a message.
        E::Payload(_) => unreadable_body(),
        other => ApiError::bad_request("invalid_json", other.to_string()),
    }
}

/// Maps a failure reading a raw body (the [`crate::extract::Body`] extractor) into the
/// same envelope: actix's own answers for these are plain text.
pub fn payload_error(err: &actix_web::Error) -> ApiError {
    use actix_web::error::PayloadError as E;
    match err.as_error::<E>() {
        Some(E::Overflow) => ApiError::PayloadTooLarge,
        _ => unreadable_body(),
    }
}

/// A body that could not be read: cut short. (A `Content-Encoding` never gets this
/// far: see [`crate::hardening::refuse_encoded_bodies`].)
pub fn unreadable_body() -> ApiError {
    ApiError::bad_request(
        "invalid_body",
        "the request body could not be read (incomplete)",
    )
}

/// serde reports a required field absent from well-formed JSON as a data error
/// whose message starts "missing field".
pub fn is_missing_field(e: &serde_json::Error) -> bool {
    e.classify() == serde_json::error::Category::Data && e.to_string().starts_with("missing field")
}

/// serde's messages can quote the offending value (which may be a password), so
/// only messages that name a field are passed on; the rest say where, not what.
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("missing field") || text.starts_with("unknown field") {
        return format!("request body is not valid: {text}");
    }
    match e.classify() {
        serde_json::error::Category::Data => format!(
            "request body has a value of the wrong type (line {}, column {})",
            e.line(),
            e.column()
        ),
        _ => format!(
            "request body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ),
    }
}
