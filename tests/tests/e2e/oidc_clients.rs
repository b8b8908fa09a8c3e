//! The OAuth/OpenID client registry (`/v1/oidc/clients…`) and users' consents
//! (`/v1/auth/me/consents…`), on both back ends: who may register and manage
//! clients, what a client may be, secrets shown once and authenticating until
//! rotated, deletion, consent remembered, listed and taken back, and no secret in
//! the event log or on NATS.

use std::time::Duration;

use keyledger_commands::{OAuthClientError, OAuthClientRule, RequestContext};
use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const CLIENTS: &str = "/v1/oidc/clients";

/// A fresh account made a platform administrator; its id and token.
async fn platform_admin(app: &TestApp) -> (Uuid, String) {
    let (id, token) = app.new_user().await;
    app.make_platform_admin(id).await;
    (id, token)
}

fn confidential_client(organization_id: Option<&str>) -> Value {
    json!({
        "organization_id": organization_id,
        "name": "Billing portal",
        "redirect_uris": ["https://billing.example.com/callback"],
        "post_logout_redirect_uris": ["https://billing.example.com/"],
        "scopes": ["openid", "email"],
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
        "access_token_format": "jwt",
        "access_token_alg": "ES256",
    })
}

fn public_client() -> Value {
    json!({
        "name": "Mobile app",
        "confidential": false,
        "redirect_uris": ["com.example.mobile:/callback", "http://127.0.0.1:8123/cb"],
        "scopes": ["openid", "profile", "offline_access"],
        "grant_types": ["authorization_code", "refresh_token"],
    })
}

/// Registers a client as `token`; the answer's status, `Cache-Control` and body.
async fn register(
    app: &TestApp,
    token: &str,
    client: &Value,
) -> (StatusCode, Option<String>, Value) {
    let response = app
        .call(Method::POST, CLIENTS, Some(token), Some(client))
        .await;
    let status = response.status();
    let cache = response
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, cache, body(response).await)
}

async fn registered(app: &TestApp, token: &str, client: &Value) -> Value {
    let (status, _, answer) = register(app, token, client).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer
}

fn id_of(client: &Value) -> String {
    client["client_id"].as_str().expect("client_id").to_owned()
}

async fn authenticates(app: &TestApp, client_id: &str, secret: Option<&str>) -> bool {
    match app
        .state
        .oauth_clients
        .authenticate(client_id, secret)
        .await
    {
        Ok(view) => {
            assert_eq!(view.client_id.to_string(), client_id);
            true
        }
        Err(OAuthClientError::InvalidClient) => false,
        Err(e) => panic!("authentication failed otherwise: {e:?}"),
    }
}

e2e! { async fn a_platform_admin_registers_clients_whose_secret_is_shown_once(backend) {
    let app = spawn_app_on(backend).await;
    let (_, admin) = platform_admin(&app).await;

    let (status, cache, confidential) = register(&app, &admin, &confidential_client(None)).await;
    assert_eq!(status, StatusCode::CREATED, "{confidential}");
    assert_eq!(cache.as_deref(), Some("no-store"));
    let secret = confidential["client_secret"].as_str().expect("a secret").to_owned();
    assert!(secret.starts_with("klc_"), "{secret}");
    assert_eq!(confidential["organization_id"], Value::Null);
    assert_eq!(confidential["confidential"], true);
    assert_eq!(confidential["access_token_format"], "jwt");
    assert_eq!(confidential["access_token_alg"], "ES256");
    assert_eq!(confidential["id_token_alg"], "RS256");
    assert_eq!(confidential["first_party"], false);
    let id = id_of(&confidential);

    let public = registered(&app, &admin, &public_client()).await;
    assert!(public.get("client_secret").is_none(), "a public client has no secret: {public}");
    assert_eq!(public["grant_types"], json!(["authorization_code", "refresh_token"]));
    assert_eq!(public["scopes"], json!(["openid", "profile", "offline_access"]));
    let public_id = id_of(&public);

    // Never shown again.
    let (status, shown) = call(&app, Method::GET, &format!("{CLIENTS}/{id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(shown.get("client_secret").is_none());
    assert!(!shown.to_string().contains(&secret));
    assert_eq!(shown["redirect_uris"], json!(["https://billing.example.com/callback"]));
    let (status, list) = call(&app, Method::GET, CLIENTS, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["clients"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Billing portal", "Mobile app"]);
    assert!(!list.to_string().contains(&secret));

    // The protocol endpoints' view.
    let found = app.state.oauth_clients.find(&id).await.unwrap().expect("found");
    assert!(found.confidential);
    assert_eq!(found.scopes, ["openid", "email"]);
    assert!(authenticates(&app, &id, Some(&secret)).await);
    assert!(!authenticates(&app, &id, Some("klc_wrong")).await);
    assert!(!authenticates(&app, &id, None).await);
    assert!(authenticates(&app, &public_id, None).await);
    assert!(!authenticates(&app, &public_id, Some(&secret)).await, "a public client presents no secret");
    assert!(!authenticates(&app, &Uuid::new_v4().to_string(), Some(&secret)).await);
    assert!(!authenticates(&app, "not-a-client", Some(&secret)).await);
    assert!(app.state.oauth_clients.find("not-a-client").await.unwrap().is_none());

    // Rotation: the old secret stops working at once; the new one is shown once.
    let response = app.call(Method::POST, &format!("{CLIENTS}/{id}/secret"), Some(&admin), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let rotated = body(response).await;
    let new_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(!authenticates(&app, &id, Some(&secret)).await);
    assert!(authenticates(&app, &id, Some(&new_secret)).await);
    let response = app.call(Method::POST, &format!("{CLIENTS}/{public_id}/secret"), Some(&admin), None).await;
    assert_eq!(error_code(response, StatusCode::CONFLICT).await, "public_client");

    // Changes keep the rules and the rest of the settings.
    let (status, changed) = call(&app, Method::PATCH, &format!("{CLIENTS}/{id}"), Some(&admin),
        Some(json!({"name": "Billing", "first_party": true, "id_token_alg": "EdDSA"}))).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["name"], "Billing");
    assert_eq!(changed["first_party"], true);
    assert_eq!(changed["id_token_alg"], "EdDSA");
    assert_eq!(changed["scopes"], json!(["openid", "email"]));
    let (status, refused) = call(&app, Method::PATCH, &format!("{CLIENTS}/{id}"), Some(&admin),
        Some(json!({"redirect_uris": []}))).await;
    assert_eq!((status, refused["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("redirect_uri_required")));

    // Deleted: gone for the endpoints and the admin API alike.
    let (status, _) = call(&app, Method::DELETE, &format!("{CLIENTS}/{id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(app.state.oauth_clients.find(&id).await.unwrap().is_none());
    assert!(!authenticates(&app, &id, Some(&new_secret)).await);
    let (status, _) = call(&app, Method::GET, &format!("{CLIENTS}/{id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, Method::DELETE, &format!("{CLIENTS}/{id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = call(&app, Method::GET, CLIENTS, Some(&admin), None).await;
    assert_eq!(list["clients"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.event_types("oauth_client", &id).await,
        ["OAuthClientRegistered", "OAuthClientSecretRotated", "OAuthClientUpdated", "OAuthClientDeleted"]
    );
}}

e2e! { async fn an_organization_admin_manages_only_its_organizations_clients(backend) {
    let app = spawn_app_on(backend).await;
    let (_, owner) = app.new_user().await;
    let org = app.new_organization(&owner).await;
    let (_, stranger) = app.new_user().await;
    let stranger_org = app.new_organization(&stranger).await;
    let member = app.new_user().await;
    assert_eq!(app.join(&owner, &org, &member, json!(["member"])).await, StatusCode::OK);
    let admin = app.new_user().await;
    assert_eq!(app.join(&owner, &org, &admin, json!(["admin"])).await, StatusCode::OK);

    let client = registered(&app, &owner, &confidential_client(Some(&org))).await;
    assert_eq!(client["organization_id"], json!(org));
    let id = id_of(&client);
    // An admin (not only the owner) manages them too.
    let by_admin = registered(&app, &admin.1, &json!({
        "organization_id": org, "name": "Reports", "redirect_uris": ["https://reports.example.com/cb"],
    })).await;
    assert_eq!(by_admin["scopes"], json!(["openid"]));

    // Not for the platform, another organization, first-party, or a plain member.
    for (token, body, status) in [
        (&owner, confidential_client(None), StatusCode::FORBIDDEN),
        (&owner, confidential_client(Some(&stranger_org)), StatusCode::NOT_FOUND),
        (&owner, json!({"organization_id": org, "name": "Mine", "first_party": true,
            "redirect_uris": ["https://a.example.com/cb"]}), StatusCode::FORBIDDEN),
        (&member.1, confidential_client(Some(&org)), StatusCode::FORBIDDEN),
    ] {
        let (got, _, answer) = register(&app, token, &body).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert!(answer["error"].is_string());
    }

    // Listing: one's own organization, named.
    let (status, list) = call(&app, Method::GET, &format!("{CLIENTS}?organization_id={org}"), Some(&owner), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["clients"].as_array().unwrap().len(), 2);
    let (status, _) = call(&app, Method::GET, CLIENTS, Some(&owner), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&app, Method::GET, &format!("{CLIENTS}?organization_id={org}"), Some(&stranger), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, Method::GET, &format!("{CLIENTS}?organization_id={org}"), Some(&member.1), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, bad) = call(&app, Method::GET, &format!("{CLIENTS}?organization_id=nope"), Some(&owner), None).await;
    assert_eq!((status, bad["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")));
    let (_, theirs) = call(&app, Method::GET, &format!("{CLIENTS}?organization_id={stranger_org}"), Some(&stranger), None).await;
    assert_eq!(theirs["clients"], json!([]));

    // Someone else's client does not exist for them.
    for token in [&stranger, &member.1] {
        for (method, path) in [
            (Method::GET, format!("{CLIENTS}/{id}")),
            (Method::PATCH, format!("{CLIENTS}/{id}")),
            (Method::DELETE, format!("{CLIENTS}/{id}")),
            (Method::POST, format!("{CLIENTS}/{id}/secret")),
        ] {
            let body = (method == Method::PATCH).then(|| json!({"name": "taken"}));
            let (status, _) = call(&app, method.clone(), &path, Some(token), body).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
    // The owner may not make it first-party; the platform admin may.
    let (status, _) = call(&app, Method::PATCH, &format!("{CLIENTS}/{id}"), Some(&owner),
        Some(json!({"first_party": true}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, platform) = platform_admin(&app).await;
    let (status, changed) = call(&app, Method::PATCH, &format!("{CLIENTS}/{id}"), Some(&platform),
        Some(json!({"first_party": true}))).await;
    assert_eq!((status, changed["first_party"].as_bool()), (StatusCode::OK, Some(true)));
    let (_, all) = call(&app, Method::GET, CLIENTS, Some(&platform), None).await;
    assert_eq!(all["clients"].as_array().unwrap().len(), 2);
    // The owner still manages it (without changing that).
    let (status, renamed) = call(&app, Method::PATCH, &format!("{CLIENTS}/{id}"), Some(&owner),
        Some(json!({"name": "Billing v2", "first_party": true}))).await;
    assert_eq!((status, renamed["name"].as_str()), (StatusCode::OK, Some("Billing v2")));
    let (status, _) = call(&app, Method::DELETE, &format!("{CLIENTS}/{id}"), Some(&owner), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}}

e2e! { async fn clients_that_break_the_rules_are_refused(backend) {
    let app = spawn_app_on(backend).await;
    let (_, admin) = platform_admin(&app).await;
    let with = |change: Value| {
        let mut client = confidential_client(None);
        for (key, value) in change.as_object().unwrap() {
            client[key] = value.clone();
        }
        client
    };
    for (client, status, code) in [
        (with(json!({"redirect_uris": ["http://billing.example.com/callback"]})), 422, "invalid_redirect_uri"),
        (with(json!({"redirect_uris": ["https://billing.example.com/callback#top"]})), 422, "invalid_redirect_uri"),
        (with(json!({"redirect_uris": ["/callback"]})), 422, "invalid_redirect_uri"),
        (with(json!({"redirect_uris": ["javascript:alert(1)"]})), 422, "invalid_redirect_uri"),
        (with(json!({"post_logout_redirect_uris": ["http://10.0.0.1/"]})), 422, "invalid_post_logout_redirect_uri"),
        (with(json!({"redirect_uris": []})), 422, "redirect_uri_required"),
        (with(json!({"scopes": ["openid", "admin"]})), 422, "invalid_scope"),
        (with(json!({"confidential": false})), 422, "invalid_grant_types"),
        (with(json!({"grant_types": []})), 422, "invalid_grant_types"),
        (with(json!({"grant_types": ["refresh_token"]})), 422, "invalid_grant_types"),
        // RS256 is taken (RFC 9068 §2.1 makes it mandatory; see
        // openid_conformance); a symmetric or unknown algorithm never is.
        (with(json!({"access_token_alg": "HS256"})), 400, "invalid_json"),
        (with(json!({"access_token_alg": "none"})), 400, "invalid_json"),
        (with(json!({"name": "  "})), 422, "invalid_name"),
        (with(json!({"name": "x".repeat(101)})), 422, "invalid_name"),
        (with(json!({"grant_types": ["implicit"]})), 400, "invalid_json"),
        (with(json!({"client_secret": "chosen"})), 400, "invalid_json"),
        (with(json!({"organization_id": Uuid::new_v4()})), 404, "not_found"),
    ] {
        let (got, _, answer) = register(&app, &admin, &client).await;
        assert_eq!((got.as_u16(), answer["error"].as_str()), (status, Some(code)), "{client} -> {answer}");
        assert!(answer["message"].is_string());
    }
    let (_, list) = call(&app, Method::GET, CLIENTS, Some(&admin), None).await;
    assert_eq!(list["clients"], json!([]), "nothing was registered");
    // Anonymous callers and unknown fields in a change.
    let (status, _) = call(&app, Method::GET, CLIENTS, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let id = id_of(&registered(&app, &admin, &confidential_client(None)).await);
    let (status, answer) = call(&app, Method::PATCH, &format!("{CLIENTS}/{id}"), Some(&admin),
        Some(json!({"confidential": false}))).await;
    assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")));
}}

e2e! { async fn consent_is_remembered_listed_and_taken_back(backend) {
    let app = spawn_app_on(backend).await;
    let (_, admin) = platform_admin(&app).await;
    let client = registered(&app, &admin, &confidential_client(None)).await;
    let client_id: Uuid = id_of(&client).parse().unwrap();
    let (user, token) = app.new_user().await;
    let clients = &app.state.oauth_clients;
    let ctx = RequestContext { actor: Some(user), ..RequestContext::default() };
    let scopes = |raw: &[&str]| raw.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    assert!(clients.consented_scopes(user, client_id).await.unwrap().is_empty());
    let (status, none) = call(&app, Method::GET, "/v1/auth/me/consents", Some(&token), None).await;
    assert_eq!((status, none), (StatusCode::OK, json!({"consents": []})));

    clients.grant_consent(user, client_id, &scopes(&["openid"]), &ctx).await.unwrap();
    clients.grant_consent(user, client_id, &scopes(&["email", "openid"]), &ctx).await.unwrap();
    // Nothing new: nothing written.
    clients.grant_consent(user, client_id, &scopes(&["email"]), &ctx).await.unwrap();
    assert_eq!(clients.consented_scopes(user, client_id).await.unwrap(), ["openid", "email"]);
    assert!(matches!(
        clients.grant_consent(user, client_id, &scopes(&["admin"]), &ctx).await,
        Err(OAuthClientError::Refused(OAuthClientRule::UnknownScope))
    ));
    assert!(matches!(
        clients.grant_consent(user, client_id, &scopes(&["profile"]), &ctx).await,
        Err(OAuthClientError::ScopeNotAllowed)
    ));
    assert!(matches!(
        clients.grant_consent(user, Uuid::new_v4(), &scopes(&["openid"]), &ctx).await,
        Err(OAuthClientError::NotFound)
    ));

    let (status, listed) = call(&app, Method::GET, "/v1/auth/me/consents", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    let consents = listed["consents"].as_array().unwrap();
    assert_eq!(consents.len(), 1, "{listed}");
    assert_eq!(consents[0]["client_id"], json!(client_id));
    assert_eq!(consents[0]["client_name"], "Billing portal");
    assert_eq!(consents[0]["scopes"], json!(["openid", "email"]));
    assert!(consents[0]["granted_at"].is_string());
    // Another user sees none of it.
    let (_, other) = app.new_user().await;
    let (_, theirs) = call(&app, Method::GET, "/v1/auth/me/consents", Some(&other), None).await;
    assert_eq!(theirs, json!({"consents": []}));
    let (status, _) = call(&app, Method::DELETE, &format!("/v1/auth/me/consents/{client_id}"), Some(&other), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let path = format!("/v1/auth/me/consents/{client_id}");
    let (status, _) = call(&app, Method::DELETE, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(clients.consented_scopes(user, client_id).await.unwrap().is_empty());
    let (status, again) = call(&app, Method::DELETE, &path, Some(&token), None).await;
    assert_eq!((status, again["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, _) = call(&app, Method::DELETE, "/v1/auth/me/consents/nope", Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, after) = call(&app, Method::GET, "/v1/auth/me/consents", Some(&token), None).await;
    assert_eq!(after, json!({"consents": []}));

    let consent_events: Vec<String> = app.event_types("user", &user.to_string()).await
        .into_iter().filter(|t| t.starts_with("OAuthConsent")).collect();
    assert_eq!(consent_events, ["OAuthConsentGranted", "OAuthConsentGranted", "OAuthConsentRevoked"]);

    // A consent of a deleted client is not listed.
    clients.grant_consent(user, client_id, &scopes(&["openid"]), &ctx).await.unwrap();
    let (status, _) = call(&app, Method::DELETE, &format!("{CLIENTS}/{client_id}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, gone) = call(&app, Method::GET, "/v1/auth/me/consents", Some(&token), None).await;
    assert_eq!(gone, json!({"consents": []}));
}}

e2e! { async fn no_client_secret_reaches_the_event_log_or_nats(backend) {
    let app = spawn_app_with_nats(backend).await;
    let (_, admin) = platform_admin(&app).await;
    let client = registered(&app, &admin, &confidential_client(None)).await;
    let id = id_of(&client);
    let first = client["client_secret"].as_str().unwrap().to_owned();
    let (_, rotated) = call(&app, Method::POST, &format!("{CLIENTS}/{id}/secret"), Some(&admin), None).await;
    let second = rotated["client_secret"].as_str().unwrap().to_owned();
    let (user, _) = app.new_user().await;
    let ctx = RequestContext { actor: Some(user), ..RequestContext::default() };
    app.state.oauth_clients
        .grant_consent(user, id.parse().unwrap(), &["openid".to_owned()], &ctx)
        .await
        .unwrap();

    let stored = app.stored_events().await;
    let secrets = [first.as_str(), second.as_str(), &first[4..], &second[4..]];
    for event in &stored {
        for secret in secrets {
            assert!(!event.payload.contains(secret), "{} holds a secret", event.event_type);
            assert!(!event.metadata.contains(secret), "{} metadata holds a secret", event.event_type);
        }
    }
    // Only the hashes are kept, and they stay inside.
    let hashes: Vec<String> = events_of_type(&stored, "OAuthClientRegistered")
        .into_iter()
        .chain(events_of_type(&stored, "OAuthClientSecretRotated"))
        .map(|e| e.payload_json().as_object().unwrap().values().next().unwrap()["secret_hash"]
            .as_str().expect("a hash").to_owned())
        .collect();
    assert_eq!(hashes.len(), 2);

    let published = app.published(stored.len() + 20, Duration::from_secs(5)).await;
    let subjects: Vec<&str> = published.iter().map(|(subject, _, _)| subject.as_str()).collect();
    // Subjects carry the test's own prefix before `auth.events`.
    for expected in [
        ".auth.events.oauth_client.OAuthClientRegistered",
        ".auth.events.oauth_client.OAuthClientSecretRotated",
        ".auth.events.user.OAuthConsentGranted",
    ] {
        assert!(
            subjects.iter().any(|s| s.ends_with(expected)),
            "{expected} not published: {subjects:?}"
        );
    }
    for (subject, _, message) in &published {
        let text = message.to_string();
        for secret in secrets.iter().copied().chain(hashes.iter().map(String::as_str)) {
            assert!(!text.contains(secret), "{subject} publishes a secret: {text}");
        }
        assert!(!text.contains("secret_hash"), "{subject}: {text}");
    }
}}

e2e! { async fn an_erased_account_keeps_no_consent(backend) {
    let app = spawn_app_on(backend).await;
    let (_, admin) = platform_admin(&app).await;
    let client_id: Uuid = id_of(&registered(&app, &admin, &confidential_client(None)).await)
        .parse()
        .unwrap();
    let (user, token) = app.new_user().await;
    let ctx = RequestContext { actor: Some(user), ..RequestContext::default() };
    let clients = &app.state.oauth_clients;
    clients.grant_consent(user, client_id, &["openid".to_owned()], &ctx).await.unwrap();

    let response = app
        .call(Method::DELETE, "/v1/users/me", Some(&token), Some(&json!({"password": PASSWORD})))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(matches!(
        clients.consented_scopes(user, client_id).await,
        Err(OAuthClientError::UserNotFound)
    ));
    assert!(matches!(
        clients.grant_consent(user, client_id, &["openid".to_owned()], &ctx).await,
        Err(OAuthClientError::UserNotFound)
    ));
    assert!(matches!(
        clients.revoke_consent(user, client_id, &ctx).await,
        Err(OAuthClientError::UserNotFound)
    ));
    // The log, consents and all, still reads and projects after the erasure.
    app.read_models_caught_up().await;
    let types = app.event_types("user", &user.to_string()).await;
    assert!(types.contains(&"OAuthConsentGranted".to_owned()));
    assert_eq!(types.last().map(String::as_str), Some("UserErased"));
}}
