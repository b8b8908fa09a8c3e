//! The auditor's routes: the audit trail, and an account as it was at a past instant.
//!
//! - `GET /v1/audit/events`: rows of the `audit_trail` read model, newest first, with
//!   keyset pagination on the log position. A platform administrator sees every row;
//!   a caller holding `audit:read` in an organization sees that organization's rows
//!   (its own events, and those of its custom roles and service accounts) when it
//!   names the organization. Isolation as everywhere: an organization the caller
//!   does not belong to answers 404, a member without `audit:read` 403.
//! - `GET /v1/audit/users/{user_id}/as-of?at=`: [`AccountAsOf`], computed from events
//!   alone by the same code as `keyledger-replay as-of`; platform administrators only.
//!
//! Nothing here reads a stored payload directly: audit rows hold the secret-free
//! details written by the projector, and [`AccountAsOf`] has no secret field.

use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use keyledger_commands::AuthError;
use keyledger_projections::{account_as_of, AccountAsOf, FeedError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::{Authenticated, QueryText};
use crate::openapi::endpoint;
use crate::openapi::{bearer, failures, unavailable};
use crate::queries::AuditFilter;
use crate::resources::admin::require_platform_admin;
use crate::resources::organizations::{path_id, require, standing};
use crate::resources::Routes;
use crate::state::State;

/// Page size bounds of `GET /v1/audit/events`.
const MAX_LIMIT: i64 = 500;
const DEFAULT_LIMIT: i64 = 100;
/// Longest accepted text filter (actor, subject, action, outcome).
const MAX_FILTER_CHARS: usize = 200;

/// A filter, a limit or a query string that cannot be read.
pub fn invalid_filter() -> ApiError {
    ApiError::bad_request(
        "invalid_filter",
        "limit is 1 to 500; actor, subject, action and outcome are at most 200 characters",
    )
}

/// A cursor this API did not hand out.
pub fn invalid_cursor() -> ApiError {
    ApiError::bad_request(
        "invalid_cursor",
        "cursor must be the next_cursor of a previous page",
    )
}

/// A time parameter that is missing (where required) or not RFC 3339.
pub fn invalid_time() -> ApiError {
    ApiError::bad_request(
        "invalid_time",
        "times are RFC 3339, for example 2026-01-31T12:00:00Z (percent-encode a `+` offset)",
    )
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| invalid_time())
}

/// The opaque cursor after a row: its log position, encoded.
fn encode_cursor(global_position: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("p{global_position}"))
}

fn decode_cursor(raw: &str) -> Result<i64, ApiError> {
    URL_SAFE_NO_PAD
        .decode(raw.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix('p').and_then(|n| n.parse().ok()))
        .filter(|n: &i64| *n > 0)
        .ok_or_else(invalid_cursor)
}

fn db_failure(e: sqlx::Error) -> ApiError {
    ApiError::Auth(AuthError::Unavailable(e.to_string()))
}

fn feed_failure(e: FeedError) -> ApiError {
    match e {
        FeedError::Database(e) => db_failure(e),
        other => ApiError::Internal(other.to_string()),
    }
}

/// Filters of `GET /v1/audit/events`; all optional, combined with AND.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Who caused the event: a user id, or `anonymous`.
    #[param(value_type = Option<String>)]
    actor: Option<QueryText>,
    /// Whom it is about: a user id (session and membership events name their
    /// user), or the organization, role or service account id.
    #[param(value_type = Option<String>)]
    subject: Option<QueryText>,
    /// The event type, e.g. `LoginFailed`, `MemberAdded`.
    #[param(value_type = Option<String>)]
    action: Option<QueryText>,
    /// `success`, `failure`, `locked` or `suspended`.
    #[param(value_type = Option<String>)]
    outcome: Option<QueryText>,
    /// Only events at or after this RFC 3339 time.
    from: Option<String>,
    /// Only events at or before this RFC 3339 time.
    to: Option<String>,
    /// Only this organization's events. Required unless the caller is a platform
    /// administrator; the caller needs `audit:read` there.
    organization_id: Option<String>,
    /// 1 to 500 (default 100).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One row of the audit trail.
#[derive(Serialize, ToSchema)]
pub struct AuditEvent {
    /// The event's position in the log (newer events have larger positions).
    pub(crate) global_position: i64,
    pub(crate) occurred_at: DateTime<Utc>,
    /// A user id, or `anonymous`.
    pub(crate) actor: String,
    pub(crate) subject: String,
    /// The event type.
    pub(crate) action: String,
    pub(crate) outcome: String,
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) sequence: i64,
    /// The event's data without any hash or token (as published on NATS).
    #[schema(value_type = Object)]
    pub(crate) details: Value,
}

/// A page of the audit trail, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    events: Vec<AuditEvent>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    next_cursor: Option<String>,
}

failures!(
    /// What `list_events` can answer besides 200.
    pub ListEventsFailures = [
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        invalid_filter(),
        invalid_cursor(),
        invalid_time(),
        unavailable(),
    ]
);

/// The audit trail
///
/// One row per event: time, actor, subject, action, outcome, IP, user agent, request
/// id and the secret-free details; newest first, paginated with `cursor`. Without
/// `organization_id`, platform administrators only (403 otherwise). With it, the
/// caller needs `audit:read` in that organization and sees only its rows (its own
/// events, membership changes included, and those of its roles and service
/// accounts); an organization the caller does not belong to answers 404. In an
/// organization's view, rows of people acting only on their own membership
/// (accepting or declining an invitation, leaving) show no IP or user agent.
#[utoipa::path(
    get,
    path = "/events",
    tag = "audit",
    security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of audit rows, newest first.", body = AuditPage),
        ListEventsFailures,
    )
)]
pub async fn list_events(
    state: State,
    caller: Authenticated,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    let query: AuditQuery =
        serde_urlencoded::from_str(request.query_string()).map_err(|_| invalid_filter())?;
    // Who may see what comes first: an outsider learns nothing from a bad filter.
    let organization = match query.organization_id.as_deref() {
        None => {
            require_platform_admin(&state, &claims)?;
            None
        }
        Some(raw) => {
            let org = path_id(raw)?;
            let held = state.access.read(|m| standing(m, &claims, &org))?;
            require(&held, "audit:read")?;
            Some(org)
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    let filters = [&query.actor, &query.subject, &query.action, &query.outcome];
    let too_long = filters.iter().any(|f| {
        f.as_deref()
            .is_some_and(|f| f.chars().count() > MAX_FILTER_CHARS)
    });
    if !(1..=MAX_LIMIT).contains(&limit) || too_long {
        return Err(invalid_filter());
    }
    let from = query.from.as_deref().map(parse_time).transpose()?;
    let to = query.to.as_deref().map(parse_time).transpose()?;
    let before = query.cursor.as_deref().map(decode_cursor).transpose()?;

    let mut events = state
        .queries
        .audit_events(&AuditFilter {
            actor: query.actor.as_deref(),
            subject: query.subject.as_deref(),
            action: query.action.as_deref(),
            outcome: query.outcome.as_deref(),
            from,
            to,
            before,
            organization,
            rows: limit + 1,
        })
        .await
        .map_err(db_failure)?;
    let next_cursor = if events.len() as i64 > limit {
        events.truncate(limit as usize);
        events.last().map(|e| encode_cursor(e.global_position))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(AuditPage {
        events,
        next_cursor,
    }))
}

/// The instant of `GET /v1/audit/users/{user_id}/as-of`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsOfQuery {
    /// The instant, RFC 3339 (e.g. `2026-01-31T12:00:00Z`).
    at: String,
}

failures!(
    /// What `user_as_of` can answer besides 200.
    pub UserAsOfFailures = [
        bearer(),
        ApiError::Forbidden,
        ApiError::NotFound,
        invalid_time(),
        unavailable(),
    ]
);

/// An account as it was at an instant
///
/// Computed from events alone: status (`active`, `suspended`, `locked`,
/// `not_yet_registered`), lockout, the sessions alive then, and in each organization
/// it belonged to, its roles and effective permissions as the roles were defined
/// then. An account registered after `at` is an answer (`not_yet_registered`); an id
/// that was never an account answers 404. Platform administrators only.
#[utoipa::path(
    get,
    path = "/users/{user_id}/as-of",
    tag = "audit",
    security(("bearer" = [])),
    params(("user_id" = Uuid, Path, description = "An account."), AsOfQuery),
    responses(
        (status = 200, description = "The account at that instant.", body = AccountAsOf),
        UserAsOfFailures,
    )
)]
pub async fn user_as_of(
    state: State,
    caller: Authenticated,
    path: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    require_platform_admin(&state, &caller.0)?;
    let user = path_id(&path)?;
    let query: AsOfQuery =
        serde_urlencoded::from_str(request.query_string()).map_err(|_| invalid_time())?;
    let at = parse_time(&query.at)?;
    let account = account_as_of(&state.storage, &state.data_key_wrapping, user, at)
        .await
        .map_err(feed_failure)?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(account))
}

/// Registers the audit routes in `/v1/audit`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.audit = routes
        .audit
        .service(endpoint!(self::list_events))
        .service(endpoint!(self::user_as_of));
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_forgeries_are_refused() {
        for n in [1, 42, i64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(n)).unwrap(), n);
        }
        for bad in [
            "",
            "42",
            "!!",
            &URL_SAFE_NO_PAD.encode("p-1"),
            &URL_SAFE_NO_PAD.encode("x1"),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
