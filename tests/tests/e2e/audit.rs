//! Time travel and the audit trail API, end to end: one account's story is written
//! through the API (registration, logins from two devices, a membership with a
//! custom role that is later narrowed, an organization suspension, a lockout and an
//! account suspension), with the instant between every two steps remembered. Then:
//! the account at each instant (`projections::as_of`, `keyledger-replay as-of` and
//! `GET /v1/audit/users/{id}/as-of` agree), its timeline with actors and origins,
//! and `GET /v1/audit/events` with its filters, pagination and authorization. No
//! output may carry a hash or a token.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use keyledger_commands::RefreshToken;
use keyledger_e2e::*;
use keyledger_projections::{account_as_of, AccountAsOf, AccountStatus};
use keyledger_replay_tools::{as_of, timeline, OutputFormat, Timeline, UserRef};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// The instant after each step of the story (every event of a step happened
/// before it, every event of the next step after it).
struct Instants {
    before: DateTime<Utc>,
    registered: DateTime<Utc>,
    logged_in: DateTime<Utc>,
    joined: DateTime<Utc>,
    narrowed: DateTime<Utc>,
    relogged: DateTime<Utc>,
    org_suspended: DateTime<Utc>,
    org_reactivated: DateTime<Utc>,
    locked: DateTime<Utc>,
    suspended: DateTime<Utc>,
}

struct Story {
    app: TestApp,
    alice: Uuid,
    email: String,
    owner: (Uuid, String),
    platform_admin: (Uuid, String),
    auditor: (Uuid, String),
    member: (Uuid, String),
    outsider: (Uuid, String),
    org: String,
    other_org: String,
    role: String,
    first_session: String,
    second_session: String,
    /// Alice's tokens and their hashes: none may appear in any output.
    secrets: Vec<String>,
    t: Instants,
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// RFC 3339 with nanoseconds (and `Z`, so nothing needs percent-encoding).
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Invites `member` and has them accept (the only way an owner adds anyone).
async fn add_member(app: &TestApp, token: &str, org: &str, member: &(Uuid, String), roles: Value) {
    assert_eq!(app.join(token, org, member, roles).await, StatusCode::OK);
}

async fn login_from(app: &TestApp, email: &str, password: &str, agent: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/auth/login"))
        .header(reqwest::header::USER_AGENT, agent)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("request")
}

async fn admin_post(app: &TestApp, token: &str, path: &str, body: Option<&Value>) {
    let response = app.call(Method::POST, path, Some(token), body).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT, "{path}");
}

fn hash_of(refresh_token: &str) -> String {
    let hash = RefreshToken::parse(refresh_token).unwrap().hash();
    serde_json::to_value(hash)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

async fn story(backend: Backend) -> Story {
    let app = spawn_app_on(backend).await;
    let owner = app.new_user().await;
    let platform_admin = app.new_user().await;
    app.make_platform_admin(platform_admin.0).await;
    let auditor = app.new_user().await;
    let member = app.new_user().await;
    let outsider = app.new_user().await;
    let org = app.new_organization(&owner.1).await;
    let other_org = app.new_organization(&outsider.1).await;
    add_member(&app, &owner.1, &org, &auditor, json!(["auditor"])).await;
    add_member(&app, &owner.1, &org, &member, json!(["member"])).await;

    let before = now();
    let email = format!("alice-{}@example.com", Uuid::new_v4().simple());
    let response = app.register(&email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let alice: Uuid = body(response).await["user_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let registered = now();

    let first = app
        .tokens(login_from(&app, &email, PASSWORD, "agent-one").await)
        .await;
    let logged_in = now();

    let response = app
        .call(
            Method::POST,
            &format!("/v1/organizations/{org}/roles"),
            Some(&owner.1),
            Some(&json!({"name": "billing", "permissions": ["invoices:*"]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let role = body(response).await["role_id"].as_str().unwrap().to_owned();
    let invitee = (alice, first.access_token.clone());
    add_member(&app, &owner.1, &org, &invitee, json!(["member", role])).await;
    let joined = now();

    let response = app
        .call(
            Method::PATCH,
            &format!("/v1/organizations/{org}/roles/{role}"),
            Some(&owner.1),
            Some(&json!({"permissions": ["invoices:read"]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let narrowed = now();

    assert_eq!(
        app.logout(&first.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    let second = app
        .tokens(login_from(&app, &email, PASSWORD, "agent-two").await)
        .await;
    let relogged = now();

    let reason = json!({"reason": "unpaid invoices"});
    let admin_token = &platform_admin.1;
    admin_post(
        &app,
        admin_token,
        &format!("/v1/admin/organizations/{org}/suspend"),
        Some(&reason),
    )
    .await;
    let org_suspended = now();
    admin_post(
        &app,
        admin_token,
        &format!("/v1/admin/organizations/{org}/reactivate"),
        None,
    )
    .await;
    let org_reactivated = now();

    for _ in 0..5 {
        let response = login_from(&app, &email, "wrong horse battery staple", "agent-evil").await;
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(&response.status())
        );
    }
    let response = login_from(&app, &email, PASSWORD, "agent-two").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let locked = now();

    admin_post(
        &app,
        admin_token,
        &format!("/v1/admin/users/{alice}/suspend"),
        Some(&json!({"reason": "chargeback fraud"})),
    )
    .await;
    let suspended = now();
    caught_up(&app).await;

    let secrets = vec![
        first.access_token,
        hash_of(&first.refresh_token),
        first.refresh_token,
        second.access_token,
        hash_of(&second.refresh_token),
        second.refresh_token,
    ];
    Story {
        app,
        alice,
        email,
        owner,
        platform_admin,
        auditor,
        member,
        outsider,
        org,
        other_org,
        role,
        first_session: first.session_id,
        second_session: second.session_id,
        secrets,
        t: Instants {
            before,
            registered,
            logged_in,
            joined,
            narrowed,
            relogged,
            org_suspended,
            org_reactivated,
            locked,
            suspended,
        },
    }
}

async fn caught_up(app: &TestApp) {
    app.read_models_caught_up().await;
}

impl Story {
    async fn as_of(&self, at: DateTime<Utc>) -> AccountAsOf {
        account_as_of(
            &self.app.state.storage,
            &self.app.state.data_key_wrapping,
            self.alice,
            at,
        )
        .await
        .unwrap()
        .expect("alice exists")
    }

    /// Fails if any output carries a hash or one of alice's tokens.
    fn assert_secret_free(&self, output: &str) {
        assert!(!output.to_lowercase().contains("argon2"), "{output}");
        assert!(!output.contains("hash"), "{output}");
        assert!(!output.contains(PASSWORD), "{output}");
        for secret in &self.secrets {
            assert!(!output.contains(secret.as_str()), "a secret in {output}");
        }
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.app.call(Method::GET, path, Some(token), None).await
    }

    async fn events(&self, query: &str, token: &str) -> Value {
        let response = self.get(&format!("/v1/audit/events?{query}"), token).await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
        let page = body(response).await;
        self.assert_secret_free(&page.to_string());
        page
    }

    /// Every row of a query, page by page (`limit` rows each).
    async fn all_pages(&self, query: &str, limit: usize, token: &str) -> Vec<Value> {
        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = format!("{query}&limit={limit}");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let page = self.events(&q, token).await;
            let events = page["events"].as_array().unwrap();
            assert!(events.len() <= limit);
            rows.extend(events.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => {
                    assert_eq!(events.len(), limit, "only a full page has a next one");
                    cursor = Some(next.to_owned());
                }
                None => return rows,
            }
        }
    }
}

fn session_ids(account: &AccountAsOf) -> Vec<String> {
    account
        .sessions
        .iter()
        .map(|s| s.session_id.to_string())
        .collect()
}

fn actions(rows: &[Value]) -> Vec<&str> {
    rows.iter().map(|r| r["action"].as_str().unwrap()).collect()
}

fn positions(rows: &[Value]) -> Vec<i64> {
    rows.iter()
        .map(|r| r["global_position"].as_i64().unwrap())
        .collect()
}

e2e! { async fn an_account_is_seen_as_it_was_at_every_instant(backend) {
    let s = story(backend).await;
    let t = &s.t;

    let before = s.as_of(t.before).await;
    assert!(!before.registered);
    assert_eq!(before.status, AccountStatus::NotYetRegistered);

    let registered = s.as_of(t.registered).await;
    assert_eq!(registered.status, AccountStatus::Active);
    assert_eq!(registered.email.as_deref(), Some(s.email.as_str()));
    assert!(registered.sessions.is_empty() && registered.organizations.is_empty());

    let logged_in = s.as_of(t.logged_in).await;
    assert_eq!(session_ids(&logged_in), [s.first_session.as_str()]);
    let session = &logged_in.sessions[0];
    assert_eq!(session.user_agent.as_deref(), Some("agent-one"));
    assert_eq!(session.ip.as_deref(), Some("127.0.0.1"));
    assert!(session.started_at <= t.logged_in && session.expires_at > t.logged_in);

    // Before the role was narrowed, it granted `invoices:*`; after, only read.
    let joined = s.as_of(t.joined).await;
    let org = &joined.organizations[0];
    assert_eq!(org.organization_id.to_string(), s.org);
    assert_eq!(org.roles, ["member".to_owned(), s.role.clone()]);
    assert!(
        org.permissions.contains(&"invoices:*".to_owned()),
        "{org:?}"
    );
    let narrowed = s.as_of(t.narrowed).await;
    let permissions = &narrowed.organizations[0].permissions;
    assert!(permissions.contains(&"invoices:read".to_owned()));
    assert!(!permissions.contains(&"invoices:*".to_owned()));
    assert_eq!(session_ids(&narrowed), [s.first_session.as_str()]);

    // Logged out of the first device, in on the second.
    let relogged = s.as_of(t.relogged).await;
    assert_eq!(session_ids(&relogged), [s.second_session.as_str()]);
    assert_eq!(
        relogged.sessions[0].user_agent.as_deref(),
        Some("agent-two")
    );

    let org_suspended = s.as_of(t.org_suspended).await;
    assert!(org_suspended.organizations[0].suspended);
    assert!(org_suspended.organizations[0].permissions.is_empty());
    let org_reactivated = s.as_of(t.org_reactivated).await;
    assert!(!org_reactivated.organizations[0].suspended);
    assert!(org_reactivated.organizations[0]
        .permissions
        .contains(&"invoices:read".to_owned()));
    assert_eq!(org_reactivated.status, AccountStatus::Active);
    assert_eq!(org_reactivated.consecutive_failures, 0);

    let locked = s.as_of(t.locked).await;
    assert_eq!(locked.status, AccountStatus::Locked);
    assert_eq!(locked.consecutive_failures, 5);
    let until = locked.locked_until.expect("locked until");
    assert!(until > t.locked + chrono::Duration::minutes(29), "{until}");
    assert_eq!(session_ids(&locked), [s.second_session.as_str()]);

    let suspended = s.as_of(t.suspended).await;
    assert_eq!(suspended.status, AccountStatus::Suspended);
    assert!(
        suspended.sessions.is_empty(),
        "suspension ends every session"
    );
    assert!(suspended.organizations[0].permissions.is_empty());
    assert!(!suspended.platform_admin);

    // The auditor's tool says the same, readable or as JSON.
    let log = s.app.replay_log().await;
    let mut text = Vec::new();
    let by_email = as_of(
        &log,
        Some(s.app.state.data_key_wrapping.clone()),
        &s.app.user_ref(&s.email),
        t.joined,
        OutputFormat::Text,
        &mut text,
    )
    .await
    .unwrap();
    assert_eq!(by_email, joined);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("status=active"), "{text}");
    assert!(
        text.contains(&format!("session {}", s.first_session)),
        "{text}"
    );
    assert!(text.contains("invoices:*"), "{text}");
    assert_eq!(
        text.lines().count(),
        4,
        "header, status, session, organization: {text}"
    );
    s.assert_secret_free(&text);
    let mut json_out = Vec::new();
    as_of(
        &log,
        Some(s.app.state.data_key_wrapping.clone()),
        &UserRef::Id(s.alice),
        t.locked,
        OutputFormat::JsonLines,
        &mut json_out,
    )
    .await
    .unwrap();
    let json_out = String::from_utf8(json_out).unwrap();
    assert_eq!(json_out.lines().count(), 1);
    let parsed: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(parsed, serde_json::to_value(&locked).unwrap());
    s.assert_secret_free(&json_out);

    // And so does the API, for platform administrators.
    for at in [t.before, t.joined, t.narrowed, t.locked, t.suspended] {
        let response = s
            .get(
                &format!("/v1/audit/users/{}/as-of?at={}", s.alice, rfc3339(at)),
                &s.platform_admin.1,
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let answer = body(response).await;
        s.assert_secret_free(&answer.to_string());
        assert_eq!(answer, serde_json::to_value(s.as_of(at).await).unwrap());
    }
    let answer = body(
        s.get(
            &format!("/v1/audit/users/{}/as-of?at={}", s.alice, rfc3339(t.before)),
            &s.platform_admin.1,
        )
        .await,
    )
    .await;
    assert_eq!(answer["status"], "not_yet_registered");
    assert_eq!(answer["registered"], false);
}}

e2e! { async fn as_of_through_the_api_is_for_platform_administrators_only(backend) {
    let s = story(backend).await;
    let at = rfc3339(s.t.joined);
    let path = format!("/v1/audit/users/{}/as-of?at={at}", s.alice);
    for token in [&s.auditor.1, &s.owner.1, &s.member.1, &s.outsider.1] {
        let response = s.get(&path, token).await;
        assert_eq!(
            error_code(response, StatusCode::FORBIDDEN).await,
            "forbidden"
        );
    }
    let admin = &s.platform_admin.1;
    for bad in [
        "yesterday",
        "2026-01-31",
        "2026-01-31T12:00:00+01:00+01:00",
        "",
    ] {
        let response = s
            .get(
                &format!("/v1/audit/users/{}/as-of?at={bad}", s.alice),
                admin,
            )
            .await;
        assert_eq!(
            error_code(response, StatusCode::BAD_REQUEST).await,
            "invalid_time",
            "{bad}"
        );
    }
    let response = s
        .get(&format!("/v1/audit/users/{}/as-of", s.alice), admin)
        .await;
    assert_eq!(
        error_code(response, StatusCode::BAD_REQUEST).await,
        "invalid_time"
    );
    // An offset other than Z works when percent-encoded.
    let response = s
        .get(
            &format!(
                "/v1/audit/users/{}/as-of?at={}",
                s.alice,
                s.t.joined
                    .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
                    .to_rfc3339_opts(SecondsFormat::Nanos, false)
                    .replace('+', "%2B")
            ),
            admin,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        body(response).await,
        serde_json::to_value(s.as_of(s.t.joined).await).unwrap()
    );
    for unknown in [Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let response = s
            .get(&format!("/v1/audit/users/{unknown}/as-of?at={at}"), admin)
            .await;
        assert_eq!(
            error_code(response, StatusCode::NOT_FOUND).await,
            "not_found"
        );
    }
}}

e2e! { async fn the_timeline_lists_every_change_with_who_from_where_and_when(backend) {
    let s = story(backend).await;
    let t = &s.t;
    let log = s.app.replay_log().await;
    let alice = UserRef::Id(s.alice);
    let mut out = Vec::new();
    let all: Timeline = timeline(
        &log,
        Some(s.app.state.data_key_wrapping.clone()),
        &alice,
        None,
        None,
        OutputFormat::JsonLines,
        &mut out,
    )
        .await
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    s.assert_secret_free(&out);
    assert_eq!(out.lines().count(), all.entries.len());
    for line in out.lines() {
        let entry: Value = serde_json::from_str(line).expect("JSON lines");
        assert!(entry["occurred_at"].is_string() && entry["actor"].is_string());
    }

    let types = all.event_types();
    for expected in [
        "UserRegistered",
        "UserLoggedIn",
        "SessionStarted",
        "MemberAdded",
        "UserLoggedOut",
        "LoginFailed",
        "AccountLocked",
        "UserSuspended",
        "SessionRevoked",
    ] {
        assert!(
            types.contains(&expected),
            "{expected} missing from {types:?}"
        );
    }
    assert_eq!(types.iter().filter(|t| **t == "LoginFailed").count(), 5);
    // Log order, and every time within the story.
    let order: Vec<i64> = all.entries.iter().map(|e| e.global_position).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted);
    for entry in &all.entries {
        assert!(entry.occurred_at > t.before && entry.occurred_at < t.suspended);
        assert!(entry.request_id.is_some(), "{entry:?}");
    }

    // Who, from where.
    let one = |event_type: &str| {
        all.entries
            .iter()
            .find(|e| e.event_type == event_type)
            .unwrap_or_else(|| panic!("{event_type}"))
    };
    // Alice joined by accepting the owner's invitation: she is the actor.
    let member_added = one("MemberAdded");
    assert_eq!(member_added.actor, Some(s.alice.to_string()));
    assert_eq!(one("InvitationAccepted").actor, Some(s.alice.to_string()));
    assert_eq!(one("MemberInvited").actor, Some(s.owner.0.to_string()));
    assert_eq!(member_added.aggregate_id, s.org);
    assert_eq!(member_added.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        member_added.user_agent.as_deref(),
        Some("keyledger-e2e/1.0")
    );
    assert_eq!(member_added.data["roles"], json!(["member", s.role]));
    let started = one("SessionStarted");
    assert_eq!(started.user_agent.as_deref(), Some("agent-one"));
    assert_eq!(started.actor, Some(s.alice.to_string()));
    let failed = one("LoginFailed");
    assert_eq!(failed.user_agent.as_deref(), Some("agent-evil"));
    assert_eq!(failed.actor.as_deref(), Some("anonymous"));
    let suspended = one("UserSuspended");
    assert_eq!(suspended.actor, Some(s.platform_admin.0.to_string()));
    assert_eq!(suspended.data["reason"], "chargeback fraud");
    assert_eq!(one("UserRegistered").actor, Some(s.alice.to_string()));

    // A window: from the narrowing to the second login, by email, readable.
    let mut text = Vec::new();
    let window = timeline(
        &log,
        Some(s.app.state.data_key_wrapping.clone()),
        &s.app.user_ref(&s.email),
        Some(t.narrowed),
        Some(t.relogged),
        OutputFormat::Text,
        &mut text,
    )
    .await
    .unwrap();
    assert_eq!(
        window.event_types(),
        ["UserLoggedOut", "UserLoggedIn", "SessionStarted"]
    );
    let text = String::from_utf8(text).unwrap();
    s.assert_secret_free(&text);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with(&format!("# timeline of user {}", s.alice)));
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[3].contains("SessionStarted"), "{text}");
    assert!(lines[3].contains("user_agent=\"agent-two\""), "{text}");
    assert!(lines[3].contains("ip=127.0.0.1"), "{text}");
    assert!(lines[1].contains(&format!("actor={}", s.alice)), "{text}");
}}

e2e! { async fn the_audit_trail_api_filters_and_pages_newest_first(backend) {
    let s = story(backend).await;
    let t = &s.t;
    let admin = &s.platform_admin.1;
    let alice = s.alice.to_string();

    // Everything about alice, newest first.
    let about = s.events(&format!("subject={alice}&limit=500"), admin).await;
    let rows = about["events"].as_array().unwrap().clone();
    assert!(about["next_cursor"].is_null());
    let order = positions(&rows);
    assert!(order.windows(2).all(|w| w[0] > w[1]), "{order:?}");
    assert!(rows.iter().all(|r| r["subject"] == alice.as_str()));
    let seen = actions(&rows);
    assert_eq!(seen[0], "SessionRevoked", "the newest first: {seen:?}");
    assert_eq!(*seen.last().unwrap(), "UserRegistered");
    for expected in [
        "MemberAdded",
        "AccountLocked",
        "UserSuspended",
        "SessionStarted",
    ] {
        assert!(seen.contains(&expected), "{expected} missing: {seen:?}");
    }

    // Pages of 4 give the same rows: no duplicate, no gap.
    let paged = s.all_pages(&format!("subject={alice}"), 4, admin).await;
    assert_eq!(paged, rows);
    // The whole trail too.
    let everything = s.events("limit=500", admin).await["events"]
        .as_array()
        .unwrap()
        .clone();
    assert!(everything.len() > rows.len());
    assert_eq!(s.all_pages("", 7, admin).await, everything);
    let unique: BTreeSet<i64> = positions(&everything).into_iter().collect();
    assert_eq!(unique.len(), everything.len());

    // Each filter.
    let failed = s
        .events(&format!("subject={alice}&action=LoginFailed"), admin)
        .await;
    let failed = failed["events"].as_array().unwrap();
    assert_eq!(failed.len(), 5);
    for row in failed {
        assert_eq!(row["outcome"], "failure");
        assert_eq!(row["user_agent"], "agent-evil");
        assert_eq!(row["ip"], "127.0.0.1");
        assert!(row["request_id"].is_string());
        assert_eq!(row["aggregate_type"], "user");
    }
    let locked = s.events("outcome=locked", admin).await;
    assert_eq!(
        actions(locked["events"].as_array().unwrap()),
        ["AccountLocked"]
    );
    let by_admin = s
        .events(&format!("actor={}", s.platform_admin.0), admin)
        .await;
    let by_admin = by_admin["events"].as_array().unwrap();
    assert!(by_admin
        .iter()
        .all(|r| r["actor"] == s.platform_admin.0.to_string().as_str()));
    let admin_actions = actions(by_admin);
    for expected in [
        "UserSuspended",
        "OrganizationSuspended",
        "OrganizationReactivated",
    ] {
        assert!(admin_actions.contains(&expected), "{admin_actions:?}");
    }
    let window = s
        .events(
            &format!(
                "subject={alice}&from={}&to={}",
                rfc3339(t.narrowed),
                rfc3339(t.relogged)
            ),
            admin,
        )
        .await;
    let window = window["events"].as_array().unwrap();
    assert_eq!(
        actions(window),
        ["SessionStarted", "UserLoggedIn", "UserLoggedOut"]
    );
    for row in window {
        let at: DateTime<Utc> = row["occurred_at"].as_str().unwrap().parse().unwrap();
        assert!(at >= t.narrowed && at <= t.relogged);
    }
    let none = s
        .events(&format!("subject={alice}&to={}", rfc3339(t.before)), admin)
        .await;
    assert_eq!(none["events"], json!([]));

    // Refused input.
    for (query, code) in [
        ("limit=0", "invalid_filter"),
        ("limit=501", "invalid_filter"),
        ("limit=ten", "invalid_filter"),
        (&format!("action={}", "x".repeat(201)), "invalid_filter"),
        ("cursor=bm9wZQ", "invalid_cursor"),
        ("cursor=%21%21", "invalid_cursor"),
        ("from=yesterday", "invalid_time"),
        ("to=2026-13-01T00:00:00Z", "invalid_time"),
    ] {
        let response = s.get(&format!("/v1/audit/events?{query}"), admin).await;
        assert_eq!(
            error_code(response, StatusCode::BAD_REQUEST).await,
            code,
            "{query}"
        );
    }
}}

e2e! { async fn organization_auditors_see_their_organization_only(backend) {
    let s = story(backend).await;
    let org_query = format!("organization_id={}", s.org);

    // The organization's auditor: its events and its roles' events, nothing else.
    let rows = s.all_pages(&org_query, 3, &s.auditor.1).await;
    assert!(!rows.is_empty());
    for row in &rows {
        let own = (row["aggregate_type"] == "organization"
            && row["aggregate_id"] == s.org.as_str())
            || (row["aggregate_type"] == "role" && row["aggregate_id"] == s.role.as_str());
        assert!(own, "not of the organization: {row}");
    }
    let seen = actions(&rows);
    for expected in [
        "OrganizationCreated",
        "MemberAdded",
        "RoleDefined",
        "PermissionUpdated",
        "OrganizationSuspended",
        "OrganizationReactivated",
    ] {
        assert!(seen.contains(&expected), "{expected} missing: {seen:?}");
    }
    let order = positions(&rows);
    assert!(order.windows(2).all(|w| w[0] > w[1]));
    // The platform administrator sees the same through the same filter.
    assert_eq!(
        s.all_pages(&org_query, 500, &s.platform_admin.1).await,
        rows
    );
    // Filters combine with the organization.
    let joined = s
        .events(&format!("{org_query}&subject={}", s.alice), &s.auditor.1)
        .await;
    assert_eq!(
        actions(joined["events"].as_array().unwrap()),
        ["MemberAdded", "InvitationAccepted", "MemberInvited"]
    );
    // The owner holds `audit:read` too (`*`).
    let response = s
        .get(&format!("/v1/audit/events?{org_query}"), &s.owner.1)
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // A member without `audit:read`: 403. Outsiders, and another organization: 404.
    let response = s
        .get(&format!("/v1/audit/events?{org_query}"), &s.member.1)
        .await;
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "forbidden"
    );
    for (token, org) in [
        (&s.outsider.1, s.org.clone()),
        (&s.auditor.1, s.other_org.clone()),
        (&s.auditor.1, Uuid::new_v4().to_string()),
        (&s.auditor.1, "not-a-uuid".to_owned()),
    ] {
        let response = s
            .get(&format!("/v1/audit/events?organization_id={org}"), token)
            .await;
        assert_eq!(
            error_code(response, StatusCode::NOT_FOUND).await,
            "not_found"
        );
    }
    // Without an organization, the whole trail is for platform administrators.
    for token in [&s.auditor.1, &s.owner.1, &s.member.1, &s.outsider.1] {
        let response = s.get("/v1/audit/events", token).await;
        assert_eq!(
            error_code(response, StatusCode::FORBIDDEN).await,
            "forbidden"
        );
    }
    let response = s
        .app
        .call(Method::GET, "/v1/audit/events", None, None)
        .await;
    assert_eq!(
        error_code(response, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
}}
