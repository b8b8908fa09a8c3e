//! `keyledger-replay export`: the audit trail and the public events, as JSON lines
//! and CSV, with time filters, run as library calls against a live server's
//! database; never a secret in the output.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_e2e::*;
use keyledger_replay_tools::export::{AUDIT_COLUMNS, EVENT_COLUMNS};
use keyledger_replay_tools::{export, ExportFormat, ExportOptions, ExportSource};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// An organization with a service account; returns the client secret.
async fn service_account(app: &TestApp) -> String {
    let (_, token) = app.new_user().await;
    let org = app.new_organization(&token).await;
    let (_, secret) = app
        .new_service_account(&token, &org, "exporter", json!(["member"]))
        .await;
    secret
}

async fn run(app: &TestApp, options: ExportOptions) -> (u64, String) {
    let log = app.replay_log().await;
    // The server's wrapping key opens the data keys, as the operator gives it.
    let options = ExportOptions {
        data_key_wrapping: Some(app.state.data_key_wrapping.clone()),
        ..options
    };
    let mut out = Vec::new();
    let report = export(&log, &options, &mut out).await.unwrap();
    (report.rows, String::from_utf8(out).expect("utf-8"))
}

fn options(source: ExportSource, format: ExportFormat) -> ExportOptions {
    ExportOptions {
        source,
        format,
        ..ExportOptions::default()
    }
}

/// Parses an export back into JSON objects, whatever its format.
fn parse(format: ExportFormat, source: ExportSource, text: &str) -> Vec<Value> {
    match format {
        ExportFormat::JsonLines => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect(),
        ExportFormat::Csv => {
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let header: Vec<String> = reader
                .headers()
                .unwrap()
                .iter()
                .map(str::to_owned)
                .collect();
            let expected: &[&str] = match source {
                ExportSource::AuditTrail => &AUDIT_COLUMNS,
                ExportSource::Events => &EVENT_COLUMNS,
            };
            assert_eq!(header, expected);
            reader
                .records()
                .map(|r| {
                    let r = r.expect("a well-formed record");
                    assert_eq!(r.len(), header.len());
                    let mut object = serde_json::Map::new();
                    for (name, field) in header.iter().zip(r.iter()) {
                        let value = if ["details", "data", "metadata"].contains(&name.as_str()) {
                            serde_json::from_str(field).expect("nested JSON is a JSON string")
                        } else {
                            Value::String(field.to_owned())
                        };
                        object.insert(name.clone(), value);
                    }
                    Value::Object(object)
                })
                .collect()
        }
    }
}

async fn count(app: &TestApp, sql: &str) -> u64 {
    app.db().scalar::<i64>(sql, &[]).await as u64
}

e2e! { async fn both_sources_in_both_formats_hold_every_row_and_no_secret(backend) {
    let app = spawn_app_on(backend).await;
    let mut tokens = app.session_journey().await.to_vec();
    tokens.extend(app.session_journey().await);
    let secret = service_account(&app).await;
    app.read_models_caught_up().await;

    // Every secret and hash the store holds, in the forms they are stored in.
    let mut forbidden: Vec<String> = vec![PASSWORD.into(), secret.clone()];
    for token in &tokens {
        forbidden.push(refresh_token_hash(token));
        forbidden.push(token.clone());
    }
    forbidden.push(hex::encode(Sha256::digest(secret.as_bytes())));
    let stored: Vec<String> = app
        .db()
        .scalars(
            (
                "SELECT payload::text FROM events",
                "SELECT payload FROM events",
            ),
            &[],
        )
        .await;
    // The password hashes are in the store (sealed): the check below means
    // something.
    let password_hashes = stored_password_hashes(&stored);
    assert!(!password_hashes.is_empty(), "the check below means something");
    assert!(password_hashes.iter().all(|h| h.starts_with("sealed:v1:")));
    let stored = stored.join("\n");
    for hash in &forbidden[2..] {
        if hash.len() == 64 {
            assert!(
                stored.contains(hash.as_str()),
                "stored hashes: the check below means something"
            );
        }
    }

    let audit_rows = count(&app, "SELECT count(*) FROM audit_trail").await;
    let event_rows = count(&app, "SELECT count(*) FROM events").await;
    assert_eq!(audit_rows, event_rows);
    for source in [ExportSource::AuditTrail, ExportSource::Events] {
        for format in [ExportFormat::JsonLines, ExportFormat::Csv] {
            let (rows, text) = run(&app, options(source, format)).await;
            let expected = match source {
                ExportSource::AuditTrail => audit_rows,
                ExportSource::Events => event_rows,
            };
            assert_eq!(rows, expected, "{source:?} {format:?}");
            let parsed = parse(format, source, &text);
            assert_eq!(parsed.len() as u64, expected, "{source:?} {format:?}");

            let lower = text.to_lowercase();
            for word in [
                "argon2",
                "password_hash",
                "refresh_token_hash",
                "secret_hash",
            ] {
                assert!(!lower.contains(word), "{word} in {source:?} {format:?}");
            }
            for secret in forbidden.iter().chain(&password_hashes) {
                assert!(
                    !text.contains(secret.as_str()),
                    "a secret in {source:?} {format:?}"
                );
                assert!(!lower.contains(&secret.to_lowercase()));
            }

            let types: Vec<&str> = parsed
                .iter()
                .map(|row| {
                    row.get("action")
                        .or_else(|| row.get("event_type"))
                        .and_then(Value::as_str)
                        .unwrap()
                })
                .collect();
            for t in SESSION_JOURNEY_EVENTS
                .iter()
                .chain(&["ServiceAccountCreated"])
            {
                assert!(types.contains(t), "{t} missing from {source:?} {format:?}");
            }
            let first = &parsed[0];
            match source {
                ExportSource::AuditTrail => {
                    assert_eq!(first["action"], "UserRegistered");
                    assert!(first["details"]["email"].is_string(), "{first}");
                    assert!(first["details"].get("password_hash").is_none());
                }
                ExportSource::Events => {
                    assert_eq!(first["event_type"], "UserRegistered");
                    assert!(first["data"]["email"].is_string(), "{first}");
                    assert!(first["metadata"]["ip"].is_string(), "{first}");
                    assert!(first["recorded_at"].is_string(), "{first}");
                    assert!(!first["global_position"].is_null(), "{first}");
                    // Feed order.
                    let positions: Vec<(i64, i64)> = parsed
                        .iter()
                        .map(|e| (number(&e["tx_id"]), number(&e["global_position"])))
                        .collect();
                    let mut sorted = positions.clone();
                    sorted.sort_unstable();
                    assert_eq!(positions, sorted);
                }
            }
        }
    }
}}

/// When every row of `source` happened, in microseconds since the epoch (what
/// both back ends keep): the audit trail's `occurred_at`, the events'
/// `recorded_at` (an INTEGER of microseconds on SQLite).
async fn times_micros(app: &TestApp, source: ExportSource) -> Vec<i64> {
    match source {
        ExportSource::AuditTrail => app
            .audit_rows()
            .await
            .into_iter()
            .map(|row| row.occurred_at.timestamp_micros())
            .collect(),
        ExportSource::Events => {
            app.db()
                .scalars(
                    (
                        "SELECT (extract(epoch FROM recorded_at) * 1000000)::bigint FROM events",
                        "SELECT recorded_at FROM events",
                    ),
                    &[],
                )
                .await
        }
    }
}

fn number(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .expect("a number")
}

e2e! { async fn time_filters_split_the_export(backend) {
    let app = spawn_app_on(backend).await;
    app.session_journey().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let middle: DateTime<Utc> = Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.session_journey().await;
    app.read_models_caught_up().await;

    for (source, table) in [
        (ExportSource::AuditTrail, "audit_trail"),
        (ExportSource::Events, "events"),
    ] {
        let total = count(&app, &format!("SELECT count(*) FROM {table}")).await;
        let later = times_micros(&app, source)
            .await
            .into_iter()
            .filter(|t| *t >= middle.timestamp_micros())
            .count() as i64;
        assert!(later > 0 && (later as u64) < total, "{later} of {total}");
        for format in [ExportFormat::JsonLines, ExportFormat::Csv] {
            let (after, text) = run(
                &app,
                ExportOptions {
                    from: Some(middle),
                    ..options(source, format)
                },
            )
            .await;
            assert_eq!(after, later as u64, "{source:?} {format:?}");
            let time_field = match source {
                ExportSource::AuditTrail => "occurred_at",
                ExportSource::Events => "recorded_at",
            };
            for row in parse(format, source, &text) {
                let at: DateTime<Utc> = row[time_field].as_str().unwrap().parse().unwrap();
                assert!(at >= middle, "{row}");
            }
            let (before, text) = run(
                &app,
                ExportOptions {
                    to: Some(middle),
                    ..options(source, format)
                },
            )
            .await;
            assert_eq!(before + after, total, "{source:?} {format:?}");
            assert_eq!(parse(format, source, &text).len() as u64, before);
            let (none, text) = run(
                &app,
                ExportOptions {
                    from: Some(middle),
                    to: Some(middle),
                    ..options(source, format)
                },
            )
            .await;
            assert_eq!(none, 0);
            assert_eq!(parse(format, source, &text).len(), 0);
        }
    }
}}
