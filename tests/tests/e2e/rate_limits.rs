//! Rate limits shaped by class of route (`api/src/rate_limit.rs`): credential
//! routes per address and per account, token checks sized for a gateway,
//! management routes per subject.

use futures::stream::{self, StreamExt};
use keyledger_api::Settings;
use keyledger_e2e::*;
use reqwest::{Response, StatusCode};
use serde_json::json;

/// A refusal of the rate limit: 429, `Retry-After`, the JSON envelope.
async fn assert_rate_limited(response: Response) {
    assert!(
        response.headers().contains_key("retry-after"),
        "no Retry-After: {response:?}"
    );
    assert_eq!(
        error_code(response, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
}

async fn refusals_of(app: &TestApp, class: &str) -> Option<u64> {
    let text = app.metrics().await;
    let needle = format!("keyledger_rate_limited_total{{class=\"{class}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(needle.as_str()))
        .map(|count| count.trim().parse().unwrap())
}

e2e! { async fn failed_logins_on_one_account_are_limited_from_every_address_but_its_own(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        s.rate_limits.account_per_minute = 3;
    })
    .await;
    let login_from = |ip: String, email: &str, password: &str| {
        app.client
            .post(app.url("/v1/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    let email = "victim@example.com";
    assert_eq!(app.register(email, PASSWORD).await.status(), StatusCode::CREATED);
    // The victim logs in from home once.
    let home = "192.0.2.10".to_owned();
    let r = login_from(home.clone(), email, PASSWORD).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // An attacker guesses from a new address each time.
    for i in 0..3 {
        let r = login_from(format!("198.51.100.{i}"), email, "wrong guess").await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let r = login_from("198.51.100.99".into(), "Victim@Example.com", PASSWORD)
        .await
        .unwrap();
    assert_rate_limited(r).await;
    // The victim is not locked out of its budget where it logged in before.
    let r = login_from(home, email, PASSWORD).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Another account keeps its own budget, from the attacker's addresses too.
    assert_eq!(app.register("other@example.com", PASSWORD).await.status(), StatusCode::CREATED);
    let r = login_from("198.51.100.1".into(), "other@example.com", PASSWORD).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(refusals_of(&app, "account").await.unwrap_or(0) >= 1);
}}

e2e! { async fn failed_client_credentials_on_one_client_id_are_limited(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.rate_limits.account_per_minute = 2;
    })
    .await;
    let client_id = "sa_does-not-matter";
    let attempt = || {
        app.client
            .post(app.url("/v1/auth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", "wrong"),
            ])
            .send()
    };
    for _ in 0..2 {
        assert_eq!(attempt().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    assert_rate_limited(attempt().await.unwrap()).await;
}}

e2e! { async fn credential_routes_are_limited_per_address_apart_from_token_checks(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.rate_limits.per_second = 1;
        s.rate_limits.burst = 3;
        s.rate_limits.token_checks_per_second = Settings::default().rate_limits.token_checks_per_second;
    })
    .await;
    let (_, tokens) = app.signed_in_user().await;
    let limited = first_rate_limited(|i| {
        let app = &app;
        async move { app.login(&format!("nobody{i}@example.com"), "wrong password").await }
    })
    .await;
    assert_rate_limited(limited.expect("the credential limit never applied")).await;
    // The same address still checks tokens.
    for _ in 0..20 {
        app.validate(&tokens.access_token).await;
    }
    assert!(refusals_of(&app, "credentials").await.unwrap_or(0) >= 1);
}}

e2e! { async fn a_gateway_validating_5000_tokens_in_a_second_from_one_address_gets_no_429(backend) {
    // The default budget of token checks, with every other class limited too.
    let app = spawn_app_on_with(backend, |s| {
        let defaults = Settings::default();
        s.rate_limits.per_second = defaults.rate_limits.per_second;
        s.rate_limits.burst = defaults.rate_limits.burst;
        s.rate_limits.token_checks_per_second = defaults.rate_limits.token_checks_per_second;
        s.rate_limits.management_per_second = defaults.rate_limits.management_per_second;
        s.rate_limits.account_per_minute = defaults.rate_limits.account_per_minute;
    })
    .await;
    let (_, tokens) = app.signed_in_user().await;
    let token = tokens.access_token.as_str();
    let app = &app;
    let statuses: Vec<StatusCode> = stream::iter(0..5000)
        .map(|_| async move {
            app.client
                .post(app.url("/v1/auth/validate"))
                .json(&json!({"token": token}))
                .send()
                .await
                .unwrap()
                .status()
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(refused, 0, "{refused} of 5000 token checks refused");
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
}}

e2e! { async fn the_token_check_budget_applies_per_address(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.rate_limits.token_checks_per_second = 2;
    })
    .await;
    let check = json!({"token": "x", "permission": "y"});
    let limited = first_rate_limited(|_| app.post("/v1/auth/authorize", &check)).await;
    assert_rate_limited(limited.expect("the token check limit never applied")).await;
    assert!(refusals_of(&app, "token_checks").await.unwrap_or(0) >= 1);
}}

e2e! { async fn management_routes_are_limited_per_subject_and_per_address_when_anonymous(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.rate_limits.management_per_second = 3;
    })
    .await;
    let (_, busy) = app.signed_in_user().await;
    let (_, other) = app.signed_in_user().await;
    let mut limited = None;
    for _ in 0..10 {
        let r = app.me(&busy.access_token).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_rate_limited(limited.expect("the management limit never applied")).await;
    // Another subject from the same address has its own budget.
    assert_eq!(app.sessions(&other.access_token).await.status(), StatusCode::OK);
    // Anonymous callers, and forged tokens (no subject to trust), count per address.
    let mut limited = None;
    for i in 0..10 {
        let request = app.client.get(app.url("/v1/organizations"));
        let request = if i % 2 == 0 { request } else { request.bearer_auth("v4.public.forged") };
        let r = request.send().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    assert_rate_limited(limited.expect("anonymous callers were not limited")).await;
    assert!(refusals_of(&app, "management").await.unwrap_or(0) >= 2);
}}
