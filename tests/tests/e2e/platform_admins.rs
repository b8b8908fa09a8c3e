//! Guard rails between platform administrators: the platform always keeps an
//! active one, and taking an administrator away needs a recent login.

use std::time::Duration;

use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

async fn demote(app: &TestApp, token: &str, user: Uuid) -> reqwest::Response {
    app.call(
        Method::DELETE,
        &format!("/v1/admin/users/{user}/platform-admin"),
        Some(token),
        None,
    )
    .await
}

async fn suspend(app: &TestApp, token: &str, user: Uuid) -> reqwest::Response {
    app.call(
        Method::POST,
        &format!("/v1/admin/users/{user}/suspend"),
        Some(token),
        Some(&json!({"reason": "testing the guard rails"})),
    )
    .await
}

async fn erase(app: &TestApp, token: &str, user: Uuid) -> reqwest::Response {
    app.call(
        Method::DELETE,
        &format!("/v1/admin/users/{user}"),
        Some(token),
        None,
    )
    .await
}

/// A signed-in platform administrator: id, email and access token.
async fn new_admin(app: &TestApp) -> (Uuid, String, String) {
    let (email, tokens) = app.signed_in_user().await;
    let me = body(app.me(&tokens.access_token).await).await;
    let id: Uuid = me["user_id"].as_str().unwrap().parse().unwrap();
    app.make_platform_admin(id).await;
    (id, email, tokens.access_token)
}

e2e! { async fn the_last_active_platform_admin_cannot_be_demoted_suspended_or_erased(backend) {
    let app = spawn_app_on(backend).await;
    let (root, _, token) = new_admin(&app).await;

    for response in [
        demote(&app, &token, root).await,
        suspend(&app, &token, root).await,
        erase(&app, &token, root).await,
        app.call(
            Method::DELETE,
            "/v1/users/me",
            Some(&token),
            Some(&json!({"password": PASSWORD})),
        )
        .await,
    ] {
        assert_eq!(error_code(response, StatusCode::CONFLICT).await, "last_admin");
    }
    // Nothing happened: still in office, still signed in.
    assert_eq!(app.get_auth("/v1/admin/users", &token).await.status(), StatusCode::OK);
    assert!(app.state.access.read(|m| m.is_platform_admin(&root)));

    // With a second administrator, stepping down is fine.
    let (second, _, _) = new_admin(&app).await;
    assert_eq!(demote(&app, &token, root).await.status(), StatusCode::NO_CONTENT);
    assert!(app.state.access.read(|m| m.is_platform_admin(&second)));
}}

e2e! { multi_thread async fn two_admins_removing_each_other_at_once_leave_one_in_office(backend) {
    let app = spawn_app_on(backend).await;
    let (a, a_email, a_token) = new_admin(&app).await;
    let (b, b_email, b_token) = new_admin(&app).await;
    let mut admins = [(a, a_email, a_token), (b, b_email, b_token)];
    for round in 0..4 {
        let [(a, _, a_token), (b, _, b_token)] = &admins;
        // Demotion one round, suspension the next: both take an administrator away.
        let (a_does, b_does) = if round % 2 == 0 {
            tokio::join!(demote(&app, a_token, *b), demote(&app, b_token, *a))
        } else {
            tokio::join!(suspend(&app, a_token, *b), suspend(&app, b_token, *a))
        };
        let statuses = [a_does.status(), b_does.status()];
        let in_office: Vec<Uuid> = [*a, *b]
            .into_iter()
            .filter(|id| app.state.access.read(|m| m.is_platform_admin(id)))
            .collect();
        assert_eq!(in_office.len(), 1, "round {round}: {statuses:?}");
        assert_eq!(
            statuses.iter().filter(|s| **s == StatusCode::NO_CONTENT).count(),
            1,
            "round {round}: {statuses:?}"
        );
        // Reinstate the other for the next round.
        let survivor = usize::from(in_office[0] == *b);
        let removed = 1 - survivor;
        let removed_id = admins[removed].0;
        if round % 2 == 1 {
            let response = app
                .call(
                    Method::POST,
                    &format!("/v1/admin/users/{removed_id}/reactivate"),
                    Some(&admins[survivor].2),
                    None,
                )
                .await;
            assert_eq!(response.status(), StatusCode::NO_CONTENT);
            // The suspension ended their sessions: signed in again.
            let email = admins[removed].1.clone();
            admins[removed].2 = app.tokens(app.login(&email, PASSWORD).await).await.access_token;
        } else {
            app.make_platform_admin(removed_id).await;
        }
        assert!(app.state.access.read(|m| m.is_platform_admin(&removed_id)));
    }
}}

e2e! { async fn removing_another_admin_needs_a_recent_login(backend) {
    let app = spawn_app_on_with(backend, |s| s.sessions.reauth_window = Duration::from_secs(2)).await;
    let (root, root_email, stale) = new_admin(&app).await;
    let (other, _, _) = new_admin(&app).await;
    let (user, _) = app.new_user().await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // An old login may still act on ordinary accounts…
    assert_eq!(suspend(&app, &stale, user).await.status(), StatusCode::NO_CONTENT);
    // …but not on administrators, nor erase itself.
    for response in [
        suspend(&app, &stale, other).await,
        demote(&app, &stale, other).await,
        erase(&app, &stale, other).await,
        erase(&app, &stale, root).await,
    ] {
        assert_eq!(
            error_code(response, StatusCode::UNAUTHORIZED).await,
            "reauthentication_required"
        );
    }
    assert!(app.state.access.read(|m| m.is_platform_admin(&other)));

    // Signing in again is the password check.
    let fresh = app.tokens(app.login(&root_email, PASSWORD).await).await;
    assert_eq!(
        demote(&app, &fresh.access_token, other).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(!app.state.access.read(|m| m.is_platform_admin(&other)));
}}
