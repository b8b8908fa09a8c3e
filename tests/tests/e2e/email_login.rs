//! Sign-in by email, end to end: the server mails through a real SMTP server
//! (aiosmtpd) on loopback, and the tests sign in with the link or the code in
//! what arrives.

use std::time::Duration;

use futures::future::join_all;
use keyledger_commands::EmailVerification;
use keyledger_e2e::smtp::{ReceivedMail, SmtpServer, SmtpTls};
use keyledger_e2e::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::email_flows::{app_mailing_to, link_token, mails_to, post_json};

async fn ask(app: &TestApp, email: &str) -> (StatusCode, Value) {
    post_json(app, "/v1/auth/email-login", json!({"email": email})).await
}

async fn with_token(app: &TestApp, token: &str) -> (StatusCode, Value) {
    post_json(app, "/v1/auth/email-login/verify", json!({"token": token})).await
}

async fn with_code(app: &TestApp, email: &str, code: &str) -> (StatusCode, Value) {
    post_json(
        app,
        "/v1/auth/email-login/verify",
        json!({"email": email, "code": code}),
    )
    .await
}

/// The six-digit code in a sign-in mail's text part (the line that holds only it).
pub(crate) fn code_in(mail: &ReceivedMail) -> String {
    mail.text
        .lines()
        .map(str::trim)
        .find(|line| line.len() == 6 && line.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no code in {:?}", mail.text))
        .to_owned()
}

/// A code that is not `code`.
fn other_than(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

/// A server with sign-in by email on (and `configure` applied).
async fn app_with_email_login(
    backend: Backend,
    smtp: &SmtpServer,
    mode: EmailVerification,
    configure: impl FnOnce(&mut keyledger_api::Settings),
) -> TestApp {
    app_mailing_to(backend, smtp, mode, |s| {
        s.email_flows.login = true;
        s.lockout.delay = Duration::ZERO;
        configure(s);
    })
    .await
}

fn count_of(events: &[StoredEvent], event_type: &str) -> usize {
    events.iter().filter(|e| e.event_type == event_type).count()
}

e2e! {
    /// The mailed link signs in once (over STARTTLS), proves the address (with
    /// verification required, the password then works too), and is in no event.
    async fn a_mailed_link_signs_in_once_and_proves_the_address(backend) {
        let smtp = SmtpServer::start(SmtpTls::StartTls);
        let app = app_with_email_login(backend, &smtp, EmailVerification::Required, |_| {}).await;
        let email = "ada@example.com";
        assert_eq!(app.register(email, PASSWORD).await.status(), StatusCode::ACCEPTED);
        mails_to(&smtp, email, 1).await;
        let refused = app.login(email, PASSWORD).await;
        assert_eq!(error_code(refused, StatusCode::FORBIDDEN).await, "email_not_verified");

        let (status, answer) = ask(&app, email).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let mail = mails_to(&smtp, email, 2).await.remove(1);
        assert!(mail.subject.to_lowercase().contains("sign-in"), "{}", mail.subject);
        assert!(mail.text.contains("10 minutes"), "the lifetime: {}", mail.text);
        let token = link_token(&mail);
        let code = code_in(&mail);
        assert!(mail.text.contains(&format!("/email-login?token={token}")));
        assert!(mail.html.as_deref().is_some_and(|html| html.contains(&token) && html.contains(&code)));

        let (status, tokens) = with_token(&app, &token).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert!(tokens["device_token"].as_str().is_some_and(|t| t.starts_with("kld1.")));
        let access = tokens["access_token"].as_str().unwrap();
        let validated = app.validate(access).await;
        assert_eq!(validated["active"], true);
        assert_eq!(validated["email_verified"], true);
        // The refresh token works as a password login's does.
        let refresh = tokens["refresh_token"].as_str().unwrap();
        assert_eq!(app.refresh(refresh).await.status(), StatusCode::OK);
        // The address is proved: the password signs in now.
        assert_eq!(app.login(email, PASSWORD).await.status(), StatusCode::OK);

        // Used: neither the link nor the code works again.
        let (status, used) = with_token(&app, &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(used["error"], "invalid_token");
        let (status, used) = with_code(&app, email, &code).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(used["error"], "invalid_token");

        let events = app.stored_events().await;
        let logged_in: Vec<_> = events.iter().filter(|e| e.event_type == "UserLoggedIn").collect();
        assert!(logged_in[0].payload.contains("\"email\""), "{}", logged_in[0].payload);
        assert_eq!(count_of(&events, "EmailLoginRequested"), 1);
        for event in &events {
            for secret in [token.as_str(), code.as_str()] {
                assert!(!event.payload.contains(secret), "{} holds a secret", event.event_type);
                assert!(!event.metadata.contains(secret), "{} holds a secret", event.event_type);
            }
        }
    }
}

e2e! {
    /// The code signs in with the address (typed with a space); a wrong code is
    /// refused and counted like a wrong password.
    async fn the_code_signs_in_and_a_wrong_code_counts_as_a_failure(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_with_email_login(backend, &smtp, EmailVerification::Off, |_| {}).await;
        let (email, _) = app.signed_in_user().await;
        assert_eq!(ask(&app, &email).await.0, StatusCode::ACCEPTED);
        let code = code_in(&mails_to(&smtp, &email, 1).await[0]);

        let (status, wrong) = with_code(&app, &email, &other_than(&code)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(wrong["error"], "invalid_token");
        assert_eq!(count_of(&app.stored_events().await, "EmailLoginCodeRejected"), 1);

        let typed = format!("{} {}", &code[..3], &code[3..]);
        let (status, tokens) = with_code(&app, &email.to_uppercase(), &typed).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert_eq!(app.validate(tokens["access_token"].as_str().unwrap()).await["active"], true);
        // The sign-in reset the count: four wrong passwords more do not lock.
        for _ in 0..4 {
            assert_eq!(app.login(&email, "not the password at all").await.status(), StatusCode::UNAUTHORIZED);
        }
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    }
}

e2e! {
    /// Twenty wrong codes at once: each is counted (no lost failure), the
    /// account locks at the fifth, the rest are not even checked, and the mail's
    /// code is dead; a new mail's link still signs in and lifts the lock.
    async fn parallel_wrong_codes_are_each_counted_and_lock_the_account(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_with_email_login(backend, &smtp, EmailVerification::Off, |_| {}).await;
        let (email, _) = app.signed_in_user().await;
        assert_eq!(ask(&app, &email).await.0, StatusCode::ACCEPTED);
        let code = code_in(&mails_to(&smtp, &email, 1).await[0]);
        let wrong = other_than(&code);

        let answers = join_all((0..20).map(|_| with_code(&app, &email, &wrong))).await;
        for (status, answer) in &answers {
            assert_eq!(*status, StatusCode::BAD_REQUEST, "{answer}");
            assert_eq!(answer["error"], "invalid_token");
        }
        let events = app.stored_events().await;
        assert_eq!(count_of(&events, "EmailLoginCodeRejected"), 5);
        assert_eq!(count_of(&events, "AccountLocked"), 1);
        let locked = app.login(&email, PASSWORD).await;
        assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
        // The lock ended the request: its right code no longer works.
        assert_eq!(with_code(&app, &email, &code).await.1["error"], "invalid_token");

        // A new mail (after the lockout mail): its code is refused while the
        // account is locked, with the lock's answer (the caller knows the
        // code); its link signs in.
        assert_eq!(ask(&app, &email).await.0, StatusCode::ACCEPTED);
        let mails = mails_to(&smtp, &email, 3).await;
        let sign_in = mails
            .iter()
            .rev()
            .find(|m| m.text.contains("/email-login?token="))
            .expect("a second sign-in mail");
        let (status, answer) = with_code(&app, &email, &code_in(sign_in)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
        assert_eq!(answer["error"], "too_many_attempts");
        let (status, tokens) = with_token(&app, &link_token(sign_in)).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    }
}

e2e! {
    /// Asking answers the same for an address with an account and one without;
    /// a code for an address without one, a superseded link, an expired one and
    /// a forged one are refused like a wrong code.
    async fn unknown_addresses_and_stale_or_forged_mails_get_the_same_refusal(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_with_email_login(backend, &smtp, EmailVerification::Off, |s| {
            s.email_flows.login_ttl = Duration::from_secs(3);
        })
        .await;
        let (email, _) = app.signed_in_user().await;
        let known = ask(&app, &email).await;
        let unknown = ask(&app, "nobody@example.com").await;
        assert_eq!(known, unknown);
        assert_eq!(known.0, StatusCode::ACCEPTED);
        let first = mails_to(&smtp, &email, 1).await.remove(0);
        assert_eq!(ask(&app, &email).await.0, StatusCode::ACCEPTED);
        let second = mails_to(&smtp, &email, 2).await.remove(1);
        assert_ne!(link_token(&first), link_token(&second));

        let refusal = with_code(&app, "nobody@example.com", &code_in(&second)).await;
        assert_eq!(refusal.0, StatusCode::BAD_REQUEST);
        assert_eq!(refusal.1["error"], "invalid_token");
        let token = link_token(&second);
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        for stale in [link_token(&first), forged, "klm1.nonsense".to_owned()] {
            assert_eq!(with_token(&app, &stale).await, refusal, "{stale}");
        }
        for bad in [json!({}), json!({"email": email}), json!({"token": token, "code": "123456"})] {
            let (status, answer) = post_json(&app, "/v1/auth/email-login/verify", bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(answer["error"], "invalid_request");
        }

        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(with_token(&app, &token).await, refusal);
        assert_eq!(with_code(&app, &email, &code_in(&second)).await, refusal);
        // Nobody without an account was mailed.
        assert!(smtp.mails().iter().all(|m| crate::email_flows::addressed_to(m, &email)));
    }
}

e2e! {
    /// Off by default: both routes answer 404 `email_login_disabled` and nothing
    /// is mailed.
    async fn sign_in_by_email_is_off_unless_turned_on(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |_| {}).await;
        let (email, _) = app.signed_in_user().await;
        let (status, answer) = ask(&app, &email).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(answer["error"], "email_login_disabled");
        let (status, answer) = with_code(&app, &email, "123456").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(answer["error"], "email_login_disabled");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(smtp.mails().is_empty());
        assert_eq!(count_of(&app.stored_events().await, "EmailLoginRequested"), 0);
    }
}
