//! The account page over HTTP, with the real services behind it: it lists the
//! account's sessions and ends another one; an authenticator app is enrolled
//! through its forms (codes from pyotp, which we did not write) and the backup
//! codes are shown once; the password and the address change; the account is
//! deleted; every form post from another origin or without the page's token is
//! refused and changes nothing; a browser not signed in is sent to sign in.

use keyledger_e2e::pages::{Page, PageBrowser};
use keyledger_e2e::totp::code_now;
use keyledger_e2e::*;
use reqwest::StatusCode;

/// A browser signed in to a fresh account through the sign-in form; the
/// account's email and the tokens of a second session (signed in by the API,
/// as another device would).
async fn signed_in_browser(app: &TestApp) -> (PageBrowser<'_>, String, Tokens) {
    let (email, other) = app.signed_in_user().await;
    let mut browser = PageBrowser::new(app);
    let page = browser
        .submit(
            "/sign-in",
            "/sign-in",
            &[("email", &email), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "/account");
    (browser, email, other)
}

/// The account page, which must answer 200.
async fn account(browser: &mut PageBrowser<'_>) -> Page {
    let page = browser.get("/account").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    page
}

/// The text between `start` and the next `end` after it.
fn between<'a>(html: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = html.find(start)? + start.len();
    let to = html[from..].find(end)? + from;
    Some(&html[from..to])
}

e2e! { async fn a_browser_not_signed_in_is_sent_to_sign_in(backend) {
    let app = spawn_app_on(backend).await;
    let mut browser = PageBrowser::new(&app);
    let page = browser.get("/account").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    // First to resume a session from a refresh cookie; there is none.
    assert_eq!(
        page.location(),
        "/v1/auth/refresh/resume?return_to=%2Faccount%3Fresumed%3D1"
    );
    let page = browser.get(page.location()).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/sign-in?return_to=%2Faccount%3Fresumed%3D1");
    // Back from resuming and still not signed in: to sign in, never round again.
    let page = browser.get("/account?resumed=1").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/sign-in?return_to=%2Faccount");
    // A form post too, with the anonymous page's own token.
    let token = browser.get("/sign-in").await.form_token();
    let page = browser.post("/account/password", &[("csrf_token", &token),
        ("current_password", PASSWORD), ("new_password", "another horse, rather correct")]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/sign-in?return_to=%2Faccount");
}}

e2e! { async fn the_page_lists_sessions_and_ends_another_one(backend) {
    let app = spawn_app_on(backend).await;
    let (mut browser, email, other) = signed_in_browser(&app).await;
    let page = account(&mut browser).await;
    assert!(page.html.contains(&email));
    for id in ["profile", "email-change", "password-change", "sessions", "passkeys",
               "second-factors", "identities", "activity", "delete-account"] {
        assert!(page.html.contains(&format!("<section id=\"{id}\"")), "section#{id}");
    }
    assert!(page.html.contains("<ul id=\"session-list\""));
    assert!(page.html.contains("<ol id=\"activity-list\""));
    assert!(page.html.contains("<script nonce=\""), "the passkey script, with the nonce");
    // Two sessions: this browser's (no button), and the other device's.
    let items = page.html.matches("data-session-id=").count();
    assert_eq!(items, 2, "{}", page.html);
    assert_eq!(page.html.matches("data-current=\"true\"").count(), 1);
    let other_item = between(&page.html, &format!("data-session-id=\"{}\"", other.session_id), "</li>")
        .expect("the other session is listed");
    assert!(other_item.contains("revoke-session"), "{other_item}");
    assert!(!other_item.contains("data-current"));
    // The activity speaks in words.
    assert!(page.html.contains("Signed in"), "{}", page.html);

    assert_eq!(app.me(&other.access_token).await.status(), StatusCode::OK);
    let token = page.form_token();
    let page = browser
        .post(&format!("/account/sessions/{}/revoke", other.session_id), &[("csrf_token", &token)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "/account?done=session-revoked");
    assert_eq!(app.me(&other.access_token).await.status(), StatusCode::UNAUTHORIZED);

    let page = browser.get("/account?done=session-revoked").await;
    assert!(page.html.contains("role=\"status\""));
    assert!(page.html.contains("That device was signed out."));
    assert_eq!(page.html.matches("data-session-id=").count(), 1);

    // An unknown session: the page again, the refusal in words, not a 500.
    let page = browser
        .post(&format!("/account/sessions/{}/revoke", uuid::Uuid::new_v4()), &[("csrf_token", &token)])
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert_eq!(page.error().as_deref(), Some("session_not_found"));
    let page = browser.post("/account/sessions/not-a-uuid/revoke", &[("csrf_token", &token)]).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
}}

e2e! { async fn an_authenticator_app_is_enrolled_through_the_pages_and_its_codes_shown_once(backend) {
    let app = spawn_app_on(backend).await;
    let (mut browser, email, _) = signed_in_browser(&app).await;
    let token = account(&mut browser).await.form_token();

    let page = browser.post("/account/totp", &[("csrf_token", &token)]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    assert_eq!(page.headers["cache-control"], "no-store");
    let qr = between(&page.html, "id=\"totp-qr\" class=\"qr\" src=\"", "\"").expect("img#totp-qr");
    assert!(qr.starts_with("data:image/svg+xml;base64,"), "{qr}");
    let secret = between(&page.html, "<code id=\"totp-secret\">", "</code>").expect("code#totp-secret").to_owned();
    assert!(page.html.contains("id=\"totp-confirm\""));
    let method_id = page.field("method_id").expect("the method, hidden");

    // A wrong code: the form again, the error tied to the field, no secret twice.
    let page = browser
        .post("/account/totp/confirm", &[("csrf_token", &token), ("method_id", &method_id), ("code", "000000")])
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.html);
    assert_eq!(page.error().as_deref(), Some("invalid_code"));
    assert!(page.html.contains("aria-describedby=\"totp-error\""));
    assert!(!page.html.contains(&secret));

    let page = browser
        .post("/account/totp/confirm", &[("csrf_token", &token), ("method_id", &method_id), ("code", &code_now(&secret))])
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    let codes = between(&page.html, "<ul id=\"backup-codes\"", "</ul>").expect("ul#backup-codes");
    assert_eq!(codes.matches("<li>").count(), 10, "{codes}");
    assert!(page.html.contains("href=\"/account\""));

    // Once: the account page lists the app and shows no code.
    let first_code = between(codes, "<code>", "</code>").unwrap().to_owned();
    let page = account(&mut browser).await;
    assert!(page.html.contains("Authenticator app"));
    assert!(!page.html.contains(&first_code));
    assert!(!page.html.contains("id=\"backup-codes\""));
    assert!(page.html.contains("Two-step sign-in method added"), "the activity shows it");

    // A password login now asks for the second factor.
    let login = body(app.login(&email, PASSWORD).await).await;
    assert_eq!(login["mfa_required"], true, "{login}");

    // New backup codes (the session proved the factor? it signed in before:
    // the page says to sign in again, never a 500).
    let page = browser.post("/account/backup-codes", &[("csrf_token", &token)]).await;
    assert!(page.status == StatusCode::OK || page.status == StatusCode::UNAUTHORIZED, "{}", page.status);
    if page.status == StatusCode::OK {
        let fresh = between(&page.html, "<ul id=\"backup-codes\"", "</ul>").expect("ul#backup-codes");
        assert!(!fresh.contains(&first_code));
    } else {
        assert_eq!(page.error().as_deref(), Some("reauthentication_required"));
    }
}}

e2e! { async fn the_password_changes_and_a_weak_one_is_refused_with_reasons(backend) {
    let app = spawn_app_on(backend).await;
    let (mut browser, email, other) = signed_in_browser(&app).await;
    let token = account(&mut browser).await.form_token();

    let page = browser.post("/account/password", &[("csrf_token", &token),
        ("current_password", PASSWORD), ("new_password", "password")]).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", page.html);
    assert_eq!(page.error().as_deref(), Some("weak_password"));
    assert!(page.html.contains("id=\"password-reasons\""), "{}", page.html);
    assert!(page.html.contains("aria-invalid=\"true\""));
    assert!(!page.html.contains("value=\"password\""), "a password is never echoed");

    let page = browser.post("/account/password", &[("csrf_token", &token),
        ("current_password", "not the password"), ("new_password", "another horse, rather correct")]).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert_eq!(page.error().as_deref(), Some("invalid_credentials"));

    let page = browser.post("/account/password", &[("csrf_token", &token),
        ("current_password", PASSWORD), ("new_password", "another horse, rather correct")]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "/account?done=password-changed");
    // This browser stays signed in; the other device is signed out.
    let page = browser.get(page.location()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains("Your password was changed."));
    assert_eq!(app.me(&other.access_token).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login(&email, "another horse, rather correct").await.status(), StatusCode::OK);
}}

e2e! { async fn an_address_change_is_requested_with_the_password(backend) {
    let app = spawn_app_on(backend).await;
    let (mut browser, email, other) = signed_in_browser(&app).await;
    let token = account(&mut browser).await.form_token();
    let new_email = format!("moved-{}", email);

    let page = browser.post("/account/email", &[("csrf_token", &token),
        ("new_email", &new_email), ("password", "not the password")]).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert_eq!(page.error().as_deref(), Some("invalid_credentials"));
    assert!(page.html.contains(&format!("value=\"{new_email}\"")), "the address typed is kept");

    let page = browser.post("/account/email", &[("csrf_token", &token),
        ("new_email", "not an address"), ("password", PASSWORD)]).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(page.error().as_deref(), Some("invalid_email"));

    let page = browser.post("/account/email", &[("csrf_token", &token),
        ("new_email", &new_email), ("password", PASSWORD)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "/account?done=email-change-requested");
    let page = browser.get(page.location()).await;
    assert!(page.html.contains("Check the new address"), "{}", page.html);
    // Until the link is followed, the account keeps its address.
    let me = body(app.me(&other.access_token).await).await;
    assert_eq!(me["email"], email.as_str());
}}

e2e! { async fn deleting_the_account_ends_everything(backend) {
    let app = spawn_app_on(backend).await;
    let (mut browser, email, other) = signed_in_browser(&app).await;
    let token = account(&mut browser).await.form_token();

    let page = browser.post("/account/delete", &[("csrf_token", &token), ("password", "not the password")]).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert_eq!(page.error().as_deref(), Some("invalid_credentials"));
    assert!(page.html.contains("aria-describedby=\"delete-account-hint delete-account-error\""));
    assert_eq!(app.me(&other.access_token).await.status(), StatusCode::OK);

    let page = browser.post("/account/delete", &[("csrf_token", &token), ("password", PASSWORD)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "/sign-in?deleted=1");
    assert!(!browser.cookies.contains_key("__Host-keyledger-access"));
    assert_eq!(app.me(&other.access_token).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::UNAUTHORIZED);

    let page = browser.get("/sign-in?deleted=1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains("id=\"account-deleted\""), "{}", page.html);
    assert_eq!(browser.get("/account").await.status, StatusCode::SEE_OTHER);
}}

e2e! { async fn a_form_from_another_origin_or_without_its_token_changes_nothing(backend) {
    let app = spawn_app_on(backend).await;
    let (mut browser, email, other) = signed_in_browser(&app).await;
    let token = account(&mut browser).await.form_token();
    let revoke = format!("/account/sessions/{}/revoke", other.session_id);
    let posts: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/account/password", vec![("current_password", PASSWORD), ("new_password", "another horse, rather correct")]),
        ("/account/email", vec![("new_email", "elsewhere@example.com"), ("password", PASSWORD)]),
        (&revoke, vec![]),
        ("/account/totp", vec![]),
        ("/account/backup-codes", vec![]),
        ("/account/resend-verification", vec![]),
        ("/account/delete", vec![("password", PASSWORD)]),
    ];
    for (path, fields) in &posts {
        // Another site's page, with the right token even.
        browser.origin = "https://evil.example".into();
        let mut with_token = fields.clone();
        with_token.push(("csrf_token", &token));
        let page = browser.post(path, &with_token).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(page.error().as_deref(), Some("csrf_failed"), "{path}");
        // This site, without the token, or a forged one.
        browser.origin = app.address.trim_end_matches('/').to_owned();
        let page = browser.post(path, fields).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(page.error().as_deref(), Some("csrf_failed"), "{path}");
        let mut forged = fields.clone();
        forged.push(("csrf_token", "forged"));
        let page = browser.post(path, &forged).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
    }
    // Nothing changed: the other session lives, the password and the account stand.
    assert_eq!(app.me(&other.access_token).await.status(), StatusCode::OK);
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    let page = account(&mut browser).await;
    assert!(!page.html.contains("Authenticator app"));
}}

e2e! { async fn passkeys_are_renamed_and_removed_but_never_the_last_way_to_sign_in(backend) {
    use crate::passkeys::{authenticator, creation, origin, passkey_app, sign_in};
    use webauthn_authenticator_rs::prelude::WebauthnAuthenticator;
    use reqwest::Method;
    use serde_json::json;

    // An account made with a passkey: no password, so its one passkey is its
    // only way to sign in.
    let app = passkey_app(backend).await;
    let email = format!("passkey-{}@example.com", uuid::Uuid::new_v4().simple());
    let mut key = authenticator();
    let (status, start) = call(&app, Method::POST, "/v1/auth/passkey/register/start", None,
        Some(json!({"email": email, "display_name": "Ada"}))).await;
    assert_eq!(status, StatusCode::OK, "{start}");
    let credential = key.do_registration(origin(), creation(&start["options"])).unwrap();
    let (status, registered) = call(&app, Method::POST, "/v1/auth/passkey/register/finish", None,
        Some(json!({"challenge_id": start["challenge_id"], "credential": credential, "name": "Phone"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let (status, signed_in) = sign_in(&app, &email, &mut key).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");

    // The browser holds that session in its cookie, as cookie mode sets it.
    let mut browser = PageBrowser::new(&app);
    browser.cookies.insert("__Host-keyledger-access".into(),
        signed_in["access_token"].as_str().unwrap().to_owned());
    let page = account(&mut browser).await;
    let list = between(&page.html, "<ul id=\"passkey-list\"", "</ul>").expect("ul#passkey-list").to_owned();
    assert!(list.contains("Phone"), "{list}");
    let id = between(&list, "data-passkey-id=\"", "\"").unwrap().to_owned();
    let token = page.form_token();

    // What the page's script does to add a passkey: the JSON API with the
    // browser's cookies and the token the page hands it in a data- attribute.
    let script = browser.get("/assets/account.js").await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.headers["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(script.html.contains("/v1/passkeys/register/start"));
    let csrf = between(&page.html, "data-csrf-token=\"", "\"").expect("the script's token").to_owned();
    let cookies = browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
    let start = |csrf: String| {
        app.client.post(app.url("/v1/passkeys/register/start"))
            .header("cookie", cookies.clone())
            .header("origin", browser.origin.clone())
            .header("x-csrf-token", csrf)
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    let options = start(csrf).await.unwrap();
    assert_eq!(options.status(), StatusCode::OK);
    let options = start("forged".into()).await.unwrap();
    assert_eq!(error_code(options, StatusCode::FORBIDDEN).await, "csrf_failed");

    let page = browser.post(&format!("/account/passkeys/{id}/rename"), &[("csrf_token", &token), ("name", "Work phone")]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "/account?done=passkey-renamed");
    let page = browser.get(page.location()).await;
    assert!(page.html.contains("Work phone"));
    assert!(page.html.contains("The passkey was renamed."));

    let page = browser.post(&format!("/account/passkeys/{id}/rename"), &[("csrf_token", &token), ("name", "")]).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", page.html);
    assert_eq!(page.error().as_deref(), Some("invalid_name"));

    let page = browser.post(&format!("/account/passkeys/{id}/delete"), &[("csrf_token", &token)]).await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.html);
    assert_eq!(page.error().as_deref(), Some("last_sign_in_method"));
    assert!(page.html.contains("This is your last way to sign in"));
    let page = account(&mut browser).await;
    assert!(page.html.contains("Work phone"), "still there");

    // Deleting the account needs no password here: the session signed in a
    // moment ago (the field left empty).
    let page = browser.post("/account/delete", &[("csrf_token", &token), ("password", "")]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "/sign-in?deleted=1");
}}

e2e! { async fn a_linked_identity_is_listed_and_the_last_way_to_sign_in_is_not_unlinked(backend) {
    use crate::social_login::{person, signed_in, social_app};
    use keyledger_e2e::oidc::{browser_client, TestProvider};

    // An account made by signing in at a provider: no password, no passkey.
    let op = TestProvider::start().await;
    let app = social_app(backend, &op, |_| {}).await;
    op.add_account("alice", person("alice@example.com", true)).await;
    let tokens = signed_in(&app, &browser_client(), "corp", "alice").await;

    let mut browser = PageBrowser::new(&app);
    browser.cookies.insert("__Host-keyledger-access".into(),
        tokens["access_token"].as_str().unwrap().to_owned());
    let page = account(&mut browser).await;
    let list = between(&page.html, "<ul id=\"identity-list\"", "</ul>").expect("the identities").to_owned();
    assert!(list.contains("corp"), "{list}");
    assert!(list.contains("alice@example.com"), "{list}");
    let id = between(&list, "data-identity-id=\"", "\"").unwrap().to_owned();
    let token = page.form_token();

    let page = browser.post(&format!("/account/identities/{id}/unlink"), &[("csrf_token", &token)]).await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.html);
    assert_eq!(page.error().as_deref(), Some("last_sign_in_method"));
    let page = account(&mut browser).await;
    assert!(page.html.contains(&format!("data-identity-id=\"{id}\"")), "still linked");

    let page = browser.post(&format!("/account/identities/{}/unlink", uuid::Uuid::new_v4()), &[("csrf_token", &token)]).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert_eq!(page.error().as_deref(), Some("identity_not_found"));
}}

e2e! { async fn a_change_that_needs_a_recent_sign_in_says_so_in_the_readers_language(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.sessions.reauth_window = std::time::Duration::from_secs(2);
    })
    .await;
    let (mut browser, _, _) = signed_in_browser(&app).await;
    let token = account(&mut browser).await.form_token();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;

    // Too long since this browser signed in: no authenticator app is set up,
    // and the page says to sign in again (never a 500).
    let page = browser.post("/account/totp", &[("csrf_token", &token)]).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.html);
    assert_eq!(page.error().as_deref(), Some("reauthentication_required"));
    assert!(page.html.contains("sign in again"), "{}", page.html);
    assert!(!page.html.contains("id=\"totp-qr\""));

    browser.accept_language = Some("ko-KR,ko;q=0.9".into());
    let page = browser.post("/account/totp", &[("csrf_token", &token)]).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.html.contains("<html lang=\"ko\">"));
    assert!(page.html.contains("다시 로그인"), "{}", page.html);
    assert!(page.html.contains("로그인된 기기"));
}}

e2e! { async fn the_pages_mail_a_verification_link_and_an_address_change_link(backend) {
    use crate::email_flows::{app_mailing_to, link_token, mails_to};
    use keyledger_commands::EmailVerification;
    use keyledger_e2e::smtp::{SmtpServer, SmtpTls};

    let smtp = SmtpServer::start(SmtpTls::Plain);
    let app = app_mailing_to(backend, &smtp, EmailVerification::Optional, |_| {}).await;
    // Verification optional: an account signs in before its address is proved.
    let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
    assert_eq!(app.register(&email, PASSWORD).await.status(), StatusCode::ACCEPTED);
    // The registration's work (and its mail) follows its answer.
    mails_to(&smtp, &email, 1).await;
    app.read_models_caught_up().await;
    let mut browser = PageBrowser::new(&app);
    let page = browser
        .submit("/sign-in", "/sign-in", &[("email", &email), ("password", PASSWORD)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    let page = account(&mut browser).await;
    assert!(page.html.contains("id=\"email-unverified-badge\""));
    assert!(page.html.contains("id=\"resend-verification-form\""));
    let token = page.form_token();

    let page = browser.post("/account/resend-verification", &[("csrf_token", &token)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert_eq!(page.location(), "/account?done=verification-sent");
    let again = mails_to(&smtp, &email, 2).await.remove(1);
    assert!(!link_token(&again).is_empty());

    let new_email = format!("moved-{email}");
    let page = browser.post("/account/email", &[("csrf_token", &token),
        ("new_email", &new_email), ("password", PASSWORD)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    assert!(!page.location().contains(&new_email), "no address in the URL");
    let mail = mails_to(&smtp, &new_email, 1).await.remove(0);
    assert!(mail.text.contains("/verify-email?token="));
}}

e2e! { async fn the_account_forms_are_rate_limited_like_their_api_twins(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.rate_limits.management_per_second = 3;
    })
    .await;
    let (mut browser, _, _) = signed_in_browser(&app).await;
    let token = account(&mut browser).await.form_token();
    let mut limited = false;
    for _ in 0..10 {
        let page = browser
            .post(&format!("/account/sessions/{}/revoke", uuid::Uuid::new_v4()), &[("csrf_token", &token)])
            .await;
        if page.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(page.headers.contains_key("retry-after"));
            limited = true;
            break;
        }
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{}", page.html);
    }
    assert!(limited, "a management form post spends the management budget");
}}
