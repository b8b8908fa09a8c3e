//! Which tokens are accepted, and that every path that accepts one (bearer routes,
//! `validate`, `authorize`) gives the same answer: a service account's token ends
//! with the account and with the secret it was got with; retired signing keys end
//! at the end of their window, without a restart; a token living longer than the
//! server issues, or issued in the future, is refused even with a good signature.

use std::time::Duration;

use keyledger_api::keyset::OldKey;
use keyledger_e2e::*;
use pasetors::claims::Claims;
use pasetors::footer::Footer;
use pasetors::keys::{AsymmetricPublicKey, AsymmetricSecretKey};
use pasetors::paserk::Id;
use pasetors::version4::V4;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// The three paths that accept a token, for a service account's token in `org`:
/// `(validate's active, bearer route status, authorize's reason)`.
async fn acceptance(app: &TestApp, token: &str, org: &str) -> (Value, StatusCode, Value) {
    let validated = app.validate(token).await["active"].clone();
    let bearer = app
        .get_auth(&format!("/v1/organizations/{org}/members"), token)
        .await
        .status();
    let decided = app.authorize(token, org, "audit:read").await["reason"].clone();
    (validated, bearer, decided)
}

e2e! { async fn a_service_account_token_ends_on_every_path_with_a_secret_rotation_or_deletion(backend) {
    let app = spawn_app_on(backend).await;
    let (_, owner) = app.new_user().await;
    let org = app.new_organization(&owner).await;
    let (client_id, secret) = app
        .new_service_account(&owner, &org, "billing worker", json!(["auditor"]))
        .await;
    let accounts = format!("/v1/organizations/{org}/service-accounts");

    let before_rotation = app.service_account_token(&client_id, &secret).await;
    let answer = app.validate(&before_rotation).await;
    // RFC 7662: what the token is.
    assert_eq!(answer["active"], true);
    assert_eq!(answer["token_type"], "Bearer", "an RFC 6749 §7.1 token type");
    assert_eq!(answer["kind"], "service_account");
    assert_eq!(answer["sub"], json!(client_id));
    assert_eq!(answer["client_id"], json!(client_id));
    assert_eq!(answer["org"], json!(org));
    assert_eq!(answer["roles"], json!(["auditor"]));
    for claim in ["sid", "jti", "iss", "aud", "iat", "exp"] {
        assert!(!answer[claim].is_null(), "{claim} in {answer}");
    }
    assert_eq!(
        acceptance(&app, &before_rotation, &org).await,
        (json!(true), StatusCode::OK, json!("granted"))
    );

    // Rotation: tokens got with the old secret end with it, on every path.
    let rotated = app
        .rotate_service_account_secret(&owner, &org, &client_id)
        .await;
    assert_eq!(app.validate(&before_rotation).await, json!({"active": false}));
    assert_eq!(
        acceptance(&app, &before_rotation, &org).await,
        (json!(false), StatusCode::UNAUTHORIZED, json!("invalid_token"))
    );
    let after_rotation = app.service_account_token(&client_id, &rotated).await;
    assert_eq!(
        acceptance(&app, &after_rotation, &org).await,
        (json!(true), StatusCode::OK, json!("granted"))
    );

    // Deletion: `validate` says inactive too, as the bearer routes and `authorize` do.
    let response = app
        .call(
            Method::DELETE,
            &format!("{accounts}/{client_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.validate(&after_rotation).await, json!({"active": false}));
    assert_eq!(
        acceptance(&app, &after_rotation, &org).await,
        (json!(false), StatusCode::UNAUTHORIZED, json!("invalid_token"))
    );
}}

e2e! { async fn validate_says_what_a_user_token_is_and_nothing_for_an_inactive_one(backend) {
    let app = spawn_app_on(backend).await;
    let (user, token) = app.new_user().await;
    let answer = app.validate(&token).await;
    assert_eq!(answer["active"], true);
    assert_eq!(answer["kind"], "user");
    assert_eq!(answer["sub"], json!(user));
    assert_eq!(answer["roles"], json!([]));
    assert!(answer.get("client_id").is_none(), "{answer}");
    assert!(answer.get("org").is_none(), "{answer}");
    assert_eq!(app.logout(&token).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.validate(&token).await, json!({"active": false}));
}}

/// A token signed with the server's own key, with the times given: what someone
/// holding a leaked key could mint.
fn mint(
    app: &TestApp,
    issued_at: chrono::DateTime<chrono::Utc>,
    lifetime: chrono::Duration,
) -> String {
    let secret = AsymmetricSecretKey::<V4>::try_from(app.resources.signing_key.as_str()).unwrap();
    let public = AsymmetricPublicKey::<V4>::try_from(&secret).unwrap();
    let mut footer = Footer::new();
    footer.key_id(&Id::from(&public));
    let mut claims = Claims::new().unwrap();
    claims.issuer(&app.settings.tokens.issuer).unwrap();
    claims.audience(&app.settings.tokens.audience).unwrap();
    claims.subject(&Uuid::new_v4().to_string()).unwrap();
    claims
        .token_identifier(&Uuid::new_v4().to_string())
        .unwrap();
    claims
        .add_additional("sid", Uuid::new_v4().to_string())
        .unwrap();
    claims.add_additional("kind", "user").unwrap();
    claims.issued_at(&issued_at.to_rfc3339()).unwrap();
    claims.not_before(&issued_at.to_rfc3339()).unwrap();
    claims
        .expiration(&(issued_at + lifetime).to_rfc3339())
        .unwrap();
    pasetors::public::sign(&secret, &claims, Some(&footer), None).unwrap()
}

e2e! { async fn a_token_living_longer_than_configured_or_issued_in_the_future_is_refused(backend) {
    let app = spawn_app_on(backend).await;
    let now = chrono::Utc::now();
    let ttl = chrono::Duration::from_std(app.settings.tokens.access_ttl).unwrap();
    // As the server issues them: accepted (the check itself is sound).
    let ordinary = mint(&app, now, ttl);
    assert_eq!(app.validate(&ordinary).await["active"], true);
    // A year-long token with a good signature: refused everywhere.
    let forever = mint(&app, now, chrono::Duration::days(365));
    assert_eq!(app.validate(&forever).await, json!({"active": false}));
    assert_eq!(app.me(&forever).await.status(), StatusCode::UNAUTHORIZED);
    // Issued ten minutes from now: refused; a few seconds (clock skew): accepted.
    let future = mint(&app, now + chrono::Duration::minutes(10), ttl);
    assert_eq!(app.validate(&future).await, json!({"active": false}));
    let skewed = mint(&app, now + chrono::Duration::seconds(5), ttl);
    assert_eq!(app.validate(&skewed).await["active"], true);
}}

e2e! { async fn tokens_issued_under_a_longer_lifetime_are_refused_once_it_is_shortened(backend) {
    let resources = TestResources::on(backend);
    let mut long = resources.settings();
    long.tokens.access_ttl = Duration::from_secs(7 * 24 * 3600);
    let mut before = start(resources.clone(), long, true).await;
    let (_, tokens) = before.signed_in_user().await;
    assert_eq!(before.validate(&tokens.access_token).await["active"], true);
    before.stop().await;

    let after = start(resources.clone(), resources.settings(), false).await;
    assert_eq!(after.validate(&tokens.access_token).await, json!({"active": false}));
    // The session itself is fine: a refresh gives a token of today's lifetime.
    let fresh = after.tokens(after.refresh(&tokens.refresh_token).await).await;
    assert_eq!(after.validate(&fresh.access_token).await["active"], true);
    drop(after);
    drop(before);
}}

e2e! { async fn a_retired_key_stops_verifying_at_the_end_of_its_window_without_a_restart(backend) {
    let before = signed_in_before_a_rotation(backend).await;
    let tokens = &before.tokens;

    // Rotated long enough ago that its window ends a few seconds from now.
    let window = chrono::Duration::from_std(
        before.settings.tokens.access_ttl + keyledger_commands::CLOCK_SKEW,
    )
    .unwrap();
    let end = chrono::Utc::now() + chrono::Duration::seconds(8);
    let after = before
        .rotate_and_restart(end - window, OldKey::Retire)
        .await;
    assert_eq!(after.validate(&tokens.access_token).await["active"], true);
    assert_eq!(after.published_keys().await.len(), 2);

    let wait = (end - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    // Same process, no restart: the old key verifies nothing any more.
    assert_eq!(after.validate(&tokens.access_token).await, json!({"active": false}));
    assert_eq!(after.me(&tokens.access_token).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(after.published_keys().await.len(), 1);
    drop(after);
    drop(before);
}}

e2e! { async fn a_key_rotated_with_revoke_old_verifies_nothing_after_the_restart(backend) {
    let before = signed_in_before_a_rotation(backend).await;
    let tokens = &before.tokens;

    let after = before
        .rotate_and_restart(chrono::Utc::now(), OldKey::Revoke)
        .await;
    assert_eq!(after.validate(&tokens.access_token).await, json!({"active": false}));
    assert_eq!(after.published_keys().await.len(), 1);
    // Refresh tokens are not signed: the session goes on with the new key.
    let fresh = after.tokens(after.refresh(&tokens.refresh_token).await).await;
    assert_eq!(after.validate(&fresh.access_token).await["active"], true);
    drop(after);
    drop(before);
}}
