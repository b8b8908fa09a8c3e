//! Sign-in by email: ask for a sign-in mail, then sign in with its link or its
//! code. Off unless `KEYLEDGER_EMAIL_LOGIN=on` (404 `email_login_disabled`).
//!
//! Asking names an address, so it is answered like `forgot-password`: 202 at
//! once, before the look-up, the same whether an account has the address, within
//! a budget per address and the per-client limit. Signing in with a code names
//! an address too: its wrong codes go through the per-account throttle of the
//! password login.

use actix_web::{web, HttpResponse};
use keyledger_commands::{AuthError, EmailLoginProof};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::browser_session::Delivery;
use crate::error::ApiError;
use crate::extract::Context;
use crate::openapi::{endpoint, failures, json_body, too_many_attempts, unavailable};
use crate::rate_limit::{context_address, Limits};
use crate::resources::auth::{login_answer, LoginAnswer};
use crate::resources::recovery::{accept_address_request, Accepted, AddressRequest};
use crate::resources::Routes;
use crate::state::State;

/// The link's token, or the address and the code.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailLoginVerifyRequest {
    /// The `token` query parameter of the mailed link (`klm1.…`). Give this, or
    /// `email` and `code`.
    #[schema(example = "klm1.AAAA…")]
    token: Option<String>,
    /// The address the sign-in mail went to (with `code`).
    #[schema(example = "ada@example.com")]
    email: Option<String>,
    /// The six-digit code of the mail (with `email`); spaces and dashes are ignored.
    #[schema(example = "042917")]
    code: Option<String>,
    /// The `device_token` an earlier login to this account answered, to keep this
    /// client's device (optional).
    device_token: Option<String>,
}

/// Neither a token nor an address with a code, or both.
fn invalid_proof() -> ApiError {
    ApiError::bad_request(
        "invalid_request",
        "give either `token`, or `email` and `code`",
    )
}

failures!(
    /// What `email_login` can answer besides 202.
    pub EmailLoginRequestFailures = [json_body(), AuthError::InvalidEmail, AuthError::EmailLoginOff]
);

/// Mail a sign-in link and code
///
/// Sign-in by email (`KEYLEDGER_EMAIL_LOGIN=on`; otherwise 404
/// `email_login_disabled`). Always 202 for a well-formed address, in the same
/// time whether an account has it. The mail carries a link and a six-digit code;
/// either works once, for `KEYLEDGER_EMAIL_LOGIN_TTL_SECS` (10 minutes), and only
/// the newest mail's do. At most one mail per account per
/// `KEYLEDGER_MAIL_INTERVAL_SECS`; a suspended account gets none.
#[utoipa::path(
    post,
    path = "/email-login",
    tag = "auth",
    request_body = AddressRequest,
    responses(
        (status = 202, description = "Taken; a mail follows if there is an account to mail.",
            body = Accepted),
        EmailLoginRequestFailures,
    )
)]
pub async fn email_login(
    state: State,
    limits: Limits,
    ctx: Context,
    body: web::Json<AddressRequest>,
) -> Result<HttpResponse, ApiError> {
    if !state.auth.email_login_enabled() {
        return Err(AuthError::EmailLoginOff.into());
    }
    accept_address_request(
        &limits,
        ctx,
        body,
        "email-login",
        move |email, ctx| async move { state.auth.request_email_login(&email, &ctx).await },
    )
}

failures!(
    /// What `email_login_verify` can answer besides 200.
    pub EmailLoginVerifyFailures = [
        json_body(),
        invalid_proof(),
        AuthError::InvalidToken,
        AuthError::AccountSuspended,
        too_many_attempts(),
        AuthError::EmailLoginOff,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Sign in with the link or code of a sign-in mail
///
/// Starts a session and answers its tokens, as `POST /v1/auth/login` does; the
/// session's `UserLoggedIn` has the factor `email`, and the address counts as
/// verified from then on. Takes the link's `token`, or the `email` with the mail's
/// `code`. A used, expired, superseded or forged token, and a wrong code, are 400
/// `invalid_token` (nothing tells whether the address has an account). Each wrong
/// code counts towards the account's lockout like a wrong password, and a mail's
/// code stops working after 5 wrong ones or once the account is locked; while it
/// is locked the right code answers 429 `too_many_attempts` but the link still
/// signs in (and ends the lockout).
#[utoipa::path(
    post,
    path = "/email-login/verify",
    tag = "auth",
    request_body = EmailLoginVerifyRequest,
    responses(
        (status = 200, description = "A new session; or, for an account with a second \
            factor, `mfa_required` and the `mfa_token` for `POST /v1/mfa/verify`. \
            `Cache-Control: no-store`.", body = LoginAnswer),
        EmailLoginVerifyFailures,
    )
)]
pub async fn email_login_verify(
    state: State,
    limits: Limits,
    ctx: Context,
    delivery: Delivery,
    body: web::Json<EmailLoginVerifyRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    // The body's shape first, as for every route (the extractor checks the
    // others' before their handler runs).
    let proof = match (&body.token, &body.email, &body.code) {
        (Some(token), None, None) => EmailLoginProof::Link(token),
        (None, Some(email), Some(code)) => EmailLoginProof::Code { email, code },
        _ => return Err(invalid_proof()),
    };
    if !state.auth.email_login_enabled() {
        return Err(AuthError::EmailLoginOff.into());
    }
    let device_token = body.device_token.as_deref();
    let signing_in = state.auth.email_login(proof, device_token, &ctx.0);
    let outcome = match proof {
        EmailLoginProof::Link(_) => signing_in.await?,
        // Wrong codes go through the per-account throttle, as wrong passwords do.
        EmailLoginProof::Code { email, .. } => {
            limits
                .accounts
                .attempt(
                    email,
                    context_address(ctx.0.ip.as_deref()),
                    |e| matches!(e, AuthError::InvalidToken),
                    signing_in,
                )
                .await?
        }
    };
    Ok(login_answer(&state, delivery, outcome).await)
}

/// Registers the sign-in-by-email routes in `/v1/auth`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.auth = routes
        .auth
        .service(endpoint!(self::email_login))
        .service(endpoint!(self::email_login_verify));
    routes
}
