//! An account holder's own account: erasing it.

use actix_web::{web, HttpResponse};
use keyledger_commands::{AuthError, OrganizationError, Password};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{Authenticated, Context};
use crate::openapi::{bearer, endpoint, failures, json_body, too_many_attempts, unavailable};
use crate::rate_limit::{context_address, Limits};
use crate::resources::sessions::forget_sessions;
use crate::resources::Routes;
use crate::state::{AppState, State};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseAccountRequest {
    /// The account's password, re-entered: an access token alone cannot erase it.
    /// An account without a password (it signs in with passkeys) leaves it out:
    /// its session must have signed in, or stepped up, lately instead.
    #[schema(example = "correct horse battery staple")]
    password: Option<String>,
}

failures!(
    /// What `erase_me` can answer besides 204.
    pub EraseMeFailures = [
        json_body(),
        bearer(),
        ApiError::Forbidden,
        AuthError::InvalidCredentials,
        AuthError::ReauthenticationRequired,
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
    // With a second factor on the account, the password alone is not enough:
    // the session must have proved the factor lately (at login or a step-up).
    state
        .auth
        .require_recent_second_factor(claims.user_id, claims.session_id)
        .await?;
    let Some(password) = body.into_inner().password else {
        state
            .auth
            .require_passwordless_reauthentication(claims.user_id, claims.session_id)
            .await?;
        return erase_signed_in(&state, &claims, &request_ctx).await;
    };
    let password = Password::new(password);
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
    erase_signed_in(&state, &claims, &request_ctx).await
}

/// Erases the caller's account once it proved itself.
async fn erase_signed_in(
    state: &AppState,
    claims: &keyledger_commands::tokens::AccessClaims,
    request_ctx: &keyledger_commands::RequestContext,
) -> Result<HttpResponse, ApiError> {
    erase_account(state, claims.user_id, request_ctx)
        .await
        .map_err(|e| match e {
            // The token's account is gone already: the token is no longer good.
            ApiError::Auth(AuthError::UserNotFound) => ApiError::Unauthorized,
            other => other,
        })?;
    // The caller's own session may have ended in an earlier, interrupted attempt.
    forget_sessions(state, &[claims.session_id]);
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
    // What was mailed to the person goes too. The erasure stands whatever happens
    // here (the sender drops what is still queued for an erased account).
    let outbox = keyledger_projections::MailOutbox::new(state.storage.clone());
    if let Err(error) = state.mail.forget_user(&outbox, user).await {
        tracing::error!(%error, "an erased account's mails could not be forgotten");
        metrics::counter!("keyledger_erasure_scrub_failures_total").increment(1);
    }
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

/// Registers the erasure of one's own account in `/v1/users` (it checks a password:
/// limited like logins).
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.users = routes.users.service(endpoint!(self::erase_me));
    routes
}
