//! The Platform aggregate: facts about the whole installation rather than one
//! account, session or organization. There is exactly one, under [`PLATFORM_ID`].
//!
//! It records the operator's lever against a leaked signing key or a breach (end
//! every session started before an instant, with one event instead of one per
//! session) and what the login path detected about abuse that targets no single
//! account (password spraying), so both reach the audit trail and NATS.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// The id of the one Platform aggregate. A UUID (the nil one) because every other
/// aggregate id is one, and tools that read the log may expect that shape.
pub const PLATFORM_ID: &str = "00000000-0000-0000-0000-000000000000";

/// How far past the moment of the command a cut-off may lie: the operator's clock
/// (or the one a script took "now" from) may run a little ahead of the server's.
/// Further ahead would end sessions that do not exist yet, which is a mistake.
pub const MAX_CUTOFF_AHEAD: Duration = Duration::seconds(60);

/// The kind of abuse detected; one variant for now, an enum so consumers can
/// match on the value published (`password_spraying`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuspiciousActivityKind {
    /// One password tried on many accounts from one client address.
    PasswordSpraying,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PlatformCommand {
    /// End every session of every user started before `before`.
    RevokeSessionsBefore {
        before: DateTime<Utc>,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    /// Record abuse the login path detected. Whether it is news (once per
    /// address and window) is decided by the detector, which sees every attempt.
    RecordSuspiciousActivity {
        kind: SuspiciousActivityKind,
        client_address_digest: String,
        accounts_count: u32,
        window_secs: u64,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PlatformEvent {
    /// Every session started before `before` has ended: its access tokens are
    /// refused and it cannot refresh. Who issued it is in the metadata (`actor`).
    SessionsRevokedBefore {
        before: DateTime<Utc>,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    /// Abuse aimed at no single account. `client_address_digest` is a keyed digest (HMAC-SHA256)
    /// of the client's address (never the address: it may be a person's, and
    /// this event cannot be erased); equal digests mean the same address.
    SuspiciousActivityDetected {
        kind: SuspiciousActivityKind,
        client_address_digest: String,
        accounts_count: u32,
        window_secs: u64,
        detected_at: DateTime<Utc>,
    },
}

impl PlatformEvent {
    pub const TYPES: &'static [&'static str] =
        &["SessionsRevokedBefore", "SuspiciousActivityDetected"];
}

impl DomainEvent for PlatformEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SessionsRevokedBefore { .. } => "SessionsRevokedBefore",
            Self::SuspiciousActivityDetected { .. } => "SuspiciousActivityDetected",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error("the cut-off lies in the future")]
    CutoffInFuture,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    /// Sessions started before this have ended; only ever moves forward.
    pub sessions_revoked_before: Option<DateTime<Utc>>,
}

impl Aggregate for Platform {
    const TYPE: &'static str = "platform";
    type Command = PlatformCommand;
    type Event = PlatformEvent;
    type Error = PlatformError;
    type Services = ();

    /// A cut-off at or before the one in force changes nothing (every session it
    /// names has already ended), so it is accepted without an event: repeating the
    /// lever, or two operators pulling it at once, is harmless and answers with
    /// the cut-off that holds.
    async fn handle(
        &mut self,
        command: PlatformCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), PlatformError> {
        let event = match command {
            PlatformCommand::RevokeSessionsBefore { before, reason, at } => {
                if before > at + MAX_CUTOFF_AHEAD {
                    return Err(PlatformError::CutoffInFuture);
                }
                if self.sessions_revoked_before.is_some_and(|c| before <= c) {
                    return Ok(());
                }
                PlatformEvent::SessionsRevokedBefore { before, reason, at }
            }
            PlatformCommand::RecordSuspiciousActivity {
                kind,
                client_address_digest,
                accounts_count,
                window_secs,
                at,
            } => PlatformEvent::SuspiciousActivityDetected {
                kind,
                client_address_digest,
                accounts_count,
                window_secs,
                detected_at: at,
            },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: PlatformEvent) {
        match event {
            PlatformEvent::SessionsRevokedBefore { before, .. } => {
                self.sessions_revoked_before = Some(before);
            }
            PlatformEvent::SuspiciousActivityDetected { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    type PlatformTest = TestFramework<Platform>;

    fn t(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minutes)
    }

    fn revoked(before: DateTime<Utc>, at: DateTime<Utc>) -> PlatformEvent {
        PlatformEvent::SessionsRevokedBefore {
            before,
            reason: None,
            at,
        }
    }

    fn revoke(before: DateTime<Utc>, at: DateTime<Utc>) -> PlatformCommand {
        PlatformCommand::RevokeSessionsBefore {
            before,
            reason: None,
            at,
        }
    }

    #[test]
    fn a_cut_off_now_or_in_the_past_is_recorded_with_its_reason() {
        PlatformTest::with(())
            .given_no_previous_events()
            .when(PlatformCommand::RevokeSessionsBefore {
                before: t(0),
                reason: Some("signing key leaked".into()),
                at: t(0),
            })
            .then_expect_events(vec![PlatformEvent::SessionsRevokedBefore {
                before: t(0),
                reason: Some("signing key leaked".into()),
                at: t(0),
            }]);
        PlatformTest::with(())
            .given_no_previous_events()
            .when(revoke(t(-600), t(0)))
            .then_expect_events(vec![revoked(t(-600), t(0))]);
    }

    #[test]
    fn a_cut_off_within_the_clock_skew_ahead_is_accepted_but_not_further() {
        PlatformTest::with(())
            .given_no_previous_events()
            .when(revoke(t(0) + MAX_CUTOFF_AHEAD, t(0)))
            .then_expect_events(vec![revoked(t(0) + MAX_CUTOFF_AHEAD, t(0))]);
        PlatformTest::with(())
            .given_no_previous_events()
            .when(revoke(t(0) + MAX_CUTOFF_AHEAD + Duration::seconds(1), t(0)))
            .then_expect_error(PlatformError::CutoffInFuture);
    }

    #[test]
    fn a_later_cut_off_supersedes_the_one_in_force() {
        PlatformTest::with(())
            .given(vec![revoked(t(0), t(0))])
            .when(revoke(t(5), t(5)))
            .then_expect_events(vec![revoked(t(5), t(5))]);
    }

    #[test]
    fn a_cut_off_at_or_before_the_one_in_force_changes_nothing() {
        PlatformTest::with(())
            .given(vec![revoked(t(5), t(5))])
            .when(revoke(t(1), t(6)))
            .then_expect_events(vec![]);
        PlatformTest::with(())
            .given(vec![revoked(t(5), t(5))])
            .when(revoke(t(5), t(6)))
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_cut_off_in_force_is_the_latest_and_detections_leave_it_alone() {
        let mut platform = Platform::default();
        platform.apply(revoked(t(0), t(0)));
        platform.apply(PlatformEvent::SuspiciousActivityDetected {
            kind: SuspiciousActivityKind::PasswordSpraying,
            client_address_digest: "ab".into(),
            accounts_count: 20,
            window_secs: 900,
            detected_at: t(1),
        });
        platform.apply(revoked(t(3), t(3)));
        assert_eq!(platform.sessions_revoked_before, Some(t(3)));
    }

    #[test]
    fn suspicious_activity_is_recorded_each_time_the_detector_reports_it() {
        let detected = |at| PlatformEvent::SuspiciousActivityDetected {
            kind: SuspiciousActivityKind::PasswordSpraying,
            client_address_digest: "ab".into(),
            accounts_count: 20,
            window_secs: 900,
            detected_at: at,
        };
        PlatformTest::with(())
            .given(vec![detected(t(0))])
            .when(PlatformCommand::RecordSuspiciousActivity {
                kind: SuspiciousActivityKind::PasswordSpraying,
                client_address_digest: "ab".into(),
                accounts_count: 20,
                window_secs: 900,
                at: t(16),
            })
            .then_expect_events(vec![detected(t(16))]);
    }

    #[test]
    fn the_kind_is_published_in_snake_case() {
        assert_eq!(
            serde_json::to_value(SuspiciousActivityKind::PasswordSpraying).unwrap(),
            "password_spraying"
        );
    }
}
