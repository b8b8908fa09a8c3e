//! Invitations, end to end on both back ends: the only way an organization admin
//! brings anyone in. The answer never tells whether an id or address is an account
//! (erased ones never are), nothing about an invitee shows before they accept,
//! only the invitee can accept (pending, unexpired, organization active), and the
//! organization's audit view shows no address or user agent of people acting only
//! on their own membership.

use std::collections::BTreeSet;
use std::time::Duration;

use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// Registers `email` with a display name and logs in: id and access token.
async fn person(app: &TestApp, email: &str, name: &str) -> (Uuid, String) {
    let id = app.registered_named(email, name).await;
    let tokens = app.tokens(app.login(email, PASSWORD).await).await;
    (id, tokens.access_token)
}

fn address(tag: &str) -> String {
    format!("{tag}-{}@example.com", Uuid::new_v4().simple())
}

async fn invite_with(app: &TestApp, token: &str, org: &str, body_: Value) -> reqwest::Response {
    app.call(
        Method::POST,
        &format!("/v1/organizations/{org}/invitations"),
        Some(token),
        Some(&body_),
    )
    .await
}

/// `POST /v1/users/me/invitations/{id}/{answer}` as `token`, with a user agent.
async fn answer(
    app: &TestApp,
    token: &str,
    id: &str,
    verb: &str,
    agent: &str,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v1/users/me/invitations/{id}/{verb}")))
        .header("user-agent", agent)
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

async fn mine(app: &TestApp, token: &str) -> Vec<Value> {
    let response = app.get_auth("/v1/users/me/invitations", token).await;
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await["invitations"]
        .as_array()
        .unwrap()
        .clone()
}

async fn pending(app: &TestApp, token: &str, org: &str) -> Vec<Value> {
    let response = app
        .get_auth(&format!("/v1/organizations/{org}/invitations"), token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await["invitations"]
        .as_array()
        .unwrap()
        .clone()
}

async fn member_ids(app: &TestApp, token: &str, org: &str) -> BTreeSet<String> {
    let response = app
        .get_auth(&format!("/v1/organizations/{org}/members"), token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn erase(app: &TestApp, token: &str) {
    let response = app
        .call(
            Method::DELETE,
            "/v1/users/me",
            Some(token),
            Some(&json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

e2e! { async fn an_invitation_gets_the_same_answer_whether_or_not_the_account_exists(backend) {
    let app = spawn_app_on(backend).await;
    let owner = app.new_user().await;
    let org = app.new_organization(&owner.1).await;
    let live_email = address("victoria");
    let live = person(&app, &live_email, "Victoria Hiddenname").await;
    let erased_email = address("gone");
    let erased = person(&app, &erased_email, "Gone Person").await;
    erase(&app, &erased.1).await;
    let unknown_email = address("nobody");

    let targets = [
        json!({"user_id": live.0}),
        json!({"user_id": Uuid::new_v4()}),
        json!({"user_id": erased.0}),
        json!({"email": live_email}),
        json!({"email": unknown_email}),
        json!({"email": erased_email}),
    ];
    let mut answers = Vec::new();
    for target in &targets {
        let mut request = target.clone();
        request["roles"] = json!(["member"]);
        let response = invite_with(&app, &owner.1, &org, request).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{target}");
        answers.push(body(response).await);
    }
    // One shape, and only what was typed: no name, no address behind an id.
    for (target, answer) in targets.iter().zip(&answers) {
        assert_eq!(keys(answer), keys(&answers[0]), "{answer}");
        let text = answer.to_string();
        assert!(!text.contains("Hiddenname") && !text.contains("Gone Person"), "{text}");
        match target.get("user_id") {
            Some(id) => {
                assert_eq!(&answer["user_id"], id);
                assert!(answer["email"].is_null(), "{answer}");
            }
            None => {
                assert_eq!(answer["email"], target["email"]);
                assert!(answer["user_id"].is_null(), "{answer}");
            }
        }
        assert_eq!(answer["roles"], json!(["member"]));
        assert_eq!(answer["invited_by"], owner.0.to_string());
    }
    let listed = pending(&app, &owner.1, &org).await;
    assert_eq!(listed.len(), targets.len());
    let text = serde_json::to_string(&listed).unwrap();
    assert!(!text.contains("Hiddenname") && !text.contains("Gone Person"), "{text}");

    // Nobody is a member before accepting, and nothing of them shows.
    assert_eq!(
        member_ids(&app, &owner.1, &org).await,
        BTreeSet::from([owner.0.to_string()])
    );

    // The live account sees the two invitations that named it, and no other.
    let theirs = mine(&app, &live.1).await;
    let ids: BTreeSet<&str> = theirs
        .iter()
        .map(|i| i["invitation_id"].as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = [&answers[0], &answers[3]]
        .iter()
        .map(|a| a["invitation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, expected);
    for invitation in &theirs {
        assert_eq!(invitation["organization_id"], org.as_str());
        assert_eq!(invitation["organization_name"], "Acme");
        assert_eq!(invitation["roles"], json!(["member"]));
        assert_eq!(invitation["invited_by"], owner.0.to_string());
        assert!(invitation["expires_at"].is_string());
    }

    // An address that named nobody never becomes acceptable: not by whoever
    // registers it later, nor by someone who takes over an erased account's address.
    for email in [&unknown_email, &erased_email] {
        let newcomer = person(&app, email, "Late Comer").await;
        assert_eq!(mine(&app, &newcomer.1).await, Vec::<Value>::new(), "{email}");
        for answer_ in &answers[3..] {
            let id = answer_["invitation_id"].as_str().unwrap();
            let response = answer(&app, &newcomer.1, id, "accept", "e2e").await;
            assert_eq!(error_code(response, StatusCode::NOT_FOUND).await, "not_found");
        }
    }

    // Refused input: neither or both of user_id and email, a malformed address.
    for (request, status, code) in [
        (json!({"roles": ["member"]}), StatusCode::BAD_REQUEST, "invalid_invitee"),
        (
            json!({"user_id": live.0, "email": live_email, "roles": ["member"]}),
            StatusCode::BAD_REQUEST,
            "invalid_invitee",
        ),
        (
            json!({"email": "not an address", "roles": ["member"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_email",
        ),
        (
            json!({"user_id": live.0, "roles": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_roles",
        ),
    ] {
        let response = invite_with(&app, &owner.1, &org, request.clone()).await;
        assert_eq!(error_code(response, status).await, code, "{request}");
    }
}}

e2e! { async fn only_the_invitee_can_accept_and_nothing_of_them_shows_before(backend) {
    let app = spawn_app_on(backend).await;
    let owner = app.new_user().await;
    let org = app.new_organization(&owner.1).await;
    let alice_email = address("alice");
    let alice = person(&app, &alice_email, "Alice Example").await;
    let mallory = app.new_user().await;

    let (status, invitation) = app.invite(&owner.1, &org, alice.0, json!(["admin"])).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = invitation["invitation_id"].as_str().unwrap().to_owned();

    // Someone else, the inviter included, finds no such invitation.
    assert_eq!(mine(&app, &mallory.1).await, Vec::<Value>::new());
    for token in [&mallory.1, &owner.1] {
        for verb in ["accept", "decline"] {
            let response = answer(&app, token, &id, verb, "e2e").await;
            assert_eq!(error_code(response, StatusCode::NOT_FOUND).await, "not_found");
        }
    }
    let response = answer(&app, &alice.1, "not-a-uuid", "accept", "e2e").await;
    assert_eq!(error_code(response, StatusCode::NOT_FOUND).await, "not_found");
    // Nothing of Alice in the organization yet.
    let members = app
        .get_auth(&format!("/v1/organizations/{org}/members"), &owner.1)
        .await;
    let text = body(members).await.to_string();
    assert!(!text.contains(&alice_email) && !text.contains("Alice Example"), "{text}");
    let decision = app
        .post(
            "/v1/auth/authorize",
            &json!({"token": alice.1, "organization_id": org, "permission": "members:manage"}),
        )
        .await;
    assert_eq!(body(decision).await["allowed"], false);

    // Alice accepts: a member with the invited roles, at once.
    let response = answer(&app, &alice.1, &id, "accept", "e2e").await;
    assert_eq!(response.status(), StatusCode::OK);
    let joined = body(response).await;
    assert_eq!(joined["organization_id"], org.as_str());
    assert_eq!(joined["my_roles"], json!(["admin"]));
    let decision = app
        .post(
            "/v1/auth/authorize",
            &json!({"token": alice.1, "organization_id": org, "permission": "members:manage"}),
        )
        .await;
    assert_eq!(body(decision).await["allowed"], true);
    assert!(member_ids(&app, &owner.1, &org).await.contains(&alice.0.to_string()));
    assert_eq!(mine(&app, &alice.1).await, Vec::<Value>::new());
    assert_eq!(pending(&app, &owner.1, &org).await, Vec::<Value>::new());

    // Once only.
    let response = answer(&app, &alice.1, &id, "accept", "e2e").await;
    assert_eq!(error_code(response, StatusCode::NOT_FOUND).await, "not_found");
    // A second invitation of a member cannot be accepted.
    let (status, again) = app.invite(&owner.1, &org, alice.0, json!(["member"])).await;
    assert_eq!(status, StatusCode::CREATED);
    let response = answer(
        &app,
        &alice.1,
        again["invitation_id"].as_str().unwrap(),
        "accept",
        "e2e",
    )
    .await;
    assert_eq!(error_code(response, StatusCode::CONFLICT).await, "already_member");
    assert_eq!(
        app.event_types("organization", &org).await,
        [
            "OrganizationCreated",
            "MemberInvited",
            "InvitationAccepted",
            "MemberAdded",
            "MemberInvited",
        ]
    );
}}

e2e! { async fn declined_revoked_and_expired_invitations_cannot_be_accepted(backend) {
    let app = spawn_app_on_with(backend, |s| s.organizations.invitation_ttl = Duration::from_secs(3)).await;
    let owner = app.new_user().await;
    let org = app.new_organization(&owner.1).await;

    // Declined.
    let a = app.new_user().await;
    let (_, invitation) = app.invite(&owner.1, &org, a.0, json!(["member"])).await;
    let id = invitation["invitation_id"].as_str().unwrap();
    let response = answer(&app, &a.1, id, "decline", "e2e").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = answer(&app, &a.1, id, "accept", "e2e").await;
    assert_eq!(error_code(response, StatusCode::NOT_FOUND).await, "not_found");

    // Revoked.
    let b = app.new_user().await;
    let (_, invitation) = app.invite(&owner.1, &org, b.0, json!(["member"])).await;
    let id = invitation["invitation_id"].as_str().unwrap();
    let revoke = format!("/v1/organizations/{org}/invitations/{id}");
    let response = app.call(Method::DELETE, &revoke, Some(&owner.1), None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(mine(&app, &b.1).await, Vec::<Value>::new());
    let response = answer(&app, &b.1, id, "accept", "e2e").await;
    assert_eq!(error_code(response, StatusCode::NOT_FOUND).await, "not_found");
    let response = app.call(Method::DELETE, &revoke, Some(&owner.1), None).await;
    assert_eq!(error_code(response, StatusCode::NOT_FOUND).await, "not_found");
    assert_eq!(pending(&app, &owner.1, &org).await, Vec::<Value>::new());

    // Expired: gone from both listings, and refused by the aggregate itself.
    let c = app.new_user().await;
    let (_, invitation) = app.invite(&owner.1, &org, c.0, json!(["member"])).await;
    let id = invitation["invitation_id"].as_str().unwrap();
    assert_eq!(mine(&app, &c.1).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(mine(&app, &c.1).await, Vec::<Value>::new());
    assert_eq!(pending(&app, &owner.1, &org).await, Vec::<Value>::new());
    for verb in ["accept", "decline"] {
        let response = answer(&app, &c.1, id, verb, "e2e").await;
        assert_eq!(
            error_code(response, StatusCode::GONE).await,
            "invitation_expired"
        );
    }
    assert_eq!(
        member_ids(&app, &owner.1, &org).await,
        BTreeSet::from([owner.0.to_string()])
    );
}}

e2e! { async fn a_suspended_organization_cannot_be_joined(backend) {
    let app = spawn_app_on(backend).await;
    let owner = app.new_user().await;
    let operator = app.new_user().await;
    app.make_platform_admin(operator.0).await;
    let org = app.new_organization(&owner.1).await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    let (_, to_alice) = app.invite(&owner.1, &org, alice.0, json!(["member"])).await;
    let (_, to_bob) = app.invite(&owner.1, &org, bob.0, json!(["member"])).await;
    let response = app
        .call(
            Method::POST,
            &format!("/v1/admin/organizations/{org}/suspend"),
            Some(&operator.1),
            Some(&json!({"reason": "unpaid"})),
        )
        .await;
    assert!(response.status().is_success(), "{}", response.status());

    let id = to_alice["invitation_id"].as_str().unwrap();
    let response = answer(&app, &alice.1, id, "accept", "e2e").await;
    assert_eq!(
        error_code(response, StatusCode::CONFLICT).await,
        "organization_suspended"
    );
    // One can always say no.
    let id = to_bob["invitation_id"].as_str().unwrap();
    let response = answer(&app, &bob.1, id, "decline", "e2e").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}}

e2e! { async fn organization_admins_cannot_add_members_directly_and_erased_accounts_are_no_accounts(backend) {
    let app = spawn_app_on(backend).await;
    let owner = app.new_user().await;
    let operator = app.new_user().await;
    app.make_platform_admin(operator.0).await;
    let org = app.new_organization(&owner.1).await;
    let live = app.new_user().await;
    let erased = app.new_user().await;
    erase(&app, &erased.1).await;
    let members = format!("/v1/organizations/{org}/members");

    // An owner (everything in the organization) cannot add anyone directly.
    for user in [live.0, erased.0, Uuid::new_v4()] {
        let response = app
            .call(
                Method::POST,
                &members,
                Some(&owner.1),
                Some(&json!({"user_id": user, "roles": ["member"]})),
            )
            .await;
        assert_eq!(error_code(response, StatusCode::FORBIDDEN).await, "forbidden");
    }
    // A platform administrator can, but an erased account is no account.
    let response = app
        .call(
            Method::POST,
            &members,
            Some(&operator.1),
            Some(&json!({"user_id": erased.0, "roles": ["member"]})),
        )
        .await;
    assert_eq!(
        error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
        "user_not_found"
    );
    let response = app
        .call(
            Method::POST,
            &members,
            Some(&operator.1),
            Some(&json!({"user_id": live.0, "roles": ["member"]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        member_ids(&app, &owner.1, &org).await,
        BTreeSet::from([owner.0.to_string(), live.0.to_string()])
    );
}}

e2e! { async fn the_organization_audit_view_hides_the_address_of_people_acting_on_their_own_membership(backend) {
    let app = spawn_app_on(backend).await;
    let owner = app.new_user().await;
    let operator = app.new_user().await;
    app.make_platform_admin(operator.0).await;
    let org = app.new_organization(&owner.1).await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;

    let (_, to_alice) = app.invite(&owner.1, &org, alice.0, json!(["member"])).await;
    let (_, to_bob) = app.invite(&owner.1, &org, bob.0, json!(["member"])).await;
    let id = to_alice["invitation_id"].as_str().unwrap();
    let response = answer(&app, &alice.1, id, "accept", "alice-agent/1.0").await;
    assert_eq!(response.status(), StatusCode::OK);
    let id = to_bob["invitation_id"].as_str().unwrap();
    let response = answer(&app, &bob.1, id, "decline", "bob-agent/1.0").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // Alice leaves again.
    let response = app
        .client
        .delete(app.url(&format!("/v1/organizations/{org}/members/{}", alice.0)))
        .header("user-agent", "alice-agent/1.0")
        .bearer_auth(&alice.1)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    app.read_models_caught_up().await;

    let response = app
        .get_auth(
            &format!("/v1/audit/events?organization_id={org}&limit=500"),
            &owner.1,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = body(response).await;
    let rows = page["events"].as_array().unwrap();
    let own: Vec<&Value> = rows
        .iter()
        .filter(|r| r["actor"] == alice.0.to_string() || r["actor"] == bob.0.to_string())
        .collect();
    let actions: BTreeSet<&str> = own.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        BTreeSet::from(["InvitationAccepted", "MemberAdded", "InvitationDeclined", "MemberRemoved"])
    );
    for row in &own {
        assert!(row["ip"].is_null() && row["user_agent"].is_null(), "{row}");
    }
    let text = page.to_string();
    assert!(!text.contains("alice-agent") && !text.contains("bob-agent"), "{text}");
    // The administrators' own acts keep their origin.
    let invited = rows
        .iter()
        .find(|r| r["action"] == "MemberInvited")
        .expect("MemberInvited row");
    assert_eq!(invited["actor"], owner.0.to_string());
    assert_eq!(invited["ip"], "127.0.0.1");

    // The platform's whole trail still has them.
    let response = app
        .get_auth(&format!("/v1/audit/events?actor={}&limit=500", alice.0), &operator.1)
        .await;
    let all = body(response).await;
    let accepted = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "InvitationAccepted")
        .expect("InvitationAccepted row");
    assert_eq!(accepted["user_agent"], "alice-agent/1.0");
    assert_eq!(accepted["ip"], "127.0.0.1");
}}

e2e! { async fn an_invited_address_is_sealed_in_the_log_and_forgotten_when_the_invitation_ends(backend) {
    let app = spawn_app_on(backend).await;
    let owner = app.new_user().await;
    let org = app.new_organization(&owner.1).await;
    let local = format!("carol-{}", Uuid::new_v4().simple());
    let typed = format!("{local}@Example.com");
    let carol = person(&app, &typed.to_lowercase(), "Carol").await;

    let response = invite_with(
        &app,
        &owner.1,
        &org,
        json!({"email": typed, "roles": ["auditor"]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let invitation = body(response).await;
    assert_eq!(invitation["email"], typed.to_lowercase());
    let id: Uuid = invitation["invitation_id"].as_str().unwrap().parse().unwrap();
    app.read_models_caught_up().await;

    // Not in clear in the log, its metadata or the audit trail.
    for event in app.stored_events().await {
        let stored = format!("{} {}", event.payload, event.metadata).to_lowercase();
        assert!(!stored.contains(&local), "{stored}");
    }
    // (Carol's own registration row holds her address, as it should.)
    for row in app.audit_rows().await.iter().filter(|r| r.aggregate_type == "organization") {
        let shown = format!("{row:?}").to_lowercase();
        assert!(!shown.contains(&local), "{shown}");
    }
    let key: Option<Vec<u8>> = app
        .db()
        .scalar("SELECT key FROM user_data_keys WHERE owner_id = $1", &[id.into()])
        .await;
    assert!(key.is_some(), "the address is sealed with the invitation's own key");

    // Carol, who holds the address, accepts; the typed address is then forgotten.
    let response = answer(&app, &carol.1, &id.to_string(), "accept", "e2e").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await["my_roles"], json!(["auditor"]));
    let key: Option<Vec<u8>> = app
        .db()
        .scalar("SELECT key FROM user_data_keys WHERE owner_id = $1", &[id.into()])
        .await;
    assert_eq!(key, None);
}}

e2e! { async fn an_invitation_by_address_reaches_nats_without_the_address_or_the_account(backend) {
    let app = spawn_app_with_nats(backend).await;
    let owner = app.new_user().await;
    let org = app.new_organization(&owner.1).await;
    let local = format!("dora-{}", Uuid::new_v4().simple());
    let email = format!("{local}@example.com");
    let dora = person(&app, &email, "Dora").await;
    let response = invite_with(&app, &owner.1, &org, json!({"email": email, "roles": ["member"]})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = body(response).await["invitation_id"].as_str().unwrap().to_owned();
    let response = answer(&app, &dora.1, &id, "accept", "e2e").await;
    assert_eq!(response.status(), StatusCode::OK);

    // Every stored event, plus the two derived EffectivePermissionsChanged
    // (the creation and the membership).
    let stored = app.stored_events().await.len();
    let published = app.published(stored + 2, Duration::from_secs(10)).await;
    assert_eq!(published.len(), stored + 2);
    let of = |event_type: &str| -> Vec<&Value> {
        published
            .iter()
            .map(|(_, _, e)| e)
            .filter(|e| e["event_type"] == event_type)
            .collect()
    };
    let invited = of("MemberInvited");
    assert_eq!(invited.len(), 1);
    let data = &invited[0]["data"];
    assert_eq!(data["invited"], "email");
    assert!(data["user_id"].is_null(), "{data}");
    assert_eq!(data["invitation_id"], id.as_str());
    let text = invited[0].to_string();
    assert!(!text.contains(&dora.0.to_string()), "the account leaked: {text}");
    // (Dora's own UserRegistered carries her address, as it should.)
    for (_, _, event) in published.iter().filter(|(_, _, e)| e["aggregate_type"] == "organization") {
        let text = event.to_string();
        assert!(!text.contains(&local), "the address leaked: {text}");
    }
    assert_eq!(of("InvitationAccepted")[0]["data"]["user_id"], dora.0.to_string());
    assert_eq!(of("MemberAdded")[0]["data"]["user_id"], dora.0.to_string());
}}

e2e! {
    /// Many people invited into one organization at once: an invitation answered
    /// 201 is there for its invitee at once. The server caches aggregates; two
    /// commits of the organization finishing in the other order once left the
    /// older state in the cache, and an acceptance decided on it was refused as
    /// `no such invitation` (found by the benchmark's seed; with 40 people this
    /// failed about every other run before the fix).
    multi_thread async fn invitations_sent_at_once_are_each_accepted_at_once(backend) {
        let app = spawn_app_on(backend).await;
        let (_, owner) = person(&app, &address("owner"), "Owner").await;
        let org = app.new_organization(&owner).await;
        let mut people = Vec::new();
        for i in 0..40 {
            people.push(person(&app, &address(&format!("m{i}")), "Member").await);
        }
        let joins = people.iter().map(|(id, token)| {
            let (app, owner, org) = (&app, &owner, &org);
            async move {
                let mut invited = (StatusCode::CONFLICT, Value::Null);
                // Concurrent changes of one organization may ask to try again.
                for _ in 0..10 {
                    invited = app.invite(owner, org, *id, json!(["member"])).await;
                    if invited.0 != StatusCode::CONFLICT {
                        break;
                    }
                }
                assert_eq!(invited.0, StatusCode::CREATED, "{}", invited.1);
                let invitation = invited.1["invitation_id"].as_str().unwrap().to_owned();
                let mut accepted = StatusCode::CONFLICT;
                for _ in 0..10 {
                    accepted = app.accept_invitation(token, &invitation).await;
                    if accepted != StatusCode::CONFLICT {
                        break;
                    }
                }
                assert_eq!(accepted, StatusCode::OK, "the invitation answered 201 is there");
            }
        });
        futures::future::join_all(joins).await;
    }
}
