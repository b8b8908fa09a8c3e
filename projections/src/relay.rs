//! The outbox relay: every event, as an integration event, to NATS JetStream.
//!
//! Guarantee: at least once, in feed order (so in order per aggregate). The relay
//! reads the feed from its checkpoint, publishes each event with `Nats-Msg-Id` =
//! event id and waits for JetStream's acknowledgements, and only then moves its
//! checkpoint. If NATS is down the API keeps working; the relay retries with
//! backoff and catches up from its checkpoint, and if the process dies between a
//! commit and a publish, the next start publishes it. A publish that was stored but
//! whose ack was lost is sent again with the same id, and JetStream's duplicate
//! window drops it; consumers should still de-duplicate on `event_id` for outages
//! longer than that window.
//!
//! After each event that changes someone's effective permissions the relay also
//! publishes the derived `EffectivePermissionsChanged` (one per organization; see
//! `docs/events.md`), computed with the same [`AccessModel`] the access view uses,
//! standing exactly at the relay's checkpoint.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::Context, message::PublishMessage, stream};
use bytes::Bytes;
use keyledger_domain::DataKeyWrapping;
use tokio::task::JoinHandle;

use crate::access::{fold_until_head, AccessModel};
use crate::feed::{EventFeed, FeedError, FeedSignal, Position};
use crate::integration::IntegrationEvent;
use crate::personal::PersonalDataOpener;
use crate::runner::{LeaderFlag, Leadership};
use crate::store::ReadStore;

const BATCH: i64 = 256;

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

/// Runs the relay until aborted. It keeps its checkpoint in `store`, whichever
/// back end that is; nothing else about it depends on storage.
pub struct NatsRelay;

impl NatsRelay {
    /// `wrapping` unwraps the data keys that open personal fields. `leader`
    /// reports whether this process is the one publishing (several nodes).
    pub fn spawn(
        store: ReadStore,
        wrapping: Arc<DataKeyWrapping>,
        client: async_nats::Client,
        signal: FeedSignal,
        settings: RelaySettings,
        leader: LeaderFlag,
    ) -> JoinHandle<()> {
        let js = jetstream::new(client);
        tokio::spawn(run(store, wrapping, js, signal, settings, leader))
    }
}

async fn run(
    store: ReadStore,
    wrapping: Arc<DataKeyWrapping>,
    js: Context,
    mut signal: FeedSignal,
    settings: RelaySettings,
    leader: LeaderFlag,
) {
    let feed = EventFeed::new(store.clone());
    let mut leadership = Leadership::new(&settings.checkpoint_name(), leader);
    let mut stream_ready = false;
    let mut lag_measured = None;
    let mut access: Option<(AccessModel, Position)> = None;
    let mut opener = PersonalDataOpener::new(&store, wrapping);
    let mut backoff = Duration::from_millis(200);
    loop {
        if !leadership.held(&store).await {
            signal.wait().await;
            continue;
        }
        let result = async {
            if !stream_ready {
                ensure_stream(&js, &settings).await?;
                stream_ready = true;
            }
            let state = RelayState {
                lag_measured: &mut lag_measured,
                access: &mut access,
                opener: &mut opener,
            };
            publish_pending(&store, &feed, &js, &settings, state).await
        }
        .await;
        match result {
            Ok(()) => {
                backoff = Duration::from_millis(200);
                signal.wait().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "NATS relay is behind; retrying");
                metrics::counter!("keyledger_relay_errors_total").increment(1);
                stream_ready = false;
                access = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
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

/// What the relay keeps between wake-ups.
struct RelayState<'a> {
    lag_measured: &'a mut Option<std::time::Instant>,
    access: &'a mut Option<(AccessModel, Position)>,
    /// Integration events carry personal fields opened (or `[erased]`).
    opener: &'a mut PersonalDataOpener,
}

async fn publish_pending(
    store: &ReadStore,
    feed: &EventFeed,
    js: &Context,
    settings: &RelaySettings,
    state: RelayState<'_>,
) -> Result<(), FeedError> {
    let RelayState {
        lag_measured,
        access,
        opener,
    } = state;
    let name = settings.checkpoint_name();
    let mut position = store.checkpoint(&name).await?;
    // Whose permissions an event changes depends on the state before it: the
    // model must stand exactly at the checkpoint (it does not after a failed batch
    // or while another node led).
    if access.as_ref().is_none_or(|(_, at)| *at != position) {
        let model = std::sync::RwLock::new(AccessModel::default());
        let at = fold_until_head(&model, feed, Position::START, Some(position)).await?;
        if at != position {
            // The checkpoint names an event the feed no longer returns.
            return Err(FeedError::Corrupt {
                position,
                reason: "relay checkpoint is not an event of the log".into(),
            });
        }
        *access = Some((model.into_inner().unwrap_or_else(|p| p.into_inner()), at));
    }
    let Some((model, model_at)) = access.as_mut() else {
        unreachable!("set above");
    };
    loop {
        let mut batch = feed.read_after(position, BATCH).await?;
        if batch.is_empty() {
            record_lag(feed, position, lag_measured).await;
            return Ok(());
        }
        opener.open(&mut batch).await?;
        // Pipeline the batch, then take the acks in order.
        let mut acks = Vec::with_capacity(batch.len());
        for event in &batch {
            let integration = IntegrationEvent::from_stored(event)?;
            let derived: Vec<IntegrationEvent> = model
                .apply(event)?
                .iter()
                .map(|change| change.to_integration(&integration))
                .collect();
            *model_at = event.position;
            for message in std::iter::once(&integration).chain(&derived) {
                let ack = publish(js, settings, message).await?;
                acks.push((event.position, ack));
            }
        }
        for (event_position, ack) in acks {
            ack.await.map_err(|e| FeedError::Nats(e.to_string()))?;
            position = event_position;
        }
        store.save_checkpoint(&name, position).await?;
        metrics::counter!("keyledger_relay_published_total").increment(batch.len() as u64);
        if (batch.len() as i64) < BATCH {
            record_lag(feed, position, lag_measured).await;
            return Ok(());
        }
    }
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

/// Updates the lag gauge, at most once a second (it costs a query).
async fn record_lag(feed: &EventFeed, position: Position, last: &mut Option<std::time::Instant>) {
    if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
        return;
    }
    *last = Some(std::time::Instant::now());
    if let Ok(head) = feed.head().await {
        let lag = (head.global_position - position.global_position).max(0);
        metrics::gauge!("keyledger_relay_lag_events").set(lag as f64);
    }
}
