//! The checkpointed feed never skips an event that commits late.

use std::time::Duration;

use keyledger_e2e::*;
use keyledger_projections::{EventFeed, Position};
use serde_json::json;
use uuid::Uuid;

async fn insert_registration(conn: &mut sqlx::PgConnection, user_id: Uuid) {
    let payload = json!({"UserRegistered": {
        "user_id": user_id,
        "email": format!("{user_id}@example.com"),
        "display_name": null,
        "password_hash": "$argon2id$v=19$m=4096,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
        "registered_at": "2026-01-01T00:00:00Z",
    }});
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('user', $1, 1, 'UserRegistered', '1.0', $2, '{}')",
    )
    .bind(user_id.to_string())
    .bind(payload)
    .execute(conn)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_late_commit_is_never_skipped() {
    let app = spawn_app().await;
    let pool = app.pool().clone();
    let feed = EventFeed::new(keyledger_projections::ReadStore::Postgres(pool.clone()));
    let (early, late) = (Uuid::new_v4(), Uuid::new_v4());

    // Transaction A takes the earlier position but commits last.
    let mut a = pool.begin().await.unwrap();
    insert_registration(&mut a, early).await;
    let mut b = pool.begin().await.unwrap();
    insert_registration(&mut b, late).await;
    b.commit().await.unwrap();

    let naive: Vec<String> =
        sqlx::query_scalar("SELECT aggregate_id FROM events ORDER BY global_position")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        naive,
        [late.to_string()],
        "a position-ordered reader sees B alone"
    );
    let visible = feed.read_after(Position::START, 100).await.unwrap();
    assert!(
        visible.is_empty(),
        "the feed must hold B back while A is in flight"
    );

    a.commit().await.unwrap();
    let mut delivered = Vec::new();
    for _ in 0..100 {
        delivered = feed.read_after(Position::START, 100).await.unwrap();
        if delivered.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<String> = delivered.iter().map(|e| e.aggregate_id.clone()).collect();
    assert_eq!(ids, [early.to_string(), late.to_string()]);

    // The read models, fed by the same feed, get both.
    let projected = app
        .state
        .consistency
        .wait_for("user", &late.to_string(), 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(projected);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 2);
}

#[tokio::test]
async fn the_projector_resumes_from_its_checkpoint_after_a_restart() {
    let mut app = spawn_app().await;
    app.signed_in_user().await;
    let checkpoint_before = app.state.consistency.projected();
    assert!(checkpoint_before > Position::START);
    let resources = app.resources.clone();
    let settings = app.settings.clone();
    app.stop().await;

    let again = start(resources, settings, false).await;
    let (_, tokens) = again.signed_in_user().await;
    // Rows from before and after the restart, each exactly once.
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_trail")
        .fetch_one(again.pool())
        .await
        .unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(audit, events);
    assert_eq!(
        again.me(&tokens.access_token).await.status(),
        reqwest::StatusCode::OK
    );
    drop(again);
    drop(app);
}

#[tokio::test]
async fn the_audit_trail_records_who_did_what_from_where() {
    let app = spawn_app().await;
    let (email, tokens) = app.signed_in_user().await;
    let response = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("x-request-id", "audit-req-1")
        .json(&json!({"email": email, "password": "not the password at all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "audit-req-1");
    assert_eq!(
        app.logout(&tokens.access_token).await.status(),
        reqwest::StatusCode::NO_CONTENT
    );
    let user_id: String = sqlx::query_scalar("SELECT user_id::text FROM users")
        .fetch_one(app.pool())
        .await
        .unwrap();

    #[derive(sqlx::FromRow, Debug)]
    struct Row {
        action: String,
        outcome: String,
        actor: String,
        subject: String,
        ip: Option<String>,
        user_agent: Option<String>,
        request_id: Option<String>,
        details: serde_json::Value,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT action, outcome, actor, subject, ip, user_agent, request_id, details
           FROM audit_trail ORDER BY global_position",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "UserRegistered",
            "UserLoggedIn",
            "SessionStarted",
            "LoginFailed",
            "UserLoggedOut"
        ]
    );
    for row in &rows {
        // Session events are filed under the user they belong to; a failed login
        // proved nothing, so its actor is anonymous.
        assert_eq!(row.subject, user_id, "{row:?}");
        let actor = if row.action == "LoginFailed" {
            "anonymous"
        } else {
            user_id.as_str()
        };
        assert_eq!(row.actor, actor, "{row:?}");
        assert_eq!(row.ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(row.user_agent.as_deref(), Some("keyledger-e2e/1.0"));
        assert!(!row.details.to_string().contains("hash"), "{row:?}");
    }
    let failed = rows.iter().find(|r| r.action == "LoginFailed").unwrap();
    assert_eq!(failed.outcome, "failure");
    assert_eq!(failed.request_id.as_deref(), Some("audit-req-1"));
    assert_eq!(rows[1].outcome, "success");
}

#[tokio::test]
async fn the_event_log_refuses_updates_deletes_and_truncation() {
    let app = spawn_app().await;
    app.signed_in_user().await;
    for statement in [
        "UPDATE events SET event_type = 'Tampered'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let result = sqlx::query(statement).execute(app.pool()).await;
        assert!(result.is_err(), "{statement} was accepted");
    }
}
