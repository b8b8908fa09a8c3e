//! `keyledger-replay`: an account's history and the read-model rebuild, run as
//! library calls against a live server's store, on both back ends.

use std::time::Duration;

use keyledger_e2e::*;
use keyledger_projections::read_models::CHECKPOINT;
use keyledger_projections::Position;
use keyledger_replay_tools::{
    history, open, rebuild, Access, Database, History, OutputFormat, RebuildOptions, RebuildReport,
    ReplayError, UserRef,
};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

const JOURNEY: [&str; 5] = [
    "UserRegistered",
    "UserLoggedIn",
    "SessionStarted",
    "TokenRefreshed",
    "UserLoggedOut",
];

/// Register, log in, refresh once, log out. Returns the email and both refresh
/// tokens (the original and the rotated one).
async fn journey(app: &TestApp) -> (String, [String; 2]) {
    let (email, first) = app.signed_in_user().await;
    let second = app.tokens(app.refresh(&first.refresh_token).await).await;
    let response = app.logout(&second.access_token).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    (email, [first.refresh_token, second.refresh_token])
}

/// The store as `keyledger-replay` opens it for the read commands (the embedded
/// one read-only, beside the running server).
async fn read_log(app: &TestApp) -> Result<Database, ReplayError> {
    open(database_url(app), &app.resources.data_dir, Access::Read).await
}

/// The PostgreSQL URL the tools are given, none for the embedded store.
fn database_url(app: &TestApp) -> Option<&str> {
    match app.backend() {
        Backend::Postgres => Some(app.resources.database_url.as_str()),
        Backend::Sqlite => None,
    }
}

/// The store as `keyledger-replay rebuild` opens it (the embedded one read-write,
/// without its lock, beside the running server).
async fn writable_log(app: &TestApp) -> Database {
    open(
        database_url(app),
        &app.resources.data_dir,
        Access::WriteBesideServer,
    )
    .await
    .unwrap()
}

async fn run_history(
    app: &TestApp,
    user: &str,
    format: OutputFormat,
) -> Result<(History, String), ReplayError> {
    let pool = read_log(app).await?;
    let user: UserRef = user.parse::<UserRef>()?.keyed(Some(
        &keyledger_domain::EmailIndexKey::parse(&app.resources.email_index_key).unwrap(),
    ));
    let mut out = Vec::new();
    let found = history(
        &pool,
        Some(app.state.data_key_wrapping.clone()),
        &user,
        format,
        &mut out,
    )
    .await?;
    Ok((found, String::from_utf8(out).expect("utf-8 output")))
}

async fn run_rebuild(app: &TestApp, keep: bool) -> (RebuildReport, String) {
    let pool = writable_log(app).await;
    let mut out = Vec::new();
    let options = RebuildOptions {
        keep,
        // Small batches so that the keyset paging is exercised too.
        batch_size: 7,
        data_key_wrapping: Some(app.state.data_key_wrapping.clone()),
    };
    let report = rebuild(&pool, &options, &mut out).await.unwrap();
    (report, String::from_utf8(out).unwrap())
}

async fn caught_up(app: &TestApp) {
    app.read_models_caught_up().await;
}

/// Whether a rebuild's schema (PostgreSQL) or scratch file (SQLite) is still there.
async fn rebuilt_copy_exists(app: &TestApp, report: &RebuildReport) -> bool {
    match &report.scratch_file {
        None => schema_exists(app, &report.schema).await,
        Some(file) => file.exists(),
    }
}

/// Whether a schema (PostgreSQL) or tables with this prefix (SQLite: a
/// switching rebuild's `rb<ts>_` or `old<ts>_`) exist.
async fn schema_exists(app: &TestApp, schema: &str) -> bool {
    app.db()
        .scalar::<bool>(
            (
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                "SELECT EXISTS (SELECT 1 FROM sqlite_schema
                                 WHERE type = 'table' AND substr(name, 1, length($1)) = $1)",
            ),
            &[schema.into()],
        )
        .await
}

/// The read-model projector's checkpoint.
async fn live_checkpoint(app: &TestApp) -> Position {
    let (tx_id, global_position): (i64, i64) = app
        .db()
        .row(
            "SELECT tx_id, global_position FROM projection_checkpoints WHERE name = $1",
            &[CHECKPOINT.into()],
        )
        .await;
    Position {
        tx_id,
        global_position,
    }
}

/// A count of the rows of `table` in a switch's backup (schema or prefix).
async fn backup_rows(app: &TestApp, backup: &str, table: &str) -> i64 {
    let postgres = format!("SELECT count(*) FROM {backup}.{table}");
    let sqlite = format!("SELECT count(*) FROM \"{backup}{table}\"");
    app.db()
        .scalar((postgres.as_str(), sqlite.as_str()), &[])
        .await
}

/// Event types named in readable output, in the order they appear.
fn types_in_text(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            line.split_whitespace()
                .find(|word| {
                    JOURNEY.contains(word)
                        || [
                            "TokenRefreshed",
                            "RefreshTokenReuseDetected",
                            "SessionRevoked",
                        ]
                        .contains(word)
                })
                .unwrap_or_else(|| panic!("no event type in {line:?}"))
                .to_owned()
        })
        .collect()
}

e2e! { async fn history_by_id_and_by_email_lists_the_journey_in_order(backend) {
    let app = spawn_app_on(backend).await;
    let (email, _) = journey(&app).await;
    // Someone else's activity must not show up.
    journey(&app).await;

    let (by_email, text) = run_history(&app, &email.to_uppercase(), OutputFormat::Text)
        .await
        .unwrap();
    assert_eq!(by_email.event_types(), JOURNEY);
    assert_eq!(types_in_text(&text), JOURNEY.to_vec(), "{text}");
    assert!(text.starts_with(&format!("# history of user {}", by_email.user_id)));
    for line in text.lines().skip(1) {
        assert!(line.contains("actor="), "{line}");
        assert!(line.contains("ip="), "{line}");
    }

    let user_id = by_email.user_id.to_string();
    let (by_id, json) = run_history(&app, &user_id, OutputFormat::JsonLines)
        .await
        .unwrap();
    assert_eq!(by_id, by_email);
    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let types: Vec<&str> = lines
        .iter()
        .map(|l| l["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, JOURNEY);
    assert_eq!(lines[0]["aggregate_type"], "user");
    assert_eq!(lines[0]["aggregate_id"], user_id.as_str());
    assert_eq!(lines[0]["data"]["email"], email.as_str());
    let session_id = lines[2]["aggregate_id"].as_str().unwrap();
    assert_eq!(lines[1]["data"]["session_id"], session_id);
    assert_eq!(lines[2]["data"]["user_id"], user_id.as_str());
    for line in &lines[2..] {
        assert_eq!(line["aggregate_type"], "session");
        assert_eq!(line["aggregate_id"], session_id);
    }
    assert_eq!(lines[2]["metadata"]["user_agent"], "keyledger-e2e/1.0");
    assert!(lines[2]["metadata"]["actor"].is_string());
    // Feed order.
    let order: Vec<(i64, i64)> = lines
        .iter()
        .map(|l| {
            (
                l["tx_id"].as_i64().unwrap(),
                l["global_position"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted);
}}

e2e! { async fn history_by_email_finds_the_email_index_key_in_the_data_directory(backend) {
    let app = spawn_app_on(backend).await;
    let (email, _) = journey(&app).await;
    let dir = &app.resources.data_dir;
    std::fs::create_dir_all(dir).unwrap();
    // Without a key given and none in the data directory, an address finds nothing.
    let none = keyledger_replay_tools::lookup_email_index_key(None, None, dir).unwrap();
    assert!(none.is_none());
    // The server's default place for the key file, as `keyledger-replay` reads it
    // when neither --email-index-key-file nor KEYLEDGER_EMAIL_INDEX_KEY is set.
    std::fs::write(dir.join("email-index.key"), &app.resources.email_index_key).unwrap();
    let key = keyledger_replay_tools::lookup_email_index_key(None, None, dir)
        .unwrap()
        .expect("the key beside the store");
    let user = email.parse::<UserRef>().unwrap().keyed(Some(&key));
    let mut out = Vec::new();
    let found = history(
        &read_log(&app).await.unwrap(),
        Some(app.state.data_key_wrapping.clone()),
        &user,
        OutputFormat::Text,
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(found.event_types(), JOURNEY);
    // A key given explicitly still wins over the data directory's.
    let other = keyledger_domain::EmailIndexKey::generate().encode();
    let given = keyledger_replay_tools::lookup_email_index_key(Some(&other), None, dir)
        .unwrap()
        .unwrap();
    assert_ne!(given.encode(), key.encode());
}}

e2e! { async fn history_shows_no_secret(backend) {
    let app = spawn_app_on(backend).await;
    let (email, refresh_tokens) = journey(&app).await;
    let hashes: Vec<String> = refresh_tokens
        .iter()
        .map(|t| refresh_token_hash(t))
        .collect();

    // The secrets are in the store: the check below means something.
    let stored: Vec<String> = app
        .db()
        .scalars(
            ("SELECT payload::text FROM events", "SELECT payload FROM events"),
            &[],
        )
        .await;
    let password_hashes = stored_password_hashes(&stored);
    assert!(!password_hashes.is_empty());
    assert!(
        password_hashes.iter().all(|h| h.starts_with("sealed:v1:")),
        "{password_hashes:?}"
    );
    let stored = stored.join("\n");
    for hash in &hashes {
        assert!(stored.contains(hash.as_str()));
    }

    for format in [OutputFormat::Text, OutputFormat::JsonLines] {
        let (found, output) = run_history(&app, &email, format).await.unwrap();
        assert_eq!(found.entries.len(), JOURNEY.len());
        assert!(!output.contains(PASSWORD), "{output}");
        assert!(!output.to_lowercase().contains("argon2"), "{output}");
        assert!(!output.contains("password_hash"), "{output}");
        assert!(!output.contains("refresh_token_hash"), "{output}");
        for token in &refresh_tokens {
            assert!(!output.contains(token.as_str()), "{output}");
        }
        for hash in password_hashes.iter().chain(&hashes) {
            assert!(!output.contains(hash.as_str()), "{output}");
            assert!(!output.contains(&hash.to_uppercase()), "{output}");
        }
    }
}}

e2e! { async fn history_of_an_unknown_user_is_an_error(backend) {
    let app = spawn_app_on(backend).await;
    journey(&app).await;

    let unknown_id = Uuid::new_v4().to_string();
    for user in [unknown_id.as_str(), "nobody@example.com"] {
        let pool = read_log(&app).await.unwrap();
        let mut out = Vec::new();
        let result = history(
            &pool,
            Some(app.state.data_key_wrapping.clone()),
            &app.user_ref(user),
            OutputFormat::Text,
            &mut out,
        )
        .await;
        match result {
            Err(e @ ReplayError::UnknownUser(_)) => {
                assert!(e.to_string().contains("no account found"), "{e}")
            }
            other => panic!("{user}: expected UnknownUser, got {other:?}"),
        }
        assert!(out.is_empty(), "nothing is printed for an unknown user");
    }
    assert!(matches!(
        "not an address".parse::<UserRef>(),
        Err(ReplayError::InvalidUser(_))
    ));
}}

e2e! { async fn rebuild_matches_the_live_read_models_and_notices_tampering(backend) {
    let app = spawn_app_on(backend).await;

    // Workload: logins, refreshes, a reuse (revokes its session), a logout, a
    // failed login and a second session.
    let (_, a) = app.signed_in_user().await;
    let (_, b) = app.signed_in_user().await;
    let (c_email, c) = app.signed_in_user().await;
    let a2 = app.tokens(app.refresh(&a.refresh_token).await).await;
    let reused = app.refresh(&a.refresh_token).await;
    assert_eq!(
        error_code(reused, StatusCode::UNAUTHORIZED).await,
        "refresh_token_reused"
    );
    assert_ne!(
        app.refresh(&a2.refresh_token).await.status(),
        StatusCode::OK
    );
    let b2 = app.tokens(app.refresh(&b.refresh_token).await).await;
    assert_eq!(
        app.logout(&b2.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    let wrong = app.login(&c_email, "not the password at all").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let c2 = app.tokens(app.login(&c_email, PASSWORD).await).await;
    app.tokens(app.refresh(&c.refresh_token).await).await;
    assert_eq!(
        app.logout(&c2.access_token).await.status(),
        StatusCode::NO_CONTENT
    );

    caught_up(&app).await;
    let (report, text) = run_rebuild(&app, false).await;
    assert!(report.is_equal(), "{text}");
    let tables: Vec<&str> = report.tables.iter().map(|t| t.table.as_str()).collect();
    assert_eq!(tables, ["users", "sessions", "audit_trail"], "{text}");
    let table = |name: &str| report.tables.iter().find(|t| t.table == name).unwrap();
    assert_eq!(table("users").rebuilt_rows, 3, "{text}");
    assert_eq!(table("sessions").rebuilt_rows, 4, "{text}");
    assert_eq!(
        table("audit_trail").rebuilt_rows as u64,
        report.events,
        "{text}"
    );
    for t in &report.tables {
        assert_eq!(t.rebuilt_rows, t.live_rows, "{text}");
        assert_eq!(t.differences(), 0, "{text}");
    }
    let stored = app.count_events().await;
    assert_eq!(
        report.events as i64, stored,
        "everything was projected: {text}"
    );
    assert!(text.contains("events/s"), "{text}");
    assert!(text.contains("EQUAL"), "{text}");
    assert!(!report.kept);
    assert_eq!(report.scratch_file.is_some(), backend == Backend::Sqlite);
    assert!(!rebuilt_copy_exists(&app, &report).await, "dropped");
    let projected: i64 = app
        .db()
        .scalar(
            "SELECT count(*) FROM audit_trail WHERE action = 'RefreshTokenReuseDetected'",
            &[],
        )
        .await;
    assert_eq!(projected, 1);

    // Tamper with one live row: the rebuild must say so, and where.
    let victim: String = app
        .db()
        .scalar(
            (
                "SELECT user_id::text FROM users ORDER BY user_id LIMIT 1",
                "SELECT user_id FROM users ORDER BY user_id LIMIT 1",
            ),
            &[],
        )
        .await;
    let victim: Uuid = victim.parse().unwrap();
    app.db()
        .execute(
            "UPDATE users SET display_name = 'x' WHERE user_id = $1",
            &[victim.into()],
        )
        .await
        .unwrap();
    let (report, text) = run_rebuild(&app, false).await;
    assert!(!report.is_equal(), "{text}");
    let users = report.tables.iter().find(|t| t.table == "users").unwrap();
    assert_eq!(
        (users.only_in_rebuild, users.only_in_live),
        (1, 1),
        "{text}"
    );
    assert_eq!(users.sample_keys, [victim.to_string()], "{text}");
    for t in report.tables.iter().filter(|t| t.table != "users") {
        assert!(t.is_equal(), "{text}");
    }
    assert!(text.contains("DIFFERENT"), "{text}");
    assert!(text.contains(&victim.to_string()), "{text}");
}}

e2e! { async fn rebuild_notices_a_missing_and_an_extra_row(backend) {
    let app = spawn_app_on(backend).await;
    journey(&app).await;
    journey(&app).await;
    caught_up(&app).await;

    app.db()
        .execute(
            "DELETE FROM audit_trail
              WHERE global_position = (SELECT max(global_position) FROM audit_trail)",
            &[],
        )
        .await
        .unwrap();
    app.db()
        .execute(
            (
                "INSERT INTO sessions (session_id, user_id, created_at, expires_at, state, version)
                 VALUES ($1, $2, now(), now(), 'active', 1)",
                "INSERT INTO sessions (session_id, user_id, created_at, expires_at, state, version)
                 VALUES ($1, $2, '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00',
                         'active', 1)",
            ),
            &[Uuid::new_v4().into(), Uuid::new_v4().into()],
        )
        .await
        .unwrap();

    let (report, text) = run_rebuild(&app, false).await;
    assert!(!report.is_equal(), "{text}");
    let table = |name: &str| report.tables.iter().find(|t| t.table == name).unwrap();
    let audit = table("audit_trail");
    assert_eq!(
        (audit.only_in_rebuild, audit.only_in_live),
        (1, 0),
        "{text}"
    );
    assert_eq!(audit.rebuilt_rows, audit.live_rows + 1, "{text}");
    let sessions = table("sessions");
    assert_eq!(
        (sessions.only_in_rebuild, sessions.only_in_live),
        (0, 1),
        "{text}"
    );
    assert!(table("users").is_equal(), "{text}");
}}

e2e! { async fn a_kept_rebuild_stays_with_its_checkpoint(backend) {
    let app = spawn_app_on(backend).await;
    journey(&app).await;
    caught_up(&app).await;

    let (report, text) = run_rebuild(&app, true).await;
    assert!(report.is_equal(), "{text}");
    assert!(report.kept);
    let kept = match &report.scratch_file {
        None => format!("kept schema {}", report.schema),
        Some(file) => format!("kept file {}", file.display()),
    };
    assert!(text.contains(&kept), "{text}");
    assert!(rebuilt_copy_exists(&app, &report).await);

    let counted = "SELECT (SELECT count(*) FROM {s}.users),
                          (SELECT tx_id FROM {s}.projection_checkpoints WHERE name = 'read_models'),
                          (SELECT global_position FROM {s}.projection_checkpoints
                            WHERE name = 'read_models')";
    let (users, tx_id, global_position): (i64, i64, i64) = match &report.scratch_file {
        None => sqlx::query_as(&counted.replace("{s}", &report.schema))
            .fetch_one(app.pool())
            .await
            .unwrap(),
        Some(file) => {
            let scratch = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", file.display()))
                .await
                .unwrap();
            let row = sqlx::query_as(&counted.replace("{s}", "main"))
                .fetch_one(&scratch)
                .await
                .unwrap();
            scratch.close().await;
            std::fs::remove_file(file).unwrap();
            row
        }
    };
    assert_eq!(users, 1);
    assert_eq!(
        (tx_id, global_position),
        (report.checkpoint.tx_id, report.checkpoint.global_position)
    );
    // The live tables were not touched.
    let live: i64 = app.db().scalar("SELECT count(*) FROM users", &[]).await;
    assert_eq!(live, 1);
}}

e2e! { async fn history_includes_the_organizations_an_account_created_joined_and_left(backend) {
    let app = spawn_app_on(backend).await;
    let (email, tokens) = app.signed_in_user().await;
    let (other, other_token) = app.new_user().await;
    let org = body(
        app.call(
            reqwest::Method::POST,
            "/v1/organizations",
            Some(&other_token),
            Some(&serde_json::json!({"slug": format!("h-{}", &Uuid::new_v4().simple().to_string()[..10]), "name": "H"})),
        )
        .await,
    )
    .await["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: Uuid = body(app.me(&tokens.access_token).await).await["user_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let members = format!("/v1/organizations/{org}/members");
    let invitee = (me, tokens.access_token.clone());
    let joined = app
        .join(&other_token, &org, &invitee, serde_json::json!(["auditor"]))
        .await;
    assert_eq!(joined, StatusCode::OK);
    let left = app
        .call(
            reqwest::Method::DELETE,
            &format!("{members}/{me}"),
            Some(&tokens.access_token),
            None,
        )
        .await;
    assert_eq!(left.status(), StatusCode::NO_CONTENT);
    let (found, text) = run_history(&app, &email, OutputFormat::Text).await.unwrap();
    let types = found.event_types();
    assert!(
        types.ends_with(&["MemberAdded", "MemberRemoved"]),
        "{types:?}"
    );
    assert!(
        !types.contains(&"OrganizationCreated"),
        "not theirs: {types:?}"
    );
    assert!(text.contains(&format!("actor={other}")), "{text}");
    // The creator's history shows the creation.
    let (theirs, _) = run_history(&app, &other.to_string(), OutputFormat::Text)
        .await
        .unwrap();
    assert!(theirs.event_types().contains(&"OrganizationCreated"));
}}

/// One round of a client's life against the server: register, log in, read /me.
/// Returns what went wrong, if anything.
async fn client_round(client: &reqwest::Client, base: &str) -> Result<(), String> {
    let email = format!("load-{}@example.com", Uuid::new_v4().simple());
    let credentials = serde_json::json!({"email": email, "password": PASSWORD});
    let registered = client
        .post(format!("{base}/v1/auth/register"))
        .json(&credentials)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if registered.status() != StatusCode::CREATED {
        return Err(format!("register: {}", registered.status()));
    }
    let login = client
        .post(format!("{base}/v1/auth/login"))
        .json(&credentials)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if login.status() != StatusCode::OK {
        return Err(format!("login: {}", login.status()));
    }
    let tokens: Value = login.json().await.map_err(|e| e.to_string())?;
    let access = tokens["access_token"].as_str().unwrap_or_default();
    let me = client
        .get(format!("{base}/v1/auth/me"))
        .bearer_auth(access)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if me.status() != StatusCode::OK {
        return Err(format!("me: {}", me.status()));
    }
    let me: Value = me.json().await.map_err(|e| e.to_string())?;
    if me["email"] != email.as_str() {
        return Err(format!("me answered {me}"));
    }
    let sessions = client
        .get(format!("{base}/v1/auth/sessions"))
        .bearer_auth(access)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let sessions: Value = sessions.json().await.map_err(|e| e.to_string())?;
    if sessions["sessions"].as_array().map(Vec::len) != Some(1) {
        return Err(format!("sessions answered {sessions}"));
    }
    Ok(())
}

e2e! { multi_thread async fn rebuild_switch_swaps_the_read_models_in_while_the_server_serves(backend) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    // With NATS on both back ends: the relay keeps a checkpoint of its own, which
    // the switch must carry over.
    let app = spawn_app_with_nats(backend).await;
    for _ in 0..3 {
        journey(&app).await;
    }
    caught_up(&app).await;
    let other_checkpoints: Vec<(String, i64)> = app
        .db()
        .rows(
            "SELECT name, global_position FROM projection_checkpoints WHERE name <> $1
              ORDER BY name",
            &[CHECKPOINT.into()],
        )
        .await;
    assert!(!other_checkpoints.is_empty(), "the NATS relay keeps one");

    // Clients (three at a time) keep registering, logging in and reading
    // throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let loads: Vec<_> = (0..3)
        .map(|_| {
            let (client, base) = (app.client.clone(), app.address.clone());
            let (stop, rounds) = (stop.clone(), rounds.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = client_round(&client, &base).await {
                        failures.push(e);
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();
    while rounds.load(Ordering::Relaxed) < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pool = writable_log(&app).await;
    let options = keyledger_replay_tools::SwitchOptions {
        // Small batches: many commits, and a catch-up after the lock.
        batch_size: 5,
        progress_every: Duration::ZERO,
        data_key_wrapping: Some(app.state.data_key_wrapping.clone()),
        ..Default::default()
    };
    // At least twice (the second switch replaces tables that came from a switch:
    // on SQLite, live tables whose indexes carry the first generation's prefix),
    // and until client rounds have completed while switches ran: a switch on a
    // small embedded log takes a few milliseconds, less than one round.
    let mut reports = Vec::new();
    let (mut progress, mut out) = (Vec::new(), Vec::new());
    let before = rounds.load(Ordering::Relaxed);
    while reports.len() < 2 || (rounds.load(Ordering::Relaxed) - before < 3 && reports.len() < 60)
    {
        reports.push(
            keyledger_replay_tools::rebuild_switch(&pool, &options, &mut progress, &mut out)
                .await
                .unwrap(),
        );
    }
    let during = rounds.load(Ordering::Relaxed) - before;
    assert!(
        during >= 3,
        "clients completed {during} rounds during {} switches",
        reports.len()
    );
    // A few more rounds after the switch, on the new tables.
    let after = rounds.load(Ordering::Relaxed);
    while rounds.load(Ordering::Relaxed) < after + 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for load in loads {
        failures.extend(load.await.unwrap());
    }
    let (progress, out) = (
        String::from_utf8(progress).unwrap(),
        String::from_utf8(out).unwrap(),
    );
    assert!(
        failures.is_empty(),
        "reads failed: {failures:?}\n{progress}{out}"
    );
    // The load ran before, throughout and after the switches.
    eprintln!(
        "{during} client rounds completed during {} switches",
        reports.len()
    );
    assert!(progress.contains("events/s"), "{progress}");
    assert!(progress.contains("ETA"), "{progress}");
    assert_eq!(out.matches("switched").count(), reports.len(), "{out}");
    let report = reports.pop().unwrap();
    let first = reports.swap_remove(0);
    assert_ne!(first.schema, report.schema);
    assert!(report.checkpoint >= first.checkpoint);
    for table in ["users", "sessions", "audit_trail"] {
        assert!(report.tables.iter().any(|t| t == table), "{out}");
        assert!(first.tables.iter().any(|t| t == table), "{out}");
    }
    for done in [&first.schema, &first.backup_schema] {
        assert!(!schema_exists(&app, done).await, "{done} is gone");
    }
    assert!(
        !schema_exists(&app, &report.schema).await,
        "emptied and dropped"
    );
    assert!(
        !schema_exists(&app, &report.backup_schema).await,
        "old tables dropped"
    );
    assert!(report.events > 0);
    if backend == Backend::Sqlite {
        assert!(report.prefixed);
        assert!(out.contains("for the projector's handover"), "{out}");
        assert!(
            progress.contains("asking the projector to hand over"),
            "{progress}"
        );
        let handover: i64 = app
            .db()
            .scalar("SELECT count(*) FROM projection_handover", &[])
            .await;
        assert_eq!(handover, 0, "the handover request went with the switch");
    }

    // The other followers' checkpoints survived (and may have moved on).
    let now: Vec<(String, i64)> = app
        .db()
        .rows(
            "SELECT name, global_position FROM projection_checkpoints WHERE name <> $1
              ORDER BY name",
            &[CHECKPOINT.into()],
        )
        .await;
    assert_eq!(now.len(), other_checkpoints.len());
    for ((name, position), (old_name, old_position)) in now.iter().zip(&other_checkpoints) {
        assert_eq!(name, old_name);
        assert!(position >= old_position, "{name} went back");
    }

    // The live projector resumed from the rebuilt checkpoint: new writes show up.
    let (email, tokens) = app.signed_in_user().await;
    let me = body(app.me(&tokens.access_token).await).await;
    assert_eq!(me["email"], email.as_str());
    caught_up(&app).await;
    let checkpoint = live_checkpoint(&app).await;
    assert!(checkpoint > report.checkpoint);

    // And what was switched in is what the log says.
    let (compared, text) = run_rebuild(&app, false).await;
    assert!(compared.is_equal(), "{text}");
    let stored = app.count_events().await;
    assert_eq!(compared.events as i64, stored, "{text}");
}}

e2e! { async fn rebuild_switch_can_keep_the_old_tables(backend) {
    let app = spawn_app_on(backend).await;
    journey(&app).await;
    caught_up(&app).await;
    let pool = writable_log(&app).await;
    let options = keyledger_replay_tools::SwitchOptions {
        keep_old: true,
        data_key_wrapping: Some(app.state.data_key_wrapping.clone()),
        ..Default::default()
    };
    let (mut progress, mut out) = (Vec::new(), Vec::new());
    let report = keyledger_replay_tools::rebuild_switch(&pool, &options, &mut progress, &mut out)
        .await
        .unwrap();
    assert!(report.kept_old);
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains(&report.backup_schema), "{out}");
    assert!(schema_exists(&app, &report.backup_schema).await, "{out}");
    assert_eq!(backup_rows(&app, &report.backup_schema, "users").await, 1);
    let (compared, text) = run_rebuild(&app, false).await;
    assert!(compared.is_equal(), "{text}");
}}
