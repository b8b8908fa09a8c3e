//! The hosted pages in a real browser: Debian's Chromium driven by playwright-core
//! (`tests/browser/pages.mjs`), against the real server on both back ends, with a
//! real SMTP server for the verification mail, codes from pyotp and a CDP virtual
//! authenticator. One person signs up, follows the mailed link, asks for a reset
//! link, signs in by keyboard alone, enrols TOTP, signs out, signs in with the
//! second factor, registers a passkey, signs in with it (the sign-in page's
//! autofill), revokes another session and deletes the account; on the way the script
//! checks the cookies' flags, that another origin's form post and credentialed
//! `fetch` are refused, that no policy allows inline script, and runs axe-core on
//! every page. Screenshots (desktop and phone, English and Korean) go to
//! `target/screenshots/pages-<backend>/`.
//!
//! The browser visits `http://localhost:PORT` (WebAuthn takes no IP address as RP
//! id; `localhost` is a secure context over plain HTTP, so `Secure` cookies work).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keyledger_commands::EmailVerification;
use keyledger_e2e::smtp::{SmtpServer, SmtpTls};
use keyledger_e2e::*;

const INSTALL: &str = "run `bash .ci/install-browser` (or `.ci/test`, which does)";

fn chromium() -> PathBuf {
    std::env::var_os("KEYLEDGER_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// `tests/browser` with playwright-core and axe-core installed; panics naming the
/// installer when anything is missing: the test is never skipped.
fn browser_dir() -> PathBuf {
    let dir = match std::env::var_os("KEYLEDGER_TEST_BROWSER") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("browser"),
    };
    for package in ["playwright-core", "axe-core"] {
        let manifest = dir.join("node_modules").join(package).join("package.json");
        assert!(
            manifest.is_file(),
            "{package} is required for the pages' browser test: {} does not exist; {INSTALL}",
            manifest.display()
        );
    }
    assert!(
        chromium().is_file(),
        "Chromium is required for the pages' browser test: {} does not exist; {INSTALL}",
        chromium().display()
    );
    dir
}

/// A loopback port free now, from the ephemeral range (above every port
/// Chromium refuses to visit).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

async fn the_pages_in_a_real_browser_on(backend: Backend, name: &str) {
    let dir = browser_dir();
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
    let child = tokio::process::Command::new("node")
        .arg(dir.join("pages.mjs"))
        .arg(config.to_string())
        .current_dir(&dir)
        .env("KEYLEDGER_CHROMIUM", chromium())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("node is required for the pages' browser test ({e}); {INSTALL}")
        });
    // The script bounds every step and itself; this is the backstop.
    let output = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output())
        .await
        .expect("pages.mjs finished within 240 s")
        .expect("pages.mjs ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pages.mjs failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    println!("{stdout}");
    assert!(
        stdout.contains("all steps passed"),
        "pages.mjs exited 0 without passing:\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn the_pages_in_a_real_browser() {
    the_pages_in_a_real_browser_on(Backend::Postgres, "postgres").await;
}

#[tokio::test]
async fn the_pages_in_a_real_browser_sqlite() {
    the_pages_in_a_real_browser_on(Backend::Sqlite, "sqlite").await;
}
