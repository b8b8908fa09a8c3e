//! The write side of the OpenID provider: an app's session, started when the
//! app exchanges the authorization code of the user's sign-in on the hosted
//! pages, its refreshes, and its end.
//!
//! An app's session is a Session like any other (rotation, reuse detection,
//! revocation, the per-user cap, suspension and erasure all apply), granted to
//! one client (`SessionGrantedToClient`): its refresh token works for that
//! client only, and its access tokens say which client and scope they were
//! issued for, in the format the client was registered with.

use chrono::{DateTime, Utc};
use keyledger_domain::session::{SessionClient, SessionError, SessionStatus};
use keyledger_domain::user::UserCommand;
use uuid::Uuid;

use super::{store_error, AuthError, AuthService, RequestContext, Written};
use crate::jwt::{ClientGrant, JwsAlg, JwtGrant};
use crate::oidc_codes::AuthorizationGrant;
use crate::tokens::{AccessScope, RefreshToken, SessionClaims};

/// How an app's access tokens are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessTokenForm {
    /// PASETO v4.public, as Keyledger's own API issues them.
    Paseto,
    /// An RFC 9068 JWT (`at+jwt`) signed with this algorithm.
    Jwt(JwsAlg),
}

/// The app a session is for, as the token endpoint authenticated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppClient {
    pub client_id: Uuid,
    pub access: AccessTokenForm,
}

/// Tokens for an app, and what its ID token says.
#[derive(Debug)]
pub struct AppTokens {
    pub access_token: String,
    pub refresh_token: RefreshToken,
    pub expires_in: u64,
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// The granted scope, space-separated.
    pub scope: String,
    /// When the user last proved who they are (`auth_time`), and how (`amr`).
    pub auth_time: DateTime<Utc>,
    pub factors: Vec<String>,
    pub written: Vec<Written>,
}

/// What a refresh token is, for revocation and introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenStatus {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub client_id: Option<Uuid>,
    pub scope: Option<String>,
    /// The token is the session's current one and the session is live.
    pub active: bool,
    pub expires_at: Option<DateTime<Utc>>,
}

impl AuthService {
    /// Starts the app's own session for a redeemed authorization code: the
    /// user's account must still be live (a suspension or an erasure since the
    /// sign-in refuses it), and the session is the user's like any other.
    pub async fn start_app_session(
        &self,
        grant: &AuthorizationGrant,
        client: &AppClient,
        ctx: &RequestContext,
    ) -> Result<AppTokens, AuthError> {
        let at = Utc::now();
        let session_id = Uuid::new_v4();
        let user_id = grant.user_id;
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        let command = UserCommand::StartAppSession {
            session_id,
            factors: grant.factors.clone(),
            at,
        };
        let app = AppSession {
            client,
            grant: SessionClient {
                client_id: client.client_id,
                scope: grant.scope.clone(),
                authenticated_at: Some(grant.auth_time),
            },
        };
        let outcome = self
            .start_session_for(
                (user_id, loaded, command),
                (session_id, grant.factors.clone()),
                None,
                at,
                ctx,
                || AuthError::InvalidCredentials,
                Some(&app),
            )
            .await?;
        Ok(AppTokens {
            access_token: outcome.tokens.access_token,
            refresh_token: outcome.tokens.refresh_token,
            expires_in: outcome.tokens.expires_in,
            session_id,
            user_id,
            scope: grant.scope.clone(),
            auth_time: grant.auth_time,
            factors: grant.factors.clone(),
            written: outcome.written,
        })
    }

    /// Rotates an app session's refresh token for the client it was granted
    /// to; another client's token (or Keyledger's own) is `InvalidRefreshToken`
    /// and changes nothing. Reuse ends the session as for [`Self::refresh`].
    ///
    /// `narrowed`, when the app asked for less than the session was granted
    /// (RFC 6749 §6; the caller checked it is a subset), is the scope of this
    /// access token only: the session keeps its grant.
    pub async fn refresh_app_session(
        &self,
        token: &str,
        client: &AppClient,
        narrowed: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<AppTokens, AuthError> {
        let rotated = self.rotate(token, Some(client.client_id), ctx).await?;
        let mut grant = rotated
            .client
            .clone()
            .ok_or(AuthError::InvalidRefreshToken)?;
        if let Some(narrowed) = narrowed {
            grant.scope = narrowed.to_owned();
        }
        let session = SessionClaims {
            session_id: rotated.session_id,
            started_at: rotated.started_at,
            email_verified: self.is_verified(rotated.user_id),
            factors: &rotated.factors,
        };
        let app = AppSession { client, grant };
        let access_token =
            self.app_access_token(rotated.user_id, session, rotated.scope.as_ref(), &app)?;
        Ok(AppTokens {
            access_token,
            refresh_token: rotated.next,
            expires_in: self.tokens.access_ttl().as_secs(),
            session_id: rotated.session_id,
            user_id: rotated.user_id,
            scope: app.grant.scope,
            auth_time: rotated.authenticated_at,
            factors: rotated.factors,
            written: rotated.written.into_iter().collect(),
        })
    }

    /// Ends an app's session (revocation, a replayed code, logout through the
    /// app), whoever's it is: the caller proved it holds a token of it.
    pub async fn end_app_session(
        &self,
        session_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let id = session_id.to_string();
        let loaded = self
            .sessions
            .load(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::SessionNotFound))?;
        let Some(user_id) = loaded.aggregate().user_id else {
            return Ok(None);
        };
        self.revoke_session(user_id, session_id, ctx).await
    }

    /// What `token` is, if it is a refresh token of a session that exists.
    pub async fn refresh_token_status(
        &self,
        token: &str,
    ) -> Result<Option<RefreshTokenStatus>, AuthError> {
        let Ok(presented) = RefreshToken::parse(token) else {
            return Ok(None);
        };
        let loaded = self
            .sessions
            .load(&presented.session_id().to_string())
            .await
            .map_err(|e| store_error(e, |_: SessionError| AuthError::InvalidRefreshToken))?;
        let session = loaded.aggregate();
        let Some(user_id) = session.user_id else {
            return Ok(None);
        };
        let issued = session
            .issued_token_hashes
            .get(presented.generation() as usize)
            .is_some_and(|hash| *hash == presented.hash());
        if !issued {
            return Ok(None);
        }
        let now = Utc::now();
        let active = presented.generation() == session.generation()
            && session.status == SessionStatus::Active
            && session.expires_at.is_some_and(|end| now < end)
            && !session.started_at.is_some_and(|s| self.is_cut_off(s));
        Ok(Some(RefreshTokenStatus {
            session_id: presented.session_id(),
            user_id,
            client_id: session.client.as_ref().map(|c| c.client_id),
            scope: session.client.as_ref().map(|c| c.scope.clone()),
            active,
            expires_at: session.expires_at,
        }))
    }

    /// An access token for an app's session, in the app's format, naming the
    /// client and the scope.
    pub(crate) fn app_access_token(
        &self,
        user_id: Uuid,
        session: SessionClaims<'_>,
        scope: Option<&AccessScope>,
        app: &AppSession<'_>,
    ) -> Result<String, AuthError> {
        let client_id = app.client.client_id.to_string();
        let issued = match app.client.access {
            AccessTokenForm::Jwt(alg) => self.tokens.issue_jwt_for_session(
                user_id,
                session,
                scope,
                &JwtGrant {
                    client_id: &client_id,
                    scope: &app.grant.scope,
                    alg,
                },
            ),
            AccessTokenForm::Paseto => self.tokens.issue_for_client(
                user_id,
                session,
                scope,
                &ClientGrant {
                    client_id: &client_id,
                    scope: &app.grant.scope,
                },
            ),
        };
        issued
            .map(|(token, _)| token)
            .map_err(|e| AuthError::Unavailable(e.to_string()))
    }
}

/// An app's session being started or refreshed: the client, and what the
/// session was granted.
pub(crate) struct AppSession<'a> {
    pub(crate) client: &'a AppClient,
    pub(crate) grant: SessionClient,
}

impl AppSession<'_> {
    pub(crate) fn command_client(&self) -> SessionClient {
        self.grant.clone()
    }
}

/// What a refresh rotated, for either kind of session.
pub(crate) struct Rotated {
    pub(crate) session_id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) next: RefreshToken,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) authenticated_at: DateTime<Utc>,
    pub(crate) factors: Vec<String>,
    pub(crate) scope: Option<AccessScope>,
    pub(crate) client: Option<SessionClient>,
    pub(crate) written: Option<Written>,
}
