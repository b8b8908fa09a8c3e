//! JWT access tokens (RFC 9068 `at+jwt`) beside PASETO: every path that accepts a
//! token (`validate`, bearer routes, `authorize`) accepts a JWT of a live session and
//! refuses it once the session is revoked or cut off, as for PASETO; the NATS
//! revocation event names the session a JWT carries in `sid`; the JWKS publishes
//! the EdDSA, ES256 and RS256 keys, and after `keys rotate` the old ones too.
//!
//! The OAuth token endpoint that hands JWTs to clients is not here yet, so the
//! tests have the server's own issuer sign a JWT for a real session (what that
//! endpoint will do), and verify it over HTTP like any client's token.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use keyledger_api::keyset::OldKey;
use keyledger_commands::{JwsAlg, JwtGrant, JwtKeys, SessionClaims, TokenIssuer};
use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const ALGS: [JwsAlg; 3] = [JwsAlg::EdDSA, JwsAlg::ES256, JwsAlg::RS256];

/// A JWT access token of the session behind `paseto` (a token of that session
/// from login), issued to `client_id` and signed with `alg` by `tokens`.
fn jwt_of_session(tokens: &TokenIssuer, paseto: &str, client_id: &str, alg: JwsAlg) -> String {
    let claims = tokens.verify(paseto).expect("the login's token verifies");
    let session = SessionClaims {
        session_id: claims.session_id,
        started_at: claims
            .authenticated_at
            .expect("a user's token has auth_time"),
        email_verified: claims.email_verified.unwrap_or(false),
        factors: &claims.amr,
    };
    let grant = JwtGrant {
        client_id,
        scope: "openid profile",
        alg,
    };
    tokens
        .issue_jwt_for_session(claims.user_id, session, None, &grant)
        .expect("JWT issued")
        .0
}

/// The header and payload of a JWT, decoded without checking anything.
fn decoded(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut next = || -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap()
    };
    (next(), next())
}

/// What the three paths answer for `token`: `(validate's active, GET
/// /v1/auth/me, authorize's reason in `org`)`.
async fn acceptance(app: &TestApp, token: &str, org: &str) -> (Value, StatusCode, Value) {
    let validated = app.validate(token).await["active"].clone();
    let bearer = app.me(token).await.status();
    let decided = app.authorize(token, org, "members:read").await["reason"].clone();
    (validated, bearer, decided)
}

async fn jwks(app: &TestApp) -> Vec<Value> {
    let response = app.get("/v1/oidc/jwks").await;
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await["keys"]
        .as_array()
        .expect("keys")
        .clone()
}

fn kids(keys: &[Value]) -> Vec<String> {
    keys.iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

e2e! { async fn the_jwks_publishes_eddsa_es256_and_rs256_keys_with_distinct_kids(backend) {
    let app = spawn_app_on(backend).await;
    let response = app.get("/v1/oidc/jwks").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["cache-control"].to_str().unwrap(),
        "public, max-age=300"
    );
    let keys = body(response).await["keys"].as_array().unwrap().clone();
    let algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert_eq!(algs, ["EdDSA", "ES256", "RS256"]);
    let mut distinct = kids(&keys);
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3);
    let members = |key: &Value| -> Vec<String> {
        let mut names: Vec<String> = key.as_object().unwrap().keys().cloned().collect();
        names.sort();
        names
    };
    assert_eq!(members(&keys[0]), ["alg", "crv", "kid", "kty", "use", "x"]);
    assert_eq!(members(&keys[1]), ["alg", "crv", "kid", "kty", "use", "x", "y"]);
    assert_eq!(members(&keys[2]), ["alg", "e", "kid", "kty", "n", "use"]);
    for key in &keys {
        assert_eq!(key["use"], "sig");
    }
    assert_eq!((&keys[0]["kty"], &keys[0]["crv"]), (&json!("OKP"), &json!("Ed25519")));
    assert_eq!((&keys[1]["kty"], &keys[1]["crv"]), (&json!("EC"), &json!("P-256")));
    assert_eq!(keys[2]["kty"], "RSA");
    // One Ed25519 key, one id: the PASETO key of `/v1/auth/keys`.
    let paseto = app.published_keys().await;
    assert_eq!(keys[0]["kid"], paseto[0]["kid"]);
    // Each token's header names a published key of its algorithm.
    let (_, tokens) = app.signed_in_user().await;
    for alg in ALGS {
        let jwt = jwt_of_session(app.state.auth.tokens(), &tokens.access_token, "c", alg);
        let (header, _) = decoded(&jwt);
        assert_eq!(header["typ"], "at+jwt");
        assert!(keys.iter().any(|k| k["kid"] == header["kid"] && k["alg"] == header["alg"]));
    }
}}

e2e! { async fn jwt_access_tokens_are_accepted_and_refused_with_their_session_like_paseto(backend) {
    let app = spawn_app_with_nats(backend).await;
    let (email, tokens) = app.signed_in_user().await;
    let other_device = app.tokens(app.login(&email, PASSWORD).await).await;
    let org = app.new_organization(&tokens.access_token).await;
    let client_id = Uuid::new_v4().to_string();
    let jwts: Vec<String> = ALGS
        .iter()
        .map(|&alg| jwt_of_session(app.state.auth.tokens(), &tokens.access_token, &client_id, alg))
        .collect();

    for jwt in &jwts {
        let answer = app.validate(jwt).await;
        assert_eq!(answer["active"], true, "{answer}");
        assert_eq!(answer["sid"], json!(tokens.session_id));
        assert_eq!(answer["client_id"], json!(client_id));
        assert_eq!(answer["scope"], "openid profile");
        assert_eq!(answer["kind"], "user");
        assert_eq!(
            acceptance(&app, jwt, &org).await,
            (json!(true), StatusCode::OK, json!("granted"))
        );
    }
    assert_eq!(
        acceptance(&app, &tokens.access_token, &org).await,
        (json!(true), StatusCode::OK, json!("granted"))
    );
    // A JWT whose payload was swapped, or whose type is not `at+jwt`, is refused.
    let (header, mut payload) = decoded(&jwts[1]);
    payload["sub"] = json!(Uuid::new_v4().to_string());
    let signature = jwts[1].rsplit('.').next().unwrap();
    let swapped = format!(
        "{}.{}.{signature}",
        jwts[1].split('.').next().unwrap(),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    assert_eq!(app.validate(&swapped).await, json!({"active": false}));
    let id_token = app
        .state
        .auth
        .tokens()
        .jwt_keys()
        .sign(JwsAlg::RS256, "JWT", &decoded(&jwts[2]).1)
        .unwrap();
    assert_eq!(app.validate(&id_token).await, json!({"active": false}));
    assert_eq!(header["alg"], "ES256");

    // The session is revoked (from another device): every JWT of it is refused
    // everywhere, as its PASETO token is.
    let response = app
        .revoke_session(&other_device.access_token, &tokens.session_id)
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    for jwt in jwts.iter().chain([&tokens.access_token]) {
        assert_eq!(app.validate(jwt).await, json!({"active": false}));
        let (active, bearer, reason) = acceptance(&app, jwt, &org).await;
        assert_eq!(active, json!(false));
        assert_eq!(bearer, StatusCode::UNAUTHORIZED);
        assert_eq!(reason, json!("invalid_token"));
    }

    // The revocation published on NATS names the session the JWTs carry in `sid`,
    // so a module that follows revocations matches JWTs as it matches PASETO tokens.
    let stored = app.stored_events().await;
    // Every stored event, plus the `EffectivePermissionsChanged` the relay derives
    // from `OrganizationCreated`.
    let published = app.published(stored.len() + 1, Duration::from_secs(10)).await;
    let revoked: Vec<&Value> = published
        .iter()
        .map(|(_, _, event)| event)
        .filter(|event| event["event_type"] == "SessionRevoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{published:#?}");
    for jwt in &jwts {
        let (_, claims) = decoded(jwt);
        assert_eq!(revoked[0]["aggregate_id"], claims["sid"]);
    }
}}

e2e! { async fn a_cut_off_ends_jwts_of_sessions_started_before_it_and_spares_later_ones(backend) {
    let app = spawn_app_on(backend).await;
    let (_, admin) = app.signed_in_user().await;
    let admin_id: Uuid = body(app.me(&admin.access_token).await).await["user_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    app.make_platform_admin(admin_id).await;
    let (email, before) = app.signed_in_user().await;
    let old = jwt_of_session(app.state.auth.tokens(), &before.access_token, "c", JwsAlg::EdDSA);
    assert_eq!(app.validate(&old).await["active"], true);

    let response = app
        .call(
            Method::POST,
            "/v1/admin/sessions/revoke-before",
            Some(&admin.access_token),
            Some(&json!({})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.validate(&old).await, json!({"active": false}));

    // A session started right after the cut-off, very likely within the same
    // second: its JWT's `auth_time` alone would read as before the cut-off; the
    // microseconds beside it keep it alive.
    let after = app.tokens(app.login(&email, PASSWORD).await).await;
    let fresh = jwt_of_session(app.state.auth.tokens(), &after.access_token, "c", JwsAlg::ES256);
    let (_, claims) = decoded(&fresh);
    assert!(claims["auth_time"].is_i64());
    assert_eq!(claims["auth_time_us"].as_i64().unwrap() / 1_000_000, claims["auth_time"].as_i64().unwrap());
    assert_eq!(app.validate(&fresh).await["active"], true);
    assert_eq!(app.me(&fresh).await.status(), StatusCode::OK);
}}

/// The ids of the ES256 and RS256 keys in the files beside `key_file`.
fn file_kids(key_file: &std::path::Path) -> Vec<String> {
    keyledger_api::keyset::JWS_FILE_ALGS
        .iter()
        .map(|&alg| {
            let file = keyledger_api::keyset::jws_key_file(key_file, alg);
            let private = std::fs::read_to_string(file).expect("key file made at start");
            let public = JwtKeys::public_pem_of(alg, &private).unwrap();
            JwtKeys::kid_of(alg, &public).unwrap()
        })
        .collect()
}

e2e! { async fn after_keys_rotate_the_old_jwt_keys_stay_listed_and_their_tokens_verify(backend) {
    let before = signed_in_before_a_rotation(backend).await;
    let key_file = before.settings.tokens.signing_key_file.clone();
    // The first start made the ES256 and RS256 key files beside the signing key.
    let old_kids = file_kids(&key_file);
    // A JWT signed before the rotation, by an issuer on the same key files.
    let now = chrono::Utc::now();
    let keys = keyledger_api::keyset::load(&key_file, false, now).unwrap();
    let mut old_issuer = TokenIssuer::new(
        &keys.signing,
        &[],
        keyledger_commands::TokenSettings {
            issuer: before.settings.tokens.issuer.clone(),
            audience: before.settings.tokens.audience.clone(),
            access_ttl: before.settings.tokens.access_ttl,
            verified_cache_entries: 0,
        },
    )
    .unwrap();
    for alg in keyledger_api::keyset::JWS_FILE_ALGS {
        let key = keyledger_api::keyset::load_jws(&key_file, alg, now).unwrap();
        old_issuer = old_issuer.with_jws_key(alg, &key).unwrap();
    }
    let old_eddsa = old_issuer.signing_kid().to_owned();

    let after = before.rotate_and_restart(chrono::Utc::now(), OldKey::Retire).await;
    // JWTs name the server's public URL as their issuer.
    old_issuer.set_jwt_issuer(after.state.auth.tokens().jwt_issuer());
    let old_jwts: Vec<String> = ALGS
        .iter()
        .map(|&alg| jwt_of_session(&old_issuer, &before.tokens.access_token, "c", alg))
        .collect();
    let new_kids = file_kids(&key_file);
    for (old, new) in old_kids.iter().zip(&new_kids) {
        assert_ne!(old, new);
    }
    let listed = jwks(&after).await;
    assert_eq!(listed.len(), 6, "two keys of each algorithm: {listed:#?}");
    let listed_kids = kids(&listed);
    for kid in old_kids.iter().chain(&new_kids).chain([&old_eddsa]) {
        assert!(listed_kids.contains(kid), "{kid} not in {listed_kids:?}");
    }
    for alg in ["EdDSA", "ES256", "RS256"] {
        assert_eq!(listed.iter().filter(|k| k["alg"] == alg).count(), 2, "{alg}");
    }
    // Tokens the old keys signed still verify; new ones are signed with new keys.
    for jwt in &old_jwts {
        assert_eq!(after.validate(jwt).await["active"], true);
    }
    let fresh = jwt_of_session(after.state.auth.tokens(), &before.tokens.access_token, "c", JwsAlg::RS256);
    let (header, _) = decoded(&fresh);
    assert_eq!(header["kid"], json!(new_kids[1]));
    assert_eq!(after.validate(&fresh).await["active"], true);
    drop(after);
    drop(before);
}}

e2e! { async fn the_jwks_draws_on_the_token_check_budget(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.rate_limits.token_checks_per_second = 2;
    })
    .await;
    let limited = first_rate_limited(|_| app.get("/v1/oidc/jwks")).await;
    let limited = limited.expect("the token check limit never applied to the JWKS");
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(limited, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
    let needle = "keyledger_rate_limited_total{class=\"token_checks\"} ";
    let metrics = app.metrics().await;
    let refused: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix(needle))
        .map(|count| count.trim().parse().unwrap())
        .unwrap_or(0);
    assert!(refused >= 1, "{metrics}");
}}
