//! The OpenID provider against the MUSTs of OpenID Connect Core 1.0, Discovery
//! 1.0 and RP-Initiated Logout 1.0, and of RFCs 6749, 7009, 7636, 7662, 8414
//! and 9068 that `openid_provider`'s journeys do not already hold, on both back
//! ends. Protocol edges go over raw HTTP (a library would not send them); what
//! is signed is checked by jose from the JWKS alone. docs/oidc-conformance.md
//! maps every rule to the test that holds it.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use keyledger_e2e::pages::PageBrowser;
use keyledger_e2e::*;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;
use uuid::Uuid;

use crate::openid_provider::{
    account, client, id_of, issuer, relying_party, sign_in_for, until_app, until_page, validate,
    AFTER_LOGOUT, REDIRECT,
};

/// A PKCE verifier of `len` unreserved characters (RFC 7636 §4.1), random.
fn verifier(len: usize) -> String {
    let mut verifier = String::new();
    while verifier.len() < len {
        verifier.push_str(&Uuid::new_v4().simple().to_string());
        verifier.push_str("-._~");
    }
    verifier.truncate(len);
    verifier
}

/// The S256 challenge of `verifier` (RFC 7636 §4.2).
fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// An authorization request of `client_id` for `openid offline_access` to
/// [`REDIRECT`], with `extra` added (or replacing a parameter of that name).
fn authorize_path(client_id: &str, extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", "openid offline_access"),
    ];
    for (name, value) in extra {
        pairs.retain(|(n, _)| n != name);
        pairs.push((name, value));
    }
    format!(
        "/v1/oidc/authorize?{}",
        serde_urlencoded::to_string(&pairs).unwrap()
    )
}

fn query_of(url: &str) -> HashMap<String, String> {
    Url::parse(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .query_pairs()
        .into_owned()
        .collect()
}

/// The code an authorization request at `path` brings back: signing in with
/// `email` on the way, or with the browser's session.
async fn code_for(
    app: &TestApp,
    browser: &mut PageBrowser<'_>,
    path: &str,
    email: Option<&str>,
) -> String {
    let back = match email {
        Some(email) => sign_in_for(browser, &app.url(path), email).await,
        None => until_app(browser, path).await,
    };
    assert!(back.starts_with(REDIRECT), "{back}");
    query_of(&back)
        .remove("code")
        .unwrap_or_else(|| panic!("no code: {back}"))
}

/// Posts a form to `path`, authenticating with HTTP Basic when `basic` is set;
/// the status, the headers and the body.
async fn post_form(
    app: &TestApp,
    path: &str,
    basic: Option<(&str, &str)>,
    fields: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let mut request = app.client.post(app.url(path)).form(fields);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"))
    };
    (status, headers, value)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// RFC 6749 §5.1: an answer holding a token is never stored.
fn assert_no_store(headers: &HeaderMap, what: &str) {
    assert_eq!(header(headers, "cache-control"), "no-store", "{what}");
    assert_eq!(header(headers, "pragma"), "no-cache", "{what}");
}

/// Exchanges `code` at the token endpoint for a confidential client.
async fn exchange(app: &TestApp, client: &Value, code: &str) -> Value {
    let id = id_of(client);
    let secret = client["client_secret"].as_str().expect("a secret");
    let (status, _, tokens) = post_form(
        app,
        "/v1/auth/token",
        Some((&id, secret)),
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens
}

fn text<'v>(value: &'v Value, name: &str) -> &'v str {
    value[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {value}"))
}

e2e! {
    /// Discovery §3, §4 and RFC 8414 §2, §3: the metadata, at the issuer's own
    /// URL, names that URL as issuer, says what OpenID Connect requires it to
    /// (code, public subjects, RS256), omits empty lists; the JWKS publishes
    /// public signing keys only.
    async fn discovery_names_its_own_url_and_what_openid_connect_requires(backend) {
        let app = spawn_app_on(backend).await;
        let issuer = issuer(&app);
        let parsed = Url::parse(&issuer).unwrap();
        assert!(parsed.query().is_none() && parsed.fragment().is_none());
        for path in ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"] {
            let response = app.client.get(format!("{issuer}{path}")).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert!(header(response.headers(), "content-type").starts_with("application/json"));
            let meta = body(response).await;
            assert_eq!(meta["issuer"], issuer, "{path}: the URL it was fetched from");
            for field in [
                "authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint",
                "revocation_endpoint", "introspection_endpoint", "end_session_endpoint",
            ] {
                let url = meta[field].as_str().unwrap_or_else(|| panic!("{field}: {meta}"));
                assert!(url.starts_with(&format!("{issuer}/")), "{field}: {url}");
                assert!(Url::parse(url).unwrap().fragment().is_none(), "{field}: {url}");
            }
            let has = |field: &str, value: &str| {
                meta[field]
                    .as_array()
                    .unwrap_or_else(|| panic!("{field}: {meta}"))
                    .iter()
                    .any(|v| v == value)
            };
            assert!(has("response_types_supported", "code"));
            assert!(has("subject_types_supported", "public"));
            assert!(has("id_token_signing_alg_values_supported", "RS256"));
            assert!(!has("id_token_signing_alg_values_supported", "none"));
            assert!(has("code_challenge_methods_supported", "S256"));
            assert!(has("token_endpoint_auth_methods_supported", "client_secret_basic"));
            assert!(has("grant_types_supported", "authorization_code"));
            for (name, value) in meta.as_object().unwrap() {
                assert!(value.as_array().is_none_or(|list| !list.is_empty()), "{name} is empty");
            }
        }
        let jwks = body(app.call(Method::GET, "/v1/oidc/jwks", None, None).await).await;
        let keys = jwks["keys"].as_array().expect("keys");
        assert!(keys.iter().any(|k| k["alg"] == "RS256"), "{jwks}");
        for key in keys {
            assert!(key["kid"].is_string() && key["alg"].is_string(), "{key}");
            assert_eq!(key["use"], "sig", "{key}");
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(key.get(private).is_none(), "{private} published: {key}");
            }
        }
    }
}

e2e! {
    /// OpenID Connect Core §2, §3.1.3.3, §5.3, §12.2, §15.1 and RFC 6749 §5.1,
    /// RFC 6750 §3: the ID token's claims (aud, azp, iat, exp, the nonce exactly,
    /// auth_time when max_age was asked), token answers never stored, parameters
    /// every OP must take without error, a refreshed ID token that keeps the
    /// sign-in's claims, userinfo by GET and POST with the ID token's sub, and
    /// its refusals with their challenges.
    async fn id_tokens_token_answers_and_userinfo_hold_openid_connect_core(backend) {
        let app = spawn_app_on(backend).await;
        let registered = client(&app, json!({})).await;
        let client_id = id_of(&registered);
        let secret = text(&registered, "client_secret").to_owned();
        let mut rp = relying_party(&app, &registered, "client_secret_basic", "RS256").await;
        let (user_id, email) = account(&app).await;
        let mut browser = PageBrowser::new(&app);

        // Characters a URL escapes, and non-ASCII: the nonce comes back as sent.
        let nonce = "n-0S6_WzA2Mj/+=&? ü 한";
        let verifier = verifier(64);
        let challenge = challenge_of(&verifier);
        let path = authorize_path(&client_id, &[
            ("scope", "openid email offline_access"), ("nonce", nonce), ("state", "st"),
            ("max_age", "600"), ("code_challenge", &challenge), ("code_challenge_method", "S256"),
            // §15.1: display, ui_locales, claims_locales and acr_values must not
            // make an error.
            ("display", "page"), ("ui_locales", "ko en"), ("claims_locales", "ko"),
            ("acr_values", "1"),
        ]);
        let before = chrono::Utc::now().timestamp();
        let code = code_for(&app, &mut browser, &path, Some(&email)).await;
        // The exchange comes in a later second than the sign-in, so an ID token
        // naming the exchange as the authentication would show (§12.2 below).
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let (status, headers, tokens) = post_form(&app, "/v1/auth/token", Some((&client_id, &secret)), &[
            ("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ]).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert_no_store(&headers, "the code's tokens");
        assert!(text(&tokens, "token_type").eq_ignore_ascii_case("bearer"), "{tokens}");
        assert!(tokens["expires_in"].as_u64().is_some_and(|s| s > 0), "{tokens}");
        assert_eq!(tokens["scope"], "email offline_access openid");

        let id_token = text(&tokens, "id_token").to_owned();
        let verified = rp.ok("verify", json!({"token": id_token})).await;
        assert_eq!(verified["header"]["alg"], "RS256");
        let claims = verified["payload"].clone();
        assert_eq!(claims["iss"], issuer(&app));
        assert_eq!(claims["sub"], user_id.to_string());
        let sub = text(&claims, "sub");
        assert!(sub.len() <= 255 && sub.is_ascii(), "{sub}");
        match &claims["aud"] {
            Value::String(aud) => assert_eq!(aud, &client_id),
            Value::Array(auds) => assert!(auds.iter().any(|a| a == &json!(client_id))),
            other => panic!("aud: {other}"),
        }
        assert_eq!(claims["azp"], client_id);
        let now = chrono::Utc::now().timestamp();
        let iat = claims["iat"].as_i64().expect("iat");
        assert!((before - 5..=now + 5).contains(&iat), "iat {iat}");
        assert!(claims["exp"].as_i64().expect("exp") > iat);
        assert_eq!(claims["nonce"], nonce, "the nonce exactly");
        let auth_time = claims["auth_time"].as_i64().expect("auth_time, as max_age was asked");
        assert!((before - 1..=iat).contains(&auth_time), "auth_time {auth_time}");

        // §12.2: a refresh's ID token keeps iss, sub, aud, azp and the original
        // authentication's auth_time (the sign-in, not the code's exchange), and
        // has no nonce.
        let (status, headers, refreshed) = post_form(&app, "/v1/auth/token", Some((&client_id, &secret)), &[
            ("grant_type", "refresh_token"), ("refresh_token", text(&tokens, "refresh_token")),
        ]).await;
        assert_eq!(status, StatusCode::OK, "{refreshed}");
        assert_no_store(&headers, "the refresh's tokens");
        let again = rp.ok("verify", json!({"token": text(&refreshed, "id_token")})).await["payload"].clone();
        for claim in ["iss", "sub", "aud", "azp"] {
            assert_eq!(again[claim], claims[claim], "{claim}");
        }
        assert_eq!(again["auth_time"], auth_time, "the sign-in's time: {again}");
        assert!(again.get("nonce").is_none(), "{again}");
        assert!(again["iat"].as_i64().unwrap() >= iat);

        // §5.3: GET and POST, the ID token's sub, never stored.
        let access = text(&refreshed, "access_token").to_owned();
        for method in [Method::GET, Method::POST] {
            let response = app.client.request(method.clone(), app.url("/v1/oidc/userinfo"))
                .bearer_auth(&access).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{method}");
            assert_eq!(header(response.headers(), "cache-control"), "no-store");
            let info = body(response).await;
            assert_eq!(info["sub"], claims["sub"], "{method}");
            assert_eq!(info["email"], email);
        }
        // RFC 6750 §3: no token, a bad one, and an ID token (no access token,
        // RFC 9068 §4's `typ` rule) are 401 with the Bearer challenge.
        let response = app.client.get(app.url("/v1/oidc/userinfo")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(header(response.headers(), "www-authenticate").starts_with("Bearer"));
        for (token, what) in [("v4.public.nope", "garbage"), (id_token.as_str(), "an ID token")] {
            let response = app.client.get(app.url("/v1/oidc/userinfo"))
                .bearer_auth(token).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
            let challenge = header(response.headers(), "www-authenticate");
            assert!(challenge.starts_with("Bearer") && challenge.contains("invalid_token"), "{what}: {challenge}");
        }
        // A token narrowed to a scope without openid: no ID token, and userinfo
        // is 403 insufficient_scope.
        let (status, _, narrowed) = post_form(&app, "/v1/auth/token", Some((&client_id, &secret)), &[
            ("grant_type", "refresh_token"), ("refresh_token", text(&refreshed, "refresh_token")),
            ("scope", "offline_access"),
        ]).await;
        assert_eq!(status, StatusCode::OK, "{narrowed}");
        assert_eq!(narrowed["scope"], "offline_access");
        assert!(narrowed.get("id_token").is_none(), "{narrowed}");
        let response = app.client.get(app.url("/v1/oidc/userinfo"))
            .bearer_auth(text(&narrowed, "access_token")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(header(response.headers(), "www-authenticate").contains("insufficient_scope"));
        // RFC 6749 §6: a refresh never widens the scope.
        let (status, _, wider) = post_form(&app, "/v1/auth/token", Some((&client_id, &secret)), &[
            ("grant_type", "refresh_token"), ("refresh_token", text(&narrowed, "refresh_token")),
            ("scope", "openid email profile"),
        ]).await;
        assert_eq!((status, wider["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_scope")));
        // Refused before the rotation: the refresh token still works, and the
        // session kept its whole grant.
        let (status, _, whole) = post_form(&app, "/v1/auth/token", Some((&client_id, &secret)), &[
            ("grant_type", "refresh_token"), ("refresh_token", text(&narrowed, "refresh_token")),
        ]).await;
        assert_eq!(status, StatusCode::OK, "{whole}");
        assert_eq!(whole["scope"], "email offline_access openid");

        // A service account's client-credentials answer is never stored either.
        let (_, owner) = app.new_user().await;
        let org = app.new_organization(&owner).await;
        let (account_id, account_secret) =
            app.new_service_account(&owner, &org, "worker", json!(["member"])).await;
        let (status, headers, _) = post_form(&app, "/v1/auth/token", Some((&account_id, &account_secret)), &[
            ("grant_type", "client_credentials"),
        ]).await;
        assert_eq!(status, StatusCode::OK);
        assert_no_store(&headers, "client credentials");
    }
}

e2e! {
    /// RFC 7636 §4.1, §4.3, §4.4.1, §4.6 and RFC 6749 §3.1, §3.2.1, §4.1.3,
    /// §5.2, and OpenID Connect Core §3.1.2.1: a verifier of 43 to 128
    /// unreserved characters, the right one, and the code's client and redirect
    /// URI; a confidential client authenticates; empty parameters count as
    /// omitted, a parameter twice is refused; the authorization endpoint takes
    /// POST.
    async fn pkce_and_the_codes_bindings_hold_at_the_token_endpoint(backend) {
        let app = spawn_app_on(backend).await;
        let public = client(&app, json!({"confidential": false})).await;
        let public_id = id_of(&public);
        let other_public = id_of(&client(&app, json!({"confidential": false})).await);
        let confidential = client(&app, json!({})).await;
        let confidential_id = id_of(&confidential);
        let (_, email) = account(&app).await;
        let mut browser = PageBrowser::new(&app);
        let exchange = |client_id: String, code: String, verifier: Option<String>, redirect: Option<&'static str>| {
            let app = &app;
            async move {
                let mut fields = vec![
                    ("grant_type", "authorization_code".to_owned()), ("code", code),
                    ("client_id", client_id),
                ];
                if let Some(verifier) = verifier {
                    fields.push(("code_verifier", verifier));
                }
                if let Some(redirect) = redirect {
                    fields.push(("redirect_uri", redirect.to_owned()));
                }
                let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let (status, _, answer) = post_form(app, "/v1/auth/token", None, &fields).await;
                (status, answer)
            }
        };

        // Each verifier with its own S256 challenge: only 43 to 128 unreserved
        // characters are a verifier.
        let mut sign_in = Some(email.as_str());
        for (verifier, taken) in [
            (verifier(42), false),
            (verifier(129), false),
            (format!("{}+", verifier(42)), false),
            (format!("{} ", verifier(42)), false),
            (verifier(43), true),
            (verifier(128), true),
        ] {
            let challenge = challenge_of(&verifier);
            let path = authorize_path(&public_id, &[
                ("code_challenge", &challenge), ("code_challenge_method", "S256"),
            ]);
            let code = code_for(&app, &mut browser, &path, sign_in.take()).await;
            let (status, answer) = exchange(public_id.clone(), code, Some(verifier.clone()), Some(REDIRECT)).await;
            if taken {
                assert_eq!(status, StatusCode::OK, "{} characters: {answer}", verifier.len());
            } else {
                assert_eq!(
                    (status, answer["error"].as_str()),
                    (StatusCode::BAD_REQUEST, Some("invalid_grant")),
                    "{verifier:?}"
                );
            }
        }

        // A wrong verifier, none, no redirect_uri, another public client's id:
        // each refused.
        let right = verifier(50);
        let challenge = challenge_of(&right);
        let path = authorize_path(&public_id, &[("code_challenge", &challenge), ("code_challenge_method", "S256")]);
        for (client_id, verifier, redirect, what) in [
            (&public_id, Some(verifier(50)), Some(REDIRECT), "a wrong verifier"),
            (&public_id, None, Some(REDIRECT), "no verifier"),
            (&public_id, Some(right.clone()), None, "no redirect_uri"),
            (&other_public, Some(right.clone()), Some(REDIRECT), "another client"),
        ] {
            let code = code_for(&app, &mut browser, &path, None).await;
            let (status, answer) = exchange(client_id.clone(), code, verifier, redirect).await;
            assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{what}");
        }

        // A code past its lifetime (RFC 6749 §4.1.2: codes expire shortly) is
        // refused, its verifier right and all.
        let code = code_for(&app, &mut browser, &path, None).await;
        let aged = app.db().execute(
            "UPDATE oidc_authorization_codes SET expires_at = '2000-01-01 00:00:00+00:00' \
             WHERE redeemed_at IS NULL",
            &[],
        ).await.expect("the code ages");
        assert_eq!(aged, 1);
        let (status, answer) = exchange(public_id.clone(), code, Some(right.clone()), Some(REDIRECT)).await;
        assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "an expired code");

        // A confidential client's id alone is no authentication.
        let code = code_for(&app, &mut browser, &authorize_path(&confidential_id, &[]), None).await;
        let (status, answer) = exchange(confidential_id.clone(), code, None, Some(REDIRECT)).await;
        assert_eq!((status, answer["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_client")));

        // A public client without a challenge, or with one but no method (which
        // means plain, §4.3), is told invalid_request at its redirect URI.
        for extra in [vec![], vec![("code_challenge", challenge.as_str())]] {
            let page = browser.get(&authorize_path(&public_id, &extra)).await;
            assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
            assert!(page.location().starts_with(REDIRECT));
            assert_eq!(query_of(page.location())["error"], "invalid_request");
        }

        // OpenID Connect Core §3.1.2.1: prompt=none with another value is an
        // error; max_age=0 (as prompt=login) asks a signed-in user again.
        let page = browser.get(&authorize_path(&confidential_id, &[("prompt", "none login")])).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(query_of(page.location())["error"], "invalid_request");
        let (_, at) = until_page(&mut browser, &authorize_path(&confidential_id, &[("max_age", "0")])).await;
        assert!(at.starts_with("/sign-in"), "{at}");
        // A max_age beyond any clock's range is no limit, not a failure.
        let back = until_app(&mut browser, &authorize_path(&confidential_id, &[
            ("max_age", "9223372036854775807"),
        ])).await;
        assert!(query_of(&back).contains_key("code"), "{back}");

        // `state=` is as if omitted; an unknown parameter is ignored.
        let back = until_app(&mut browser, &authorize_path(&confidential_id, &[
            ("state", ""), ("unknown_parameter", "x"),
        ])).await;
        let query = query_of(&back);
        assert!(query.contains_key("code") && !query.contains_key("state"), "{back}");
        // A parameter twice is refused, not guessed at.
        let twice = format!("{}&scope=openid", authorize_path(&confidential_id, &[]));
        let page = browser.get(&twice).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.html);

        // The authorization endpoint takes the request as a form post too.
        let posted = browser.post("/v1/oidc/authorize", &[
            ("response_type", "code"), ("client_id", &confidential_id),
            ("redirect_uri", REDIRECT), ("scope", "openid"), ("state", "posted"),
        ]).await;
        assert_eq!(posted.status, StatusCode::SEE_OTHER, "{}", posted.html);
        let query = query_of(posted.location());
        assert!(query.contains_key("code"), "{}", posted.location());
        assert_eq!(query["state"], "posted");

        // An unknown grant type.
        let (status, _, answer) = post_form(&app, "/v1/auth/token", None, &[
            ("grant_type", "password"), ("client_id", &confidential_id),
        ]).await;
        assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some("unsupported_grant_type")));
    }
}

e2e! {
    /// RFC 7662 §2.1–2.3 and RFC 7009 §2.1–2.2: both endpoints authenticate
    /// the client (401 invalid_client, the Basic challenge after Basic); a
    /// public client may not introspect; the answer's members have RFC 7662's
    /// types, are never stored, and equal `validate`'s for the same token; a
    /// hint only orders the search; another client's revocation is refused and
    /// changes nothing.
    async fn introspection_and_revocation_authenticate_and_answer_as_their_rfcs_say(backend) {
        let app = spawn_app_on(backend).await;
        let owner = client(&app, json!({})).await;
        let (owner_id, owner_secret) = (id_of(&owner), text(&owner, "client_secret").to_owned());
        let resource = client(&app, json!({})).await;
        let (resource_id, resource_secret) = (id_of(&resource), text(&resource, "client_secret").to_owned());
        let public_id = id_of(&client(&app, json!({"confidential": false})).await);
        let (user_id, email) = account(&app).await;
        let mut browser = PageBrowser::new(&app);
        let code = code_for(&app, &mut browser, &authorize_path(&owner_id, &[]), Some(&email)).await;
        let tokens = exchange(&app, &owner, &code).await;
        let access = text(&tokens, "access_token").to_owned();
        let refresh = text(&tokens, "refresh_token").to_owned();
        let by_resource = Some((resource_id.as_str(), resource_secret.as_str()));

        // Without credentials, with a wrong secret in Basic, as a public client.
        for path in ["/v1/oidc/introspect", "/v1/oidc/revoke"] {
            let (status, _, answer) = post_form(&app, path, None, &[("token", &access)]).await;
            assert_eq!((status, answer["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_client")), "{path}");
            let (status, headers, answer) =
                post_form(&app, path, Some((&resource_id, "wrong")), &[("token", &access)]).await;
            assert_eq!((status, answer["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_client")), "{path}");
            assert!(header(&headers, "www-authenticate").starts_with("Basic"), "{path}");
        }
        let (status, _, answer) = post_form(&app, "/v1/oidc/introspect", None, &[
            ("token", &access), ("client_id", &public_id),
        ]).await;
        assert_eq!((status, answer["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_client")));

        // An active access token, by a resource server (another client).
        let (status, headers, answer) =
            post_form(&app, "/v1/oidc/introspect", by_resource, &[("token", &access)]).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(header(&headers, "cache-control"), "no-store");
        assert_eq!(answer["active"], true);
        assert_eq!(answer["token_type"], "Bearer");
        for name in ["scope", "client_id", "sub", "iss", "jti"] {
            assert!(answer[name].is_string(), "{name}: {answer}");
        }
        for name in ["exp", "iat"] {
            assert!(answer[name].is_i64(), "{name}: {answer}");
        }
        assert!(answer["aud"].is_string() || answer["aud"].as_array().is_some_and(|a| a.iter().all(Value::is_string)));
        assert_eq!(answer["client_id"], owner_id);
        assert_eq!(answer["sub"], user_id.to_string());
        assert_eq!(answer["scope"], "offline_access openid");
        assert_eq!(validate(&app, &access).await, answer, "validate answers the same");

        // A hint orders the search; it never ends it (RFC 7662 §2.1, RFC 7009 §2.1).
        let (_, _, answer) = post_form(&app, "/v1/oidc/introspect", by_resource, &[
            ("token", &access), ("token_type_hint", "refresh_token"),
        ]).await;
        assert_eq!((answer["active"].as_bool(), answer["token_type"].as_str()), (Some(true), Some("Bearer")));
        let (_, _, answer) = post_form(&app, "/v1/oidc/introspect", by_resource, &[
            ("token", &refresh), ("token_type_hint", "access_token"),
        ]).await;
        assert_eq!(answer["active"], true, "{answer}");
        assert_eq!(answer["client_id"], owner_id);
        assert!(answer.get("token_type").is_none(), "a refresh token has no RFC 6749 §7.1 type: {answer}");
        let (_, _, answer) = post_form(&app, "/v1/oidc/introspect", by_resource, &[("token", "klr_nothing")]).await;
        assert_eq!(answer, json!({"active": false}));

        // Another client's revocation is refused (RFC 7009 §2.1), and the token
        // stays its owner's: the refresh token and the access token alike.
        for token in [&refresh, &access] {
            let (status, headers, refused) = post_form(&app, "/v1/oidc/revoke", by_resource, &[("token", token)]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
            assert_eq!(refused["error"], "unauthorized_client", "{refused}");
            assert_eq!(header(&headers, "cache-control"), "no-store");
        }
        assert_eq!(validate(&app, &access).await["active"], true);
        let (status, _, refreshed) = post_form(&app, "/v1/auth/token", Some((&owner_id, &owner_secret)), &[
            ("grant_type", "refresh_token"), ("refresh_token", &refresh),
        ]).await;
        assert_eq!(status, StatusCode::OK, "{refreshed}");

        // The owner revokes its refresh token under the wrong hint: found all the
        // same, and the session ends.
        let (status, _, _) = post_form(&app, "/v1/oidc/revoke", Some((&owner_id, &owner_secret)), &[
            ("token", text(&refreshed, "refresh_token")), ("token_type_hint", "access_token"),
        ]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(validate(&app, text(&refreshed, "access_token")).await["active"], false);
        let (_, _, answer) = post_form(&app, "/v1/oidc/introspect", by_resource, &[
            ("token", text(&refreshed, "refresh_token")),
        ]).await;
        assert_eq!(answer, json!({"active": false}));
    }
}

e2e! {
    /// RFC 9068 §2.1, §2.2, §4: a JWT access token signed with RS256 (which the
    /// RFC makes mandatory to implement), typed `at+jwt`, with iss, exp, aud,
    /// sub, client_id, iat and jti, checked by jose from the JWKS; it is never
    /// an ID token hint, and an ID token is never an access token.
    async fn jwt_access_tokens_are_rfc_9068_and_never_pass_for_id_tokens(backend) {
        let app = spawn_app_on(backend).await;
        let registered = client(&app, json!({"access_token_format": "jwt", "access_token_alg": "RS256"})).await;
        assert_eq!(registered["access_token_alg"], "RS256");
        let client_id = id_of(&registered);
        let mut rp = relying_party(&app, &registered, "client_secret_basic", "RS256").await;
        let (user_id, email) = account(&app).await;
        let mut browser = PageBrowser::new(&app);
        let started = rp.ok("authorize", json!({"scope": "openid email"})).await;
        let callback = sign_in_for(&mut browser, text(&started, "url"), &email).await;
        let signed_in = rp.ok("callback", json!({"url": callback})).await;
        let verified = &signed_in["verified"]["access_token"];
        assert_eq!(verified["header"]["typ"], "at+jwt");
        assert_eq!(verified["header"]["alg"], "RS256");
        let claims = &verified["payload"];
        for name in ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"] {
            assert!(!claims[name].is_null(), "{name}: {claims}");
        }
        assert_eq!(claims["iss"], issuer(&app));
        assert_eq!(claims["sub"], user_id.to_string());
        assert_eq!(claims["client_id"], client_id);
        assert_eq!(claims["scope"], "email openid");
        assert!(claims["exp"].as_i64() > claims["iat"].as_i64());

        let jwt = text(&signed_in["tokens"], "access_token").to_owned();
        let id_token = text(&signed_in["tokens"], "id_token").to_owned();
        let validated = validate(&app, &jwt).await;
        assert_eq!((validated["active"].as_bool(), validated["token_type"].as_str()), (Some(true), Some("Bearer")));
        // An ID token is no access token, anywhere.
        assert_eq!(validate(&app, &id_token).await, json!({"active": false}));
        let me = app.call(Method::GET, "/v1/auth/me", Some(&id_token), None).await;
        assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
        // A JWT access token is no ID token hint: refused, nothing ended.
        let hint = serde_urlencoded::to_string([("id_token_hint", &jwt)]).unwrap();
        let page = browser.get(&format!("/v1/oidc/logout?{hint}")).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.html);
        assert_eq!(validate(&app, &jwt).await["active"], true);
        // The ID token is one: the app's session ends, and the browser's (the
        // same user's).
        let hint = serde_urlencoded::to_string([("id_token_hint", &id_token)]).unwrap();
        let page = browser.get(&format!("/v1/oidc/logout?{hint}")).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(validate(&app, &jwt).await["active"], false);
        assert_eq!(browser.get("/account").await.status, StatusCode::SEE_OTHER);
    }
}

e2e! {
    /// RP-Initiated Logout 1.0 §2–§4: without an ID token of the signed-in user
    /// the provider asks first (a hosted page, in the reader's language or
    /// `ui_locales`), and only the confirmation, posted from that page with its
    /// form token, ends the browser's session, then returns to a registered
    /// post-logout URI with `state` or shows the signed-out page. A browser
    /// not signed in goes straight on. With the user's own ID token (by GET or
    /// POST) nothing is asked; a hint whose client is not the named one, or an
    /// unregistered return URI, is refused before anything ends.
    async fn logout_without_the_users_id_token_asks_before_signing_out(backend) {
        let app = spawn_app_on(backend).await;
        let registered = client(&app, json!({})).await;
        let client_id = id_of(&registered);
        let other_client = id_of(&client(&app, json!({})).await);
        let (_, email) = account(&app).await;
        let mut browser = PageBrowser::new(&app);
        let signed_in = |page: &keyledger_e2e::pages::Page| page.status == StatusCode::OK;
        let code = code_for(&app, &mut browser, &authorize_path(&client_id, &[]), Some(&email)).await;
        let tokens = exchange(&app, &registered, &code).await;
        let access = text(&tokens, "access_token").to_owned();

        let request = serde_urlencoded::to_string([
            ("client_id", client_id.as_str()), ("post_logout_redirect_uri", AFTER_LOGOUT),
            ("state", "s1"),
        ]).unwrap();
        let logout = format!("/v1/oidc/logout?{request}");
        let page = browser.get(&logout).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        assert!(page.html.contains("Sign out of"), "{}", page.html);
        assert!(page.html.contains(&email), "the page names the account");
        assert!(page.html.contains("action=\"/v1/oidc/logout\""));
        assert!(page.policy().contains("form-action 'self' https://app.example.com"), "{}", page.policy());
        assert!(signed_in(&browser.get("/account").await), "asking ends nothing");
        assert_eq!(validate(&app, &access).await["active"], true);
        let korean = browser.get(&format!("{logout}&ui_locales=ko")).await;
        assert!(korean.html.contains("로그아웃할까요"), "{}", korean.html);

        // Only this server's page, with its token, confirms.
        let token = page.form_token();
        let confirm = [
            ("confirm", "yes"), ("client_id", client_id.as_str()),
            ("post_logout_redirect_uri", AFTER_LOGOUT), ("state", "s1"),
        ];
        let mut fields = confirm.to_vec();
        fields.push(("csrf_token", &token));
        let mut elsewhere = PageBrowser::new(&app);
        elsewhere.cookies = browser.cookies.clone();
        elsewhere.origin = "https://evil.example".into();
        assert_eq!(elsewhere.post("/v1/oidc/logout", &fields).await.status, StatusCode::FORBIDDEN);
        assert_eq!(browser.post("/v1/oidc/logout", &confirm).await.status, StatusCode::FORBIDDEN);
        assert!(signed_in(&browser.get("/account").await), "a forged confirmation ends nothing");

        // Only `yes` confirms: anything else is a logout request, asked again.
        let mut declined = fields.clone();
        declined[0] = ("confirm", "no");
        let asked = browser.post("/v1/oidc/logout", &declined).await;
        assert_eq!(asked.status, StatusCode::OK, "{}", asked.html);
        assert!(signed_in(&browser.get("/account").await), "only yes confirms");

        let done = browser.post("/v1/oidc/logout", &fields).await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.html);
        assert_eq!(done.location(), format!("{AFTER_LOGOUT}?state=s1"));
        assert!(!signed_in(&browser.get("/account").await), "signed out of the pages");
        // Not signed in: nothing to ask.
        let page = browser.get(&logout).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(page.location(), format!("{AFTER_LOGOUT}?state=s1"));

        // Without an app to return to: the signed-out page.
        let code = code_for(&app, &mut browser, &authorize_path(&client_id, &[]), Some(&email)).await;
        let own = exchange(&app, &registered, &code).await;
        let page = browser.get("/v1/oidc/logout").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        let token = page.form_token();
        let done = browser.post("/v1/oidc/logout", &[("confirm", "yes"), ("csrf_token", &token)]).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.html);
        assert!(done.html.contains("id=\"logout-done\""), "{}", done.html);
        assert!(!signed_in(&browser.get("/account").await));

        // Another user's ID token: that app session ends, this browser's user is asked.
        let code = code_for(&app, &mut browser, &authorize_path(&client_id, &[]), Some(&email)).await;
        let mine = exchange(&app, &registered, &code).await;
        let (_, other_email) = account(&app).await;
        let mut other_browser = PageBrowser::new(&app);
        let code = code_for(&app, &mut other_browser, &authorize_path(&client_id, &[]), Some(&other_email)).await;
        let theirs = exchange(&app, &registered, &code).await;
        let hint = serde_urlencoded::to_string([
            ("id_token_hint", text(&theirs, "id_token")), ("post_logout_redirect_uri", AFTER_LOGOUT),
        ]).unwrap();
        let page = browser.get(&format!("/v1/oidc/logout?{hint}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        assert!(page.html.contains("Sign out of"));
        assert_eq!(validate(&app, text(&theirs, "access_token")).await["active"], false);
        assert!(signed_in(&browser.get("/account").await));

        // A hint whose audience is not the named client, an unregistered return
        // URI: refused, nothing ended.
        for query in [
            serde_urlencoded::to_string([("id_token_hint", text(&mine, "id_token")), ("client_id", &other_client)]).unwrap(),
            serde_urlencoded::to_string([("client_id", client_id.as_str()), ("post_logout_redirect_uri", "https://evil.example/")]).unwrap(),
        ] {
            let page = browser.get(&format!("/v1/oidc/logout?{query}")).await;
            assert_eq!(page.status, StatusCode::BAD_REQUEST, "{query}: {}", page.html);
        }
        assert_eq!(validate(&app, text(&mine, "access_token")).await["active"], true);
        assert!(signed_in(&browser.get("/account").await));

        // The user's own ID token, as a form post: no question, both sessions end.
        let posted = browser.post("/v1/oidc/logout", &[
            ("id_token_hint", text(&mine, "id_token")), ("post_logout_redirect_uri", AFTER_LOGOUT),
            ("state", "s2"),
        ]).await;
        assert_eq!(posted.status, StatusCode::SEE_OTHER, "{}", posted.html);
        assert_eq!(posted.location(), format!("{AFTER_LOGOUT}?state=s2"));
        assert_eq!(validate(&app, text(&mine, "access_token")).await["active"], false);
        assert!(!signed_in(&browser.get("/account").await));
        // A confirmed logout ended the browser's session only: the app's own
        // lasts until the app asks.
        assert_eq!(validate(&app, text(&own, "access_token")).await["active"], true);
    }
}
