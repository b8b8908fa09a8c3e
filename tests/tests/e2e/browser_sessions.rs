//! Browser sessions in cookies: the cookies' flags, the CSRF rule on every
//! state-changing request a cookie authenticates, refresh and logout in cookie
//! mode, bearer clients unchanged, and CORS for listed origins only.

use std::collections::HashMap;

use keyledger_e2e::*;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

const APP_ORIGIN: &str = "https://app.example";
const EVIL_ORIGIN: &str = "https://evil.example";

/// The cookies an answer sets: name → (value, the attributes in lower case).
fn set_cookies(response: &Response) -> HashMap<String, (String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|line| {
            let line = line.to_str().unwrap();
            let (pair, attributes) = line.split_once(';').unwrap_or((line, ""));
            let (name, value) = pair.split_once('=').unwrap();
            (
                name.trim().to_owned(),
                (value.trim().to_owned(), attributes.to_ascii_lowercase()),
            )
        })
        .collect()
}

fn has(attributes: &str, attribute: &str) -> bool {
    attributes.split(';').any(|a| a.trim() == attribute)
}

async fn browser_app(backend: Backend) -> TestApp {
    spawn_app_on_with(backend, |s| {
        s.browser.cors_origins = vec![APP_ORIGIN.parse().unwrap()];
    })
    .await
}

/// A cookie-mode login: the answer's body and the cookies it set.
async fn cookie_login(app: &TestApp, email: &str) -> (Value, HashMap<String, (String, String)>) {
    let response = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("X-Keyledger-Session", "cookie")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookies = set_cookies(&response);
    (body(response).await, cookies)
}

fn cookie_header(cookies: &HashMap<String, (String, String)>, names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("{name}={}", cookies[*name].0))
        .collect::<Vec<_>>()
        .join("; ")
}

e2e! { async fn a_cookie_session_keeps_its_tokens_out_of_reach_of_scripts(backend) {
    let app = browser_app(backend).await;
    app.register("ada@example.com", PASSWORD).await;
    let (answer, cookies) = cookie_login(&app, "ada@example.com").await;
    assert_eq!(answer["token_type"], "cookie", "{answer}");
    assert!(answer.get("access_token").is_none() && answer.get("refresh_token").is_none(), "{answer}");
    let csrf = answer["csrf_token"].as_str().unwrap();

    let (_, access) = &cookies["__Host-keyledger-access"];
    for flag in ["httponly", "secure", "samesite=lax", "path=/"] {
        assert!(has(access, flag), "access cookie lacks {flag}: {access}");
    }
    let (_, refresh) = &cookies["__Secure-keyledger-refresh"];
    for flag in ["httponly", "secure", "samesite=lax", "path=/v1/auth/refresh"] {
        assert!(has(refresh, flag), "refresh cookie lacks {flag}: {refresh}");
    }
    let (csrf_value, csrf_attributes) = &cookies["__Host-keyledger-csrf"];
    assert_eq!(csrf_value, csrf, "the script reads the CSRF token from its cookie");
    assert!(!has(csrf_attributes, "httponly") && has(csrf_attributes, "secure") && has(csrf_attributes, "path=/"));

    // A safe request needs the cookie only.
    let me = app.client.get(app.url("/v1/auth/me"))
        .header("Cookie", cookie_header(&cookies, &["__Host-keyledger-access"]))
        .send().await.unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(body(me).await["email"], "ada@example.com");
}}

e2e! { async fn a_state_changing_request_with_a_session_cookie_needs_an_allowed_origin_and_the_csrf_token(backend) {
    let app = browser_app(backend).await;
    app.register("ada@example.com", PASSWORD).await;
    let (answer, cookies) = cookie_login(&app, "ada@example.com").await;
    let csrf = answer["csrf_token"].as_str().unwrap().to_owned();
    let access = cookie_header(&cookies, &["__Host-keyledger-access"]);
    let own_origin = app.address.clone();
    let logout = |origin: Option<&str>, token: Option<&str>| {
        let mut request = app.client.post(app.url("/v1/auth/logout")).header("Cookie", access.clone());
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        if let Some(token) = token {
            request = request.header("X-CSRF-Token", token);
        }
        request.send()
    };
    let refused = [
        (Some(own_origin.as_str()), None),
        (Some(own_origin.as_str()), Some("forged")),
        (Some(EVIL_ORIGIN), Some(csrf.as_str())),
        (Some("null"), Some(csrf.as_str())),
    ];
    for (origin, token) in refused {
        let answer = logout(origin, token).await.unwrap();
        assert_eq!(error_code(answer, StatusCode::FORBIDDEN).await, "csrf_failed", "{origin:?} {token:?}");
    }
    // Without Origin, a browser's Sec-Fetch-Site says where it comes from.
    let cross_site = app.client.post(app.url("/v1/auth/logout")).header("Cookie", access.clone())
        .header("Sec-Fetch-Site", "cross-site").header("X-CSRF-Token", csrf.as_str())
        .send().await.unwrap();
    assert_eq!(error_code(cross_site, StatusCode::FORBIDDEN).await, "csrf_failed");

    // The token of another session does not do either.
    let (other, _) = cookie_login(&app, "ada@example.com").await;
    let answer = logout(Some(&own_origin), other["csrf_token"].as_str()).await.unwrap();
    assert_eq!(error_code(answer, StatusCode::FORBIDDEN).await, "csrf_failed");

    // A listed origin with the session's token: logged out, cookies cleared.
    let answer = logout(Some(APP_ORIGIN), Some(&csrf)).await.unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    let cleared = set_cookies(&answer);
    for name in ["__Host-keyledger-access", "__Secure-keyledger-refresh", "__Host-keyledger-csrf"] {
        let (value, attributes) = &cleared[name];
        assert!(value.is_empty() && attributes.contains("max-age=0"), "{name} cleared: {attributes}");
    }
    let me = app.client.get(app.url("/v1/auth/me")).header("Cookie", access.clone()).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED, "the session ended");

    // Bearer clients are not affected.
    let tokens = body(app.login("ada@example.com", PASSWORD).await).await;
    let answer = app.logout(tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
}}

e2e! { async fn a_cookie_session_refreshes_from_its_cookie_and_a_replay_ends_it(backend) {
    let app = browser_app(backend).await;
    app.register("ada@example.com", PASSWORD).await;
    let (answer, cookies) = cookie_login(&app, "ada@example.com").await;
    let csrf = answer["csrf_token"].as_str().unwrap().to_owned();
    let refresh_cookie = cookie_header(&cookies, &["__Secure-keyledger-refresh"]);
    let refresh = |cookie: String, token: Option<String>| {
        let mut request = app.client.post(app.url("/v1/auth/refresh"))
            .header("Cookie", cookie).header("Origin", APP_ORIGIN).json(&json!({}));
        if let Some(token) = token {
            request = request.header("X-CSRF-Token", token);
        }
        request.send()
    };
    let answer = refresh(refresh_cookie.clone(), None).await.unwrap();
    assert_eq!(error_code(answer, StatusCode::FORBIDDEN).await, "csrf_failed");

    let answer = refresh(refresh_cookie.clone(), Some(csrf.clone())).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let renewed = set_cookies(&answer);
    let body = body(answer).await;
    assert_eq!(body["csrf_token"], csrf.as_str(), "the session's CSRF token stays");
    assert!(body.get("refresh_token").is_none());
    assert_ne!(renewed["__Secure-keyledger-refresh"].0, cookies["__Secure-keyledger-refresh"].0, "rotated");
    let me = app.client.get(app.url("/v1/auth/me"))
        .header("Cookie", cookie_header(&renewed, &["__Host-keyledger-access"])).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::OK);

    // The rotated cookie presented again: reuse detected, the session revoked.
    let answer = refresh(refresh_cookie, Some(csrf.clone())).await.unwrap();
    assert_eq!(error_code(answer, StatusCode::UNAUTHORIZED).await, "refresh_token_reused");
    let answer = refresh(cookie_header(&renewed, &["__Secure-keyledger-refresh"]), Some(csrf)).await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);

    // Without a token in the body or a cookie there is nothing to refresh.
    let (status, answer) = call(&app, Method::POST, "/v1/auth/refresh", None, Some(json!({}))).await;
    assert_eq!((status, answer["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_refresh_token")));
}}

e2e! { async fn cors_answers_listed_origins_only(backend) {
    let app = browser_app(backend).await;
    let preflight = |origin: &str| {
        app.client.request(Method::OPTIONS, app.url("/v1/auth/login"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type, x-keyledger-session")
            .send()
    };
    let listed = preflight(APP_ORIGIN).await.unwrap();
    assert_eq!(listed.status(), StatusCode::NO_CONTENT);
    let headers = listed.headers();
    assert_eq!(headers["access-control-allow-origin"], APP_ORIGIN);
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(headers["access-control-max-age"], "600");
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("x-csrf-token") && allowed.contains("x-keyledger-session"), "{allowed}");

    let unlisted = preflight(EVIL_ORIGIN).await.unwrap();
    assert!(unlisted.headers().get("access-control-allow-origin").is_none());
    assert_eq!(error_code(unlisted, StatusCode::FORBIDDEN).await, "origin_not_allowed");

    for (origin, expected) in [(APP_ORIGIN, Some(APP_ORIGIN)), (EVIL_ORIGIN, None)] {
        let answer = app.client.get(app.url("/health")).header("Origin", origin).send().await.unwrap();
        assert_eq!(
            answer.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap()),
            expected,
            "{origin}"
        );
        assert!(answer.headers().get("access-control-allow-credentials").is_some() == expected.is_some());
    }
    let without = app.client.get(app.url("/health")).send().await.unwrap();
    assert!(without.headers().get("access-control-allow-origin").is_none());
}}
