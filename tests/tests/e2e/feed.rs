//! The checkpointed feed never skips an event that commits late.

use std::time::Duration;

use keyledger_e2e::*;
use keyledger_projections::feed::StoredEvent;
use keyledger_projections::{EventFeed, Position};
use keyledger_storage as embedded;
use serde_json::{json, Value};
use sqlx::Connection;
use uuid::Uuid;

/// A `UserRegistered` 1.0 event of `user_id`, as an older release stored it.
fn registration(user_id: Uuid) -> Value {
    json!({"UserRegistered": {
        "user_id": user_id,
        "email": format!("{user_id}@example.com"),
        "display_name": null,
        "password_hash": "$argon2id$v=19$m=4096,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
        "registered_at": "2026-01-01T00:00:00Z",
    }})
}

/// What identifies each delivered event, in delivery order.
fn keys(events: &[StoredEvent]) -> Vec<(Position, String, String, i64)> {
    events
        .iter()
        .map(|e| {
            let (kind, id) = (e.aggregate_type.clone(), e.aggregate_id.clone());
            (e.position, kind, id, e.sequence)
        })
        .collect()
}

async fn insert_registration(conn: &mut sqlx::PgConnection, user_id: Uuid) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('user', $1, 1, 'UserRegistered', '1.0', $2, '{}')",
    )
    .bind(user_id.to_string())
    .bind(registration(user_id))
    .execute(conn)
    .await
    .unwrap();
}

// PostgreSQL only by nature: two writers in flight at once, the later position
// committing first. The embedded store serialises its writers; its variant is
// `a_writer_holding_the_lock_delays_but_never_reorders_the_feed`.
#[tokio::test]
async fn a_late_commit_is_never_skipped() {
    let app = spawn_app().await;
    let pool = app.pool().clone();
    let feed = EventFeed::new(keyledger_storage::Database::from_pool(pool.clone()));
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
    // Up to 10 s on a loaded machine; ends at the first full read.
    for _ in 0..500 {
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

/// The embedded store's counterpart of `a_late_commit_is_never_skipped`: another
/// writer (a second connection, as a tool in another process holds one) takes
/// the write lock and appends. While it holds the lock the feed shows the prefix
/// and the server's own write waits; once it commits, its event comes first and
/// the server's follows, and a follower checkpointed on the prefix gets both.
#[tokio::test]
async fn a_writer_holding_the_lock_delays_but_never_reorders_the_feed() {
    let app = spawn_app_on(Backend::Sqlite).await;
    let feed = EventFeed::new(app.state.storage.clone());
    app.signed_in_user().await;
    app.read_models_caught_up().await;
    let prefix = feed.read_after(Position::START, 100).await.unwrap();
    assert!(!prefix.is_empty());
    let seen = prefix.last().unwrap().position;
    let users_before: i64 = app.db().scalar("SELECT count(*) FROM users", &[]).await;

    let path = app.resources.data_dir.join(embedded::DATABASE_FILE);
    let options = embedded::connect_options(&path, embedded::Durability::Normal);
    let mut other = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let mut held = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let early = Uuid::new_v4();
    let (early_id, payload, metadata) = (early.to_string(), registration(early), json!({}));
    keyledger_e2e::db::append_chained_in(
        &mut held,
        RawEvent {
            aggregate_type: "user",
            aggregate_id: &early_id,
            sequence: 1,
            event_type: "UserRegistered",
            event_version: "1.0",
            payload: &payload,
            metadata: &metadata,
        },
    )
    .await
    .unwrap();

    // The server's own write waits for the lock (well inside its busy timeout).
    let late_email = format!("late-{}@example.com", Uuid::new_v4().simple());
    let register = app.register(&late_email, PASSWORD);
    tokio::pin!(register);
    assert!(
        tokio::time::timeout(Duration::from_millis(800), &mut register)
            .await
            .is_err(),
        "the server's write must wait while another writer holds the lock"
    );
    let visible = feed.read_after(Position::START, 100).await.unwrap();
    assert_eq!(
        keys(&visible),
        keys(&prefix),
        "while the lock is held the feed shows the prefix alone"
    );
    assert!(feed.read_after(seen, 100).await.unwrap().is_empty());
    assert_eq!(app.count_events().await, prefix.len() as i64);

    held.commit().await.unwrap();
    let registered = register.await;
    assert_eq!(registered.status(), reqwest::StatusCode::CREATED);
    let late = body(registered).await["user_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A follower checkpointed on the prefix gets the held event, then the
    // server's: nothing skipped, nothing reordered.
    let mut delivered = Vec::new();
    // Up to 10 s on a loaded machine; ends at the first full read.
    for _ in 0..500 {
        delivered = feed.read_after(seen, 100).await.unwrap();
        if delivered.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<&str> = delivered.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(ids, [early_id.as_str(), late.as_str()]);
    let all = feed.read_after(Position::START, 100).await.unwrap();
    assert_eq!(keys(&all[..prefix.len()]), keys(&prefix));
    assert_eq!(keys(&all[prefix.len()..]), keys(&delivered));
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));

    // The read models, fed by the same feed, get both.
    let projected = app
        .state
        .consistency
        .wait_for("user", &late, 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(projected);
    let users: i64 = app.db().scalar("SELECT count(*) FROM users", &[]).await;
    assert_eq!(users, users_before + 2);
}

e2e! { async fn the_projector_resumes_from_its_checkpoint_after_a_restart(backend) {
    let mut app = spawn_app_on(backend).await;
    app.signed_in_user().await;
    let checkpoint_before = app.state.consistency.projected();
    assert!(checkpoint_before > Position::START);
    let resources = app.resources.clone();
    let settings = app.settings.clone();
    app.stop().await;

    let again = start(resources, settings, false).await;
    let (_, tokens) = again.signed_in_user().await;
    // Rows from before and after the restart, each exactly once.
    let audit: i64 = again
        .db()
        .scalar("SELECT count(*) FROM audit_trail", &[])
        .await;
    let events = again.count_events().await;
    assert_eq!(audit, events);
    assert_eq!(
        again.me(&tokens.access_token).await.status(),
        reqwest::StatusCode::OK
    );
    drop(again);
    drop(app);
}}

e2e! { async fn the_audit_trail_records_who_did_what_from_where(backend) {
    let app = spawn_app_on(backend).await;
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
    let user_id: String = app
        .db()
        .scalar(
            (
                "SELECT user_id::text FROM users",
                "SELECT user_id FROM users",
            ),
            &[],
        )
        .await;

    let rows = app.audit_rows().await;
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
}}

e2e! { async fn the_event_log_refuses_updates_deletes_and_truncation(backend) {
    let app = spawn_app_on(backend).await;
    app.signed_in_user().await;
    let stored = app.stored_events().await;
    let mut statements = vec!["UPDATE events SET event_type = 'Tampered'", "DELETE FROM events"];
    // TRUNCATE is PostgreSQL's alone (SQLite has no such statement).
    if backend == Backend::Postgres {
        statements.push("TRUNCATE events");
    }
    let db = app.db();
    for statement in statements {
        let result = db.execute(statement, &[]).await;
        assert!(result.is_err(), "{statement} was accepted");
    }
    assert_eq!(app.stored_events().await, stored);
}}
