//! Accounts and tokens: registration, login, refresh, logout, password change, the
//! caller's account, token validation and the public keys that verify tokens.
//!
//! Each handler's `#[utoipa::path]` is its documentation and, through
//! [`crate::openapi::Endpoint`], its registration: the path and methods served are the
//! ones written there. The `*Failures` types list what each can answer besides success.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_commands::tokens::RefreshToken;
use keyledger_commands::{AccessClaims, AuthError, Password, SignIn, SubjectKind, TokenPair};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::browser_session::{self, Delivery};
use crate::error::ApiError;
use crate::extract::{live_claims, Authenticated, Context};
use crate::openapi::{bearer, endpoint, failures, json_body, refresh_token_reused};
use crate::openapi::{too_many_attempts, unavailable, weak_password};
use crate::rate_limit::{context_address, Limits};
use crate::resources::recovery::{in_background, spend_budget, REGISTRATION_TAKEN};
use crate::resources::sessions::forget_sessions;
use crate::resources::Routes;
use crate::state::State;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token of the last login or refresh (`klr_…`); it is rotated.
    /// Leave it out in a cookie session: the refresh cookie carries it.
    refresh_token: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
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
    pub(crate) device_token: Option<String>,
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

/// Always `cookie`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum CookieType {
    Cookie,
}

/// A session whose tokens went into cookies (`X-Keyledger-Session: cookie`):
/// `__Host-keyledger-access`, `__Secure-keyledger-refresh` (sent to the refresh
/// route only) and `__Host-keyledger-csrf`. No token is here.
#[derive(Serialize, ToSchema)]
pub struct CookieSession {
    token_type: CookieType,
    /// Seconds until the access cookie's token expires: refresh before.
    expires_in: u64,
    session_id: Uuid,
    /// Send it in `X-CSRF-Token` with every state-changing request (it is also
    /// in the `__Host-keyledger-csrf` cookie, for the page's script).
    csrf_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_token: Option<String>,
}

/// What a login answers: tokens, or the second step.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum LoginAnswer {
    Tokens(TokenResponse),
    Cookies(CookieSession),
    SecondFactor(crate::resources::mfa::SecondFactorRequired),
}

/// Token answers must never be cached by browsers or proxies.
pub(crate) fn no_store(status: actix_web::http::StatusCode) -> actix_web::HttpResponseBuilder {
    let mut builder = HttpResponse::build(status);
    builder.insert_header(("Cache-Control", "no-store"));
    builder
}

/// A new account.
#[derive(Serialize, ToSchema)]
pub struct Registered {
    pub(crate) user_id: Uuid,
    /// The email in its canonical form.
    pub(crate) email: String,
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
///
/// With address verification on (`KEYLEDGER_EMAIL_VERIFICATION` `optional`, the
/// default, or `required`) the answer is 202 whether the address was free or taken,
/// given once the input is checked and before the account work: a new account is
/// mailed a verification link, and the owner of a taken address is mailed that
/// someone tried to register with it. With it
/// `off`, 201 with the account, or 409 `email_taken`.
#[utoipa::path(
    post,
    path = "/register",
    tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The account exists (verification off).",
            body = Registered),
        (status = 202, description = "Taken (verification on): the address's inbox tells \
            what follows.", body = crate::resources::recovery::Accepted),
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
    spend_budget(&limits, "register", &body.email, &ctx.0)?;
    if state.auth.email_verification().is_on() {
        // What depends on the input alone is answered now; the account work
        // follows after the answer, so that neither the answer nor its time
        // tells a free address from a taken one (the inbox tells its owner).
        let account = state
            .auth
            .check_new_account(
                &body.email,
                Password::new(body.password),
                body.display_name.as_deref(),
            )
            .await?;
        // The hash runs after the answer, in a turn taken now: a client with its
        // share of the pool in use is refused here (429), new address or taken,
        // rather than answered 202 for work that would then be dropped.
        let turn = state.auth.hashing_turn(&ctx.0)?;
        let request_id = ctx.0.request_id.clone();
        in_background("registering", request_id, async move {
            state
                .auth
                .register_unrevealing(account, turn, &ctx.0)
                .await
                .map(drop)
        });
        return Ok(HttpResponse::Accepted().json(REGISTRATION_TAKEN));
    }
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
        AuthError::EmailNotVerified,
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
/// running at once (429 `too_many_concurrent_attempts`). With `KEYLEDGER_EMAIL_VERIFICATION`
/// `required`, a correct password for an address not verified yet is 403
/// `email_not_verified`.
#[utoipa::path(
    post,
    path = "/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A new session; or, for an account with a second \
            factor, `mfa_required` and the `mfa_token` for `POST /v1/mfa/verify`. \
            `Cache-Control: no-store`.", body = LoginAnswer),
        LoginFailures,
    )
)]
pub async fn login(
    state: State,
    limits: Limits,
    ctx: Context,
    delivery: Delivery,
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
    Ok(login_answer(&state, delivery, outcome).await)
}

/// The answer to a login (with a password, by email, or its second step): the
/// sessions it ended beyond the cap forgotten, its events settled, its tokens and
/// device token; or, for an account with a second factor, the `mfa_token` that
/// `POST /v1/mfa/verify` takes.
///
/// With `delivery` [`Delivery::Cookies`] the tokens go into the session's cookies
/// and the answer carries the CSRF token instead (see `crate::browser_session`).
pub(crate) async fn login_answer(
    state: &State,
    delivery: Delivery,
    outcome: SignIn,
) -> HttpResponse {
    let outcome = match outcome {
        SignIn::Complete(outcome) => outcome,
        SignIn::SecondFactorRequired(challenge) => {
            state.settle(challenge.written.clone()).await;
            return no_store(actix_web::http::StatusCode::OK)
                .json(crate::resources::mfa::SecondFactorRequired::from(challenge));
        }
    };
    forget_sessions(state, &outcome.ended_sessions);
    state.settle(outcome.written).await;
    tokens_answer(state, delivery, outcome.tokens, Some(outcome.device_token))
}

/// A token pair as the client asked for it: in the body, or in cookies.
fn tokens_answer(
    state: &State,
    delivery: Delivery,
    tokens: TokenPair,
    device_token: Option<String>,
) -> HttpResponse {
    let mut answer = no_store(actix_web::http::StatusCode::OK);
    match delivery {
        Delivery::Body => {
            let mut body = TokenResponse::from(tokens);
            body.device_token = device_token;
            answer.json(body)
        }
        Delivery::Cookies => {
            let csrf_token = browser_session::set_session_cookies(state, &mut answer, &tokens);
            answer.json(CookieSession {
                token_type: CookieType::Cookie,
                expires_in: tokens.expires_in,
                session_id: tokens.session_id,
                csrf_token,
                device_token,
            })
        }
    }
}

failures!(
    /// What `refresh` can answer besides 200.
    pub RefreshFailures = [
        json_body(),
        AuthError::InvalidRefreshToken,
        refresh_token_reused(),
        ApiError::CsrfFailed,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Rotate a refresh token
///
/// In a cookie session, send `{}` with the refresh cookie (the browser does,
/// to this route only), `X-CSRF-Token` and an allowed `Origin`: the new pair
/// goes into the cookies again (403 `csrf_failed` without the checks).
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
    req: HttpRequest,
    ctx: Context,
    delivery: Delivery,
    body: web::Json<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    let (token, delivery) = match body.into_inner().refresh_token {
        Some(token) => (token, delivery),
        None => {
            let token = browser_session::cookie_value(&req, browser_session::REFRESH_COOKIE)
                .ok_or(AuthError::InvalidRefreshToken)?
                .to_owned();
            let session_id = RefreshToken::parse(&token)
                .map_err(|_| AuthError::InvalidRefreshToken)?
                .session_id();
            browser_session::check_csrf(&state, &req, session_id)?;
            (token, Delivery::Cookies)
        }
    };
    match state.auth.refresh(&token, &ctx.0).await {
        Ok(pair) => Ok(tokens_answer(&state, delivery, pair, None)),
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

/// Where `resume` sends the browser back to.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResumeQuery {
    /// A path on this server, or an app URL of `KEYLEDGER_PAGES_RETURN_URLS`;
    /// anything else is the account page.
    #[param(value_type = Option<String>)]
    return_to: Option<crate::extract::QueryText>,
}

/// Resume a browser session
///
/// For the hosted pages: a page whose access cookie has expired sends the
/// browser here, the one place its refresh cookie is sent to besides
/// `POST /refresh` (the cookie's path is `/v1/auth/refresh`). The session is
/// refreshed as by `POST /refresh` (rotation, reuse detection), the new pair
/// goes into the cookies, and the browser goes back to `return_to` (303).
/// Without a refresh cookie that still works, the cookies are cleared and the
/// browser goes to `/sign-in?return_to=…`. A GET because a redirect leads here;
/// another site that sends a browser here only renews that browser's own
/// session, which it never sees.
#[utoipa::path(
    get,
    path = "/refresh/resume",
    tag = "auth",
    params(ResumeQuery),
    responses(
        (status = 303, description = "Renewed: to `return_to`, the new pair in the cookies; \
            or, with no session to renew, to sign in."),
        crate::hosted::QueryFailures,
    )
)]
pub async fn resume(
    state: State,
    req: HttpRequest,
    ctx: Context,
    query: web::Query<ResumeQuery>,
) -> HttpResponse {
    let back = crate::hosted::forms::allowed_return(&state.pages, query.return_to.as_deref());
    let sign_in = format!(
        "/sign-in?{}",
        serde_urlencoded::to_string([("return_to", back.as_str())]).unwrap_or_default()
    );
    let token = browser_session::cookie_value(&req, browser_session::REFRESH_COOKIE);
    let outcome = match token {
        Some(token) => Some(state.auth.refresh(token, &ctx.0).await),
        None => None,
    };
    let mut answer = HttpResponse::SeeOther();
    answer.insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"));
    match outcome {
        Some(Ok(pair)) => {
            browser_session::set_session_cookies(&state, &mut answer, &pair);
            answer.insert_header((actix_web::http::header::LOCATION, back));
        }
        Some(Err(AuthError::RefreshTokenReused {
            session_id,
            written,
        })) => {
            state.revoked.insert(session_id, Utc::now());
            state.settle(written).await;
            browser_session::clear_session_cookies(&mut answer);
            answer.insert_header((actix_web::http::header::LOCATION, sign_in));
        }
        // A backing service down: to sign in, the cookies kept (the session
        // may well be fine).
        Some(Err(AuthError::Unavailable(_) | AuthError::Conflict)) => {
            answer.insert_header((actix_web::http::header::LOCATION, sign_in));
        }
        Some(Err(_)) | None => {
            browser_session::clear_session_cookies(&mut answer);
            answer.insert_header((actix_web::http::header::LOCATION, sign_in));
        }
    }
    answer.finish()
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
    req: HttpRequest,
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
    let mut answer = HttpResponse::NoContent();
    if browser_session::cookie_value(&req, browser_session::ACCESS_COOKIE).is_some() {
        browser_session::clear_session_cookies(&mut answer);
    }
    Ok(answer.finish())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
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
        AuthError::ReauthenticationRequired,
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
    // With a second factor on the account, the password alone is not enough:
    // the session must have proved the factor lately (at login or a step-up).
    state
        .auth
        .require_recent_second_factor(claims.user_id, claims.session_id)
        .await?;
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

/// The caller's account.
#[derive(Serialize, ToSchema)]
pub struct Account {
    pub(crate) user_id: Uuid,
    pub(crate) email: String,
    pub(crate) display_name: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    /// Whether the owner proved the address is theirs (a mailed link, or the
    /// system the account was imported from said so).
    pub(crate) email_verified: bool,
    /// The kinds of second factor the account has confirmed (`totp`: an
    /// authenticator app), each once, so a client knows a login will ask for a
    /// code; empty when none. Methods still pending are not listed; the methods
    /// themselves are at `GET /v1/mfa/methods`.
    #[schema(example = json!(["totp"]))]
    pub(crate) second_factors: Vec<String>,
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

/// The access token's type as RFC 6749 §7.1 names it (RFC 7662 §2.2): always
/// `Bearer`, for PASETO and JWT alike.
#[derive(Serialize, ToSchema)]
enum AccessTokenType {
    Bearer,
}

/// Token introspection (RFC 7662 §2.2): `{"active": false}` and nothing else, or
/// `active: true` with what the token is. `validate` and the OpenID provider's
/// introspection endpoint answer this same shape for an access token.
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
    /// The OAuth client the token was issued to; for a service account's token,
    /// its client id (its id). Absent for first-party tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    client_id: Option<Uuid>,
    /// The scopes granted to that OAuth client, space-separated (RFC 7662).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "openid profile")]
    scope: Option<String>,
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
    /// Users' tokens: whether the address was verified when the token was issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    email_verified: Option<bool>,
    /// Users' tokens: how the user proved who they are (RFC 8176), e.g. `["pwd"]` or
    /// `["pwd", "otp", "mfa"]`; absent when not recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    amr: Option<Vec<String>>,
    /// Users' tokens: `1` (one factor) or `2` (more), beside `amr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "1")]
    acr: Option<&'static str>,
    /// Users' tokens: when the user last proved who they are (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    auth_time: Option<i64>,
}

impl Introspection {
    /// What an active access token is.
    pub(crate) fn of(claims: AccessClaims) -> Self {
        let service_account = claims.kind == SubjectKind::ServiceAccount;
        Self {
            active: true,
            token_type: Some(AccessTokenType::Bearer),
            sub: Some(claims.user_id),
            kind: Some(claims.kind.as_str()),
            client_id: claims
                .client_id
                .as_deref()
                .and_then(|id| id.parse().ok())
                .or(service_account.then_some(claims.user_id)),
            scope: claims.scope,
            org: claims.organization_id,
            roles: Some(claims.roles),
            sid: Some(claims.session_id),
            jti: Some(claims.token_id),
            iss: Some(claims.issuer),
            aud: Some(claims.audience),
            iat: Some(claims.issued_at.timestamp()),
            exp: Some(claims.expires_at.timestamp()),
            email_verified: claims.email_verified,
            acr: (!claims.amr.is_empty()).then(|| crate::resources::oidc::acr_of(&claims.amr)),
            auth_time: claims.authenticated_at.map(|t| t.timestamp()),
            amr: (!claims.amr.is_empty()).then_some(claims.amr),
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

/// Registers the account and token routes in `/v1/auth`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.auth = routes
        .auth
        .service(endpoint!(self::register))
        .service(endpoint!(self::login))
        .service(endpoint!(self::refresh))
        .service(endpoint!(self::resume))
        .service(endpoint!(self::logout))
        .service(endpoint!(self::change_password))
        .service(endpoint!(self::me))
        .service(endpoint!(self::validate))
        .service(endpoint!(self::keys));
    routes
}
