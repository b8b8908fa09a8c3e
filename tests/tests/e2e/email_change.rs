//! Moving an account to another address, end to end against a real SMTP server:
//! the link goes to the new address, following it moves the account (login with
//! the new address, not the old), and the old address is told.

use std::time::Duration;

use keyledger_commands::EmailVerification;
use keyledger_e2e::smtp::{SmtpServer, SmtpTls};
use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::email_flows::{addressed_to, app_mailing_to, link_token, mails_to, post_json, verify};

/// `POST /v1/users/me/email` as the holder of `access_token`.
async fn change_email(
    app: &TestApp,
    access_token: &str,
    new_email: &str,
    password: &str,
) -> (StatusCode, String) {
    let response = app
        .call(
            Method::POST,
            "/v1/users/me/email",
            Some(access_token),
            Some(&json!({"new_email": new_email, "password": password})),
        )
        .await;
    (response.status(), response.text().await.unwrap())
}

fn error_of(text: &str) -> Value {
    serde_json::from_str::<Value>(text).unwrap_or(Value::Null)["error"].clone()
}

e2e! {
    /// Request → a link to the new address → follow it: the account logs in with
    /// the new address only, is verified, and the old address gets a notice.
    async fn an_email_change_moves_the_account_and_tells_the_old_address(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |_| {}).await;
        let (old, session) = app.signed_in_user().await;
        let new = "moved@example.org";
        let (status, _) = change_email(&app, &session.access_token, new, PASSWORD).await;
        assert_eq!(status, StatusCode::ACCEPTED);

        let mail = mails_to(&smtp, new, 1).await.remove(0);
        let token = link_token(&mail);
        assert!(mail.text.contains(&format!("/verify-email?token={token}")));
        assert!(mail.text.contains(new), "the mail names the new address");
        // Nothing changed yet.
        assert_eq!(app.login(&old, PASSWORD).await.status(), StatusCode::OK);
        assert_eq!(body(app.me(&session.access_token).await).await["email"], old.as_str());

        assert_eq!(verify(&app, &token).await.0, StatusCode::NO_CONTENT);
        let me = body(app.me(&session.access_token).await).await;
        assert_eq!(me["email"], new);
        assert_eq!(me["email_verified"], true);
        assert_eq!(app.login(new, PASSWORD).await.status(), StatusCode::OK);
        assert_eq!(app.login(&old, PASSWORD).await.status(), StatusCode::UNAUTHORIZED);

        // The old address is told, without a link.
        let notice = mails_to(&smtp, &old, 1).await.remove(0);
        assert!(notice.text.contains(&old), "{}", notice.text);
        assert!(!notice.text.contains("?token="));

        // Used: the link works once.
        let (status, used) = verify(&app, &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(used["error"], "invalid_token");

        // The old address is free again; the token and the addresses in clear
        // are nowhere in the log.
        assert_eq!(app.register(&old, PASSWORD).await.status(), StatusCode::CREATED);
        for event in app.stored_events().await {
            let payload = event.payload.to_string();
            assert!(!payload.contains(&token));
            assert!(!event.metadata.to_string().contains(&token));
            if event.event_type.starts_with("EmailChange") {
                assert!(!payload.contains(new) && !payload.contains(&old), "{payload}");
            }
        }
    }
}

e2e! {
    /// A taken address answers exactly like a free one and is mailed nothing; a
    /// malformed one is 422.
    async fn a_change_to_a_taken_address_answers_the_same_and_mails_nothing(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |_| {}).await;
        let (taken, _) = app.signed_in_user().await;
        let (_, first) = app.signed_in_user().await;
        let (_, second) = app.signed_in_user().await;
        let free = "free@example.org";
        let to_taken = change_email(&app, &first.access_token, &taken, PASSWORD).await;
        let to_free = change_email(&app, &second.access_token, free, PASSWORD).await;
        assert_eq!(to_taken, to_free);
        assert_eq!(to_taken.0, StatusCode::ACCEPTED);
        mails_to(&smtp, free, 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(smtp.mails().iter().all(|m| !addressed_to(m, &taken)), "the owner of a taken address is mailed nothing");

        let (status, text) = change_email(&app, &first.access_token, "not an address", PASSWORD).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error_of(&text), "invalid_email");
        // Without a token: 401.
        let (status, _) = post_json(
            &app,
            "/v1/users/me/email",
            json!({"new_email": free, "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

e2e! {
    /// The new address is claimed when the link is followed: taken meanwhile,
    /// it is 409 `email_taken` and the account keeps its address.
    async fn an_address_taken_before_the_link_is_followed_is_409(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |_| {}).await;
        let (old, session) = app.signed_in_user().await;
        let new = "contested@example.org";
        assert_eq!(change_email(&app, &session.access_token, new, PASSWORD).await.0, StatusCode::ACCEPTED);
        let token = link_token(&mails_to(&smtp, new, 1).await[0]);
        assert_eq!(app.register(new, PASSWORD).await.status(), StatusCode::CREATED);

        let (status, taken) = verify(&app, &token).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(taken["error"], "email_taken");
        assert_eq!(app.login(&old, PASSWORD).await.status(), StatusCode::OK);
        assert_eq!(body(app.me(&session.access_token).await).await["email"], old.as_str());
        assert!(smtp.mails().iter().all(|m| !addressed_to(m, &old)), "no notice: nothing changed");
    }
}

e2e! {
    /// A wrong password is 401 and counts towards the lockout like a failed login.
    async fn a_wrong_password_is_401_and_counts_towards_the_lockout(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |s| {
            s.lockout.delay = Duration::ZERO;
        })
        .await;
        let (email, session) = app.signed_in_user().await;
        let (status, text) =
            change_email(&app, &session.access_token, "elsewhere@example.org", "not the password at all").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_of(&text), "invalid_credentials");
        for _ in 0..4 {
            app.login(&email, "not the password at all").await;
        }
        // The change's failure was the first of five: the account is locked.
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
        let me = body(app.me(&session.access_token).await).await;
        let user_id = me["user_id"].as_str().expect("user_id");
        let types = app.event_types("user", user_id).await;
        assert!(types.iter().any(|t| t == "LoginFailed"), "{types:?}");
        assert!(!types.iter().any(|t| t == "EmailChangeRequested"), "{types:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Only the lockout's own mail, to the owner; nothing to the new address.
        let mails = smtp.mails();
        assert!(mails.iter().all(|m| m.to == email), "{:?}", mails.iter().map(|m| &m.to).collect::<Vec<_>>());
        assert!(mails.iter().all(|m| !m.text.contains("/verify-email?token=")));
    }
}

e2e! {
    /// Only the newest change link works, and none after it expires.
    async fn superseded_and_expired_change_links_are_refused(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |s| {
            s.email_flows.verification_ttl = Duration::from_secs(3);
        })
        .await;
        let (old, session) = app.signed_in_user().await;
        assert_eq!(change_email(&app, &session.access_token, "first@example.org", PASSWORD).await.0, StatusCode::ACCEPTED);
        let first = link_token(&mails_to(&smtp, "first@example.org", 1).await[0]);
        assert_eq!(change_email(&app, &session.access_token, "second@example.org", PASSWORD).await.0, StatusCode::ACCEPTED);
        let second = link_token(&mails_to(&smtp, "second@example.org", 1).await[0]);

        let (status, superseded) = verify(&app, &first).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(superseded["error"], "invalid_token");
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (status, expired) = verify(&app, &second).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(expired["error"], "invalid_token");
        assert_eq!(app.login(&old, PASSWORD).await.status(), StatusCode::OK);
        for address in ["first@example.org", "second@example.org"] {
            assert_eq!(app.login(address, PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
        }
    }
}

e2e! {
    /// Both addresses are published opened on NATS, like `UserRegistered.email`,
    /// the request id never; erasure makes them unreadable in the log's readers.
    async fn the_addresses_of_a_change_are_published_and_erased_like_the_registered_one(backend) {
        let smtp = SmtpServer::start(SmtpTls::Plain);
        let app = app_mailing_to(backend, &smtp, EmailVerification::Off, |s| {
            s.nats.url = Some(NATS_URL.into());
        })
        .await;
        let (admin, admin_token) = app.new_user().await;
        app.make_platform_admin(admin).await;
        let (old, session) = app.signed_in_user().await;
        let new = "published@example.org";
        assert_eq!(change_email(&app, &session.access_token, new, PASSWORD).await.0, StatusCode::ACCEPTED);
        let token = link_token(&mails_to(&smtp, new, 1).await[0]);
        assert_eq!(verify(&app, &token).await.0, StatusCode::NO_CONTENT);
        let user_id = body(app.me(&session.access_token).await).await["user_id"]
            .as_str()
            .expect("user_id")
            .to_owned();

        let messages: Vec<Value> = app
            .published(1000, Duration::from_secs(10))
            .await
            .into_iter()
            .map(|(_, _, message)| message)
            .filter(|m| m["aggregate_id"] == user_id.as_str())
            .collect();
        let data_of = |event_type: &str| {
            messages
                .iter()
                .find(|m| m["event_type"] == event_type)
                .unwrap_or_else(|| panic!("{event_type} on NATS"))["data"]
                .clone()
        };
        let requested = data_of("EmailChangeRequested");
        assert_eq!(requested["new_email"], new);
        assert!(requested.get("request_id").is_none(), "{requested}");
        let changed = data_of("EmailChanged");
        assert_eq!(changed["email"], new);
        assert_eq!(changed["previous_email"], old.as_str());

        let erased = app
            .call(
                Method::DELETE,
                "/v1/users/me",
                Some(&session.access_token),
                Some(&json!({"password": PASSWORD})),
            )
            .await;
        assert_eq!(erased.status(), StatusCode::NO_CONTENT);
        let audit = body(
            app.get_auth(&format!("/v1/audit/events?subject={user_id}"), &admin_token)
                .await,
        )
        .await;
        let rows = audit["events"].as_array().expect("events");
        let details = |action: &str| {
            rows.iter()
                .find(|r| r["action"] == action)
                .unwrap_or_else(|| panic!("{action} audited: {audit}"))["details"]
                .clone()
        };
        assert_eq!(details("EmailChangeRequested")["new_email"], "[erased]");
        assert_eq!(details("EmailChanged")["email"], "[erased]");
        assert_eq!(details("EmailChanged")["previous_email"], "[erased]");
        assert!(!audit.to_string().contains(new) && !audit.to_string().contains(&old));
    }
}
