//! Recently ended sessions, in memory, for token validation without a query.
//!
//! An access token is valid until it expires unless its session has ended. Only
//! sessions that ended within one access-token lifetime can still have live tokens,
//! so the set is small and bounded by time: older entries are dropped. Every node
//! follows the feed from "now minus one token lifetime" at start-up.
//!
//! Guarantee: checkpointed in memory, rebuilt at start from the event log. The
//! write side also inserts an ending directly after committing it, so a logout is
//! visible to validation on this node before the response is sent (the feed then
//! delivers the same fact again, which is harmless: inserting is idempotent).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::feed::{EventFeed, FeedSignal};

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

    /// Loads the recent endings, then follows the feed. Returns once the initial
    /// load is done, so a node never validates before it knows recent revocations.
    pub async fn start(
        &self,
        feed: EventFeed,
        mut signal: FeedSignal,
    ) -> Result<JoinHandle<()>, crate::feed::FeedError> {
        let mut position = feed.position_before(Utc::now() - self.retention).await?;
        position = self.follow(&feed, position).await?;
        let view = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                signal.wait().await;
                match view.follow(&feed, position).await {
                    Ok(p) => position = p,
                    Err(e) => {
                        tracing::warn!(error = %e, "revocation view cannot read the feed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                view.prune(Utc::now());
            }
        }))
    }

    async fn follow(
        &self,
        feed: &EventFeed,
        mut position: crate::feed::Position,
    ) -> Result<crate::feed::Position, crate::feed::FeedError> {
        loop {
            // Unfiltered (a filtered read could not advance past the many events
            // that are not endings), but headers only: no payloads.
            let batch = feed.read_headers_after(position, 1000).await?;
            for event in &batch {
                if event.aggregate_type == "session"
                    && ENDING_EVENTS.contains(&event.event_type.as_str())
                {
                    if let Ok(id) = event.aggregate_id.parse() {
                        self.insert(id, event.occurred_at);
                    }
                }
                position = event.position;
            }
            if batch.len() < 1000 {
                return Ok(position);
            }
        }
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
