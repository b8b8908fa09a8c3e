//! GDPR erasure without rewriting history (issue #3, decision 0009): personal data
//! is sealed with a per-person key from the first event on; erasing destroys the
//! key, after which nothing personal about the account can be read anywhere, while
//! the events, their hash chain and `keyledger-replay verify` stay intact.

use std::time::Duration;

use keyledger_e2e::*;
use keyledger_replay_tools::{
    export, open, rebuild, verify, Access, ExportFormat, ExportOptions, ExportSource,
    RebuildOptions, VerifyOptions,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const AGENT: &str = "ErasureTestBrowser/7.3 (unmistakable-agent-string)";

struct Person {
    email: String,
    name: String,
    user_id: Uuid,
    access_token: String,
    refresh_token: String,
}

/// A person who registered with a name and logged in from a recognisable browser.
async fn person(app: &TestApp) -> Person {
    let tag = Uuid::new_v4().simple().to_string();
    let email = format!("forget-me-{tag}@example.com");
    let name = format!("Forgettable {}", &tag[..12]);
    let browser = reqwest::Client::builder()
        .user_agent(AGENT)
        .build()
        .unwrap();
    let registered = browser
        .post(app.url("/v1/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD, "display_name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let user_id = body(registered).await["user_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let login = browser
        .post(app.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let tokens = app.tokens(login).await;
    Person {
        email,
        name,
        user_id,
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
    }
}

/// Every table of the database whose rows, as text, contain `needle`, named
/// `<schema>.<table>` (`public` on PostgreSQL, `main` on SQLite).
async fn tables_containing(app: &TestApp, needle: &str) -> Vec<String> {
    match app.backend() {
        Backend::Postgres => pg_tables_containing(app, needle).await,
        Backend::Sqlite => sqlite_tables_containing(app, needle).await,
    }
}

async fn pg_tables_containing(app: &TestApp, needle: &str) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
           FROM information_schema.tables
          WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
            AND table_type = 'BASE TABLE'",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    let mut found = Vec::new();
    for table in tables {
        let hits: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} t WHERE strpos(lower(t::text), lower($1)) > 0"
        ))
        .bind(needle)
        .fetch_one(app.pool())
        .await
        .unwrap();
        if hits > 0 {
            found.push(table);
        }
    }
    found
}

/// As strong as PostgreSQL's whole-row text: every column of every table in
/// `sqlite_schema`, read as text (a BLOB's bytes as they are).
async fn sqlite_tables_containing(app: &TestApp, needle: &str) -> Vec<String> {
    let db = app.db();
    let tables: Vec<String> = db
        .scalars(
            "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name",
            &[],
        )
        .await;
    assert!(tables.iter().any(|t| t == "events"), "{tables:?}");
    let mut found = Vec::new();
    for table in tables {
        let columns: Vec<String> = db
            .scalars(
                "SELECT name FROM pragma_table_info($1)",
                &[table.as_str().into()],
            )
            .await;
        assert!(!columns.is_empty(), "{table} has columns");
        let matches = columns
            .iter()
            .map(|c| {
                format!(
                    "instr(lower(CAST({} AS TEXT)), lower($1)) > 0",
                    quote_ident(c)
                )
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        let hits: i64 = db
            .scalar(
                format!(
                    "SELECT count(*) FROM main.{} WHERE {matches}",
                    quote_ident(&table)
                )
                .as_str(),
                &[needle.into()],
            )
            .await;
        if hits > 0 {
            found.push(format!("main.{table}"));
        }
    }
    found
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn erase_me(app: &TestApp, token: &str, password: &str) -> reqwest::Response {
    app.call(
        Method::DELETE,
        "/v1/users/me",
        Some(token),
        Some(&json!({ "password": password })),
    )
    .await
}

e2e! { async fn personal_data_never_reaches_the_log_or_the_email_index_in_clear(backend) {
    let app = spawn_app_on(backend).await;
    let alice = person(&app).await;
    app.read_models_caught_up().await;

    let schema = match backend {
        Backend::Postgres => "public",
        Backend::Sqlite => "main",
    };
    let (log, index) = (format!("{schema}.events"), format!("{schema}.email_claims"));
    let in_clear = |tables: Vec<String>| {
        tables
            .into_iter()
            .filter(|t| *t == log || *t == index)
            .collect::<Vec<_>>()
    };
    let holding_the_email = tables_containing(&app, &alice.email).await;
    assert!(
        holding_the_email.contains(&format!("{schema}.users")),
        "the scan finds what the read models hold in clear: {holding_the_email:?}"
    );
    assert_eq!(in_clear(holding_the_email), Vec::<String>::new());
    assert_eq!(
        in_clear(tables_containing(&app, &alice.name).await),
        Vec::<String>::new()
    );
    assert_eq!(
        in_clear(tables_containing(&app, AGENT).await),
        Vec::<String>::new()
    );
    // The legacy clear-text `email` column exists on PostgreSQL only (pre-0009
    // claims); the embedded store's index has no place for an address at all.
    if backend == Backend::Sqlite {
        let columns: Vec<String> = app
            .db()
            .scalars("SELECT name FROM pragma_table_info('email_claims')", &[])
            .await;
        assert_eq!(columns, ["digest", "user_id", "claimed_at"]);
    }
    let claims: Vec<(Option<String>, Option<Vec<u8>>)> = app
        .db()
        .rows(
            (
                "SELECT email, digest FROM email_claims",
                "SELECT CAST(NULL AS TEXT) AS email, digest FROM email_claims",
            ),
            &[],
        )
        .await;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].0, None, "no address in the index");
    assert_eq!(claims[0].1.as_ref().map(Vec::len), Some(32));

    // Readers open what the log seals: the account reads as it was given.
    let me = body(app.me(&alice.access_token).await).await;
    assert_eq!(me["email"], alice.email.as_str());
    assert_eq!(me["display_name"], alice.name.as_str());
    let sessions = body(app.sessions(&alice.access_token).await).await;
    assert_eq!(sessions["sessions"][0]["user_agent"], AGENT, "{sessions}");
}}

e2e! { async fn erasing_my_account_forgets_me_everywhere_but_keeps_the_history(backend) {
    // Consumers on NATS hear of the erasure (below): NATS on, on both back ends.
    let app = spawn_app_with_nats(backend).await;
    let alice = person(&app).await;
    let (admin, admin_token) = app.new_user().await;
    app.make_platform_admin(admin).await;

    // A wrong password erases nothing (and counts like a failed login).
    let refused = erase_me(&app, &alice.access_token, "not the password").await;
    assert_eq!(
        error_code(refused, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );
    assert_eq!(app.me(&alice.access_token).await.status(), StatusCode::OK);
    // A body without the password is a clear 4xx, not an erasure.
    let no_password = app
        .call(
            Method::DELETE,
            "/v1/users/me",
            Some(&alice.access_token),
            Some(&json!({})),
        )
        .await;
    assert!(no_password.status().is_client_error());

    let erased = erase_me(&app, &alice.access_token, PASSWORD).await;
    assert_eq!(erased.status(), StatusCode::NO_CONTENT);

    // Sessions are over, and the account cannot come back.
    assert_eq!(app.validate(&alice.access_token).await["active"], false);
    assert_eq!(
        app.refresh(&alice.refresh_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let login = app.login(&alice.email, PASSWORD).await;
    assert_eq!(
        error_code(login, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials",
        "an erased account answers like one that never existed"
    );

    // Nothing personal is left in any table (the audit trail and the log
    // included), yet the history is all there and still verifies.
    app.read_models_caught_up().await;
    for needle in [alice.email.as_str(), alice.name.as_str(), AGENT] {
        assert_eq!(
            tables_containing(&app, needle).await,
            Vec::<String>::new(),
            "{needle} survived the erasure"
        );
    }
    let history: Vec<(String, String)> = app
        .db()
        .rows(
            "SELECT event_type, event_version FROM events
              WHERE aggregate_type = 'user' AND aggregate_id = $1 ORDER BY sequence",
            &[alice.user_id.to_string().as_str().into()],
        )
        .await;
    assert_eq!(
        history.first().map(|e| e.0.as_str()),
        Some("UserRegistered")
    );
    assert_eq!(history.last().map(|e| e.0.as_str()), Some("UserErased"));
    let log = app.replay_log().await;
    let report = verify(&log, &VerifyOptions::default(), &mut Vec::new())
        .await
        .unwrap();
    assert!(report.failure.is_none(), "{report:?}");

    // Replaying the log gives exactly the scrubbed read models, and no export
    // (audit trail or events, either format) mentions the person.
    // The embedded store's rebuild writes a scratch file beside the live one, so
    // it needs a writable (not locking) connection.
    let writable = match app.backend() {
        Backend::Postgres => app.replay_log().await,
        Backend::Sqlite => open(None, &app.resources.data_dir, Access::WriteBesideServer)
            .await
            .unwrap(),
    };
    let mut text = Vec::new();
    let rebuilt = rebuild(
        &writable,
        &RebuildOptions {
            keep: false,
            batch_size: 5,
            data_key_wrapping: Some(app.state.data_key_wrapping.clone()),
        },
        &mut text,
    )
    .await
    .unwrap();
    assert!(rebuilt.is_equal(), "{}", String::from_utf8_lossy(&text));
    for source in [ExportSource::AuditTrail, ExportSource::Events] {
        for format in [ExportFormat::JsonLines, ExportFormat::Csv] {
            let mut out = Vec::new();
            let options = ExportOptions {
                source,
                format,
                from: None,
                to: None,
                data_key_wrapping: Some(app.state.data_key_wrapping.clone()),
            };
            export(&log, &options, &mut out).await.unwrap();
            let out = String::from_utf8(out).unwrap();
            assert!(out.contains("[erased]"), "{out}");
            for needle in [
                alice.email.as_str(),
                alice.name.as_str(),
                AGENT,
                "sealed:v1:",
            ] {
                assert!(!out.contains(needle), "{needle} in an export");
            }
        }
    }

    // The audit trail keeps the fact, without the person.
    let audit = body(
        app.get_auth(
            &format!("/v1/audit/events?subject={}", alice.user_id),
            &admin_token,
        )
        .await,
    )
    .await;
    let rows = audit["events"].as_array().expect("events");
    let erasure = rows
        .iter()
        .find(|r| r["action"] == "UserErased")
        .expect("the erasure is audited");
    assert_eq!(erasure["actor"], alice.user_id.to_string());
    let registration = rows
        .iter()
        .find(|r| r["action"] == "UserRegistered")
        .expect("the registration is still audited");
    assert_eq!(registration["details"]["email"], "[erased]");
    let erased_or_absent = |v: &Value| v.is_null() || *v == "[erased]";
    assert!(
        rows.iter()
            .all(|r| erased_or_absent(&r["ip"]) && erased_or_absent(&r["user_agent"])),
        "{audit}"
    );

    // As-of, even at an instant before the erasure, shows nothing personal.
    let as_of = body(
        app.get_auth(
            &format!(
                "/v1/audit/users/{}/as-of?at={}",
                alice.user_id,
                urlencode(&chrono::Utc::now().to_rfc3339())
            ),
            &admin_token,
        )
        .await,
    )
    .await;
    assert_eq!(as_of["status"], "erased", "{as_of}");
    assert!(!as_of.to_string().contains(&alice.email));

    // NATS: consumers hear of it, and the message itself carries nothing personal.
    let messages = app
        .published(1000, Duration::from_secs(10))
        .await
    .into_iter()
    .filter(|(_, _, m)| m["aggregate_id"] == alice.user_id.to_string())
    .collect::<Vec<_>>();
    let erased_message = messages
        .iter()
        .find(|(subject, _, _)| subject.ends_with(".user.UserErased"))
        .expect("UserErased on NATS");
    assert!(!erased_message.2.to_string().contains(&alice.email));

    // The address is free again, for a new account.
    let again = app.register(&alice.email, PASSWORD).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let new_id = body(again).await["user_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, alice.user_id.to_string());
    let login = app.login(&alice.email, PASSWORD).await;
    assert_eq!(login.status(), StatusCode::OK);
}}

e2e! { async fn platform_administrators_erase_accounts_and_a_repeat_finishes_the_job(backend) {
    let app = spawn_app_on(backend).await;
    let bob = person(&app).await;
    let (admin, admin_token) = app.new_user().await;
    let (_, outsider_token) = app.new_user().await;
    let path = format!("/v1/admin/users/{}", bob.user_id);

    // Nobody else may.
    let forbidden = app
        .call(Method::DELETE, &path, Some(&outsider_token), None)
        .await;
    assert_eq!(
        error_code(forbidden, StatusCode::FORBIDDEN).await,
        "forbidden"
    );
    app.make_platform_admin(admin).await;
    let unknown = app
        .call(
            Method::DELETE,
            &format!("/v1/admin/users/{}", Uuid::new_v4()),
            Some(&admin_token),
            None,
        )
        .await;
    assert_eq!(
        error_code(unknown, StatusCode::NOT_FOUND).await,
        "not_found"
    );

    let erased = app
        .call(Method::DELETE, &path, Some(&admin_token), None)
        .await;
    assert_eq!(erased.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.validate(&bob.access_token).await["active"], false);
    let gone = app.get_auth(&path, &admin_token).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    // An interrupted erasure (here: its key and claim put back by hand) is
    // finished by erasing again, without a second UserErased.
    let put_back = app
        .db()
        .execute(
            "UPDATE user_data_keys SET key = $1, erased_at = NULL WHERE owner_id = $2",
            &[[0xab_u8; 32].as_slice().into(), bob.user_id.into()],
        )
        .await
        .unwrap();
    assert_eq!(put_back, 1);
    let again = app
        .call(Method::DELETE, &path, Some(&admin_token), None)
        .await;
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    let key: Option<Vec<u8>> = app
        .db()
        .scalar(
            "SELECT key FROM user_data_keys WHERE owner_id = $1",
            &[bob.user_id.into()],
        )
        .await;
    assert_eq!(key, None);
    let erasures: i64 = app
        .db()
        .scalar(
            "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'UserErased'",
            &[bob.user_id.to_string().as_str().into()],
        )
        .await;
    assert_eq!(erasures, 1);

    // The audit trail names the administrator as the one who erased.
    app.read_models_caught_up().await;
    let actor: String = app
        .db()
        .scalar(
            "SELECT actor FROM audit_trail WHERE action = 'UserErased' AND subject = $1",
            &[bob.user_id.to_string().as_str().into()],
        )
        .await;
    assert_eq!(actor, admin.to_string());
}}

e2e! { async fn the_token_of_an_erased_account_is_refused_afterwards(backend) {
    let app = spawn_app_on(backend).await;
    let carol = person(&app).await;
    assert_eq!(
        erase_me(&app, &carol.access_token, PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
    // The same token again: its session is over.
    let again = erase_me(&app, &carol.access_token, PASSWORD).await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    let body: Value = again.json().await.unwrap();
    assert!(body["error"].is_string());
}}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

e2e! { async fn an_erased_account_leaves_its_organizations_and_a_last_owner_hands_over_first(backend) {
    let app = spawn_app_on(backend).await;
    let alice = person(&app).await;
    let bob = person(&app).await;
    let carol = app.new_user().await;
    let org = body(
        app.call(
            Method::POST,
            "/v1/organizations",
            Some(&alice.access_token),
            Some(&json!({"slug": format!("erase-{}", &Uuid::new_v4().simple().to_string()[..8]), "name": "Erasure Ltd"})),
        )
        .await,
    )
    .await["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let members = format!("/v1/organizations/{org}/members");
    let invitee = (bob.user_id, bob.access_token.clone());
    let joined = app
        .join(&alice.access_token, &org, &invitee, json!(["member"]))
        .await;
    assert_eq!(joined, StatusCode::OK);

    // A member leaves with the erasure: nobody keeps an account nobody can name.
    assert_eq!(
        erase_me(&app, &bob.access_token, PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
    let listed = body(app.get_auth(&members, &alice.access_token).await).await;
    let ids: Vec<&str> = listed["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![alice.user_id.to_string().as_str()], "{listed}");
    let left_by: String = app
        .db()
        .scalar(
            "SELECT metadata ->> 'actor' FROM events
              WHERE aggregate_id = $1 AND event_type = 'MemberRemoved'",
            &[org.as_str().into()],
        )
        .await;
    assert_eq!(
        left_by,
        bob.user_id.to_string(),
        "bob left, nobody removed him"
    );

    // The last owner must hand over first; nothing is erased until then.
    let refused = erase_me(&app, &alice.access_token, PASSWORD).await;
    assert_eq!(
        error_code(refused, StatusCode::CONFLICT).await,
        "last_owner"
    );
    assert_eq!(app.me(&alice.access_token).await.status(), StatusCode::OK);
    let erased: i64 = app
        .db()
        .scalar(
            "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'UserErased'",
            &[alice.user_id.to_string().as_str().into()],
        )
        .await;
    assert_eq!(erased, 0);

    let handed_over = app
        .join(&alice.access_token, &org, &carol, json!(["owner"]))
        .await;
    assert_eq!(handed_over, StatusCode::OK);
    assert_eq!(
        erase_me(&app, &alice.access_token, PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
    let removed: Vec<String> = app
        .db()
        .scalars(
            "SELECT payload -> 'MemberRemoved' ->> 'user_id' FROM events
              WHERE aggregate_id = $1 AND event_type = 'MemberRemoved' ORDER BY sequence",
            &[org.as_str().into()],
        )
        .await;
    assert_eq!(
        removed,
        vec![bob.user_id.to_string(), alice.user_id.to_string()],
        "both left; carol owns it now"
    );
}}

e2e! { async fn guessing_the_password_to_erase_is_locked_out_like_a_login(backend) {
    let app = spawn_app_on(backend).await;
    let dora = person(&app).await;
    let before = app.state.hasher.verifications();
    let guesses = (0..20).map(|_| erase_me(&app, &dora.access_token, "guess guess guess"));
    let statuses: Vec<StatusCode> = futures::future::join_all(guesses)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(
        app.state.hasher.verifications() - before,
        5,
        "the lockout holds under concurrent attempts: {statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count(),
        5
    );
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS));
    // Locked: even the right password erases nothing now.
    let locked = erase_me(&app, &dora.access_token, PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.me(&dora.access_token).await.status(), StatusCode::OK);
}}

e2e! { async fn guessing_the_current_password_to_change_it_is_locked_out_like_a_login(backend) {
    let app = spawn_app_on(backend).await;
    let eve = person(&app).await;
    let before = app.state.hasher.verifications();
    let body = json!({"current_password": "guess guess guess", "new_password": "a different horse, equally correct"});
    let guesses = (0..20).map(|_| {
        app.call(
            Method::POST,
            "/v1/auth/password",
            Some(&eve.access_token),
            Some(&body),
        )
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(guesses)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(
        app.state.hasher.verifications() - before,
        5,
        "the lockout holds under concurrent attempts: {statuses:?}"
    );
}}
