//! Request facts and the bearer token, taken once at the edge.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use keyledger_commands::{AccessClaims, RequestContext};

use crate::error::ApiError;
use crate::state::State;

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
        let ip = req.peer_addr().map(|a| a.ip().to_string());
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
    let state = req
        .app_data::<State>()
        .ok_or_else(|| ApiError::Internal("state missing".into()))?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(ApiError::Unauthorized)?;
    let claims = state
        .auth
        .tokens()
        .verify(token.trim())
        .map_err(|_| ApiError::Unauthorized)?;
    if state.revoked.is_revoked(&claims.session_id) {
        return Err(ApiError::Unauthorized);
    }
    Ok(Authenticated(claims))
}
