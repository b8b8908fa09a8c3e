//! Moving existing users in: `keyledger users import` takes accounts
//! with the hashes other systems made, and each account's first login verifies the
//! old hash and replaces it with Argon2id in the same step.
//!
//! The hashes come from independent implementations run at test time, never from
//! our own code: Python's `bcrypt` and `passlib` (and `hashlib` for the Django and
//! Werkzeug forms), Node's `bcryptjs`. `.ci/install-legacy-hashers` installs them
//! pinned; without them the test fails with that command.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use keyledger_api::user_import::{import_accounts, FailedLine, ImportSummary};
use keyledger_commands::PersonalDataSealer;
use keyledger_domain::{SealedPasswordHash, UserEvent};
use keyledger_e2e::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const INSTALL: &str = "install them with `bash .ci/install-legacy-hashers` (pinned bcrypt and \
    passlib into .ci/venv, bcryptjs into tests/legacy-hashes/node_modules)";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `program args` and returns its standard output; panics with the install
/// command when the tool is missing or fails.
fn run(program: &Path, args: &[&str], dir: &Path) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{} is required ({e}); {INSTALL}", program.display()));
    assert!(
        output.status.success(),
        "{} failed: {}; {INSTALL}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// One legacy hash per tool and form, as `(form, password, hash)`.
fn legacy_hashes() -> Vec<(String, String, String)> {
    let root = repository();
    let python = root.join(".ci/venv/bin/python");
    let script = r#"
import base64, hashlib, json, sys
import bcrypt
from passlib.hash import pbkdf2_sha256, scrypt

def out(form, password, hash):
    print(json.dumps([form, password, hash]))

pw = "python bcrypt pässword"
h = bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()
out("python bcrypt $2b$", pw, h)
out("bcrypt $2y$", pw + "!", bcrypt.hashpw((pw + "!").encode(), bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1))
out("passlib pbkdf2_sha256", "passlib pbkdf2 secret", pbkdf2_sha256.using(rounds=1000).hash("passlib pbkdf2 secret"))
out("passlib scrypt", "passlib scrypt secret", scrypt.using(rounds=10, block_size=8, parallelism=1).hash("passlib scrypt secret"))
pw = "django pbkdf2 secret"
dk = hashlib.pbkdf2_hmac("sha256", pw.encode(), b"DjangoSalt123456", 1000)
out("django pbkdf2_sha256", pw, "pbkdf2_sha256$1000$DjangoSalt123456$" + base64.b64encode(dk).decode())
pw = "werkzeug pbkdf2 secret"
dk = hashlib.pbkdf2_hmac("sha256", pw.encode(), b"WerkzeugSalt1234", 1000)
out("werkzeug pbkdf2:sha256", pw, "pbkdf2:sha256:1000$WerkzeugSalt1234$" + dk.hex())
pw = "werkzeug scrypt secret"
dk = hashlib.scrypt(pw.encode(), salt=b"WerkzeugSalt5678", n=1024, r=8, p=1, dklen=64)
out("werkzeug scrypt", pw, "scrypt:1024:8:1$WerkzeugSalt5678$" + dk.hex())
"#;
    let mut hashes: Vec<(String, String, String)> = run(&python, &["-c", script], &root)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a [form, password, hash] line"))
        .collect();
    let node_dir = root.join("tests/legacy-hashes");
    assert!(
        node_dir
            .join("node_modules/bcryptjs/package.json")
            .is_file(),
        "bcryptjs is required; {INSTALL}"
    );
    let password = "node bcryptjs secret";
    let hash = run(
        Path::new("node"),
        &[
            "-e",
            &format!("process.stdout.write(require('bcryptjs').hashSync({password:?}, 4))"),
        ],
        &node_dir,
    );
    assert!(hash.starts_with("$2a$04$"), "bcryptjs wrote {hash:?}");
    hashes.push(("node bcryptjs $2a$".into(), password.into(), hash));
    hashes
}

/// The current password hash of an account (its latest password event), opened
/// with the person's data key.
async fn current_hash(app: &TestApp, user_id: Uuid) -> (String, Vec<String>) {
    let key =
        PersonalDataSealer::for_storage(&app.state.storage, app.state.data_key_wrapping.clone())
            .key_for(user_id)
            .await
            .expect("the data key store answers")
            .expect("an imported person has a data key");
    let events: Vec<_> = app
        .stored_events()
        .await
        .into_iter()
        .filter(|e| e.aggregate_type == "user" && e.aggregate_id == user_id.to_string())
        .collect();
    // The wrong-password check below leaves a `LoginFailed` on the first account.
    let types = events
        .iter()
        .map(|e| e.event_type.clone())
        .filter(|t| t != "LoginFailed")
        .collect();
    let sealed: Vec<SealedPasswordHash> = events
        .iter()
        .filter_map(|e| match serde_json::from_value(e.payload_json()) {
            Ok(UserEvent::UserRegistered { password_hash, .. }) => password_hash,
            Ok(UserEvent::PasswordRehashed { password_hash, .. }) => Some(password_hash),
            _ => None,
        })
        .collect();
    for hash in &sealed {
        assert!(hash.is_sealed(), "an imported hash is stored sealed");
    }
    let latest = sealed
        .last()
        .expect("a password event")
        .open(Some(&key))
        .expect("the person's key opens the hash")
        .expose_phc()
        .to_owned();
    (latest, types)
}

async fn import(app: &TestApp, input: &str) -> ImportSummary {
    let mut calls = 0;
    let summary = import_accounts(&app.state.auth, Cursor::new(input.to_owned()), |_| {
        calls += 1
    })
    .await
    .expect("the import runs");
    assert_eq!(calls, summary.lines(), "progress after every line");
    summary
}

e2e! { async fn imported_legacy_hashes_log_in_and_are_rehashed_with_argon2id(backend) {
    let app = spawn_app_on(backend).await;
    let hashes = legacy_hashes();
    let tag = Uuid::new_v4().simple().to_string();
    let email = |i: usize| format!("legacy-{i}-{tag}@example.com");

    let mut lines: Vec<String> = hashes
        .iter()
        .enumerate()
        .map(|(i, (form, _, hash))| {
            json!({
                "email": email(i),
                "display_name": format!("Imported {form}"),
                "email_verified": i % 2 == 0,
                "password_hash": hash,
            })
            .to_string()
        })
        .collect();
    let good = lines.len();
    // Bad lines, each reported by its number and never half-imported.
    let bad = [
        json!({"email": format!("bad-bcrypt-{tag}@example.com"), "password_hash": "$2b$04$short"}).to_string(),
        json!({"email": format!("md5-{tag}@example.com"), "password_hash": "$1$saltsalt$abcdefghijklmnopqrstuv"}).to_string(),
        // The same address as the first line, spelled with other case.
        json!({"email": email(0).to_uppercase(), "password_hash": hashes[0].2}).to_string(),
        "{not json".to_owned(),
        json!({"email": format!("nohash-{tag}@example.com")}).to_string(),
        json!({"email": "not an address", "password_hash": hashes[0].2}).to_string(),
    ];
    lines.extend(bad.iter().cloned());
    lines.insert(1, String::new()); // a blank line is ignored (but numbered)
    let input = lines.join("\n");
    let line_of_bad = |k: usize| good + 2 + k;

    let first = import(&app, &input).await;
    assert_eq!(first.imported, good, "{first}");
    assert_eq!(first.already_present, 0, "{first}");
    let failed_lines: Vec<usize> = first.failed.iter().map(|f| f.line).collect();
    assert_eq!(failed_lines, (0..bad.len()).map(line_of_bad).collect::<Vec<_>>(), "{first}");
    let reason = |k: usize| first.failed[k].reason.clone();
    assert!(reason(0).contains("malformed bcrypt"), "{}", reason(0));
    assert!(reason(1).contains("unrecognised"), "{}", reason(1));
    assert_eq!(reason(2), "the same email as line 1");
    assert!(reason(3).contains("invalid JSON"), "{}", reason(3));
    assert!(reason(4).contains("password_hash"), "{}", reason(4));
    assert!(reason(5).contains("email"), "{}", reason(5));
    // No reason repeats any part of a hash.
    for FailedLine { reason, .. } in &first.failed {
        for (_, _, hash) in &hashes {
            assert!(!reason.contains(&hash[hash.len() - 20..]), "{reason}");
        }
        assert!(!reason.contains("saltsalt"), "{reason}");
    }
    // Nothing of a failed line was written: its address is free.
    let registered = app.register(&format!("md5-{tag}@example.com"), PASSWORD).await;
    assert_eq!(registered.status(), StatusCode::CREATED);

    // A second run skips everything already imported and reports the same failures.
    let second = import(&app, &input).await;
    assert_eq!(second.imported, 0, "{second}");
    assert_eq!(second.already_present, good, "{second}");
    assert_eq!(second.failed, first.failed);

    // A wrong password for an imported account answers exactly as an unknown address.
    let wrong = app.login(&email(0), "not the password").await;
    let unknown = app.login(&format!("nobody-{tag}@example.com"), "not the password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body(wrong).await, body(unknown).await);

    for (i, (form, password, legacy)) in hashes.iter().enumerate() {
        let response = app.login(&email(i), password).await;
        assert_eq!(response.status(), StatusCode::OK, "{form}: {}", body(response).await);
        let user_id: Uuid = app
            .state
            .auth
            .find_user_id(&email(i))
            .await
            .expect("lookup")
            .expect("imported");
        let (stored, types) = current_hash(&app, user_id).await;
        assert!(stored.starts_with("$argon2id$"), "{form}: still {stored:?}");
        assert!(!app
            .state
            .hasher
            .is_outdated(&keyledger_domain::PasswordHash::new(stored.clone())));
        assert_ne!(&stored, legacy);
        assert_eq!(
            types,
            ["UserRegistered", "UserImported", "UserLoggedIn", "PasswordRehashed"],
            "{form}"
        );
        // The password keeps working against its new Argon2id hash, without
        // another rehash.
        let again = app.login(&email(i), password).await;
        assert_eq!(again.status(), StatusCode::OK, "{form}");
        let (_, types) = current_hash(&app, user_id).await;
        assert_eq!(types.iter().filter(|t| *t == "PasswordRehashed").count(), 1, "{form}");
    }

    // The import record: what the old system said about the address, the hash's
    // algorithm, never the hash.
    let imported: Vec<Value> = app
        .stored_events()
        .await
        .into_iter()
        .filter(|e| e.event_type == "UserImported")
        .map(|e| e.payload_json())
        .collect();
    assert_eq!(imported.len(), good);
    for payload in &imported {
        let fields = &payload["UserImported"];
        assert!(fields["email_verified"].is_boolean(), "{payload}");
        assert!(
            ["bcrypt", "pbkdf2-sha256", "scrypt"].contains(&fields["scheme"].as_str().unwrap()),
            "{payload}"
        );
        for (_, _, hash) in &hashes {
            assert!(!payload.to_string().contains(&hash[hash.len() - 20..]));
        }
    }
}}
