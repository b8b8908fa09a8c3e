//! The Session aggregate: one login on one device, and its refresh-token family.
//!
//! Each refresh rotates the token. The session keeps the hash of every token it has
//! issued, so that presenting an already-rotated token is recognised as reuse (a
//! stolen token racing its owner) and ends the whole family, while a token that was
//! never issued is merely refused and cannot be used to kill someone's session.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{Device, RevocationReason, TokenHash};

#[derive(Debug, Clone, PartialEq)]
pub enum SessionCommand {
    Start {
        session_id: Uuid,
        user_id: Uuid,
        refresh_token_hash: TokenHash,
        device: Device,
        /// How the user proved who they are (RFC 8176 `amr` values).
        factors: Vec<String>,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        /// The OpenID client the session is granted to, when an app started it
        /// with an authorization code; `None` for Keyledger's own API.
        client: Option<SessionClient>,
    },
    /// The user proved who they are again in this session (a step-up before a
    /// sensitive change), with `factors`.
    Reauthenticate {
        factors: Vec<String>,
        at: DateTime<Utc>,
    },
    /// Rotate: `presented` is the hash of the token the client sent and
    /// `presented_generation` the generation that token claims to be (it is written
    /// into the token, so checking it is one comparison however old the session);
    /// `next` is the hash of the token that replaces it, which must claim the
    /// generation after the session's current one (not after the presented one:
    /// they differ when a lost answer is retried, see `reuse_grace`).
    ///
    /// `idle_timeout`: a session not refreshed (or started) within it can no longer
    /// be refreshed (`None`: no limit).
    ///
    /// `reuse_grace`: presenting the token just before the current one, within this
    /// long of the current one's issue, is taken for a client retrying a refresh
    /// whose answer it lost, not for theft: a fresh successor is issued, which
    /// supersedes the lost one. The lost one stays on record, so if it turns up
    /// after all (the answer was not lost but stolen) that is reuse and ends the
    /// family. Zero: every presentation of a rotated token is reuse.
    Refresh {
        presented: TokenHash,
        presented_generation: u32,
        next: TokenHash,
        at: DateTime<Utc>,
        idle_timeout: Option<chrono::Duration>,
        reuse_grace: chrono::Duration,
        /// The client presenting the token: the one the session was granted
        /// to, or `None` for a session of Keyledger's own API. Any other is
        /// refused before anything is written (a client cannot end another
        /// app's session by presenting its token).
        client_id: Option<Uuid>,
    },
    Logout {
        at: DateTime<Utc>,
    },
    Revoke {
        reason: RevocationReason,
        at: DateTime<Utc>,
    },
    /// Scope the session's access tokens to one organization (or none). Whether the
    /// user belongs to it is checked by the caller, who holds the membership view.
    SelectOrganization {
        organization_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
}

/// The app a session was granted to by the authorization-code flow, and what
/// it may ask for: a refresh by another client, or for more than `scope`, is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClient {
    pub client_id: Uuid,
    /// The granted scope, space-separated (RFC 6749 §3.3).
    pub scope: String,
    /// When the user signed in on the pages, before the app's code was issued:
    /// the app's session starts later, at the code's exchange, but every ID
    /// token of it must name the original authentication (OpenID Connect Core
    /// §12.2), and a recent-sign-in check must not count the exchange as one.
    pub authenticated_at: Option<DateTime<Utc>>,
}

/// Facts about a session; like user events, each carries what applying it sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SessionEvent {
    /// Version 3.0: `factors` (RFC 8176 `amr` values: how the user signed in);
    /// 2.0 sealed the device's ip and user agent. Older versions read with no
    /// factors (unknown), see `crate::upcasting`.
    SessionStarted {
        session_id: Uuid,
        user_id: Uuid,
        refresh_token_hash: TokenHash,
        device: Device,
        #[serde(default)]
        factors: Vec<String>,
        started_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    /// The user proved who they are again (a step-up), with `factors`: changes
    /// that ask for a recent authentication count from here.
    SessionReauthenticated {
        factors: Vec<String>,
        at: DateTime<Utc>,
    },
    TokenRefreshed {
        generation: u32,
        refresh_token_hash: TokenHash,
        at: DateTime<Utc>,
    },
    RefreshTokenReuseDetected {
        presented_generation: u32,
        current_generation: u32,
        at: DateTime<Utc>,
    },
    SessionRevoked {
        reason: RevocationReason,
        at: DateTime<Utc>,
    },
    UserLoggedOut {
        at: DateTime<Utc>,
    },
    /// Later access tokens of this session (refreshes included) carry this
    /// organization and the user's roles in it.
    OrganizationSelected {
        organization_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    /// Written with `SessionStarted` when an app's authorization code started
    /// the session: its refresh token works for that client only, with that
    /// scope.
    SessionGrantedToClient {
        client_id: Uuid,
        scope: String,
        at: DateTime<Utc>,
        /// Since 1.1: when the user signed in, before the code was issued (1.0
        /// reads as `None`: the session's start stands for it, as it did).
        authenticated_at: Option<DateTime<Utc>>,
    },
}

impl SessionEvent {
    /// Every session event type, for the event catalogue and its tests.
    pub const TYPES: &'static [&'static str] = &[
        "SessionStarted",
        "TokenRefreshed",
        "RefreshTokenReuseDetected",
        "SessionRevoked",
        "UserLoggedOut",
        "OrganizationSelected",
        "SessionReauthenticated",
        "SessionGrantedToClient",
    ];
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SessionStarted { .. } => "SessionStarted",
            Self::TokenRefreshed { .. } => "TokenRefreshed",
            Self::RefreshTokenReuseDetected { .. } => "RefreshTokenReuseDetected",
            Self::SessionRevoked { .. } => "SessionRevoked",
            Self::UserLoggedOut { .. } => "UserLoggedOut",
            Self::OrganizationSelected { .. } => "OrganizationSelected",
            Self::SessionReauthenticated { .. } => "SessionReauthenticated",
            Self::SessionGrantedToClient { .. } => "SessionGrantedToClient",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            // 2.0: the device's ip and user agent are sealed personal data;
            // 3.0: the factors.
            Self::SessionStarted { .. } => "3.0",
            // 1.1: when the user signed in (`authenticated_at`), an addition.
            Self::SessionGrantedToClient { .. } => "1.1",
            _ => "1.0",
        }
        .to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the session already exists")]
    AlreadyStarted,
    #[error("no such session")]
    NotFound,
    #[error("the session has ended")]
    Ended,
    #[error("the session has expired")]
    Expired,
    #[error("the refresh token is not valid for this session")]
    UnknownRefreshToken,
    #[error("the session was idle too long")]
    Idle,
    #[error("the session was granted to another client")]
    WrongClient,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    #[default]
    Active,
    LoggedOut,
    Revoked,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub session_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub device: Device,
    pub status: SessionStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// Hash of every refresh token issued, indexed by generation (0 = at login).
    pub issued_token_hashes: Vec<TokenHash>,
    /// The organization its access tokens are scoped to, if any.
    pub organization_id: Option<Uuid>,
    /// How the user last proved who they are in this session (`amr`): at the
    /// start, or at the last step-up.
    #[serde(default)]
    pub factors: Vec<String>,
    /// When: the start, or the last step-up.
    #[serde(default)]
    pub authenticated_at: Option<DateTime<Utc>>,
    /// The app the session was granted to, if an app started it.
    #[serde(default)]
    pub client: Option<SessionClient>,
}

impl Session {
    pub fn is_started(&self) -> bool {
        self.session_id.is_some()
    }

    pub fn generation(&self) -> u32 {
        u32::try_from(self.issued_token_hashes.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }

    fn ensure_live(&self) -> Result<(), SessionError> {
        if !self.is_started() {
            return Err(SessionError::NotFound);
        }
        if self.status != SessionStatus::Active {
            return Err(SessionError::Ended);
        }
        Ok(())
    }

    /// Whether presenting the already-rotated token of `generation` at `at` is a
    /// client retrying a refresh whose answer it lost: it is the token just before
    /// the current one, and the current one was issued (by that lost answer)
    /// within `grace`. Only the latest issue counts, so a second lost answer in a
    /// row is reuse: the retried token is then two generations behind.
    fn is_lost_answer_retry(
        &self,
        generation: u32,
        at: DateTime<Utc>,
        grace: chrono::Duration,
    ) -> bool {
        generation.saturating_add(1) == self.generation()
            && self
                .last_refreshed_at
                .is_some_and(|issued| at >= issued && at - issued <= grace)
    }

    /// Whether `presented` is the token issued as `generation`: one constant-time
    /// comparison against the hash stored for that generation.
    fn issued_as(&self, generation: u32, presented: &TokenHash) -> bool {
        self.issued_token_hashes
            .get(generation as usize)
            .is_some_and(|issued| issued == presented)
    }
}

impl Aggregate for Session {
    const TYPE: &'static str = "session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SessionCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SessionError> {
        match command {
            SessionCommand::Start {
                session_id,
                user_id,
                refresh_token_hash,
                device,
                factors,
                at,
                expires_at,
                client,
            } => {
                if self.is_started() {
                    return Err(SessionError::AlreadyStarted);
                }
                let started = SessionEvent::SessionStarted {
                    session_id,
                    user_id,
                    refresh_token_hash,
                    device,
                    factors,
                    started_at: at,
                    expires_at,
                };
                sink.write(started, self).await;
                if let Some(SessionClient {
                    client_id,
                    scope,
                    authenticated_at,
                }) = client
                {
                    let granted = SessionEvent::SessionGrantedToClient {
                        client_id,
                        scope,
                        at,
                        authenticated_at,
                    };
                    sink.write(granted, self).await;
                }
            }
            SessionCommand::Reauthenticate { factors, at } => {
                self.ensure_live()?;
                if self.expires_at.is_some_and(|end| end <= at) {
                    return Err(SessionError::Expired);
                }
                sink.write(SessionEvent::SessionReauthenticated { factors, at }, self)
                    .await;
            }
            SessionCommand::Refresh {
                presented,
                presented_generation,
                next,
                at,
                idle_timeout,
                reuse_grace,
                client_id,
            } => {
                self.ensure_live()?;
                if self.client.as_ref().map(|c| c.client_id) != client_id {
                    return Err(SessionError::WrongClient);
                }
                if !self.issued_as(presented_generation, &presented) {
                    return Err(SessionError::UnknownRefreshToken);
                }
                let current = self.generation();
                if presented_generation < current
                    && !self.is_lost_answer_retry(presented_generation, at, reuse_grace)
                {
                    let reuse = SessionEvent::RefreshTokenReuseDetected {
                        presented_generation,
                        current_generation: current,
                        at,
                    };
                    sink.write(reuse, self).await;
                    let revoked = SessionEvent::SessionRevoked {
                        reason: RevocationReason::RefreshTokenReuse,
                        at,
                    };
                    sink.write(revoked, self).await;
                } else {
                    if self.expires_at.is_some_and(|end| end <= at) {
                        return Err(SessionError::Expired);
                    }
                    let last_active = self.last_refreshed_at.or(self.started_at);
                    if let (Some(idle), Some(last)) = (idle_timeout, last_active) {
                        if last + idle <= at {
                            return Err(SessionError::Idle);
                        }
                    }
                    let refreshed = SessionEvent::TokenRefreshed {
                        generation: current + 1,
                        refresh_token_hash: next,
                        at,
                    };
                    sink.write(refreshed, self).await;
                }
            }
            SessionCommand::Logout { at } => {
                self.ensure_live()?;
                sink.write(SessionEvent::UserLoggedOut { at }, self).await;
            }
            SessionCommand::Revoke { reason, at } => {
                self.ensure_live()?;
                sink.write(SessionEvent::SessionRevoked { reason, at }, self)
                    .await;
            }
            SessionCommand::SelectOrganization {
                organization_id,
                at,
            } => {
                self.ensure_live()?;
                let selected = SessionEvent::OrganizationSelected {
                    organization_id,
                    at,
                };
                sink.write(selected, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::SessionStarted {
                session_id,
                user_id,
                refresh_token_hash,
                device,
                factors,
                started_at,
                expires_at,
            } => {
                self.factors = factors;
                self.authenticated_at = Some(started_at);
                self.session_id = Some(session_id);
                self.user_id = Some(user_id);
                self.device = device;
                self.status = SessionStatus::Active;
                self.started_at = Some(started_at);
                self.expires_at = Some(expires_at);
                self.issued_token_hashes = vec![refresh_token_hash];
            }
            SessionEvent::TokenRefreshed {
                generation,
                refresh_token_hash,
                at,
            } => {
                // Set, not push: the event names its own generation.
                let index = generation as usize;
                if self.issued_token_hashes.len() <= index {
                    self.issued_token_hashes
                        .resize(index + 1, refresh_token_hash);
                }
                self.issued_token_hashes[index] = refresh_token_hash;
                self.last_refreshed_at = Some(at);
            }
            SessionEvent::RefreshTokenReuseDetected { .. } => {}
            SessionEvent::SessionRevoked { .. } => self.status = SessionStatus::Revoked,
            SessionEvent::UserLoggedOut { .. } => self.status = SessionStatus::LoggedOut,
            SessionEvent::OrganizationSelected {
                organization_id, ..
            } => self.organization_id = organization_id,
            SessionEvent::SessionGrantedToClient {
                client_id,
                scope,
                authenticated_at,
                ..
            } => {
                if authenticated_at.is_some() {
                    self.authenticated_at = authenticated_at;
                }
                self.client = Some(SessionClient {
                    client_id,
                    scope,
                    authenticated_at,
                });
            }
            SessionEvent::SessionReauthenticated { factors, at } => {
                self.factors = factors;
                self.authenticated_at = Some(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use cqrs_es::test::TestFramework;

    use super::*;

    type SessionTest = TestFramework<Session>;

    fn t(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minute)
    }

    fn h(n: u8) -> TokenHash {
        TokenHash::from_bytes([n; 32])
    }

    fn sid() -> Uuid {
        Uuid::from_u128(7)
    }

    fn device() -> Device {
        Device::new(Some("203.0.113.9".into()), Some("curl/8".into()))
    }

    fn started() -> SessionEvent {
        SessionEvent::SessionStarted {
            session_id: sid(),
            user_id: Uuid::from_u128(1),
            refresh_token_hash: h(0),
            device: device(),
            factors: vec![],
            started_at: t(0),
            expires_at: t(60),
        }
    }

    fn refreshed(generation: u32, minute: i64) -> SessionEvent {
        SessionEvent::TokenRefreshed {
            generation,
            refresh_token_hash: h(generation as u8),
            at: t(minute),
        }
    }

    #[test]
    fn start_emits_session_started() {
        SessionTest::with(())
            .given_no_previous_events()
            .when(SessionCommand::Start {
                session_id: sid(),
                user_id: Uuid::from_u128(1),
                refresh_token_hash: h(0),
                device: device(),
                factors: vec![],
                at: t(0),
                expires_at: t(60),
                client: None,
            })
            .then_expect_events(vec![started()]);
    }

    #[test]
    fn start_twice_is_refused() {
        SessionTest::with(())
            .given(vec![started()])
            .when(SessionCommand::Start {
                session_id: sid(),
                user_id: Uuid::from_u128(1),
                refresh_token_hash: h(9),
                device: device(),
                factors: vec![],
                at: t(1),
                expires_at: t(61),
                client: None,
            })
            .then_expect_error(SessionError::AlreadyStarted);
    }

    #[test]
    fn refresh_with_the_current_token_rotates_it() {
        SessionTest::with(())
            .given(vec![started(), refreshed(1, 5)])
            .when(SessionCommand::Refresh {
                presented: h(1),
                presented_generation: 1,
                next: h(2),
                at: t(10),
                idle_timeout: None,
                reuse_grace: Duration::zero(),
                client_id: None,
            })
            .then_expect_events(vec![refreshed(2, 10)]);
    }

    #[test]
    fn refresh_with_a_rotated_token_revokes_the_family() {
        SessionTest::with(())
            .given(vec![started(), refreshed(1, 5)])
            .when(SessionCommand::Refresh {
                presented: h(0),
                presented_generation: 0,
                next: h(2),
                at: t(10),
                idle_timeout: None,
                reuse_grace: Duration::zero(),
                client_id: None,
            })
            .then_expect_events(vec![
                SessionEvent::RefreshTokenReuseDetected {
                    presented_generation: 0,
                    current_generation: 1,
                    at: t(10),
                },
                SessionEvent::SessionRevoked {
                    reason: RevocationReason::RefreshTokenReuse,
                    at: t(10),
                },
            ]);
    }

    #[test]
    fn refresh_with_a_never_issued_token_is_refused_without_revoking() {
        SessionTest::with(())
            .given(vec![started()])
            .when(SessionCommand::Refresh {
                presented: h(99),
                presented_generation: 99,
                next: h(2),
                at: t(10),
                idle_timeout: None,
                reuse_grace: Duration::zero(),
                client_id: None,
            })
            .then_expect_error(SessionError::UnknownRefreshToken);
    }

    #[test]
    fn refresh_with_a_token_claiming_a_real_generation_but_wrong_hash_is_refused() {
        SessionTest::with(())
            .given(vec![started(), refreshed(1, 5)])
            .when(SessionCommand::Refresh {
                presented: h(77),
                presented_generation: 0,
                next: h(2),
                at: t(10),
                idle_timeout: None,
                reuse_grace: Duration::zero(),
                client_id: None,
            })
            .then_expect_error(SessionError::UnknownRefreshToken);
    }

    #[test]
    fn refresh_of_an_unknown_session_is_refused() {
        SessionTest::with(())
            .given_no_previous_events()
            .when(SessionCommand::Refresh {
                presented: h(0),
                presented_generation: 0,
                next: h(1),
                at: t(1),
                idle_timeout: None,
                reuse_grace: Duration::zero(),
                client_id: None,
            })
            .then_expect_error(SessionError::NotFound);
    }

    #[test]
    fn refresh_after_expiry_is_refused() {
        SessionTest::with(())
            .given(vec![started()])
            .when(SessionCommand::Refresh {
                presented: h(0),
                presented_generation: 0,
                next: h(1),
                at: t(60),
                idle_timeout: None,
                reuse_grace: Duration::zero(),
                client_id: None,
            })
            .then_expect_error(SessionError::Expired);
    }

    #[test]
    fn refresh_after_logout_is_refused() {
        SessionTest::with(())
            .given(vec![started(), SessionEvent::UserLoggedOut { at: t(1) }])
            .when(SessionCommand::Refresh {
                presented: h(0),
                presented_generation: 0,
                next: h(1),
                at: t(2),
                idle_timeout: None,
                reuse_grace: Duration::zero(),
                client_id: None,
            })
            .then_expect_error(SessionError::Ended);
    }

    #[test]
    fn refresh_after_revocation_is_refused() {
        SessionTest::with(())
            .given(vec![
                started(),
                SessionEvent::SessionRevoked {
                    reason: RevocationReason::UserRequest,
                    at: t(1),
                },
            ])
            .when(SessionCommand::Refresh {
                presented: h(0),
                presented_generation: 0,
                next: h(1),
                at: t(2),
                idle_timeout: None,
                reuse_grace: Duration::zero(),
                client_id: None,
            })
            .then_expect_error(SessionError::Ended);
    }

    #[test]
    fn logout_ends_the_session() {
        SessionTest::with(())
            .given(vec![started()])
            .when(SessionCommand::Logout { at: t(3) })
            .then_expect_events(vec![SessionEvent::UserLoggedOut { at: t(3) }]);
    }

    #[test]
    fn logout_twice_is_refused() {
        SessionTest::with(())
            .given(vec![started(), SessionEvent::UserLoggedOut { at: t(3) }])
            .when(SessionCommand::Logout { at: t(4) })
            .then_expect_error(SessionError::Ended);
    }

    #[test]
    fn logout_of_unknown_session_is_refused() {
        SessionTest::with(())
            .given_no_previous_events()
            .when(SessionCommand::Logout { at: t(4) })
            .then_expect_error(SessionError::NotFound);
    }

    #[test]
    fn revoke_ends_the_session_with_its_reason() {
        SessionTest::with(())
            .given(vec![started()])
            .when(SessionCommand::Revoke {
                reason: RevocationReason::UserRequest,
                at: t(3),
            })
            .then_expect_events(vec![SessionEvent::SessionRevoked {
                reason: RevocationReason::UserRequest,
                at: t(3),
            }]);
    }

    #[test]
    fn revoke_of_an_ended_session_is_refused() {
        SessionTest::with(())
            .given(vec![started(), SessionEvent::UserLoggedOut { at: t(3) }])
            .when(SessionCommand::Revoke {
                reason: RevocationReason::UserRequest,
                at: t(4),
            })
            .then_expect_error(SessionError::Ended);
    }

    #[test]
    fn revoke_of_unknown_session_is_refused() {
        SessionTest::with(())
            .given_no_previous_events()
            .when(SessionCommand::Revoke {
                reason: RevocationReason::Administrative,
                at: t(4),
            })
            .then_expect_error(SessionError::NotFound);
    }

    #[test]
    fn a_live_session_can_be_scoped_to_an_organization_and_back() {
        let org = Some(Uuid::from_u128(9));
        SessionTest::with(())
            .given(vec![started()])
            .when(SessionCommand::SelectOrganization {
                organization_id: org,
                at: t(1),
            })
            .then_expect_events(vec![SessionEvent::OrganizationSelected {
                organization_id: org,
                at: t(1),
            }]);
        SessionTest::with(())
            .given(vec![
                started(),
                SessionEvent::OrganizationSelected {
                    organization_id: org,
                    at: t(1),
                },
            ])
            .when(SessionCommand::SelectOrganization {
                organization_id: None,
                at: t(2),
            })
            .then_expect_events(vec![SessionEvent::OrganizationSelected {
                organization_id: None,
                at: t(2),
            }]);
        SessionTest::with(())
            .given(vec![started(), SessionEvent::UserLoggedOut { at: t(1) }])
            .when(SessionCommand::SelectOrganization {
                organization_id: org,
                at: t(2),
            })
            .then_expect_error(SessionError::Ended);
    }

    #[test]
    fn applying_any_event_twice_equals_applying_it_once() {
        let history = vec![
            started(),
            refreshed(1, 1),
            refreshed(2, 2),
            SessionEvent::OrganizationSelected {
                organization_id: Some(Uuid::from_u128(9)),
                at: t(2),
            },
            SessionEvent::RefreshTokenReuseDetected {
                presented_generation: 0,
                current_generation: 2,
                at: t(3),
            },
            SessionEvent::SessionRevoked {
                reason: RevocationReason::RefreshTokenReuse,
                at: t(3),
            },
            SessionEvent::UserLoggedOut { at: t(4) },
        ];
        let mut once = Session::default();
        let mut twice = Session::default();
        for event in history {
            once.apply(event.clone());
            twice.apply(event.clone());
            twice.apply(event);
            assert_eq!(once, twice);
        }
        assert_eq!(once.generation(), 2);
    }

    fn refresh(presented: u8, minute: i64, idle: Option<i64>, grace_secs: i64) -> SessionCommand {
        SessionCommand::Refresh {
            presented: h(presented),
            presented_generation: u32::from(presented),
            next: h(9),
            at: t(minute),
            idle_timeout: idle.map(Duration::minutes),
            reuse_grace: Duration::seconds(grace_secs),
            client_id: None,
        }
    }

    #[test]
    fn retrying_the_previous_token_within_the_grace_issues_a_fresh_successor() {
        SessionTest::with(())
            .given(vec![started(), refreshed(1, 5)])
            .when(refresh(0, 5, None, 10))
            .then_expect_events(vec![SessionEvent::TokenRefreshed {
                generation: 2,
                refresh_token_hash: h(9),
                at: t(5),
            }]);
    }

    #[test]
    fn retrying_the_previous_token_after_the_grace_revokes_the_family() {
        SessionTest::with(())
            .given(vec![started(), refreshed(1, 5)])
            .when(refresh(0, 6, None, 10))
            .then_expect_events(vec![
                SessionEvent::RefreshTokenReuseDetected {
                    presented_generation: 0,
                    current_generation: 1,
                    at: t(6),
                },
                SessionEvent::SessionRevoked {
                    reason: RevocationReason::RefreshTokenReuse,
                    at: t(6),
                },
            ]);
    }

    #[test]
    fn the_superseded_successor_turning_up_after_the_grace_is_reuse() {
        // Generation 1 was "lost", retried into generation 2; then 1 shows up.
        SessionTest::with(())
            .given(vec![started(), refreshed(1, 5), refreshed(2, 5)])
            .when(refresh(1, 6, None, 10))
            .then_expect_events(vec![
                SessionEvent::RefreshTokenReuseDetected {
                    presented_generation: 1,
                    current_generation: 2,
                    at: t(6),
                },
                SessionEvent::SessionRevoked {
                    reason: RevocationReason::RefreshTokenReuse,
                    at: t(6),
                },
            ]);
    }

    #[test]
    fn the_superseded_successor_turning_up_within_the_grace_supersedes_the_retry() {
        // Within the grace the two holders cannot be told apart: the later one
        // gets a fresh pair, and the other's next refresh after the grace is reuse.
        SessionTest::with(())
            .given(vec![started(), refreshed(1, 5), refreshed(2, 5)])
            .when(refresh(1, 5, None, 10))
            .then_expect_events(vec![SessionEvent::TokenRefreshed {
                generation: 3,
                refresh_token_hash: h(9),
                at: t(5),
            }]);
    }

    #[test]
    fn a_token_two_generations_behind_is_reuse_even_within_the_grace() {
        SessionTest::with(())
            .given(vec![started(), refreshed(1, 5), refreshed(2, 5)])
            .when(refresh(0, 5, None, 10))
            .then_expect_events(vec![
                SessionEvent::RefreshTokenReuseDetected {
                    presented_generation: 0,
                    current_generation: 2,
                    at: t(5),
                },
                SessionEvent::SessionRevoked {
                    reason: RevocationReason::RefreshTokenReuse,
                    at: t(5),
                },
            ]);
    }

    #[test]
    fn a_session_idle_longer_than_the_timeout_cannot_be_refreshed() {
        SessionTest::with(())
            .given(vec![started(), refreshed(1, 5)])
            .when(refresh(1, 35, Some(30), 0))
            .then_expect_error(SessionError::Idle);
    }

    #[test]
    fn a_session_refreshed_within_the_idle_timeout_rotates() {
        SessionTest::with(())
            .given(vec![started(), refreshed(1, 5)])
            .when(refresh(1, 34, Some(30), 0))
            .then_expect_events(vec![SessionEvent::TokenRefreshed {
                generation: 2,
                refresh_token_hash: h(9),
                at: t(34),
            }]);
    }

    #[test]
    fn a_never_refreshed_session_is_idle_from_its_start() {
        SessionTest::with(())
            .given(vec![started()])
            .when(refresh(0, 31, Some(30), 0))
            .then_expect_error(SessionError::Idle);
    }

    fn granted_to(client: u128) -> SessionEvent {
        SessionEvent::SessionGrantedToClient {
            client_id: Uuid::from_u128(client),
            scope: "openid offline_access".into(),
            at: t(0),
            authenticated_at: Some(t(-5)),
        }
    }

    #[test]
    fn a_session_started_for_an_app_records_its_client_and_scope() {
        SessionTest::with(())
            .given_no_previous_events()
            .when(SessionCommand::Start {
                session_id: sid(),
                user_id: Uuid::from_u128(1),
                refresh_token_hash: h(0),
                device: device(),
                factors: vec![],
                at: t(0),
                expires_at: t(60),
                client: Some(SessionClient {
                    client_id: Uuid::from_u128(7),
                    scope: "openid offline_access".into(),
                    authenticated_at: Some(t(-5)),
                }),
            })
            .then_expect_events(vec![started(), granted_to(7)]);
    }

    #[test]
    fn an_apps_session_keeps_the_sign_in_that_issued_its_code() {
        // Given a session started at the code's exchange (minute 0) from a sign-in
        // at minute -5, when it is loaded, then its authentication is the sign-in.
        let mut session = Session::default();
        session.apply(started());
        session.apply(granted_to(7));
        assert_eq!(session.authenticated_at, Some(t(-5)));
        // A grant written before 1.1 named no sign-in: the start stands for it.
        let mut older = Session::default();
        older.apply(started());
        older.apply(SessionEvent::SessionGrantedToClient {
            client_id: Uuid::from_u128(7),
            scope: "openid".into(),
            at: t(0),
            authenticated_at: None,
        });
        assert_eq!(older.authenticated_at, Some(t(0)));
    }

    #[test]
    fn an_apps_session_refreshes_for_that_app_only() {
        let by = |client: Option<u128>| match refresh(0, 5, None, 0) {
            SessionCommand::Refresh {
                presented,
                presented_generation,
                next,
                at,
                idle_timeout,
                reuse_grace,
                ..
            } => SessionCommand::Refresh {
                presented,
                presented_generation,
                next,
                at,
                idle_timeout,
                reuse_grace,
                client_id: client.map(Uuid::from_u128),
            },
            other => other,
        };
        SessionTest::with(())
            .given(vec![started(), granted_to(7)])
            .when(by(Some(8)))
            .then_expect_error(SessionError::WrongClient);
        SessionTest::with(())
            .given(vec![started(), granted_to(7)])
            .when(by(None))
            .then_expect_error(SessionError::WrongClient);
        SessionTest::with(())
            .given(vec![started()])
            .when(by(Some(7)))
            .then_expect_error(SessionError::WrongClient);
        SessionTest::with(())
            .given(vec![started(), granted_to(7)])
            .when(by(Some(7)))
            .then_expect_events(vec![SessionEvent::TokenRefreshed {
                generation: 1,
                refresh_token_hash: h(9),
                at: t(5),
            }]);
    }
}
