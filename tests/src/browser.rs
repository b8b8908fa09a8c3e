//! What the real-browser tests share (`passkeys_browser`, `pages_browser`): a
//! script of `tests/browser` (playwright-core driving Debian's Chromium, axe-core
//! for accessibility) run by `node` against a server this test started.
//!
//! Nothing is skipped: when Chromium, node or the script's packages are missing,
//! the test fails naming the installer, `.ci/install-browser`.
//!
//! The browser visits `http://localhost:PORT`: WebAuthn accepts no IP address as
//! RP id, and `localhost` is a secure context over plain HTTP (so `Secure` cookies
//! work). The server therefore gets a port chosen beforehand, [`crate::free_port`],
//! known before it starts, for its allowed origin; it comes from the ephemeral
//! range, above every port Chromium refuses to visit.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const INSTALL: &str = "run `bash .ci/install-browser` (or `.ci/test`, which does)";

/// The browser the scripts launch: `$KEYLEDGER_CHROMIUM`, else Debian's
/// `/usr/bin/chromium` (the scripts read `$KEYLEDGER_CHROMIUM` too; [`run_script`]
/// sets it).
pub fn chromium() -> PathBuf {
    std::env::var_os("KEYLEDGER_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// `tests/browser` ready to run `script`: `$KEYLEDGER_TEST_BROWSER`, which
/// `.ci/test` exports, else the repository's. Panics, naming the installer, when
/// playwright-core, axe-core, the script or Chromium is missing: the test is never
/// skipped.
pub fn browser_dir(script: &str) -> PathBuf {
    let dir = match std::env::var_os("KEYLEDGER_TEST_BROWSER") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("browser"),
    };
    assert!(
        dir.join(script).is_file(),
        "{} has no {script} (KEYLEDGER_TEST_BROWSER must name tests/browser)",
        dir.display()
    );
    for package in ["playwright-core", "axe-core"] {
        let manifest = dir.join("node_modules").join(package).join("package.json");
        assert!(
            manifest.is_file(),
            "{package} is required for {script}: {} does not exist; {INSTALL}",
            manifest.display()
        );
    }
    let chromium = chromium();
    assert!(
        chromium.is_file(),
        "Chromium is required for {script}: {} does not exist; {INSTALL} \
         (it installs Debian's `chromium`)",
        chromium.display()
    );
    dir
}

/// Runs `node <dir>/<script> <args…>` in `dir` with `$KEYLEDGER_CHROMIUM` set, and
/// waits for it at most `within` (the scripts bound every step and themselves; this
/// is the backstop, and the child is killed when it is dropped). Panics unless it
/// exits 0 having printed "all steps passed"; prints its output and returns it.
pub async fn run_script(dir: &Path, script: &str, args: &[String], within: Duration) -> String {
    let child = tokio::process::Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .current_dir(dir)
        .env("KEYLEDGER_CHROMIUM", chromium())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("node is required for {script} ({e}); {INSTALL}"));
    let output = tokio::time::timeout(within, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {} s", within.as_secs()))
        .unwrap_or_else(|e| panic!("{script} did not run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} {} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        args.join(" "),
        output.status
    );
    println!("{stdout}");
    assert!(
        stdout.contains("all steps passed"),
        "{script} exited 0 without passing:\n{stdout}\n{stderr}"
    );
    stdout
}
