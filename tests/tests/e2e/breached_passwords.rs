//! The breached-password check (`PasswordPolicy::check_not_breached`) against a
//! range API this test serves on loopback, in the Have I Been Pwned shape. Never
//! the internet.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use keyledger_e2e::*;
use reqwest::StatusCode;
use serde_json::json;
use sha1::{Digest, Sha1};

const BREACHED: &str = "purple monkey dishwasher 1987";
const CLEAN: &str = "a quiet lighthouse keeps seven kettles";
const ALSO_CLEAN: &str = "the tortoise audits granite umbrellas";

fn sha1_hex(password: &str) -> String {
    Sha1::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// What the range server saw: the path and the `Add-Padding` header of each request.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct RangeServer {
    url: String,
    seen: Seen,
    handle: actix_web::dev::ServerHandle,
}

impl RangeServer {
    /// Lists `BREACHED` (count 42) and, as padding, `CLEAN` and `ALSO_CLEAN` with
    /// count 0 (padding lines must not count as breached). Waits `delay` first.
    async fn start(delay: Duration) -> Self {
        let seen: Seen = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let data = web::Data::new(seen.clone());
        let server = HttpServer::new(move || {
            App::new().app_data(data.clone()).route(
                "/range/{prefix}",
                web::get().to(move |req: HttpRequest, seen: web::Data<Seen>| async move {
                    seen.lock().unwrap().push((
                        req.path().to_owned(),
                        req.headers()
                            .get("add-padding")
                            .map(|v| v.to_str().unwrap().to_owned()),
                    ));
                    tokio::time::sleep(delay).await;
                    let prefix = req.match_info().get("prefix").unwrap().to_uppercase();
                    let mut body = String::new();
                    for (password, count) in [(BREACHED, 42), (CLEAN, 0), (ALSO_CLEAN, 0)] {
                        let hash = sha1_hex(password);
                        if hash.starts_with(&prefix) {
                            body.push_str(&format!("{}:{count}\r\n", &hash[5..]));
                        }
                    }
                    body.push_str("0000000000000000000000000000000000A:0\r\n");
                    HttpResponse::Ok().content_type("text/plain").body(body)
                }),
            )
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { url, seen, handle }
    }
}

/// An address nothing listens on.
fn nothing_listening() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

async fn register(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.post(
        "/v1/auth/register",
        &json!({"email": email, "password": password}),
    )
    .await
}

async fn assert_breached(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = body(response).await;
    assert_eq!(body["error"], "weak_password", "{body}");
    assert!(
        body["reasons"][0].as_str().unwrap().starts_with("breached"),
        "{body}"
    );
    assert!(
        !body.to_string().contains(&sha1_hex(BREACHED)[5..]),
        "{body}"
    );
}

e2e! { async fn breached_passwords_are_refused_on_registration_and_password_change(backend) {
    let range = RangeServer::start(Duration::ZERO).await;
    let app = spawn_app_on_with(backend, |s| {
        s.passwords.breached_url = Some(range.url.clone());
    })
    .await;
    assert_breached(register(&app, "breached@example.com", BREACHED).await).await;
    let r = register(&app, "clean@example.com", CLEAN).await;
    assert_eq!(r.status(), StatusCode::CREATED, "a padding line counted as breached");
    let tokens = app.tokens(app.login("clean@example.com", CLEAN).await).await;
    let change = |new: &'static str| {
        app.client
            .post(app.url("/v1/auth/password"))
            .bearer_auth(&tokens.access_token)
            .json(&json!({"current_password": CLEAN, "new_password": new}))
            .send()
    };
    assert_breached(change(BREACHED).await.unwrap()).await;
    assert_eq!(change(ALSO_CLEAN).await.unwrap().status(), StatusCode::NO_CONTENT);
    // Only a 5-character prefix left the server, always asking for padding.
    let seen = range.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for (path, padding) in &seen {
        let prefix = path.strip_prefix("/range/").unwrap();
        assert_eq!(prefix.len(), 5, "{path}");
        assert_eq!(padding.as_deref(), Some("true"));
    }
    range.handle.stop(false).await;
}}

e2e! { async fn an_unreachable_range_api_fails_open_or_closed_as_configured(backend) {
    let url = nothing_listening();
    let open = spawn_app_on_with(backend, |s| {
        s.passwords.breached_url = Some(url.clone());
    })
    .await;
    let r = register(&open, "open@example.com", CLEAN).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    drop(open);
    let closed = spawn_app_on_with(backend, |s| {
        s.passwords.breached_url = Some(url.clone());
        s.passwords.breached_fail_closed = true;
    })
    .await;
    let r = register(&closed, "closed@example.com", CLEAN).await;
    assert_eq!(error_code(r, StatusCode::SERVICE_UNAVAILABLE).await, "unavailable");
    // Nothing was registered: the same email registers once the check works.
    let range = RangeServer::start(Duration::ZERO).await;
    drop(closed);
    let working = spawn_app_on_with(backend, |s| {
        s.passwords.breached_url = Some(range.url.clone());
        s.passwords.breached_fail_closed = true;
    })
    .await;
    let r = register(&working, "closed@example.com", CLEAN).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    range.handle.stop(false).await;
}}

e2e! { async fn a_slow_range_api_times_out_and_fails_as_configured(backend) {
    let range = RangeServer::start(Duration::from_secs(10)).await;
    let closed = spawn_app_on_with(backend, |s| {
        s.passwords.breached_url = Some(range.url.clone());
        s.passwords.breached_timeout = Duration::from_millis(300);
        s.passwords.breached_fail_closed = true;
    })
    .await;
    let started = Instant::now();
    let r = register(&closed, "slow-closed@example.com", CLEAN).await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(error_code(r, StatusCode::SERVICE_UNAVAILABLE).await, "unavailable");
    drop(closed);
    let open = spawn_app_on_with(backend, |s| {
        s.passwords.breached_url = Some(range.url.clone());
        s.passwords.breached_timeout = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    let r = register(&open, "slow-open@example.com", BREACHED).await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Unjudged, it is accepted: fail open trades this for availability.
    assert_eq!(r.status(), StatusCode::CREATED);
    range.handle.stop(false).await;
}}
