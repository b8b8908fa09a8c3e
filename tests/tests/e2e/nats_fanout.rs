//! Integration events on NATS JetStream: complete, ordered, de-duplicated, secret-free,
//! and delivered even when NATS or the server went away in between. On both back
//! ends, with NATS on (the relay does not depend on the storage).

use std::collections::HashMap;
use std::time::Duration;

use keyledger_e2e::*;
use reqwest::StatusCode;
use serde_json::Value;

/// Every `(aggregate_type, aggregate_id, sequence)` in the event store, in feed order.
async fn stored_events(app: &TestApp) -> Vec<(String, String, i64, String)> {
    app.stored_events()
        .await
        .into_iter()
        .map(|e| (e.aggregate_type, e.aggregate_id, e.sequence, e.event_type))
        .collect()
}

/// Checks the published messages against the event store: same events, each once,
/// in order per aggregate, with the id in the header, and nothing secret.
fn assert_matches_store(
    published: &[(String, Option<String>, Value)],
    stored: &[(String, String, i64, String)],
    prefix: &str,
    secrets: &[&str],
) {
    assert_eq!(published.len(), stored.len(), "published {published:#?}");
    let mut last_sequence: HashMap<(String, String), i64> = HashMap::new();
    for (subject, msg_id, event) in published {
        let aggregate_type = event["aggregate_type"].as_str().unwrap();
        let event_type = event["event_type"].as_str().unwrap();
        assert_eq!(subject, &format!("{prefix}.{aggregate_type}.{event_type}"));
        assert_eq!(msg_id.as_deref(), event["event_id"].as_str());
        for field in [
            "occurred_at",
            "schema_version",
            "data",
            "aggregate_id",
            "sequence",
        ] {
            assert!(!event[field].is_null(), "{field} missing in {event}");
        }
        let key = (
            aggregate_type.to_owned(),
            event["aggregate_id"].as_str().unwrap().to_owned(),
        );
        let sequence = event["sequence"].as_i64().unwrap();
        let previous = last_sequence.insert(key, sequence).unwrap_or(0);
        assert_eq!(sequence, previous + 1, "out of order or missing: {event}");
        let text = event.to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }
    let mut published_keys: Vec<_> = published
        .iter()
        .map(|(_, _, e)| {
            (
                e["aggregate_type"].as_str().unwrap().to_owned(),
                e["aggregate_id"].as_str().unwrap().to_owned(),
                e["sequence"].as_i64().unwrap(),
                e["event_type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut stored = stored.to_vec();
    published_keys.sort();
    stored.sort();
    assert_eq!(published_keys, stored);
}

e2e! { async fn every_event_is_published_in_order_with_its_id_and_no_secret(backend) {
    let app = spawn_app_with_nats(backend).await;
    let refresh_tokens = app.session_journey().await;

    let stored = stored_events(&app).await;
    let published = app.published(stored.len(), Duration::from_secs(10)).await;
    let hashes = refresh_tokens.each_ref().map(|token| refresh_token_hash(token));
    let secrets = [
        PASSWORD,
        refresh_tokens[0].as_str(),
        refresh_tokens[1].as_str(),
        hashes[0].as_str(),
        hashes[1].as_str(),
        "argon2",
        "password_hash",
        "refresh_token_hash",
    ];
    assert_matches_store(&published, &stored, &app.resources.subject_prefix, &secrets);
    let types: Vec<&str> = published
        .iter()
        .map(|(_, _, e)| e["event_type"].as_str().unwrap())
        .collect();
    for expected in SESSION_JOURNEY_EVENTS {
        assert!(types.contains(&expected), "{expected} not published");
    }
}}

e2e! { async fn the_relay_catches_up_after_a_nats_outage(backend) {
    let mut nats = OwnNatsServer::start();
    let app = spawn_app_on_with(backend, |s| s.nats.url = Some(nats.url())).await;
    let (_, tokens) = app.signed_in_user().await;
    let first = app.published(3, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 3, "registration and login were not published");

    nats.kill();
    // The API keeps working while NATS is down.
    let refreshed = app.tokens(app.refresh(&tokens.refresh_token).await).await;
    assert_eq!(
        app.logout(&refreshed.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    let (_, other) = app.signed_in_user().await;
    assert_eq!(app.me(&other.access_token).await.status(), StatusCode::OK);

    nats.resume();
    let stored = stored_events(&app).await;
    let published = app.published(stored.len() + 1, Duration::from_secs(15)).await;
    assert_matches_store(
        &published,
        &stored,
        &app.resources.subject_prefix,
        &[PASSWORD],
    );
}}

e2e! { async fn nothing_is_lost_when_the_server_dies_between_commit_and_publish(backend) {
    let mut nats = OwnNatsServer::start();
    nats.kill();
    let resources = TestResources::on(backend);
    let mut settings = resources.settings();
    settings.nats.url = Some(nats.url());

    // Commits happen, publishing cannot; then the process goes away.
    let mut first = start(resources.clone(), settings.clone(), true).await;
    let (email, _) = first.signed_in_user().await;
    first.login(&email, PASSWORD).await;
    let stored = stored_events(&first).await;
    first.stop().await;

    nats.resume();
    let mut second = start(resources.clone(), settings.clone(), false).await;
    let published = second
        .published(stored.len() + 1, Duration::from_secs(15))
        .await;
    assert_matches_store(&published, &stored, &resources.subject_prefix, &[PASSWORD]);
    second.stop().await;

    // A third start republishes nothing: the checkpoint moved, and ids de-duplicate.
    let third = start(resources.clone(), settings, false).await;
    third.signed_in_user().await;
    let total = stored_events(&third).await.len();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(&resources.stream).await.unwrap();
    let mut messages = 0;
    for _ in 0..100 {
        messages = stream.info().await.unwrap().state.messages;
        if messages as usize >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(messages as usize, total);
    drop(third);
    drop(second);
    drop(first);
}}
