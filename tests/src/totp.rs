//! Authenticator-app codes from pyotp, an RFC 6238 implementation we did not
//! write, so the server's TOTP checks are tested against someone else's codes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const INSTALL: &str = "run `bash .ci/install-pyotp` (or `.ci/test`, which does)";

/// The Python that has pyotp: `$KEYLEDGER_TEST_PYOTP`, else the repository's
/// `.ci/venv`. Panics, naming the installer, when it is missing.
/// The Python that has pyotp (for scripts that compute codes themselves).
pub fn pyotp_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/venv/bin/python");
        match std::env::var_os("KEYLEDGER_TEST_PYOTP") {
            Some(path) => PathBuf::from(path),
            None if venv.is_file() => venv,
            None => panic!(
                "pyotp is required for the second-factor tests: KEYLEDGER_TEST_PYOTP is not \
                 set and {} does not exist; {INSTALL}",
                venv.display()
            ),
        }
    })
}

/// pyotp's code for the base32 `secret` at Unix time `at`.
pub fn code_at(secret: &str, at: i64) -> String {
    let output = Command::new(pyotp_python())
        .args([
            "-c",
            "import sys, pyotp; print(pyotp.TOTP(sys.argv[1]).at(int(sys.argv[2])))",
            secret,
            &at.to_string(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("pyotp is required ({e}); {INSTALL}"));
    assert!(
        output.status.success(),
        "pyotp failed ({INSTALL}): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let code = String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert_eq!(code.len(), 6, "pyotp's code {code:?}");
    code
}

/// pyotp's code for `secret` now.
pub fn code_now(secret: &str) -> String {
    code_at(secret, chrono::Utc::now().timestamp())
}

/// The secret of an `otpauth://` URI, as pyotp parses it.
pub fn secret_of(uri: &str) -> String {
    let output = Command::new(pyotp_python())
        .args([
            "-c",
            "import sys, pyotp; t = pyotp.parse_uri(sys.argv[1]); print(t.secret, t.issuer, t.name)",
            uri,
        ])
        .output()
        .unwrap_or_else(|e| panic!("pyotp is required ({e}); {INSTALL}"));
    assert!(
        output.status.success(),
        "pyotp could not parse {uri}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .split_whitespace()
        .next()
        .expect("a secret")
        .to_owned()
}
