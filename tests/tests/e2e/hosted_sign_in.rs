//! The sign-in side of the hosted pages over HTTP, with the real services: a
//! sign-up whose mailed link (real SMTP) is followed to its page and posted,
//! a forgotten password reset through its mailed link, the second step with
//! codes from pyotp and a backup code, a social sign-in through a real OpenID
//! provider ending in a cookie session, and the refusals (another origin's
//! posts, links that act on a GET, answers that tell who has an account).

use keyledger_commands::EmailVerification;
use keyledger_e2e::oidc::{browser_client, follow_until, TestProvider};
use keyledger_e2e::pages::{Page, PageBrowser};
use keyledger_e2e::smtp::{SmtpServer, SmtpTls};
use keyledger_e2e::totp::{code_at, secret_of};
use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::email_flows::{app_mailing_to, link_token, mails_to};

const NEW_PASSWORD: &str = "a different horse, equally correct";

/// Whether the page has an element with id `id`.
fn has_id(page: &Page, id: &str) -> bool {
    page.html.contains(&format!("id=\"{id}\""))
}

/// Signs in on the sign-in page; the answer to the form's post.
async fn sign_in(browser: &mut PageBrowser<'_>, email: &str, password: &str) -> Page {
    browser
        .submit(
            "/sign-in?return_to=%2Faccount",
            "/sign-in",
            &[
                ("email", email),
                ("password", password),
                ("return_to", "/account"),
            ],
        )
        .await
}

e2e! {
    /// Sign-up answers "check your inbox" (for a taken address just the same);
    /// the mailed link's page verifies nothing until its form is posted; then
    /// the address is verified and the sign-in form signs in with cookies.
    async fn a_sign_up_is_verified_through_the_mailed_links_page_and_signs_in(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Required, |_| {}).await;
        let email = "hosted-ada@example.com";
        let mut browser = PageBrowser::new(&app);

        let page = browser.get("/sign-up").await;
        assert_eq!(page.status, StatusCode::OK);
        for id in ["sign-up-form", "email", "password", "display-name", "sign-up-submit"] {
            assert!(has_id(&page, id), "{id}: {}", page.html);
        }
        let page = browser
            .submit("/sign-up", "/sign-up",
                &[("email", email), ("password", PASSWORD), ("display_name", "Ada")])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        let taken_location = page.location().to_owned();
        let page = browser.get(&taken_location).await;
        assert!(has_id(&page, "check-inbox"), "{}", page.html);

        // The mail's link, opened: a form, and nothing done yet.
        let mail = mails_to(&smtp, email, 1).await.remove(0);
        let token = link_token(&mail);
        assert!(mail.text.contains(&format!("/verify-email?token={token}")), "{}", mail.text);
        let page = browser.get(&format!("/verify-email?token={token}")).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(page.location(), "/verify-email", "the token leaves the address bar");
        let page = browser.get("/verify-email").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(has_id(&page, "verify-email-form") && has_id(&page, "verify-email-submit"));
        assert_eq!(page.field("token").as_deref(), Some(token.as_str()));
        // No referrer to other sites (and the address holds no token anyway).
        assert_eq!(page.headers["referrer-policy"], "same-origin");
        let mut other = PageBrowser::new(&app);
        let refused = sign_in(&mut other, email, PASSWORD).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "the GET verified: {}", refused.html);
        assert_eq!(refused.error().as_deref(), Some("email_not_verified"));

        // Posted: verified, and the answer leads to a URL without the token.
        let csrf = page.form_token();
        let page = browser.post("/verify-email", &[("token", &token), ("csrf_token", &csrf)]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert!(!page.location().contains(&token));
        let page = browser.get(page.location().to_owned().as_str()).await;
        assert!(has_id(&page, "email-verified"), "{}", page.html);
        // Once only.
        let page = browser.post("/verify-email", &[("token", &token), ("csrf_token", &csrf)]).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST);
        assert_eq!(page.error().as_deref(), Some("invalid_token"));

        let page = sign_in(&mut other, email, PASSWORD).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(page.location(), "/account");
        assert!(other.cookies.contains_key("__Host-keyledger-access"));
        assert_eq!(other.get("/account").await.status, StatusCode::OK);

        // The same address again, and a new one: the same answer.
        let mut third = PageBrowser::new(&app);
        let taken = third
            .submit("/sign-up", "/sign-up", &[("email", email), ("password", PASSWORD)])
            .await;
        let new = third
            .submit("/sign-up", "/sign-up",
                &[("email", "hosted-new@example.com"), ("password", PASSWORD)])
            .await;
        assert_eq!((taken.status, taken.location()), (new.status, new.location()));
        assert_eq!(taken.location(), taken_location);
        assert_eq!(taken.html, new.html);

        // A guessable password: the form again with the reasons.
        let weak = third
            .submit("/sign-up", "/sign-up", &[("email", "weak@example.com"), ("password", "password1")])
            .await;
        assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(weak.error().as_deref(), Some("weak_password"));
        assert!(weak.html.contains("<li>"), "{}", weak.html);
        assert!(weak.html.contains("weak@example.com"));
        assert!(!weak.html.contains("password1"), "the password is not sent back");
    }
}

e2e! {
    /// Forgot password answers the same for an address without an account; the
    /// mailed link's page takes a new password (not a guessable one) on its
    /// post, and the new password signs in.
    async fn a_forgotten_password_is_reset_through_the_mailed_links_page(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |_| {}).await;
        let (email, _) = app.signed_in_user().await;
        let mut browser = PageBrowser::new(&app);

        let page = browser.get("/sign-in").await;
        assert!(page.html.contains("id=\"forgot-password-link\" href=\"/forgot-password\""));
        let known = browser
            .submit("/forgot-password", "/forgot-password", &[("email", &email)])
            .await;
        let unknown = browser
            .submit("/forgot-password", "/forgot-password", &[("email", "nobody@example.com")])
            .await;
        assert_eq!(known.status, StatusCode::SEE_OTHER);
        assert_eq!((known.status, known.location()), (unknown.status, unknown.location()));
        assert_eq!(known.html, unknown.html);
        let page = browser.get(known.location().to_owned().as_str()).await;
        assert!(has_id(&page, "reset-link-sent"), "{}", page.html);

        let token = link_token(&mails_to(&smtp, &email, 1).await[0]);
        let page = browser.get(&format!("/reset-password?token={token}")).await;
        assert_eq!(page.location(), "/reset-password", "the token leaves the address bar");
        // The language switch keeps the form, and its token.
        let page = browser.get("/reset-password?lang=ko").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.html.contains("<html lang=\"ko\">"));
        assert_eq!(page.field("token").as_deref(), Some(token.as_str()));
        for id in ["reset-password-form", "new-password", "reset-password-submit"] {
            assert!(has_id(&page, id), "{id}: {}", page.html);
        }
        // Opening the link changed nothing.
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);

        let csrf = page.form_token();
        let weak = browser
            .post("/reset-password", &[("token", &token), ("password", "password1"), ("csrf_token", &csrf)])
            .await;
        assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(weak.error().as_deref(), Some("weak_password"));
        assert!(weak.html.contains("aria-invalid=\"true\""));
        let page = browser
            .post("/reset-password", &[("token", &token), ("password", NEW_PASSWORD), ("csrf_token", &csrf)])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert!(!browser.cookies.contains_key("__Secure-keyledger-link-reset-password"),
            "done: the token's cookie is cleared");
        let page = browser.get(page.location().to_owned().as_str()).await;
        assert!(has_id(&page, "password-reset"), "{}", page.html);

        let old = sign_in(&mut PageBrowser::new(&app), &email, PASSWORD).await;
        assert_eq!(old.status, StatusCode::UNAUTHORIZED);
        let new = sign_in(&mut PageBrowser::new(&app), &email, NEW_PASSWORD).await;
        assert_eq!(new.status, StatusCode::SEE_OTHER, "{}", new.html);
    }
}

/// Enrols an authenticator app for the account behind `access`; its secret
/// and backup codes.
async fn enrol_totp(app: &TestApp, access: &str) -> (String, Vec<String>) {
    let (status, setup) = call(
        app,
        Method::POST,
        "/v1/mfa/setup",
        Some(access),
        Some(json!({"type": "totp"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{setup}");
    let secret = secret_of(setup["otpauth_uri"].as_str().unwrap());
    let method_id = setup["method_id"].as_str().unwrap();
    // The previous window's code: the sign-in below uses the current one
    // (each code works once).
    let code = code_at(&secret, chrono::Utc::now().timestamp() - 30);
    let (status, confirmed) = call(
        app,
        Method::POST,
        &format!("/v1/mfa/methods/{method_id}/confirm"),
        Some(access),
        Some(json!({ "code": code })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    let codes = confirmed["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (secret, codes)
}

e2e! {
    /// An account with an authenticator app: the password leads to the second
    /// step's page; a wrong code shows it again with the error on the code;
    /// the app's code signs in with cookies, and so does a backup code.
    async fn the_second_step_takes_an_app_code_or_a_backup_code_and_not_a_wrong_one(backend) {
        let app = spawn_app_on(backend).await;
        let (email, tokens) = app.signed_in_user().await;
        let (secret, backup_codes) = enrol_totp(&app, &tokens.access_token).await;

        let mut browser = PageBrowser::new(&app);
        let page = sign_in(&mut browser, &email, PASSWORD).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        for id in ["second-factor-form", "code", "second-factor-submit"] {
            assert!(has_id(&page, id), "{id}: {}", page.html);
        }
        assert!(!has_id(&page, "passkey-second-factor"), "no passkey on this account");
        assert!(!browser.cookies.contains_key("__Host-keyledger-access"));
        let mfa_token = page.field("mfa_token").expect("the step's token");
        let methods = page.field("methods").unwrap_or_default();
        assert!(methods.starts_with("totp:"), "{methods}");
        let csrf = page.form_token();
        let step = |code: &str| {
            [
                ("mfa_token", mfa_token.clone()),
                ("methods", methods.clone()),
                ("return_to", "/account".to_owned()),
                ("csrf_token", csrf.clone()),
                ("code", code.to_owned()),
            ]
        };
        let wrong = step("000000");
        let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = browser.post("/sign-in/second-factor", &wrong).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.html);
        assert_eq!(page.error().as_deref(), Some("invalid_code"));
        assert!(page.html.contains("aria-describedby=\"code-error code-hint\""), "{}", page.html);
        assert_eq!(page.field("mfa_token").as_deref(), Some(mfa_token.as_str()));

        let right = step(&code_at(&secret, chrono::Utc::now().timestamp()));
        let right: Vec<(&str, &str)> = right.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = browser.post("/sign-in/second-factor", &right).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(page.location(), "/account");
        assert!(browser.cookies.contains_key("__Host-keyledger-access"));
        assert_eq!(browser.get("/account").await.status, StatusCode::OK);

        // A backup code, in another browser.
        let mut browser = PageBrowser::new(&app);
        let page = sign_in(&mut browser, &email, PASSWORD).await;
        assert_eq!(page.status, StatusCode::OK);
        let page = browser
            .post("/sign-in/second-factor", &[
                ("mfa_token", &page.field("mfa_token").unwrap()),
                ("return_to", "/account"),
                ("csrf_token", &page.form_token()),
                ("code", &backup_codes[0]),
            ])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert!(browser.cookies.contains_key("__Host-keyledger-access"));
    }
}

e2e! {
    /// Every form post of the sign-in side refuses a post from another origin,
    /// even with the page's token, before it does anything.
    async fn every_sign_in_side_form_refuses_another_origin(backend) {
        let app = spawn_app_on(backend).await;
        let mut browser = PageBrowser::new(&app);
        let token = browser.get("/sign-in").await.form_token();
        browser.origin = "https://evil.example".into();
        for path in ["/sign-in", "/sign-in/second-factor", "/sign-in/second-factor/send",
                     "/sign-up", "/verify-email", "/reset-password", "/unlock", "/email-login",
                     "/forgot-password"] {
            let page = browser
                .post(path, &[
                    ("csrf_token", &token), ("email", "a@example.com"), ("password", PASSWORD),
                    ("token", "klm1.x"), ("mfa_token", "klf1.x"), ("code", "123456"),
                    ("method_id", "00000000-0000-0000-0000-000000000000"),
                ])
                .await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}: {}", page.html);
            assert_eq!(page.error().as_deref(), Some("csrf_failed"), "{path}");
        }
    }
}

e2e! {
    /// The sign-in page links to sign-up and forgot-password, offers a passkey
    /// (its script served as JavaScript), and a link's page without a token is
    /// an error, not a 500.
    async fn the_sign_in_page_has_its_links_and_its_script(backend) {
        let app = spawn_app_on(backend).await;
        let mut browser = PageBrowser::new(&app);
        let page = browser.get("/sign-in").await;
        for id in ["sign-in-form", "email", "password", "sign-in-submit", "passkey-sign-in",
                   "sign-up-link", "forgot-password-link"] {
            assert!(has_id(&page, id), "{id}: {}", page.html);
        }
        assert!(page.html.contains("autocomplete=\"username webauthn\""));
        let nonce = page.policy().split("'nonce-").nth(1).unwrap().split('\'').next().unwrap().to_owned();
        assert!(page.html.contains(&format!("<script nonce=\"{nonce}\" src=\"/assets/sign-in.js\"></script>")));
        let script = reqwest::get(app.url("/assets/sign-in.js")).await.unwrap();
        assert_eq!(script.status(), StatusCode::OK);
        assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
        let script = script.text().await.unwrap();
        for needle in ["parseRequestOptionsFromJSON", "mediation = \"conditional\"", "toJSON()",
                       "\"X-Keyledger-Session\": \"cookie\"", "/v1/auth/passkey/finish",
                       "/v1/mfa/verify"] {
            assert!(script.contains(needle), "{needle}");
        }
        for path in ["/verify-email", "/reset-password", "/unlock"] {
            let page = browser.get(path).await;
            assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(page.error().as_deref(), Some("invalid_token"));
        }
        // Sign-in by email is off here.
        assert_eq!(browser.get("/email-login?token=klm1.x").await.status, StatusCode::NOT_FOUND);
    }
}

e2e! {
    /// A provider's button on the sign-in page goes through the real OpenID
    /// provider and back to `/sign-in/social`, which signs in with cookies and
    /// returns where the sign-in page was asked to.
    async fn a_social_sign_in_from_the_page_ends_signed_in_with_cookies(backend) {
        let op = TestProvider::start().await;
        let provider = keyledger_api::settings::OAuthProviderSettings {
            name: "corp".into(),
            preset: Some("oidc".into()),
            client_id: op.client_id.clone(),
            client_secret: Some(keyledger_api::Secret::new(op.client_secret.clone())),
            issuer: Some(op.issuer.clone()),
            display_name: Some("Corp ID".into()),
            ..Default::default()
        };
        let app = spawn_app_on_with(backend, |s| s.oauth.providers = vec![provider]).await;
        op.allow_redirect_uris(&[app.url("/v1/auth/oauth/corp/callback")]).await;
        op.add_account("alice", json!({"email": "alice@example.com", "email_verified": true,
            "name": "Alice"})).await;

        let mut browser = PageBrowser::new(&app);
        let page = browser.get("/sign-in?return_to=%2Faccount%3Ftab%3D1").await;
        let marker = "class=\"button social-provider\" data-provider=\"corp\" href=\"";
        let start = page.html.find(marker).unwrap_or_else(|| panic!("{}", page.html)) + marker.len();
        let href = &page.html[start..start + page.html[start..].find('"').unwrap()];
        let href = href.replace("&#38;", "&").replace("&amp;", "&");
        assert!(page.html.contains("Corp ID"));

        let provider_browser = browser_client();
        let back = follow_until(
            &provider_browser,
            &app.url(&format!("{href}&login_hint=alice")),
            &app.url("/sign-in/social"),
        )
        .await;
        let path = format!("{}?{}", back.path(), back.query().unwrap_or_default());
        // Another browser (a link with this code sent to a victim): refused,
        // and the code left for the browser that started the sign-in.
        let mut other = PageBrowser::new(&app);
        other.get("/sign-in").await;
        let elsewhere = other.get(&path).await;
        assert_eq!(elsewhere.status, StatusCode::BAD_REQUEST, "{}", elsewhere.html);
        assert_eq!(elsewhere.error().as_deref(), Some("invalid_state"));
        assert!(!other.cookies.contains_key("__Host-keyledger-access"));

        let page = browser.get(&path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(page.location(), "/account?tab=1");
        assert!(browser.cookies.contains_key("__Host-keyledger-access"));
        let account = browser.get("/account").await;
        assert_eq!(account.status, StatusCode::OK);
        assert!(account.html.contains("alice@example.com"));

        // The code works once.
        browser.cookies.remove("__Host-keyledger-access");
        let again = browser.get(&path).await;
        assert_eq!(again.status, StatusCode::BAD_REQUEST, "{}", again.html);
        assert_eq!(again.error().as_deref(), Some("invalid_token"));
        assert!(!browser.cookies.contains_key("__Host-keyledger-access"));
        // A provider's refusal: the sign-in page, saying so.
        let refused = other.get("/sign-in/social?error=access_denied").await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(refused.error().as_deref(), Some("access_denied"));
    }
}

e2e! {
    /// With sign-in by email on, the mailed link's page signs in only on its
    /// form's post, with cookies, and the link works once.
    async fn a_mailed_sign_in_links_page_signs_in_with_cookies_on_its_post(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |s| {
            s.email_flows.login = true;
        })
        .await;
        let (email, _) = app.signed_in_user().await;
        let asked = app.post("/v1/auth/email-login", &json!({ "email": email })).await;
        assert_eq!(asked.status(), StatusCode::ACCEPTED);
        let token = link_token(&mails_to(&smtp, &email, 1).await[0]);

        let mut browser = PageBrowser::new(&app);
        let page = browser.get(&format!("/email-login?token={token}")).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert_eq!(page.location(), "/email-login");
        let page = browser.get("/email-login").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        assert!(has_id(&page, "email-login-form") && has_id(&page, "email-login-submit"));
        assert!(!browser.cookies.contains_key("__Host-keyledger-access"), "the GET signs nobody in");

        let fields = [("token", token.as_str()), ("csrf_token", &page.form_token())].map(|(k, v)| (k, v.to_owned()));
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = browser.post("/email-login", &fields).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(page.location(), "/account");
        assert!(browser.cookies.contains_key("__Host-keyledger-access"));
        assert!(!browser.cookies.contains_key("__Secure-keyledger-link-email-login"));
        assert_eq!(browser.get("/account").await.status, StatusCode::OK);

        let mut other = PageBrowser::new(&app);
        let csrf = other.get("/sign-in").await.form_token();
        let again = other.post("/email-login", &[("token", &token), ("csrf_token", &csrf)]).await;
        assert_eq!(again.status, StatusCode::BAD_REQUEST, "{}", again.html);
        assert_eq!(again.error().as_deref(), Some("invalid_token"));
    }
}

e2e! {
    /// The lockout mail's unlock link: its page unlocks nothing until its form
    /// is posted; then the password signs in again.
    async fn the_unlock_links_page_lifts_the_lockout_on_its_post(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |s| {
            s.lockout.delay = std::time::Duration::ZERO;
        })
        .await;
        let (email, _) = app.signed_in_user().await;
        for _ in 0..5 {
            assert_eq!(app.login(&email, "not the password at all").await.status(), StatusCode::UNAUTHORIZED);
        }
        let locked = sign_in(&mut PageBrowser::new(&app), &email, PASSWORD).await;
        assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS, "{}", locked.html);
        assert_eq!(locked.error().as_deref(), Some("too_many_attempts"));

        let mail = mails_to(&smtp, &email, 1).await.remove(0);
        assert!(mail.text.contains("/unlock?token="), "{}", mail.text);
        let token = link_token(&mail);
        let mut browser = PageBrowser::new(&app);
        let page = browser.get(&format!("/unlock?token={token}")).await;
        assert_eq!(page.location(), "/unlock");
        let page = browser.get("/unlock").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        assert!(has_id(&page, "unlock-form") && has_id(&page, "unlock-submit"));
        let still = sign_in(&mut PageBrowser::new(&app), &email, PASSWORD).await;
        assert_eq!(still.status, StatusCode::TOO_MANY_REQUESTS, "the GET unlocked");

        let csrf = page.form_token();
        let page = browser.post("/unlock", &[("token", &token), ("csrf_token", &csrf)]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        let page = browser.get(page.location().to_owned().as_str()).await;
        assert!(has_id(&page, "account-unlocked"), "{}", page.html);
        let page = sign_in(&mut PageBrowser::new(&app), &email, PASSWORD).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    }
}

e2e! {
    /// An account whose second factor is a mailed code: the step's page offers
    /// to send one, says it did, and the mailed code signs in with cookies.
    async fn the_second_step_sends_a_mailed_code_when_asked_and_takes_it(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Optional, |_| {}).await;
        let email = "hosted-grace@example.com";
        assert_eq!(app.register(email, PASSWORD).await.status(), StatusCode::ACCEPTED);
        let verification = mails_to(&smtp, email, 1).await.remove(0);
        let (status, _) = crate::email_flows::verify(&app, &link_token(&verification)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let tokens = app.tokens(app.login(email, PASSWORD).await).await;
        let access = tokens.access_token.as_str();
        let (status, setup) =
            call(&app, Method::POST, "/v1/mfa/setup", Some(access), Some(json!({"type": "email"}))).await;
        assert_eq!(status, StatusCode::CREATED, "{setup}");
        let method_id = setup["method_id"].as_str().unwrap().to_owned();
        let first = crate::email_login::code_in(&mails_to(&smtp, email, 2).await.remove(1));
        let (status, confirmed) = call(&app, Method::POST,
            &format!("/v1/mfa/methods/{method_id}/confirm"), Some(access),
            Some(json!({"code": first}))).await;
        assert_eq!(status, StatusCode::OK, "{confirmed}");

        let mut browser = PageBrowser::new(&app);
        let page = sign_in(&mut browser, email, PASSWORD).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        assert!(page.html.contains(&format!("name=\"method_id\" value=\"{method_id}\"")), "{}", page.html);
        assert!(page.html.contains("data-method=\"email\""));
        let mfa_token = page.field("mfa_token").unwrap();
        let methods = page.field("methods").unwrap();
        let csrf = page.form_token();
        let page = browser
            .post("/sign-in/second-factor/send", &[
                ("mfa_token", &mfa_token), ("methods", &methods), ("return_to", "/account"),
                ("csrf_token", &csrf), ("method_id", &method_id),
            ])
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        assert!(has_id(&page, "code-sent"), "{}", page.html);
        let code = crate::email_login::code_in(&mails_to(&smtp, email, 3).await.remove(2));
        let page = browser
            .post("/sign-in/second-factor", &[
                ("mfa_token", &mfa_token), ("methods", &methods), ("return_to", "/account"),
                ("csrf_token", &csrf), ("code", &code),
            ])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert!(browser.cookies.contains_key("__Host-keyledger-access"));
    }
}

/// What the page's script sends: JSON in cookie mode from this origin. The
/// answer's status and body; its cookies go into `browser`'s jar.
async fn script_call(
    browser: &mut PageBrowser<'_>,
    app: &TestApp,
    path: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(app.url(path))
        .header("x-keyledger-session", "cookie")
        .header("origin", app.address.trim_end_matches('/'))
        .json(&body)
        .send()
        .await
        .unwrap();
    for line in response.headers().get_all("set-cookie") {
        let pair = line.to_str().unwrap().split(';').next().unwrap();
        let (name, value) = pair.split_once('=').unwrap();
        browser
            .cookies
            .insert(name.trim().to_owned(), value.trim().to_owned());
    }
    let status = response.status();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

e2e! {
    /// The passkey parts of the pages, by the calls their script makes (the
    /// browser test drives the script itself): an account with a passkey gets
    /// `#passkey-second-factor` on its second step, and the challenge and
    /// verify calls in cookie mode sign the browser in; a passkey sign-in's
    /// finish in cookie mode does too.
    async fn the_pages_passkey_calls_sign_in_with_cookies(backend) {
        use webauthn_authenticator_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, WebauthnAuthenticator};
        use webauthn_authenticator_rs::softpasskey::SoftPasskey;
        let origin: url::Url = "https://keyledger.test".parse().unwrap();
        let app = spawn_app_on_with(backend, |s| {
            s.webauthn.rp_id = "keyledger.test".into();
            s.webauthn.origins = vec!["https://keyledger.test".parse().unwrap()];
        })
        .await;
        let (email, tokens) = app.signed_in_user().await;
        let mut key = SoftPasskey::new(true);
        let (status, start) = call(&app, Method::POST, "/v1/passkeys/register/start",
            Some(&tokens.access_token), None).await;
        assert_eq!(status, StatusCode::OK, "{start}");
        let creation: CreationChallengeResponse = serde_json::from_value(start["options"].clone()).unwrap();
        let credential = key.do_registration(origin.clone(), creation).unwrap();
        let (status, added) = call(&app, Method::POST, "/v1/passkeys/register/finish",
            Some(&tokens.access_token),
            Some(json!({"challenge_id": start["challenge_id"], "credential": credential}))).await;
        assert_eq!(status, StatusCode::CREATED, "{added}");
        let passkey_id = added["id"].as_str().unwrap().to_owned();

        // The password, then the second step with its passkey button.
        let mut browser = PageBrowser::new(&app);
        let page = sign_in(&mut browser, &email, PASSWORD).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        assert!(has_id(&page, "passkey-second-factor"), "{}", page.html);
        assert!(page.html.contains(&format!("data-method-id=\"{passkey_id}\"")), "{}", page.html);
        assert!(page.html.contains("data-return-to=\"/account\""));
        assert!(page.html.contains("src=\"/assets/sign-in.js\""));
        let mfa_token = page.field("mfa_token").unwrap();
        let (status, challenge) = script_call(&mut browser, &app, "/v1/mfa/challenge",
            json!({"mfa_token": mfa_token, "method_id": passkey_id})).await;
        assert_eq!(status, StatusCode::OK, "{challenge}");
        let request: RequestChallengeResponse = serde_json::from_value(challenge["options"].clone()).unwrap();
        let assertion = key.do_authentication(origin.clone(), request).unwrap();
        let (status, verified) = script_call(&mut browser, &app, "/v1/mfa/verify",
            json!({"mfa_token": mfa_token, "credential": assertion})).await;
        assert_eq!(status, StatusCode::OK, "{verified}");
        assert!(verified.get("access_token").is_none(), "cookie mode: no token in the body");
        assert!(browser.cookies.contains_key("__Host-keyledger-access"));
        assert_eq!(browser.get("/account").await.status, StatusCode::OK);

        // A passkey sign-in from the sign-in page, finished in cookie mode.
        let mut browser = PageBrowser::new(&app);
        let page = browser.get("/sign-in").await;
        assert!(has_id(&page, "passkey-sign-in"));
        let (status, start) = script_call(&mut browser, &app, "/v1/auth/passkey/start", json!({"email": email})).await;
        assert_eq!(status, StatusCode::OK, "{start}");
        let request: RequestChallengeResponse = serde_json::from_value(start["options"].clone()).unwrap();
        let assertion = key.do_authentication(origin, request).unwrap();
        let (status, finished) = script_call(&mut browser, &app, "/v1/auth/passkey/finish",
            json!({"challenge_id": start["challenge_id"], "credential": assertion})).await;
        assert_eq!(status, StatusCode::OK, "{finished}");
        assert!(browser.cookies.contains_key("__Host-keyledger-access"));
        assert_eq!(browser.get("/account").await.status, StatusCode::OK);
    }
}

e2e! {
    /// A social sign-in from the page to an account with a second factor ends
    /// on the second step's page, whose code signs in with cookies and returns
    /// where the sign-in page was asked to.
    async fn a_social_sign_in_from_the_page_asks_for_the_second_factor(backend) {
        const APP: &str = "http://127.0.0.1:9/app/done";
        let op = TestProvider::start().await;
        let provider = keyledger_api::settings::OAuthProviderSettings {
            name: "corp".into(),
            preset: Some("oidc".into()),
            client_id: op.client_id.clone(),
            client_secret: Some(keyledger_api::Secret::new(op.client_secret.clone())),
            issuer: Some(op.issuer.clone()),
            ..Default::default()
        };
        let app = spawn_app_on_with(backend, |s| {
            s.oauth.providers = vec![provider];
            s.oauth.redirect_uris = vec![APP.parse().unwrap()];
        })
        .await;
        op.allow_redirect_uris(&[app.url("/v1/auth/oauth/corp/callback")]).await;
        op.add_account("bob", json!({"email": "bob@example.com", "email_verified": true})).await;

        // An app's sign-in first (the account is made), to enrol an app code.
        let start = app.url(&format!(
            "/v1/auth/oauth/corp/start?redirect_uri={}&login_hint=bob",
            url::form_urlencoded::byte_serialize(APP.as_bytes()).collect::<String>()
        ));
        let back = follow_until(&browser_client(), &start, APP).await;
        let code = back.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
        let (status, tokens) = call(&app, Method::POST, "/v1/auth/oauth/exchange", None,
            Some(json!({ "code": code }))).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        let (secret, _) = enrol_totp(&app, tokens["access_token"].as_str().unwrap()).await;

        let mut browser = PageBrowser::new(&app);
        let page = browser.get("/sign-in?return_to=%2Faccount").await;
        let marker = "data-provider=\"corp\" href=\"";
        let at = page.html.find(marker).unwrap() + marker.len();
        let href = page.html[at..at + page.html[at..].find('"').unwrap()]
            .replace("&#38;", "&")
            .replace("&amp;", "&");
        let back = follow_until(&browser_client(), &app.url(&format!("{href}&login_hint=bob")),
            &app.url("/sign-in/social")).await;
        let page = browser.get(&format!("{}?{}", back.path(), back.query().unwrap())).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        assert!(has_id(&page, "second-factor-form"), "{}", page.html);
        assert!(!browser.cookies.contains_key("__Host-keyledger-access"));
        let code = code_at(&secret, chrono::Utc::now().timestamp());
        let fields = [
            ("mfa_token", page.field("mfa_token").unwrap()),
            ("return_to", page.field("return_to").unwrap()),
            ("csrf_token", page.form_token()),
            ("code", code),
        ];
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = browser.post("/sign-in/second-factor", &fields).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
        assert_eq!(page.location(), "/account");
        assert!(browser.cookies.contains_key("__Host-keyledger-access"));
    }
}
