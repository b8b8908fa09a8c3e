//! The authentication use cases: register, log in, refresh, log out, end a session.
//!
//! Each method decides what the aggregates must not (clock, hashes, tokens), runs
//! one or two commands, and reports what it wrote so the API can wait for its own
//! writes to be projected before answering.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use keyledger_domain::{
    Device, DisplayName, Email, LockoutPolicy, RevocationReason, Session, SessionCommand,
    SessionError, SessionEvent, User, UserCommand, UserError,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::email_registry::{EmailRegistry, PgEmailRegistry};
use crate::hasher::{HashError, PasswordHasher};
use crate::login_gate::{LoginGate, UnknownAccountThrottle};
use crate::password::{Password, PasswordPolicy, WeakPassword};
use crate::store::{pg_event_store, AggregateStore, Committed, StoreError};
use crate::tokens::{RefreshToken, TokenIssuer};

/// Rules from configuration.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub lockout: LockoutPolicy,
    /// Absolute lifetime of a session (and so of its refresh tokens).
    pub session_ttl: Duration,
    pub password_policy: PasswordPolicy,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            lockout: LockoutPolicy::default(),
            session_ttl: Duration::days(30),
            password_policy: PasswordPolicy::default(),
        }
    }
}

/// Facts about the request, captured once at the HTTP edge and stored as event
/// metadata (the audit trail's who, from where and when).
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The authenticated caller, when there is one.
    pub actor: Option<Uuid>,
}

impl RequestContext {
    fn metadata(&self, at: DateTime<Utc>, actor: Option<Uuid>) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("request_id".into(), self.request_id.clone());
        m.insert("occurred_at".into(), at.to_rfc3339());
        let actor = actor.or(self.actor);
        m.insert(
            "actor".into(),
            actor.map_or_else(|| "anonymous".to_owned(), |a| a.to_string()),
        );
        if let Some(ip) = &self.ip {
            m.insert("ip".into(), ip.clone());
        }
        if let Some(ua) = &self.user_agent {
            let ua: String = ua.chars().take(Device::MAX_USER_AGENT).collect();
            m.insert("user_agent".into(), ua);
        }
        m
    }

    fn device(&self) -> Device {
        Device::new(self.ip.clone(), self.user_agent.clone())
    }
}

/// An event the caller may want to see projected before answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub sequence: usize,
}

fn written<A: cqrs_es::Aggregate>(id: impl ToString, committed: &Committed<A>) -> Option<Written> {
    committed.last_sequence().map(|sequence| Written {
        aggregate_type: A::TYPE,
        aggregate_id: id.to_string(),
        sequence,
    })
}

/// Tokens handed to a client. The refresh token is shown here and never again.
#[derive(Debug)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: RefreshToken,
    pub expires_in: u64,
    pub session_id: Uuid,
    pub user_id: Uuid,
}

pub struct LoginOutcome {
    pub tokens: TokenPair,
    pub written: Vec<Written>,
}

pub struct Registered {
    pub user_id: Uuid,
    pub email: Email,
    pub written: Written,
}

/// Outcomes a caller must tell apart. Messages are safe to show.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("email address is not valid")]
    InvalidEmail,
    #[error("display name must be 1 to 100 printable characters")]
    InvalidDisplayName,
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error(transparent)]
    WeakPassword(WeakPassword),
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("too many failed attempts")]
    TooManyAttempts { retry_after: std::time::Duration },
    #[error("the server is busy, try again shortly")]
    Overloaded,
    #[error("the refresh token is not valid")]
    InvalidRefreshToken,
    #[error("the refresh token was already used; the session has been revoked")]
    RefreshTokenReused {
        session_id: Uuid,
        written: Option<Written>,
    },
    #[error("no such session")]
    SessionNotFound,
    #[error("the account is being changed concurrently, try again")]
    Conflict,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Overloaded => Self::Overloaded,
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for AuthError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

fn store_error<E: std::error::Error>(
    e: StoreError<E>,
    rejected: impl FnOnce(E) -> AuthError,
) -> AuthError {
    match e {
        StoreError::Rejected(inner) => rejected(inner),
        StoreError::Conflict => AuthError::Conflict,
        StoreError::Unavailable(why) => AuthError::Unavailable(why),
    }
}

/// What a password must not be built from: the address, its local part, the name.
fn personal_inputs<'a>(email: &'a Email, display_name: Option<&'a DisplayName>) -> Vec<&'a str> {
    let local_part = email.as_str().split('@').next().unwrap_or_default();
    let mut inputs = vec![email.as_str(), local_part];
    inputs.extend(display_name.map(DisplayName::as_str));
    inputs
}

fn retry_after(until: DateTime<Utc>, now: DateTime<Utc>) -> AuthError {
    let secs = (until - now).num_seconds().max(1) as u64;
    AuthError::TooManyAttempts {
        retry_after: std::time::Duration::from_secs(secs),
    }
}

pub struct AuthService {
    users: AggregateStore<User>,
    sessions: AggregateStore<Session>,
    emails: PgEmailRegistry,
    hasher: PasswordHasher,
    tokens: Arc<TokenIssuer>,
    gate: LoginGate,
    unknown: UnknownAccountThrottle,
    settings: AuthSettings,
}

impl AuthService {
    pub fn new(
        pool: PgPool,
        hasher: PasswordHasher,
        tokens: Arc<TokenIssuer>,
        settings: AuthSettings,
    ) -> Self {
        Self {
            users: AggregateStore::new(pg_event_store(pool.clone()), ()),
            sessions: AggregateStore::new(pg_event_store(pool.clone()), ()),
            emails: PgEmailRegistry::new(pool),
            hasher,
            tokens,
            gate: LoginGate::default(),
            unknown: UnknownAccountThrottle::default(),
            settings,
        }
    }

    pub fn tokens(&self) -> &TokenIssuer {
        &self.tokens
    }

    pub async fn register(
        &self,
        email: &str,
        password: Password,
        display_name: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<Registered, AuthError> {
        let email = Email::parse(email).map_err(|_| AuthError::InvalidEmail)?;
        let display_name = display_name
            .map(DisplayName::parse)
            .transpose()
            .map_err(|_| AuthError::InvalidDisplayName)?;
        self.settings
            .password_policy
            .check(&password, &personal_inputs(&email, display_name.as_ref()))
            .map_err(AuthError::WeakPassword)?;

        let user_id = Uuid::new_v4();
        if !self.emails.claim(&email, user_id).await? {
            return Err(AuthError::EmailTaken);
        }
        let result = self
            .register_claimed(user_id, email.clone(), display_name, &password, ctx)
            .await;
        if result.is_err() {
            // Best effort: a claim left behind is taken over once stale.
            let _ = self.emails.release(&email, user_id).await;
        }
        result
    }

    async fn register_claimed(
        &self,
        user_id: Uuid,
        email: Email,
        display_name: Option<DisplayName>,
        password: &Password,
        ctx: &RequestContext,
    ) -> Result<Registered, AuthError> {
        let password_hash = self.hasher.hash(password).await?;
        let at = Utc::now();
        let command = UserCommand::Register {
            user_id,
            email: email.clone(),
            display_name,
            password_hash,
            at,
        };
        let committed = self
            .users
            .execute_new(
                &user_id.to_string(),
                command,
                &ctx.metadata(at, Some(user_id)),
            )
            .await
            .map_err(|e| store_error(e, |_| AuthError::EmailTaken))?;
        let written = written(user_id, &committed).ok_or(AuthError::Conflict)?;
        Ok(Registered {
            user_id,
            email,
            written,
        })
    }

    /// One password check at most per attempt, none while locked, and the same
    /// answer (and about the same time) whether or not the account exists.
    pub async fn login(
        &self,
        email: &str,
        password: Password,
        ctx: &RequestContext,
    ) -> Result<LoginOutcome, AuthError> {
        let policy = self.settings.lockout;
        let Ok(email) = Email::parse(email) else {
            // Nothing to look up or lock; still spend the time of a check.
            self.hasher.verify_dummy(&password).await?;
            return Err(AuthError::InvalidCredentials);
        };
        let _turn = self.gate.enter(email.as_str()).await;

        let Some(user_id) = self.emails.lookup(&email).await? else {
            return self.fail_unknown(&email, &password).await;
        };
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        // A claim whose registration has not landed (yet) is no account.
        if !loaded.aggregate().is_registered() {
            return self.fail_unknown(&email, &password).await;
        }
        let user = loaded.aggregate().clone();

        let now = Utc::now();
        if let Some(until) = user.locked_at(now) {
            metrics::counter!("keyledger_logins_total", "outcome" => "locked").increment(1);
            return Err(retry_after(until, now));
        }
        let Some(stored) = user.password_hash.as_ref() else {
            return Err(AuthError::InvalidCredentials);
        };
        let verification = self.hasher.verify(&password, stored).await?;
        let at = Utc::now();
        if !verification.matches {
            // The caller proved nothing: the failure is recorded against the
            // account (its subject) with an anonymous actor.
            let committed = self
                .users
                .execute_loaded(
                    &user_id.to_string(),
                    loaded,
                    UserCommand::RecordLoginFailure { policy, at },
                    &ctx.metadata(at, None),
                )
                .await
                .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
            let locked = committed.aggregate.locked_at(at).is_some();
            metrics::counter!("keyledger_logins_total", "outcome" => "invalid_credentials")
                .increment(1);
            if locked {
                metrics::counter!("keyledger_lockouts_total").increment(1);
            }
            return Err(AuthError::InvalidCredentials);
        }

        let metadata = ctx.metadata(at, Some(user_id));
        let rehashed = if verification.needs_rehash {
            Some(self.hasher.hash(&password).await?)
        } else {
            None
        };
        let session_id = Uuid::new_v4();
        let user_committed = self
            .users
            .execute_loaded(
                &user_id.to_string(),
                loaded,
                UserCommand::RecordLoginSuccess {
                    session_id,
                    rehashed,
                    at,
                },
                &metadata,
            )
            .await
            .map_err(|e| {
                store_error(e, |inner| match inner {
                    UserError::Locked { until } => retry_after(until, at),
                    _ => AuthError::InvalidCredentials,
                })
            })?;

        let refresh_token = RefreshToken::generate(session_id, 0);
        let session_committed = self
            .sessions
            .execute_new(
                &session_id.to_string(),
                SessionCommand::Start {
                    session_id,
                    user_id,
                    refresh_token_hash: refresh_token.hash(),
                    device: ctx.device(),
                    at,
                    expires_at: at + self.settings.session_ttl,
                },
                &metadata,
            )
            .await
            .map_err(|e| store_error(e, |_| AuthError::Conflict))?;
        let tokens = self.pair(user_id, session_id, refresh_token)?;
        metrics::counter!("keyledger_logins_total", "outcome" => "success").increment(1);
        Ok(LoginOutcome {
            tokens,
            written: [
                written(user_id, &user_committed),
                written(session_id, &session_committed),
            ]
            .into_iter()
            .flatten()
            .collect(),
        })
    }

    async fn fail_unknown(
        &self,
        email: &Email,
        password: &Password,
    ) -> Result<LoginOutcome, AuthError> {
        let now = Utc::now();
        if let Some(until) = self.unknown.locked_until(email.as_str(), now) {
            metrics::counter!("keyledger_logins_total", "outcome" => "locked").increment(1);
            return Err(retry_after(until, now));
        }
        self.hasher.verify_dummy(password).await?;
        self.unknown
            .record_failure(email.as_str(), Utc::now(), self.settings.lockout);
        metrics::counter!("keyledger_logins_total", "outcome" => "invalid_credentials")
            .increment(1);
        Err(AuthError::InvalidCredentials)
    }

    fn pair(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        refresh_token: RefreshToken,
    ) -> Result<TokenPair, AuthError> {
        let (access_token, _) = self
            .tokens
            .issue(user_id, session_id, None)
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            expires_in: self.tokens.access_ttl().as_secs(),
            session_id,
            user_id,
        })
    }

    /// Rotates the refresh token. Presenting a rotated token revokes the session
    /// (the events are written) and answers [`AuthError::RefreshTokenReused`].
    pub async fn refresh(&self, token: &str, ctx: &RequestContext) -> Result<TokenPair, AuthError> {
        let presented = RefreshToken::parse(token).map_err(|_| AuthError::InvalidRefreshToken)?;
        let session_id = presented.session_id();
        // On success the presented token was the current one, so the next is its
        // successor; on any other outcome `next` is never handed out.
        let next = RefreshToken::generate(session_id, presented.generation().saturating_add(1));
        let id = session_id.to_string();
        let loaded = self
            .sessions
            .load(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidRefreshToken))?;
        // The holder of the session's refresh token acts as its user.
        let actor = loaded.aggregate().user_id;
        let at = Utc::now();
        let committed = self
            .sessions
            .execute_loaded(
                &id,
                loaded,
                SessionCommand::Refresh {
                    presented: presented.hash(),
                    presented_generation: presented.generation(),
                    next: next.hash(),
                    at,
                },
                &ctx.metadata(at, actor),
            )
            .await
            .map_err(|e| {
                store_error(e, |inner: SessionError| match inner {
                    SessionError::NotFound
                    | SessionError::Ended
                    | SessionError::Expired
                    | SessionError::UnknownRefreshToken
                    | SessionError::AlreadyStarted => AuthError::InvalidRefreshToken,
                })
            })?;
        let reused = committed
            .events
            .iter()
            .any(|e| matches!(e.payload, SessionEvent::RefreshTokenReuseDetected { .. }));
        if reused {
            metrics::counter!("keyledger_refresh_reuse_total").increment(1);
            return Err(AuthError::RefreshTokenReused {
                session_id,
                written: written(session_id, &committed),
            });
        }
        let user_id = committed
            .aggregate
            .user_id
            .ok_or(AuthError::InvalidRefreshToken)?;
        self.pair(user_id, session_id, next)
    }

    /// Replaces the password of a signed-in user who proved the current one, then
    /// ends `other_sessions` (the caller's other live sessions): whoever else held
    /// the old password may hold a session too. A wrong current password counts
    /// towards the lockout like a failed login, so this is no way around it.
    pub async fn change_password(
        &self,
        user_id: Uuid,
        current: Password,
        new: Password,
        other_sessions: &[Uuid],
        ctx: &RequestContext,
    ) -> Result<Vec<Written>, AuthError> {
        let id = user_id.to_string();
        let loaded = self
            .users
            .load(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        let user = loaded.aggregate().clone();
        let (Some(email), Some(stored)) = (user.email.clone(), user.password_hash.clone()) else {
            return Err(AuthError::InvalidCredentials);
        };
        self.settings
            .password_policy
            .check(&new, &personal_inputs(&email, user.display_name.as_ref()))
            .map_err(AuthError::WeakPassword)?;

        let _turn = self.gate.enter(email.as_str()).await;
        let now = Utc::now();
        if let Some(until) = user.locked_at(now) {
            return Err(retry_after(until, now));
        }
        let verification = self.hasher.verify(&current, &stored).await?;
        let at = Utc::now();
        if !verification.matches {
            let policy = self.settings.lockout;
            self.users
                .execute_loaded(
                    &id,
                    loaded,
                    UserCommand::RecordLoginFailure { policy, at },
                    &ctx.metadata(at, Some(user_id)),
                )
                .await
                .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
            return Err(AuthError::InvalidCredentials);
        }
        let password_hash = self.hasher.hash(&new).await?;
        let metadata = ctx.metadata(at, Some(user_id));
        let committed = self
            .users
            .execute_loaded(
                &id,
                loaded,
                UserCommand::ChangePassword { password_hash, at },
                &metadata,
            )
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidCredentials))?;
        let mut written_events: Vec<Written> = written(user_id, &committed).into_iter().collect();
        for session_id in other_sessions {
            let command = SessionCommand::Revoke {
                reason: RevocationReason::PasswordChanged,
                at,
            };
            match self
                .end_session(user_id, *session_id, ctx, at, command)
                .await
            {
                Ok(Some(w)) => written_events.push(w),
                // Already ended, or not this user's: nothing to end.
                Ok(None) | Err(AuthError::SessionNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(written_events)
    }

    /// Ends the caller's own session.
    pub async fn logout(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let at = Utc::now();
        self.end_session(user_id, session_id, ctx, at, SessionCommand::Logout { at })
            .await
    }

    /// Ends one of the caller's sessions. Someone else's session answers
    /// [`AuthError::SessionNotFound`], exactly like one that does not exist.
    pub async fn revoke_session(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let at = Utc::now();
        let command = SessionCommand::Revoke {
            reason: RevocationReason::UserRequest,
            at,
        };
        self.end_session(user_id, session_id, ctx, at, command)
            .await
    }

    async fn end_session(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        ctx: &RequestContext,
        at: DateTime<Utc>,
        command: SessionCommand,
    ) -> Result<Option<Written>, AuthError> {
        let id = session_id.to_string();
        let loaded = self
            .sessions
            .load(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::SessionNotFound))?;
        if loaded.aggregate().user_id != Some(user_id) {
            return Err(AuthError::SessionNotFound);
        }
        match self
            .sessions
            .execute_loaded(&id, loaded, command, &ctx.metadata(at, Some(user_id)))
            .await
        {
            Ok(committed) => Ok(written(session_id, &committed)),
            // Already ended: the caller's wish is fulfilled.
            Err(StoreError::Rejected(SessionError::Ended)) => Ok(None),
            Err(e) => Err(store_error(e, |_| AuthError::SessionNotFound)),
        }
    }
}
