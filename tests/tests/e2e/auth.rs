//! The REST API's authentication flows, their error codes and security rules.

use std::time::Duration;

use futures::future::join_all;
use keyledger_api::keyset::OldKey;
use keyledger_e2e::proxy::TcpProxy;
use keyledger_e2e::*;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

async fn user_id_of(app: &TestApp, access_token: &str) -> String {
    body(app.me(access_token).await).await["user_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn all_events_text(app: &TestApp) -> String {
    app.stored_events()
        .await
        .iter()
        .map(|e| format!("{} {}", e.payload, e.metadata))
        .collect::<Vec<_>>()
        .join("\n")
}

e2e! { async fn register_then_login_then_me_and_sessions_work_at_once(backend) {
    let app = spawn_app_on(backend).await;
    let response = app
        .post(
            "/v1/auth/register",
            &json!({"email": "  Grace.Hopper@Example.COM ", "password": PASSWORD, "display_name": "Grace"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let registered = body(response).await;
    assert_eq!(registered["email"], "grace.hopper@example.com");
    let user_id = registered["user_id"].as_str().unwrap().to_owned();

    let login = app.login("GRACE.HOPPER@example.com", PASSWORD).await;
    assert_eq!(login.headers()["cache-control"], "no-store");
    let login = body(login).await;
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["expires_in"], 900);
    let access = login["access_token"].as_str().unwrap();
    assert!(access.starts_with("v4.public."));
    assert!(login["refresh_token"].as_str().unwrap().starts_with("klr_"));

    let me = body(app.me(access).await).await;
    assert_eq!(me["user_id"], user_id);
    assert_eq!(me["email"], "grace.hopper@example.com");
    assert_eq!(me["display_name"], "Grace");
    assert!(me["created_at"].is_string());

    let sessions = body(app.sessions(access).await).await;
    let sessions = sessions["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["session_id"], login["session_id"]);
    assert_eq!(sessions[0]["state"], "active");
    assert_eq!(sessions[0]["current"], true);
    assert_eq!(sessions[0]["user_agent"], "keyledger-e2e/1.0");
    assert_eq!(sessions[0]["ip"], "127.0.0.1");

    assert_eq!(
        app.event_types("user", &user_id).await,
        ["UserRegistered", "UserLoggedIn"]
    );
}}

e2e! { async fn registration_errors_have_their_codes(backend) {
    let app = spawn_app_on(backend).await;
    assert_eq!(
        app.register("taken@example.com", PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let cases = [
        (
            json!({"email": "TAKEN@example.com", "password": PASSWORD}),
            StatusCode::CONFLICT,
            "email_taken",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_email",
        ),
        (
            json!({"email": "a@example.com", "password": "password1"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
        ),
        (
            json!({"email": "a@example.com", "password": "short"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
        ),
        (
            json!({"email": "a@example.com", "password": "x".repeat(129)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
        ),
        (
            json!({"email": "margaret.hamilton@example.com", "password": "margaret.hamilton!1969"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
        ),
        (
            json!({"email": "a@example.com", "password": PASSWORD, "display_name": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_display_name",
        ),
        (
            json!({"email": "a@example.com", "password": PASSWORD, "display_name": "x".repeat(101)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_display_name",
        ),
    ];
    for (request, status, code) in cases {
        let response = app.post("/v1/auth/register", &request).await;
        assert_eq!(error_code(response, status).await, code, "{request}");
    }
    let weak = body(app.register("b@example.com", "password123").await).await;
    assert!(!weak["reasons"].as_array().unwrap().is_empty());
    // Only the first registration reached the event store.
    assert_eq!(app.count_events().await, 1);
}}

e2e! { async fn fifty_simultaneous_registrations_of_one_email_give_one_account(backend) {
    let app = spawn_app_on(backend).await;
    let attempts = (0..50).map(|i| {
        let email = if i % 2 == 0 {
            "race@example.com"
        } else {
            "RACE@example.com"
        };
        app.register(email, PASSWORD)
    });
    let statuses: Vec<StatusCode> = join_all(attempts)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        49
    );
    let registered: i64 = app
        .db()
        .scalar(
            "SELECT count(*) FROM events WHERE event_type = 'UserRegistered'",
            &[],
        )
        .await;
    assert_eq!(registered, 1);
}}

e2e! { async fn wrong_password_and_unknown_email_get_the_same_answer_for_the_same_work(backend) {
    let app = spawn_app_on(backend).await;
    app.register("known@example.com", PASSWORD).await;
    let before = app.state.hasher.verifications();
    let wrong = app
        .login("known@example.com", "wrong password entirely")
        .await;
    assert_eq!(app.state.hasher.verifications(), before + 1);
    let unknown = app
        .login("nobody@example.com", "wrong password entirely")
        .await;
    assert_eq!(app.state.hasher.verifications(), before + 2);
    // No account can have a malformed address: refused as quickly as possible,
    // with the same answer, and without a password check (see
    // `a_malformed_email_login_costs_no_password_check`).
    let malformed = app.login("not an email", "wrong password entirely").await;
    assert_eq!(app.state.hasher.verifications(), before + 2);
    let (a, b, c) = (
        body(wrong).await,
        body(unknown).await,
        body(malformed).await,
    );
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a["error"], "invalid_credentials");
}}

e2e! { async fn five_failures_lock_the_account_until_the_lockout_ends(backend) {
    let app = spawn_app_on(backend).await;
    app.register("locked@example.com", PASSWORD).await;
    for _ in 0..5 {
        let r = app
            .login("locked@example.com", "not the password at all")
            .await;
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "invalid_credentials"
        );
    }
    let before = app.state.hasher.verifications();
    // Even the right password is refused while locked, without a password check.
    let r = app.login("locked@example.com", PASSWORD).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 1700 && retry_after <= 1800, "{retry_after}");
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "too_many_attempts"
    );
    assert_eq!(app.state.hasher.verifications(), before);
    let types: Vec<String> = app
        .db()
        .scalars(
            "SELECT event_type FROM events WHERE aggregate_type = 'user' ORDER BY sequence",
            &[],
        )
        .await;
    assert_eq!(types.iter().filter(|t| *t == "LoginFailed").count(), 5);
    assert_eq!(types.last().unwrap(), "AccountLocked");
}}

e2e! { async fn the_lockout_ends_after_its_configured_duration(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.lockout.max_failures = 2;
        s.lockout.duration = Duration::from_secs(4);
    })
    .await;
    app.register("brief@example.com", PASSWORD).await;
    for _ in 0..2 {
        app.login("brief@example.com", "not the password at all")
            .await;
    }
    let locked_at = std::time::Instant::now();
    let r = app.login("brief@example.com", PASSWORD).await;
    // Only meaningful while the lockout certainly runs (a very slow machine could
    // take longer than that between the two calls).
    if locked_at.elapsed() < Duration::from_secs(3) {
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    tokio::time::sleep(Duration::from_millis(4100).saturating_sub(locked_at.elapsed())).await;
    assert_eq!(
        app.login("brief@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}}

e2e! { async fn unknown_emails_are_locked_out_like_real_ones(backend) {
    let app = spawn_app_on(backend).await;
    for _ in 0..5 {
        let r = app
            .login("ghost@example.com", "not the password at all")
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = app
        .login("ghost@example.com", "not the password at all")
        .await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "too_many_attempts"
    );
}}

e2e! { async fn twenty_parallel_wrong_passwords_get_at_most_five_password_checks(backend) {
    let app = spawn_app_on(backend).await;
    app.register("target@example.com", PASSWORD).await;
    let before = app.state.hasher.verifications();
    let attempts = (0..20).map(|_| app.login("target@example.com", "guess guess guess"));
    let statuses: Vec<StatusCode> = join_all(attempts)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(app.state.hasher.verifications() - before, 5);
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count(),
        5
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        15
    );
}}

e2e! { async fn a_hash_with_older_parameters_is_upgraded_on_the_next_login(backend) {
    let mut old = spawn_app_on(backend).await;
    app_register(&old, "legacy@example.com").await;
    old.stop().await;
    let resources = old.resources.clone();
    let mut settings = resources.settings();
    settings.passwords.argon2_memory_kib = 8192;
    settings.passwords.argon2_iterations = 2;
    let app = start(resources, settings, false).await;

    let tokens = app
        .tokens(app.login("legacy@example.com", PASSWORD).await)
        .await;
    let user_id = user_id_of(&app, &tokens.access_token).await;
    assert_eq!(
        app.event_types("user", &user_id).await,
        ["UserRegistered", "UserLoggedIn", "PasswordRehashed"]
    );
    let stored: String = app
        .db()
        .scalar(
            (
                "SELECT payload::text FROM events WHERE event_type = 'PasswordRehashed'",
                "SELECT payload FROM events WHERE event_type = 'PasswordRehashed'",
            ),
            &[],
        )
        .await;
    // Sealed with the account's data key; opened, it has the new parameters.
    let Ok(keyledger_domain::UserEvent::PasswordRehashed { password_hash, .. }) =
        serde_json::from_str(&stored)
    else {
        panic!("{stored}")
    };
    assert!(password_hash.is_sealed(), "{stored}");
    assert!(!stored.contains("argon2"), "{stored}");
    let key = keyledger_commands::PersonalDataSealer::for_storage(
        &app.state.storage,
        app.state.data_key_wrapping.clone(),
    )
    .key_for(user_id.parse().unwrap())
    .await
    .unwrap();
    let rehashed = password_hash.open(key.as_ref()).expect("the owner's key opens it");
    assert!(rehashed.expose_phc().contains("m=8192,t=2,p=1"));
    // Once upgraded, no further rehash.
    app.login("legacy@example.com", PASSWORD).await;
    let rehashes = app.event_types("user", &user_id)
        .await
        .into_iter()
        .filter(|t| t == "PasswordRehashed")
        .count();
    assert_eq!(rehashes, 1);
    drop(app);
    drop(old); // removes the shared database
}}

async fn app_register(app: &TestApp, email: &str) {
    assert_eq!(
        app.register(email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
}

e2e! { async fn refresh_rotates_and_reuse_revokes_the_whole_session(backend) {
    let app = spawn_app_on(backend).await;
    let (_, first) = app.signed_in_user().await;
    let second = app.tokens(app.refresh(&first.refresh_token).await).await;
    assert_eq!(second.session_id, first.session_id);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(app.me(&second.access_token).await.status(), StatusCode::OK);

    // The first token again: reuse.
    let reuse = app.refresh(&first.refresh_token).await;
    assert_eq!(
        error_code(reuse, StatusCode::UNAUTHORIZED).await,
        "refresh_token_reused"
    );
    // Every token of the family stops working.
    let r = app.refresh(&second.refresh_token).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_refresh_token"
    );
    assert_eq!(
        app.validate(&second.access_token).await,
        json!({"active": false})
    );
    assert_eq!(
        app.validate(&first.access_token).await,
        json!({"active": false})
    );
    assert_eq!(
        app.me(&second.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.event_types("session", &first.session_id).await,
        [
            "SessionStarted",
            "TokenRefreshed",
            "RefreshTokenReuseDetected",
            "SessionRevoked"
        ]
    );
    let session_id: Uuid = first.session_id.parse().unwrap();
    let sessions: String = app
        .db()
        .scalar(
            "SELECT state FROM sessions WHERE session_id = $1",
            &[session_id.into()],
        )
        .await;
    assert_eq!(sessions, "revoked");
}}

e2e! { async fn a_forged_or_malformed_refresh_token_is_refused_without_revoking(backend) {
    let app = spawn_app_on(backend).await;
    let (_, tokens) = app.signed_in_user().await;
    let session_part = &tokens.refresh_token[..26];
    let forged = format!(
        "{session_part}{}",
        "A".repeat(tokens.refresh_token.len() - 26)
    );
    for bad in [
        forged.as_str(),
        "",
        "klr_short",
        "nonsense",
        &"x".repeat(10_000),
    ] {
        let r = app.refresh(bad).await;
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "invalid_refresh_token",
            "{bad}"
        );
    }
    assert_eq!(
        app.refresh(&tokens.refresh_token).await.status(),
        StatusCode::OK
    );
}}

e2e! { async fn logout_ends_the_sessions_access_and_refresh_tokens(backend) {
    let app = spawn_app_on(backend).await;
    let (_, tokens) = app.signed_in_user().await;
    assert_eq!(
        app.logout(&tokens.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    let me = app.me(&tokens.access_token).await;
    assert!(me.headers().contains_key("www-authenticate"));
    assert_eq!(
        error_code(me, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    assert_eq!(
        app.validate(&tokens.access_token).await,
        json!({"active": false})
    );
    let r = app.refresh(&tokens.refresh_token).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_refresh_token"
    );
    // Logging out again with the dead token is refused.
    assert_eq!(
        app.logout(&tokens.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
}}

e2e! { async fn sessions_can_be_listed_and_revoked_only_by_their_owner(backend) {
    let app = spawn_app_on(backend).await;
    let (email, laptop) = app.signed_in_user().await;
    let phone = app.tokens(app.login(&email, PASSWORD).await).await;
    let (_, stranger) = app.signed_in_user().await;

    let listed = body(app.sessions(&laptop.access_token).await).await;
    let listed = listed["sessions"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().filter(|s| s["current"] == true).count(), 1);

    // Someone else's session, a made-up one and a malformed id: all 404.
    for id in [
        stranger.session_id.as_str(),
        "00000000-0000-0000-0000-000000000000",
        "not-a-uuid",
    ] {
        let r = app.revoke_session(&laptop.access_token, id).await;
        assert_eq!(
            error_code(r, StatusCode::NOT_FOUND).await,
            "session_not_found"
        );
    }
    assert_eq!(
        app.me(&stranger.access_token).await.status(),
        StatusCode::OK
    );

    let r = app
        .revoke_session(&laptop.access_token, &phone.session_id)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.me(&phone.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&phone.refresh_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.me(&laptop.access_token).await.status(), StatusCode::OK);
    let listed = body(app.sessions(&laptop.access_token).await).await;
    let revoked = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session_id"] == phone.session_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["end_reason"], "user_request");
}}

e2e! { async fn validate_reports_active_tokens_and_rejects_everything_else(backend) {
    let app = spawn_app_on(backend).await;
    let (_, tokens) = app.signed_in_user().await;
    let active = app.validate(&tokens.access_token).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["sid"], tokens.session_id.as_str());
    for claim in ["sub", "jti", "iss", "aud", "iat", "exp"] {
        assert!(!active[claim].is_null(), "{claim} missing");
    }
    // Signed by another key, tampered, garbage.
    let other = spawn_app_on(backend).await;
    let (_, foreign) = other.signed_in_user().await;
    let mut tampered = tokens.access_token.clone().into_bytes();
    tampered[30] ^= 1;
    for token in [
        foreign.access_token.as_str(),
        &String::from_utf8(tampered).unwrap(),
        "garbage",
        "",
    ] {
        assert_eq!(app.validate(token).await, json!({"active": false}));
    }
}}

e2e! { async fn validate_reports_an_expired_token_as_inactive(backend) {
    // A one-second lifetime; only the answer after it has passed is asserted, so a
    // slow machine cannot make this test flaky.
    let app = spawn_app_on_with(backend, |s| s.tokens.access_ttl = Duration::from_secs(1)).await;
    let (_, tokens) = app.signed_in_user().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        app.validate(&tokens.access_token).await,
        json!({"active": false})
    );
}}

e2e! { async fn other_modules_can_verify_tokens_with_the_published_keys(backend) {
    use pasetors::claims::ClaimsValidationRules;
    use pasetors::keys::AsymmetricPublicKey;
    use pasetors::token::UntrustedToken;
    use pasetors::version4::V4;
    use pasetors::{public, Public};

    let app = spawn_app_on(backend).await;
    let (_, tokens) = app.signed_in_user().await;
    let keys = body(
        app.client
            .get(app.url("/v1/auth/keys"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let key = &keys["keys"][0];
    assert_eq!(key["current"], true);
    let public_key = AsymmetricPublicKey::<V4>::try_from(key["paserk"].as_str().unwrap()).unwrap();
    let untrusted = UntrustedToken::<Public, V4>::try_from(tokens.access_token.as_str()).unwrap();
    let footer = String::from_utf8(untrusted.untrusted_footer().to_vec()).unwrap();
    assert!(footer.contains(key["kid"].as_str().unwrap()));
    let mut rules = ClaimsValidationRules::new();
    rules.validate_issuer_with("keyledger");
    rules.validate_audience_with("keyledger");
    let trusted = public::verify(&public_key, &untrusted, &rules, None, None).unwrap();
    let claims = trusted.payload_claims().unwrap();
    assert_eq!(claims.get_claim("sid").unwrap(), tokens.session_id.as_str());
    assert!(claims.get_claim("sub").is_some());
}}

// PostgreSQL only by nature: the database is cut off on the network (a TCP proxy),
// which an in-process store cannot be. Its SQLite variant follows this test.
#[tokio::test]
async fn health_reports_the_event_store_and_nats_and_fails_without_the_event_store() {
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let app = spawn_app_with(|s| {
        if let keyledger_api::StorageSettings::Postgres { url, .. } = &mut s.storage {
            *url = url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
        }
    })
    .await;
    let (status, health) = app.health_with_nats_connected().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["event_store"], "up");
    assert_eq!(health["storage"], "postgres");

    proxy.cut();
    // The store is checked once a second in the background (a check may take its
    // 2 s timeout): health turns within that bound, not at once.
    let cut = std::time::Instant::now();
    let bound = keyledger_api::readiness::CHECK_EVERY
        + keyledger_api::readiness::CHECK_TIMEOUT
        + Duration::from_secs(2);
    let health = loop {
        let r = app.client.get(app.url("/health")).send().await.unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            break r;
        }
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            cut.elapsed() < bound,
            "health still 200 {:?} after the cut",
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let health = body(health).await;
    assert_eq!(health["event_store"], "down");
    assert_eq!(health["storage"], "postgres");
    // Orchestrators: not ready, but alive (a restart would not bring the database back).
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    // A write while the store is unreachable is a clean 503, not a 500.
    let r = app.register("offline@example.com", PASSWORD).await;
    assert_eq!(
        error_code(r, StatusCode::SERVICE_UNAVAILABLE).await,
        "unavailable"
    );

    proxy.restore();
    // Up to 30 s for the pool to reconnect on a loaded machine (ends at the first hit).
    let mut healthy = false;
    for _ in 0..300 {
        let r = app.client.get(app.url("/health")).send().await.unwrap();
        if r.status() == StatusCode::OK {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "health did not recover");
    drop(app);
}

/// The embedded store's counterpart: `/health` names it and NATS (or says NATS is
/// disabled, the embedded default). The store cannot drop off a network; what it
/// can meet is another process holding its write lock past the busy timeout. A
/// write then is a clean 503, not a 500, reads go on, and once the lock is gone
/// the same write goes through.
#[tokio::test]
async fn health_reports_the_embedded_store_and_a_write_blocked_by_another_process_is_a_503() {
    let app = spawn_app_with_nats(Backend::Sqlite).await;
    let (status, health) = app.health_with_nats_connected().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["event_store"], "up");
    assert_eq!(health["storage"], "sqlite");
    let without_nats = spawn_app_on(Backend::Sqlite).await;
    let health = without_nats
        .client
        .get(without_nats.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let health = body(health).await;
    assert_eq!(health["event_store"], "up");
    assert_eq!(health["storage"], "sqlite");
    assert_eq!(health["nats"], "disabled");
    // No NATS, no relay to lead.
    assert_eq!(health["leader"]["relay"], false);
    drop(without_nats);

    let (_, tokens) = app.signed_in_user().await;
    let path = app
        .resources
        .data_dir
        .join(keyledger_storage::DATABASE_FILE);
    let options = keyledger_storage::connect_options(&path, keyledger_storage::Durability::Normal);
    let mut other = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let held = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let r = app.register("offline@example.com", PASSWORD).await;
    assert_eq!(
        error_code(r, StatusCode::SERVICE_UNAVAILABLE).await,
        "unavailable"
    );
    assert_eq!(app.me(&tokens.access_token).await.status(), StatusCode::OK);
    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);

    held.rollback().await.unwrap();
    assert_eq!(
        app.register("offline@example.com", PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

e2e! { async fn metrics_expose_requests_logins_and_relay_lag(backend) {
    // The relay (and its lag) exists with NATS only.
    let app = spawn_app_with_nats(backend).await;
    app.signed_in_user().await;
    app.login("nobody@example.com", "whatever whatever").await;
    let text = app.metrics().await;
    for needle in [
        "keyledger_http_requests_total",
        "keyledger_http_request_duration_seconds_bucket",
        "keyledger_logins_total{outcome=\"success\"}",
        "keyledger_logins_total{outcome=\"invalid_credentials\"}",
        "keyledger_password_verifications_total",
    ] {
        assert!(text.contains(needle), "{needle} missing");
    }
    // The relay reports its lag once it has published.
    // Bounded at 30 s: the relay first waits for its NATS client to connect,
    // which a loaded CI machine can take seconds to do (it ends at the first hit).
    let mut lag_seen = false;
    for _ in 0..300 {
        let text = app.metrics().await;
        if text.contains("keyledger_relay_lag_events") {
            lag_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lag_seen);
}}

e2e! { async fn malformed_oversized_and_hostile_input_gets_a_json_4xx(backend) {
    let app = spawn_app_on(backend).await;
    let (_, tokens) = app.signed_in_user().await;
    let before = app.count_events().await;
    let endpoints = [
        "/v1/auth/register",
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/auth/validate",
    ];
    let big = "x".repeat(20 * 1024);
    for path in endpoints {
        let raw = |body: &'static str| {
            app.client
                .post(app.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let cases: Vec<(reqwest::Response, StatusCode)> = vec![
            (raw("{").await.unwrap(), StatusCode::BAD_REQUEST),
            (raw("[]").await.unwrap(), StatusCode::BAD_REQUEST),
            (raw("null").await.unwrap(), StatusCode::BAD_REQUEST),
            (
                raw(r#"{"email": 5, "password": [1], "token": {}, "refresh_token": 1}"#)
                    .await
                    .unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (raw("").await.unwrap(), StatusCode::BAD_REQUEST),
            (
                app.client
                    .post(app.url(path))
                    .body("email=a")
                    .send()
                    .await
                    .unwrap(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                app.post(
                    path,
                    &json!({"email": big, "password": big, "token": big, "refresh_token": big}),
                )
                .await,
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (response, status) in cases {
            assert_eq!(response.status(), status, "{path}");
            let body = body(response).await;
            assert!(
                body["error"].is_string() && body["message"].is_string(),
                "{path}: {body}"
            );
        }
    }
    // Unicode, control characters and odd shapes that parse as JSON.
    let hostile = [
        json!({"email": "\u{0000}@example.com", "password": "\u{202e}pass\u{0000}word long enough"}),
        json!({"email": "💥@💥.💥", "password": "💥".repeat(128)}),
        json!({"email": "a@b.c", "password": PASSWORD, "display_name": "\u{7}\u{8}"}),
        json!({"email": "'; DROP TABLE events; --@x.y", "password": PASSWORD}),
    ];
    for request in hostile {
        for path in ["/v1/auth/register", "/v1/auth/login"] {
            let r = app.post(path, &request).await;
            assert!(
                r.status().is_client_error() || r.status().is_success(),
                "{path} {request}: {}",
                r.status()
            );
        }
    }
    // Routes and methods that do not exist.
    let r = app
        .client
        .get(app.url("/v1/auth/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = app
        .client
        .get(app.url("/v1/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(
        error_code(r, StatusCode::METHOD_NOT_ALLOWED).await,
        "method_not_allowed"
    );
    // Bearer endpoints without, or with a broken, token.
    for header in [
        None,
        Some("Bearer"),
        Some("Basic abc"),
        Some("Bearer v4.public.garbage"),
    ] {
        let mut request = app.client.get(app.url("/v1/auth/me"));
        if let Some(h) = header {
            request = request.header("authorization", h);
        }
        let r = request.send().await.unwrap();
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "invalid_token"
        );
    }
    assert_eq!(app.me(&tokens.access_token).await.status(), StatusCode::OK);
    // Rejected input wrote nothing, except the accepted hostile-but-valid ones.
    let after: Vec<String> = app
        .db()
        .scalars(
            (
                "SELECT event_type FROM events ORDER BY global_position OFFSET $1",
                "SELECT event_type FROM events ORDER BY global_position LIMIT -1 OFFSET $1",
            ),
            &[before.into()],
        )
        .await;
    assert!(
        after.iter().all(|t| t == "UserRegistered"
            || t == "LoginFailed"
            || t == "UserLoggedIn"
            || t == "SessionStarted"),
        "{after:?}"
    );
}}

e2e! { async fn the_per_ip_rate_limit_answers_429_with_retry_after(backend) {
    // `validate` is a token check: its own per-address budget (one second's worth
    // of burst), no longer the credential routes'.
    let app = spawn_app_on_with(backend, |s| {
        s.rate_limits.token_checks_per_second = 1;
    })
    .await;
    let token = json!({"token": "x"});
    let r = first_rate_limited(|_| app.post("/v1/auth/validate", &token))
        .await
        .expect("the limit never applied");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
}}

e2e! { async fn behind_a_trusted_proxy_the_forwarded_client_address_counts(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        s.rate_limits.per_second = 1;
        s.rate_limits.burst = 3;
    })
    .await;
    let email = "proxied@example.com";
    let forwarded = |ip: &str| {
        app.client
            .post(app.url("/v1/auth/register"))
            .header("x-forwarded-for", format!("6.6.6.6, {ip}"))
    };
    let r = forwarded("203.0.113.9")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let tokens = app.tokens(r).await;
    let sessions = body(
        app.client
            .get(app.url("/v1/auth/sessions"))
            .bearer_auth(&tokens.access_token)
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await
            .unwrap(),
    )
    .await;
    // The spoofable left-most entry is ignored; the proxy-appended one is the client.
    assert_eq!(sessions["sessions"][0]["ip"], "203.0.113.9");
    // Each forwarded client has its own rate-limit bucket.
    for i in 0..10 {
        let r = forwarded(&format!("198.51.100.{i}"))
            .json(&json!({"email": "x", "password": "y"}))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), StatusCode::TOO_MANY_REQUESTS, "client {i}");
    }
}}

e2e! { async fn a_client_cannot_pick_its_address_with_an_extra_forwarded_for_line(backend) {
    // The proxy (this test's client, 127.0.0.1) appends its own header line to the
    // one the client sent; `headers().get()` saw only the client's line.
    let app = spawn_app_on_with(backend, |s| {
        s.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        s.rate_limits.per_second = 1;
        s.rate_limits.burst = 3;
        // The buckets below are `validate`'s, a token check.
        s.rate_limits.token_checks_per_second = 1;
    })
    .await;
    let via_proxy = |path: &str, forged: &str, client: &str| {
        app.client
            .post(app.url(path))
            .header("x-forwarded-for", forged)
            .header("x-forwarded-for", format!("{client}:51234"))
    };
    let email = "two-lines@example.com";
    let r = via_proxy("/v1/auth/register", "6.6.6.6", "203.0.113.9")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = via_proxy("/v1/auth/login", "6.6.6.6", "203.0.113.9")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let tokens = app.tokens(r).await;
    let sessions = body(app.sessions(&tokens.access_token).await).await;
    assert_eq!(sessions["sessions"][0]["ip"], "203.0.113.9", "{sessions}");

    // A new forged first line per request is no new client: one bucket.
    let mut limited = 0;
    for i in 0..10 {
        let r = via_proxy("/v1/auth/validate", &format!("6.6.7.{i}"), "198.51.100.77")
            .json(&json!({"token": "x"}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert!(limited >= 5, "only {limited} of 10 were limited");
}}

e2e! { async fn a_forwarded_header_names_the_client_and_ipv6_clients_share_their_64(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        s.server.forwarded_header = keyledger_api::client_address::ForwardedHeader::Forwarded;
        s.rate_limits.per_second = 1;
        s.rate_limits.burst = 3;
        // The buckets below are `validate`'s, a token check.
        s.rate_limits.token_checks_per_second = 1;
    })
    .await;
    let via_proxy = |path: &str, client: &str| {
        app.client
            .post(app.url(path))
            // Both written by the client: ignored.
            .header("forwarded", "for=6.6.6.6")
            .header("x-forwarded-for", "6.6.6.7")
            .header("forwarded", format!(r#"for="[{client}]:443";proto=https"#))
    };
    let email = "rfc7239@example.com";
    let r = via_proxy("/v1/auth/register", "2001:db8:1:2::9")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = via_proxy("/v1/auth/login", "2001:db8:1:2::9")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let tokens = app.tokens(r).await;
    let sessions = body(app.sessions(&tokens.access_token).await).await;
    assert_eq!(sessions["sessions"][0]["ip"], "2001:db8:1:2::9", "{sessions}");

    // Addresses of one /64 share a bucket; another /64 has its own.
    let mut limited = 0;
    for i in 1..=10 {
        let r = via_proxy("/v1/auth/validate", &format!("2001:db8:5:6::{i:x}"))
            .json(&json!({"token": "x"}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert!(limited >= 5, "only {limited} of 10 were limited");
    let r = via_proxy("/v1/auth/validate", "2001:db8:5:7::1")
        .json(&json!({"token": "x"}))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}}

e2e! { async fn a_flood_of_logins_is_refused_with_503_instead_of_queueing_forever(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.passwords.argon2_memory_kib = 32 * 1024;
        s.passwords.argon2_iterations = 3;
        s.passwords.hash_concurrency = 1;
        s.passwords.hash_queue = 1;
    })
    .await;
    app.register("busy@example.com", PASSWORD).await;
    let emails: Vec<String> = (0..12).map(|i| format!("flood{i}@example.com")).collect();
    let attempts = emails.iter().map(|e| app.login(e, "whatever whatever"));
    let responses = join_all(attempts).await;
    let overloaded: Vec<_> = responses
        .into_iter()
        .filter(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!overloaded.is_empty());
    for r in overloaded {
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(body(r).await["error"], "overloaded");
    }
}}

e2e! { async fn a_malformed_email_login_costs_no_password_check(backend) {
    let app = spawn_app_on(backend).await;
    app.register("real@example.com", PASSWORD).await;
    let before = app.state.hasher.verifications();
    let emails: Vec<String> = (0..100)
        .map(|i| match i % 4 {
            0 => format!("not-an-email-{i}"),
            1 => format!("{i}@"),
            2 => format!("@example{i}.com"),
            _ => format!("two@at@signs{i}.example"),
        })
        .collect();
    let attempts = emails.iter().map(|e| app.login(e, "wrong password entirely"));
    for r in join_all(attempts).await {
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "invalid_credentials"
        );
    }
    assert_eq!(app.state.hasher.verifications(), before);
    // A real login still costs exactly its one check.
    assert_eq!(
        app.login("real@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.state.hasher.verifications(), before + 1);
}}

e2e! { async fn one_clients_flood_cannot_occupy_the_whole_hash_pool(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        s.passwords.argon2_memory_kib = 32 * 1024;
        s.passwords.argon2_iterations = 3;
        s.passwords.hash_concurrency = 2;
        s.passwords.hash_concurrency_per_client = 1;
    })
    .await;
    app.register("victim@example.com", PASSWORD).await;
    let login_from = |client: &str, email: &str, password: &str| {
        app.client
            .post(app.url("/v1/auth/login"))
            .header("x-forwarded-for", client)
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    // One client tries many addresses at once (no lockout or login gate holds it
    // back); another logs in meanwhile.
    let emails: Vec<String> = (0..12).map(|i| format!("flood{i}@example.com")).collect();
    let flood = join_all(
        emails
            .iter()
            .map(|e| login_from("203.0.113.66", e, "whatever whatever")),
    );
    let victim = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        login_from("198.51.100.5", "victim@example.com", PASSWORD).await
    };
    let (flood, victim) = tokio::join!(flood, victim);
    assert_eq!(victim.unwrap().status(), StatusCode::OK);
    let mut refused = 0;
    for r in flood {
        let r = r.unwrap();
        match r.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert_eq!(r.headers()["retry-after"], "1");
                assert_eq!(
                    error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
                    "too_many_concurrent_attempts"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "the flooding client was never held to its share");
}}

e2e! { async fn secrets_never_reach_responses_or_stored_events_in_clear(backend) {
    let app = spawn_app_on(backend).await;
    let register = app.register("secret@example.com", PASSWORD).await;
    let register_text = register.text().await.unwrap();
    let login = app.login("secret@example.com", PASSWORD).await;
    let tokens = app.tokens(login).await;
    let refreshed = app.tokens(app.refresh(&tokens.refresh_token).await).await;
    let wrong = app
        .login("secret@example.com", "wrong wrong wrong wrong")
        .await
        .text()
        .await
        .unwrap();
    let me = app.me(&refreshed.access_token).await.text().await.unwrap();
    let sessions = app
        .sessions(&refreshed.access_token)
        .await
        .text()
        .await
        .unwrap();
    for text in [&register_text, &wrong, &me, &sessions] {
        assert!(!text.contains(PASSWORD));
        assert!(!text.contains("argon2"));
        assert!(!text.contains(&tokens.refresh_token));
    }
    let stored = all_events_text(&app).await;
    assert!(!stored.contains(PASSWORD), "a password was stored");
    assert!(
        !stored.contains(&tokens.refresh_token),
        "a refresh token was stored"
    );
    assert!(
        !stored.contains(&refreshed.refresh_token),
        "a refresh token was stored"
    );
    // What is stored is the SHA-256 of each token.
    assert!(stored.contains(&refresh_token_hash(&tokens.refresh_token)));
}}

e2e! { async fn concurrent_refreshes_of_one_token_never_lose_an_event(backend) {
    let app = spawn_app_on(backend).await;
    let (_, tokens) = app.signed_in_user().await;
    let attempts = (0..8).map(|_| app.refresh(&tokens.refresh_token));
    let statuses: Vec<StatusCode> = join_all(attempts)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    // Exactly one rotation wins; the others present a rotated token: reuse.
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    let types = app.event_types("session", &tokens.session_id).await;
    let sequences: Vec<i64> = app
        .db()
        .scalars(
            "SELECT sequence FROM events WHERE aggregate_id = $1 ORDER BY sequence",
            &[(&tokens.session_id).into()],
        )
        .await;
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
    assert_eq!(types.iter().filter(|t| *t == "TokenRefreshed").count(), 1);
    assert_eq!(types.last().unwrap(), "SessionRevoked");
}}

e2e! { async fn a_key_rotation_keeps_earlier_tokens_valid_and_publishes_both_keys(backend) {
    let before = signed_in_before_a_rotation(backend).await;
    let tokens = &before.tokens;

    let after = before
        .rotate_and_restart(chrono::Utc::now(), OldKey::Retire)
        .await;
    assert_eq!(after.validate(&tokens.access_token).await["active"], true);
    let keys = after.published_keys().await;
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.iter().filter(|k| k["current"] == true).count(), 1);
    let (_, fresh) = after.signed_in_user().await;
    let kid_of = |token: &str| {
        use base64::Engine as _;
        let footer = token.rsplit('.').next().unwrap();
        let footer = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(footer)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&footer).unwrap()["kid"].clone()
    };
    assert_ne!(kid_of(&fresh.access_token), kid_of(&tokens.access_token));
    let current = keys.iter().find(|k| k["current"] == true).unwrap();
    assert_eq!(kid_of(&fresh.access_token), current["kid"]);
    drop(after);
    drop(before);
}}

e2e! { async fn changing_the_password_ends_the_other_sessions_and_keeps_this_one(backend) {
    let app = spawn_app_on(backend).await;
    let (email, laptop) = app.signed_in_user().await;
    let phone = app.tokens(app.login(&email, PASSWORD).await).await;
    let change = |current: &str, new: &str| {
        app.client
            .post(app.url("/v1/auth/password"))
            .bearer_auth(&laptop.access_token)
            .json(&json!({"current_password": current, "new_password": new}))
            .send()
    };
    let new_password = "an entirely different horse, 2026";

    // Wrong current password: refused, and it counts as a failed attempt.
    let r = change("not the current one at all", new_password)
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );
    // A weak new password: refused before any password check.
    let r = change(PASSWORD, "password123").await.unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "weak_password"
    );
    // Without a token: 401.
    let r = app
        .post(
            "/v1/auth/password",
            &json!({"current_password": PASSWORD, "new_password": new_password}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );

    let r = change(PASSWORD, new_password).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The other session is over, this one goes on.
    assert_eq!(
        app.me(&phone.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&phone.refresh_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.me(&laptop.access_token).await.status(), StatusCode::OK);
    assert_eq!(
        app.refresh(&laptop.refresh_token).await.status(),
        StatusCode::OK
    );
    // Only the new password works.
    assert_eq!(
        app.login(&email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&email, new_password).await.status(),
        StatusCode::OK
    );

    let user_id = user_id_of(&app, &laptop.access_token).await;
    let types = app.event_types("user", &user_id).await;
    assert!(types.contains(&"PasswordChanged".to_owned()), "{types:?}");
    assert_eq!(types.iter().filter(|t| *t == "LoginFailed").count(), 2);
    let phone_session: Uuid = phone.session_id.parse().unwrap();
    let reason: String = app
        .db()
        .scalar(
            "SELECT end_reason FROM sessions WHERE session_id = $1",
            &[phone_session.into()],
        )
        .await;
    assert_eq!(reason, "password_changed");
    // The new hash is stored, never the password.
    assert!(!all_events_text(&app).await.contains(new_password));
}}
