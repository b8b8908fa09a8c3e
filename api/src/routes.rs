//! Handlers: each validates its input, makes one call, and maps the result.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_commands::{AuthError, Password, TokenPair};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{Authenticated, Context};
use crate::state::State;

#[derive(Deserialize)]
pub struct RegisterRequest {
    email: String,
    password: String,
    display_name: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Deserialize)]
pub struct RefreshRequest {
    refresh_token: String,
}

#[derive(Deserialize)]
pub struct ValidateRequest {
    token: String,
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
    session_id: Uuid,
}

impl From<TokenPair> for TokenResponse {
    fn from(pair: TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token.expose().to_owned(),
            token_type: "Bearer",
            expires_in: pair.expires_in,
            session_id: pair.session_id,
        }
    }
}

/// Token answers must never be cached by browsers or proxies.
fn no_store(status: actix_web::http::StatusCode) -> actix_web::HttpResponseBuilder {
    let mut builder = HttpResponse::build(status);
    builder.insert_header(("Cache-Control", "no-store"));
    builder
}

pub async fn register(
    state: State,
    ctx: Context,
    body: web::Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let registered = state
        .auth
        .register(
            &body.email,
            Password::new(body.password),
            body.display_name.as_deref(),
            &ctx.0,
        )
        .await?;
    state.settle([registered.written]).await;
    Ok(HttpResponse::Created().json(json!({
        "user_id": registered.user_id,
        "email": registered.email,
    })))
}

pub async fn login(
    state: State,
    ctx: Context,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let outcome = state
        .auth
        .login(&body.email, Password::new(body.password), &ctx.0)
        .await?;
    state.settle(outcome.written).await;
    Ok(no_store(actix_web::http::StatusCode::OK).json(TokenResponse::from(outcome.tokens)))
}

pub async fn refresh(
    state: State,
    ctx: Context,
    body: web::Json<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    match state.auth.refresh(&body.refresh_token, &ctx.0).await {
        Ok(pair) => Ok(no_store(actix_web::http::StatusCode::OK).json(TokenResponse::from(pair))),
        Err(AuthError::RefreshTokenReused {
            session_id,
            written,
        }) => {
            state.revoked.insert(session_id, Utc::now());
            state.settle(written.clone()).await;
            Err(AuthError::RefreshTokenReused {
                session_id,
                written,
            }
            .into())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn logout(
    state: State,
    ctx: Context,
    caller: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    let written = state
        .auth
        .logout(claims.user_id, claims.session_id, &ctx.0)
        .await?;
    state.revoked.insert(claims.session_id, Utc::now());
    state.settle(written).await;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize, sqlx::FromRow)]
struct MeRow {
    user_id: Uuid,
    email: String,
    display_name: Option<String>,
    created_at: DateTime<Utc>,
}

pub async fn me(state: State, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let row: Option<MeRow> = sqlx::query_as(
        "SELECT user_id, email, display_name, created_at FROM users WHERE user_id = $1",
    )
    .bind(caller.0.user_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))?;
    let row = row.ok_or(ApiError::Unauthorized)?;
    Ok(HttpResponse::Ok().json(row))
}

pub async fn validate(
    state: State,
    body: web::Json<ValidateRequest>,
) -> Result<HttpResponse, ApiError> {
    let inactive = || HttpResponse::Ok().json(json!({ "active": false }));
    let Ok(claims) = state.auth.tokens().verify(body.token.trim()) else {
        return Ok(inactive());
    };
    if state.revoked.is_revoked(&claims.session_id) {
        return Ok(inactive());
    }
    Ok(HttpResponse::Ok().json(json!({
        "active": true,
        "token_type": "access_token",
        "sub": claims.user_id,
        "sid": claims.session_id,
        "jti": claims.token_id,
        "iss": claims.issuer,
        "aud": claims.audience,
        "iat": claims.issued_at.timestamp(),
        "exp": claims.expires_at.timestamp(),
    })))
}

#[derive(Serialize, sqlx::FromRow)]
struct SessionRow {
    session_id: Uuid,
    ip: Option<String>,
    user_agent: Option<String>,
    created_at: DateTime<Utc>,
    last_refreshed_at: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
    state: String,
    ended_at: Option<DateTime<Utc>>,
    end_reason: Option<String>,
    #[sqlx(skip)]
    current: bool,
}

pub async fn sessions(state: State, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let mut rows: Vec<SessionRow> = sqlx::query_as(
        "SELECT session_id, ip, user_agent, created_at, last_refreshed_at, expires_at,
                CASE WHEN state = 'active' AND expires_at <= now() THEN 'expired' ELSE state END
                    AS state,
                ended_at, end_reason
           FROM sessions WHERE user_id = $1
          ORDER BY created_at DESC LIMIT 200",
    )
    .bind(caller.0.user_id)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))?;
    for row in &mut rows {
        row.current = row.session_id == caller.0.session_id;
    }
    Ok(HttpResponse::Ok().json(json!({ "sessions": rows })))
}

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

pub async fn keys(state: State) -> HttpResponse {
    let keys: Vec<_> = state
        .auth
        .tokens()
        .public_keys()
        .iter()
        .map(|k| {
            json!({
                "kid": k.kid,
                "paserk": k.paserk,
                "version": "v4",
                "purpose": "public",
                "current": k.current,
            })
        })
        .collect();
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "public, max-age=300"))
        .json(json!({ "keys": keys }))
}

pub async fn health(state: State) -> HttpResponse {
    let postgres = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let nats = match &state.nats {
        None => "disabled",
        Some(client) => match client.connection_state() {
            async_nats::connection::State::Connected => "up",
            _ => "down",
        },
    };
    let body = json!({
        "status": if postgres { "ok" } else { "unavailable" },
        "postgres": if postgres { "up" } else { "down" },
        "nats": nats,
    });
    if postgres {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: State) -> HttpResponse {
    let mut text = state.metrics.render();
    text.push_str(&format!(
        "# TYPE keyledger_revoked_sessions_cached gauge\nkeyledger_revoked_sessions_cached {}\n",
        state.revoked.len()
    ));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}
