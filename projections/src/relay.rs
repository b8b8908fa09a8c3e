//! The outbox relay: every event, as an integration event, to NATS JetStream.
//!
//! Guarantee: at least once, in feed order (so in order per aggregate). The node's
//! feed reader hands it the events after its checkpoint; it publishes each with
//! `Nats-Msg-Id` = event id and waits for JetStream's acknowledgements, and only
//! then may its checkpoint move (stored with the read models' next transaction, or
//! on its own within a second). If NATS is down the API keeps working; the relay
//! retries with backoff and catches up from its checkpoint, and if the process dies
//! between a commit and a publish, the next start publishes it. A publish that was stored but
//! whose ack was lost is sent again with the same id, and JetStream's duplicate
//! window drops it; consumers should still de-duplicate on `event_id` for outages
//! longer than that window.
//!
//! After each event that changes someone's effective permissions the relay also
//! publishes the derived `EffectivePermissionsChanged` (one per organization; see
//! `docs/events.md`), computed with the same [`AccessModel`] the access view uses,
//! standing exactly at the relay's checkpoint.

use std::time::Duration;

use async_nats::jetstream::{self, context::Context, message::PublishMessage, stream};
use bytes::Bytes;

use crate::access::{fold_until_head, AccessModel};
use crate::feed::{EventFeed, FeedError, Position, StoredEvent};
use crate::follower::{AtLeastOnce, Step};
use crate::integration::IntegrationEvent;

/// Where integration events go; the defaults are the platform contract, tests
/// override them to stay apart.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub stream: String,
    pub subject_prefix: String,
    pub duplicate_window: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            stream: "AUTH_EVENTS".into(),
            subject_prefix: "auth.events".into(),
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl RelaySettings {
    /// The checkpoint is per stream, so pointing the relay at a new stream
    /// republishes history into it.
    fn checkpoint_name(&self) -> String {
        format!("nats_relay:{}", self.stream)
    }
}

/// The relay as an [`AtLeastOnce`] follower of the node's feed reader. It keeps
/// its checkpoint in the read store, whichever back end that is; nothing else
/// about it depends on storage.
pub struct NatsRelay {
    js: Context,
    settings: RelaySettings,
    stream_ready: bool,
    /// The access model standing exactly at the last delivered event.
    access: AccessModel,
}

impl NatsRelay {
    pub fn new(client: async_nats::Client, settings: RelaySettings) -> Self {
        Self {
            js: jetstream::new(client),
            settings,
            stream_ready: false,
            access: AccessModel::default(),
        }
    }
}

impl AtLeastOnce for NatsRelay {
    fn name(&self) -> String {
        self.settings.checkpoint_name()
    }

    fn resume<'a>(&'a mut self, feed: &'a EventFeed, position: Position) -> Step<'a> {
        Box::pin(async move {
            if !self.stream_ready {
                ensure_stream(&self.js, &self.settings).await?;
                self.stream_ready = true;
            }
            // Whose permissions an event changes depends on the state before it:
            // the model must stand exactly at the checkpoint.
            let model = std::sync::RwLock::new(AccessModel::default());
            let at = fold_until_head(&model, feed, Position::START, Some(position)).await?;
            if at != position {
                // The checkpoint names an event the feed no longer returns.
                return Err(FeedError::Corrupt {
                    position,
                    reason: "relay checkpoint is not an event of the log".into(),
                });
            }
            self.access = model.into_inner().unwrap_or_else(|p| p.into_inner());
            Ok(())
        })
    }

    fn deliver<'a>(&'a mut self, events: &'a [StoredEvent]) -> Step<'a> {
        Box::pin(async move {
            let result = self.publish_all(events).await;
            if result.is_err() {
                // The model moved past events whose publishing failed; it is
                // folded again from the checkpoint on resuming.
                self.stream_ready = false;
            }
            result
        })
    }

    fn behind(&self, events: i64) {
        metrics::gauge!("keyledger_relay_lag_events").set(events as f64);
    }

    fn failed(&self, error: &FeedError) {
        tracing::warn!(error = %error, "NATS relay is behind; retrying");
        metrics::counter!("keyledger_relay_errors_total").increment(1);
    }
}

impl NatsRelay {
    /// Pipelines the batch, then takes the acks in order.
    async fn publish_all(&mut self, events: &[StoredEvent]) -> Result<(), FeedError> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let integration = IntegrationEvent::from_stored(event)?;
            let derived: Vec<IntegrationEvent> = self
                .access
                .apply(event)?
                .iter()
                .map(|change| change.to_integration(&integration))
                .collect();
            for message in std::iter::once(&integration).chain(&derived) {
                acks.push(publish(&self.js, &self.settings, message).await?);
            }
        }
        for ack in acks {
            ack.await.map_err(|e| FeedError::Nats(e.to_string()))?;
        }
        metrics::counter!("keyledger_relay_published_total").increment(events.len() as u64);
        Ok(())
    }
}

async fn ensure_stream(js: &Context, settings: &RelaySettings) -> Result<(), FeedError> {
    js.get_or_create_stream(stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.>", settings.subject_prefix)],
        duplicate_window: settings.duplicate_window,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| FeedError::Nats(e.to_string()))?;
    Ok(())
}

/// Sends one integration event; the returned future resolves with JetStream's ack.
async fn publish(
    js: &Context,
    settings: &RelaySettings,
    event: &IntegrationEvent,
) -> Result<async_nats::jetstream::context::PublishAckFuture, FeedError> {
    let body = serde_json::to_vec(event).map_err(|e| FeedError::Nats(e.to_string()))?;
    let message = PublishMessage::build()
        .payload(Bytes::from(body))
        .message_id(event.event_id.to_string());
    js.send_publish(event.subject(&settings.subject_prefix), message)
        .await
        .map_err(|e| FeedError::Nats(e.to_string()))
}
