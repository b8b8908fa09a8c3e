//! `keyledger admin create` (bootstrapping the first platform administrator) and
//! `keyledger users import` (moving accounts in), on
//! both back ends (PostgreSQL with DATABASE_URL, the embedded store without), and
//! `keyledger sessions revoke-before` (the platform-wide session cut-off; its
//! effect on servers of either back end is in the end-to-end suite).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use keyledger_storage::{connect_options, Durability, DATABASE_FILE};
use sqlx::sqlite::SqlitePoolOptions;

mod common;

const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// Drops the test's database however the test ends.
struct Database(String);

impl Drop for Database {
    fn drop(&mut self) {
        common::force_drop_postgres_database(format!("{PG}/{}", self.0));
    }
}

/// The test's data directory (the embedded database and the key files the
/// command creates), removed however the test ends.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("keyledger-admin-cli-{}", uuid::Uuid::new_v4())))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `keyledger admin create` against the database at `database_url` (the
/// server's `DATABASE_URL`), or the data directory's embedded store when there
/// is none.
fn admin_create(
    database_url: Option<&str>,
    data_dir: &DataDir,
    email: &str,
    password: Option<&str>,
) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyledger"));
    command
        .args(["admin", "create", "--email", email])
        .env_remove("DATABASE_URL")
        .env("KEYLEDGER_DATA_DIR", &data_dir.0)
        .env("KEYLEDGER_ARGON2_MEMORY_KIB", "4096")
        .env("KEYLEDGER_ARGON2_ITERATIONS", "1")
        .env("KEYLEDGER_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
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

/// Runs the command three times against the database at `database_url`, or
/// the data directory's embedded store when there is none: refused without a password,
/// registers and grants, then finds the administrator already there.
fn create_the_first_admin_once(database_url: Option<&str>, data_dir: &DataDir) {
    let password = "correct horse battery staple";

    // Without a password, an unknown address cannot be created.
    let (ok, text) = admin_create(database_url, data_dir, "root@example.com", None);
    assert!(!ok, "{text}");
    assert!(text.contains("--password-stdin"), "{text}");

    let (ok, text) = admin_create(database_url, data_dir, "Root@Example.com", Some(password));
    assert!(ok, "{text}");
    assert!(text.contains("registered"), "{text}");
    assert!(!text.contains(password), "the password is echoed: {text}");
    let (ok, text) = admin_create(database_url, data_dir, "root@example.com", None);
    assert!(ok, "{text}");
    assert!(text.contains("already"), "{text}");
}

/// The account's events the three runs leave, `(event_type, request_id)`.
fn expected_events() -> Vec<(String, String)> {
    vec![
        ("UserRegistered".to_owned(), "cli".to_owned()),
        ("PlatformAdminGranted".to_owned(), "cli".to_owned()),
    ]
}

mod the_first_platform_admin_is_created_from_the_command_line_once {
    use super::*;

    #[tokio::test]
    async fn postgres() {
        if let Err(e) = sqlx::PgPool::connect(&format!("{PG}/postgres")).await {
            panic!("PostgreSQL is required at 127.0.0.1:5432: {e}");
        }
        let db = Database(format!(
            "keyledger_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ));
        let url = format!("{PG}/{}", db.0);
        let data_dir = DataDir::new();
        create_the_first_admin_once(Some(url.as_str()), &data_dir);
        // PostgreSQL holds the log: nothing embedded was opened.
        assert!(!data_dir.0.join(DATABASE_FILE).exists());

        let pool = sqlx::PgPool::connect(&url).await.expect("database");
        let events: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_type, metadata ->> 'request_id' FROM events
              WHERE aggregate_type = 'user' ORDER BY sequence",
        )
        .fetch_all(&pool)
        .await
        .expect("events");
        assert_eq!(events, expected_events());
        pool.close().await;
    }

    #[tokio::test]
    async fn sqlite() {
        let data_dir = DataDir::new();
        create_the_first_admin_once(None, &data_dir);

        // The command has ended and released the directory: read its database.
        let path = data_dir.0.join(DATABASE_FILE);
        assert!(path.is_file(), "no embedded database at {}", path.display());
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect_options(&path, Durability::Full).read_only(true))
            .await
            .expect("embedded database");
        let events: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_type, metadata ->> '$.request_id' FROM events
              WHERE aggregate_type = 'user' ORDER BY sequence",
        )
        .fetch_all(&pool)
        .await
        .expect("events");
        assert_eq!(events, expected_events());
        pool.close().await;
    }
}

/// Runs `keyledger users import -` against the database at `database_url`
/// (else the data directory's embedded store) with `input` on standard input.
fn users_import(
    database_url: Option<&str>,
    data_dir: &DataDir,
    input: &str,
) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyledger"));
    command
        .args(["users", "import", "-"])
        .env_remove("DATABASE_URL")
        .env("KEYLEDGER_DATA_DIR", &data_dir.0)
        .env("KEYLEDGER_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    let mut child = command.spawn().expect("keyledger runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write input");
    let out = child.wait_with_output().expect("keyledger ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two good lines (PBKDF2-SHA256 of RFC 7914's test vector in Werkzeug's form,
/// and in passlib's), a malformed hash: the first run imports two and reports
/// line 3, the second skips both and reports line 3 again.
fn import_twice(database_url: Option<&str>, data_dir: &DataDir) {
    let input = concat!(
        r#"{"email": "werkzeug@example.com", "email_verified": true, "password_hash": "pbkdf2:sha256:1$salt$120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"}"#,
        "\n",
        r#"{"email": "passlib@example.com", "display_name": "Pass Lib", "password_hash": "$pbkdf2-sha256$1$c2FsdA$Eg.2z/z4syxD5yJSVsT4N6hlSMkszDVICAWYfLcL4Xs"}"#,
        "\n",
        r#"{"email": "broken@example.com", "password_hash": "$2b$12$tooShortToBeBcrypt"}"#,
        "\n",
    );
    let (ok, out, err) = users_import(database_url, data_dir, input);
    assert!(!ok, "a failed line fails the run: {out}{err}");
    assert!(
        out.contains("imported 2, skipped 0 already present, failed 1"),
        "{out}{err}"
    );
    assert!(out.contains("line 3: malformed bcrypt hash"), "{out}");
    assert!(
        !out.contains("tooShort") && !err.contains("tooShort"),
        "{out}{err}"
    );

    let (ok, out, err) = users_import(database_url, data_dir, input);
    assert!(!ok, "{out}{err}");
    assert!(
        out.contains("imported 0, skipped 2 already present, failed 1"),
        "{out}{err}"
    );
}

/// The events two import runs leave: two accounts, each registered and imported.
fn expected_import_events() -> Vec<(String, String)> {
    ["UserRegistered", "UserImported"]
        .iter()
        .cycle()
        .take(4)
        .map(|t| ((*t).to_owned(), "import".to_owned()))
        .collect()
}

mod users_are_imported_from_the_command_line_once {
    use super::*;

    #[tokio::test]
    async fn postgres() {
        if let Err(e) = sqlx::PgPool::connect(&format!("{PG}/postgres")).await {
            panic!("PostgreSQL is required at 127.0.0.1:5432: {e}");
        }
        let db = Database(format!(
            "keyledger_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ));
        let url = format!("{PG}/{}", db.0);
        let data_dir = DataDir::new();
        import_twice(Some(url.as_str()), &data_dir);

        let pool = sqlx::PgPool::connect(&url).await.expect("database");
        let events: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_type, metadata ->> 'request_id' FROM events
              WHERE aggregate_type = 'user' ORDER BY sequence, aggregate_id",
        )
        .fetch_all(&pool)
        .await
        .expect("events");
        let mut expected = expected_import_events();
        expected.sort();
        let mut events = events;
        events.sort();
        assert_eq!(events, expected);
        pool.close().await;
    }

    #[tokio::test]
    async fn sqlite() {
        let data_dir = DataDir::new();
        import_twice(None, &data_dir);

        let path = data_dir.0.join(DATABASE_FILE);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect_options(&path, Durability::Full).read_only(true))
            .await
            .expect("embedded database");
        let mut events: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_type, metadata ->> '$.request_id' FROM events
              WHERE aggregate_type = 'user'",
        )
        .fetch_all(&pool)
        .await
        .expect("events");
        events.sort();
        let mut expected = expected_import_events();
        expected.sort();
        assert_eq!(events, expected);
        pool.close().await;
    }
}

/// Runs `keyledger sessions revoke-before` with `args` on the embedded store of
/// `data_dir`; answers its exit code and its output.
fn sessions_revoke_before(data_dir: &DataDir, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args(["sessions", "revoke-before"])
        .args(args)
        .env_remove("DATABASE_URL")
        .env("KEYLEDGER_DATA_DIR", &data_dir.0)
        .env("KEYLEDGER_LOG", "warn")
        .output()
        .expect("keyledger runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn the_session_cut_off_is_set_from_the_command_line_and_only_moves_forward() {
    let data_dir = DataDir::new();
    let (code, text) = sessions_revoke_before(&data_dir, &["--before", "yesterday"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("RFC 3339"), "{text}");
    let (code, text) = sessions_revoke_before(&data_dir, &["--reason", "breach drill"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("are revoked"), "{text}");
    let (code, text) = sessions_revoke_before(&data_dir, &["--before", "2020-01-01T00:00:00Z"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("nothing changed"), "{text}");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (code, text) = sessions_revoke_before(&data_dir, &["--before", &later]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("future"), "{text}");

    let path = data_dir.0.join(DATABASE_FILE);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(connect_options(&path, Durability::Full).read_only(true))
        .await
        .expect("embedded database");
    let events: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT aggregate_type, event_type, metadata ->> '$.request_id' FROM events
          ORDER BY global_position",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    assert_eq!(
        events,
        [(
            "platform".to_owned(),
            "SessionsRevokedBefore".to_owned(),
            "cli".to_owned()
        )]
    );
    pool.close().await;
}
