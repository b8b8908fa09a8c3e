//! The README's first command works on a machine with no database server: the
//! binary, started from a clean directory with `DATABASE_URL` and
//! `NATS_URL` pointing nowhere (empty) and no other setting, serves registrations
//! and logins from the embedded store it creates in `./keyledger-data`, writes the
//! verification mail as a file a newcomer can open and follow, says so on start,
//! and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct CleanDir(std::path::PathBuf);

impl Drop for CleanDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn the_first_command_serves_from_a_clean_directory_without_a_database_server() {
    let dir =
        CleanDir(std::env::temp_dir().join(format!("keyledger-clean-{}", uuid::Uuid::new_v4())));
    std::fs::create_dir_all(&dir.0).expect("clean dir");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let mut command = Command::new(env!("CARGO_BIN_EXE_keyledger"));
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYLEDGER_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .current_dir(&dir.0)
        .env("DATABASE_URL", "")
        .env("NATS_URL", "")
        // Only so that parallel test runs do not fight over port 8080.
        .env("KEYLEDGER_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keyledger starts");
    // The start-up report goes to standard error, beside the logs.
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("relay disabled"))
            .collect::<Vec<_>>()
    });

    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let health: Value = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the server exited: {status}");
        }
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await {
            if r.status().is_success() {
                break r.json().await.unwrap();
            }
        }
        assert!(Instant::now() < deadline, "not ready in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["storage"], "sqlite", "{health}");
    assert_eq!(health["nats"], "disabled", "{health}");

    let registered = client
        .post(format!("{base}/v1/auth/register"))
        .json(&json!({ "email": "first@example.com", "password": "correct horse battery staple" }))
        .send()
        .await
        .unwrap();
    // Verification is on by default: 202, and the mail is a file in the outbox.
    assert_eq!(registered.status(), 202);
    let outbox = dir.0.join("keyledger-data").join("outbox");
    let mail = loop {
        let found = std::fs::read_dir(&outbox).ok().and_then(|entries| {
            entries
                .map_while(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "eml"))
        });
        if let Some(path) = found {
            // As a mail client reads it: the text part is quoted-printable, whose
            // soft line breaks split a long link.
            let raw = std::fs::read_to_string(path).unwrap();
            break raw.replace("=\r\n", "").replace("=3D", "=");
        }
        assert!(
            Instant::now() < deadline,
            "no mail in {} in 60 s",
            outbox.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(mail.contains("To: first@example.com"), "{mail}");
    let link = format!("{base}/verify-email?token=");
    let start = mail
        .find(&link)
        .expect("the mail links to the verification page")
        + link.len();
    let token: String = mail[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    let verified = client
        .post(format!("{base}/v1/auth/verify-email"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 204);
    let login = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "email": "first@example.com", "password": "correct horse battery staple" }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);

    // SIGTERM: a graceful stop, which closes the embedded store (its WAL is
    // checkpointed into the database file and removed).
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status}");
    let wal = dir.0.join("keyledger-data").join("keyledger.db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "the WAL is left behind after a graceful stop"
    );
    let report = lines.join().unwrap().join("\n");
    assert!(report.contains(&format!("127.0.0.1:{port}")), "{report}");
    assert!(
        report.contains("storage: embedded SQLite at keyledger-data/keyledger.db"),
        "{report}"
    );
    assert!(
        report.contains("development and single-node use"),
        "{report}"
    );
    assert!(
        report.contains("mails are written as .eml files to keyledger-data/outbox"),
        "{report}"
    );
    for file in [
        "keyledger.db",
        "signing-key.paserk",
        "audit-key.paserk",
        "email-index.key",
    ] {
        assert!(
            dir.0.join("keyledger-data").join(file).exists(),
            "keyledger-data/{file} missing"
        );
    }
}
