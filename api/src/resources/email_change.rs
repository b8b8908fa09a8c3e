//! Moving one's account to another address: `POST /v1/users/me/email` mails a
//! link to the new address; the link's token goes to `POST /v1/auth/verify-email`
//! (see [`crate::resources::recovery`]), which moves the account and mails a
//! notice to the old address.

use actix_web::{web, HttpResponse};
use keyledger_commands::{AuthError, Password};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::{Authenticated, Context};
use crate::openapi::{bearer, endpoint, failures, json_body, too_many_attempts, unavailable};
use crate::rate_limit::{context_address, Limits};
use crate::resources::recovery::Accepted;
use crate::resources::Routes;
use crate::state::State;

/// The answer for a free and a taken address alike.
pub const CHANGE_MAILED: Accepted = Accepted {
    message: "Check the inbox of the new address: a link there confirms the change.",
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailChangeRequest {
    /// The address to move the account to.
    #[schema(example = "ada.lovelace@example.org")]
    new_email: String,
    /// The account's password.
    #[schema(example = "correct horse battery staple")]
    password: String,
}

failures!(
    /// What `request_email_change` can answer besides 202.
    pub EmailChangeFailures = [
        json_body(),
        bearer(),
        // A service account's token: it has no address to change.
        ApiError::Forbidden,
        AuthError::InvalidEmail,
        AuthError::InvalidCredentials,
        AuthError::ReauthenticationRequired,
        too_many_attempts(),
        AuthError::Overloaded,
        AuthError::TooManyConcurrentAttempts,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Change my address
///
/// Needs the password (a wrong one counts towards the lockout, like a failed
/// login). Mails a link to the new address (`EmailChangeRequested`); its token,
/// posted to `/v1/auth/verify-email`, moves the account there (`EmailChanged`)
/// and mails a notice to the old address. Until then the account keeps its
/// address. The answer is the same whether the new address is free or another
/// account's; a taken address is mailed nothing, and following the link once it
/// is taken is 409 `email_taken`. The link works for
/// `KEYLEDGER_EMAIL_VERIFICATION_TTL_SECS`; a new request replaces it (at most
/// one mail per `KEYLEDGER_MAIL_INTERVAL_SECS`).
#[utoipa::path(
    post,
    path = "/me/email",
    tag = "users",
    security(("bearer" = [])),
    request_body = EmailChangeRequest,
    responses(
        (status = 202, description = "Taken; a mail to the new address follows if it is free.",
            body = Accepted),
        EmailChangeFailures,
    )
)]
pub async fn request_email_change(
    state: State,
    limits: Limits,
    ctx: Context,
    caller: Authenticated,
    body: web::Json<EmailChangeRequest>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    if claims.kind != keyledger_commands::SubjectKind::User {
        return Err(ApiError::Forbidden);
    }
    let request_ctx = ctx.acting_as(&claims);
    // With a second factor on the account, the password alone is not enough:
    // the session must have proved the factor lately (at login or a step-up).
    state
        .auth
        .require_recent_second_factor(claims.user_id, claims.session_id)
        .await?;
    let body = body.into_inner();
    limits
        .accounts
        .attempt(
            &claims.user_id.to_string(),
            context_address(request_ctx.ip.as_deref()),
            |e| matches!(e, AuthError::InvalidCredentials),
            state.auth.request_email_change(
                claims.user_id,
                &body.new_email,
                Password::new(body.password),
                &request_ctx,
            ),
        )
        .await?;
    // Nothing to settle: the request changes no read model, and waiting only
    // when something was written would tell a free address from a taken one.
    Ok(HttpResponse::Accepted().json(CHANGE_MAILED))
}

/// Registers the address change in `/v1/users` (it checks a password: limited
/// like logins).
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.users = routes.users.service(endpoint!(self::request_email_change));
    routes
}
