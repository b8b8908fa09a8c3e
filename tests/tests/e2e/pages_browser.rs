//! The hosted pages in a real browser: Debian's Chromium driven by playwright-core
//! (`tests/browser/pages.mjs`), against the real server on both back ends, with a
//! real SMTP server for the verification mail, codes from pyotp and a CDP virtual
//! authenticator. One person signs up, follows the mailed link, asks for a reset
//! link, signs in by keyboard alone, enrols TOTP, signs out, signs in with the
//! second factor, registers a passkey, signs in with it (the sign-in page's
//! autofill, then its button), revokes another session and deletes the account; on
//! the way the script
//! checks the cookies' flags, that another origin's form post and credentialed
//! `fetch` are refused, that no policy allows inline script, and runs axe-core on
//! every page. Screenshots (desktop and phone, English and Korean) go to
//! `target/screenshots/pages-<backend>/`.
//!
//! The browser visits `http://localhost:PORT` (see [`keyledger_e2e::browser`]).

use std::path::Path;
use std::time::Duration;

use keyledger_commands::EmailVerification;
use keyledger_e2e::browser::{browser_dir, run_script};
use keyledger_e2e::smtp::{SmtpServer, SmtpTls};
use keyledger_e2e::*;

async fn the_pages_in_a_real_browser_on(backend: Backend, name: &str) {
    let dir = browser_dir("pages.mjs");
    let smtp = SmtpServer::start(SmtpTls::Plain);
    let smtp_url = keyledger_mail::SmtpUrl::parse(&smtp.url()).expect("smtp url");
    let port = free_port();
    let origin = format!("http://localhost:{port}");
    let app = spawn_app_on_with(backend, |s| {
        s.server.bind = format!("127.0.0.1:{port}").parse().expect("address");
        s.mail.delivery.public_url = origin.clone();
        s.mail.delivery.smtp = Some(smtp_url);
        s.mail.delivery.send_timeout = Duration::from_secs(5);
        s.mail.retry = Duration::from_secs(1);
        s.email_flows.verification = EmailVerification::Required;
        s.email_flows.interval = Duration::ZERO;
        s.webauthn.rp_id = "localhost".into();
        s.webauthn.origins = vec![origin.parse().unwrap()];
        s.browser.cors_origins = vec!["https://app.example".parse().unwrap()];
    })
    .await;
    assert_eq!(app.address, format!("http://127.0.0.1:{port}"));

    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/screenshots")
        .join(format!("pages-{name}"));
    std::fs::create_dir_all(&screenshots).expect("the screenshot folder");
    let config = serde_json::json!({
        "origin": origin,
        "maildir": smtp.new_mail_dir(),
        "python": keyledger_e2e::totp::pyotp_python(),
        "screenshots": screenshots,
        "email": format!("pages-{}@example.com", uuid::Uuid::new_v4().simple()),
    });
    // The script bounds every step and itself (200 s).
    run_script(
        &dir,
        "pages.mjs",
        &[config.to_string()],
        Duration::from_secs(240),
    )
    .await;
}

#[tokio::test]
async fn the_pages_in_a_real_browser() {
    the_pages_in_a_real_browser_on(Backend::Postgres, "postgres").await;
}

#[tokio::test]
async fn the_pages_in_a_real_browser_sqlite() {
    the_pages_in_a_real_browser_on(Backend::Sqlite, "sqlite").await;
}
