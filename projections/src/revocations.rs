//! Recently ended sessions, in memory, for token validation without a query.
//!
//! An access token is valid until it expires unless its session has ended. Only
//! sessions that ended within one access-token lifetime can still have live tokens,
//! so the set is small and bounded by time: older entries are dropped. Every node
//! follows the feed from "now minus one token lifetime" at start-up.
//!
//! Guarantee: in memory ([`InMemory`]), rebuilt at start from the event log. The
//! write side also inserts an ending directly after committing it, so a logout is
//! visible to validation on this node before the response is sent (the feed then
//! delivers the same fact again, which is harmless: inserting is idempotent).
//!
//! It also keeps the platform's session cut-off (`SessionsRevokedBefore`): every
//! session started before it has ended, with one event for all of them. Only the
//! latest cut-off matters and it may be older than any window, so it is read from
//! the log at start-up whatever its age, then followed like the endings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::feed::{EventFeed, FeedError, Position, StoredEvent};
use crate::follower::InMemory;
use crate::integration::DomainPayload;

const ENDING_EVENTS: &[&str] = &["SessionRevoked", "UserLoggedOut"];

const PLATFORM: &str = "platform";
const CUTOFF_EVENT: &str = "SessionsRevokedBefore";

/// No cut-off: no session started before the earliest representable instant.
const NO_CUTOFF: i64 = i64::MIN;

/// The platform's session cut-off in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCutoff {
    /// Sessions started before this have ended.
    pub before: DateTime<Utc>,
    /// When the cut-off was recorded (when those sessions ended).
    pub at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct RevokedSessions {
    ended: Arc<RwLock<HashMap<Uuid, DateTime<Utc>>>>,
    retention: chrono::Duration,
    /// The cut-off's `before` in microseconds since 1970 ([`NO_CUTOFF`]: none),
    /// so the hot path compares with one atomic load and no lock.
    cutoff_micros: Arc<AtomicI64>,
    cutoff: Arc<RwLock<Option<SessionCutoff>>>,
}

impl RevokedSessions {
    /// `token_lifetime`: how long an access token lives; entries are kept a minute
    /// longer to cover clock differences.
    pub fn new(token_lifetime: Duration) -> Self {
        let retention = chrono::Duration::from_std(token_lifetime)
            .unwrap_or(chrono::Duration::hours(1))
            + chrono::Duration::minutes(1);
        Self {
            ended: Arc::new(RwLock::new(HashMap::new())),
            retention,
            cutoff_micros: Arc::new(AtomicI64::new(NO_CUTOFF)),
            cutoff: Arc::new(RwLock::new(None)),
        }
    }

    /// Whether a session started at `started_at` was ended by the cut-off.
    pub fn is_cut_off(&self, started_at: DateTime<Utc>) -> bool {
        started_at.timestamp_micros() < self.cutoff_micros.load(Ordering::Acquire)
    }

    /// The cut-off in force, if any.
    pub fn cutoff(&self) -> Option<SessionCutoff> {
        *self.cutoff.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `cutoff` if it is later than the one in force (cut-offs only move
    /// forward, and the feed may deliver one the write side already inserted).
    pub fn raise_cutoff(&self, cutoff: SessionCutoff) {
        let mut current = self.cutoff.write().unwrap_or_else(|p| p.into_inner());
        if current.is_some_and(|c| c.before >= cutoff.before) {
            return;
        }
        *current = Some(cutoff);
        self.cutoff_micros
            .store(cutoff.before.timestamp_micros(), Ordering::Release);
    }

    /// Reads the latest cut-off from the log.
    async fn load_cutoff(&self, feed: &EventFeed) -> Result<(), FeedError> {
        let latest = feed
            .latest_of(
                PLATFORM,
                keyledger_domain::platform::PLATFORM_ID,
                CUTOFF_EVENT,
            )
            .await?;
        match latest {
            Some(event) => self.take_cutoff(&event),
            None => Ok(()),
        }
    }

    /// Takes the cut-off a `SessionsRevokedBefore` event records.
    fn take_cutoff(&self, event: &StoredEvent) -> Result<(), FeedError> {
        if let DomainPayload::Platform(
            keyledger_domain::platform::PlatformEvent::SessionsRevokedBefore { before, at, .. },
        ) = DomainPayload::decode(event)?
        {
            self.raise_cutoff(SessionCutoff { before, at });
        }
        Ok(())
    }

    pub fn is_revoked(&self, session_id: &Uuid) -> bool {
        self.ended
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(session_id)
    }

    pub fn insert(&self, session_id: Uuid, ended_at: DateTime<Utc>) {
        self.ended
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(session_id)
            .or_insert(ended_at);
    }

    pub fn len(&self) -> usize {
        self.ended.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn prune(&self, now: DateTime<Utc>) {
        let horizon = now - self.retention;
        self.ended
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, ended| *ended > horizon);
    }

    /// Loads the recent endings and returns the follower that keeps the set up
    /// to date on the node's feed reader. A node never validates before it knows
    /// recent revocations: the caller awaits this before serving.
    pub async fn load(&self, feed: &EventFeed) -> Result<RevocationFollower, FeedError> {
        let mut position = feed.position_before(Utc::now() - self.retention).await?;
        self.load_cutoff(feed).await?;
        loop {
            // Unfiltered (a filtered read could not advance past the many events
            // that are not endings), but headers only: no payloads.
            let batch = feed.read_headers_after(position, 1000).await?;
            for event in &batch {
                self.note(
                    &event.aggregate_type,
                    &event.event_type,
                    &event.aggregate_id,
                    event.occurred_at,
                );
                if is_cutoff(&event.aggregate_type, &event.event_type) {
                    // Rare: the payload is read only for these.
                    self.load_cutoff(feed).await?;
                }
                position = event.position;
            }
            if batch.len() < 1000 {
                break;
            }
        }
        Ok(RevocationFollower {
            view: self.clone(),
            position,
        })
    }

    fn note(&self, aggregate_type: &str, event_type: &str, aggregate_id: &str, at: DateTime<Utc>) {
        if aggregate_type == "session" && ENDING_EVENTS.contains(&event_type) {
            if let Ok(id) = aggregate_id.parse() {
                self.insert(id, at);
            }
        }
    }
}

fn is_cutoff(aggregate_type: &str, event_type: &str) -> bool {
    aggregate_type == PLATFORM && event_type == CUTOFF_EVENT
}

/// Keeps [`RevokedSessions`] up to date: an [`InMemory`] follower.
pub struct RevocationFollower {
    view: RevokedSessions,
    position: Position,
}

impl InMemory for RevocationFollower {
    fn position(&self) -> Position {
        self.position
    }

    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), FeedError> {
        for event in events {
            self.view.note(
                &event.aggregate_type,
                &event.event_type,
                &event.aggregate_id,
                event.occurred_at(),
            );
            if is_cutoff(&event.aggregate_type, &event.event_type) {
                self.view.take_cutoff(event)?;
            }
            self.position = event.position;
        }
        self.view.prune(Utc::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endings_older_than_a_token_lifetime_are_forgotten() {
        let view = RevokedSessions::new(Duration::from_secs(900));
        let now = Utc::now();
        let (old, recent) = (Uuid::new_v4(), Uuid::new_v4());
        view.insert(old, now - chrono::Duration::minutes(17));
        view.insert(recent, now - chrono::Duration::minutes(1));
        view.prune(now);
        assert!(!view.is_revoked(&old));
        assert!(view.is_revoked(&recent));
    }

    #[test]
    fn the_cut_off_ends_sessions_started_before_it_and_only_moves_forward() {
        let view = RevokedSessions::new(Duration::from_secs(900));
        let now = Utc::now();
        let minutes = chrono::Duration::minutes;
        assert!(!view.is_cut_off(now - minutes(10_000)));
        view.raise_cutoff(SessionCutoff {
            before: now,
            at: now,
        });
        assert!(view.is_cut_off(now - minutes(1)));
        assert!(!view.is_cut_off(now));
        view.raise_cutoff(SessionCutoff {
            before: now - minutes(5),
            at: now + minutes(1),
        });
        assert_eq!(view.cutoff().map(|c| c.before), Some(now));
        view.raise_cutoff(SessionCutoff {
            before: now + minutes(5),
            at: now + minutes(5),
        });
        assert!(view.is_cut_off(now + minutes(1)));
    }
}
