//! `keyledger admin create`: bootstrapping the first platform administrator.

use std::io::Write;
use std::process::{Command, Stdio};

use sqlx::migrate::MigrateDatabase;
use sqlx::Postgres;

const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// Drops the test's database however the test ends.
struct Database(String);

impl Drop for Database {
    fn drop(&mut self) {
        let url = format!("{PG}/{}", self.0);
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(Postgres::force_drop_database(&url))
        })
        .join();
    }
}

fn admin_create(database_url: &str, email: &str, password: Option<&str>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyledger"));
    command
        .args(["admin", "create", "--email", email])
        .env("DATABASE_URL", database_url)
        .env("KEYLEDGER_ARGON2_MEMORY_KIB", "4096")
        .env("KEYLEDGER_ARGON2_ITERATIONS", "1")
        .env("KEYLEDGER_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if password.is_some() {
        command.arg("--password-stdin");
    }
    let mut child = command.spawn().expect("keyledger runs");
    if let Some(password) = password {
        writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write password");
    }
    let out = child.wait_with_output().expect("keyledger ends");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_first_platform_admin_is_created_from_the_command_line_once() {
    if let Err(e) = sqlx::PgPool::connect(&format!("{PG}/postgres")).await {
        panic!("PostgreSQL is required at 127.0.0.1:5432: {e}");
    }
    let db = Database(format!(
        "keyledger_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    ));
    let url = format!("{PG}/{}", db.0);
    let password = "correct horse battery staple";

    // Without a password, an unknown address cannot be created.
    let (ok, text) = admin_create(&url, "root@example.com", None);
    assert!(!ok, "{text}");
    assert!(text.contains("--password-stdin"), "{text}");

    let (ok, text) = admin_create(&url, "Root@Example.com", Some(password));
    assert!(ok, "{text}");
    assert!(text.contains("registered"), "{text}");
    assert!(!text.contains(password), "the password is echoed: {text}");
    let (ok, text) = admin_create(&url, "root@example.com", None);
    assert!(ok, "{text}");
    assert!(text.contains("already"), "{text}");

    let pool = sqlx::PgPool::connect(&url).await.expect("database");
    let events: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, metadata ->> 'request_id' FROM events
          WHERE aggregate_type = 'user' ORDER BY sequence",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    assert_eq!(
        events,
        vec![
            ("UserRegistered".to_owned(), "cli".to_owned()),
            ("PlatformAdminGranted".to_owned(), "cli".to_owned()),
        ]
    );
    pool.close().await;
}
