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

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::feed::{EventFeed, FeedError, Position, StoredEvent};
use crate::follower::InMemory;

const ENDING_EVENTS: &[&str] = &["SessionRevoked", "UserLoggedOut"];

#[derive(Clone)]
pub struct RevokedSessions {
    ended: Arc<RwLock<HashMap<Uuid, DateTime<Utc>>>>,
    retention: chrono::Duration,
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
        }
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
}
