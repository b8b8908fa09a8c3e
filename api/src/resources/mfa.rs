//! Second factors: enrolling an authenticator app (TOTP) and backup codes, the
//! login step that asks for a code (`POST /v1/mfa/verify` with the `mfa_token` a
//! login answered), and the step-up that proves the account's factors again before
//! a sensitive change (`POST /v1/auth/step-up`).
//!
//! Managing factors takes the account's bearer token. Adding, removing and
//! regenerating need a recent authentication with the account's factors
//! (`KEYLEDGER_REAUTHENTICATION_WINDOW_SECS`): otherwise 401
//! `reauthentication_required`, and a step-up fixes it.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_commands::{
    AuthError, NewSecondFactor, Password, SecondFactorChallenge, SecondFactorMethod, SubjectKind,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::browser_session::Delivery;
use crate::error::ApiError;
use crate::extract::{Authenticated, Context};
use crate::openapi::{bearer, endpoint, failures, json_body, too_many_attempts, unavailable};
use crate::rate_limit::{context_address, Limits};
use crate::resources::auth::{login_answer, no_store, TokenResponse};
use crate::resources::Routes;
use crate::state::State;

/// The kinds of second factor that can be set up.
#[derive(Deserialize, Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum FactorType {
    /// An authenticator app (RFC 6238: SHA-1, 30 s, 6 digits).
    Totp,
    /// A code mailed to the account's verified address when asked for.
    Email,
    /// A code sent by text message to `phone` when asked for.
    Sms,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    #[serde(rename = "type")]
    kind: FactorType,
    /// For `sms` only: the number, in international form (`+` and 8 to 15 digits).
    #[schema(example = "+4915112345678")]
    phone: Option<String>,
}

/// A new method, pending until confirmed. An app's secret is shown here only; an
/// email or SMS method was sent a first code.
#[derive(Serialize, ToSchema)]
pub struct TotpSetup {
    method_id: Uuid,
    #[serde(rename = "type")]
    kind: FactorType,
    /// `totp` only: the shared secret, base32, for typing into the app.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    secret: Option<String>,
    /// `totp` only: `otpauth://totp/<issuer>:<address>?secret=…&issuer=…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    otpauth_uri: Option<String>,
    /// `totp` only: the URI as a QR code, `data:image/svg+xml;base64,…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    qr: Option<String>,
}

/// One second factor (nothing secret).
#[derive(Serialize, ToSchema)]
pub struct Method {
    id: Uuid,
    #[serde(rename = "type")]
    #[schema(example = "totp")]
    kind: &'static str,
    #[schema(example = "Authenticator app")]
    label: &'static str,
    /// Pending methods do not count for logins until confirmed.
    confirmed: bool,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
}

impl From<SecondFactorMethod> for Method {
    fn from(method: SecondFactorMethod) -> Self {
        Self {
            id: method.method_id,
            kind: method.kind.as_str(),
            label: method.label,
            confirmed: method.confirmed,
            created_at: method.added_at,
            last_used_at: method.last_used_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Methods {
    methods: Vec<Method>,
    /// Unused backup codes.
    backup_codes_remaining: usize,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// A code of the authenticator app.
    #[schema(example = "492039")]
    code: String,
}

/// A confirmed method; the account's first also brings its backup codes.
#[derive(Serialize, ToSchema)]
pub struct Confirmed {
    method_id: Uuid,
    confirmed: bool,
    /// Ten single-use codes, shown only here; each signs in once in place of
    /// the app. Absent when the account had codes already.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    backup_codes: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct BackupCodes {
    /// Ten single-use codes, shown only here; earlier ones no longer work.
    backup_codes: Vec<String>,
}

/// A method a login's second step may use.
#[derive(Serialize, ToSchema)]
pub struct ChallengeMethod {
    id: Uuid,
    #[serde(rename = "type")]
    #[schema(example = "totp")]
    kind: &'static str,
    #[schema(example = "Authenticator app")]
    label: &'static str,
}

/// A right first factor for an account with a second factor: no tokens yet.
#[derive(Serialize, ToSchema)]
pub struct SecondFactorRequired {
    /// Always `true`.
    mfa_required: bool,
    /// For `POST /v1/mfa/verify` (`klf1.…`): single use, a few attempts, and
    /// `expires_in` seconds.
    mfa_token: String,
    expires_in: u64,
    /// The methods a code may come from; a backup code always may.
    methods: Vec<ChallengeMethod>,
}

impl From<SecondFactorChallenge> for SecondFactorRequired {
    fn from(challenge: SecondFactorChallenge) -> Self {
        Self {
            mfa_required: true,
            mfa_token: challenge.mfa_token,
            expires_in: challenge.expires_in,
            methods: challenge
                .methods
                .into_iter()
                .map(|m| ChallengeMethod {
                    id: m.method_id,
                    kind: m.kind.as_str(),
                    label: m.label,
                })
                .collect(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The `mfa_token` of the login.
    mfa_token: String,
    /// A code of the authenticator app, an emailed or texted code, or a
    /// backup code (`abcde-fghij`). Either this or `credential`.
    #[schema(example = "492039")]
    code: Option<String>,
    /// A passkey's answer (`credential.toJSON()` of `navigator.credentials.get()`
    /// with the options `POST /v1/mfa/challenge` gave for a passkey method).
    #[schema(value_type = Option<Object>)]
    credential: Option<serde_json::Value>,
    /// The method the code comes from (optional: every confirmed one is tried).
    method_id: Option<Uuid>,
    /// The `device_token` of an earlier login to this account, to keep this
    /// client's device (optional).
    device_token: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpRequest {
    /// The account's password.
    password: String,
    /// With a second factor on the account: a code of the app, or a backup code.
    code: Option<String>,
}

/// `phone` given for anything but `sms`, or missing for it.
pub(crate) fn invalid_setup() -> ApiError {
    ApiError::bad_request(
        "invalid_request",
        "`phone` is given with `type` `sms`, and only then",
    )
}

/// The caller, who must be a user (service accounts have no factors, nor
/// passkeys).
pub(crate) fn user(caller: &Authenticated) -> Result<(Uuid, Uuid), ApiError> {
    if caller.0.kind != SubjectKind::User {
        return Err(ApiError::Forbidden);
    }
    Ok((caller.0.user_id, caller.0.session_id))
}

/// A method id from the path: a malformed one is just another method the
/// account does not have.
fn method_id(path: &str) -> Result<Uuid, ApiError> {
    path.parse()
        .map_err(|_| ApiError::Auth(AuthError::SecondFactorNotFound))
}

/// `uri` as an SVG QR code in a data URL (see [`crate::qr::svg_data_url`]).
fn qr_data_url(uri: &str) -> Result<String, ApiError> {
    crate::qr::svg_data_url(uri)
        .ok_or_else(|| ApiError::Internal("the otpauth URI does not fit a QR code".into()))
}

failures!(
    /// What `setup` can answer besides 201.
    pub SetupFailures = [
        json_body(),
        bearer(),
        // A service account's token: it has no second factors.
        ApiError::Forbidden,
        invalid_setup(),
        AuthError::InvalidPhone,
        AuthError::EmailNotVerified,
        AuthError::ReauthenticationRequired,
        AuthError::TooManySecondFactors,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Set up a second factor
///
/// `{"type": "totp"}` adds an authenticator app: the answer has its secret (base32),
/// the `otpauth://` URI and the URI as an SVG QR code, shown only here. The method
/// is pending until `POST /v1/mfa/methods/{id}/confirm` gets a first code from the
/// app. Needs a recent authentication (a login or a step-up within
/// `KEYLEDGER_REAUTHENTICATION_WINDOW_SECS`, with the account's second factor if it
/// has one): otherwise 401 `reauthentication_required`.
#[utoipa::path(
    post,
    path = "/setup",
    tag = "mfa",
    security(("bearer" = [])),
    request_body = SetupRequest,
    responses(
        (status = 201, description = "A pending method; `Cache-Control: no-store`.",
            body = TotpSetup),
        SetupFailures,
    )
)]
pub async fn setup(
    state: State,
    ctx: Context,
    caller: Authenticated,
    body: web::Json<SetupRequest>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, session_id) = user(&caller)?;
    let body = body.into_inner();
    let new = match (body.kind, body.phone.as_deref()) {
        (FactorType::Totp, None) => NewSecondFactor::Totp,
        (FactorType::Email, None) => NewSecondFactor::Email,
        (FactorType::Sms, Some(phone)) => NewSecondFactor::Sms { phone },
        _ => return Err(invalid_setup()),
    };
    let request_ctx = ctx.acting_as(&caller.0);
    let enrolment = state
        .auth
        .setup_second_factor(user_id, session_id, new, &request_ctx)
        .await?;
    state.settle(enrolment.written).await;
    let qr = enrolment
        .otpauth_uri
        .as_deref()
        .map(qr_data_url)
        .transpose()?;
    Ok(
        no_store(actix_web::http::StatusCode::CREATED).json(TotpSetup {
            method_id: enrolment.method_id,
            kind: body.kind,
            secret: enrolment.secret,
            otpauth_uri: enrolment.otpauth_uri,
            qr,
        }),
    )
}

failures!(
    /// What `methods` can answer besides 200.
    pub MethodsFailures = [bearer(), ApiError::Forbidden, unavailable()]
);

/// List my second factors
#[utoipa::path(
    get,
    path = "/methods",
    tag = "mfa",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Pending and confirmed methods.", body = Methods),
        MethodsFailures,
    )
)]
pub async fn methods(state: State, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let (user_id, _) = user(&caller)?;
    let factors = state
        .auth
        .second_factors(user_id)
        .await
        .map_err(|e| match e {
            AuthError::UserNotFound => ApiError::Unauthorized,
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok().json(Methods {
        methods: factors.methods.into_iter().map(Method::from).collect(),
        backup_codes_remaining: factors.backup_codes_remaining,
    }))
}

failures!(
    /// What `confirm` can answer besides 200.
    pub ConfirmFailures = [
        json_body(),
        bearer(),
        // A service account's token: it has no second factors.
        ApiError::Forbidden,
        AuthError::InvalidCode,
        AuthError::SecondFactorNotFound,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Confirm a second factor
///
/// A first code from the app confirms the method: from then on a login needs a
/// second factor. The account's first confirmed method also brings ten backup
/// codes, shown only in this answer. A wrong code is 401 `invalid_code`; an unknown
/// or already confirmed method 404 `second_factor_not_found`.
#[utoipa::path(
    post,
    path = "/methods/{method_id}/confirm",
    tag = "mfa",
    security(("bearer" = [])),
    params(("method_id" = Uuid, Path, description = "The method set up.")),
    request_body = CodeRequest,
    responses(
        (status = 200, description = "Confirmed; `Cache-Control: no-store`.",
            body = Confirmed),
        ConfirmFailures,
    )
)]
pub async fn confirm(
    state: State,
    limits: Limits,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<CodeRequest>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, _) = user(&caller)?;
    let method_id = method_id(&path)?;
    let request_ctx = ctx.acting_as(&caller.0);
    // Wrong codes go through the per-account throttle, as wrong passwords do.
    let confirmed = limits
        .accounts
        .attempt(
            &user_id.to_string(),
            context_address(request_ctx.ip.as_deref()),
            |e| matches!(e, AuthError::InvalidCode),
            state
                .auth
                .confirm_second_factor(user_id, method_id, &body.code, &request_ctx),
        )
        .await?;
    state.settle(confirmed.written).await;
    Ok(no_store(actix_web::http::StatusCode::OK).json(Confirmed {
        method_id,
        confirmed: true,
        backup_codes: confirmed.backup_codes,
    }))
}

failures!(
    /// What `send_code` can answer besides 202.
    pub SendCodeFailures = [
        bearer(),
        // A service account's token: it has no second factors.
        ApiError::Forbidden,
        AuthError::SecondFactorNotFound,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Send a pending method's code again
///
/// For an email or SMS method set up but not confirmed yet: a new code replaces the
/// one sent at setup (which expires with `KEYLEDGER_MFA_TOKEN_TTL_SECS`). At most one
/// per `KEYLEDGER_MAIL_INTERVAL_SECS` (a request within it is answered alike and sends
/// nothing). 404 `second_factor_not_found` for a method that is not a pending email
/// or SMS method of the caller's.
#[utoipa::path(
    post,
    path = "/methods/{method_id}/send-code",
    tag = "mfa",
    security(("bearer" = [])),
    params(("method_id" = Uuid, Path, description = "A pending email or SMS method.")),
    responses(
        (status = 202, description = "A code is on its way (or one was sent lately)."),
        SendCodeFailures,
    )
)]
pub async fn send_code(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, _) = user(&caller)?;
    let request_ctx = ctx.acting_as(&caller.0);
    let written = state
        .auth
        .resend_setup_code(user_id, method_id(&path)?, &request_ctx)
        .await?;
    state.settle(written).await;
    Ok(HttpResponse::Accepted().finish())
}

failures!(
    /// What `remove` can answer besides 204.
    pub RemoveFailures = [
        bearer(),
        // A service account's token: it has no second factors.
        ApiError::Forbidden,
        AuthError::ReauthenticationRequired,
        AuthError::SecondFactorNotFound,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Remove a second factor
///
/// Needs a recent authentication with the account's factors (401
/// `reauthentication_required` otherwise: step up first). Removing the last
/// confirmed method also revokes the backup codes, and logins need the password
/// alone again.
#[utoipa::path(
    delete,
    path = "/methods/{method_id}",
    tag = "mfa",
    security(("bearer" = [])),
    params(("method_id" = Uuid, Path, description = "The method.")),
    responses(
        (status = 204, description = "Removed."),
        RemoveFailures,
    )
)]
pub async fn remove(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, session_id) = user(&caller)?;
    let request_ctx = ctx.acting_as(&caller.0);
    let written = state
        .auth
        .remove_second_factor(user_id, session_id, method_id(&path)?, &request_ctx)
        .await?;
    state.settle(written).await;
    Ok(HttpResponse::NoContent().finish())
}

failures!(
    /// What `regenerate_backup_codes` can answer besides 200.
    pub RegenerateFailures = [
        bearer(),
        // A service account's token: it has no second factors.
        ApiError::Forbidden,
        AuthError::ReauthenticationRequired,
        AuthError::NoSecondFactor,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Replace my backup codes
///
/// Ten new single-use codes, shown only in this answer; the old ones stop working.
/// Needs a confirmed second factor (409 `no_second_factor`) and a recent
/// authentication with it (401 `reauthentication_required`).
#[utoipa::path(
    post,
    path = "/backup-codes/regenerate",
    tag = "mfa",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "New codes; `Cache-Control: no-store`.",
            body = BackupCodes),
        RegenerateFailures,
    )
)]
pub async fn regenerate_backup_codes(
    state: State,
    ctx: Context,
    caller: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let (user_id, session_id) = user(&caller)?;
    let request_ctx = ctx.acting_as(&caller.0);
    let issued = state
        .auth
        .regenerate_backup_codes(user_id, session_id, &request_ctx)
        .await?;
    state.settle(issued.written).await;
    Ok(no_store(actix_web::http::StatusCode::OK).json(BackupCodes {
        backup_codes: issued.codes,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    /// The `mfa_token` of the login.
    mfa_token: String,
    /// An email, SMS or passkey method of the login's `methods`.
    method_id: Uuid,
}

failures!(
    /// What `challenge` can answer besides 202.
    pub ChallengeFailures = [
        json_body(),
        AuthError::InvalidMfaToken,
        AuthError::SecondFactorNotFound,
        too_many_attempts(),
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Ask for a login's second step
///
/// For an email or SMS method of the login waiting behind `mfa_token`: a code is
/// mailed to the account's address, or sent by text message, valid until the
/// `mfa_token` expires; only the newest works, once. At most one code per method per
/// `KEYLEDGER_MAIL_INTERVAL_SECS` (a request within it is answered alike and sends
/// nothing). Then `POST /v1/mfa/verify` with the code.
///
/// For a passkey method: 200 with the options for `navigator.credentials.get()`
/// (every passkey of the account is allowed); then `POST /v1/mfa/verify` with the
/// `credential`. Asking again replaces the options.
#[utoipa::path(
    post,
    path = "/challenge",
    tag = "mfa",
    request_body = ChallengeRequest,
    responses(
        (status = 200, description = "A passkey method: the WebAuthn options.",
            body = crate::resources::passkeys::CeremonyOptions),
        (status = 202, description = "A code is on its way (or one was sent lately)."),
        ChallengeFailures,
    )
)]
pub async fn challenge(
    state: State,
    ctx: Context,
    body: web::Json<ChallengeRequest>,
) -> Result<HttpResponse, ApiError> {
    if let Some(options) = state
        .auth
        .start_passkey_second_factor(&body.mfa_token, body.method_id)
        .await?
    {
        return Ok(crate::resources::passkeys::options_answer(options));
    }
    let written = state
        .auth
        .send_second_factor_code(&body.mfa_token, body.method_id, &ctx.0)
        .await?;
    state.settle(written).await;
    Ok(HttpResponse::Accepted().finish())
}

failures!(
    /// What `verify` can answer besides 200.
    pub VerifyFailures = [
        json_body(),
        AuthError::InvalidMfaToken,
        AuthError::InvalidCode,
        AuthError::InvalidChallenge,
        AuthError::InvalidPasskey,
        AuthError::AccountSuspended,
        too_many_attempts(),
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Complete a login with a second factor
///
/// Takes the `mfa_token` a login answered (`mfa_required: true`) and a code: of the
/// authenticator app (each code works once), or a backup code (each works once).
/// Answers the session's tokens, as a login does; their `amr` lists the factors
/// (`["pwd", "otp", "mfa"]`). A wrong code is 401 `invalid_code` and counts towards
/// the account's lockout like a wrong password; after 5 wrong codes, or once the
/// account is locked, or after `KEYLEDGER_MFA_TOKEN_TTL_SECS`, the token is spent
/// (401 `invalid_mfa_token`: sign in again). While the account is locked, 429.
#[utoipa::path(
    post,
    path = "/verify",
    tag = "mfa",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "A new session; `Cache-Control: no-store`.",
            body = TokenResponse),
        VerifyFailures,
    )
)]
pub async fn verify(
    state: State,
    ctx: Context,
    delivery: Delivery,
    body: web::Json<VerifyRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let outcome = match (body.code, body.credential) {
        (Some(code), None) => {
            state
                .auth
                .verify_second_factor(
                    &body.mfa_token,
                    &code,
                    body.method_id,
                    body.device_token.as_deref(),
                    &ctx.0,
                )
                .await?
        }
        (None, Some(credential)) => {
            state
                .auth
                .verify_second_factor_passkey(
                    &body.mfa_token,
                    credential,
                    body.device_token.as_deref(),
                    &ctx.0,
                )
                .await?
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give either `code` or `credential`",
            ))
        }
    };
    Ok(login_answer(
        &state,
        delivery,
        keyledger_commands::SignIn::Complete(outcome),
    )
    .await)
}

failures!(
    /// What `step_up` can answer besides 204.
    pub StepUpFailures = [
        json_body(),
        bearer(),
        // A service account's token: it has no second factors.
        ApiError::Forbidden,
        AuthError::InvalidCredentials,
        AuthError::InvalidCode,
        too_many_attempts(),
        AuthError::Overloaded,
        AuthError::TooManyConcurrentAttempts,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Prove my factors again (step-up)
///
/// The password, and with a second factor on the account a code (of the app, or a
/// backup code). For `KEYLEDGER_REAUTHENTICATION_WINDOW_SECS` afterwards, changes
/// that need a recent authentication work in this session (removing a factor,
/// replacing backup codes, a password or address change, erasure). Wrong passwords
/// and codes count towards the lockout.
#[utoipa::path(
    post,
    path = "/step-up",
    tag = "auth",
    security(("bearer" = [])),
    request_body = StepUpRequest,
    responses(
        (status = 204, description = "This session counts as recently authenticated."),
        StepUpFailures,
    )
)]
pub async fn step_up(
    state: State,
    limits: Limits,
    ctx: Context,
    caller: Authenticated,
    body: web::Json<StepUpRequest>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, session_id) = user(&caller)?;
    let body = body.into_inner();
    let request_ctx = ctx.acting_as(&caller.0);
    let password = Password::new(body.password);
    let written = limits
        .accounts
        .attempt(
            &user_id.to_string(),
            context_address(request_ctx.ip.as_deref()),
            |e| matches!(e, AuthError::InvalidCredentials | AuthError::InvalidCode),
            state.auth.step_up(
                user_id,
                session_id,
                &password,
                body.code.as_deref(),
                &request_ctx,
            ),
        )
        .await?;
    state.settle(written).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Registers the second-factor routes in `/v1/mfa`, and the step-up in `/v1/auth`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.mfa = routes
        .mfa
        .service(endpoint!(self::setup))
        .service(endpoint!(self::methods))
        .service(endpoint!(self::confirm))
        .service(endpoint!(self::send_code))
        .service(endpoint!(self::remove))
        .service(endpoint!(self::regenerate_backup_codes))
        .service(endpoint!(self::verify))
        .service(endpoint!(self::challenge));
    routes.auth = routes.auth.service(endpoint!(self::step_up));
    routes
}
