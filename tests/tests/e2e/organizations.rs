//! Organizations, roles, members, service accounts and `authorize`, end to end:
//! the isolation matrix, the granting rules, read-your-writes of every permission
//! change (no sleeps), suspension and the client-credentials grant. Every test runs
//! on both back ends; the one about NATS with NATS on.

use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// An organization with an owner, an admin and a plain member, plus an outsider who
/// owns an organization of their own.
struct World {
    app: TestApp,
    org: String,
    other_org: String,
    owner: (Uuid, String),
    admin: (Uuid, String),
    member: (Uuid, String),
    outsider: (Uuid, String),
}

async fn create_org(app: &TestApp, token: &str, slug: &str) -> String {
    let response = app
        .call(
            Method::POST,
            "/v1/organizations",
            Some(token),
            Some(&json!({"slug": slug, "name": format!("Org {slug}")})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let org = body(response).await;
    assert_eq!(org["my_roles"], json!(["owner"]));
    org["organization_id"].as_str().unwrap().to_owned()
}

/// Invites `member` and has them accept: the only way an organization admin adds
/// anyone. The acceptance's status.
async fn add_member(
    app: &TestApp,
    token: &str,
    org: &str,
    member: &(Uuid, String),
    roles: Value,
) -> StatusCode {
    app.join(token, org, member, roles).await
}

fn slug() -> String {
    format!("org-{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// The [`World`] on `backend`.
async fn world(backend: Backend) -> World {
    world_in(spawn_app_on(backend).await).await
}

/// The [`World`] in a running app.
async fn world_in(app: TestApp) -> World {
    let owner = app.new_user().await;
    let admin = app.new_user().await;
    let member = app.new_user().await;
    let outsider = app.new_user().await;
    let org = create_org(&app, &owner.1, &slug()).await;
    let other_org = create_org(&app, &outsider.1, &slug()).await;
    assert_eq!(
        add_member(&app, &owner.1, &org, &admin, json!(["admin"])).await,
        StatusCode::OK
    );
    assert_eq!(
        add_member(&app, &owner.1, &org, &member, json!(["member"])).await,
        StatusCode::OK
    );
    World {
        app,
        org,
        other_org,
        owner,
        admin,
        member,
        outsider,
    }
}

async fn define_role(
    app: &TestApp,
    token: &str,
    org: &str,
    name: &str,
    permissions: Value,
) -> String {
    let response = app
        .call(
            Method::POST,
            &format!("/v1/organizations/{org}/roles"),
            Some(token),
            Some(&json!({"name": name, "permissions": permissions})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    body(response).await["role_id"].as_str().unwrap().to_owned()
}

e2e! { async fn a_role_change_is_answered_by_authorize_as_soon_as_the_change_returns(backend) {
    let w = world(backend).await;
    let app = &w.app;
    let role = define_role(app, &w.owner.1, &w.org, "billing", json!(["invoices:*"])).await;
    let response = app
        .call(
            Method::PUT,
            &format!("/v1/organizations/{}/members/{}/roles", w.org, w.member.0),
            Some(&w.owner.1),
            Some(&json!({"roles": ["member", role]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let decision = app.authorize(&w.member.1, &w.org, "invoices:delete").await;
    assert_eq!(decision, json!({"allowed": true, "reason": "granted"}));

    // Narrow the role: the very next authorize sees it (no sleep anywhere).
    let response = app
        .call(
            Method::PATCH,
            &format!("/v1/organizations/{}/roles/{role}", w.org),
            Some(&w.owner.1),
            Some(&json!({"permissions": ["invoices:read"]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        body(response).await["permissions"],
        json!(["invoices:read"])
    );
    let decision = app.authorize(&w.member.1, &w.org, "invoices:delete").await;
    assert_eq!(
        decision,
        json!({"allowed": false, "reason": "permission_not_granted"})
    );
    assert_eq!(
        app.authorize(&w.member.1, &w.org, "invoices:read").await["allowed"],
        true
    );

    // Take the role away, then the membership.
    let response = app
        .call(
            Method::PUT,
            &format!("/v1/organizations/{}/members/{}/roles", w.org, w.member.0),
            Some(&w.owner.1),
            Some(&json!({"roles": ["member"]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        app.authorize(&w.member.1, &w.org, "invoices:read").await["allowed"],
        false
    );
    let response = app
        .call(
            Method::DELETE,
            &format!("/v1/organizations/{}/members/{}", w.org, w.member.0),
            Some(&w.owner.1),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let decision = app.authorize(&w.member.1, &w.org, "organization:read").await;
    assert_eq!(
        decision,
        json!({"allowed": false, "reason": "not_a_member"})
    );
    let mine = body(app.get_auth("/v1/organizations", &w.member.1).await).await;
    assert_eq!(mine["organizations"], json!([]));
}}

e2e! { async fn authorize_answers_every_reason_and_refuses_bad_input(backend) {
    let w = world(backend).await;
    let app = &w.app;
    assert_eq!(
        app.authorize(&w.owner.1, &w.org, "anything:at_all").await,
        json!({"allowed": true, "reason": "granted"})
    );
    assert_eq!(
        app.authorize(&w.outsider.1, &w.org, "organization:read").await["reason"],
        "not_a_member"
    );
    // An organization that does not exist answers like one the subject is not in.
    assert_eq!(
        app.authorize(
            &w.owner.1,
            &Uuid::new_v4().to_string(),
            "organization:read"
        )
        .await["reason"],
        "not_a_member"
    );
    assert_eq!(
        app.authorize("v4.public.garbage", &w.org, "organization:read").await,
        json!({"allowed": false, "reason": "invalid_token"})
    );
    for bad in ["invoices:*", "*", "INVOICES:READ", "", "no-colon"] {
        let response = app
            .post(
                "/v1/auth/authorize",
                &json!({"token": w.owner.1, "organization_id": w.org, "permission": bad}),
            )
            .await;
        assert_eq!(
            error_code(response, StatusCode::BAD_REQUEST).await,
            "invalid_permission",
            "{bad}"
        );
    }
    // Holding the subject token is what entitles a caller: an admin's header, an
    // outsider's header and no header at all get the same answer (issue 19: an
    // outsider must not learn more without a header than with one).
    let asked_by = |caller: &str| {
        app.client
            .post(app.url("/v1/auth/authorize"))
            .bearer_auth(caller.to_owned())
            .json(&json!({"token": w.member.1, "organization_id": w.org, "permission": "organization:read"}))
            .send()
    };
    let header_less = app.authorize(&w.member.1, &w.org, "organization:read").await;
    for caller in [&w.admin.1, &w.outsider.1] {
        let response = asked_by(caller).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, header_less);
    }
    // A logged-out subject token is invalid at once.
    assert_eq!(
        app.logout(&w.member.1).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.authorize(&w.member.1, &w.org, "organization:read").await["reason"],
        "invalid_token"
    );
}}

/// One request of the matrix: built fresh for each caller, because writes consume
/// what they act on (a deleted role cannot be deleted twice).
struct Probe {
    name: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
}

/// Every organization route, against `org`, with targets the owner prepared.
async fn probes(w: &World, org: &str) -> Vec<Probe> {
    let app = &w.app;
    let role = define_role(
        app,
        &w.owner.1,
        &w.org,
        &format!("r{}", Uuid::new_v4().simple()),
        json!(["members:read"]),
    )
    .await;
    let target = app.new_user().await;
    assert_eq!(
        add_member(app, &w.owner.1, &w.org, &target, json!(["member"])).await,
        StatusCode::OK
    );
    let newcomer = app.new_user().await;
    let (status, pending) = app
        .invite(
            &w.owner.1,
            &w.org,
            app.new_user().await.0,
            json!(["member"]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let invitation = pending["invitation_id"].as_str().unwrap().to_owned();
    let sa = body(
        app.call(
            Method::POST,
            &format!("/v1/organizations/{}/service-accounts", w.org),
            Some(&w.owner.1),
            Some(&json!({"name": "worker", "roles": ["member"]})),
        )
        .await,
    )
    .await["service_account_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = |rest: &str| format!("/v1/organizations/{org}{rest}");
    vec![
        Probe {
            name: "get org",
            method: Method::GET,
            path: o(""),
            body: None,
        },
        Probe {
            name: "patch org",
            method: Method::PATCH,
            path: o(""),
            body: Some(json!({"name": "Renamed"})),
        },
        Probe {
            name: "list members",
            method: Method::GET,
            path: o("/members"),
            body: None,
        },
        Probe {
            name: "add member",
            method: Method::POST,
            path: o("/members"),
            body: Some(json!({"user_id": newcomer.0, "roles": ["member"]})),
        },
        Probe {
            name: "invite",
            method: Method::POST,
            path: o("/invitations"),
            body: Some(json!({"user_id": newcomer.0, "roles": ["member"]})),
        },
        Probe {
            name: "list invitations",
            method: Method::GET,
            path: o("/invitations"),
            body: None,
        },
        Probe {
            name: "revoke invitation",
            method: Method::DELETE,
            path: o(&format!("/invitations/{invitation}")),
            body: None,
        },
        Probe {
            name: "set roles",
            method: Method::PUT,
            path: o(&format!("/members/{}/roles", target.0)),
            body: Some(json!({"roles": ["auditor"]})),
        },
        Probe {
            name: "remove member",
            method: Method::DELETE,
            path: o(&format!("/members/{}", target.0)),
            body: None,
        },
        Probe {
            name: "list roles",
            method: Method::GET,
            path: o("/roles"),
            body: None,
        },
        Probe {
            name: "create role",
            method: Method::POST,
            path: o("/roles"),
            body: Some(json!({"name": "x", "permissions": ["members:read"]})),
        },
        Probe {
            name: "get role",
            method: Method::GET,
            path: o(&format!("/roles/{role}")),
            body: None,
        },
        Probe {
            name: "patch role",
            method: Method::PATCH,
            path: o(&format!("/roles/{role}")),
            body: Some(json!({"permissions": ["roles:read"]})),
        },
        Probe {
            name: "delete role",
            method: Method::DELETE,
            path: o(&format!("/roles/{role}")),
            body: None,
        },
        Probe {
            name: "list service accounts",
            method: Method::GET,
            path: o("/service-accounts"),
            body: None,
        },
        Probe {
            name: "create service account",
            method: Method::POST,
            path: o("/service-accounts"),
            body: Some(json!({"name": "bot", "roles": ["member"]})),
        },
        Probe {
            name: "get service account",
            method: Method::GET,
            path: o(&format!("/service-accounts/{sa}")),
            body: None,
        },
        Probe {
            name: "set service account roles",
            method: Method::PUT,
            path: o(&format!("/service-accounts/{sa}/roles")),
            body: Some(json!({"roles": ["auditor"]})),
        },
        Probe {
            name: "rotate secret",
            method: Method::POST,
            path: o(&format!("/service-accounts/{sa}/secret")),
            body: None,
        },
        Probe {
            name: "delete service account",
            method: Method::DELETE,
            path: o(&format!("/service-accounts/{sa}")),
            body: None,
        },
    ]
}

/// What each caller gets from each route: `outsider` 404 everywhere; a member reads
/// members and roles but nothing else; admins and owners do everything but add a
/// member directly (platform administrators only: everyone else invites).
fn expected(caller: &str, probe: &str) -> StatusCode {
    let read_for_members = ["get org", "list members", "list roles", "get role"];
    match caller {
        "outsider" => StatusCode::NOT_FOUND,
        "member" if read_for_members.contains(&probe) => StatusCode::OK,
        "member" => StatusCode::FORBIDDEN,
        _ => match probe {
            "add member" => StatusCode::FORBIDDEN,
            "invite" | "create role" | "create service account" => StatusCode::CREATED,
            "remove member" | "revoke invitation" | "delete role" | "delete service account" => {
                StatusCode::NO_CONTENT
            }
            _ => StatusCode::OK,
        },
    }
}

e2e! { async fn every_organization_route_keeps_tenants_apart(backend) {
    let w = world(backend).await;
    let callers = [
        ("outsider", w.outsider.1.clone()),
        ("member", w.member.1.clone()),
        ("admin", w.admin.1.clone()),
        ("owner", w.owner.1.clone()),
    ];
    let mut failures = Vec::new();
    for (caller, token) in &callers {
        for probe in probes(&w, &w.org).await {
            let response = w
                .app
                .call(
                    probe.method.clone(),
                    &probe.path,
                    Some(token),
                    probe.body.as_ref(),
                )
                .await;
            let status = response.status();
            let answer = if status == StatusCode::NO_CONTENT {
                Value::Null
            } else {
                body(response).await
            };
            let want = expected(caller, probe.name);
            if status != want {
                failures.push(format!(
                    "{caller} {}: {status} {answer}, want {want}",
                    probe.name
                ));
            }
            if status == StatusCode::NOT_FOUND {
                assert_eq!(answer["error"], "not_found", "{caller} {}", probe.name);
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Id guessing: the owner of org A reaches nothing of org B, neither through B's
    // paths nor by putting B's ids under A's path.
    let b_role = define_role(
        &w.app,
        &w.outsider.1,
        &w.other_org,
        "theirs",
        json!(["x:y"]),
    )
    .await;
    for probe in probes(&w, &w.other_org).await {
        let response = w
            .app
            .call(
                probe.method.clone(),
                &probe.path,
                Some(&w.owner.1),
                probe.body.as_ref(),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "owner of A on B: {}",
            probe.name
        );
    }
    for (method, path) in [
        (
            Method::GET,
            format!("/v1/organizations/{}/roles/{b_role}", w.org),
        ),
        (
            Method::DELETE,
            format!("/v1/organizations/{}/roles/{b_role}", w.org),
        ),
        (
            Method::DELETE,
            format!("/v1/organizations/{}/members/{}", w.org, w.outsider.0),
        ),
        (Method::GET, format!("/v1/organizations/{}", Uuid::new_v4())),
        (
            Method::GET,
            "/v1/organizations/not-a-uuid/members".to_owned(),
        ),
    ] {
        let response = w
            .app
            .call(method.clone(), &path, Some(&w.owner.1), None)
            .await;
        assert_eq!(
            error_code(response, StatusCode::NOT_FOUND).await,
            "not_found",
            "{method} {path}"
        );
    }
    // Assigning another organization's role is refused, not silently accepted.
    let response = w
        .app
        .call(
            Method::PUT,
            &format!("/v1/organizations/{}/members/{}/roles", w.org, w.member.0),
            Some(&w.owner.1),
            Some(&json!({"roles": [b_role]})),
        )
        .await;
    assert_eq!(
        error_code(response, StatusCode::BAD_REQUEST).await,
        "unknown_role"
    );
    // Without a token: 401 everywhere.
    for probe in probes(&w, &w.org).await {
        let response = w
            .app
            .call(probe.method.clone(), &probe.path, None, probe.body.as_ref())
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{}",
            probe.name
        );
    }
}}

e2e! { async fn admins_cannot_grant_what_they_do_not_hold_and_the_last_owner_stays(backend) {
    let w = world(backend).await;
    let app = &w.app;
    let path = |user: Uuid| format!("/v1/organizations/{}/members/{user}/roles", w.org);
    // An admin cannot make anyone an owner, nor define a role broader than theirs.
    let response = app
        .call(
            Method::PUT,
            &path(w.member.0),
            Some(&w.admin.1),
            Some(&json!({"roles": ["owner"]})),
        )
        .await;
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "cannot_grant"
    );
    let response = app
        .call(
            Method::POST,
            &format!("/v1/organizations/{}/roles", w.org),
            Some(&w.admin.1),
            Some(&json!({"name": "everything", "permissions": ["*"]})),
        )
        .await;
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "cannot_grant"
    );
    // ... nor demote or remove the owner.
    let response = app
        .call(
            Method::PUT,
            &path(w.owner.0),
            Some(&w.admin.1),
            Some(&json!({"roles": ["member"]})),
        )
        .await;
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "cannot_grant"
    );
    let response = app
        .call(
            Method::DELETE,
            &format!("/v1/organizations/{}/members/{}", w.org, w.owner.0),
            Some(&w.admin.1),
            None,
        )
        .await;
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "cannot_grant"
    );
    // An admin may hand out what they hold.
    let role = define_role(app, &w.admin.1, &w.org, "support", json!(["members:read"])).await;
    let response = app
        .call(
            Method::PUT,
            &path(w.member.0),
            Some(&w.admin.1),
            Some(&json!({"roles": ["member", role]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // The last owner can neither leave nor be demoted, even by themself.
    let response = app
        .call(
            Method::DELETE,
            &format!("/v1/organizations/{}/members/{}", w.org, w.owner.0),
            Some(&w.owner.1),
            None,
        )
        .await;
    assert_eq!(
        error_code(response, StatusCode::CONFLICT).await,
        "last_owner"
    );
    let response = app
        .call(
            Method::PUT,
            &path(w.owner.0),
            Some(&w.owner.1),
            Some(&json!({"roles": ["admin"]})),
        )
        .await;
    assert_eq!(
        error_code(response, StatusCode::CONFLICT).await,
        "last_owner"
    );
    // With a second owner, the first may step down.
    let response = app
        .call(
            Method::PUT,
            &path(w.admin.0),
            Some(&w.owner.1),
            Some(&json!({"roles": ["owner"]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .call(
            Method::PUT,
            &path(w.owner.0),
            Some(&w.owner.1),
            Some(&json!({"roles": ["member"]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // A member may leave on their own.
    let response = app
        .call(
            Method::DELETE,
            &format!("/v1/organizations/{}/members/{}", w.org, w.member.0),
            Some(&w.member.1),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}}

e2e! { async fn organization_input_is_validated_and_slugs_are_unique(backend) {
    let app = spawn_app_on(backend).await;
    let (_, token) = app.new_user().await;
    let slug = slug();
    create_org(&app, &token, &slug).await;
    let post = |body: Value| {
        app.client
            .post(app.url("/v1/organizations"))
            .bearer_auth(token.clone())
            .json(&body)
            .send()
    };
    let response = post(json!({"slug": slug.to_uppercase(), "name": "Again"}))
        .await
        .unwrap();
    assert_eq!(
        error_code(response, StatusCode::CONFLICT).await,
        "slug_taken"
    );
    for (body, code) in [
        (json!({"slug": "a", "name": "x"}), "invalid_slug"),
        (json!({"slug": "-bad-", "name": "x"}), "invalid_slug"),
        (json!({"slug": "fine-slug", "name": ""}), "invalid_name"),
        (
            json!({"slug": "fine-slug", "name": "x".repeat(101)}),
            "invalid_name",
        ),
    ] {
        let response = post(body.clone()).await.unwrap();
        assert_eq!(
            error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
            code,
            "{body}"
        );
    }
    // A required field left out of well-formed JSON is an incomplete request.
    let response = post(json!({"slug": "x"})).await.unwrap();
    assert_eq!(
        error_code(response, StatusCode::BAD_REQUEST).await,
        "invalid_request"
    );

    // Settings: replaced as a whole, validated, shown back.
    let org = body(app.get_auth("/v1/organizations", &token).await).await["organizations"][0]
        ["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let patch = |body: Value| {
        app.client
            .patch(app.url(&format!("/v1/organizations/{org}")))
            .bearer_auth(token.clone())
            .json(&body)
            .send()
    };
    let response = patch(json!({"settings": {"locale": "fr-CH", "mfa.required": "true"}}))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let shown = body(response).await;
    assert_eq!(
        shown["settings"],
        json!({"locale": "fr-CH", "mfa.required": "true"})
    );
    for bad in [
        json!({"settings": {"Bad Key": "x"}}),
        json!({"settings": {"k": "v".repeat(1025)}}),
        json!({"settings": {"k": "line\nbreak"}}),
    ] {
        let response = patch(bad.clone()).await.unwrap();
        assert_eq!(
            error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
            "invalid_settings",
            "{bad}"
        );
    }
    let response = post(json!({"slug": "fine-slug", "name": "x", "owner": "me"}))
        .await
        .unwrap();
    assert_eq!(
        error_code(response, StatusCode::BAD_REQUEST).await,
        "invalid_json"
    );

    // Twenty concurrent creations of one slug: exactly one organization.
    let contested = self::slug();
    let attempts = (0..20).map(|_| post(json!({"slug": contested, "name": "Race"})));
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT));
}}

e2e! { async fn a_service_account_gets_tokens_with_its_secret_and_loses_them_with_it(backend) {
    let w = world(backend).await;
    let app = &w.app;
    let response = app
        .call(
            Method::POST,
            &format!("/v1/organizations/{}/service-accounts", w.org),
            Some(&w.admin.1),
            Some(&json!({"name": "billing worker", "roles": ["auditor"]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let created = body(response).await;
    let client_id = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    assert!(secret.len() > 40);

    // The secret is never shown again, nor stored.
    let listed = body(
        app.get_auth(
            &format!("/v1/organizations/{}/service-accounts", w.org),
            &w.admin.1,
        )
        .await,
    )
    .await;
    assert!(!listed.to_string().contains(&secret));
    assert!(listed["service_accounts"][0].get("client_secret").is_none());
    let stored = app.stored_events().await;
    assert!(!stored.is_empty());
    assert!(stored.iter().all(|e| !e.payload.contains(&secret)));

    // Client credentials, as a form (OAuth) and as JSON.
    let form = app
        .client
        .post(app.url("/v1/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    assert_eq!(form.headers()["cache-control"], "no-store");
    let issued = body(form).await;
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["roles"], json!(["auditor"]));
    let sa_token = issued["access_token"].as_str().unwrap().to_owned();
    let json_grant = app.client_credentials(&client_id, &secret).await;
    assert_eq!(json_grant.status(), StatusCode::OK);

    // It carries its roles like a member.
    assert_eq!(
        app.authorize(&sa_token, &w.org, "audit:read").await["allowed"],
        true
    );
    assert_eq!(
        app.authorize(&sa_token, &w.org, "members:manage").await["reason"],
        "permission_not_granted"
    );
    // Its tokens are scoped to its organization.
    assert_eq!(
        app.authorize(&sa_token, &w.other_org, "audit:read").await["reason"],
        "token_scoped_to_another_organization"
    );
    let visible = app
        .get_auth(&format!("/v1/organizations/{}/members", w.org), &sa_token)
        .await;
    assert_eq!(visible.status(), StatusCode::OK);
    let hidden = app
        .get_auth(&format!("/v1/organizations/{}", w.other_org), &sa_token)
        .await;
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);

    // Wrong, unknown and malformed credentials look alike.
    for (id, attempt) in [
        (client_id.clone(), format!("{secret}x")),
        (client_id.clone(), "kls_short".to_owned()),
        (Uuid::new_v4().to_string(), secret.clone()),
        ("not-an-id".to_owned(), secret.clone()),
    ] {
        let response = app.client_credentials(&id, &attempt).await;
        let answer = body(response).await;
        assert_eq!(answer["error"], "invalid_client", "{answer}");
        assert!(!answer.to_string().contains(&secret));
    }
    let response = app
        .post(
            "/v1/auth/token",
            &json!({"grant_type": "password", "client_id": client_id}),
        )
        .await;
    assert_eq!(
        error_code(response, StatusCode::BAD_REQUEST).await,
        "unsupported_grant_type"
    );

    // Rotation: the old secret stops working at once.
    let rotated = app
        .rotate_service_account_secret(&w.admin.1, &w.org, &client_id)
        .await;
    assert_ne!(rotated, secret);
    let old = app.client_credentials(&client_id, &secret).await;
    assert_eq!(
        error_code(old, StatusCode::UNAUTHORIZED).await,
        "invalid_client"
    );

    // Deletion: its tokens stop being accepted at once.
    let response = app
        .call(
            Method::DELETE,
            &format!("/v1/organizations/{}/service-accounts/{client_id}", w.org),
            Some(&w.admin.1),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.authorize(&sa_token, &w.org, "audit:read").await["reason"],
        "invalid_token"
    );
    let denied = app
        .get_auth(&format!("/v1/organizations/{}/members", w.org), &sa_token)
        .await;
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    let new = app.client_credentials(&client_id, &rotated).await;
    assert_eq!(
        error_code(new, StatusCode::UNAUTHORIZED).await,
        "invalid_client"
    );
}}

e2e! { async fn a_scoped_token_carries_the_organization_and_keeps_it_across_refreshes(backend) {
    let app = spawn_app_on(backend).await;
    let (email, tokens) = app.signed_in_user().await;
    let org = create_org(&app, &tokens.access_token, &slug()).await;
    let other = create_org(&app, &tokens.access_token, &slug()).await;
    let switch = |organization_id: Value, token: String| {
        app.client
            .post(app.url("/v1/auth/switch-organization"))
            .bearer_auth(token)
            .json(&json!({ "organization_id": organization_id }))
            .send()
    };
    let response = switch(json!(org), tokens.access_token.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let scoped = body(response).await;
    assert_eq!(scoped["organization_id"], json!(org));
    assert_eq!(scoped["roles"], json!(["owner"]));
    let scoped_token = scoped["access_token"].as_str().unwrap().to_owned();
    let claims = app.state.auth.tokens().verify(&scoped_token).unwrap();
    assert_eq!(
        claims.organization_id.map(|o| o.to_string()),
        Some(org.clone())
    );
    assert_eq!(claims.roles, vec!["owner".to_owned()]);

    // Scoped to one organization, the token decides nothing for another.
    assert_eq!(
        app.authorize(&scoped_token, &org, "x:y").await["allowed"],
        true
    );
    assert_eq!(
        app.authorize(&scoped_token, &other, "x:y").await["reason"],
        "token_scoped_to_another_organization"
    );

    // The session remembers: a refresh answers a token with the same scope.
    let refreshed = app.tokens(app.refresh(&tokens.refresh_token).await).await;
    let claims = app
        .state
        .auth
        .tokens()
        .verify(&refreshed.access_token)
        .unwrap();
    assert_eq!(
        claims.organization_id.map(|o| o.to_string()),
        Some(org.clone())
    );

    // An organization one does not belong to: 404, like one that does not exist.
    let (_, stranger) = app.new_user().await;
    let response = switch(json!(org), stranger).await.unwrap();
    assert_eq!(
        error_code(response, StatusCode::NOT_FOUND).await,
        "not_found"
    );

    // Back to unscoped.
    let response = switch(Value::Null, refreshed.access_token).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let unscoped = body(response).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(app
        .state
        .auth
        .tokens()
        .verify(&unscoped)
        .unwrap()
        .organization_id
        .is_none());
    let _ = email;
}}

e2e! { async fn effective_permissions_are_shown_to_the_user_and_their_admins_only(backend) {
    let w = world(backend).await;
    let app = &w.app;
    let path = |user: Uuid, org: &str| format!("/v1/auth/permissions/{user}?organization_id={org}");
    let own = app.get_auth(&path(w.member.0, &w.org), &w.member.1).await;
    assert_eq!(own.status(), StatusCode::OK);
    let own = body(own).await;
    assert_eq!(own["roles"], json!(["member"]));
    assert!(own["permissions"]
        .as_array()
        .unwrap()
        .contains(&json!("organization:read")));
    let by_admin = app.get_auth(&path(w.member.0, &w.org), &w.admin.1).await;
    assert_eq!(by_admin.status(), StatusCode::OK);
    // A fellow member, an outsider, a stranger's id: all 404.
    for (user, token) in [
        (w.admin.0, &w.member.1),
        (w.member.0, &w.outsider.1),
        (Uuid::new_v4(), &w.owner.1),
    ] {
        let response = app.get_auth(&path(user, &w.org), token).await;
        assert_eq!(
            error_code(response, StatusCode::NOT_FOUND).await,
            "not_found"
        );
    }
    let response = app
        .get_auth(&format!("/v1/auth/permissions/{}", w.member.0), &w.member.1)
        .await;
    assert_eq!(
        error_code(response, StatusCode::BAD_REQUEST).await,
        "invalid_query"
    );
}}

e2e! { async fn a_suspended_account_cannot_log_in_and_its_sessions_end_at_once(backend) {
    let w = world(backend).await;
    let app = &w.app;
    let (admin_id, admin_token) = app.new_user().await;
    app.make_platform_admin(admin_id).await;
    // Ordinary users cannot reach the admin routes.
    let response = app.get_auth("/v1/admin/users", &w.member.1).await;
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "forbidden"
    );

    let (email, victim) = app.signed_in_user().await;
    let victim_id: Uuid = body(app.me(&victim.access_token).await).await["user_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        add_member(
            app,
            &w.owner.1,
            &w.org,
            &(victim_id, victim.access_token.clone()),
            json!(["member"])
        )
        .await,
        StatusCode::OK
    );
    let response = app
        .call(
            Method::POST,
            &format!("/v1/admin/users/{victim_id}/suspend"),
            Some(&admin_token),
            Some(&json!({"reason": "chargeback fraud"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // Everything the account held stops at once.
    assert_eq!(app.validate(&victim.access_token).await["active"], false);
    assert_eq!(
        app.me(&victim.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&victim.refresh_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.authorize(&victim.access_token, &w.org, "organization:read").await["reason"],
        "invalid_token"
    );
    // The right password says suspended; a wrong one says no more than usual.
    let response = app.login(&email, PASSWORD).await;
    assert_eq!(
        error_code(response, StatusCode::FORBIDDEN).await,
        "account_suspended"
    );
    let response = app.login(&email, "wrong horse battery staple").await;
    assert_eq!(
        error_code(response, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );

    // The admin sees it, with search.
    let page = body(
        app.get_auth(
            &format!("/v1/admin/users?query={}", &email[..12]),
            &admin_token,
        )
        .await,
    )
    .await;
    let found = &page["users"][0];
    assert_eq!(found["email"], email);
    assert_eq!(found["suspended"], true);

    // Reactivated, it logs in again (and is still a member).
    let response = app
        .call(
            Method::POST,
            &format!("/v1/admin/users/{victim_id}/reactivate"),
            Some(&admin_token),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let again = app.tokens(app.login(&email, PASSWORD).await).await;
    assert_eq!(
        app.authorize(&again.access_token, &w.org, "organization:read").await["allowed"],
        true
    );

    // Every admin action is in the audit trail with its actor.
    let actors: Vec<(String, String)> = app
        .db()
        .rows(
            "SELECT action, actor FROM audit_trail
              WHERE action IN ('UserSuspended', 'UserReactivated') ORDER BY global_position",
            &[],
        )
        .await;
    assert_eq!(
        actors,
        vec![
            ("UserSuspended".to_owned(), admin_id.to_string()),
            ("UserReactivated".to_owned(), admin_id.to_string()),
        ]
    );
}}

e2e! { async fn a_platform_admin_manages_every_organization_and_can_suspend_one(backend) {
    let w = world(backend).await;
    let app = &w.app;
    let (admin_id, admin_token) = app.new_user().await;
    app.make_platform_admin(admin_id).await;
    let all = body(app.get_auth("/v1/admin/organizations", &admin_token).await).await;
    assert_eq!(all["organizations"].as_array().unwrap().len(), 2);
    // Not a member, yet stands in the organization with every permission.
    let members = app
        .get_auth(
            &format!("/v1/organizations/{}/members", w.org),
            &admin_token,
        )
        .await;
    assert_eq!(members.status(), StatusCode::OK);

    let response = app
        .call(
            Method::POST,
            &format!("/v1/admin/organizations/{}/suspend", w.org),
            Some(&admin_token),
            Some(&json!({"reason": "unpaid"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.authorize(&w.owner.1, &w.org, "organization:read").await["reason"],
        "organization_suspended"
    );
    let response = app
        .call(
            Method::POST,
            &format!("/v1/organizations/{}/roles", w.org),
            Some(&w.owner.1),
            Some(&json!({"name": "late", "permissions": ["a:b"]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = app
        .call(
            Method::POST,
            &format!("/v1/admin/organizations/{}/reactivate", w.org),
            Some(&admin_token),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.authorize(&w.owner.1, &w.org, "organization:read").await["allowed"],
        true
    );
}}

e2e! {
/// On both back ends with NATS on: the derived events come from the relay, which
/// does not depend on the storage.
async fn every_change_of_effective_permissions_reaches_nats_naming_who_is_affected(backend) {
    let w = world_in(spawn_app_with_nats(backend).await).await;
    let app = &w.app;
    let role = define_role(app, &w.owner.1, &w.org, "billing", json!(["invoices:*"])).await;
    let response = app
        .call(
            Method::PUT,
            &format!("/v1/organizations/{}/members/{}/roles", w.org, w.member.0),
            Some(&w.owner.1),
            Some(&json!({"roles": [role]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .call(
            Method::PATCH,
            &format!("/v1/organizations/{}/roles/{role}", w.org),
            Some(&w.owner.1),
            Some(&json!({"permissions": ["invoices:read"]})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (admin_id, admin_token) = app.new_user().await;
    app.make_platform_admin(admin_id).await;
    let response = app
        .call(
            Method::POST,
            &format!("/v1/admin/users/{}/suspend", w.admin.0),
            Some(&admin_token),
            Some(&json!({"reason": "left the company"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // Causes and the users they name, in log order.
    let owner = w.owner.0.to_string();
    let admin = w.admin.0.to_string();
    let member = w.member.0.to_string();
    let outsider = w.outsider.0.to_string();
    let expected: Vec<(&str, &str, Vec<&str>)> = vec![
        ("OrganizationCreated", &w.org, vec![&owner]),
        ("OrganizationCreated", &w.other_org, vec![&outsider]),
        ("MemberAdded", &w.org, vec![&admin]),
        ("MemberAdded", &w.org, vec![&member]),
        ("MemberRolesChanged", &w.org, vec![&member]),
        ("PermissionUpdated", &w.org, vec![&member]),
        ("UserSuspended", &w.org, vec![&admin]),
    ];
    let stored = app.count_events().await;
    let published = app
        .published(stored as usize + expected.len(), std::time::Duration::from_secs(20))
        .await;
    assert_eq!(published.len(), stored as usize + expected.len());
    let derived: Vec<_> = published
        .iter()
        .filter(|(_, _, e)| e["event_type"] == "EffectivePermissionsChanged")
        .collect();
    assert_eq!(derived.len(), expected.len(), "{derived:#?}");
    for ((subject, id, event), (cause, org, users)) in derived.iter().zip(&expected) {
        assert_eq!(
            subject,
            &format!(
                "{}.organization.EffectivePermissionsChanged",
                app.resources.subject_prefix
            )
        );
        assert_eq!(id.as_deref(), event["event_id"].as_str());
        assert_eq!(event["aggregate_id"], json!(org));
        assert_eq!(
            event["data"]["cause"]["event_type"],
            json!(cause),
            "{event}"
        );
        assert_eq!(event["data"]["user_ids"], json!(users), "{event}");
        assert_eq!(event["data"]["organization_id"], json!(org));
    }
    // Each derived event follows its cause directly.
    for (i, (_, _, event)) in published.iter().enumerate() {
        if event["event_type"] == "EffectivePermissionsChanged" {
            let cause = &published[i - 1].2;
            assert_eq!(cause["event_id"], event["data"]["cause"]["event_id"]);
        }
    }
}}

e2e! { async fn platform_admins_appoint_others_and_every_org_change_is_audited_with_its_actor(backend) {
    let w = world(backend).await;
    let app = &w.app;
    let (root, root_token) = app.new_user().await;
    app.make_platform_admin(root).await;
    // Appoint: the appointee reaches the admin routes at once; removed, no more.
    let path = format!("/v1/admin/users/{}/platform-admin", w.member.0);
    let response = app.call(Method::PUT, &path, Some(&root_token), None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = app.call(Method::PUT, &path, Some(&root_token), None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT, "idempotent");
    let seen = app
        .get_auth(&format!("/v1/admin/users/{}", w.owner.0), &w.member.1)
        .await;
    assert_eq!(seen.status(), StatusCode::OK);
    let seen = body(seen).await;
    assert_eq!(seen["user_id"], json!(w.owner.0));
    assert_eq!(seen["platform_admin"], false);
    assert!(seen.get("password_hash").is_none());
    let response = app
        .call(Method::DELETE, &path, Some(&root_token), None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let refused = app.get_auth("/v1/admin/organizations", &w.member.1).await;
    assert_eq!(
        error_code(refused, StatusCode::FORBIDDEN).await,
        "forbidden"
    );
    let unknown = app
        .get_auth(&format!("/v1/admin/users/{}", Uuid::new_v4()), &root_token)
        .await;
    assert_eq!(
        error_code(unknown, StatusCode::NOT_FOUND).await,
        "not_found"
    );
    let unknown = app
        .call(
            Method::POST,
            &format!("/v1/admin/users/{}/suspend", Uuid::new_v4()),
            Some(&root_token),
            Some(&json!({"reason": "x"})),
        )
        .await;
    assert_eq!(
        error_code(unknown, StatusCode::NOT_FOUND).await,
        "not_found"
    );

    // The audit trail names who did each organization change.
    let rows: Vec<(String, String, String)> = app
        .db()
        .rows(
            "SELECT action, actor, subject FROM audit_trail
              WHERE aggregate_type = 'organization' AND aggregate_id = $1
              ORDER BY global_position",
            &[(&w.org).into()],
        )
        .await;
    let owner = w.owner.0.to_string();
    // The owner invites; each invitee accepts, and so is the actor of joining.
    let (admin, member) = (w.admin.0.to_string(), w.member.0.to_string());
    assert_eq!(
        rows,
        vec![
            ("OrganizationCreated".into(), owner.clone(), w.org.clone()),
            ("MemberInvited".into(), owner.clone(), admin.clone()),
            ("InvitationAccepted".into(), admin.clone(), admin.clone()),
            ("MemberAdded".into(), admin.clone(), admin.clone()),
            ("MemberInvited".into(), owner.clone(), member.clone()),
            ("InvitationAccepted".into(), member.clone(), member.clone()),
            ("MemberAdded".into(), member.clone(), member),
        ]
    );
    let member = w.member.0.to_string();
    let grants: Vec<String> = app
        .db()
        .scalars(
            "SELECT actor FROM audit_trail WHERE action IN ('PlatformAdminGranted', 'PlatformAdminRevoked')
                AND subject = $1 ORDER BY global_position",
            &[(&member).into()],
        )
        .await;
    assert_eq!(grants, vec![root.to_string(), root.to_string()]);
}}

e2e! { async fn a_mistyped_query_string_gets_the_json_envelope(backend) {
    let app = spawn_app_on(backend).await;
    let (admin, token) = app.new_user().await;
    app.make_platform_admin(admin).await;
    for path in [
        "/v1/admin/users?limit=abc".to_owned(),
        "/v1/admin/users?limit=0".to_owned(),
        "/v1/admin/users?limit=99999999999999999999".to_owned(),
        format!("/v1/auth/permissions/{admin}?organization_id=%ZZ"),
        format!("/v1/auth/permissions/{admin}?organization_id=not-a-uuid"),
    ] {
        let response = app.get_auth(&path, &token).await;
        assert_eq!(
            error_code(response, StatusCode::BAD_REQUEST).await,
            "invalid_query",
            "{path}"
        );
    }
}}
