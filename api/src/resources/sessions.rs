//! The caller's sessions: listing them, ending one, ending all.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_commands::AuthError;
use keyledger_domain::values::RevocationReason;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{Authenticated, Context};
use crate::openapi::{bearer, endpoint, failures, unavailable};
use crate::resources::Routes;
use crate::state::{AppState, State};

/// The end reason of a session ended by the platform's cut-off on session starts.
const SESSIONS_REVOKED_BEFORE: &str = "sessions_revoked_before";

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
    /// Why it ended (`logout`, the revocation reason, or `sessions_revoked_before`
    /// for the platform's cut-off).
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
    let cutoff = state.revoked.cutoff();
    for row in &mut rows {
        row.current = row.session_id == caller.0.session_id;
        // Ended by the platform's cut-off, which its own history does not record.
        if let Some(cutoff) = cutoff.filter(|c| row.state == "active" && row.created_at < c.before)
        {
            row.state = "revoked".into();
            row.ended_at = Some(cutoff.at);
            row.end_reason = Some(SESSIONS_REVOKED_BEFORE.into());
        }
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

/// Makes ended sessions' access tokens fail validation on this node at once.
pub(crate) fn forget_sessions(state: &AppState, sessions: &[Uuid]) {
    let now = Utc::now();
    for session in sessions {
        state.revoked.insert(*session, now);
    }
}

/// Registers the session routes in `/v1/auth`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.auth = routes
        .auth
        .service(endpoint!(self::sessions, self::end_all_sessions))
        .service(endpoint!(self::revoke_session));
    routes
}
