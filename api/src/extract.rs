//! Request facts and the bearer token, taken once at the edge.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures::future::LocalBoxFuture;
use keyledger_commands::{AccessClaims, RequestContext, SubjectKind};

use crate::browser_session;
use crate::error::{payload_error, ApiError};
use crate::state::{AppState, State};

/// The request id assigned by the request-id middleware.
#[derive(Clone)]
pub struct RequestId(pub String);

/// [`RequestContext`] from the connection and headers.
pub struct Context(pub RequestContext);

impl FromRequest for Context {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let ip = req.peer_addr().map(|a| match req.app_data::<State>() {
            Some(state) => state
                .client_address
                .client_ip(a.ip(), req.headers())
                .to_string(),
            None => a.ip().to_canonical().to_string(),
        });
        let user_agent = req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        ready(Ok(Context(RequestContext {
            request_id,
            ip,
            user_agent,
            actor: None,
        })))
    }
}

impl Context {
    /// The request's context with the authenticated caller as the actor recorded in
    /// every event it writes (the audit trail's "who").
    pub fn acting_as(self, claims: &AccessClaims) -> RequestContext {
        RequestContext {
            actor: Some(claims.user_id),
            ..self.0
        }
    }
}

/// The raw request body, for a route that parses it itself (the token route takes a
/// form or JSON). Limited by the app's `PayloadConfig` like actix's `Bytes`, but a body
/// that is too large or cannot be decoded is refused in the envelope, not in actix's
/// plain text: `Bytes` has no error handler to configure, unlike `JsonConfig`.
pub struct Body(pub web::Bytes);

impl FromRequest for Body {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move { bytes.await.map(Body).map_err(|e| payload_error(&e)) })
    }
}

/// Free text from a query string that goes into a database query (a search, a
/// filter, a page key). PostgreSQL's `text` cannot hold NUL, so a `%00` failed the
/// query and answered 503; this type refuses it while deserializing, so the route
/// answers its own 400 for a malformed query string (`web::Query` through the app's
/// `QueryConfig`: `invalid_query`).
#[derive(Debug, Clone)]
pub struct QueryText(String);

impl std::ops::Deref for QueryText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for QueryText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.contains('\0') {
            return Err(serde::de::Error::custom("text cannot contain NUL"));
        }
        Ok(Self(text))
    }
}

/// A caller with a valid access token whose session is still alive.
pub struct Authenticated(pub AccessClaims);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Authenticated, ApiError> {
    bearer_claims(req)?
        .map(Authenticated)
        .ok_or(ApiError::Unauthorized)
}

/// The caller's claims: from the bearer token of the `Authorization` header, else
/// from the access cookie of a cookie session (see `crate::browser_session`), whose
/// state-changing requests must also pass the CSRF checks (403 `csrf_failed`).
/// 401 when the token is not valid; `None` without either: for routes where
/// authenticating the caller is optional.
pub fn bearer_claims(req: &HttpRequest) -> Result<Option<AccessClaims>, ApiError> {
    let state = req
        .app_data::<State>()
        .ok_or_else(|| ApiError::Internal("state missing".into()))?;
    let Some(header) = req.headers().get(actix_web::http::header::AUTHORIZATION) else {
        let Some(token) = browser_session::cookie_value(req, browser_session::ACCESS_COOKIE) else {
            return Ok(None);
        };
        let claims = live_claims(state, token).ok_or(ApiError::Unauthorized)?;
        browser_session::check_csrf(state, req, claims.session_id)?;
        return Ok(Some(claims));
    };
    let header = header.to_str().map_err(|_| ApiError::Unauthorized)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(ApiError::Unauthorized)?;
    live_claims(state, token)
        .map(Some)
        .ok_or(ApiError::Unauthorized)
}

/// The claims of `token` if it is accepted at all: it verifies (signature, key,
/// lifetime) and the subject behind it still stands by it. A user's token dies with
/// its session (logout, revocation, suspension, erasure, password change, or the
/// platform's cut-off on session starts, judged by `auth_time`, else by `iat`,
/// which is never earlier than the session's start); a service
/// account's with the account (deletion) or with the secret it was got with (a
/// rotation ends every token issued before it). Every route that accepts a token
/// asks this one function (bearer routes, `validate`, `authorize`), so none of them
/// says yes to a token another refuses. A signature check, one in-memory lookup and
/// one comparison, no query: this is on the hot path.
pub fn live_claims(state: &AppState, token: &str) -> Option<AccessClaims> {
    let claims = state.auth.tokens().verify(token.trim()).ok()?;
    let alive = match claims.kind {
        SubjectKind::User => {
            !state
                .revoked
                .is_cut_off(claims.authenticated_at.unwrap_or(claims.issued_at))
                && !state.revoked.is_revoked(&claims.session_id)
        }
        SubjectKind::ServiceAccount => state.access.read(|m| {
            m.service_account_by_id(&claims.user_id)
                .is_some_and(|sa| sa.accepts_token_issued_at(claims.issued_at))
        }),
    };
    alive.then_some(claims)
}

/// The write side's view of the platform's session cut-off (refresh refuses what
/// validation refuses), served from the same in-memory view as [`live_claims`].
pub struct SessionCutoffView(pub keyledger_projections::RevokedSessions);

impl keyledger_commands::SessionCutoffLookup for SessionCutoffView {
    fn is_cut_off(&self, started_at: chrono::DateTime<chrono::Utc>) -> bool {
        self.0.is_cut_off(started_at)
    }
}
