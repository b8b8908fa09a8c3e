//! The platform administrator's routes: find accounts, suspend and reactivate them,
//! reset their second factors, appoint other administrators, and suspend
//! organizations.
//!
//! Anyone else gets 403 `forbidden`. Platform administrators also stand in every
//! organization with every permission (see [`crate::resources::organizations`]).

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_commands::{AccessClaims, AuthError, OrganizationError, SubjectKind};
use keyledger_domain::values::RevocationReason;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{Authenticated, Context, QueryText};
use crate::openapi::endpoint;
use crate::openapi::{bearer, failures, json_body, unavailable};
use crate::resources::organizations::path_id;
use crate::resources::Routes;
use crate::state::{AppState, State};

/// 403 unless the caller is a platform administrator with an unscoped token: a token
/// scoped to one organization acts in that organization only, never platform-wide
/// (over every account, organization and the whole audit trail).
pub(crate) fn require_platform_admin(
    state: &AppState,
    claims: &AccessClaims,
) -> Result<(), ApiError> {
    let admin = claims.kind == SubjectKind::User
        && claims.organization_id.is_none()
        && state.access.read(|m| m.is_platform_admin(&claims.user_id));
    if admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// Who an administrative action is aimed at, for [`confirm_if_against_admin`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Aim {
    /// Only when aimed at another administrator (suspension, demotion: doing it
    /// to oneself is no attack on anyone).
    OtherAdmins,
    /// At any administrator, the caller included (erasure: irreversible).
    AnyAdmin,
}

/// 401 `reauthentication_required` when the action is aimed at a platform
/// administrator and the caller's password check (the login that started their
/// session) is older than `KEYLEDGER_REAUTH_WINDOW_SECS`: a stolen or left-open
/// session must not be enough to take the platform from its administrators. Signing
/// in again gives a session that passes.
async fn confirm_if_against_admin(
    state: &AppState,
    claims: &AccessClaims,
    target: Uuid,
    aim: Aim,
) -> Result<(), ApiError> {
    let aimed_at_self = target == claims.user_id;
    if aim == Aim::OtherAdmins && aimed_at_self {
        return Ok(());
    }
    if !state.access.read(|m| m.holds_platform_admin(&target)) {
        return Ok(());
    }
    state
        .auth
        .require_recent_authentication(claims.user_id, claims.session_id)
        .await
        .map_err(ApiError::from)
}

/// An account as a platform administrator sees it.
#[derive(Serialize, ToSchema)]
pub struct UserSummary {
    pub(crate) user_id: Uuid,
    pub(crate) email: String,
    pub(crate) display_name: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) last_login_at: Option<DateTime<Utc>>,
    pub(crate) locked_until: Option<DateTime<Utc>>,
    pub(crate) suspended: bool,
    pub(crate) platform_admin: bool,
}

#[derive(Serialize, ToSchema)]
pub struct UserPage {
    users: Vec<UserSummary>,
    /// Pass as `cursor` for the next page; null on the last page (the same names as
    /// every paginated route: `cursor` in, `next_cursor` out).
    next_cursor: Option<String>,
    /// Deprecated: the same as `next_cursor`, kept for one release.
    #[schema(deprecated)]
    next: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserSearch {
    /// Part of an email address or display name (case-insensitive).
    #[param(value_type = Option<String>)]
    query: Option<QueryText>,
    /// 1 to 200 (default 50).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<String>)]
    cursor: Option<QueryText>,
    /// Deprecated: the old name of `cursor`, accepted for one release (`cursor`
    /// wins when both are given).
    #[param(value_type = Option<String>)]
    after: Option<QueryText>,
}

failures!(
    /// What `list_users` can answer besides 200.
    pub ListUsersFailures = [bearer(), ApiError::Forbidden, invalid_query(), unavailable()]
);

pub fn invalid_query() -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        "limit is 1 to 200; query at most 100 characters",
    )
}

/// List and search accounts
///
/// Ordered by email, paginated with `cursor` and `next_cursor`.
#[utoipa::path(
    get,
    path = "/users",
    tag = "admin",
    security(("bearer" = [])),
    params(UserSearch),
    responses(
        (status = 200, description = "A page of accounts.", body = UserPage),
        ListUsersFailures,
    )
)]
pub async fn list_users(
    state: State,
    caller: Authenticated,
    query: web::Query<UserSearch>,
) -> Result<HttpResponse, ApiError> {
    require_platform_admin(&state, &caller.0)?;
    let limit = query.limit.unwrap_or(50);
    let text = query
        .query
        .as_deref()
        .unwrap_or_default()
        .trim()
        .to_lowercase();
    if !(1..=200).contains(&limit) || text.chars().count() > 100 {
        return Err(invalid_query());
    }
    // `%` and `_` are LIKE wildcards: escape them so they match themselves.
    let pattern = format!(
        "%{}%",
        text.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let mut users = state
        .queries
        .search_users(
            &pattern,
            query.cursor.as_deref().or(query.after.as_deref()),
            limit + 1,
        )
        .await
        .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))?;
    let next_cursor = if users.len() as i64 > limit {
        users.truncate(limit as usize);
        users.last().map(|u| u.email.clone())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(UserPage {
        users,
        next: next_cursor.clone(),
        next_cursor,
    }))
}

failures!(
    /// What `get_user` can answer besides 200.
    pub GetUserFailures = [bearer(), ApiError::Forbidden, ApiError::NotFound, unavailable()]
);

/// One account
#[utoipa::path(
    get,
    path = "/users/{user_id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "An account.")),
    responses(
        (status = 200, description = "The account.", body = UserSummary),
        GetUserFailures,
    )
)]
pub async fn get_user(
    state: State,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_platform_admin(&state, &caller.0)?;
    let user = path_id(&path)?;
    let row = state
        .queries
        .user(user)
        .await
        .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))?;
    Ok(HttpResponse::Ok().json(row.ok_or(ApiError::NotFound)?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuspendRequest {
    /// Why, for the audit trail (1 to 500 characters).
    #[schema(example = "chargeback fraud")]
    reason: String,
}

fn reason(raw: &str) -> Result<String, ApiError> {
    let reason = raw.trim();
    if reason.is_empty() || reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(invalid_reason());
    }
    Ok(reason.to_owned())
}

pub fn invalid_reason() -> ApiError {
    ApiError::bad_request(
        "invalid_reason",
        "a reason is 1 to 500 printable characters",
    )
}

failures!(
    /// What `suspend_user` can answer besides 204.
    pub SuspendUserFailures = [
        json_body(),
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        invalid_reason(),
        AuthError::ReauthenticationRequired,
        AuthError::LastAdmin,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Suspend an account
///
/// It can no longer log in, and every session ends at once (its access tokens stop
/// validating). Suspending a suspended account changes nothing. Suspending another
/// platform administrator needs a recent login (401 `reauthentication_required`);
/// the last active administrator cannot be suspended (409 `last_admin`).
#[utoipa::path(
    post,
    path = "/users/{user_id}/suspend",
    tag = "admin",
    security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "An account.")),
    request_body = SuspendRequest,
    responses(
        (status = 204, description = "Suspended."),
        SuspendUserFailures,
    )
)]
pub async fn suspend_user(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<SuspendRequest>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    require_platform_admin(&state, &claims)?;
    let user = path_id(&path)?;
    let reason = reason(&body.reason)?;
    confirm_if_against_admin(&state, &claims, user, Aim::OtherAdmins).await?;
    let ctx = ctx.acting_as(&claims);
    let suspension = state
        .auth
        .suspend_user(user, &reason, &ctx)
        .await
        .map_err(not_found_user)?;
    let now = Utc::now();
    for session in &suspension.ended_sessions {
        state.revoked.insert(*session, now);
    }
    state.settle_access(suspension.written).await;
    Ok(HttpResponse::NoContent().finish())
}

failures!(
    /// What `erase_user` can answer besides 204.
    pub EraseUserFailures = [
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        OrganizationError::LastOwner,
        AuthError::ReauthenticationRequired,
        AuthError::LastAdmin,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Erase an account (GDPR)
///
/// Forgets the person without rewriting history. The account first leaves every
/// organization (409 `last_owner` for the last owner of one: appoint another owner
/// first; nothing is erased then). Every session ends, the account
/// can never log in again, its email can be registered again, and every personal
/// field the event log holds about it (email, name, IP addresses, user agents) reads
/// `[erased]` from now on in every read model, export, replay and NATS message,
/// while the events and their hashes stay intact. A `UserErased` event records
/// the erasure. Erasing an erased account finishes an interrupted erasure and
/// answers 204 again. Erasing a platform administrator (oneself included) needs a
/// recent login (401 `reauthentication_required`); the last active administrator
/// cannot be erased (409 `last_admin`).
#[utoipa::path(
    delete,
    path = "/users/{user_id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "An account.")),
    responses(
        (status = 204, description = "Erased."),
        EraseUserFailures,
    )
)]
pub async fn erase_user(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    require_platform_admin(&state, &claims)?;
    let user = path_id(&path)?;
    confirm_if_against_admin(&state, &claims, user, Aim::AnyAdmin).await?;
    let ctx = ctx.acting_as(&claims);
    crate::resources::users::erase_account(&state, user, &ctx)
        .await
        .map_err(|e| match e {
            ApiError::Auth(AuthError::UserNotFound) => ApiError::NotFound,
            other => other,
        })?;
    Ok(HttpResponse::NoContent().finish())
}

failures!(
    /// What `end_user_sessions` can answer besides 200.
    pub EndUserSessionsFailures = [
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        AuthError::ReauthenticationRequired,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// End every session of an account
///
/// "Log out everywhere" on someone's behalf (a phished account, a stolen laptop):
/// every session of the account ends at once on every node (`SessionRevoked`, reason
/// `administrative`); the account itself stays active and can log in again. Aimed at
/// another platform administrator it needs a recent login (401
/// `reauthentication_required`).
#[utoipa::path(
    delete,
    path = "/users/{user_id}/sessions",
    tag = "admin",
    security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "An account.")),
    responses(
        (status = 200, description = "Every session of the account has ended.",
            body = crate::resources::sessions::EndedSessions),
        EndUserSessionsFailures,
    )
)]
pub async fn end_user_sessions(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    require_platform_admin(&state, &claims)?;
    let user = path_id(&path)?;
    if !state.auth.user_exists(user).await? {
        return Err(ApiError::NotFound);
    }
    confirm_if_against_admin(&state, &claims, user, Aim::OtherAdmins).await?;
    let ctx = ctx.acting_as(&claims);
    let ended = state
        .auth
        .end_all_sessions(user, RevocationReason::Administrative, None, &ctx)
        .await
        .map_err(not_found_user)?;
    crate::resources::sessions::forget_sessions(&state, &ended.ended_sessions);
    state.settle(ended.written).await;
    Ok(
        HttpResponse::Ok().json(crate::resources::sessions::EndedSessions {
            ended_sessions: ended.ended_sessions.len(),
        }),
    )
}

fn not_found_user(e: AuthError) -> ApiError {
    match e {
        AuthError::UserNotFound => ApiError::NotFound,
        other => other.into(),
    }
}

failures!(
    /// What `reactivate_user` can answer besides 204.
    pub ReactivateUserFailures = [
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Reactivate a suspended account
///
/// It can log in again (its old sessions stay ended). Reactivating an active account
/// changes nothing.
#[utoipa::path(
    post,
    path = "/users/{user_id}/reactivate",
    tag = "admin",
    security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "An account.")),
    responses(
        (status = 204, description = "Active."),
        ReactivateUserFailures,
    )
)]
pub async fn reactivate_user(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    require_platform_admin(&state, &claims)?;
    let user = path_id(&path)?;
    let ctx = ctx.acting_as(&claims);
    let written = state
        .auth
        .reactivate_user(user, &ctx)
        .await
        .map_err(not_found_user)?;
    state.settle_access(written).await;
    Ok(HttpResponse::NoContent().finish())
}

failures!(
    /// What `reset_user_second_factors` can answer besides 204.
    pub ResetSecondFactorsFailures = [
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        AuthError::ReauthenticationRequired,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Reset an account's second factors
///
/// For an owner who lost every factor (a wiped phone, the backup codes gone):
/// every authenticator app and the backup codes are removed
/// (`SecondFactorsReset`, with the administrator as its actor), a login waiting
/// for a code ends, and the password alone signs in again. Resetting an account
/// without second factors changes nothing. Always needs a recent
/// authentication of the administrator (401 `reauthentication_required`: sign in
/// again or step up), since it takes away a guard of someone else's account.
#[utoipa::path(
    delete,
    path = "/users/{user_id}/mfa",
    tag = "admin",
    security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "An account.")),
    responses(
        (status = 204, description = "The account has no second factor."),
        ResetSecondFactorsFailures,
    )
)]
pub async fn reset_user_second_factors(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    require_platform_admin(&state, &claims)?;
    let user = path_id(&path)?;
    state
        .auth
        .require_recent_authentication(claims.user_id, claims.session_id)
        .await?;
    let ctx = ctx.acting_as(&claims);
    let written = state
        .auth
        .reset_second_factors(user, &ctx)
        .await
        .map_err(not_found_user)?;
    state.settle(written).await;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/admin/sessions/revoke-before`.
#[derive(Deserialize, ToSchema)]
#[serde(
    deny_unknown_fields,
    try_from = "serde_json::Map<String, serde_json::Value>"
)]
pub struct RevokeBeforeRequest {
    /// RFC 3339; sessions started before it end. Omitted: now. At most a minute
    /// (clock skew) in the future.
    #[schema(example = "2026-01-31T12:00:00Z")]
    before: Option<String>,
    /// Why, for the audit trail and NATS (1 to 500 characters).
    #[schema(example = "signing key leaked")]
    reason: Option<String>,
}

/// [`RevokeBeforeRequest`]'s fields. Read through a JSON object only: serde also
/// builds a struct from an array (`[null, null]`), and with every field optional
/// such a body, which the document does not describe, would pull the lever.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBeforeFields {
    before: Option<String>,
    reason: Option<String>,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for RevokeBeforeRequest {
    type Error = serde_json::Error;

    fn try_from(object: serde_json::Map<String, serde_json::Value>) -> Result<Self, Self::Error> {
        let fields = RevokeBeforeFields::deserialize(serde_json::Value::Object(object))?;
        Ok(Self {
            before: fields.before,
            reason: fields.reason,
        })
    }
}

/// The session cut-off in force.
#[derive(Serialize, ToSchema)]
pub struct SessionCutoffAnswer {
    /// Every session started before this has ended.
    pub before: DateTime<Utc>,
    /// False when an equal or later cut-off was already in force (nothing was
    /// written; `before` is that one).
    pub recorded: bool,
}

failures!(
    /// What `revoke_sessions_before` can answer besides 200.
    pub RevokeBeforeFailures = [
        json_body(),
        bearer(),
        ApiError::Forbidden,
        crate::resources::audit::invalid_time(),
        invalid_reason(),
        AuthError::CutoffInFuture,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// End every session started before an instant
///
/// The lever for a breach or leaked tokens: every session of every user that
/// started before `before` (default: now) ends at once, with one
/// `SessionsRevokedBefore` event (published on NATS). Their access tokens stop
/// validating and their refresh tokens stop working on every node within the time
/// a logout takes to reach it; `GET /v1/auth/sessions` shows them `revoked`.
/// The caller's own session ends too when it started before the cut-off. A
/// cut-off at or before the one in force changes nothing (`recorded: false`).
/// Service-account tokens have no session and are not affected (rotate the
/// secret or delete the account). At most a minute in the future (422
/// `cutoff_in_future`).
#[utoipa::path(
    post,
    path = "/sessions/revoke-before",
    tag = "admin",
    security(("bearer" = [])),
    request_body = RevokeBeforeRequest,
    responses(
        (status = 200, description = "The cut-off in force.", body = SessionCutoffAnswer),
        RevokeBeforeFailures,
    )
)]
pub async fn revoke_sessions_before(
    state: State,
    ctx: Context,
    caller: Authenticated,
    body: web::Json<RevokeBeforeRequest>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    require_platform_admin(&state, &claims)?;
    let before = body
        .before
        .as_deref()
        .map(|raw| {
            DateTime::parse_from_rfc3339(raw.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| crate::resources::audit::invalid_time())
        })
        .transpose()?;
    let reason = body.reason.as_deref().map(reason).transpose()?;
    let ctx = ctx.acting_as(&claims);
    let cut = state
        .auth
        .revoke_sessions_before(before, reason.as_deref(), &ctx)
        .await?;
    let recorded = cut.written.is_some();
    if recorded {
        // Honoured by this node before the answer leaves; the others follow
        // the feed.
        state
            .revoked
            .raise_cutoff(keyledger_projections::SessionCutoff {
                before: cut.before,
                at: cut.at,
            });
    }
    state.settle(cut.written).await;
    Ok(HttpResponse::Ok().json(SessionCutoffAnswer {
        before: cut.before,
        recorded,
    }))
}

failures!(
    /// What `unlock_user` can answer besides 204.
    pub UnlockUserFailures = [
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Lift an account's lockout
///
/// For an owner locked out by someone else's wrong guesses: the account can log in
/// again at once (an `AccountUnlocked` event is written and published). Unlocking
/// an account that is not locked changes nothing.
#[utoipa::path(
    post,
    path = "/users/{user_id}/unlock",
    tag = "admin",
    security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "An account.")),
    responses(
        (status = 204, description = "Not locked."),
        UnlockUserFailures,
    )
)]
pub async fn unlock_user(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    require_platform_admin(&state, &claims)?;
    let user = path_id(&path)?;
    let ctx = ctx.acting_as(&claims);
    let written = state
        .auth
        .unlock_user(user, &ctx)
        .await
        .map_err(not_found_user)?;
    state.settle_access(written).await;
    Ok(HttpResponse::NoContent().finish())
}

failures!(
    /// What `grant_platform_admin` can answer besides 204.
    pub PlatformAdminFailures = [
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Make an account a platform administrator
#[utoipa::path(
    put,
    path = "/users/{user_id}/platform-admin",
    tag = "admin",
    security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "An account.")),
    responses(
        (status = 204, description = "It is a platform administrator."),
        PlatformAdminFailures,
    )
)]
pub async fn grant_platform_admin(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    require_platform_admin(&state, &claims)?;
    let user = path_id(&path)?;
    let ctx = ctx.acting_as(&claims);
    let written = state
        .auth
        .grant_platform_admin(user, &ctx)
        .await
        .map_err(not_found_user)?;
    state.settle_access(written).await;
    Ok(HttpResponse::NoContent().finish())
}

failures!(
    /// What `revoke_platform_admin` can answer besides 204.
    pub RevokePlatformAdminFailures = [
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        AuthError::ReauthenticationRequired,
        AuthError::LastAdmin,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Take platform administration away from an account
///
/// Demoting another administrator needs a recent login (401
/// `reauthentication_required`). The last active administrator cannot be demoted,
/// not even by themself (409 `last_admin`); two administrators demoting each other
/// at once leave one of them in office.
#[utoipa::path(
    delete,
    path = "/users/{user_id}/platform-admin",
    tag = "admin",
    security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "An account.")),
    responses(
        (status = 204, description = "It is not a platform administrator."),
        RevokePlatformAdminFailures,
    )
)]
pub async fn revoke_platform_admin(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    require_platform_admin(&state, &claims)?;
    let user = path_id(&path)?;
    confirm_if_against_admin(&state, &claims, user, Aim::OtherAdmins).await?;
    let ctx = ctx.acting_as(&claims);
    let written = state
        .auth
        .revoke_platform_admin(user, &ctx)
        .await
        .map_err(not_found_user)?;
    state.settle_access(written).await;
    Ok(HttpResponse::NoContent().finish())
}

/// An organization as a platform administrator sees it.
#[derive(Serialize, ToSchema)]
pub struct OrganizationSummary {
    organization_id: Uuid,
    slug: String,
    name: String,
    suspended: bool,
    members: usize,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct OrganizationSummaries {
    organizations: Vec<OrganizationSummary>,
}

failures!(
    /// What `list_all_organizations` can answer besides 200.
    pub ListAllOrganizationsFailures = [bearer(), ApiError::Forbidden]
);

/// Every organization
#[utoipa::path(
    get,
    path = "/organizations",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "All organizations, by slug.", body = OrganizationSummaries),
        ListAllOrganizationsFailures,
    )
)]
pub async fn list_all_organizations(
    state: State,
    caller: Authenticated,
) -> Result<HttpResponse, ApiError> {
    require_platform_admin(&state, &caller.0)?;
    let mut organizations: Vec<OrganizationSummary> = state.access.read(|m| {
        m.organizations()
            .map(|o| OrganizationSummary {
                organization_id: o.organization_id,
                slug: o.slug.clone(),
                name: o.name.clone(),
                suspended: o.suspended,
                members: o.members.len(),
                created_at: o.created_at,
            })
            .collect()
    });
    organizations.sort_by(|a, b| a.slug.cmp(&b.slug));
    Ok(HttpResponse::Ok().json(OrganizationSummaries { organizations }))
}

failures!(
    /// What `suspend_organization` can answer besides 204.
    pub SuspendOrganizationFailures = [
        json_body(),
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        invalid_reason(),
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Suspend an organization
///
/// Its members and service accounts lose every permission in it at once; it can no
/// longer be changed until reactivated.
#[utoipa::path(
    post,
    path = "/organizations/{org_id}/suspend",
    tag = "admin",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization.")),
    request_body = SuspendRequest,
    responses(
        (status = 204, description = "Suspended."),
        SuspendOrganizationFailures,
    )
)]
pub async fn suspend_organization(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<SuspendRequest>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    require_platform_admin(&state, &claims)?;
    let org = path_id(&path)?;
    let reason = reason(&body.reason)?;
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .suspend(org, &reason, &ctx)
        .await
        .map_err(not_found_org)?;
    state.settle_access(written).await;
    Ok(HttpResponse::NoContent().finish())
}

fn not_found_org(e: OrganizationError) -> ApiError {
    match e {
        OrganizationError::NotFound => ApiError::NotFound,
        other => other.into(),
    }
}

failures!(
    /// What `reactivate_organization` can answer besides 204.
    pub ReactivateOrganizationFailures = [
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Reactivate an organization
#[utoipa::path(
    post,
    path = "/organizations/{org_id}/reactivate",
    tag = "admin",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization.")),
    responses(
        (status = 204, description = "Active."),
        ReactivateOrganizationFailures,
    )
)]
pub async fn reactivate_organization(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    require_platform_admin(&state, &claims)?;
    let org = path_id(&path)?;
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .reactivate(org, &ctx)
        .await
        .map_err(not_found_org)?;
    state.settle_access(written).await;
    Ok(HttpResponse::NoContent().finish())
}

/// A mail that was never delivered.
#[derive(Serialize, ToSchema)]
pub struct UndeliveredMail {
    /// The id of the event that asked for it, and its `Message-ID`'s left part.
    mail_id: Uuid,
    user_id: Uuid,
    /// `verify_email`, `registration_attempt`, `password_reset`, `password_changed`.
    template: String,
    /// `failed` (every attempt failed, or the SMTP server refused it for good) or
    /// `dropped` (nothing to send: the account is gone, or the link expired first).
    state: String,
    attempts: i32,
    /// The last failure as the SMTP server's code or the cause; never the mail.
    last_error: Option<String>,
    queued_at: DateTime<Utc>,
    done_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct UndeliveredMails {
    mails: Vec<UndeliveredMail>,
}

failures!(
    /// What `undelivered_mail` can answer besides 200.
    pub UndeliveredMailFailures = [bearer(), ApiError::Forbidden, unavailable()]
);

/// Mails that were never delivered
///
/// The newest 200 mails the sender gave up (after `KEYLEDGER_MAIL_MAX_ATTEMPTS`, or a
/// permanent refusal) or dropped, newest first. Each failure is also counted in
/// `keyledger_mail_failed_total`. No address and no content: find the account by
/// `user_id`.
#[utoipa::path(
    get,
    path = "/mail/undelivered",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Undelivered mails, newest first.", body = UndeliveredMails),
        UndeliveredMailFailures,
    )
)]
pub async fn undelivered_mail(
    state: State,
    caller: Authenticated,
) -> Result<HttpResponse, ApiError> {
    require_platform_admin(&state, &caller.0)?;
    let outbox = keyledger_projections::MailOutbox::new(state.storage.clone());
    let mails = outbox
        .undelivered(200)
        .await
        .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))?
        .into_iter()
        .map(|m| UndeliveredMail {
            mail_id: m.mail_id.0,
            user_id: m.user_id.0,
            template: m.template,
            state: m.state,
            attempts: m.attempts,
            last_error: m.last_error,
            queued_at: m.queued_at,
            done_at: m.done_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(UndeliveredMails { mails }))
}

/// Registers the platform administration routes in `/v1/admin`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.admin = routes
        .admin
        .service(endpoint!(self::list_users))
        .service(endpoint!(self::get_user, self::erase_user))
        .service(endpoint!(self::suspend_user))
        .service(endpoint!(self::end_user_sessions))
        .service(endpoint!(self::reactivate_user))
        .service(endpoint!(self::unlock_user))
        .service(endpoint!(self::reset_user_second_factors))
        .service(endpoint!(self::revoke_sessions_before))
        .service(endpoint!(
            self::grant_platform_admin,
            self::revoke_platform_admin
        ))
        .service(endpoint!(self::list_all_organizations))
        .service(endpoint!(self::suspend_organization))
        .service(endpoint!(self::reactivate_organization))
        .service(endpoint!(self::undelivered_mail));
    routes
}
