//! A lockout that cannot be turned against the owner: operators can lift it.

use std::time::Duration;

use keyledger_e2e::*;
use reqwest::{Method, StatusCode};

const WRONG: &str = "not the password at all";

async fn lock(app: &TestApp, email: &str) {
    for _ in 0..5 {
        app.login(email, WRONG).await;
    }
    let r = app.login(email, PASSWORD).await;
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "too_many_attempts"
    );
}

async fn user_id_by_login(app: &TestApp, email: &str) -> uuid::Uuid {
    let tokens = app.tokens(app.login(email, PASSWORD).await).await;
    body(app.me(&tokens.access_token).await).await["user_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

e2e! { async fn an_admin_unlock_lifts_a_lockout_and_reaches_nats(backend) {
    let app = spawn_app_with_nats(backend).await;
    let (admin_id, admin_token) = app.new_user().await;
    app.make_platform_admin(admin_id).await;
    let (email, _) = app.signed_in_user().await;
    let victim = user_id_by_login(&app, &email).await;
    lock(&app, &email).await;

    let unlock = |token: String| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                &format!("/v1/admin/users/{victim}/unlock"),
                Some(&token),
                None,
            )
            .await
        }
    };
    // Only a platform administrator may.
    let (_, someone) = app.signed_in_user().await;
    assert_eq!(
        unlock(someone.access_token).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(unlock(admin_token.clone()).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    // Unlocking an unlocked account changes nothing.
    assert_eq!(unlock(admin_token.clone()).await.status(), StatusCode::NO_CONTENT);
    let r = app
        .call(
            Method::POST,
            &format!("/v1/admin/users/{}/unlock", uuid::Uuid::new_v4()),
            Some(&admin_token),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let stored = app.stored_events().await;
    let unlocked = events_of_type(&stored, "AccountUnlocked");
    assert_eq!(unlocked.len(), 1);
    assert_eq!(unlocked[0].aggregate_id, victim.to_string());
    let published = app.published(stored.len(), Duration::from_secs(10)).await;
    assert!(
        published.iter().any(|(subject, _, _)| subject
            == &format!("{}.user.AccountUnlocked", app.resources.subject_prefix)),
        "{:?}",
        published.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
}}

e2e! { async fn the_cli_unlocks_an_account_named_by_its_email(backend) {
    let mut first = spawn_app_on(backend).await;
    let (email, _) = first.signed_in_user().await;
    lock(&first, &email).await;
    let settings = first.settings.clone();
    let unlock = |who: String| {
        let settings = settings.clone();
        async move { keyledger_api::startup::unlock_account(settings, &who).await }
    };
    let outcome = first
        .beside_the_server(unlock(email.clone()))
        .await
        .expect("unlock from the command line");
    assert!(outcome.ends_with("is unlocked"), "{outcome}");
    let app = &first;
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    if backend == Backend::Postgres {
        let outcome = unlock(email.clone()).await.expect("unlock from the command line");
        assert!(outcome.ends_with("was not locked"), "{outcome}");
        assert!(unlock("nobody@example.com".into()).await.is_err());
    }
}}

async fn login_from_device(
    app: &TestApp,
    email: &str,
    password: &str,
    device: &str,
) -> reqwest::Response {
    app.post(
        "/v1/auth/login",
        &serde_json::json!({ "email": email, "password": password, "device_token": device }),
    )
    .await
}

e2e! { async fn a_trusted_device_still_logs_in_while_an_attacker_locked_the_account(backend) {
    let app = spawn_app_on(backend).await;
    let (email, _) = app.signed_in_user().await;
    let first = body(app.login(&email, PASSWORD).await).await;
    let device = first["device_token"].as_str().unwrap().to_owned();
    assert!(device.starts_with("kld1."), "{device}");
    // Someone else guesses until the account locks.
    lock(&app, &email).await;
    // The owner's device is not barred.
    let r = login_from_device(&app, &email, PASSWORD, &device).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["device_token"], device.as_str());
    // A token for another account, or altered, is no trust at all.
    let (other_email, _) = app.signed_in_user().await;
    lock(&app, &other_email).await;
    let r = login_from_device(&app, &other_email, PASSWORD, &device).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let mut forged = device.clone().into_bytes();
    forged[20] = if forged[20] == b'x' { b'y' } else { b'x' };
    let forged = String::from_utf8(forged).unwrap();
    let r = login_from_device(&app, &other_email, PASSWORD, &forged).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // The device token is a secret: it is in no event.
    let stored = app.stored_events().await;
    assert!(stored
        .iter()
        .all(|e| !e.payload.contains(&device) && !e.metadata.contains(&device)));
}}

e2e! { async fn a_trusted_device_locks_only_itself_out(backend) {
    let app = spawn_app_on(backend).await;
    let (email, _) = app.signed_in_user().await;
    let device = body(app.login(&email, PASSWORD).await).await["device_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = app.state.hasher.verifications();
    for _ in 0..5 {
        let r = login_from_device(&app, &email, WRONG, &device).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = login_from_device(&app, &email, PASSWORD, &device).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "too_many_attempts"
    );
    assert_eq!(app.state.hasher.verifications() - before, 5);
    // Other clients are not locked out by this device's failures.
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
}}

e2e! { async fn one_password_sprayed_over_many_accounts_from_one_address_is_throttled(backend) {
    let app = spawn_app_on_with(backend, |s| s.lockout.spray_accounts = 3).await;
    let (owner, _) = app.signed_in_user().await;
    let device = body(app.login(&owner, PASSWORD).await).await["device_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (first, _) = app.signed_in_user().await;
    let (second, _) = app.signed_in_user().await;
    // Several wrong passwords on one account, or different ones, are no spraying.
    for guess in ["Autumn2026!", "Winter2026!", "Spring2026!"] {
        assert_eq!(app.login(&first, guess).await.status(), StatusCode::UNAUTHORIZED);
    }
    // One password on three accounts (one of them does not exist) is.
    for email in [&first, &second] {
        assert_eq!(app.login(email, "Summer2026!").await.status(), StatusCode::UNAUTHORIZED);
    }
    let r = app.login("nobody-here@example.com", "Summer2026!").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // From now on the address is throttled, whoever it names, existing or not,
    // without a password check.
    let before = app.state.hasher.verifications();
    for email in [owner.as_str(), "someone-else@example.com"] {
        let r = app.login(email, PASSWORD).await;
        let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry_after > 800 && retry_after <= 900, "{retry_after}");
        assert_eq!(
            error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
            "too_many_attempts"
        );
    }
    assert_eq!(app.state.hasher.verifications(), before);
    // A trusted device behind the same address still gets in.
    let r = login_from_device(&app, &owner, PASSWORD, &device).await;
    assert_eq!(r.status(), StatusCode::OK);
    // No password reaches the event log, in clear or otherwise.
    let stored = app.stored_events().await;
    assert!(stored.iter().all(|e| !e.payload.contains("Summer2026")));
}}

e2e! { async fn failures_three_and_four_answer_ever_later_before_the_lockout(backend) {
    let app = spawn_app_on_with(backend, |s| s.lockout.delay = Duration::from_millis(700)).await;
    let (email, _) = app.signed_in_user().await;
    let mut took = Vec::new();
    for email in [email.as_str(), "no-such-account@example.com"] {
        for _ in 0..4 {
            let started = std::time::Instant::now();
            let r = app.login(email, WRONG).await;
            took.push(started.elapsed());
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
    }
    // Known and unknown emails alike: the third waits the delay, the fourth twice.
    for base in [0, 4] {
        assert!(took[base + 2] >= Duration::from_millis(700), "{took:?}");
        assert!(took[base + 3] >= Duration::from_millis(1400), "{took:?}");
    }
}}

e2e! { async fn detected_spraying_is_recorded_once_per_window_and_reaches_nats(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.lockout.spray_accounts = 3;
        s.nats.url = Some(NATS_URL.into());
    })
    .await;
    let (first, _) = app.signed_in_user().await;
    let (second, _) = app.signed_in_user().await;
    for email in [first.as_str(), second.as_str(), "nobody-here@example.com"] {
        assert_eq!(app.login(email, "Summer2026!").await.status(), StatusCode::UNAUTHORIZED);
    }
    // Further attempts while throttled are no new detection.
    for email in [first.as_str(), "someone-else@example.com", "third@example.com"] {
        let r = app.login(email, "Summer2026!").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    let stored = app.stored_events().await;
    let detected = events_of_type(&stored, "SuspiciousActivityDetected");
    assert_eq!(detected.len(), 1, "one detection per address and window");
    assert_eq!(detected[0].aggregate_type, "platform");
    // Neither the password nor any account, nor the address, in clear.
    for text in [&detected[0].payload, &detected[0].metadata] {
        for secret in ["Summer2026", &first, &second, "nobody-here", "127.0.0.1"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    let published = app.published(stored.len(), Duration::from_secs(10)).await;
    let subject = format!(
        "{}.platform.SuspiciousActivityDetected",
        app.resources.subject_prefix
    );
    let messages: Vec<_> = published.iter().filter(|(s, _, _)| s == &subject).collect();
    assert_eq!(messages.len(), 1, "{subject}");
    let data = &messages[0].2["data"];
    assert_eq!(data["kind"], "password_spraying");
    assert_eq!(data["accounts_count"], 3);
    assert_eq!(data["window_secs"], 900);
    let digest = data["client_address_digest"].as_str().unwrap();
    assert_eq!(digest.len(), 64);
    assert!(digest.chars().all(|c| c.is_ascii_hexdigit()));
    let text = messages[0].2.to_string();
    for secret in ["Summer2026", &first, &second, "127.0.0.1"] {
        assert!(!text.contains(secret), "{secret} published");
    }

    // The detection still counts in the metric.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("keyledger_password_spraying_detected_total"),
        "the detection is not counted"
    );
}}
