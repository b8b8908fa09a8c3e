//! Social login end to end against a real OpenID provider we did not write
//! (oidc-provider, on loopback, its login step driven over HTTP) and a loopback
//! server implementing Kakao's and Naver's documented endpoints: new accounts,
//! returning users, automatic and explicit linking, unlinking, the second factor
//! after a federated sign-in, and the attacks (a wrong, replayed or foreign
//! `state`, tampered ID tokens, a `redirect_uri` off the allowlist, a failing
//! provider).

use std::time::Duration;

use keyledger_api::settings::OAuthProviderSettings;
use keyledger_api::{Secret, Settings};
use keyledger_e2e::oidc::{browser_client, follow_until, SocialProviders, TestProvider};
use keyledger_e2e::totp::{code_now, secret_of};
use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use url::Url;

/// The app's URL a sign-in returns to (nothing listens there: the test reads
/// the redirect to it).
const APP: &str = "http://127.0.0.1:9/app/done";

/// An OpenID provider named `name`, backed by `op`.
fn oidc_provider(name: &str, op: &TestProvider) -> OAuthProviderSettings {
    OAuthProviderSettings {
        name: name.into(),
        preset: Some("oidc".into()),
        client_id: op.client_id.clone(),
        client_secret: Some(Secret::new(op.client_secret.clone())),
        issuer: Some(op.issuer.clone()),
        ..Default::default()
    }
}

/// A server whose providers are `corp` and `partner` (both at `op`), after
/// `configure`; the provider told the callbacks it may send browsers to.
pub(crate) async fn social_app(
    backend: Backend,
    op: &TestProvider,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let providers = vec![oidc_provider("corp", op), oidc_provider("partner", op)];
    let app = spawn_app_on_with(backend, |s| {
        s.oauth.providers = providers;
        s.oauth.redirect_uris = vec![APP.parse().unwrap()];
        configure(s);
    })
    .await;
    op.allow_redirect_uris(&[
        app.url("/v1/auth/oauth/corp/callback"),
        app.url("/v1/auth/oauth/partner/callback"),
    ])
    .await;
    app
}

pub(crate) fn person(email: &str, verified: bool) -> Value {
    json!({"email": email, "email_verified": verified, "name": "Ada Lovelace"})
}

fn start_url(app: &TestApp, provider: &str, login_hint: &str) -> String {
    app.url(&format!(
        "/v1/auth/oauth/{provider}/start?redirect_uri={}&state=app-state-1&login_hint={login_hint}",
        urlencode(APP)
    ))
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Runs a sign-in with `provider` as `login_hint` in `browser` up to the app's
/// URL; that URL (with `code` or `error`).
async fn sign_in_at(
    app: &TestApp,
    browser: &reqwest::Client,
    provider: &str,
    login_hint: &str,
) -> Url {
    let back = follow_until(browser, &start_url(app, provider, login_hint), APP).await;
    assert_eq!(
        param(&back, "state").as_deref(),
        Some("app-state-1"),
        "the app's state comes back: {back}"
    );
    back
}

/// The one-time code of a sign-in that must succeed.
async fn code_of(app: &TestApp, browser: &reqwest::Client, provider: &str, hint: &str) -> String {
    let back = sign_in_at(app, browser, provider, hint).await;
    param(&back, "code").unwrap_or_else(|| panic!("a code: {back}"))
}

async fn exchange(app: &TestApp, code: &str) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        "/v1/auth/oauth/exchange",
        None,
        Some(json!({ "code": code })),
    )
    .await
}

/// A full sign-in that must end with a token pair; the answer.
pub(crate) async fn signed_in(
    app: &TestApp,
    browser: &reqwest::Client,
    provider: &str,
    hint: &str,
) -> Value {
    let code = code_of(app, browser, provider, hint).await;
    let (status, tokens) = exchange(app, &code).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert!(tokens["access_token"].is_string(), "{tokens}");
    tokens
}

/// The account a token pair is for.
async fn user_of(app: &TestApp, tokens: &Value) -> String {
    let access = tokens["access_token"].as_str().expect("an access token");
    let (status, me) = call(app, Method::GET, "/v1/auth/me", Some(access), None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    me["user_id"].as_str().unwrap().to_owned()
}

/// The app's URL after a sign-in at a plain OAuth provider (the loopback Kakao
/// or Naver), picking its user with the mock's `test_user` (and `extra`).
async fn via_provider(
    app: &TestApp,
    browser: &reqwest::Client,
    provider: &str,
    extra: &str,
) -> Url {
    let start = app.url(&format!(
        "/v1/auth/oauth/{provider}/start?redirect_uri={}&state=app-state-1",
        urlencode(APP)
    ));
    let answer = browser.get(&start).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FOUND, "{provider}");
    let to_provider = answer.headers()["location"].to_str().unwrap().to_owned();
    follow_until(browser, &format!("{to_provider}&{extra}"), APP).await
}

async fn identities(app: &TestApp, access: &str) -> Vec<Value> {
    let (status, listed) = call(
        app,
        Method::GET,
        "/v1/users/me/identities",
        Some(access),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    listed["identities"].as_array().unwrap().clone()
}

e2e! { async fn a_first_sign_in_creates_an_account_and_a_returning_user_gets_the_same_one(backend) {
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |_| {}).await;
    op.add_account("alice", person("alice@example.com", true)).await;
    let browser = browser_client();

    let first = signed_in(&app, &browser, "corp", "alice").await;
    let access = first["access_token"].as_str().unwrap();
    let claims = app.validate(access).await;
    assert_eq!(claims["amr"], json!(["fed", "idp:corp"]), "{claims}");
    let (status, me) = call(&app, Method::GET, "/v1/auth/me", Some(access), None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["email_verified"], true, "the provider verified it: {me}");
    let linked = identities(&app, access).await;
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0]["provider"], "corp");
    assert_eq!(linked[0]["email"], "alice@example.com");

    let again = signed_in(&app, &browser, "corp", "alice").await;
    assert_eq!(user_of(&app, &again).await, user_of(&app, &first).await, "the same account");
    let (status, listed) = call(&app, Method::GET, "/v1/auth/oauth/providers", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["providers"][0]["name"], "corp", "{listed}");
}}

e2e! { async fn a_callback_works_once_and_only_in_the_browser_that_started_it(backend) {
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |_| {}).await;
    op.add_account("alice", person("alice@example.com", true)).await;
    let callback = app.url("/v1/auth/oauth/corp/callback");

    // The same browser: works once.
    let browser = browser_client();
    let at_callback = follow_until(&browser, &start_url(&app, "corp", "alice"), &callback).await;
    let first = browser.get(at_callback.as_str()).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::FOUND);
    let back: Url = first.headers()["location"].to_str().unwrap().parse().unwrap();
    let code = param(&back, "code").expect("a code");
    assert!(!back.as_str().contains("access_token"), "no token in a URL: {back}");
    let replayed = browser.get(at_callback.as_str()).send().await.unwrap();
    assert_eq!(error_code(replayed, StatusCode::BAD_REQUEST).await, "invalid_state");

    // The one-time code works once too.
    let (status, _) = exchange(&app, &code).await;
    assert_eq!(status, StatusCode::OK);
    let (status, again) = exchange(&app, &code).await;
    assert_eq!((status, again["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_token")));

    // Another browser (an attacker's link, a login CSRF) cannot complete it.
    let started = browser_client();
    let at_callback = follow_until(&started, &start_url(&app, "corp", "alice"), &callback).await;
    let elsewhere = browser_client().get(at_callback.as_str()).send().await.unwrap();
    assert_eq!(error_code(elsewhere, StatusCode::BAD_REQUEST).await, "invalid_state");
    let used = started.get(at_callback.as_str()).send().await.unwrap();
    assert_eq!(error_code(used, StatusCode::BAD_REQUEST).await, "invalid_state", "taken by the try");

    // A state never issued, or none.
    let forged = browser.get(format!("{callback}?code=x&state=forged")).send().await.unwrap();
    assert_eq!(error_code(forged, StatusCode::BAD_REQUEST).await, "invalid_state");
    let missing = browser.get(format!("{callback}?code=x")).send().await.unwrap();
    assert_eq!(error_code(missing, StatusCode::BAD_REQUEST).await, "invalid_state");
}}

e2e! { async fn a_redirect_uri_off_the_allowlist_is_refused(backend) {
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |_| {}).await;
    let browser = browser_client();
    for uri in ["https://evil.example/steal", "http://127.0.0.1:9/app/done/extra", "http://127.0.0.1:9/app/done?x=1"] {
        let answer = browser
            .get(app.url(&format!("/v1/auth/oauth/corp/start?redirect_uri={}", urlencode(uri))))
            .send()
            .await
            .unwrap();
        assert!(answer.headers().get("location").is_none(), "{uri}");
        assert_eq!(error_code(answer, StatusCode::BAD_REQUEST).await, "invalid_redirect_uri", "{uri}");
    }
    let answer = browser.get(app.url("/v1/auth/oauth/corp/start")).send().await.unwrap();
    assert_eq!(error_code(answer, StatusCode::BAD_REQUEST).await, "invalid_redirect_uri");
    let unknown = browser
        .get(app.url(&format!("/v1/auth/oauth/nobody/start?redirect_uri={}", urlencode(APP))))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}}

e2e! { async fn tampered_id_tokens_are_refused(backend) {
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |_| {}).await;
    op.add_account("alice", person("alice@example.com", true)).await;
    let browser = browser_client();
    for mode in ["nonce", "foreign_key", "aud", "azp", "expired", "iat_future", "iss"] {
        op.tamper(Some(mode)).await;
        let back = sign_in_at(&app, &browser, "corp", "alice").await;
        assert_eq!(param(&back, "error").as_deref(), Some("invalid_id_token"), "{mode}: {back}");
        assert!(param(&back, "code").is_none(), "{mode}");
    }
    op.tamper(None).await;
    signed_in(&app, &browser, "corp", "alice").await;

    // A rotated signing key: the key set is fetched again for the new key id.
    op.rotate_key().await;
    signed_in(&app, &browser, "corp", "alice").await;
}}

e2e! { async fn an_address_links_automatically_only_when_verified_on_both_sides(backend) {
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |_| {}).await;
    let browser = browser_client();

    // Verified here (a provider's sign-up) and at the provider: linked.
    op.add_account("alice", person("alice@example.com", true)).await;
    let first = signed_in(&app, &browser, "corp", "alice").await;
    let second = signed_in(&app, &browser, "partner", "alice").await;
    assert_eq!(user_of(&app, &second).await, user_of(&app, &first).await, "linked by the verified address");
    let access = second["access_token"].as_str().unwrap();
    let mut providers: Vec<String> = identities(&app, access).await.iter()
        .map(|i| i["provider"].as_str().unwrap().to_owned()).collect();
    providers.sort();
    assert_eq!(providers, ["corp", "partner"]);

    // Not verified here (a password account, verification off): not linked.
    // (Each person in a browser of their own: the provider remembers who
    // signed in.)
    app.register("bob@example.com", PASSWORD).await;
    op.add_account("bob", person("bob@example.com", true)).await;
    let back = sign_in_at(&app, &browser_client(), "corp", "bob").await;
    assert_eq!(param(&back, "error").as_deref(), Some("account_exists"), "{back}");

    // Not verified at the provider: not linked, whatever this side knows.
    op.add_account("mallory", json!({"sub": "mallory", "email": "alice@example.com", "email_verified": false})).await;
    let back = sign_in_at(&app, &browser_client(), "corp", "mallory").await;
    assert_eq!(param(&back, "error").as_deref(), Some("account_exists"), "{back}");
    let (status, tokens) = call(&app, Method::POST, "/v1/auth/login",
        None, Some(json!({"email": "bob@example.com", "password": PASSWORD}))).await;
    assert_eq!(status, StatusCode::OK, "bob's account is untouched: {tokens}");
}}

e2e! { async fn an_identity_is_linked_explicitly_and_unlinked(backend) {
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |_| {}).await;
    let browser = browser_client();
    op.add_account("bob", person("bob.at.corp@example.com", true)).await;
    op.add_account("alice", person("alice@example.com", true)).await;

    app.register("bob@example.com", PASSWORD).await;
    let tokens = body(app.login("bob@example.com", PASSWORD).await).await;
    let access = tokens["access_token"].as_str().unwrap();

    // The link starts with the account's token in the browser (its cookie binds it).
    let linked = browser
        .post(app.url("/v1/users/me/identities/corp"))
        .bearer_auth(access)
        .json(&json!({"redirect_uri": APP, "state": "app-state-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(linked.status(), StatusCode::OK);
    let url = body(linked).await["url"].as_str().unwrap().to_owned();
    let back = follow_until(&browser, &format!("{url}&login_hint=bob"), APP).await;
    let identity_id = param(&back, "linked").unwrap_or_else(|| panic!("linked: {back}"));
    let listed = identities(&app, access).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], identity_id.as_str());

    // Bob now signs in with corp, into the same account.
    let federated = signed_in(&app, &browser, "corp", "bob").await;
    let bob = user_of(&app, &tokens).await;
    assert_eq!(user_of(&app, &federated).await, bob);

    // Twice the same provider is refused; someone else's identity too.
    let again = browser.post(app.url("/v1/users/me/identities/corp")).bearer_auth(access)
        .json(&json!({"redirect_uri": APP})).send().await.unwrap();
    assert_eq!(error_code(again, StatusCode::CONFLICT).await, "provider_already_linked");
    // (Alice in a browser of her own: the provider remembers who signed in.)
    signed_in(&app, &browser_client(), "partner", "alice").await;
    let elsewhere = browser_client();
    let to_partner = elsewhere.post(app.url("/v1/users/me/identities/partner")).bearer_auth(access)
        .json(&json!({"redirect_uri": APP, "state": "app-state-1"})).send().await.unwrap();
    let url = body(to_partner).await["url"].as_str().unwrap().to_owned();
    let back = follow_until(&elsewhere, &format!("{url}&login_hint=alice"), APP).await;
    assert_eq!(param(&back, "error").as_deref(), Some("identity_in_use"), "{back}");

    // Unlinked (the password stays): corp no longer signs in to bob's account.
    let (status, _) = call(&app, Method::DELETE, &format!("/v1/users/me/identities/{identity_id}"), Some(access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(identities(&app, access).await.is_empty());
    let fresh = signed_in(&app, &browser, "corp", "bob").await;
    assert_ne!(user_of(&app, &fresh).await, bob, "a new account for the unlinked identity");
}}

e2e! { async fn the_last_way_to_sign_in_cannot_be_unlinked(backend) {
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |_| {}).await;
    let browser = browser_client();
    op.add_account("alice", person("alice@example.com", true)).await;
    let tokens = signed_in(&app, &browser, "corp", "alice").await;
    let access = tokens["access_token"].as_str().unwrap();
    let id = identities(&app, access).await[0]["id"].as_str().unwrap().to_owned();
    let (status, refused) = call(&app, Method::DELETE, &format!("/v1/users/me/identities/{id}"), Some(access), None).await;
    assert_eq!((status, refused["error"].as_str()), (StatusCode::CONFLICT, Some("last_sign_in_method")));
    let (status, _) = call(&app, Method::DELETE, "/v1/users/me/identities/not-an-id", Some(access), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // With a second provider linked, the first may go.
    signed_in(&app, &browser, "partner", "alice").await;
    let (status, _) = call(&app, Method::DELETE, &format!("/v1/users/me/identities/{id}"), Some(access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}}

e2e! { async fn an_account_with_a_second_factor_is_asked_for_it_after_federation(backend) {
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |s| {
        s.oauth.providers[1].trust_mfa = true;
    })
    .await;
    let browser = browser_client();
    op.add_account("alice", json!({"email": "alice@example.com", "email_verified": true, "amr": ["pwd", "mfa"]})).await;
    let tokens = signed_in(&app, &browser, "corp", "alice").await;
    let access = tokens["access_token"].as_str().unwrap();

    let (status, setup) = call(&app, Method::POST, "/v1/mfa/setup", Some(access), Some(json!({"type": "totp"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{setup}");
    let secret = secret_of(setup["otpauth_uri"].as_str().unwrap());
    let method = setup["method_id"].as_str().unwrap();
    let (status, confirmed) = call(&app, Method::POST, &format!("/v1/mfa/methods/{method}/confirm"),
        Some(access), Some(json!({"code": code_now(&secret)}))).await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");

    // corp is not trusted for its own second factor: the step follows.
    let code = code_of(&app, &browser, "corp", "alice").await;
    let (status, step) = exchange(&app, &code).await;
    assert_eq!(status, StatusCode::OK, "{step}");
    assert_eq!(step["mfa_required"], true, "{step}");
    assert!(step.get("access_token").is_none());
    let backup_code = confirmed["backup_codes"][0].as_str().unwrap();
    let (status, done) = call(&app, Method::POST, "/v1/mfa/verify", None,
        Some(json!({"mfa_token": step["mfa_token"], "code": backup_code}))).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let amr = app.validate(done["access_token"].as_str().unwrap()).await["amr"].clone();
    for factor in ["fed", "idp:corp", "mfa"] {
        assert!(amr.as_array().unwrap().contains(&json!(factor)), "{factor} in {amr}");
    }

    // partner is trusted, and the provider says its sign-in had a second factor.
    signed_in(&app, &browser, "partner", "alice").await;
    let trusted = signed_in(&app, &browser, "partner", "alice").await;
    let amr = app.validate(trusted["access_token"].as_str().unwrap()).await["amr"].clone();
    assert_eq!(amr, json!(["fed", "idp:partner", "mfa"]));
}}

e2e! { async fn a_failing_provider_trips_its_breaker_and_recovers(backend) {
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |s| {
        s.oauth.breaker_failures = 2;
        s.oauth.breaker_cooldown = Duration::from_secs(1);
    })
    .await;
    op.add_account("alice", person("alice@example.com", true)).await;
    let browser = browser_client();
    op.outage(true).await;
    let start = start_url(&app, "corp", "alice");
    for _ in 0..2 {
        let answer = browser.get(&start).send().await.unwrap();
        assert_eq!(error_code(answer, StatusCode::SERVICE_UNAVAILABLE).await, "provider_unavailable");
    }
    let calls = op.request_count().await;
    let answer = browser.get(&start).send().await.unwrap();
    assert_eq!(error_code(answer, StatusCode::SERVICE_UNAVAILABLE).await, "provider_unavailable");
    assert_eq!(op.request_count().await, calls, "an open breaker calls nobody");

    op.outage(false).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    signed_in(&app, &browser, "corp", "alice").await;
}}

e2e! { async fn kakao_and_naver_sign_in_through_their_documented_endpoints(backend) {
    let social = SocialProviders::start().await;
    let base = social.base.clone();
    let (kakao_id, kakao_secret) = (social.kakao_client_id.clone(), social.kakao_client_secret.clone());
    let (naver_id, naver_secret) = (social.naver_client_id.clone(), social.naver_client_secret.clone());
    let app = spawn_app_on_with(backend, |s| {
        s.oauth.providers = vec![
            OAuthProviderSettings {
                name: "kakao".into(),
                client_id: kakao_id,
                client_secret: Some(Secret::new(kakao_secret)),
                authorize_url: Some(format!("{base}/kakao/oauth/authorize")),
                token_url: Some(format!("{base}/kakao/oauth/token")),
                userinfo_url: Some(format!("{base}/kakao/v2/user/me")),
                ..Default::default()
            },
            OAuthProviderSettings {
                name: "naver".into(),
                client_id: naver_id,
                client_secret: Some(Secret::new(naver_secret)),
                authorize_url: Some(format!("{base}/naver/oauth2.0/authorize")),
                token_url: Some(format!("{base}/naver/oauth2.0/token")),
                userinfo_url: Some(format!("{base}/naver/v1/nid/me")),
                ..Default::default()
            },
        ];
        s.oauth.redirect_uris = vec![APP.parse().unwrap()];
    })
    .await;
    social.allow_redirect_uris(&[
        app.url("/v1/auth/oauth/kakao/callback"),
        app.url("/v1/auth/oauth/naver/callback"),
    ]).await;
    social.add_kakao_user("minji", json!({"id": 9_007_199_254_740_993_u64, "nickname": "민지",
        "email": "minji@example.kr", "is_email_valid": true, "is_email_verified": true})).await;
    social.add_naver_user("jun", json!({"id": "naver-jun-1", "email": "jun@example.kr", "nickname": "준", "name": "김준"})).await;
    let browser = browser_client();

    let back = via_provider(&app, &browser, "kakao", "test_user=minji").await;
    let (status, kakao) = exchange(&app, &param(&back, "code").unwrap_or_else(|| panic!("{back}"))).await;
    assert_eq!(status, StatusCode::OK, "{kakao}");
    let access = kakao["access_token"].as_str().unwrap();
    assert_eq!(app.validate(access).await["amr"], json!(["fed", "idp:kakao"]));
    let (_, me) = call(&app, Method::GET, "/v1/auth/me", Some(access), None).await;
    assert_eq!((me["email"].as_str(), me["email_verified"].as_bool()), (Some("minji@example.kr"), Some(true)), "{me}");
    let back = via_provider(&app, &browser, "kakao", "test_user=minji").await;
    let (_, again) = exchange(&app, &param(&back, "code").unwrap()).await;
    assert_eq!(user_of(&app, &again).await, user_of(&app, &kakao).await, "a returning Kakao user");

    // Naver says nothing about verification: the address stays unverified.
    let back = via_provider(&app, &browser, "naver", "test_user=jun").await;
    let (status, naver) = exchange(&app, &param(&back, "code").unwrap_or_else(|| panic!("{back}"))).await;
    assert_eq!(status, StatusCode::OK, "{naver}");
    let (_, me) = call(&app, Method::GET, "/v1/auth/me", Some(naver["access_token"].as_str().unwrap()), None).await;
    assert_eq!((me["email"].as_str(), me["email_verified"].as_bool()), (Some("jun@example.kr"), Some(false)), "{me}");

    // A user who declines comes back with the provider's refusal.
    let back = via_provider(&app, &browser, "kakao", "test_user=minji&test_deny=1").await;
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"), "{back}");
}}

e2e! { async fn no_provider_secret_reaches_events_or_urls(backend) {
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |_| {}).await;
    op.add_account("alice", json!({"sub": "alice-subject-7f3a", "email": "alice.secret@example.com", "email_verified": true})).await;
    let browser = browser_client();
    let callback = app.url("/v1/auth/oauth/corp/callback");
    let at_callback = follow_until(&browser, &start_url(&app, "corp", "alice"), &callback).await;
    let provider_code = param(&at_callback, "code").unwrap();
    let answer = browser.get(at_callback.as_str()).send().await.unwrap();
    let back = answer.headers()["location"].to_str().unwrap().to_owned();
    assert!(!back.contains(&provider_code), "the provider's code does not go on to the app");
    app.read_models_caught_up().await;
    let events = app.stored_events().await;
    assert!(events.iter().any(|e| e.event_type == "ExternalIdentityLinked"));
    for event in &events {
        for secret in [op.client_secret.as_str(), provider_code.as_str(), "alice-subject-7f3a", "alice.secret@example.com"] {
            assert!(!event.payload.contains(secret), "{} holds {secret}: {}", event.event_type, event.payload);
            assert!(!event.metadata.contains(secret), "{} metadata holds {secret}", event.event_type);
        }
    }
}}

e2e! { async fn kept_provider_tokens_are_sealed_and_refreshed_when_used(backend) {
    let social = SocialProviders::start().await;
    let base = social.base.clone();
    let (id, secret) = (social.kakao_client_id.clone(), social.kakao_client_secret.clone());
    let op = TestProvider::start().await;
    let corp = oidc_provider("corp", &op);
    let app = spawn_app_on_with(backend, |s| {
        s.oauth.providers = vec![
            OAuthProviderSettings {
                name: "kakao".into(),
                client_id: id,
                client_secret: Some(Secret::new(secret)),
                authorize_url: Some(format!("{base}/kakao/oauth/authorize")),
                token_url: Some(format!("{base}/kakao/oauth/token")),
                userinfo_url: Some(format!("{base}/kakao/v2/user/me")),
                keep_tokens: true,
                ..Default::default()
            },
            corp,
        ];
        s.oauth.redirect_uris = vec![APP.parse().unwrap()];
    })
    .await;
    social.allow_redirect_uris(&[app.url("/v1/auth/oauth/kakao/callback")]).await;
    op.allow_redirect_uris(&[app.url("/v1/auth/oauth/corp/callback")]).await;
    social.add_kakao_user("minji", json!({"id": 4242, "nickname": "민지",
        "email": "minji@example.kr", "is_email_valid": true, "is_email_verified": true})).await;
    let browser = browser_client();
    let back = via_provider(&app, &browser, "kakao", "test_user=minji").await;
    let (status, tokens) = exchange(&app, &param(&back, "code").unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    let id = identities(&app, access).await[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/users/me/identities/{id}/token");

    // A token far from expiry is handed out as kept.
    let (status, first) = call(&app, Method::POST, &path, Some(access), None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, second) = call(&app, Method::POST, &path, Some(access), None).await;
    assert_eq!(first["access_token"], second["access_token"], "not refreshed while fresh");
    let provider_token = first["access_token"].as_str().unwrap().to_owned();
    let stored: Vec<String> = app.db().scalars("SELECT sealed FROM external_identity_tokens", &[]).await;
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].contains(&provider_token), "sealed, not in clear");
    for event in app.stored_events().await {
        assert!(!event.payload.contains(&provider_token), "{}", event.event_type);
    }

    // One that expires within a minute is refreshed with the provider first.
    social.set_access_ttl("kakao", 30).await;
    let back = via_provider(&app, &browser, "kakao", "test_user=minji").await;
    let (_, tokens) = exchange(&app, &param(&back, "code").unwrap()).await;
    let access = tokens["access_token"].as_str().unwrap();
    let (_, kept) = call(&app, Method::POST, &path, Some(access), None).await;
    let (status, refreshed) = call(&app, Method::POST, &path, Some(access), None).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_ne!(kept["access_token"], refreshed["access_token"], "refreshed");

    // A provider that keeps no tokens has none to give.
    op.add_account("minji", person("minji@example.kr", true)).await;
    signed_in(&app, &browser_client(), "corp", "minji").await;
    let corp_id = identities(&app, access).await.iter()
        .find(|i| i["provider"] == "corp").expect("linked by the verified address")["id"]
        .as_str().unwrap().to_owned();
    let (status, refused) = call(&app, Method::POST, &format!("/v1/users/me/identities/{corp_id}/token"), Some(access), None).await;
    assert_eq!((status, refused["error"].as_str()), (StatusCode::BAD_REQUEST, Some("tokens_not_kept")));
}}

e2e! { async fn erasure_frees_the_identity(backend) {
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |_| {}).await;
    op.add_account("alice", person("alice@example.com", true)).await;
    let browser = browser_client();
    let tokens = signed_in(&app, &browser, "corp", "alice").await;
    let erased = user_of(&app, &tokens).await;
    let (status, answer) = call(&app, Method::DELETE, "/v1/users/me",
        Some(tokens["access_token"].as_str().unwrap()), Some(json!({}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    let claims: i64 = app.db().scalar("SELECT count(*) FROM external_identity_claims", &[]).await;
    assert_eq!(claims, 0, "the claim went with the account");
    let again = signed_in(&app, &browser, "corp", "alice").await;
    assert_ne!(user_of(&app, &again).await, erased, "a new account, not the erased one");
}}
