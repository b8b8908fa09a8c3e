//! A token scoped to one organization acts in that organization only: on Keyledger's
//! own organization, role, member, service-account and audit routes as on
//! `authorize`, and never platform-wide.

use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

async fn scoped_to(app: &TestApp, token: &str, org: &str) -> String {
    let response = app
        .call(
            Method::POST,
            "/v1/auth/switch-organization",
            Some(token),
            Some(&json!({ "organization_id": org })),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Requests on the routes of `org`, reads and writes.
fn routes_of(org: &str, member: Uuid) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/v1/organizations/{org}"), None),
        (
            Method::PATCH,
            format!("/v1/organizations/{org}"),
            Some(json!({"name": "Renamed"})),
        ),
        (
            Method::GET,
            format!("/v1/organizations/{org}/members"),
            None,
        ),
        (
            Method::PUT,
            format!("/v1/organizations/{org}/members/{member}/roles"),
            Some(json!({"roles": ["admin"]})),
        ),
        (
            Method::DELETE,
            format!("/v1/organizations/{org}/members/{member}"),
            None,
        ),
        (Method::GET, format!("/v1/organizations/{org}/roles"), None),
        (
            Method::POST,
            format!("/v1/organizations/{org}/roles"),
            Some(json!({"name": "billing", "permissions": ["invoices:read"]})),
        ),
        (
            Method::GET,
            format!("/v1/organizations/{org}/service-accounts"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/audit/events?organization_id={org}"),
            None,
        ),
    ]
}

e2e! { async fn a_token_scoped_to_one_organization_is_refused_on_the_routes_of_another(backend) {
    let app = spawn_app_on(backend).await;
    let (_, token) = app.new_user().await;
    let invitee = app.new_user().await;
    let member = invitee.0;
    let home = app.new_organization(&token).await;
    let elsewhere = app.new_organization(&token).await;
    for org in [&home, &elsewhere] {
        assert_eq!(
            app.join(&token, org, &invitee, json!(["member"])).await,
            StatusCode::OK
        );
    }
    let scoped = scoped_to(&app, &token, &home).await;

    // The owner of both, with a token scoped to `home`: 403 on every route of the other.
    for (method, path, request) in routes_of(&elsewhere, member) {
        let response = app.call(method.clone(), &path, Some(&scoped), request.as_ref()).await;
        assert_eq!(
            error_code(response, StatusCode::FORBIDDEN).await,
            "forbidden",
            "{method} {path}"
        );
    }
    // Nothing was changed there.
    let members = body(
        app.get_auth(&format!("/v1/organizations/{elsewhere}/members"), &token)
            .await,
    )
    .await;
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
    // The organization list shows the token's own organization only.
    let listed = body(app.get_auth("/v1/organizations", &scoped).await).await;
    let ids: Vec<&Value> = listed["organizations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["organization_id"])
        .collect();
    assert_eq!(ids, vec![&json!(home)]);
    let all = body(app.get_auth("/v1/organizations", &token).await).await;
    assert_eq!(all["organizations"].as_array().unwrap().len(), 2);

    // In its own organization the scoped token works as before.
    let own = app
        .get_auth(&format!("/v1/organizations/{home}/members"), &scoped)
        .await;
    assert_eq!(own.status(), StatusCode::OK);
    let own = app
        .get_auth(&format!("/v1/audit/events?organization_id={home}"), &scoped)
        .await;
    assert_eq!(own.status(), StatusCode::OK);
    // And the unscoped token everywhere.
    let unscoped = app
        .get_auth(&format!("/v1/organizations/{elsewhere}"), &token)
        .await;
    assert_eq!(unscoped.status(), StatusCode::OK);
}}

e2e! { async fn a_platform_admin_token_scoped_to_one_organization_acts_in_no_other_nor_platform_wide(backend) {
    let app = spawn_app_on(backend).await;
    let (admin, token) = app.new_user().await;
    app.make_platform_admin(admin).await;
    let home = app.new_organization(&token).await;
    let (_, stranger) = app.new_user().await;
    let theirs = app.new_organization(&stranger).await;
    let scoped = scoped_to(&app, &token, &home).await;

    let response = app.get_auth(&format!("/v1/organizations/{theirs}"), &scoped).await;
    assert_eq!(error_code(response, StatusCode::FORBIDDEN).await, "forbidden");
    for path in ["/v1/admin/users", "/v1/admin/organizations", "/v1/audit/events"] {
        let response = app.get_auth(path, &scoped).await;
        assert_eq!(
            error_code(response, StatusCode::FORBIDDEN).await,
            "forbidden",
            "{path}"
        );
        // The same administrator's unscoped token still may.
        assert_eq!(app.get_auth(path, &token).await.status(), StatusCode::OK, "{path}");
    }
    let response = app
        .call(
            Method::POST,
            &format!("/v1/admin/organizations/{theirs}/suspend"),
            Some(&scoped),
            Some(&json!({"reason": "scoped tokens must not"})),
        )
        .await;
    assert_eq!(error_code(response, StatusCode::FORBIDDEN).await, "forbidden");
}}
