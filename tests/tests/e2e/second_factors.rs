//! Second factors end to end: an authenticator app enrolled and confirmed with
//! codes from pyotp (an RFC 6238 implementation we did not write), logins that
//! need a code, backup codes, the step-up that guards removal, and the limits on
//! guessing.

use std::time::Duration;

use futures::future::join_all;
use keyledger_e2e::totp::{code_at, code_now, secret_of};
use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Sets up and confirms an authenticator app for the account behind `access`;
/// returns its secret (as pyotp reads it from the URI), method id and backup codes.
async fn enrol(app: &TestApp, access: &str) -> (String, String, Vec<String>) {
    let (status, setup) = call(
        app,
        Method::POST,
        "/v1/mfa/setup",
        Some(access),
        Some(json!({"type": "totp"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{setup}");
    let uri = setup["otpauth_uri"].as_str().unwrap();
    let secret = secret_of(uri);
    assert_eq!(
        setup["secret"],
        secret.as_str(),
        "the URI carries the secret shown"
    );
    let method_id = setup["method_id"].as_str().unwrap().to_owned();
    let (status, confirmed) = call(
        app,
        Method::POST,
        &format!("/v1/mfa/methods/{method_id}/confirm"),
        Some(access),
        Some(json!({"code": code_now(&secret)})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    let codes: Vec<String> = confirmed["backup_codes"]
        .as_array()
        .expect("backup codes with the first factor")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (secret, method_id, codes)
}

/// A password login that must ask for the second factor; its `mfa_token`.
async fn mfa_token(app: &TestApp, email: &str) -> String {
    let (status, answer) = call(
        app,
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["mfa_required"], true, "{answer}");
    assert!(
        answer.get("access_token").is_none(),
        "no tokens before the second factor: {answer}"
    );
    answer["mfa_token"].as_str().unwrap().to_owned()
}

async fn verify(app: &TestApp, token: &str, code: &str) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        "/v1/mfa/verify",
        None,
        Some(json!({"mfa_token": token, "code": code})),
    )
    .await
}

/// A six-digit code no step within the server's drift accepts now.
fn wrong_code(secret: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let valid: Vec<String> = (-2..=2).map(|k| code_at(secret, now + 30 * k)).collect();
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !valid.contains(c))
        .unwrap()
}

e2e! {
    /// Enrol → confirm → a login needs a code → each code works once (the TOTP
    /// step and a backup code) → removing the factor needs a step-up with it.
    async fn an_authenticator_app_guards_the_login_until_removed_with_a_step_up(backend) {
        let app = spawn_app_on_with(backend, |s| s.lockout.delay = Duration::ZERO).await;
        let (email, tokens) = app.signed_in_user().await;
        let access = tokens.access_token.as_str();
        assert_eq!(app.validate(access).await["amr"], json!(["pwd"]));

        // Set up: pending, shown once, a QR code of the URI.
        let (status, setup) = call(&app, Method::POST, "/v1/mfa/setup", Some(access), Some(json!({"type": "totp"}))).await;
        assert_eq!(status, StatusCode::CREATED, "{setup}");
        let uri = setup["otpauth_uri"].as_str().unwrap();
        assert!(uri.starts_with("otpauth://totp/Keyledger:"), "{uri}");
        assert!(uri.contains("issuer=Keyledger"), "{uri}");
        assert!(setup["qr"].as_str().unwrap().starts_with("data:image/svg+xml;base64,"));
        let pending_id = setup["method_id"].as_str().unwrap().to_owned();
        let pending_secret = secret_of(uri);
        let (_, listed) = call(&app, Method::GET, "/v1/mfa/methods", Some(access), None).await;
        assert_eq!(listed["methods"][0]["confirmed"], false, "{listed}");
        // A pending method asks nothing of logins.
        assert!(app.tokens(app.login(&email, PASSWORD).await).await.access_token.starts_with("v4.public."));
        // A wrong first code does not confirm it.
        let (status, refused) = call(&app, Method::POST, &format!("/v1/mfa/methods/{pending_id}/confirm"), Some(access), Some(json!({"code": wrong_code(&pending_secret)}))).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_code")));
        let (status, _) = call(&app, Method::DELETE, &format!("/v1/mfa/methods/{pending_id}"), Some(access), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "a pending method goes without a step-up on a fresh session");

        let (secret, method_id, backup) = enrol(&app, access).await;
        assert_eq!(backup.len(), 10);
        let (_, listed) = call(&app, Method::GET, "/v1/mfa/methods", Some(access), None).await;
        assert_eq!(listed["backup_codes_remaining"], 10, "{listed}");
        assert_eq!(listed["methods"][0]["id"], method_id.as_str());
        assert_eq!(listed["methods"][0]["confirmed"], true);

        // The password alone gets no tokens now.
        let token = mfa_token(&app, &email).await;
        assert!(token.starts_with("klf1."), "{token}");
        let (status, wrong) = verify(&app, &token, &wrong_code(&secret)).await;
        assert_eq!((status, wrong["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_code")));
        // The next step's code (the confirmation used this step's).
        let next = code_at(&secret, chrono::Utc::now().timestamp() + 30);
        let (status, signed) = verify(&app, &token, &next).await;
        assert_eq!(status, StatusCode::OK, "{signed}");
        let second_access = signed["access_token"].as_str().unwrap().to_owned();
        let validated = app.validate(&second_access).await;
        assert_eq!(validated["amr"], json!(["pwd", "otp", "mfa"]), "{validated}");
        assert!(validated["auth_time"].is_null() || validated["auth_time"].is_number());
        // The amr survives a refresh.
        let refreshed = app.tokens(app.refresh(signed["refresh_token"].as_str().unwrap()).await).await;
        assert_eq!(app.validate(&refreshed.access_token).await["amr"], json!(["pwd", "otp", "mfa"]));
        // The token is spent.
        let (status, spent) = verify(&app, &token, &next).await;
        assert_eq!((status, spent["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_mfa_token")));

        // The same code again, on a new login: a replay.
        let token = mfa_token(&app, &email).await;
        let (status, replayed) = verify(&app, &token, &next).await;
        assert_eq!((status, replayed["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_code")));
        // A backup code works, once.
        let (status, signed) = verify(&app, &token, &backup[0].to_uppercase()).await;
        assert_eq!(status, StatusCode::OK, "{signed}");
        let token = mfa_token(&app, &email).await;
        let (status, used) = verify(&app, &token, &backup[0]).await;
        assert_eq!((status, used["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_code")));

        // Removing it from the first session (which never proved the factor)
        // needs a step-up, with the password and a code.
        let path = format!("/v1/mfa/methods/{method_id}");
        let (status, refused) = call(&app, Method::DELETE, &path, Some(access), None).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("reauthentication_required")));
        let (status, refused) = call(&app, Method::POST, "/v1/mfa/backup-codes/regenerate", Some(access), None).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("reauthentication_required")));
        // So does a password change: the password alone no longer proves enough.
        let change = json!({"current_password": PASSWORD, "new_password": "a different horse, equally correct"});
        let (status, refused) = call(&app, Method::POST, "/v1/auth/password", Some(access), Some(change)).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("reauthentication_required")));
        let (status, refused) = call(&app, Method::POST, "/v1/auth/step-up", Some(access), Some(json!({"password": PASSWORD}))).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_code")));
        let (status, stepped) = call(&app, Method::POST, "/v1/auth/step-up", Some(access), Some(json!({"password": PASSWORD, "code": backup[1]}))).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{stepped}");
        let (status, regenerated) = call(&app, Method::POST, "/v1/mfa/backup-codes/regenerate", Some(access), None).await;
        assert_eq!(status, StatusCode::OK, "{regenerated}");
        assert_eq!(regenerated["backup_codes"].as_array().unwrap().len(), 10);
        let (status, _) = call(&app, Method::DELETE, &path, Some(access), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (_, listed) = call(&app, Method::GET, "/v1/mfa/methods", Some(access), None).await;
        assert_eq!(listed, json!({"methods": [], "backup_codes_remaining": 0}));
        // The password alone signs in again.
        assert!(app.tokens(app.login(&email, PASSWORD).await).await.access_token.starts_with("v4.public."));

        // No secret in the log: not the app's secret, a code, or a token.
        let mut secrets = vec![secret.clone(), pending_secret.clone(), token.clone(), next.clone()];
        secrets.extend(backup.iter().cloned());
        secrets.extend(regenerated["backup_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()));
        let events = app.stored_events().await;
        for event in &events {
            for secret in &secrets {
                assert!(!event.payload.contains(secret.as_str()), "{} holds a secret", event.event_type);
                assert!(!event.metadata.contains(secret.as_str()), "{} holds a secret", event.event_type);
            }
        }
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        for expected in ["SecondFactorAdded", "SecondFactorConfirmed", "BackupCodesRegenerated", "SecondFactorRequired", "SecondFactorUsed", "BackupCodeUsed", "SecondFactorFailed", "SessionReauthenticated", "SecondFactorRemoved"] {
            assert!(types.contains(&expected), "no {expected} in {types:?}");
        }
    }
}

e2e! {
    /// Guesses in parallel are each counted: 20 wrong codes at once get at most
    /// as many checked as the lockout allows (5), and the rest are refused unchecked.
    async fn parallel_wrong_codes_are_checked_at_most_five_times(backend) {
        let app = spawn_app_on_with(backend, |s| s.lockout.delay = Duration::ZERO).await;
        let (email, tokens) = app.signed_in_user().await;
        let (secret, _, _) = enrol(&app, &tokens.access_token).await;
        let token = mfa_token(&app, &email).await;
        let wrong = wrong_code(&secret);
        let answers = join_all((0..20).map(|_| verify(&app, &token, &wrong))).await;
        let checked = answers.iter().filter(|(_, a)| a["error"] == "invalid_code").count();
        assert!((1..=5).contains(&checked), "{checked} codes checked: {answers:?}");
        for (status, answer) in &answers {
            assert!(
                matches!(answer["error"].as_str(), Some("invalid_code" | "invalid_mfa_token" | "too_many_attempts" | "rate_limited")),
                "{status}: {answer}"
            );
        }
        let failures = app
            .stored_events()
            .await
            .iter()
            .filter(|e| e.event_type == "SecondFactorFailed")
            .count();
        assert_eq!(failures, checked);
        // Locked by the guesses: even the right code waits.
        let token = call(&app, Method::POST, "/v1/auth/login", None, Some(json!({"email": email, "password": PASSWORD}))).await;
        assert_eq!(token.0, StatusCode::TOO_MANY_REQUESTS, "{}", token.1);
    }
}

e2e! {
    /// An `mfa_token` dies after `KEYLEDGER_MFA_TOKEN_TTL_SECS`; a forged one never
    /// worked.
    async fn an_expired_or_forged_mfa_token_is_refused(backend) {
        let app = spawn_app_on_with(backend, |s| {
            s.second_factors.token_ttl = Duration::from_secs(1);
        })
        .await;
        let (email, tokens) = app.signed_in_user().await;
        let (secret, _, _) = enrol(&app, &tokens.access_token).await;
        let token = mfa_token(&app, &email).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let next = code_at(&secret, chrono::Utc::now().timestamp() + 30);
        let (status, expired) = verify(&app, &token, &next).await;
        assert_eq!((status, expired["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_mfa_token")));
        let forged = format!("{}A", &token[..token.len() - 1]);
        let (status, forged) = verify(&app, &forged, &next).await;
        assert_eq!((status, forged["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_mfa_token")));
    }
}

e2e! {
    /// A code by email as the second factor, through the real SMTP server of the
    /// mail tests: set up on a verified address, confirmed with the mailed code,
    /// then asked for by a login's `POST /v1/mfa/challenge` and used once.
    async fn a_code_by_email_is_a_second_factor(backend) {
        use keyledger_e2e::smtp::{SmtpServer, SmtpTls};
        use crate::email_flows::{app_mailing_to, link_token, mails_to};
        use crate::email_login::code_in;

        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(
            backend,
            &smtp,
            keyledger_commands::EmailVerification::Optional,
            |s| {
                s.lockout.delay = Duration::ZERO;
                // A code may be asked for again at once.
                s.email_flows.interval = Duration::ZERO;
            },
        )
        .await;
        let email = "grace@example.com";
        assert_eq!(app.register(email, PASSWORD).await.status(), StatusCode::ACCEPTED);
        // The account exists once its verification mail went out.
        let verification = mails_to(&smtp, email, 1).await.remove(0);
        let tokens = app.tokens(app.login(email, PASSWORD).await).await;
        let access = tokens.access_token.as_str();
        // An address nobody proved takes no codes.
        let (status, refused) = call(&app, Method::POST, "/v1/mfa/setup", Some(access), Some(json!({"type": "email"}))).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::FORBIDDEN, Some("email_not_verified")));
        let (status, _) = crate::email_flows::verify(&app, &link_token(&verification)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);

        let (status, setup) = call(&app, Method::POST, "/v1/mfa/setup", Some(access), Some(json!({"type": "email"}))).await;
        assert_eq!(status, StatusCode::CREATED, "{setup}");
        assert!(setup.get("secret").is_none(), "{setup}");
        let method_id = setup["method_id"].as_str().unwrap().to_owned();
        let lost = code_in(&mails_to(&smtp, email, 2).await.remove(1));
        // The first code got lost: ask for another, which replaces it.
        let resend = format!("/v1/mfa/methods/{method_id}/send-code");
        let (status, _) = call(&app, Method::POST, &resend, Some(access), None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let first = code_in(&mails_to(&smtp, email, 3).await.remove(2));
        if first != lost {
            let path = format!("/v1/mfa/methods/{method_id}/confirm");
            let (status, replaced) = call(&app, Method::POST, &path, Some(access), Some(json!({"code": lost}))).await;
            assert_eq!((status, replaced["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_code")));
        }
        let (status, confirmed) = call(&app, Method::POST, &format!("/v1/mfa/methods/{method_id}/confirm"), Some(access), Some(json!({"code": first}))).await;
        assert_eq!(status, StatusCode::OK, "{confirmed}");
        assert_eq!(confirmed["backup_codes"].as_array().unwrap().len(), 10);

        let token = mfa_token(&app, email).await;
        // A code is sent only when asked for.
        let (status, _) = call(&app, Method::POST, "/v1/mfa/challenge", None, Some(json!({"mfa_token": token, "method_id": method_id}))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let mail = mails_to(&smtp, email, 4).await.remove(3);
        let code = code_in(&mail);
        assert!(!mail.text.contains("token="), "no link in a code mail");
        // The confirmation's code is spent; a TOTP-shaped guess is wrong.
        let (status, stale) = verify(&app, &token, &first).await;
        assert_eq!((status, stale["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_code")));
        let (status, signed) = verify(&app, &token, &code).await;
        assert_eq!(status, StatusCode::OK, "{signed}");
        let validated = app.validate(signed["access_token"].as_str().unwrap()).await;
        assert_eq!(validated["amr"], json!(["pwd", "email", "mfa"]), "{validated}");
        // Used once.
        let token = mfa_token(&app, email).await;
        let (status, used) = verify(&app, &token, &code).await;
        assert_eq!((status, used["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_code")));

        let events = app.stored_events().await;
        for event in &events {
            for secret in [&first, &code] {
                assert!(!event.payload.contains(secret.as_str()), "{} holds a code", event.event_type);
            }
        }
        assert_eq!(events.iter().filter(|e| e.event_type == "SecondFactorCodeSent").count(), 3);
    }
}

/// The six-digit code in a text message.
fn code_in_text(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|part| part.len() == 6)
        .unwrap_or_else(|| panic!("no code in {text:?}"))
        .to_owned()
}

e2e! {
    /// A code by text message as the second factor: POSTed, signed, to a webhook
    /// receiver the test runs on loopback, retried after a 503, confirmed, then
    /// asked for by a login and used; neither number nor code in the log.
    async fn a_code_by_text_message_goes_to_the_signed_webhook_and_is_retried(backend) {
        use hmac::{Hmac, Mac};
        use keyledger_e2e::sms::WebhookReceiver;

        let receiver = WebhookReceiver::start(1).await;
        let secret = "a webhook secret of the test";
        let url = receiver.url();
        let app = spawn_app_on_with(backend, |s| {
            s.lockout.delay = Duration::ZERO;
            s.second_factors.sms_webhook_url = Some(url);
            s.second_factors.sms_webhook_secret = Some(keyledger_api::Secret::new(secret.into()));
            s.mail.retry = Duration::from_millis(200);
        })
        .await;
        let (email, tokens) = app.signed_in_user().await;
        let access = tokens.access_token.as_str();
        let (status, refused) = call(&app, Method::POST, "/v1/mfa/setup", Some(access), Some(json!({"type": "sms", "phone": "0151 1234"}))).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_phone")));
        let (status, refused) = call(&app, Method::POST, "/v1/mfa/setup", Some(access), Some(json!({"type": "sms"}))).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));

        let (status, setup) = call(&app, Method::POST, "/v1/mfa/setup", Some(access), Some(json!({"type": "sms", "phone": "+49 151 1234 5678"}))).await;
        assert_eq!(status, StatusCode::CREATED, "{setup}");
        let method_id = setup["method_id"].as_str().unwrap().to_owned();
        // Refused once (503), delivered on the retry.
        let text = receiver.texts(1).await.remove(0);
        assert!(receiver.requests() >= 2);
        let body = text.json();
        assert_eq!(body["to"], "+4915112345678");
        assert_eq!(text.header("idempotency-key"), body["id"].as_str());
        let timestamp = text.header("x-keyledger-timestamp").expect("timestamp");
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.{}", text.body).as_bytes());
        assert_eq!(
            text.header("x-keyledger-signature"),
            Some(format!("v1={}", hex::encode(mac.finalize().into_bytes())).as_str())
        );
        let first = code_in_text(body["text"].as_str().unwrap());
        let (status, confirmed) = call(&app, Method::POST, &format!("/v1/mfa/methods/{method_id}/confirm"), Some(access), Some(json!({"code": first}))).await;
        assert_eq!(status, StatusCode::OK, "{confirmed}");

        let token = mfa_token(&app, &email).await;
        let (status, _) = call(&app, Method::POST, "/v1/mfa/challenge", None, Some(json!({"mfa_token": token, "method_id": method_id}))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let code = code_in_text(receiver.texts(2).await[1].json()["text"].as_str().unwrap());
        let (status, signed) = verify(&app, &token, &code).await;
        assert_eq!(status, StatusCode::OK, "{signed}");
        let validated = app.validate(signed["access_token"].as_str().unwrap()).await;
        assert_eq!(validated["amr"], json!(["pwd", "sms", "mfa"]), "{validated}");

        for event in app.stored_events().await {
            for secret in ["+4915112345678", first.as_str(), code.as_str()] {
                assert!(!event.payload.contains(secret), "{} holds a secret", event.event_type);
                assert!(!event.metadata.contains(secret), "{} holds a secret", event.event_type);
            }
        }
    }
}

e2e! {
    /// An owner who lost every factor: a platform administrator, signed in
    /// lately, resets them (`SecondFactorsReset` with the administrator as its
    /// actor), and the password alone signs in again. Idempotent; 404 for an
    /// unknown account; 403 for anyone else; 401 for an administrator's old login.
    async fn an_administrator_resets_the_second_factors_of_an_account(backend) {
        let app = spawn_app_on_with(backend, |s| {
            s.lockout.delay = Duration::ZERO;
            s.sessions.reauth_window = Duration::from_secs(3);
        })
        .await;
        let (email, tokens) = app.signed_in_user().await;
        let access = tokens.access_token.as_str();
        let user_id = body(app.me(access).await).await["user_id"].as_str().unwrap().to_owned();
        assert_eq!(body(app.me(access).await).await["second_factors"], json!([]));
        let (secret, _, backup) = enrol(&app, access).await;
        assert_eq!(body(app.me(access).await).await["second_factors"], json!(["totp"]));
        let waiting = mfa_token(&app, &email).await;
        let (admin_email, admin) = app.signed_in_user().await;
        let admin_id: uuid::Uuid = body(app.me(&admin.access_token).await).await["user_id"].as_str().unwrap().parse().unwrap();
        app.make_platform_admin(admin_id).await;
        let path = format!("/v1/admin/users/{user_id}/mfa");

        // Not an administrator: the owner themself, or anyone.
        let (status, refused) = call(&app, Method::DELETE, &path, Some(access), None).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
        // An administrator's login older than the window.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (status, refused) = call(&app, Method::DELETE, &path, Some(&admin.access_token), None).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("reauthentication_required")));
        let types = app.event_types("user", &user_id).await;
        assert!(!types.iter().any(|t| t == "SecondFactorsReset"), "{types:?}");

        let admin = app.tokens(app.login(&admin_email, PASSWORD).await).await;
        let (status, unknown) = call(&app, Method::DELETE, &format!("/v1/admin/users/{}/mfa", uuid::Uuid::new_v4()), Some(&admin.access_token), None).await;
        assert_eq!((status, unknown["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        let (status, reset) = call(&app, Method::DELETE, &path, Some(&admin.access_token), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{reset}");
        // Again: nothing to reset, nothing written.
        let (status, again) = call(&app, Method::DELETE, &path, Some(&admin.access_token), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{again}");

        // The login that waited for a code has ended; the password alone signs in.
        let next = code_at(&secret, chrono::Utc::now().timestamp() + 30);
        let (status, ended) = verify(&app, &waiting, &next).await;
        assert_eq!((status, ended["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_mfa_token")));
        let signed = app.tokens(app.login(&email, PASSWORD).await).await;
        assert_eq!(app.validate(&signed.access_token).await["amr"], json!(["pwd"]));
        let (_, listed) = call(&app, Method::GET, "/v1/mfa/methods", Some(&signed.access_token), None).await;
        assert_eq!(listed, json!({"methods": [], "backup_codes_remaining": 0}));
        assert_eq!(body(app.me(&signed.access_token).await).await["second_factors"], json!([]));

        // Recorded once, with the administrator as its actor, and nothing secret.
        let events = app.stored_events().await;
        let resets = events_of_type(&events, "SecondFactorsReset");
        assert_eq!(resets.len(), 1, "{resets:?}");
        assert_eq!(resets[0].aggregate_id, user_id);
        assert_eq!(resets[0].metadata_json()["actor"], admin_id.to_string());
        for secret in std::iter::once(&secret).chain(&backup) {
            assert!(!resets[0].payload.contains(secret.as_str()));
            assert!(!resets[0].metadata.contains(secret.as_str()));
        }
    }
}

e2e! {
    /// An organization with `{"mfa": "required"}`: a member without a second
    /// factor gets no token scoped to it (403 `mfa_enrollment_required`), one
    /// whose session did not prove it gets 401 `reauthentication_required` until
    /// a step-up, a login through `/v1/mfa/verify` is scoped at once, and a
    /// session scoped before the requirement is refreshed unscoped. The owner's
    /// unscoped routes and the service accounts' grant are unaffected.
    async fn an_organization_that_requires_a_second_factor_scopes_only_sessions_that_proved_one(backend) {
        let app = spawn_app_on_with(backend, |s| s.lockout.delay = Duration::ZERO).await;
        let (_, owner) = app.signed_in_user().await;
        let owner = owner.access_token;
        let org = app.new_organization(&owner).await;
        let (email, member) = app.signed_in_user().await;
        let member_id: uuid::Uuid = body(app.me(&member.access_token).await).await["user_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(app.join(&owner, &org, &(member_id, member.access_token.clone()), json!(["member"])).await, StatusCode::OK);
        let switch = |token: String, org: Value| {
            let app = &app;
            async move { call(app, Method::POST, "/v1/auth/switch-organization", Some(&token), Some(json!({"organization_id": org}))).await }
        };
        // Scoped before the organization asks for anything.
        let (status, scoped) = switch(member.access_token.clone(), json!(org)).await;
        assert_eq!(status, StatusCode::OK, "{scoped}");

        let (status, changed) = call(&app, Method::PATCH, &format!("/v1/organizations/{org}"), Some(&owner), Some(json!({"settings": {"mfa": "required"}}))).await;
        assert_eq!(status, StatusCode::OK, "{changed}");

        // That session's next token is unscoped; the session itself lives on.
        let refreshed = app.tokens(app.refresh(&member.refresh_token).await).await;
        let validated = app.validate(&refreshed.access_token).await;
        assert_eq!(validated["active"], true, "{validated}");
        assert!(validated.get("org").is_none_or(Value::is_null), "{validated}");
        let access = refreshed.access_token;
        let (status, refused) = switch(access.clone(), json!(org)).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::FORBIDDEN, Some("mfa_enrollment_required")));
        // Unscoped is always fine.
        let (status, unscoped) = switch(access.clone(), Value::Null).await;
        assert_eq!(status, StatusCode::OK, "{unscoped}");

        // Enrolled, but this session proved only the password: step up.
        let (secret, _, backup) = enrol(&app, &access).await;
        let (status, refused) = switch(access.clone(), json!(org)).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("reauthentication_required")));
        let (status, stepped) = call(&app, Method::POST, "/v1/auth/step-up", Some(&access), Some(json!({"password": PASSWORD, "code": backup[0]}))).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{stepped}");
        let (status, scoped) = switch(access.clone(), json!(org)).await;
        assert_eq!(status, StatusCode::OK, "{scoped}");
        assert_eq!(app.validate(scoped["access_token"].as_str().unwrap()).await["org"], json!(org));

        // A login through the second factor is scoped at once, and its refreshes too.
        let token = mfa_token(&app, &email).await;
        let next = code_at(&secret, chrono::Utc::now().timestamp() + 30);
        let (status, signed) = verify(&app, &token, &next).await;
        assert_eq!(status, StatusCode::OK, "{signed}");
        let (status, scoped) = switch(signed["access_token"].as_str().unwrap().to_owned(), json!(org)).await;
        assert_eq!(status, StatusCode::OK, "{scoped}");
        assert_eq!(scoped["roles"], json!(["member"]));
        let refreshed = app.tokens(app.refresh(signed["refresh_token"].as_str().unwrap()).await).await;
        assert_eq!(app.validate(&refreshed.access_token).await["org"], json!(org));

        // The owner (no second factor) still runs the organization unscoped, but
        // gets no scoped token either; service accounts are not people.
        let (status, shown) = call(&app, Method::GET, &format!("/v1/organizations/{org}"), Some(&owner), None).await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        assert_eq!(shown["settings"], json!({"mfa": "required"}));
        let (status, refused) = switch(owner.clone(), json!(org)).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::FORBIDDEN, Some("mfa_enrollment_required")));
        let (client_id, client_secret) = app.new_service_account(&owner, &org, "billing", json!(["member"])).await;
        let service = app.service_account_token(&client_id, &client_secret).await;
        assert_eq!(app.validate(&service).await["org"], json!(org));
    }
}
