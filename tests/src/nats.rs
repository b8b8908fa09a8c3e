//! Reading what the relay published.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use serde_json::Value;

/// Reads every message of `stream` until `count` have arrived (or `within` ran
/// out), returning `(subject, headers' Nats-Msg-Id, JSON body)` in stream order.
pub async fn read_stream(
    nats_url: &str,
    stream: &str,
    count: usize,
    within: Duration,
) -> Vec<(String, Option<String>, Value)> {
    let client = async_nats::connect(nats_url).await.expect("nats");
    let js = jetstream::new(client);
    let deadline = tokio::time::Instant::now() + within;
    let stream = loop {
        match js.get_stream(stream).await {
            Ok(s) => break s,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("stream {stream} never appeared: {e}"),
        }
    };
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::new();
    while out.len() < count {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, messages.next()).await {
            Ok(Some(Ok(m))) => {
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.to_string());
                let body: Value = serde_json::from_slice(&m.payload).expect("JSON payload");
                out.push((m.subject.to_string(), id, body));
            }
            Ok(Some(Err(_))) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    out
}
