//! Proving an address and getting back into an account by mail: verify an
//! address, ask for another verification link, forgot password, reset password,
//! unlock a locked account.
//!
//! The routes that name an address (`resend-verification`, `forgot-password`)
//! answer 202 at once, before looking the address up: the answer, and the time it
//! takes, is the same whether an account has the address. The work (and the mail)
//! follows in the background. Each address has a budget of such requests (the
//! per-account throttle of the credential routes), on top of the per-client limit.

use actix_web::{web, HttpResponse};
use keyledger_commands::{AuthError, Password, RequestContext};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::Context;
use crate::openapi::{endpoint, failures, json_body, unavailable, weak_password};
use crate::rate_limit::{context_address, Limits};
use crate::resources::sessions::forget_sessions;
use crate::resources::Routes;
use crate::state::State;

/// A request taken; what follows arrives by mail.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    #[schema(example = "If an account has this address, a mail is on its way to it.")]
    pub message: &'static str,
}

/// The same answer whether an account has the address or not.
pub const MAIL_ON_ITS_WAY: Accepted = Accepted {
    message: "If an account has this address, a mail is on its way to it.",
};

/// Registration's answer with verification on, for a new and a taken address.
pub const REGISTRATION_TAKEN: Accepted = Accepted {
    message: "Check the inbox of this address: a mail tells what follows.",
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressRequest {
    #[schema(example = "ada@example.com")]
    pub(crate) email: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The `token` query parameter of the mailed link (`klm1.…`).
    token: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPasswordRequest {
    /// The `token` query parameter of the mailed link (`klm1.…`).
    token: String,
    /// 8 to 128 characters, not guessable (zxcvbn), not built from the email or name.
    #[schema(
        example = "a different horse, equally correct",
        min_length = 8,
        max_length = 128
    )]
    password: String,
}

/// Spends one of `email`'s requests of `kind`, refusing (429) when its budget is
/// spent. Keyed by the address as typed, so known and unknown addresses are
/// limited alike.
pub(crate) fn spend_budget(
    limits: &Limits,
    kind: &str,
    email: &str,
    ctx: &RequestContext,
) -> Result<(), ApiError> {
    let key = format!("{kind} {email}");
    limits
        .accounts
        .check(&key, context_address(ctx.ip.as_deref()))?;
    limits.accounts.failed(&key);
    Ok(())
}

/// Runs `work` after the answer: its outcome must not show in the answer or in
/// its timing. Failures are logged (never with the address).
pub(crate) fn in_background<F>(what: &'static str, request_id: String, work: F)
where
    F: std::future::Future<Output = Result<(), AuthError>> + 'static,
{
    actix_web::rt::spawn(async move {
        if let Err(error) = work.await {
            tracing::warn!(%request_id, %error, "{what}: failed after the answer");
        }
    });
}

failures!(
    /// What `resend_verification` and `forgot_password` can answer besides 202.
    pub AddressRequestFailures = [json_body(), AuthError::InvalidEmail]
);

/// Mail another verification link
///
/// Always 202 for a well-formed address, whether an account has it, is verified
/// already, or was mailed a moment ago (`KEYLEDGER_MAIL_INTERVAL_SECS`). A new link
/// replaces the last one.
#[utoipa::path(
    post,
    path = "/resend-verification",
    tag = "auth",
    request_body = AddressRequest,
    responses(
        (status = 202, description = "Taken; a mail follows if there is an account to mail.",
            body = Accepted),
        AddressRequestFailures,
    )
)]
pub async fn resend_verification(
    state: State,
    limits: Limits,
    ctx: Context,
    body: web::Json<AddressRequest>,
) -> Result<HttpResponse, ApiError> {
    accept_address_request(
        &limits,
        ctx,
        body,
        "resend-verification",
        move |email, ctx| async move { state.auth.resend_verification(&email, &ctx).await },
    )
}

/// Mail a password-reset link
///
/// Always 202 for a well-formed address, in the same time whether an account has
/// it. The link works once, for `KEYLEDGER_PASSWORD_RESET_TTL_SECS` (15 minutes),
/// and only the newest one works.
#[utoipa::path(
    post,
    path = "/forgot-password",
    tag = "auth",
    request_body = AddressRequest,
    responses(
        (status = 202, description = "Taken; a mail follows if there is an account to mail.",
            body = Accepted),
        AddressRequestFailures,
    )
)]
pub async fn forgot_password(
    state: State,
    limits: Limits,
    ctx: Context,
    body: web::Json<AddressRequest>,
) -> Result<HttpResponse, ApiError> {
    accept_address_request(
        &limits,
        ctx,
        body,
        "forgot-password",
        move |email, ctx| async move { state.auth.forgot_password(&email, &ctx).await },
    )
}

/// A request that names an address and asks for a mail: the address checked,
/// its budget spent, 202 at once, and `work` (the look-up and the mail) after
/// the answer.
pub(crate) fn accept_address_request<W, F>(
    limits: &Limits,
    ctx: Context,
    body: web::Json<AddressRequest>,
    kind: &'static str,
    work: W,
) -> Result<HttpResponse, ApiError>
where
    W: FnOnce(String, RequestContext) -> F,
    F: std::future::Future<Output = Result<(), AuthError>> + 'static,
{
    let email = checked_address(body.into_inner().email)?;
    spend_budget(limits, kind, &email, &ctx.0)?;
    let request_id = ctx.0.request_id.clone();
    in_background(kind, request_id, work(email, ctx.0));
    Ok(HttpResponse::Accepted().json(MAIL_ON_ITS_WAY))
}

/// An address that could be an account's (registration parses alike): refusing
/// others at once tells nothing about accounts.
fn checked_address(email: String) -> Result<String, ApiError> {
    keyledger_domain::Email::parse(&email)
        .map(|email| email.as_str().to_owned())
        .map_err(|_| AuthError::InvalidEmail.into())
}

failures!(
    /// What `verify_email` can answer besides 204.
    pub VerifyEmailFailures = [
        json_body(),
        AuthError::InvalidToken,
        AuthError::EmailTaken,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Verify an address
///
/// Takes the token of a mailed verification link, or of an address-change link
/// (mailed to the new address by `POST /v1/users/me/email`): that one moves the
/// account to the new address (`EmailChanged`, which mails a notice to the old
/// one), or is 409 `email_taken` when another account took the address
/// meanwhile. A used, expired, superseded or forged token is 400 `invalid_token`.
#[utoipa::path(
    post,
    path = "/verify-email",
    tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 204, description = "The address is verified (`EmailVerified`), or the account moved to the new one (`EmailChanged`)."),
        VerifyEmailFailures,
    )
)]
pub async fn verify_email(
    state: State,
    ctx: Context,
    body: web::Json<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let written = state.auth.verify_email(&body.token, &ctx.0).await?;
    state.settle(written).await;
    Ok(HttpResponse::NoContent().finish())
}

failures!(
    /// What `reset_password` can answer besides 204.
    pub ResetPasswordFailures = [
        json_body(),
        AuthError::InvalidToken,
        weak_password(),
        AuthError::Overloaded,
        AuthError::TooManyConcurrentAttempts,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Set a new password through a reset link
///
/// Takes the token of a mailed reset link and a new password (the password policy
/// applies). Every session of the account ends (`SessionRevoked`, reason
/// `password_reset`), a lockout is lifted, the address counts as verified, and the
/// account is mailed a notice. A used, expired, superseded or forged token is 400
/// `invalid_token`.
#[utoipa::path(
    post,
    path = "/reset-password",
    tag = "auth",
    request_body = ResetPasswordRequest,
    responses(
        (status = 204, description = "The password is set (`PasswordReset`); sign in with it."),
        ResetPasswordFailures,
    )
)]
pub async fn reset_password(
    state: State,
    ctx: Context,
    body: web::Json<ResetPasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let outcome = state
        .auth
        .reset_password(&body.token, Password::new(body.password), &ctx.0)
        .await?;
    forget_sessions(&state, &outcome.ended_sessions);
    state.settle(outcome.written).await;
    Ok(HttpResponse::NoContent().finish())
}

failures!(
    /// What `unlock` can answer besides 204.
    pub UnlockFailures = [
        json_body(),
        AuthError::InvalidToken,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Unlock a locked account through the mailed link
///
/// Takes the token of the unlock link in the lockout mail. The lockout ends at once
/// (`AccountUnlocked`) and the failure count starts again; sign in as usual. The
/// link works once, only while its lockout is in force, and only for the newest
/// lockout: a used, expired (the lockout already ran out), superseded or forged
/// token is 400 `invalid_token`.
#[utoipa::path(
    post,
    path = "/unlock",
    tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 204, description = "The lockout is lifted (`AccountUnlocked`); sign in again."),
        UnlockFailures,
    )
)]
pub async fn unlock(
    state: State,
    ctx: Context,
    body: web::Json<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let written = state.auth.unlock_with_link(&body.token, &ctx.0).await?;
    state.settle(written).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Registers the mail-link routes in `/v1/auth`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.auth = routes
        .auth
        .service(endpoint!(self::verify_email))
        .service(endpoint!(self::resend_verification))
        .service(endpoint!(self::forgot_password))
        .service(endpoint!(self::reset_password))
        .service(endpoint!(self::unlock));
    routes
}
