//! API consistency a newcomer tripped over (issue 19): the root, the license, one
//! rule for unknown and missing fields, `authorize` with and without a header, and
//! the command line beside a running embedded server.

use keyledger_e2e::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[test]
fn the_license_file_is_the_apache_license_cargo_toml_names() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("license = \"Apache-2.0\""),
        "Cargo.toml's license changed"
    );
    let license = std::fs::read_to_string(root.join("LICENSE")).expect("a LICENSE file");
    assert!(license.contains("Apache License"));
    assert!(license.contains("Version 2.0, January 2004"));
    assert!(license.contains("http://www.apache.org/licenses/"));
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
}

e2e! { async fn the_root_points_to_the_docs(backend) {
    let app = spawn_app_on(backend).await;
    let response = app.get("/").await;
    assert_eq!(response.status(), StatusCode::OK);
    let root = body(response).await;
    assert_eq!(root["name"], "keyledger");
    assert_eq!(root["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(root["docs"], "/docs");
    assert_eq!(root["openapi"], "/openapi.json");
    assert_eq!(root["openid_configuration"], "/.well-known/openid-configuration");
    assert_eq!(root["health"], "/health");
    // Every path it names is served.
    for key in ["docs", "openapi", "openid_configuration", "health"] {
        let path = root[key].as_str().unwrap();
        assert_eq!(app.get(path).await.status(), StatusCode::OK, "{path}");
    }
}}

e2e! { async fn register_and_login_refuse_unknown_fields_like_every_route(backend) {
    let app = spawn_app_on(backend).await;
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let refused = app
        .post(
            "/v1/auth/register",
            &json!({"email": email, "password": PASSWORD, "role": "admin"}),
        )
        .await;
    assert_eq!(error_code(refused, StatusCode::BAD_REQUEST).await, "invalid_json");
    assert_eq!(app.register(&email, PASSWORD).await.status(), StatusCode::CREATED);
    let refused = app
        .post(
            "/v1/auth/login",
            &json!({"email": email, "password": PASSWORD, "remember_me": true}),
        )
        .await;
    assert_eq!(error_code(refused, StatusCode::BAD_REQUEST).await, "invalid_json");
    // Others that used to drop them too.
    for (path, extra) in [
        ("/v1/auth/refresh", json!({"refresh_token": "klr_x", "scope": "all"})),
        ("/v1/auth/validate", json!({"token": "v4.public.x", "extra": 1})),
        ("/v1/auth/forgot-password", json!({"email": email, "extra": 1})),
        ("/v1/auth/passkey/start", json!({"email": email, "extra": 1})),
    ] {
        let refused = app.post(path, &extra).await;
        assert_eq!(
            error_code(refused, StatusCode::BAD_REQUEST).await,
            "invalid_json",
            "{path}"
        );
    }
    // Without the extra field, the login goes through.
    let login = app
        .post("/v1/auth/login", &json!({"email": email, "password": PASSWORD}))
        .await;
    assert_eq!(login.status(), StatusCode::OK);
}}

e2e! { async fn a_missing_field_is_an_invalid_request_and_broken_json_invalid_json(backend) {
    let app = spawn_app_on(backend).await;
    for (path, incomplete) in [
        ("/v1/auth/register", json!({"email": "ada@example.com"})),
        ("/v1/auth/login", json!({"password": PASSWORD})),
        ("/v1/auth/validate", json!({})),
    ] {
        let response = app.post(path, &incomplete).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let answer: Value = body(response).await;
        assert_eq!(answer["error"], "invalid_request", "{path}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains("missing field"), "{answer}");
    }
    for broken in ["{", "{\"email\": }", "[1, 2"] {
        let response = app
            .client
            .post(app.url("/v1/auth/login"))
            .header("content-type", "application/json")
            .body(broken)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response, StatusCode::BAD_REQUEST).await, "invalid_json", "{broken}");
    }
    // A value of the wrong type is not a missing field.
    let wrong = app
        .post("/v1/auth/login", &json!({"email": 1, "password": PASSWORD}))
        .await;
    assert_eq!(error_code(wrong, StatusCode::BAD_REQUEST).await, "invalid_json");
}}

e2e! { async fn an_outsider_learns_the_same_from_authorize_with_or_without_a_header(backend) {
    let app = spawn_app_on(backend).await;
    let (_, owner) = app.signed_in_user().await;
    let (_, outsider) = app.signed_in_user().await;
    let org = app.new_organization(&owner.access_token).await;
    let ask = |token: String, header: Option<String>| {
        let mut request = app.client.post(app.url("/v1/auth/authorize")).json(
            &json!({"token": token, "organization_id": org, "permission": "members:read"}),
        );
        if let Some(header) = header {
            request = request.bearer_auth(header);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status(), body(response).await)
        }
    };
    // About someone else's live token, and about a token that is not one.
    for subject in [owner.access_token.clone(), "v4.public.garbage".to_owned()] {
        let without = ask(subject.clone(), None).await;
        let with = ask(subject.clone(), Some(outsider.access_token.clone())).await;
        assert_eq!(without.0, StatusCode::OK, "{}", without.1);
        assert_eq!(with, without, "an outsider's header changes the answer");
    }
    // The outsider's own token asked about: not a member, header or not.
    let own = ask(outsider.access_token.clone(), None).await;
    assert_eq!(own.1, json!({"allowed": false, "reason": "not_a_member"}));
    assert_eq!(ask(outsider.access_token.clone(), Some(outsider.access_token.clone())).await, own);
    // A header that is not a live token is still refused.
    let (status, _) = ask(owner.access_token.clone(), Some("v4.public.garbage".into())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}}

/// The embedded store has one writer: beside a running server the command stops
/// at once and says what to do.
#[tokio::test]
async fn admin_create_beside_a_running_embedded_server_says_what_to_do() {
    let app = spawn_app_on(Backend::Sqlite).await;
    let started = std::time::Instant::now();
    let result = keyledger_api::startup::create_platform_admin(
        app.resources.settings(),
        "root@example.com",
        Some(PASSWORD.to_owned()),
    )
    .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "not fast"
    );
    let Err(error) = result else {
        panic!("admin create went through beside the server");
    };
    let message = error.to_string();
    for said in [
        "in use by a running Keyledger server",
        "stop the server, run this command",
        "PUT /v1/admin/users/{user_id}/platform-admin",
    ] {
        assert!(message.contains(said), "{message}");
    }
    // The server is untouched and still serves.
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}

e2e! { async fn admin_user_search_pages_with_cursor_and_next_cursor(backend) {
    let app = spawn_app_on(backend).await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let admin_email = format!("admin-{tag}@example.com");
    let admin_id = app.registered_named(&admin_email, "Admin").await;
    for n in 1..=2 {
        app.registered_named(&format!("user{n}-{tag}@example.com"), "User").await;
    }
    app.make_platform_admin(admin_id).await;
    let admin = app.tokens(app.login(&admin_email, PASSWORD).await).await;
    app.read_models_caught_up().await;
    let page = |query: String| {
        let path = format!("/v1/admin/users?query={tag}&limit=2{query}");
        let token = admin.access_token.clone();
        let app = &app;
        async move {
            let response = app.get_auth(&path, &token).await;
            assert_eq!(response.status(), StatusCode::OK);
            body(response).await
        }
    };
    let first = page(String::new()).await;
    assert_eq!(first["users"].as_array().unwrap().len(), 2, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a next page").to_owned();
    // The old name of the answer, deprecated, says the same for now.
    assert_eq!(first["next"], first["next_cursor"]);
    let second = page(format!("&cursor={}", urlencode(&cursor))).await;
    assert_eq!(second["users"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["next_cursor"], Value::Null);
    // The old query name, deprecated, still pages the same way.
    let old = page(format!("&after={}", urlencode(&cursor))).await;
    assert_eq!(old["users"], second["users"]);
}}

fn urlencode(text: &str) -> String {
    text.replace('%', "%25")
        .replace('@', "%40")
        .replace('+', "%2B")
}

e2e! { async fn a_custom_role_is_addressable_by_its_name_as_well_as_its_id(backend) {
    let app = spawn_app_on(backend).await;
    let (_, owner) = app.signed_in_user().await;
    let token = owner.access_token.clone();
    let org = app.new_organization(&token).await;
    let roles = format!("/v1/organizations/{org}/roles");
    let create = |name: &str| {
        let request = app
            .client
            .post(app.url(&roles))
            .bearer_auth(token.clone())
            .json(&json!({"name": name, "permissions": ["invoices:read"]}));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
            body(response).await["role_id"].as_str().unwrap().to_owned()
        }
    };
    let billing = create("Billing Team").await;
    create("Twice").await;
    create("Twice").await;

    // By name (percent-encoded in the path) and by id, the same role.
    let by_name = app.get_auth(&format!("{roles}/Billing%20Team"), &token).await;
    assert_eq!(by_name.status(), StatusCode::OK);
    let by_name = body(by_name).await;
    assert_eq!(by_name["role_id"], billing.as_str());
    let by_id = body(app.get_auth(&format!("{roles}/{billing}"), &token).await).await;
    assert_eq!(by_id, by_name);
    // A name no role has, or one two roles share, is not found.
    for missing in ["Nobody", "Twice", "billing%20team"] {
        let response = app.get_auth(&format!("{roles}/{missing}"), &token).await;
        assert_eq!(error_code(response, StatusCode::NOT_FOUND).await, "not_found", "{missing}");
    }
    // Changed and deleted by name.
    let changed = app
        .client
        .patch(app.url(&format!("{roles}/Billing%20Team")))
        .bearer_auth(token.clone())
        .json(&json!({"permissions": ["invoices:read", "invoices:write"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(body(changed).await["role_id"], billing.as_str());
    let deleted = app
        .client
        .delete(app.url(&format!("{roles}/Billing%20Team")))
        .bearer_auth(token.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = app.get_auth(&format!("{roles}/{billing}"), &token).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}}
