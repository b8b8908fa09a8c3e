//! The hosted pages over HTTP: the sign-in form signs in with cookies and
//! returns where it was asked to (allowlisted), forms from another origin or
//! without the page's token are refused, every page has its nonce policy, and
//! the language follows `Accept-Language` and the switch.

use keyledger_e2e::pages::PageBrowser;
use keyledger_e2e::*;
use reqwest::StatusCode;

async fn pages_app(backend: Backend) -> TestApp {
    spawn_app_on_with(backend, |s| {
        s.pages.return_urls = vec!["https://app.example/after".parse().unwrap()];
    })
    .await
}

e2e! { async fn the_sign_in_form_signs_in_with_cookies_and_returns_to_an_allowed_url(backend) {
    let app = pages_app(backend).await;
    let (email, _) = app.signed_in_user().await;
    let mut browser = PageBrowser::new(&app);

    let page = browser.get("/account?resumed=1").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/sign-in?return_to=%2Faccount");

    let page = browser
        .submit(
            "/sign-in?return_to=https%3A%2F%2Fapp.example%2Fafter%3Fx%3D1",
            "/sign-in",
            &[("email", &email), ("password", PASSWORD), ("return_to", "https://app.example/after?x=1")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "https://app.example/after?x=1");
    assert!(page.policy().contains("form-action 'self' https://app.example"), "{}", page.policy());
    assert!(browser.cookies.contains_key("__Host-keyledger-access"));

    let page = browser.get("/account").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains(&email));

    // Signed out: the session is over, the cookies gone.
    let token = page.form_token();
    let page = browser.post("/sign-out", &[("csrf_token", &token)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(!browser.cookies.contains_key("__Host-keyledger-access"));
    assert_eq!(browser.get("/account").await.status, StatusCode::SEE_OTHER);
}}

e2e! { async fn a_return_url_not_allowed_goes_to_the_account_page(backend) {
    let app = pages_app(backend).await;
    let (email, _) = app.signed_in_user().await;
    for evil in ["https://evil.example/after", "//evil.example/x", "https://app.example/after#x",
                 "https://app.example/other", "/\\evil.example"] {
        let mut browser = PageBrowser::new(&app);
        let page = browser
            .submit("/sign-in", "/sign-in", &[("email", &email), ("password", PASSWORD), ("return_to", evil)])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{evil}: {:?} {:?}", page.error(), browser.cookies);
        assert_eq!(page.location(), "/account", "{evil}");
    }
}}

e2e! { async fn a_form_from_another_origin_or_without_its_token_is_refused(backend) {
    let app = pages_app(backend).await;
    let (email, _) = app.signed_in_user().await;

    let mut browser = PageBrowser::new(&app);
    let page = browser.get("/sign-in").await;
    let token = page.form_token();
    browser.origin = "https://evil.example".into();
    let page = browser.post("/sign-in", &[("email", &email), ("password", PASSWORD), ("csrf_token", &token)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(page.error().as_deref(), Some("csrf_failed"));
    assert!(!browser.cookies.contains_key("__Host-keyledger-access"));

    let mut browser = PageBrowser::new(&app);
    browser.get("/sign-in").await;
    let page = browser.post("/sign-in", &[("email", &email), ("password", PASSWORD), ("csrf_token", "forged")]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(page.error().as_deref(), Some("csrf_failed"));

    // A wrong password: the form again, the error tied to the fields.
    let mut browser = PageBrowser::new(&app);
    let page = browser.submit("/sign-in", "/sign-in", &[("email", &email), ("password", "wrong password")]).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert_eq!(page.error().as_deref(), Some("invalid_credentials"));
    assert!(page.html.contains("aria-describedby=\"form-error\""));
}}

e2e! { async fn pages_have_a_nonce_policy_and_speak_the_readers_language(backend) {
    let app = pages_app(backend).await;
    let mut browser = PageBrowser::new(&app);
    browser.accept_language = Some("ko-KR,ko;q=0.9,en;q=0.5".into());
    let page = browser.get("/sign-in").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains("<html lang=\"ko\">"));
    assert!(page.html.contains("로그인"));
    let policy = page.policy();
    assert!(policy.contains("script-src 'nonce-"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");

    // The switch wins over the browser's languages, and is remembered.
    let page = browser.get("/sign-in?lang=en").await;
    assert!(page.html.contains("<html lang=\"en\">"));
    assert!(page.html.contains("Sign in"));
    let page = browser.get("/sign-in").await;
    assert!(page.html.contains("<html lang=\"en\">"));

    // Each answer has a nonce of its own.
    let again = browser.get("/sign-in").await;
    assert_ne!(page.policy(), again.policy());
}}

e2e! { async fn the_pages_wear_the_brand_and_can_be_turned_off(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.pages.accent_color = "#7b1fa2".into();
        s.pages.logo_url = Some("https://cdn.acme.example/logo.svg".parse().unwrap());
        s.mail.delivery.product_name = "Acme ID".into();
    })
    .await;
    let mut browser = PageBrowser::new(&app);
    let page = browser.get("/sign-in").await;
    assert!(page.html.contains("--accent: #7b1fa2"), "{}", page.html);
    assert!(page.html.contains("src=\"https://cdn.acme.example/logo.svg\""));
    assert!(page.html.contains("Acme ID"));
    assert!(page.policy().contains("img-src 'self' data: https://cdn.acme.example"), "{}", page.policy());

    let off = spawn_app_on_with(backend, |s| s.pages.enabled = false).await;
    let mut browser = PageBrowser::new(&off);
    for path in ["/sign-in", "/account"] {
        assert_eq!(browser.get(path).await.status, StatusCode::NOT_FOUND, "{path}");
    }
}}

e2e! { async fn an_expired_page_session_resumes_from_its_refresh_cookie(backend) {
    let app = pages_app(backend).await;
    let (email, _) = app.signed_in_user().await;
    let mut browser = PageBrowser::new(&app);
    let page = browser
        .submit("/sign-in", "/sign-in", &[("email", &email), ("password", PASSWORD)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let first_refresh = browser.cookies["__Secure-keyledger-refresh"].clone();

    // The access cookie's lifetime is over (the browser dropped it).
    browser.cookies.remove("__Host-keyledger-access");
    let page = browser.get("/account").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let resume = page.location().to_owned();
    assert!(resume.starts_with("/v1/auth/refresh/resume?"), "{resume}");
    let page = browser.get(&resume).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/account?resumed=1");
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(browser.cookies.contains_key("__Host-keyledger-access"));
    assert_ne!(browser.cookies["__Secure-keyledger-refresh"], first_refresh, "rotated");
    let page = browser.get("/account?resumed=1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains(&email));

    // The rotated-away refresh cookie presented again is reuse: the session ends,
    // the cookies go, and the browser is sent to sign in.
    browser.cookies.remove("__Host-keyledger-access");
    browser
        .cookies
        .insert("__Secure-keyledger-refresh".into(), first_refresh);
    let grace = app.settings.sessions.refresh_reuse_grace;
    tokio::time::sleep(grace + std::time::Duration::from_millis(200)).await;
    let page = browser.get(&resume).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(page.location().starts_with("/sign-in?"), "{}", page.location());
    assert!(!browser.cookies.contains_key("__Secure-keyledger-refresh"));
}}

e2e! { async fn a_refused_password_is_explained_in_the_readers_language(backend) {
    let app = pages_app(backend).await;
    let mut browser = PageBrowser::new(&app);
    browser.accept_language = Some("ko".into());
    let email = format!("weak-{}@example.com", uuid::Uuid::new_v4().simple());
    for (password, korean) in [("short", "8자 이상이어야 합니다"), ("password123", "너무 쉽게 추측할 수 있습니다")] {
        let page = browser
            .submit("/sign-up", "/sign-up", &[("email", &email), ("password", password), ("display_name", "Weak")])
            .await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", page.html);
        assert!(page.html.contains(korean), "{password}: {}", page.html);
        assert!(!page.html.contains("must be at least") && !page.html.contains("too easy to guess"),
            "English reasons on a Korean page: {}", page.html);
    }
    // In English, the policy's own words (with the estimator's advice).
    browser.accept_language = Some("en".into());
    let page = browser
        .submit("/sign-up", "/sign-up", &[("email", &email), ("password", "password123"), ("display_name", "Weak")])
        .await;
    assert!(page.html.contains("is too easy to guess"), "{}", page.html);
}}

e2e! { async fn a_withheld_origin_counts_only_when_the_browser_says_same_origin(backend) {
    let app = pages_app(backend).await;
    let (email, _) = app.signed_in_user().await;
    // `Origin: null` from another site (a sandboxed frame, a no-referrer page):
    // refused, though it carries the page's token.
    for site in [None, Some("cross-site"), Some("same-site")] {
        let mut browser = PageBrowser::new(&app);
        let token = browser.get("/sign-in").await.form_token();
        browser.origin = "null".into();
        browser.fetch_site = site.map(str::to_owned);
        let page = browser
            .post("/sign-in", &[("email", &email), ("password", PASSWORD), ("csrf_token", &token)])
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{site:?}");
        assert_eq!(page.error().as_deref(), Some("csrf_failed"), "{site:?}");
    }
    // From this server's own page under `no-referrer`: taken.
    let mut browser = PageBrowser::new(&app);
    let token = browser.get("/sign-in").await.form_token();
    browser.origin = "null".into();
    browser.fetch_site = Some("same-origin".into());
    let page = browser
        .post("/sign-in", &[("email", &email), ("password", PASSWORD), ("csrf_token", &token)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
}}
