//! Erasure reaches the database files (security review, issue #12 item 6): after
//! `DELETE /v1/users/me` the raw bytes of the store hold none of the person's
//! email, display name, password hash or data key. Deleting rows is not enough:
//! SQLite keeps old pages in its write-ahead log and free space, PostgreSQL keeps
//! dead tuples (and a plain VACUUM leaves their bytes in the page).

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyledger_commands::PersonalDataSealer;
use keyledger_domain::{DataKey, SealedPasswordHash, UserEvent};
use keyledger_e2e::*;
use keyledger_storage::Engine;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

const NEW_PASSWORD: &str = "a different horse, equally correct";

/// What must be gone from the files, each with a name for the failure message.
struct Secrets {
    needles: Vec<(&'static str, Vec<u8>)>,
}

/// The raw bytes of every file holding this test's database: on SQLite the
/// database file and its write-ahead log; on PostgreSQL every file of the
/// database's directory (tables, indexes, TOAST, after a CHECKPOINT so that what
/// the server holds in memory is on disk). Panics when a file cannot be read:
/// a check that read nothing would prove nothing.
async fn database_files(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    // PostgreSQL files named after their relation, for a readable failure.
    let mut names = std::collections::HashMap::new();
    let paths: Vec<PathBuf> = match app.state.storage.engine() {
        Engine::Sqlite(db) => {
            let file = db.path().to_owned();
            let wal = PathBuf::from(format!("{}-wal", file.display()));
            assert!(file.is_file(), "no database file at {}", file.display());
            let mut paths = vec![file];
            if wal.exists() {
                paths.push(wal);
            }
            paths
        }
        Engine::Postgres(pool) => {
            sqlx::query("CHECKPOINT")
                .execute(pool)
                .await
                .expect("CHECKPOINT (the tests connect as a superuser)");
            let data_dir: String = sqlx::query_scalar("SHOW data_directory")
                .fetch_one(pool)
                .await
                .unwrap();
            // `base/<database oid>/<filenode>`: the directory holds every
            // relation of this database.
            let users: String = sqlx::query_scalar("SELECT pg_relation_filepath('users')")
                .fetch_one(pool)
                .await
                .unwrap();
            let dir = Path::new(&data_dir)
                .join(&users)
                .parent()
                .unwrap()
                .to_owned();
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
                panic!(
                    "cannot list {} (the tests must run as root or postgres): {e}",
                    dir.display()
                )
            });
            let paths: Vec<PathBuf> = entries
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.is_file())
                .collect();
            let relations: Vec<(String, String)> = sqlx::query_as(
                "SELECT pg_relation_filepath(oid), relname::text FROM pg_class
                  WHERE pg_relation_filepath(oid) IS NOT NULL",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            for (path, name) in relations {
                names.insert(Path::new(&data_dir).join(path), name);
            }
            assert!(
                paths.iter().any(|p| p.ends_with(&users)),
                "the users table's file {users} is not in {}",
                dir.display()
            );
            paths
        }
    };
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let name = match names.get(&path) {
                Some(relation) => format!("{} ({relation})", path.display()),
                None => path.display().to_string(),
            };
            (name, bytes)
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Which secrets which files hold, as `name in file`.
fn found(files: &[(String, Vec<u8>)], secrets: &Secrets) -> Vec<String> {
    let mut found = Vec::new();
    for (name, needle) in &secrets.needles {
        for (file, bytes) in files {
            if contains(bytes, needle) {
                found.push(format!("{name} in {file}"));
            }
        }
    }
    found
}

/// The person's data key in clear, as the write side uses it.
async fn data_key(app: &TestApp, user_id: Uuid) -> DataKey {
    PersonalDataSealer::for_storage(&app.state.storage, app.state.data_key_wrapping.clone())
        .key_for(user_id)
        .await
        .expect("the data key store answers")
        .expect("a registered person has a data key")
}

/// The password hash the account's latest password event holds, opened.
async fn password_hash(app: &TestApp, user_id: Uuid, key: &DataKey) -> String {
    let events = app.stored_events().await;
    let sealed: Vec<SealedPasswordHash> = events
        .iter()
        .filter(|e| e.aggregate_type == "user" && e.aggregate_id == user_id.to_string())
        .filter_map(|e| match serde_json::from_value(e.payload_json()) {
            Ok(UserEvent::UserRegistered { password_hash, .. }) => password_hash,
            Ok(UserEvent::PasswordChanged { password_hash, .. })
            | Ok(UserEvent::PasswordRehashed { password_hash, .. }) => Some(password_hash),
            _ => None,
        })
        .collect();
    assert_eq!(sealed.len(), 2, "registered, then changed the password");
    for hash in &sealed {
        assert!(
            hash.is_sealed(),
            "a new password event holds its hash sealed"
        );
        assert!(!hash.as_stored().contains("argon2"));
    }
    sealed
        .last()
        .unwrap()
        .open(Some(key))
        .expect("the person's key opens their hash")
        .expose_phc()
        .to_owned()
}

e2e! { async fn after_an_erasure_the_database_files_hold_none_of_the_persons_data(backend) {
    let app = spawn_app_on(backend).await;
    let tag = Uuid::new_v4().simple().to_string();
    let email = format!("raw-bytes-{tag}@example.com");
    let name = format!("Scrubbed {}", &tag[..12]);
    let user_id = app.registered_named(&email, &name).await;
    let tokens = app.tokens(app.login(&email, PASSWORD).await).await;
    let changed = app
        .call(
            Method::POST,
            "/v1/auth/password",
            Some(&tokens.access_token),
            Some(&json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD})),
        )
        .await;
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
    // The new hash verifies (the write side opens what it sealed).
    let tokens = app.tokens(app.login(&email, NEW_PASSWORD).await).await;
    app.read_models_caught_up().await;

    let key = data_key(&app, user_id).await;
    let phc = password_hash(&app, user_id, &key).await;
    // The digest part of the PHC string: unique to this hash.
    let digest = phc.rsplit('$').next().unwrap().to_owned();
    assert!(digest.len() >= 22, "{}", digest.len());
    let secrets = Secrets {
        needles: vec![
            ("the email", email.as_bytes().to_vec()),
            ("the display name", name.as_bytes().to_vec()),
            ("the password hash", digest.as_bytes().to_vec()),
            ("the data key", key.expose_bytes().to_vec()),
        ],
    };

    // The check can see: before the erasure the read models hold the address
    // and the name in clear, and these files show them.
    let before = found(&database_files(&app).await, &secrets);
    assert!(
        before.iter().any(|f| f.starts_with("the email")),
        "the raw files are not what the read models write to: {before:?}"
    );
    assert!(
        !before
            .iter()
            .any(|f| f.starts_with("the password hash") || f.starts_with("the data key")),
        "the hash and the data key are never stored in clear: {before:?}"
    );

    let erased = app
        .call(
            Method::DELETE,
            "/v1/users/me",
            Some(&tokens.access_token),
            Some(&json!({ "password": NEW_PASSWORD })),
        )
        .await;
    assert_eq!(erased.status(), StatusCode::NO_CONTENT);
    // The projector scrubs the read models' files after it applied the erasure
    // and before its progress passes it (the request waited for that up to 5 s;
    // on a busy test machine it may take longer).
    let erasure_sequence = app
        .stored_events()
        .await
        .iter()
        .filter(|e| e.aggregate_type == "user" && e.aggregate_id == user_id.to_string())
        .count() as i64;
    let scrubbed = app
        .state
        .consistency
        .wait_for("user", &user_id.to_string(), erasure_sequence, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(scrubbed, "the projector did not apply the erasure within a minute");

    let after = found(&database_files(&app).await, &secrets);
    let scrub_failures: Vec<String> = app
        .state
        .metrics
        .render()
        .lines()
        .filter(|l| l.contains("scrub"))
        .map(str::to_owned)
        .collect();
    assert!(
        after.is_empty(),
        "left in the database files after the erasure: {after:?} (scrub failures: {scrub_failures:?})"
    );
}}

/// The stored (wrapped) data key of `owner`.
async fn stored_data_key(app: &TestApp, owner: Uuid) -> Vec<u8> {
    app.db()
        .scalar(
            "SELECT key FROM user_data_keys WHERE owner_id = $1",
            &[owner.into()],
        )
        .await
}

e2e! { async fn rotating_the_data_key_wrapping_key_rewraps_every_key_and_loses_nothing(backend) {
    let mut first = spawn_app_on(backend).await;
    let email = format!("rotated-{}@example.com", Uuid::new_v4().simple());
    let user_id = first.registered_named(&email, "Rotated Person").await;
    let old = first.state.data_key_wrapping.clone();
    let stored = stored_data_key(&first, user_id).await;
    assert_eq!(stored.len(), keyledger_domain::WRAPPED_DATA_KEY_LEN);
    assert!(old.is_current(&stored), "wrapped with the server's key");
    let clear = data_key(&first, user_id).await;
    first.stop().await;

    // A new key first, the old one after it: the server rewraps at start.
    let resources = first.resources.clone();
    let new = keyledger_domain::DataKeyWrappingKey::generate();
    let mut settings = resources.settings();
    settings.personal_data.data_key_wrapping_key = Some(keyledger_api::Secret::new(format!(
        "{},{}",
        new.encode(),
        old.current().encode()
    )));
    let mut second = start(resources.clone(), settings, false).await;
    let rewrapped = stored_data_key(&second, user_id).await;
    assert_ne!(rewrapped, stored);
    assert!(second.state.data_key_wrapping.is_current(&rewrapped));
    assert_eq!(
        data_key(&second, user_id).await.expose_bytes(),
        clear.expose_bytes(),
        "the same data key, wrapped anew"
    );
    second.stop().await;

    // The old key retired: everything still opens (login verifies the sealed
    // hash; /me shows the email the projector opened).
    let mut settings = resources.settings();
    settings.personal_data.data_key_wrapping_key = Some(keyledger_api::Secret::new(new.encode()));
    let third = start(resources, settings, false).await;
    let tokens = third.tokens(third.login(&email, PASSWORD).await).await;
    third.read_models_caught_up().await;
    let me = body(third.me(&tokens.access_token).await).await;
    assert_eq!(me["email"], email.as_str(), "{me}");
    assert_eq!(me["display_name"], "Rotated Person", "{me}");
    drop(third);
    drop(first); // removes the shared database
}}

e2e! { async fn a_data_key_stored_in_clear_before_wrapping_is_wrapped_at_the_next_start(backend) {
    let mut first = spawn_app_on(backend).await;
    let email = format!("legacy-key-{}@example.com", Uuid::new_v4().simple());
    let registered = first.register(&email, PASSWORD).await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    let user_id: Uuid = body(registered).await["user_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let clear = data_key(&first, user_id).await;
    // As a database written before wrapping existed holds it.
    let changed = first
        .db()
        .execute(
            "UPDATE user_data_keys SET key = $1 WHERE owner_id = $2",
            &[
                Bind::Bytes(clear.expose_bytes().as_slice()),
                user_id.into(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    first.stop().await;

    let resources = first.resources.clone();
    let settings = resources.settings();
    let second = start(resources, settings, false).await;
    let stored = stored_data_key(&second, user_id).await;
    assert_eq!(stored.len(), keyledger_domain::WRAPPED_DATA_KEY_LEN);
    assert!(second.state.data_key_wrapping.is_current(&stored));
    assert_eq!(
        data_key(&second, user_id).await.expose_bytes(),
        clear.expose_bytes()
    );
    // The sealed password hash still opens: the account logs in.
    assert_eq!(second.login(&email, PASSWORD).await.status(), StatusCode::OK);
    drop(second);
    drop(first);
}}
