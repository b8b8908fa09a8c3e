//! Passkeys in a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/passkeys.mjs`), with a CDP virtual authenticator for the person's
//! device, on the server's own page `/pages/passkeys`. An account with a password
//! registers a passkey, signs out, signs in with it and no email (a discoverable
//! credential), meets it as the password login's second factor, and signs in with
//! an email hint. What a soft authenticator cannot show (resident keys, the
//! browser's own JSON, the page under its CSP) is what this is for.
//!
//! The browser visits `http://localhost:PORT` (see [`keyledger_e2e::browser`]), so
//! the server gets a port chosen here, known before it starts, for its allowed
//! origin.

use std::time::Duration;

use keyledger_e2e::browser::{browser_dir, run_script};
use keyledger_e2e::*;

async fn passkeys_in_a_real_browser_on(backend: Backend) {
    let dir = browser_dir("passkeys.mjs");
    let port = free_port();
    let origin = format!("http://localhost:{port}");
    let app = spawn_app_on_with(backend, |s| {
        s.server.bind = format!("127.0.0.1:{port}").parse().expect("address");
        s.webauthn.rp_id = "localhost".into();
        s.webauthn.origins = vec![origin.parse().unwrap()];
        // The script's account is used at once (201, no mailed link).
        s.email_flows.verification = keyledger_commands::EmailVerification::Off;
    })
    .await;
    assert_eq!(app.address, format!("http://127.0.0.1:{port}"));

    // The script bounds every step and itself (55 s).
    run_script(&dir, "passkeys.mjs", &[origin], Duration::from_secs(90)).await;
}

#[tokio::test]
async fn passkeys_in_a_real_browser() {
    passkeys_in_a_real_browser_on(Backend::Postgres).await;
}

#[tokio::test]
async fn passkeys_in_a_real_browser_sqlite() {
    passkeys_in_a_real_browser_on(Backend::Sqlite).await;
}
