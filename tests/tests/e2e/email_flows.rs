//! Verified addresses and getting back into an account by mail, end to end: the
//! server mails through a real SMTP server (aiosmtpd) on loopback, and the tests
//! follow the links in what arrives, as a person would.

use std::time::Duration;

use keyledger_api::Settings;
use keyledger_commands::EmailVerification;
use keyledger_e2e::smtp::{ReceivedMail, SmtpServer, SmtpTls};
use keyledger_e2e::*;
use keyledger_mail::SmtpUrl;
use reqwest::StatusCode;
use serde_json::{json, Value};

const NEW_PASSWORD: &str = "a different horse, equally correct";
const MAIL_WAIT: Duration = Duration::from_secs(30);

/// A server on `backend` mailing through `smtp`, verification set to `mode`, no
/// interval between mails (tests ask twice on purpose), retries after a second.
pub(crate) async fn app_mailing_to(
    backend: Backend,
    smtp: &SmtpServer,
    mode: EmailVerification,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let url = SmtpUrl::parse(&smtp.url()).expect("the test server's URL parses");
    let root = smtp.root_pem_path();
    spawn_app_on_with(backend, move |s| {
        s.email_flows.verification = mode;
        s.email_flows.interval = Duration::ZERO;
        s.mail.delivery.smtp = Some(url);
        s.mail.delivery.extra_root_pem = root;
        s.mail.delivery.send_timeout = Duration::from_secs(5);
        s.mail.retry = Duration::from_secs(1);
        configure(s);
    })
    .await
}

/// The `token` query parameter of the one link in `mail`'s text part.
pub(crate) fn link_token(mail: &ReceivedMail) -> String {
    let start = mail
        .text
        .find("?token=")
        .unwrap_or_else(|| panic!("no link in mail {:?}", mail.subject))
        + "?token=".len();
    mail.text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect()
}

pub(crate) async fn post_json(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    let response = app.post(path, &body).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub(crate) async fn verify(app: &TestApp, token: &str) -> (StatusCode, Value) {
    post_json(app, "/v1/auth/verify-email", json!({"token": token})).await
}

async fn reset(app: &TestApp, token: &str, password: &str) -> (StatusCode, Value) {
    post_json(
        app,
        "/v1/auth/reset-password",
        json!({"token": token, "password": password}),
    )
    .await
}

async fn forgot(app: &TestApp, email: &str) -> (StatusCode, Value) {
    post_json(app, "/v1/auth/forgot-password", json!({"email": email})).await
}

/// Waits until `count` mails are queued (sent or not).
async fn queued(app: &TestApp, count: i64) {
    let deadline = tokio::time::Instant::now() + MAIL_WAIT;
    loop {
        let queued: i64 = app
            .db()
            .scalar("SELECT count(*) FROM mail_outbox", &[])
            .await;
        if queued >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queued} of {count} mails queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `mail` went to exactly `address` (`unknown@x` is not `known@x`).
pub(crate) fn addressed_to(mail: &ReceivedMail, address: &str) -> bool {
    mail.to == address || mail.to.ends_with(&format!("<{address}>"))
}

/// Waits until `smtp` holds `count` mails to `to`, and returns them in the order
/// they arrived.
pub(crate) async fn mails_to(smtp: &SmtpServer, to: &str, count: usize) -> Vec<ReceivedMail> {
    let deadline = tokio::time::Instant::now() + MAIL_WAIT;
    loop {
        let mails: Vec<_> = smtp
            .mails()
            .into_iter()
            .filter(|m| addressed_to(m, to))
            .collect();
        if mails.len() >= count {
            return mails;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {count} mails to {to} within {MAIL_WAIT:?}; server log:\n{}",
            mails.len(),
            smtp.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

e2e! {
    /// Registration mails a verification link (over STARTTLS); following it
    /// verifies the address, once.
    async fn registration_mails_a_link_that_verifies_the_address_once(backend) {
        let smtp = SmtpServer::start(SmtpTls::StartTls);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Optional, |_| {}).await;
        let email = "ada@example.com";
        let response = app.register(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);

        let mail = mails_to(&smtp, email, 1).await.remove(0);
        assert!(mail.subject.to_lowercase().contains("verify") || mail.subject.to_lowercase().contains("confirm"),
            "{}", mail.subject);
        assert!(mail.message_id.starts_with('<') && mail.message_id.ends_with("@127.0.0.1>"),
            "the event id is the Message-ID: {}", mail.message_id);
        let token = link_token(&mail);
        assert!(mail.text.contains(&format!("/verify-email?token={token}")));
        assert!(mail.html.as_deref().is_some_and(|html| html.contains(&token)));

        // Optional: login works before verification, and says it is not verified yet.
        let tokens = app.tokens(app.login(email, PASSWORD).await).await;
        assert_eq!(body(app.me(&tokens.access_token).await).await["email_verified"], false);
        assert_eq!(app.validate(&tokens.access_token).await["email_verified"], false);

        assert_eq!(verify(&app, &token).await.0, StatusCode::NO_CONTENT);
        assert_eq!(body(app.me(&tokens.access_token).await).await["email_verified"], true);
        // A token issued from now on says so, a refreshed one included.
        let refreshed = app.tokens(app.refresh(&tokens.refresh_token).await).await;
        assert_eq!(app.validate(&refreshed.access_token).await["email_verified"], true);
        let (status, answer) = verify(&app, &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer["error"], "invalid_token");

        // The token is nowhere in the log.
        for event in app.stored_events().await {
            assert!(!event.payload.to_string().contains(&token));
            assert!(!event.metadata.to_string().contains(&token));
        }
    }
}

e2e! {
    /// With verification required, a correct password is not enough until the
    /// address is verified; a wrong one is refused as always.
    async fn required_verification_refuses_login_until_the_address_is_verified(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Required, |_| {}).await;
        let email = "grace@example.com";
        assert_eq!(app.register(email, PASSWORD).await.status(), StatusCode::ACCEPTED);
        let token = link_token(&mails_to(&smtp, email, 1).await[0]);

        let refused = app.login(email, PASSWORD).await;
        assert_eq!(error_code(refused, StatusCode::FORBIDDEN).await, "email_not_verified");
        let wrong = app.login(email, "not the password at all").await;
        assert_eq!(error_code(wrong, StatusCode::UNAUTHORIZED).await, "invalid_credentials");

        assert_eq!(verify(&app, &token).await.0, StatusCode::NO_CONTENT);
        assert_eq!(app.login(email, PASSWORD).await.status(), StatusCode::OK);
    }
}

e2e! {
    /// Registration, a new verification link and a reset link answer the same for
    /// an address with an account and one without; the owner of a taken address
    /// is told someone tried to register with it.
    async fn known_and_unknown_addresses_get_the_same_answers(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Optional, |_| {}).await;
        let known = "known@example.com";
        assert_eq!(app.register(known, PASSWORD).await.status(), StatusCode::ACCEPTED);
        mails_to(&smtp, known, 1).await;

        let answer = |response: reqwest::Response| async move {
            (response.status(), response.text().await.unwrap())
        };
        let taken = answer(app.register(known, PASSWORD).await).await;
        let new = answer(app.register("unknown@example.com", PASSWORD).await).await;
        assert_eq!(taken, new);
        assert_eq!(taken.0, StatusCode::ACCEPTED);
        for path in ["/v1/auth/forgot-password", "/v1/auth/resend-verification"] {
            let known_answer = answer(app.post(path, &json!({"email": known})).await).await;
            let unknown_answer =
                answer(app.post(path, &json!({"email": "nobody@example.com"})).await).await;
            assert_eq!(known_answer, unknown_answer, "{path}");
            assert_eq!(known_answer.0, StatusCode::ACCEPTED, "{path}");
        }

        // The owner: the verification link, someone tried to register, a new
        // verification link, a reset link.
        let mails = mails_to(&smtp, known, 4).await;
        let subjects: Vec<_> =
            mails.iter().map(|m| format!("{}: {}", m.to, m.subject.to_lowercase())).collect();
        assert!(subjects.iter().any(|s| s.contains("register")), "{subjects:?}");
        assert!(subjects.iter().any(|s| s.contains("reset")), "{subjects:?}");
        // Nobody else was mailed but the new address's verification.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let others: Vec<_> = smtp.mails().into_iter().filter(|m| !addressed_to(m, known)).collect();
        assert_eq!(others.len(), 1, "{:?}", others.iter().map(|m| &m.to).collect::<Vec<_>>());
        assert!(addressed_to(&others[0], "unknown@example.com"));
    }
}

e2e! {
    /// Registration with verification on answers before it hashes, so it takes
    /// its turn in the hashing pool before answering: a client with its share in
    /// use is refused (429) instead of being answered 202 for an account that is
    /// then never made. Every 202 is an account and a mail.
    async fn every_accepted_registration_is_an_account_even_when_the_pool_is_busy(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Optional, |s| {
            s.passwords.hash_concurrency_per_client = 1;
        })
        .await;
        let emails: Vec<String> = (0..8).map(|i| format!("burst-{i}@example.com")).collect();
        let answers = futures::future::join_all(
            emails.iter().map(|email| app.register(email, PASSWORD)),
        )
        .await;
        let mut accepted = Vec::new();
        for (email, response) in emails.iter().zip(answers) {
            match response.status() {
                StatusCode::ACCEPTED => accepted.push(email.clone()),
                status => {
                    let code = error_code(response, status).await;
                    assert_eq!(
                        (status, code.as_str()),
                        (StatusCode::TOO_MANY_REQUESTS, "too_many_concurrent_attempts")
                    );
                }
            }
        }
        assert!(!accepted.is_empty());
        for email in &accepted {
            mails_to(&smtp, email, 1).await;
        }
        let registered = app
            .stored_events()
            .await
            .iter()
            .filter(|e| e.event_type == "UserRegistered")
            .count();
        assert_eq!(registered, accepted.len());
    }
}

e2e! {
    /// Forgot password → mail → reset: the old sessions are dead, the old
    /// password is refused, the new one works, and a notice follows.
    async fn a_reset_link_sets_the_password_and_ends_every_session(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |_| {}).await;
        let (email, session) = app.signed_in_user().await;
        assert_eq!(forgot(&app, &email).await.0, StatusCode::ACCEPTED);
        let mail = mails_to(&smtp, &email, 1).await.remove(0);
        assert!(mail.text.contains("15 minutes"), "the link's lifetime: {}", mail.text);
        let token = link_token(&mail);
        assert!(mail.text.contains(&format!("/reset-password?token={token}")));

        // The password policy applies.
        let (status, weak) = reset(&app, &token, "password1").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(weak["error"], "weak_password");

        assert_eq!(reset(&app, &token, NEW_PASSWORD).await.0, StatusCode::NO_CONTENT);
        assert_eq!(app.validate(&session.access_token).await, json!({"active": false}));
        assert_eq!(app.refresh(&session.refresh_token).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(app.login(&email, NEW_PASSWORD).await.status(), StatusCode::OK);
        let types = app.event_types("session", &session.session_id).await;
        assert_eq!(types.last().map(String::as_str), Some("SessionRevoked"));

        // Used: the same link again is refused.
        let (status, used) = reset(&app, &token, "yet another horse, quite correct").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(used["error"], "invalid_token");

        // "Your password was changed" arrives.
        let mails = mails_to(&smtp, &email, 2).await;
        assert!(mails[1].subject.to_lowercase().contains("password"), "{}", mails[1].subject);
        assert!(!mails[1].text.contains("?token="));
    }
}

e2e! {
    /// Only the newest reset link works, none after it expires, and a forged one
    /// never.
    async fn superseded_expired_and_forged_reset_links_are_refused(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |s| {
            s.email_flows.reset_ttl = Duration::from_secs(3);
        })
        .await;
        let (email, _) = app.signed_in_user().await;
        assert_eq!(forgot(&app, &email).await.0, StatusCode::ACCEPTED);
        let first = link_token(&mails_to(&smtp, &email, 1).await[0]);
        assert_eq!(forgot(&app, &email).await.0, StatusCode::ACCEPTED);
        let second = link_token(&mails_to(&smtp, &email, 2).await[1]);
        assert_ne!(first, second);

        let mut forged = second.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        for token in [first.as_str(), forged.as_str(), "klm1.nonsense", ""] {
            let (status, answer) = reset(&app, token, NEW_PASSWORD).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{token}");
            assert_eq!(answer["error"], "invalid_token", "{token}");
        }

        tokio::time::sleep(Duration::from_secs(4)).await;
        let (status, expired) = reset(&app, &second, NEW_PASSWORD).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(expired["error"], "invalid_token");
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    }
}

e2e! {
    /// A reset lifts a lockout.
    async fn a_reset_lifts_a_lockout(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |s| {
            s.lockout.delay = Duration::ZERO;
        })
        .await;
        let (email, _) = app.signed_in_user().await;
        for _ in 0..5 {
            app.login(&email, "not the password at all").await;
        }
        let locked = app.login(&email, PASSWORD).await;
        assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(forgot(&app, &email).await.0, StatusCode::ACCEPTED);
        // The lockout mail, then the reset link.
        let mails = mails_to(&smtp, &email, 2).await;
        let reset_mail = mails
            .iter()
            .find(|m| m.text.contains("/reset-password?token="))
            .expect("a reset mail");
        let token = link_token(reset_mail);
        assert_eq!(reset(&app, &token, NEW_PASSWORD).await.0, StatusCode::NO_CONTENT);
        assert_eq!(app.login(&email, NEW_PASSWORD).await.status(), StatusCode::OK);
    }
}

e2e! {
    /// An SMTP server that is down for a while and comes back gets every mail
    /// exactly once per event.
    async fn mails_queued_while_the_smtp_server_is_down_arrive_once_when_it_is_back(backend) {
        let mut smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Optional, |_| {}).await;
        smtp.stop();
        let addresses: Vec<String> = (0..3).map(|n| format!("outage{n}@example.com")).collect();
        for (n, email) in (0i64..).zip(&addresses) {
            assert_eq!(app.register(email, PASSWORD).await.status(), StatusCode::ACCEPTED);
            // Registration answers before the account exists; its verification
            // mail queued says it does.
            queued(&app, 2 * n + 1).await;
            assert_eq!(forgot(&app, email).await.0, StatusCode::ACCEPTED);
            queued(&app, 2 * n + 2).await;
        }
        // A few attempts fail meanwhile.
        tokio::time::sleep(Duration::from_secs(3)).await;
        smtp.restart();
        for email in &addresses {
            mails_to(&smtp, email, 2).await;
        }
        // Retries that were already due arrive now or never: give them time.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mails = smtp.mails();
        assert_eq!(mails.len(), 6, "{:?}", mails.iter().map(|m| &m.subject).collect::<Vec<_>>());
        let mut ids: Vec<_> = mails.iter().map(|m| m.message_id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6, "one mail per event");
        let metrics = app.metrics().await;
        assert!(metrics.contains("keyledger_mail_retries_total"), "retries are counted");
    }
}

e2e! {
    /// A mail the SMTP server refuses for good is given up at once, counted, and
    /// listed for platform administrators, without its content.
    async fn a_mail_refused_for_good_is_listed_for_administrators(backend) {
        let smtp = SmtpServer::start(SmtpTls::StartTls);
        // Plain SMTP to a server that requires STARTTLS: 530, permanent.
        let plain = SmtpUrl::parse(&format!("smtp://127.0.0.1:{}", smtp.port())).unwrap();
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, move |s| {
            s.mail.delivery.smtp = Some(plain);
        })
        .await;
        let (admin, admin_token) = app.new_user().await;
        app.make_platform_admin(admin).await;
        let (email, _) = app.signed_in_user().await;
        assert_eq!(forgot(&app, &email).await.0, StatusCode::ACCEPTED);

        let deadline = tokio::time::Instant::now() + MAIL_WAIT;
        let listed = loop {
            let listed = body(app.get_auth("/v1/admin/mail/undelivered", &admin_token).await).await;
            if listed["mails"].as_array().is_some_and(|m| !m.is_empty()) {
                break listed;
            }
            assert!(tokio::time::Instant::now() < deadline, "nothing listed: {listed}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mail = &listed["mails"][0];
        assert_eq!(mail["template"], "password_reset");
        assert_eq!(mail["state"], "failed");
        assert_eq!(mail["attempts"], 1, "a permanent refusal is not retried");
        let text = listed.to_string();
        assert!(!text.contains(&email) && !text.contains("klm1."), "{text}");
        assert!(smtp.mails().is_empty());
        assert!(app.metrics().await.contains("keyledger_mail_failed_total"));

        // Not for everyone.
        let (_, someone) = app.new_user().await;
        let refused = app.get_auth("/v1/admin/mail/undelivered", &someone).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
}

e2e! {
    /// Without an SMTP server mails are files a newcomer can open (readable by the
    /// server's user only); erasing the account deletes them and its queue rows.
    async fn mails_written_as_files_go_with_an_erased_account(backend) {
        let app = spawn_app_on_with(backend, |s| {
            s.email_flows.verification = EmailVerification::Optional;
        })
        .await;
        let outbox = app.resources.data_dir.join("outbox");
        let email = "filed@example.com";
        assert_eq!(app.register(email, PASSWORD).await.status(), StatusCode::ACCEPTED);
        let deadline = tokio::time::Instant::now() + MAIL_WAIT;
        let file = loop {
            let found = std::fs::read_dir(&outbox).ok().and_then(|entries| {
                entries
                    .map_while(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "eml"))
            });
            if let Some(file) = found {
                break file;
            }
            assert!(tokio::time::Instant::now() < deadline, "no mail in {}", outbox.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mail = keyledger_e2e::smtp::parse_mail(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(mail.to, email);
        assert!(mail.text.contains("/verify-email?token=klm1."), "{}", mail.text);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "a mail holds a working link");
        }

        let tokens = app.tokens(app.login(email, PASSWORD).await).await;
        let erased = app
            .client
            .delete(app.url("/v1/users/me"))
            .bearer_auth(&tokens.access_token)
            .json(&json!({"password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(erased.status(), StatusCode::NO_CONTENT);
        assert!(!file.exists(), "the erased account's mail file is left behind");
        let rows: Vec<i64> = app.db().scalars("SELECT count(*) FROM mail_outbox", &[]).await;
        assert_eq!(rows, [0], "the erased account's queued mails are left");
    }
}

async fn unlock(app: &TestApp, token: &str) -> (StatusCode, Value) {
    post_json(app, "/v1/auth/unlock", json!({"token": token})).await
}

const WRONG_PASSWORD: &str = "not the password at all";

/// Five wrong passwords on `email`'s account: the fifth locks it.
async fn lock_out(app: &TestApp, email: &str) {
    for _ in 0..5 {
        let wrong = app.login(email, WRONG_PASSWORD).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = app.login(email, PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// The lockout mail among the mails to `email` (the `nth` one, from 0).
async fn lockout_mail(smtp: &SmtpServer, email: &str, nth: usize) -> ReceivedMail {
    let deadline = tokio::time::Instant::now() + MAIL_WAIT;
    loop {
        let mut locked: Vec<_> = smtp
            .mails()
            .into_iter()
            .filter(|m| addressed_to(m, email) && m.text.contains("/unlock?token="))
            .collect();
        if locked.len() > nth {
            return locked.remove(nth);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lockout mail {nth} to {email} within {MAIL_WAIT:?}; server log:\n{}",
            smtp.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

e2e! {
    /// Five wrong passwords lock the account and mail its owner an unlock link:
    /// following it lifts the lockout at once, and works once only. The mail
    /// carries no password, and the token is nowhere in the log.
    async fn the_lockout_mail_carries_a_link_that_unlocks_once(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |s| {
            s.lockout.delay = Duration::ZERO;
        })
        .await;
        let (email, _) = app.signed_in_user().await;
        lock_out(&app, &email).await;

        let mail = lockout_mail(&smtp, &email, 0).await;
        assert!(mail.subject.to_lowercase().contains("locked"), "{}", mail.subject);
        let token = link_token(&mail);
        assert!(mail.text.contains(&format!("/unlock?token={token}")));
        assert!(mail.html.as_deref().is_some_and(|html| html.contains(&token)));
        assert!(mail.text.contains("30 minutes"), "the link lives as long as the lock: {}", mail.text);
        for secret in [PASSWORD, WRONG_PASSWORD] {
            assert!(!mail.text.contains(secret), "the mail holds a password");
            assert!(!mail.html.as_deref().unwrap_or("").contains(secret), "the mail holds a password");
        }

        assert_eq!(unlock(&app, &token).await.0, StatusCode::NO_CONTENT);
        // At once: the right password works again.
        let tokens = app.tokens(app.login(&email, PASSWORD).await).await;
        let user_id = body(app.me(&tokens.access_token).await).await["user_id"]
            .as_str()
            .expect("the account's id")
            .to_owned();
        let types = app.event_types("user", &user_id).await;
        assert!(types.iter().any(|t| t == "AccountUnlocked"), "{types:?}");

        // Used: the same link again is refused.
        let (status, used) = unlock(&app, &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(used["error"], "invalid_token");

        for event in app.stored_events().await {
            assert!(!event.payload.to_string().contains(&token));
            assert!(!event.metadata.to_string().contains(&token));
        }
    }
}

e2e! {
    /// An unlock link stops working when its lockout runs out or a newer lockout
    /// replaces it; a forged one, or a reset link, never unlocks.
    async fn expired_superseded_and_forged_unlock_links_are_refused(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |s| {
            s.lockout.delay = Duration::ZERO;
            s.lockout.duration = Duration::from_secs(2);
        })
        .await;
        let (email, _) = app.signed_in_user().await;
        lock_out(&app, &email).await;
        let first = link_token(&lockout_mail(&smtp, &email, 0).await);

        // Expired: the lockout ran out.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (status, expired) = unlock(&app, &first).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(expired["error"], "invalid_token");

        // Superseded: a newer lockout has its own link.
        lock_out(&app, &email).await;
        let second = link_token(&lockout_mail(&smtp, &email, 1).await);
        assert_ne!(first, second);
        let mut forged = second.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(forgot(&app, &email).await.0, StatusCode::ACCEPTED);
        let reset_token = link_token(
            mails_to(&smtp, &email, 3)
                .await
                .iter()
                .find(|m| m.text.contains("/reset-password?token="))
                .expect("a reset mail"),
        );
        for token in [first.as_str(), forged.as_str(), reset_token.as_str(), "klm1.nonsense", ""] {
            let (status, answer) = unlock(&app, token).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{token}");
            assert_eq!(answer["error"], "invalid_token", "{token}");
        }
        let still = app.login(&email, PASSWORD).await;
        assert_eq!(still.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(unlock(&app, &second).await.0, StatusCode::NO_CONTENT);
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    }
}
