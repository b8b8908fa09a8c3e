//! Keyledger as an OpenID provider, on both back ends, with a relying-party
//! library we did not write (openid-client) doing discovery, the code flow with
//! PKCE, ID-token validation, userinfo, refresh, introspection, revocation and
//! logout, and an independent JOSE library (jose) verifying every JWT from the
//! published JWKS alone. The test plays the browser: the hosted sign-in page,
//! the consent page, the redirects.

use keyledger_e2e::oidc::{RelyingParty, RelyingPartyClient};
use keyledger_e2e::pages::{Page, PageBrowser};
use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use url::Url;
use uuid::Uuid;

pub(crate) const REDIRECT: &str = "https://app.example.com/callback";
pub(crate) const AFTER_LOGOUT: &str = "https://app.example.com/signed-out";

/// Registers a client as a platform administrator; the registration's answer
/// (`client_id`, and `client_secret` for a confidential client).
pub(crate) async fn client(app: &TestApp, settings: Value) -> Value {
    let (admin, token) = app.new_user().await;
    app.make_platform_admin(admin).await;
    let mut request = json!({
        "name": "Example app",
        "redirect_uris": [REDIRECT],
        "post_logout_redirect_uris": [AFTER_LOGOUT],
        "scopes": ["openid", "profile", "email", "offline_access"],
        "grant_types": ["authorization_code", "refresh_token"],
        "first_party": true,
    });
    for (key, value) in settings.as_object().expect("settings") {
        request[key] = value.clone();
    }
    let response = app
        .call(
            Method::POST,
            "/v1/oidc/clients",
            Some(&token),
            Some(&request),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    body(response).await
}

pub(crate) fn id_of(client: &Value) -> String {
    client["client_id"].as_str().expect("client_id").to_owned()
}

/// The issuer: the test server's URL without its trailing slash.
pub(crate) fn issuer(app: &TestApp) -> String {
    app.address.trim_end_matches('/').to_owned()
}

/// The app `registered` (a registration's answer) as openid-client, with
/// discovery done: `auth_method` is `client_secret_basic`,
/// `client_secret_post` or `none`; `id_token_alg` the client's.
pub(crate) async fn relying_party(
    app: &TestApp,
    registered: &Value,
    auth_method: &str,
    id_token_alg: &str,
) -> RelyingParty {
    RelyingParty::start(
        &issuer(app),
        RelyingPartyClient {
            client_id: registered["client_id"].as_str().expect("client_id"),
            secret: registered["client_secret"].as_str(),
            auth_method,
            redirect_uri: REDIRECT,
            id_token_alg,
        },
    )
    .await
}

/// The path and query of a URL on the test server.
pub(crate) fn local(url: &str) -> String {
    let url = Url::parse(url).expect("a URL");
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

/// Follows the server's redirects from `path` in `browser` until one leaves
/// for the app (returned) or a page answers (panics with it).
pub(crate) async fn until_app(browser: &mut PageBrowser<'_>, path: &str) -> String {
    let mut next = path.to_owned();
    for _ in 0..10 {
        let page = browser.get(&next).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{next}: {}", page.html);
        let location = page.location().to_owned();
        if location.starts_with("https://app.example.com/") {
            return location;
        }
        next = location;
    }
    panic!("ten redirects from {path} and none to the app");
}

/// Follows redirects from `path` until a page answers 200; returns it and the
/// path it was at.
pub(crate) async fn until_page(browser: &mut PageBrowser<'_>, path: &str) -> (Page, String) {
    let mut next = path.to_owned();
    for _ in 0..10 {
        let page = browser.get(&next).await;
        if page.status == StatusCode::OK {
            return (page, next);
        }
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{next}: {}", page.html);
        next = page.location().to_owned();
        assert!(
            !next.starts_with("https://"),
            "left for {next} before a page"
        );
    }
    panic!("ten redirects from {path} and no page");
}

/// Signs in on the sign-in page an authorization request led to; the app URL
/// the browser ends at.
pub(crate) async fn sign_in_for(
    browser: &mut PageBrowser<'_>,
    authorize: &str,
    email: &str,
) -> String {
    let (page, at) = until_page(browser, &local(authorize)).await;
    assert!(at.starts_with("/sign-in"), "{at}");
    let return_to = page.field("return_to").expect("the form's return_to");
    let token = page.form_token();
    let posted = browser
        .post(
            "/sign-in",
            &[
                ("email", email),
                ("password", PASSWORD),
                ("return_to", &return_to),
                ("csrf_token", &token),
            ],
        )
        .await;
    assert_eq!(posted.status, StatusCode::SEE_OTHER, "{}", posted.html);
    let back = posted.location().to_owned();
    until_app(browser, &back).await
}

/// Posts a form to the token endpoint; the status and the body.
pub(crate) async fn token_request(
    app: &TestApp,
    fields: Vec<(&str, String)>,
) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url("/v1/auth/token"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    (response.status(), body(response).await)
}

pub(crate) async fn account(app: &TestApp) -> (Uuid, String) {
    let email = format!("oidc-{}@example.com", Uuid::new_v4().simple());
    let id = app.registered_named(&email, "Ada Lovelace").await;
    (id, email)
}

pub(crate) async fn validate(app: &TestApp, token: &str) -> Value {
    let response = app
        .call(
            Method::POST,
            "/v1/auth/validate",
            None,
            Some(&json!({ "token": token })),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await
}

e2e! {
    /// The whole life of a confidential app's sign-in, as openid-client does it:
    /// discovery, code + PKCE through the hosted sign-in page, an RS256 ID token
    /// (checked by the library and by jose from the JWKS), userinfo, refresh with
    /// rotation and reuse detection, introspection, revocation, and logout back
    /// to the app with its state.
    async fn an_app_signs_in_refreshes_and_signs_out_with_openid_client(backend) {
        let app = spawn_app_on(backend).await;
        let registered = client(&app, json!({})).await;
        let client_id = id_of(&registered);
        let issuer = issuer(&app);
        let mut rp = relying_party(&app, &registered, "client_secret_basic", "RS256").await;
        // Discovery (OpenID Connect Discovery §3, RFC 8414 §2).
        let meta = &rp.metadata;
        assert_eq!(meta["issuer"], issuer);
        assert_eq!(meta["authorization_endpoint"], format!("{issuer}/v1/oidc/authorize"));
        assert_eq!(meta["token_endpoint"], format!("{issuer}/v1/auth/token"));
        assert_eq!(meta["jwks_uri"], format!("{issuer}/v1/oidc/jwks"));
        for (field, value) in [
            ("response_types_supported", "code"),
            ("subject_types_supported", "public"),
            ("id_token_signing_alg_values_supported", "RS256"),
            ("code_challenge_methods_supported", "S256"),
            ("token_endpoint_auth_methods_supported", "client_secret_basic"),
            ("token_endpoint_auth_methods_supported", "client_secret_post"),
        ] {
            let values = meta[field].as_array().unwrap_or_else(|| panic!("{field}"));
            assert!(values.iter().any(|v| v == value), "{field} lacks {value}: {meta}");
        }
        let same = body(app.call(Method::GET, "/.well-known/oauth-authorization-server", None, None).await).await;
        assert_eq!(&same, meta);

        let (user_id, email) = account(&app).await;
        let mut browser = PageBrowser::new(&app);
        let started = rp.ok("authorize", json!({"scope": "openid profile email offline_access"})).await;
        let callback = sign_in_for(&mut browser, started["url"].as_str().unwrap(), &email).await;
        let back = Url::parse(&callback).unwrap();
        let query: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
        assert_eq!(query["iss"], issuer, "RFC 9207: {callback}");
        assert_eq!(query["state"], started["state"].as_str().unwrap());

        let signed_in = rp.ok("callback", json!({"url": callback})).await;
        let claims = &signed_in["claims"];
        assert_eq!(claims["sub"], user_id.to_string());
        assert_eq!(claims["email"], email);
        assert_eq!(claims["email_verified"], false);
        assert_eq!(claims["name"], "Ada Lovelace");
        assert_eq!(claims["amr"], json!(["pwd"]));
        assert_eq!(claims["acr"], "1");
        assert!(claims["auth_time"].as_i64().is_some() && claims["sid"].is_string(), "{claims}");
        let id_token = &signed_in["verified"]["id_token"];
        assert_eq!(id_token["header"]["alg"], "RS256");
        assert!(id_token["header"]["kid"].is_string());
        let tokens = signed_in["tokens"].clone();
        assert_eq!(tokens["token_type"], "bearer", "{tokens}");
        let access = tokens["access_token"].as_str().unwrap().to_owned();
        assert!(access.starts_with("v4.public."), "a first-party format by default: {access}");
        let refresh = tokens["refresh_token"].as_str().expect("a refresh token").to_owned();

        // The PASETO access token works at the platform's checks, naming the app.
        let validated = validate(&app, &access).await;
        assert_eq!(validated["active"], true);

        let info = rp.ok("userinfo", json!({"access_token": access, "sub": user_id.to_string()})).await;
        assert_eq!(info["userinfo"]["email"], email);
        assert_eq!(info["userinfo"]["name"], "Ada Lovelace");

        let introspected = rp.ok("introspect", json!({"token": access})).await["introspection"].clone();
        assert_eq!(introspected["active"], true);
        assert_eq!(introspected["client_id"], client_id);
        assert_eq!(introspected["scope"], "email offline_access openid profile");
        assert_eq!(introspected["sub"], user_id.to_string());

        // Refresh: a new pair; the old refresh token is then reuse, which ends
        // the session (and with it the new tokens).
        let refreshed = rp.ok("refresh", json!({"refresh_token": refresh})).await;
        let next_access = refreshed["tokens"]["access_token"].as_str().unwrap().to_owned();
        let next_refresh = refreshed["tokens"]["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(next_refresh, refresh);
        assert_eq!(refreshed["claims"]["sub"], user_id.to_string());
        let reused = rp.call("refresh", json!({"refresh_token": refresh})).await;
        assert_eq!(reused["error"], "invalid_grant", "{reused}");
        let after = rp.ok("introspect", json!({"token": next_access})).await["introspection"].clone();
        assert_eq!(after, json!({"active": false}));
        let after = rp.ok("introspect", json!({"token": next_refresh, "hint": "refresh_token"})).await;
        assert_eq!(after["introspection"], json!({"active": false}));

        // A new sign-in (the browser is still signed in: no page this time),
        // then revocation of its refresh token ends it.
        let started = rp.ok("authorize", json!({"scope": "openid offline_access"})).await;
        let callback = until_app(&mut browser, &local(started["url"].as_str().unwrap())).await;
        let signed_in = rp.ok("callback", json!({"url": callback})).await;
        let access = signed_in["tokens"]["access_token"].as_str().unwrap().to_owned();
        let refresh = signed_in["tokens"]["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(rp.ok("revoke", json!({"token": refresh, "hint": "refresh_token"})).await["revoked"], true);
        assert_eq!(validate(&app, &access).await["active"], false);
        let gone = rp.call("refresh", json!({"refresh_token": refresh})).await;
        assert_eq!(gone["error"], "invalid_grant", "{gone}");
        // Revoking what is already revoked (or garbage) is still 200 (RFC 7009 §2.2).
        assert_eq!(rp.ok("revoke", json!({"token": "not a token"})).await["revoked"], true);

        // Logout with the ID token: the browser's session ends too, and the
        // browser goes back to the app with its state.
        let id_token = signed_in["tokens"]["id_token"].as_str().unwrap().to_owned();
        let out = rp.ok("logout_url", json!({
            "id_token_hint": id_token,
            "post_logout_redirect_uri": AFTER_LOGOUT,
            "state": "bye",
        })).await;
        let page = browser.get(&local(out["url"].as_str().unwrap())).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(page.location(), format!("{AFTER_LOGOUT}?state=bye"));
        let account_page = browser.get("/account").await;
        assert_eq!(account_page.status, StatusCode::SEE_OTHER, "signed out of the pages too");
        assert!(account_page.location().contains("/sign-in") || account_page.location().contains("/refresh/resume"));
        // A post-logout URI the client did not register is refused, not followed.
        let out = rp.ok("logout_url", json!({
            "id_token_hint": id_token,
            "post_logout_redirect_uri": "https://evil.example/",
        })).await;
        let page = browser.get(&local(out["url"].as_str().unwrap())).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST);
    }
}

e2e! {
    /// A public client (no secret, PKCE required) with JWT access tokens
    /// (RFC 9068, ES256) and EdDSA ID tokens: jose verifies both from the JWKS;
    /// the platform's `validate` and `authorize` take the JWT as they take PASETO,
    /// and revocation ends it.
    async fn a_public_app_gets_jwt_access_tokens_that_the_platform_accepts(backend) {
        let app = spawn_app_on(backend).await;
        let registered = client(&app, json!({
            "confidential": false,
            "access_token_format": "jwt",
            "access_token_alg": "ES256",
            "id_token_alg": "EdDSA",
        })).await;
        assert!(registered.get("client_secret").is_none_or(Value::is_null));
        let client_id = id_of(&registered);
        let issuer = issuer(&app);
        let mut rp = relying_party(&app, &registered, "none", "EdDSA").await;
        let (user_id, email) = account(&app).await;
        let mut browser = PageBrowser::new(&app);

        // Without PKCE a public client is refused, at the app's redirect URI.
        let started = rp.ok("authorize", json!({"scope": "openid", "pkce": false})).await;
        let refused = until_app(&mut browser, &local(started["url"].as_str().unwrap())).await;
        let refused = Url::parse(&refused).unwrap();
        let query: std::collections::HashMap<_, _> = refused.query_pairs().into_owned().collect();
        assert_eq!(query["error"], "invalid_request", "{refused}");
        assert_eq!(query["iss"], issuer);

        let started = rp.ok("authorize", json!({"scope": "openid email offline_access"})).await;
        let callback = sign_in_for(&mut browser, started["url"].as_str().unwrap(), &email).await;
        let signed_in = rp.ok("callback", json!({"url": callback})).await;
        assert_eq!(signed_in["verified"]["id_token"]["header"]["alg"], "EdDSA");
        let access = &signed_in["verified"]["access_token"];
        assert_eq!(access["header"]["alg"], "ES256");
        assert_eq!(access["header"]["typ"], "at+jwt");
        assert_eq!(access["payload"]["sub"], user_id.to_string());
        assert_eq!(access["payload"]["client_id"], client_id);
        assert_eq!(access["payload"]["scope"], "email offline_access openid");
        let jwt = signed_in["tokens"]["access_token"].as_str().unwrap().to_owned();
        assert_eq!(jwt.split('.').count(), 3);

        let validated = validate(&app, &jwt).await;
        assert_eq!(validated["active"], true, "{validated}");
        assert_eq!(validated["sub"], user_id.to_string());
        let me = app.call(Method::GET, "/v1/auth/me", Some(&jwt), None).await;
        assert_eq!(me.status(), StatusCode::OK, "a JWT access token is a bearer token");
        let info = rp.ok("userinfo", json!({"access_token": jwt, "sub": user_id.to_string()})).await;
        assert_eq!(info["userinfo"]["email"], email);
        assert!(info["userinfo"].get("name").is_none(), "no profile scope, no name");

        let refresh = signed_in["tokens"]["refresh_token"].as_str().unwrap().to_owned();
        let refreshed = rp.ok("refresh", json!({"refresh_token": refresh})).await;
        assert_eq!(refreshed["verified"]["access_token"]["header"]["typ"], "at+jwt");
        let next = refreshed["tokens"]["access_token"].as_str().unwrap().to_owned();
        assert_eq!(rp.ok("revoke", json!({"token": next})).await["revoked"], true);
        assert_eq!(validate(&app, &next).await["active"], false);
        let me = app.call(Method::GET, "/v1/auth/me", Some(&next), None).await;
        assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
    }
}

e2e! {
    /// A code works once, for its client, with its redirect URI and its PKCE
    /// verifier; a second presentation ends the session the first one started.
    async fn a_code_works_once_for_its_client_redirect_and_verifier(backend) {
        let app = spawn_app_on(backend).await;
        let registered = client(&app, json!({})).await;
        let client_id = id_of(&registered);
        let secret = registered["client_secret"].as_str().unwrap().to_owned();
        let other = client(&app, json!({})).await;
        let mut rp = relying_party(&app, &registered, "client_secret_post", "RS256").await;
        let (_, email) = account(&app).await;
        let mut browser = PageBrowser::new(&app);
        let started = rp.ok("authorize", json!({"scope": "openid offline_access"})).await;
        let callback = sign_in_for(&mut browser, started["url"].as_str().unwrap(), &email).await;
        let code: String = Url::parse(&callback).unwrap().query_pairs()
            .find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).unwrap();

        // By hand: the wrong redirect URI, then another client, then no verifier.
        let (status, answer) = token_request(&app, vec![
            ("grant_type", "authorization_code".into()), ("code", code.clone()),
            ("redirect_uri", "https://app.example.com/other".into()),
            ("client_id", client_id.clone()), ("client_secret", secret.clone()),
        ]).await;
        assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
        // The code was spent by that refusal: a thief's guess costs the code.
        let (status, answer) = token_request(&app, vec![
            ("grant_type", "authorization_code".into()), ("code", code.clone()),
            ("redirect_uri", REDIRECT.into()),
            ("client_id", id_of(&other)),
            ("client_secret", other["client_secret"].as_str().unwrap().into()),
        ]).await;
        assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));

        // A fresh code: exchanged once by the library, then replayed.
        let started = rp.ok("authorize", json!({"scope": "openid offline_access"})).await;
        let callback = until_app(&mut browser, &local(started["url"].as_str().unwrap())).await;
        let first = rp.ok("callback", json!({"url": callback})).await;
        let replay = rp.call("exchange_again", json!({"url": callback})).await;
        assert_eq!(replay["error"], "invalid_grant", "{replay}");
        let access = first["tokens"]["access_token"].as_str().unwrap();
        assert_eq!(validate(&app, access).await["active"], false, "the replay ended the first session");

        // Without the verifier the PKCE code is refused.
        let started = rp.ok("authorize", json!({"scope": "openid"})).await;
        let callback = until_app(&mut browser, &local(started["url"].as_str().unwrap())).await;
        let code: String = Url::parse(&callback).unwrap().query_pairs()
            .find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).unwrap();
        let (status, answer) = token_request(&app, vec![
            ("grant_type", "authorization_code".into()), ("code", code),
            ("redirect_uri", REDIRECT.into()),
            ("client_id", client_id.clone()), ("client_secret", secret.clone()),
        ]).await;
        assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));

        // Client authentication: a wrong secret is 401 with the Basic challenge;
        // two methods at once are refused.
        let response = app.client.post(app.url("/v1/auth/token"))
            .basic_auth(&client_id, Some("wrong"))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
            .send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
        assert_eq!(body(response).await["error"], "invalid_client");
        let response = app.client.post(app.url("/v1/auth/token"))
            .basic_auth(&client_id, Some(&secret))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", "x"), ("client_secret", &secret)])
            .send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body(response).await["error"], "invalid_request");
    }
}

e2e! {
    /// A third-party app asks for consent once (remembered per user and app);
    /// denying sends `access_denied`; `prompt=consent` asks again; `prompt=none`
    /// answers `login_required` or `consent_required` without a page;
    /// `prompt=login` shows the sign-in form to a signed-in browser.
    async fn a_third_party_app_asks_for_consent_and_prompts_are_honoured(backend) {
        let app = spawn_app_on(backend).await;
        let registered = client(&app, json!({"first_party": false})).await;
        let client_id = id_of(&registered);
        let mut rp = relying_party(&app, &registered, "client_secret_basic", "RS256").await;
        let (_, email) = account(&app).await;
        let mut browser = PageBrowser::new(&app);
        let error_of = |url: &str| -> String {
            Url::parse(url).unwrap().query_pairs()
                .find(|(k, _)| k == "error").map(|(_, v)| v.into_owned()).unwrap_or_default()
        };

        // Not signed in, prompt=none: login_required at once.
        let started = rp.ok("authorize", json!({"scope": "openid", "parameters": {"prompt": "none"}})).await;
        let back = until_app(&mut browser, &local(started["url"].as_str().unwrap())).await;
        assert_eq!(error_of(&back), "login_required");

        // Sign in; the consent page follows; deny, then allow.
        let started = rp.ok("authorize", json!({"scope": "openid email"})).await;
        let (page, at) = until_page(&mut browser, &local(started["url"].as_str().unwrap())).await;
        assert!(at.starts_with("/sign-in"));
        let return_to = page.field("return_to").unwrap();
        let token = page.form_token();
        let posted = browser.post("/sign-in", &[
            ("email", email.as_str()), ("password", PASSWORD),
            ("return_to", &return_to), ("csrf_token", &token),
        ]).await;
        let (consent, at) = until_page(&mut browser, posted.location()).await;
        assert!(at.starts_with("/consent"), "{at}");
        assert!(consent.html.contains("Example app"));
        assert!(consent.html.contains("data-scope=\"email\""));
        let request = consent.field("request").unwrap();
        let token = consent.form_token();
        let denied = browser.post("/consent", &[
            ("request", request.as_str()), ("decision", "deny"), ("csrf_token", &token),
        ]).await;
        assert_eq!(denied.status, StatusCode::SEE_OTHER);
        assert_eq!(error_of(denied.location()), "access_denied");
        // Another origin cannot consent on the user's behalf.
        let mut elsewhere = PageBrowser::new(&app);
        elsewhere.cookies = browser.cookies.clone();
        elsewhere.origin = "https://evil.example".into();
        let forged = elsewhere.post("/consent", &[
            ("request", request.as_str()), ("decision", "allow"), ("csrf_token", &token),
        ]).await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);

        let allowed = browser.post("/consent", &[
            ("request", request.as_str()), ("decision", "allow"), ("csrf_token", &token),
        ]).await;
        assert_eq!(allowed.status, StatusCode::SEE_OTHER, "{}", allowed.html);
        let callback = until_app(&mut browser, allowed.location()).await;
        assert_eq!(error_of(&callback), "");
        rp.ok("callback", json!({"url": callback})).await;

        // Remembered: no page the second time, even with prompt=none.
        let started = rp.ok("authorize", json!({"scope": "openid email", "parameters": {"prompt": "none"}})).await;
        let callback = until_app(&mut browser, &local(started["url"].as_str().unwrap())).await;
        assert_eq!(error_of(&callback), "");
        rp.ok("callback", json!({"url": callback})).await;
        // More than was allowed: consent_required without a page.
        let started = rp.ok("authorize", json!({"scope": "openid email profile", "parameters": {"prompt": "none"}})).await;
        let back = until_app(&mut browser, &local(started["url"].as_str().unwrap())).await;
        assert_eq!(error_of(&back), "consent_required");
        // prompt=consent asks again although remembered.
        let started = rp.ok("authorize", json!({"scope": "openid", "parameters": {"prompt": "consent"}})).await;
        let (_, at) = until_page(&mut browser, &local(started["url"].as_str().unwrap())).await;
        assert!(at.starts_with("/consent"), "{at}");
        // prompt=login: the sign-in form although signed in, and a later auth_time.
        let started = rp.ok("authorize", json!({"scope": "openid email", "parameters": {"prompt": "login"}})).await;
        let (_, at) = until_page(&mut browser, &local(started["url"].as_str().unwrap())).await;
        assert!(at.starts_with("/sign-in"), "{at}");

        // The user's consents, listed and taken back.
        let login = body(app.login(&email, PASSWORD).await).await;
        let bearer = login["access_token"].as_str().unwrap();
        let consents = body(app.call(Method::GET, "/v1/auth/me/consents", Some(bearer), None).await).await;
        assert!(consents.to_string().contains(&client_id), "{consents}");
    }
}

e2e! {
    /// Errors about the client or the redirect URI are shown to the user and
    /// never sent to an unverified URI; the rest go to the app with `iss`.
    async fn authorization_errors_never_reach_an_unregistered_redirect(backend) {
        let app = spawn_app_on(backend).await;
        let registered = client(&app, json!({})).await;
        let client_id = id_of(&registered);
        let mut browser = PageBrowser::new(&app);
        let authorize = |pairs: &[(&str, &str)]| {
            format!("/v1/oidc/authorize?{}", serde_urlencoded::to_string(pairs).unwrap())
        };
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        let page = browser.get(&authorize(&[
            ("response_type", "code"), ("client_id", &Uuid::new_v4().to_string()),
            ("redirect_uri", REDIRECT), ("scope", "openid"),
        ])).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST);
        assert!(page.html.contains("invalid_client"));
        let page = browser.get(&authorize(&[
            ("response_type", "code"), ("client_id", &client_id),
            ("redirect_uri", "https://evil.example/callback"), ("scope", "openid"),
        ])).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST);
        assert!(page.html.contains("invalid_redirect_uri"));
        for (pairs, error) in [
            (vec![("response_type", "token")], "unsupported_response_type"),
            (vec![("response_type", "code"), ("scope", "openid admin")], "invalid_scope"),
            (vec![("response_type", "code"), ("request", "eyJ9.e30.")], "request_not_supported"),
            (vec![("response_type", "code"), ("code_challenge_method", "plain"),
                  ("code_challenge", challenge)], "invalid_request"),
        ] {
            let mut all = vec![("client_id", client_id.as_str()), ("redirect_uri", REDIRECT), ("state", "s1")];
            if !pairs.iter().any(|(k, _)| *k == "scope") {
                all.push(("scope", "openid"));
            }
            all.extend(pairs);
            let page = browser.get(&authorize(&all)).await;
            assert_eq!(page.status, StatusCode::SEE_OTHER, "{error}: {}", page.html);
            let to = Url::parse(page.location()).unwrap();
            assert!(to.as_str().starts_with(REDIRECT));
            let query: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
            assert_eq!(query["error"], error);
            assert_eq!(query["state"], "s1");
            assert_eq!(query["iss"], app.address.trim_end_matches('/'));
        }
    }
}

e2e! {
    /// The token endpoint takes a service account's client credentials in HTTP
    /// Basic (`client_secret_basic`, the default of most OAuth libraries) as in the
    /// body; a wrong secret in Basic is 401 with the Basic challenge.
    async fn a_service_account_authenticates_with_http_basic_at_the_token_endpoint(backend) {
        let app = spawn_app_on(backend).await;
        let (_, owner) = app.new_user().await;
        let org = app.new_organization(&owner).await;
        let created = body(
            app.call(
                Method::POST,
                &format!("/v1/organizations/{org}/service-accounts"),
                Some(&owner),
                Some(&json!({"name": "worker", "roles": ["member"]})),
            )
            .await,
        )
        .await;
        let id = created["service_account_id"].as_str().unwrap().to_owned();
        let secret = created["client_secret"].as_str().unwrap().to_owned();
        let response = app.client.post(app.url("/v1/auth/token"))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let token = body(response).await["access_token"].as_str().unwrap().to_owned();
        assert_eq!(validate(&app, &token).await["kind"], "service_account");
        let response = app.client.post(app.url("/v1/auth/token"))
            .basic_auth(&id, Some("klsa_wrong"))
            .form(&[("grant_type", "client_credentials")])
            .send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
        assert_eq!(body(response).await["error"], "invalid_client");
    }
}
