//! Handlers: each validates its input, makes one call, and maps the result.
//!
//! Each handler's `#[utoipa::path]` is its documentation and, through
//! [`crate::openapi::Endpoint`], its registration: the path and methods served are the
//! ones written there. The `*Failures` types list what each can answer besides success.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_commands::{
    AccessClaims, AuthError, OrganizationError, Password, SubjectKind, TokenPair,
};
use keyledger_domain::values::RevocationReason;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{live_claims, Authenticated, Context};
use crate::openapi::{bearer, failures, json_body, refresh_token_reused, too_many_attempts};
use crate::openapi::{unavailable, weak_password};
use crate::rate_limit::{context_address, Limits};
use crate::state::{AppState, State};

#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// An address (RFC 5322 dot-atom local part, IDNA domain); stored trimmed,
    /// lower-cased and NFC. Look-alikes of other addresses (mixed scripts,
    /// letters confusable with ASCII) are refused; fullwidth forms are their ASCII
    /// selves.
    #[schema(example = "ada@example.com")]
    email: String,
    /// 8 to 128 characters, not guessable (zxcvbn), not built from the email or name.
    #[schema(
        example = "correct horse battery staple",
        min_length = 8,
        max_length = 128
    )]
    password: String,
    /// 1 to 100 characters, at least one visible; no control or format characters
    /// (bidi overrides, zero-width spaces).
    #[schema(example = "Ada Lovelace", min_length = 1, max_length = 100)]
    display_name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    #[schema(example = "ada@example.com")]
    email: String,
    #[schema(example = "correct horse battery staple")]
    password: String,
    /// The `device_token` an earlier login to this account answered, to log in as
    /// a trusted device: the account's lockout does not bar it. Never logged.
    #[serde(default)]
    device_token: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The refresh token of the last login or refresh (`klr_…`); it is rotated.
    refresh_token: String,
}

#[derive(Deserialize, ToSchema)]
pub struct ValidateRequest {
    /// An access token (`v4.public.…`).
    token: String,
}

/// Always `Bearer`.
#[derive(Serialize, ToSchema)]
enum BearerType {
    Bearer,
}

/// A new access token and refresh token for one session.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// PASETO `v4.public` access token.
    access_token: String,
    /// Opaque refresh token (`klr_…`), shown once; rotated by every refresh.
    refresh_token: String,
    token_type: BearerType,
    /// Seconds until the access token expires.
    expires_in: u64,
    session_id: Uuid,
    /// Logins only: proof that this client logged in to this account (`kld1.…`).
    /// Keep it and send it with the next logins: then failures from elsewhere
    /// cannot lock this client out.
    #[serde(skip_serializing_if = "Option::is_none")]
    device_token: Option<String>,
}

impl From<TokenPair> for TokenResponse {
    fn from(pair: TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token.expose().to_owned(),
            token_type: BearerType::Bearer,
            expires_in: pair.expires_in,
            session_id: pair.session_id,
            device_token: None,
        }
    }
}

/// Token answers must never be cached by browsers or proxies.
fn no_store(status: actix_web::http::StatusCode) -> actix_web::HttpResponseBuilder {
    let mut builder = HttpResponse::build(status);
    builder.insert_header(("Cache-Control", "no-store"));
    builder
}

/// A new account.
#[derive(Serialize, ToSchema)]
pub struct Registered {
    user_id: Uuid,
    /// The email in its canonical form.
    email: String,
}

failures!(
    /// What `register` can answer besides 201.
    pub RegisterFailures = [
        json_body(),
        AuthError::InvalidEmail,
        AuthError::InvalidDisplayName,
        weak_password(),
        AuthError::EmailTaken,
        AuthError::Overloaded,
        AuthError::TooManyConcurrentAttempts,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Create an account
///
/// Registers an email and password (and an optional display name). The password is
/// checked against the policy and stored only as an Argon2id hash.
#[utoipa::path(
    post,
    path = "/register",
    tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The account exists.", body = Registered),
        RegisterFailures,
    )
)]
pub async fn register(
    state: State,
    limits: Limits,
    ctx: Context,
    body: web::Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    // Every registration of an email counts against it: the answer is the same
    // whether the account existed, so there is no "success" to tell apart. A
    // budget of its own: registering does not spend the account's login budget.
    let registering = format!("register {}", body.email);
    limits
        .accounts
        .check(&registering, context_address(ctx.0.ip.as_deref()))?;
    limits.accounts.failed(&registering);
    let registered = state
        .auth
        .register(
            &body.email,
            Password::new(body.password),
            body.display_name.as_deref(),
            &ctx.0,
        )
        .await?;
    state.settle([registered.written]).await;
    Ok(HttpResponse::Created().json(Registered {
        user_id: registered.user_id,
        email: registered.email.as_str().to_owned(),
    }))
}

failures!(
    /// What `login` can answer besides 200.
    pub LoginFailures = [
        json_body(),
        AuthError::InvalidCredentials,
        AuthError::AccountSuspended,
        too_many_attempts(),
        AuthError::Overloaded,
        AuthError::TooManyConcurrentAttempts,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Log in
///
/// Starts a session and answers its tokens. An unknown email gets the same answer, after
/// the same work, as a wrong password (a malformed one, which no account can have, gets it
/// at once); consecutive failures for one email lock it for a while (429
/// `too_many_attempts`) for every client but those presenting a `device_token` from an
/// earlier login to the account, whose own failures lock only themselves. One client address may have only so many password checks
/// running at once (429 `too_many_concurrent_attempts`).
#[utoipa::path(
    post,
    path = "/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A new session; `Cache-Control: no-store`.",
            body = TokenResponse),
        LoginFailures,
    )
)]
pub async fn login(
    state: State,
    limits: Limits,
    ctx: Context,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let outcome = limits
        .accounts
        .attempt(
            &body.email,
            context_address(ctx.0.ip.as_deref()),
            |e| matches!(e, AuthError::InvalidCredentials),
            state.auth.login_from_device(
                &body.email,
                Password::new(body.password),
                body.device_token.as_deref(),
                &ctx.0,
            ),
        )
        .await?;
    forget_sessions(&state, &outcome.ended_sessions);
    state.settle(outcome.written).await;
    let mut answer = TokenResponse::from(outcome.tokens);
    answer.device_token = Some(outcome.device_token);
    Ok(no_store(actix_web::http::StatusCode::OK).json(answer))
}

failures!(
    /// What `refresh` can answer besides 200.
    pub RefreshFailures = [
        json_body(),
        AuthError::InvalidRefreshToken,
        refresh_token_reused(),
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Rotate a refresh token
///
/// Answers a new token pair for the same session. Presenting a refresh token that was
/// already rotated revokes the whole session (401 `refresh_token_reused`): clients must
/// serialise their refreshes. One exception: the token just before the current one,
/// presented again within `KEYLEDGER_REFRESH_REUSE_GRACE_SECS` of its rotation, is
/// taken for a retry of a lost answer and gets a fresh pair that supersedes the lost
/// one. A session idle longer than `KEYLEDGER_SESSION_IDLE_TIMEOUT_SECS` cannot be
/// refreshed (401 `invalid_refresh_token`).
#[utoipa::path(
    post,
    path = "/refresh",
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair; `Cache-Control: no-store`.",
            body = TokenResponse),
        RefreshFailures,
    )
)]
pub async fn refresh(
    state: State,
    ctx: Context,
    body: web::Json<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    match state.auth.refresh(&body.refresh_token, &ctx.0).await {
        Ok(pair) => Ok(no_store(actix_web::http::StatusCode::OK).json(TokenResponse::from(pair))),
        Err(AuthError::RefreshTokenReused {
            session_id,
            written,
        }) => {
            state.revoked.insert(session_id, Utc::now());
            state.settle(written.clone()).await;
            Err(AuthError::RefreshTokenReused {
                session_id,
                written,
            }
            .into())
        }
        Err(e) => Err(e.into()),
    }
}

failures!(
    /// What `logout` can answer besides 204.
    pub LogoutFailures = [
        bearer(),
        AuthError::SessionNotFound,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Log out
///
/// Ends the caller's session: its access and refresh tokens stop working.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The session has ended."),
        LogoutFailures,
    )
)]
pub async fn logout(
    state: State,
    ctx: Context,
    caller: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    let written = state
        .auth
        .logout(claims.user_id, claims.session_id, &ctx.0)
        .await?;
    state.revoked.insert(claims.session_id, Utc::now());
    state.settle(written).await;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    /// The password in use now.
    #[schema(example = "correct horse battery staple")]
    current_password: String,
    /// 8 to 128 characters, not guessable (zxcvbn), not built from the email or name.
    #[schema(
        example = "a different horse, equally correct",
        min_length = 8,
        max_length = 128
    )]
    new_password: String,
}

failures!(
    /// What `change_password` can answer besides 204.
    pub ChangePasswordFailures = [
        json_body(),
        bearer(),
        AuthError::InvalidCredentials,
        weak_password(),
        too_many_attempts(),
        AuthError::Overloaded,
        AuthError::TooManyConcurrentAttempts,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Change the password
///
/// Needs the current password (a wrong one counts towards the lockout, like a failed
/// login). Every other session of the account ends (`SessionRevoked`, reason
/// `password_changed`); the caller's session stays.
#[utoipa::path(
    post,
    path = "/password",
    tag = "auth",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "Changed; the account's other sessions have ended."),
        ChangePasswordFailures,
    )
)]
pub async fn change_password(
    state: State,
    limits: Limits,
    ctx: Context,
    caller: Authenticated,
    body: web::Json<ChangePasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let claims = caller.0;
    let change = limits
        .accounts
        .attempt(
            &claims.user_id.to_string(),
            context_address(ctx.0.ip.as_deref()),
            |e| matches!(e, AuthError::InvalidCredentials),
            state.auth.change_password(
                claims.user_id,
                Password::new(body.current_password),
                Password::new(body.new_password),
                claims.session_id,
                &ctx.0,
            ),
        )
        .await?;
    let now = Utc::now();
    for session_id in change.ended_sessions {
        state.revoked.insert(session_id, now);
    }
    state.settle(change.written).await;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, ToSchema)]
pub struct EraseAccountRequest {
    /// The account's password, re-entered: an access token alone cannot erase it.
    #[schema(example = "correct horse battery staple")]
    password: String,
}

failures!(
    /// What `erase_me` can answer besides 204.
    pub EraseMeFailures = [
        json_body(),
        bearer(),
        ApiError::Forbidden,
        AuthError::InvalidCredentials,
        OrganizationError::LastOwner,
        AuthError::LastAdmin,
        too_many_attempts(),
        AuthError::Overloaded,
        AuthError::TooManyConcurrentAttempts,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Erase my account (GDPR)
///
/// Needs the password (a wrong one counts towards the lockout, like a failed login).
/// The account first leaves every organization; the last owner of one gets 409
/// `last_owner` (give it another owner first) and nothing is erased; so does the
/// platform's last active administrator, with 409 `last_admin`. Every session
/// ends, including this one; the account can never log in again and
/// its email can be registered again. Personal data in the event log (email, name,
/// IP addresses, user agents) becomes unreadable for good: it was sealed with a key
/// of this account, and the key is destroyed. A `UserErased` event records that the
/// erasure happened, without personal data.
#[utoipa::path(
    delete,
    path = "/me",
    tag = "users",
    security(("bearer" = [])),
    request_body = EraseAccountRequest,
    responses(
        (status = 204, description = "Erased; every session of the account has ended."),
        EraseMeFailures,
    )
)]
pub async fn erase_me(
    state: State,
    limits: Limits,
    ctx: Context,
    caller: Authenticated,
    body: web::Json<EraseAccountRequest>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    if claims.kind != keyledger_commands::SubjectKind::User {
        return Err(ApiError::Forbidden);
    }
    let request_ctx = ctx.acting_as(&claims);
    let password = Password::new(body.into_inner().password);
    limits
        .accounts
        .attempt(
            &claims.user_id.to_string(),
            context_address(request_ctx.ip.as_deref()),
            |e| matches!(e, AuthError::InvalidCredentials),
            state
                .auth
                .reauthenticate(claims.user_id, &password, &request_ctx),
        )
        .await?;
    erase_account(&state, claims.user_id, &request_ctx)
        .await
        .map_err(|e| match e {
            // The token's account is gone already: the token is no longer good.
            ApiError::Auth(AuthError::UserNotFound) => ApiError::Unauthorized,
            other => other,
        })?;
    // The caller's own session may have ended in an earlier, interrupted attempt.
    forget_sessions(&state, &[claims.session_id]);
    Ok(HttpResponse::NoContent().finish())
}

/// The erasure both routes run once the caller may erase: out of every
/// organization first (refused for a last owner), then the account itself.
pub(crate) async fn erase_account(
    state: &AppState,
    user: Uuid,
    ctx: &keyledger_commands::RequestContext,
) -> Result<(), ApiError> {
    // Refused before anything is written (the erasure itself checks again, in the
    // admin turn, which is what makes the rule hold under concurrency).
    state.auth.ensure_not_last_admin(user).await?;
    crate::resources::organizations::leave_every_organization(state, user, ctx).await?;
    let erasure = state.auth.erase_user(user, ctx).await?;
    forget_sessions(state, &erasure.ended_sessions);
    state.settle_access(erasure.written).await;
    // The claim's and the key's old bytes go from the database files too (the
    // projector does the same for the read models once it applied the erasure,
    // before the wait above ends). The erasure itself is committed and stands
    // whatever happens here; a failure is logged and the next erasure's scrub
    // covers it.
    if let Err(e) = state.storage.scrub_after_erasure().await {
        tracing::error!(error = %e, "erased data could not be scrubbed from the database files");
        metrics::counter!("keyledger_erasure_scrub_failures_total").increment(1);
    }
    Ok(())
}

/// Makes ended sessions' access tokens fail validation on this node at once.
pub(crate) fn forget_sessions(state: &AppState, sessions: &[Uuid]) {
    let now = Utc::now();
    for session in sessions {
        state.revoked.insert(*session, now);
    }
}

/// The caller's account.
#[derive(Serialize, ToSchema)]
pub struct Account {
    pub(crate) user_id: Uuid,
    pub(crate) email: String,
    pub(crate) display_name: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
}

failures!(
    /// What `me` can answer besides 200.
    pub MeFailures = [bearer(), unavailable()]
);

/// The caller's account
#[utoipa::path(
    get,
    path = "/me",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account the access token belongs to.", body = Account),
        MeFailures,
    )
)]
pub async fn me(state: State, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let row = state
        .queries
        .account(caller.0.user_id)
        .await
        .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))?;
    let row = row.ok_or(ApiError::Unauthorized)?;
    Ok(HttpResponse::Ok().json(row))
}

/// Always `access_token`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum AccessTokenType {
    AccessToken,
}

/// Token introspection (RFC 7662): `{"active": false}` and nothing else, or
/// `active: true` with what the token is.
#[derive(Serialize, ToSchema, Default)]
pub struct Introspection {
    /// Whether the token is valid, unexpired and still stood by: its session not
    /// ended, or its service account not deleted and its secret not rotated since.
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    token_type: Option<AccessTokenType>,
    /// The subject: a user id, or a service account id.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    sub: Option<Uuid>,
    /// `user` or `service_account`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "user")]
    kind: Option<&'static str>,
    /// The service account's client id (its id), for service-account tokens only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    client_id: Option<Uuid>,
    /// The organization the token is scoped to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    org: Option<Uuid>,
    /// The subject's role labels in `org` when the token was issued (empty unscoped).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    roles: Option<Vec<String>>,
    /// Session id (a service account's token carries its own token id here).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    sid: Option<Uuid>,
    /// Token id.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    jti: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    aud: Option<String>,
    /// Issued at (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    iat: Option<i64>,
    /// Expires at (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    exp: Option<i64>,
}

impl Introspection {
    fn of(claims: AccessClaims) -> Self {
        let service_account = claims.kind == SubjectKind::ServiceAccount;
        Self {
            active: true,
            token_type: Some(AccessTokenType::AccessToken),
            sub: Some(claims.user_id),
            kind: Some(claims.kind.as_str()),
            client_id: service_account.then_some(claims.user_id),
            org: claims.organization_id,
            roles: Some(claims.roles),
            sid: Some(claims.session_id),
            jti: Some(claims.token_id),
            iss: Some(claims.issuer),
            aud: Some(claims.audience),
            iat: Some(claims.issued_at.timestamp()),
            exp: Some(claims.expires_at.timestamp()),
        }
    }
}

failures!(
    /// What `validate` can answer besides 200.
    pub ValidateFailures = [json_body()]
);

/// Introspect an access token
///
/// For modules that must see a logout or revocation at once instead of waiting for the
/// access token to expire. Answers exactly what bearer routes and `authorize` would
/// accept: a token of a deleted service account, or one issued before its secret was
/// rotated, is inactive like a revoked session's. Not authenticated: expose it to the
/// internal network only.
#[utoipa::path(
    post,
    path = "/validate",
    tag = "auth",
    request_body = ValidateRequest,
    responses(
        (status = 200, description = "Whether the token is active, and its claims if so.",
            body = Introspection),
        ValidateFailures,
    )
)]
pub async fn validate(
    state: State,
    body: web::Json<ValidateRequest>,
) -> Result<HttpResponse, ApiError> {
    let answer =
        live_claims(&state, &body.token).map_or_else(Introspection::default, Introspection::of);
    Ok(HttpResponse::Ok().json(answer))
}

/// One of the caller's sessions.
#[derive(Serialize, ToSchema)]
pub struct SessionInfo {
    pub(crate) session_id: Uuid,
    /// Client IP at login.
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) last_refreshed_at: Option<DateTime<Utc>>,
    pub(crate) expires_at: DateTime<Utc>,
    /// `active`, `expired`, `logged_out` or `revoked`.
    #[schema(example = "active")]
    pub(crate) state: String,
    pub(crate) ended_at: Option<DateTime<Utc>>,
    /// Why it ended (`logout`, or the revocation reason).
    pub(crate) end_reason: Option<String>,
    /// Whether this is the session of the access token used for the request.
    pub(crate) current: bool,
}

/// The caller's sessions, newest first (at most 200).
#[derive(Serialize, ToSchema)]
pub struct SessionList {
    sessions: Vec<SessionInfo>,
}

failures!(
    /// What `sessions` can answer besides 200.
    pub SessionsFailures = [bearer(), unavailable()]
);

/// The caller's sessions
#[utoipa::path(
    get,
    path = "/sessions",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Active and ended sessions, newest first.",
            body = SessionList),
        SessionsFailures,
    )
)]
pub async fn sessions(state: State, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let mut rows = state
        .queries
        .sessions(caller.0.user_id, Utc::now())
        .await
        .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))?;
    for row in &mut rows {
        row.current = row.session_id == caller.0.session_id;
    }
    Ok(HttpResponse::Ok().json(SessionList { sessions: rows }))
}

/// How many sessions an "end every session" request ended.
#[derive(Serialize, ToSchema)]
pub struct EndedSessions {
    /// Sessions it ended; those that had already ended are not counted, so
    /// repeating the request answers 0.
    #[schema(example = 3)]
    pub(crate) ended_sessions: usize,
}

failures!(
    /// What `end_all_sessions` can answer besides 200.
    pub EndAllSessionsFailures = [bearer(), AuthError::Conflict, unavailable()]
);

/// Log out everywhere
///
/// Ends every session of the caller, the one making this request included: every
/// access and refresh token of the account stops working on every node (each
/// session gets a `SessionRevoked` event, reason `user_request`). For a lost phone or
/// a computer left signed in. Log in again to go on.
#[utoipa::path(
    delete,
    path = "/sessions",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every session has ended.", body = EndedSessions),
        EndAllSessionsFailures,
    )
)]
pub async fn end_all_sessions(
    state: State,
    ctx: Context,
    caller: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    let ended = state
        .auth
        .end_all_sessions(
            claims.user_id,
            RevocationReason::UserRequest,
            Some(claims.user_id),
            &ctx.0,
        )
        .await?;
    // The caller's own session too, even if the log had it ended already.
    state.revoked.insert(claims.session_id, Utc::now());
    forget_sessions(&state, &ended.ended_sessions);
    state.settle(ended.written).await;
    Ok(HttpResponse::Ok().json(EndedSessions {
        ended_sessions: ended.ended_sessions.len(),
    }))
}

failures!(
    /// What `revoke_session` can answer besides 204.
    pub RevokeSessionFailures = [
        bearer(),
        AuthError::SessionNotFound,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// End one of the caller's sessions
///
/// A session that is not the caller's answers exactly like one that does not exist.
#[utoipa::path(
    delete,
    path = "/sessions/{session_id}",
    tag = "auth",
    security(("bearer" = [])),
    params(("session_id" = Uuid, Path,
        description = "A session of the caller; anything else answers 404 `session_not_found`.")),
    responses(
        (status = 204, description = "The session has ended (or had already)."),
        RevokeSessionFailures,
    )
)]
pub async fn revoke_session(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    // A malformed id is just another session the caller does not have.
    let session_id: Uuid = path
        .parse()
        .map_err(|_| ApiError::Auth(AuthError::SessionNotFound))?;
    let written = state
        .auth
        .revoke_session(caller.0.user_id, session_id, &ctx.0)
        .await?;
    state.revoked.insert(session_id, Utc::now());
    state.settle(written).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Always `v4`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum PasetoVersion {
    V4,
}

/// Always `public`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum PasetoPurpose {
    Public,
}

/// A key that verifies access tokens.
#[derive(Serialize, ToSchema)]
pub struct PublicKey {
    /// PASERK id (`k4.pid.…`), the `kid` in token footers.
    kid: String,
    /// PASERK public key (`k4.public.…`).
    paserk: String,
    version: PasetoVersion,
    purpose: PasetoPurpose,
    /// Whether it signs new tokens (others are retired keys still verifying).
    current: bool,
}

/// The keys that verify access tokens.
#[derive(Serialize, ToSchema)]
pub struct KeySet {
    keys: Vec<PublicKey>,
}

/// Public keys for verifying access tokens
///
/// Pick the key by the `kid` of the token's footer. Cacheable for five minutes.
#[utoipa::path(
    get,
    path = "/keys",
    tag = "keys",
    responses(
        (status = 200, description = "The signing key and retired keys still verifying.",
            body = KeySet),
    )
)]
pub async fn keys(state: State) -> HttpResponse {
    let keys: Vec<_> = state
        .auth
        .tokens()
        .public_keys()
        .iter()
        .map(|k| PublicKey {
            kid: k.kid.clone(),
            paserk: k.paserk.clone(),
            version: PasetoVersion::V4,
            purpose: PasetoPurpose::Public,
            current: k.current,
        })
        .collect();
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "public, max-age=300"))
        .json(KeySet { keys })
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum HealthStatus {
    Ok,
    Unavailable,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum Dependency {
    Up,
    Down,
    /// Not configured (NATS only).
    Disabled,
}

/// Which database holds the event log and the read models.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum StorageKind {
    /// `DATABASE_URL` is set.
    Postgres,
    /// The embedded store of `KEYLEDGER_DATA_DIR`.
    Sqlite,
}

/// Whether the server can serve.
#[derive(Serialize, ToSchema)]
pub struct Health {
    status: HealthStatus,
    /// The event store (and read models).
    event_store: Dependency,
    /// Which back end the event store is.
    storage: StorageKind,
    /// Integration events; `disabled` without `NATS_URL`.
    nats: Dependency,
    /// Which followers this node leads. On PostgreSQL exactly one node of a
    /// deployment leads each; the others stand by to take over.
    leader: Leaders,
}

/// The followers that run on one node at a time (advisory locks on PostgreSQL).
#[derive(Serialize, ToSchema)]
struct Leaders {
    /// This node writes the read models.
    projector: bool,
    /// This node publishes to NATS (always false without `NATS_URL`).
    relay: bool,
}

/// Health
///
/// 200 while the event store answers; NATS being down does not make the server
/// unhealthy (events wait in the store).
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "The event store is reachable.", body = Health),
        (status = 503, description = "The event store is unreachable.", body = Health),
    )
)]
pub async fn health(state: State) -> HttpResponse {
    readiness(&state).await
}

/// Readiness
///
/// For orchestrators: ready to take traffic while the event store answers (the same
/// check and answer as `/health`).
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: the event store is reachable.", body = Health),
        (status = 503, description = "Not ready: the event store is unreachable.", body = Health),
    )
)]
pub async fn ready(state: State) -> HttpResponse {
    readiness(&state).await
}

/// The process is alive.
#[derive(Serialize, ToSchema)]
pub struct Liveness {
    status: HealthStatus,
}

/// Liveness
///
/// For orchestrators: 200 as long as the process serves HTTP, whatever its
/// dependencies do (restarting it would not bring a database back).
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    responses((status = 200, description = "The process serves requests.", body = Liveness))
)]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Liveness {
        status: HealthStatus::Ok,
    })
}

async fn readiness(state: &crate::state::AppState) -> HttpResponse {
    let up = tokio::time::timeout(Duration::from_secs(2), state.queries.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let storage = match &state.queries {
        crate::queries::ReadModelQueries::Postgres(_) => StorageKind::Postgres,
        crate::queries::ReadModelQueries::Sqlite(_) => StorageKind::Sqlite,
    };
    let nats = match &state.nats {
        None => Dependency::Disabled,
        Some(client) => match client.connection_state() {
            async_nats::connection::State::Connected => Dependency::Up,
            _ => Dependency::Down,
        },
    };
    let body = Health {
        status: if up {
            HealthStatus::Ok
        } else {
            HealthStatus::Unavailable
        },
        event_store: if up { Dependency::Up } else { Dependency::Down },
        storage,
        nats,
        leader: Leaders {
            projector: state.consistency.leads(),
            relay: state.relay_leader.leads(),
        },
    };
    if up {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics
///
/// Request counts and latencies per route, login outcomes, projection lag and more.
/// Not authenticated: expose it to the internal network only.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format.", body = String,
            content_type = "text/plain; version=0.0.4"),
    )
)]
pub async fn metrics(state: State) -> HttpResponse {
    let mut text = state.metrics.render();
    text.push_str(&format!(
        "# TYPE keyledger_revoked_sessions_cached gauge\nkeyledger_revoked_sessions_cached {}\n",
        state.revoked.len()
    ));
    // Feed lag, on every node (the leader's progress as this node sees it): a
    // growing value means the projector is stuck or no node leads it.
    if let Ok(Ok(lag)) = tokio::time::timeout(Duration::from_secs(2), state.consistency.lag()).await
    {
        text.push_str(&format!(
            "# TYPE keyledger_projection_lag_events gauge\nkeyledger_projection_lag_events {lag}\n"
        ));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}
