//! Schema evolution: an event stored in an older shape (`UserLoggedIn` 1.0, with
//! `method`) still loads on the write side, projects on the read side, replays, and
//! goes out on NATS in the current shape (2.0, with `factors`).

use std::time::Duration;

use keyledger_e2e::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

e2e! { async fn an_event_stored_in_its_old_shape_is_read_in_the_new_one_everywhere(backend) {
    let app = spawn_app_with_nats(backend).await;
    let email = format!("old-{}@example.com", Uuid::new_v4().simple());
    let registered = body(app.register(&email, PASSWORD).await).await;
    let user_id = registered["user_id"].as_str().unwrap().to_owned();

    // A login written by an older release: version 1.0, a `method` and no `factors`.
    let old_session = Uuid::new_v4();
    let at = chrono::Utc::now().to_rfc3339();
    let payload =
        json!({"UserLoggedIn": {"session_id": old_session, "method": "password", "at": at}});
    let metadata = json!({"occurred_at": at, "actor": user_id, "request_id": "from-1.0"});
    app.append_raw_event(RawEvent {
        aggregate_type: "user",
        aggregate_id: &user_id,
        sequence: 2,
        event_type: "UserLoggedIn",
        event_version: "1.0",
        payload: &payload,
        metadata: &metadata,
    })
    .await;

    // The write side loads the account through the upcaster and goes on with it.
    let login = app.login(&email, PASSWORD).await;
    assert_eq!(login.status(), StatusCode::OK);
    let stored: Vec<(i64, String, String)> = app
        .db()
        .rows(
            "SELECT sequence, event_type, event_version FROM events
              WHERE aggregate_type = 'user' AND aggregate_id = $1 ORDER BY sequence",
            &[(&user_id).into()],
        )
        .await;
    assert_eq!(
        stored,
        vec![
            (1, "UserRegistered".into(), "4.0".into()),
            (2, "UserLoggedIn".into(), "1.0".into()),
            (3, "UserLoggedIn".into(), "2.0".into()),
        ],
        "the old event is never rewritten; new ones are written in the new shape"
    );

    // The read side projected it (the projector would stop on an unreadable event).
    let old_rows: Vec<AuditRow> = app
        .audit_rows()
        .await
        .into_iter()
        .filter(|r| r.request_id.as_deref() == Some("from-1.0"))
        .collect();
    assert_eq!(old_rows.len(), 1);
    let details = &old_rows[0].details;
    assert_eq!(details["factors"], json!(["pwd"]));
    assert_eq!(details["session_id"], json!(old_session));

    // The replay tool shows it in the current shape.
    let url = match backend {
        Backend::Postgres => Some(app.resources.database_url.as_str()),
        Backend::Sqlite => None,
    };
    let log = keyledger_replay_tools::open(
        url,
        &app.resources.data_dir,
        keyledger_replay_tools::Access::Read,
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    keyledger_replay_tools::history(
        &log,
        Some(app.state.data_key_wrapping.clone()),
        &user_id.parse().unwrap(),
        keyledger_replay_tools::OutputFormat::JsonLines,
        &mut out,
    )
    .await
    .unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let old = lines
        .iter()
        .find(|l| l["event"]["sequence"] == 2 && l["event"]["aggregate_type"] == "user")
        .or_else(|| {
            lines
                .iter()
                .find(|l| l["sequence"] == 2 && l["aggregate_type"] == "user")
        })
        .unwrap_or_else(|| panic!("no sequence 2 in {lines:#?}"));
    assert!(old.to_string().contains("\"factors\":[\"pwd\"]"), "{old}");

    // And NATS carries it as 2.0, like every newer login.
    let count = app.count_events().await;
    let published = app.published(count as usize, Duration::from_secs(20)).await;
    let logins: Vec<&Value> = published
        .iter()
        .map(|(_, _, e)| e)
        .filter(|e| e["event_type"] == "UserLoggedIn")
        .collect();
    assert_eq!(logins.len(), 2);
    for login in logins {
        assert_eq!(login["schema_version"], "2.0", "{login}");
        assert_eq!(login["data"]["factors"], json!(["pwd"]), "{login}");
        assert_eq!(login["data"]["method"], "password", "{login}");
    }
}}
