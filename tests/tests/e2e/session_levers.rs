//! The operator's and the user's emergency levers over sessions: log out
//! everywhere (for oneself, or by an administrator for anyone).

use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

e2e! { async fn logging_out_everywhere_ends_every_session_of_the_caller_including_its_own(backend) {
    let app = spawn_app_on(backend).await;
    let (email, laptop) = app.signed_in_user().await;
    let phone = app.tokens(app.login(&email, PASSWORD).await).await;
    let (_, bystander) = app.signed_in_user().await;

    let response = app
        .call(Method::DELETE, "/v1/auth/sessions", Some(&laptop.access_token), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, json!({"ended_sessions": 2}));

    for device in [&laptop, &phone] {
        assert_eq!(app.validate(&device.access_token).await, json!({"active": false}));
        assert_eq!(app.me(&device.access_token).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(app.refresh(&device.refresh_token).await.status(), StatusCode::UNAUTHORIZED);
        let types = app.event_types("session", &device.session_id).await;
        assert_eq!(types.last().map(String::as_str), Some("SessionRevoked"));
    }
    // Someone else's session is untouched.
    assert_eq!(app.validate(&bystander.access_token).await["active"], true);
    // Logging in again works.
    let again = app.tokens(app.login(&email, PASSWORD).await).await;
    assert_eq!(app.validate(&again.access_token).await["active"], true);
}}

e2e! { async fn an_administrator_ends_every_session_of_an_account_which_stays_active(backend) {
    let app = spawn_app_on(backend).await;
    let (admin_email, admin) = app.signed_in_user().await;
    let me = body(app.me(&admin.access_token).await).await;
    let admin_id: Uuid = me["user_id"].as_str().unwrap().parse().unwrap();
    app.make_platform_admin(admin_id).await;
    let admin = app.tokens(app.login(&admin_email, PASSWORD).await).await;

    let (email, laptop) = app.signed_in_user().await;
    let phone = app.tokens(app.login(&email, PASSWORD).await).await;
    let user_id = body(app.me(&laptop.access_token).await).await["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/admin/users/{user_id}/sessions");

    // Only a platform administrator may.
    let refused = app.call(Method::DELETE, &path, Some(&phone.access_token), None).await;
    assert_eq!(error_code(refused, StatusCode::FORBIDDEN).await, "forbidden");
    let unknown = format!("/v1/admin/users/{}/sessions", Uuid::new_v4());
    let missing = app.call(Method::DELETE, &unknown, Some(&admin.access_token), None).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let response = app.call(Method::DELETE, &path, Some(&admin.access_token), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, json!({"ended_sessions": 2}));
    for device in [&laptop, &phone] {
        assert_eq!(app.validate(&device.access_token).await, json!({"active": false}));
        assert_eq!(app.refresh(&device.refresh_token).await.status(), StatusCode::UNAUTHORIZED);
    }
    // The administrator's own session goes on, and the account can log in again.
    assert_eq!(app.validate(&admin.access_token).await["active"], true);
    let again = app.tokens(app.login(&email, PASSWORD).await).await;
    assert_eq!(app.validate(&again.access_token).await["active"], true);
    // Repeating it ends nothing more than the new session.
    let response = app.call(Method::DELETE, &path, Some(&admin.access_token), None).await;
    assert_eq!(body(response).await, json!({"ended_sessions": 1}));
}}

e2e! { async fn a_session_idle_longer_than_the_idle_timeout_cannot_be_refreshed(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.sessions.idle_timeout = Some(std::time::Duration::from_secs(2));
    })
    .await;
    let (_, first) = app.signed_in_user().await;
    // Refreshed in time: the session goes on, and the clock restarts.
    let second = app.tokens(app.refresh(&first.refresh_token).await).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let refused = app.refresh(&second.refresh_token).await;
    assert_eq!(
        error_code(refused, StatusCode::UNAUTHORIZED).await,
        "invalid_refresh_token"
    );
    // Refused, not reuse: nothing was written after the first refresh.
    assert_eq!(
        app.event_types("session", &first.session_id).await,
        ["SessionStarted", "TokenRefreshed"]
    );
}}

e2e! { async fn retrying_a_refresh_whose_answer_was_lost_keeps_the_session(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.sessions.refresh_reuse_grace = std::time::Duration::from_secs(30);
    })
    .await;
    let (_, first) = app.signed_in_user().await;
    // The answer to this refresh is "lost": the client never sees `lost`.
    let lost = app.tokens(app.refresh(&first.refresh_token).await).await;
    // It retries with the same token and gets a fresh pair for the same session.
    let retried = app.tokens(app.refresh(&first.refresh_token).await).await;
    assert_eq!(retried.session_id, first.session_id);
    assert_ne!(retried.refresh_token, lost.refresh_token);
    assert_eq!(app.validate(&retried.access_token).await["active"], true);
    // …which rotates as usual.
    let next = app.tokens(app.refresh(&retried.refresh_token).await).await;
    assert_eq!(app.me(&next.access_token).await.status(), StatusCode::OK);

    // The superseded answer turning up after all is reuse: the family ends.
    let stolen = app.refresh(&lost.refresh_token).await;
    assert_eq!(
        error_code(stolen, StatusCode::UNAUTHORIZED).await,
        "refresh_token_reused"
    );
    assert_eq!(app.validate(&next.access_token).await, json!({"active": false}));
    assert_eq!(
        app.event_types("session", &first.session_id).await,
        [
            "SessionStarted",
            "TokenRefreshed",
            "TokenRefreshed",
            "TokenRefreshed",
            "RefreshTokenReuseDetected",
            "SessionRevoked",
        ]
    );
}}

e2e! { async fn replaying_a_rotated_refresh_token_after_the_grace_revokes_the_session(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.sessions.refresh_reuse_grace = std::time::Duration::from_secs(1);
    })
    .await;
    let (_, first) = app.signed_in_user().await;
    let second = app.tokens(app.refresh(&first.refresh_token).await).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let replay = app.refresh(&first.refresh_token).await;
    assert_eq!(
        error_code(replay, StatusCode::UNAUTHORIZED).await,
        "refresh_token_reused"
    );
    assert_eq!(app.validate(&second.access_token).await, json!({"active": false}));
    let refused = app.refresh(&second.refresh_token).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}}

e2e! { async fn a_login_beyond_the_session_cap_ends_the_oldest_session(backend) {
    let app = spawn_app_on_with(backend, |s| s.sessions.max_per_user = 2).await;
    let (email, oldest) = app.signed_in_user().await;
    let middle = app.tokens(app.login(&email, PASSWORD).await).await;
    assert_eq!(app.validate(&oldest.access_token).await["active"], true);

    let newest = app.tokens(app.login(&email, PASSWORD).await).await;
    // The oldest ended, at once and for good; the two newest go on.
    assert_eq!(app.validate(&oldest.access_token).await, json!({"active": false}));
    assert_eq!(app.refresh(&oldest.refresh_token).await.status(), StatusCode::UNAUTHORIZED);
    for live in [&middle, &newest] {
        assert_eq!(app.validate(&live.access_token).await["active"], true);
    }
    let types = app.event_types("session", &oldest.session_id).await;
    assert_eq!(types.last().map(String::as_str), Some("SessionRevoked"));
    let sessions = body(app.sessions(&newest.access_token).await).await;
    let ended = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session_id"] == oldest.session_id.as_str())
        .expect("the oldest session is listed")
        .clone();
    assert_eq!(ended["end_reason"], "session_limit");
    // Another account's sessions do not count.
    let (_, other) = app.signed_in_user().await;
    assert_eq!(app.validate(&other.access_token).await["active"], true);
    assert_eq!(app.validate(&middle.access_token).await["active"], true);
}}

/// Polls `node`'s `validate` until the token is inactive (the node learns of
/// endings from the event feed); panics after five seconds.
async fn until_inactive_on(node: &TestApp, token: &str) {
    for _ in 0..100 {
        if node.validate(token).await == json!({"active": false}) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the token is still active on the other node");
}

#[tokio::test]
async fn every_lever_is_honoured_by_another_node_on_postgres() {
    let resources = TestResources::on(Backend::Postgres);
    let mut settings = resources.settings();
    settings.sessions.max_per_user = 3;
    let a = start(resources.clone(), settings.clone(), true).await;
    let b = start(resources.clone(), settings, false).await;

    // Log out everywhere on node A: node B refuses every token of the account.
    let (email, laptop) = a.signed_in_user().await;
    let phone = a.tokens(a.login(&email, PASSWORD).await).await;
    assert_eq!(b.validate(&phone.access_token).await["active"], true);
    let response = a
        .call(
            Method::DELETE,
            "/v1/auth/sessions",
            Some(&laptop.access_token),
            None,
        )
        .await;
    assert_eq!(body(response).await, json!({"ended_sessions": 2}));
    for device in [&laptop, &phone] {
        until_inactive_on(&b, &device.access_token).await;
        assert_eq!(
            b.me(&device.access_token).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            b.refresh(&device.refresh_token).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }

    // The cap, reached through logins on both nodes, ends the oldest everywhere.
    let first = a.tokens(a.login(&email, PASSWORD).await).await;
    b.tokens(b.login(&email, PASSWORD).await).await;
    a.tokens(a.login(&email, PASSWORD).await).await;
    assert_eq!(b.validate(&first.access_token).await["active"], true);
    b.tokens(b.login(&email, PASSWORD).await).await;
    until_inactive_on(&a, &first.access_token).await;
    until_inactive_on(&b, &first.access_token).await;
}

/// Whether an access token is refused by `validate` and by a bearer route, and its
/// session's refresh token by `refresh`.
async fn refused_everywhere(app: &TestApp, tokens: &Tokens) {
    assert_eq!(
        app.validate(&tokens.access_token).await,
        json!({"active": false})
    );
    assert_eq!(
        app.me(&tokens.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&tokens.refresh_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn revoke_before(
    app: &TestApp,
    token: &str,
    request: serde_json::Value,
) -> reqwest::Response {
    app.call(
        Method::POST,
        "/v1/admin/sessions/revoke-before",
        Some(token),
        Some(&request),
    )
    .await
}

e2e! { async fn a_cut_off_ends_every_session_started_before_it_with_one_event_on_nats(backend) {
    let app = spawn_app_with_nats(backend).await;
    let (admin_email, admin) = app.signed_in_user().await;
    let admin_id: Uuid = body(app.me(&admin.access_token).await).await["user_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    app.make_platform_admin(admin_id).await;
    let (email, laptop) = app.signed_in_user().await;
    let (_, bystander) = app.signed_in_user().await;
    // A refreshed session is judged by its start, not by its latest token.
    let laptop = app.tokens(app.refresh(&laptop.refresh_token).await).await;

    // Only a platform administrator may; the instant is RFC 3339 and not in
    // the future.
    let refused = revoke_before(&app, &bystander.access_token, json!({})).await;
    assert_eq!(error_code(refused, StatusCode::FORBIDDEN).await, "forbidden");
    let array = revoke_before(&app, &admin.access_token, json!([null, null])).await;
    assert_eq!(error_code(array, StatusCode::BAD_REQUEST).await, "invalid_json");
    let unknown = revoke_before(&app, &admin.access_token, json!({"after": "now"})).await;
    assert_eq!(error_code(unknown, StatusCode::BAD_REQUEST).await, "invalid_json");
    let malformed = revoke_before(&app, &admin.access_token, json!({"before": "yesterday"})).await;
    assert_eq!(error_code(malformed, StatusCode::BAD_REQUEST).await, "invalid_time");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let future = revoke_before(&app, &admin.access_token, json!({"before": later})).await;
    assert_eq!(
        error_code(future, StatusCode::UNPROCESSABLE_ENTITY).await,
        "cutoff_in_future"
    );
    assert_eq!(app.validate(&laptop.access_token).await["active"], true);

    let response = revoke_before(
        &app,
        &admin.access_token,
        json!({"reason": "refresh tokens leaked from a client's logs"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer = body(response).await;
    assert_eq!(answer["recorded"], true);
    let cutoff: chrono::DateTime<chrono::Utc> = answer["before"].as_str().unwrap().parse().unwrap();

    // Every session started before it, the administrator's own included.
    for tokens in [&laptop, &bystander, &admin] {
        refused_everywhere(&app, tokens).await;
    }
    // A session started after it works, refreshes, and lists the old ones as
    // ended by the cut-off.
    let again = app.tokens(app.login(&email, PASSWORD).await).await;
    assert_eq!(app.validate(&again.access_token).await["active"], true);
    let again = app.tokens(app.refresh(&again.refresh_token).await).await;
    assert_eq!(app.me(&again.access_token).await.status(), StatusCode::OK);
    app.read_models_caught_up().await;
    let listed = body(app.sessions(&again.access_token).await).await;
    let listed = listed["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for session in listed {
        if session["session_id"] == again.session_id.as_str() {
            assert_eq!(session["state"], "active");
        } else {
            assert_eq!(session["state"], "revoked");
            assert_eq!(session["end_reason"], "sessions_revoked_before");
            assert!(session["ended_at"].is_string());
        }
    }

    // An earlier cut-off changes nothing and answers the one in force.
    let admin = app.tokens(app.login(&admin_email, PASSWORD).await).await;
    let earlier = (cutoff - chrono::Duration::hours(1)).to_rfc3339();
    let response = revoke_before(&app, &admin.access_token, json!({"before": earlier})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer = body(response).await;
    assert_eq!(answer["recorded"], false);
    assert_eq!(answer["before"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap(), cutoff);
    assert_eq!(app.validate(&again.access_token).await["active"], true);

    // One event recorded it, and it reached NATS without any session's events.
    let stored = app.stored_events().await;
    let cut = events_of_type(&stored, "SessionsRevokedBefore");
    assert_eq!(cut.len(), 1);
    assert_eq!(cut[0].aggregate_type, "platform");
    assert_eq!(cut[0].metadata_json()["actor"], admin_id.to_string());
    assert!(stored.iter().all(|e| e.event_type != "SessionRevoked"));
    let published = app.published(stored.len(), std::time::Duration::from_secs(10)).await;
    let subject = format!("{}.platform.SessionsRevokedBefore", app.resources.subject_prefix);
    let message = published
        .iter()
        .find(|(s, _, _)| s == &subject)
        .unwrap_or_else(|| panic!("{subject} not published"));
    assert_eq!(message.2["data"]["reason"], "refresh tokens leaked from a client's logs");
    assert_eq!(
        message.2["data"]["before"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap(),
        cutoff
    );
}}

e2e! { async fn the_cli_revokes_every_session_started_before_now(backend) {
    let mut first = spawn_app_on(backend).await;
    let (email, old) = first.signed_in_user().await;
    let settings = first.settings.clone();
    // A restarted embedded server must find the cut-off in the log; a running
    // PostgreSQL one learns it from the feed.
    let outcome = first
        .beside_the_server(keyledger_api::startup::revoke_sessions_before(
            settings.clone(),
            None,
            Some("breach drill".into()),
        ))
        .await
        .expect("revoke from the command line");
    assert!(outcome.ends_with("are revoked"), "{outcome}");
    let app = &first;
    // Within the bound a logout elsewhere takes to reach a node.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.validate(&old.access_token).await["active"] == true {
        assert!(std::time::Instant::now() < deadline, "the cut-off never arrived");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    refused_everywhere(app, &old).await;
    let again = app.tokens(app.login(&email, PASSWORD).await).await;
    assert_eq!(app.validate(&again.access_token).await["active"], true);
    // An earlier cut-off than the one in force changes nothing.
    let earlier = chrono::Utc::now() - chrono::Duration::days(1);
    if backend == Backend::Postgres {
        let outcome = keyledger_api::startup::revoke_sessions_before(settings, Some(earlier), None)
            .await
            .expect("revoke from the command line");
        assert!(outcome.ends_with("nothing changed"), "{outcome}");
        assert_eq!(app.validate(&again.access_token).await["active"], true);
    }
}}
