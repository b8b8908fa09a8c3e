//! Passkeys in a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/passkeys.mjs`), with a CDP virtual authenticator for the person's
//! device, on the server's own page `/pages/passkeys`. An account with a password
//! registers a passkey, signs out, signs in with it and no email (a discoverable
//! credential), meets it as the password login's second factor, and signs in with
//! an email hint. What a soft authenticator cannot show (resident keys, the
//! browser's own JSON, the page under its CSP) is what this is for.
//!
//! The browser visits `http://localhost:PORT`: WebAuthn accepts no IP address as
//! RP id, and `localhost` is a secure context over plain HTTP. So the server gets a
//! port chosen here, known before it starts, for its allowed origin.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keyledger_e2e::*;

const INSTALL: &str = "run `bash .ci/install-browser` (or `.ci/test`, which does)";

/// The browser the script launches (it reads `$KEYLEDGER_CHROMIUM` too).
fn chromium() -> PathBuf {
    std::env::var_os("KEYLEDGER_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// `tests/browser` with playwright-core installed: `$KEYLEDGER_TEST_BROWSER`, which
/// `.ci/test` exports, else the repository's. Panics, naming the installer, when
/// anything the script needs is missing: the test is never skipped.
fn browser_dir() -> PathBuf {
    let dir = match std::env::var_os("KEYLEDGER_TEST_BROWSER") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("browser"),
    };
    let playwright = dir.join("node_modules/playwright-core/package.json");
    assert!(
        playwright.is_file(),
        "playwright-core is required for the passkey browser test: {} does not exist; {INSTALL}",
        playwright.display()
    );
    assert!(
        dir.join("passkeys.mjs").is_file(),
        "{} has no passkeys.mjs (KEYLEDGER_TEST_BROWSER must name tests/browser)",
        dir.display()
    );
    let chromium = chromium();
    assert!(
        chromium.is_file(),
        "Chromium is required for the passkey browser test: {} does not exist; {INSTALL} \
         (it installs Debian's `chromium`)",
        chromium.display()
    );
    dir
}

/// A loopback port free now. The server binds it a moment later; another process
/// could take it in between, which would fail the start loudly, not the test's
/// assertions. It comes from the ephemeral range (32768-60999 on Linux), above
/// every port Chromium refuses to visit (`ERR_UNSAFE_PORT`; the highest is 10080).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

async fn passkeys_in_a_real_browser_on(backend: Backend) {
    let dir = browser_dir();
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

    let child = tokio::process::Command::new("node")
        .arg(dir.join("passkeys.mjs"))
        .arg(&origin)
        .current_dir(&dir)
        .env("KEYLEDGER_CHROMIUM", chromium())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("node is required for the passkey browser test ({e}); {INSTALL}")
        });
    // The script bounds every step and itself (55 s); this is the backstop.
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("passkeys.mjs finished within 90 s")
        .expect("passkeys.mjs ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "passkeys.mjs {origin} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    println!("{stdout}");
    assert!(
        stdout.contains("all steps passed"),
        "passkeys.mjs exited 0 without passing:\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn passkeys_in_a_real_browser() {
    passkeys_in_a_real_browser_on(Backend::Postgres).await;
}

#[tokio::test]
async fn passkeys_in_a_real_browser_sqlite() {
    passkeys_in_a_real_browser_on(Backend::Sqlite).await;
}
