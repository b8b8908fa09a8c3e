//! The OpenAPI document (`/openapi.json`) and docs page (`/docs`) against the server
//! that serves them, on both back ends (the one test without a server scans the
//! API's sources).
//!
//! # Why a route cannot be served without being documented
//!
//! There is no hand-written list of routes, here or in the API. Completeness rests on
//! three layers:
//!
//! 1. **Construction** (`keyledger_api::startup::routes`): every route is registered
//!    through `utoipa-actix-web`, whose `service` only accepts services that carry
//!    their own OpenAPI paths, as `endpoint!(routes::handler)`. An `Endpoint` builds
//!    its actix resource from the path and methods written in the handler's
//!    `#[utoipa::path]`, so the registration *is* the documentation; the served
//!    `/openapi.json` is what that registration collected.
//! 2. **The running server** ([`every_documented_operation_is_served_as_documented`]):
//!    every documented (method, path) is requested; it must not fall through to the
//!    default 404 `not_found` or answer 405, and the status and error code it answers
//!    must be documented for that operation. Every other method on a documented path
//!    must answer 405 `method_not_allowed`, so a path serves exactly the documented
//!    methods; an unknown path must answer the default 404.
//! 3. **A tripwire** ([`routes_are_only_registered_as_documented_endpoints`]): actix
//!    can also be given routes around `utoipa-actix-web` (`.route(..)`, plain
//!    resources, route macros, `.service(..)` on the bare `App`). The API's sources are
//!    scanned for those calls; the only registrations allowed are
//!    `.service(endpoint!(..))` and `.service(RateLimited(..))` (the rate-limited
//!    `/v1/auth` scope, itself made of endpoints).
//!
//! Error codes come from `keyledger_api::openapi::every_error()`, one value of every
//! `ApiError`/`AuthError` variant (kept complete by an exhaustive `match`), rendered by
//! the server's own `error_response`.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::ResponseError;
use keyledger_api::openapi::{every_error, router_errors};
use keyledger_api::startup::AUTH_SCOPE;
use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Methods probed on every documented path (HEAD, OPTIONS and TRACE are left to actix).
const PROBED: [&str; 5] = ["get", "put", "post", "delete", "patch"];

struct Op<'a> {
    method: &'a str,
    path: &'a str,
    operation: &'a Value,
}

impl Op<'_> {
    fn name(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }

    fn responses(&self) -> &serde_json::Map<String, Value> {
        self.operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{} has no responses", self.name()))
    }

    /// Error codes documented (as examples) for one status.
    fn codes(&self, status: &str) -> BTreeSet<String> {
        self.responses()
            .get(status)
            .and_then(|r| r["content"]["application/json"]["examples"].as_object())
            .map(|examples| examples.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn all_codes(&self) -> BTreeSet<String> {
        self.responses()
            .keys()
            .flat_map(|s| self.codes(s))
            .collect()
    }
}

fn operations(doc: &Value) -> Vec<Op<'_>> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                ops.push(Op {
                    method,
                    path,
                    operation,
                });
            }
        }
    }
    ops
}

/// A request path for a documented path template (parameters get a fresh uuid).
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("closed parameter") + open;
        out.push_str(&rest[..open]);
        out.push_str(&Uuid::new_v4().to_string());
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

fn code_of(error: &keyledger_api::error::ApiError) -> String {
    let response = error.error_response();
    let bytes = actix_web::body::MessageBody::try_into_bytes(response.into_body())
        .unwrap_or_else(|_| panic!("buffered error body"));
    let body: Value = serde_json::from_slice(&bytes).expect("JSON error body");
    body["error"].as_str().expect("error code").to_owned()
}

async fn fetch_document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    body(response).await
}

/// Sends a request and checks that its answer is documented for the operation.
/// Returns the status.
async fn probe(app: &TestApp, op: &Op<'_>, json_body: Option<&Value>) -> StatusCode {
    let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
    // The route's own answer: a redirect is not followed to another route's.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = client.request(method, app.url(&concrete(op.path)));
    if let Some(json_body) = json_body {
        request = request.json(json_body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let is_json = response.headers().get("content-type").is_some_and(|v| {
        v.to_str()
            .unwrap_or_default()
            .starts_with("application/json")
    });
    let text = response.text().await.unwrap();
    let code = is_json
        .then(|| serde_json::from_str::<Value>(&text).ok())
        .flatten()
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    let what = format!(
        "{} ({:?} body) answered {status} {text:.200}",
        op.name(),
        json_body
    );
    assert_ne!(code.as_deref(), Some("not_found"), "not served: {what}");
    assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "not served: {what}");
    let key = status.as_u16().to_string();
    assert!(
        op.responses().contains_key(&key),
        "undocumented status: {what}"
    );
    if let Some(code) = code {
        assert!(op.codes(&key).contains(&code), "undocumented code: {what}");
    }
    status
}

e2e! { async fn document_is_openapi_3_1_and_describes_every_route_and_error(backend) {
    let app = spawn_app_on(backend).await;
    let doc = fetch_document(&app).await;

    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1"), "openapi {version}");
    assert!(doc["info"]["title"].is_string());

    // The served document is the one the API generates without a server.
    assert_eq!(
        doc,
        serde_json::to_value(keyledger_api::openapi::document()).unwrap(),
        "served and generated documents differ"
    );

    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert!(scheme["bearerFormat"].as_str().unwrap().contains("PASETO"));

    let error_body = &doc["components"]["schemas"]["ErrorBody"];
    let properties = error_body["properties"].as_object().expect("ErrorBody");
    let enumerated: BTreeSet<String> = error_body["properties"]["error"]["enum"]
        .as_array()
        .expect("error codes")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();

    let ops = operations(&doc);
    assert!(!ops.is_empty());
    let mut documented_codes = BTreeSet::new();
    for op in &ops {
        let name = op.name();
        let responses = op.responses();
        // A redirect is the success of the routes a browser is sent through
        // (a social sign-in's start and callback, a hosted page's form post).
        assert!(
            responses.keys().any(|s| s.starts_with('2') || s == "302" || s == "303"),
            "{name}: no success response"
        );
        assert!(
            responses.keys().any(|s| s.starts_with('4')),
            "{name}: no 4xx response"
        );
        assert!(
            op.codes("405").contains("method_not_allowed"),
            "{name}: 405 not documented"
        );
        if op.path.starts_with(AUTH_SCOPE) {
            let limited = &responses
                .get("429")
                .unwrap_or_else(|| panic!("{name}: no 429"));
            assert!(
                limited["content"]["application/json"].is_object()
                    && limited.to_string().contains("rate_limited")
                    && limited["headers"]["retry-after"].is_object(),
                "{name}: rate limit not documented: {limited}"
            );
        }
        let bearer = op.operation["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        if bearer {
            assert!(
                op.codes("401").contains("invalid_token"),
                "{name}: bearer route without 401 invalid_token"
            );
            assert!(responses["401"]["headers"]["www-authenticate"].is_object());
        }
        // Every documented error example is the envelope and names a known code.
        for (status, response) in responses {
            let examples = response["content"]["application/json"]["examples"].as_object();
            for (code, example) in examples.into_iter().flatten() {
                let value = &example["value"];
                assert_eq!(value["error"], json!(code), "{name} {status}");
                assert!(value["message"].is_string(), "{name} {status} {code}");
                for key in value.as_object().unwrap().keys() {
                    assert!(properties.contains_key(key), "{name} {status}: {key}");
                }
                assert!(enumerated.contains(code), "{name} {status}: {code}");
            }
        }
        documented_codes.extend(op.all_codes());
    }

    // Every code the API can answer with is documented: on the operations that answer
    // it, or (for the router's own answers) in the envelope's list of codes.
    let routed: BTreeSet<String> = router_errors().iter().map(code_of).collect();
    for error in every_error() {
        let code = code_of(&error);
        assert!(enumerated.contains(&code), "{code} missing from ErrorBody");
        if !routed.contains(&code) {
            assert!(
                documented_codes.contains(&code),
                "no operation documents {code}"
            );
        }
    }

    // The routes of this file's harness and of the API reference are all there.
    let names: BTreeSet<String> = ops.iter().map(Op::name).collect();
    for expected in [
        "POST /v1/auth/register",
        "DELETE /v1/auth/sessions/{session_id}",
        "GET /health",
        "GET /metrics",
        "GET /openapi.json",
        "GET /docs",
    ] {
        assert!(names.contains(expected), "{expected} missing: {names:?}");
    }
    let metrics = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
    assert!(
        metrics
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("text/plain")),
        "{metrics}"
    );
}}

e2e! { async fn every_documented_operation_is_served_as_documented(backend) {
    let app = spawn_app_on(backend).await;
    let doc = fetch_document(&app).await;
    let ops = operations(&doc);

    let mut by_path: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for op in &ops {
        by_path.entry(op.path).or_default().insert(op.method);
        // As is: no body, no token.
        probe(&app, op, None).await;
        // With a JSON body that is missing every field: a bad request, unless the
        // operation needs a bearer token, which is checked first (no token is sent).
        if op.operation.get("requestBody").is_some() {
            let status = probe(&app, op, Some(&json!({}))).await;
            let needs_token = op.operation["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            // A sign-in with a passkey needs no field: without an address the
            // authenticator offers the passkeys it keeps.
            let complete_when_empty = op.name() == "POST /v1/auth/passkey/start";
            // A refresh may take its token from the refresh cookie (cookie
            // sessions): with neither body token nor cookie it has none (401).
            let token_from_cookie = op.name() == "POST /v1/auth/refresh";
            let expected = if needs_token || token_from_cookie {
                StatusCode::UNAUTHORIZED
            } else if complete_when_empty {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            assert_eq!(status, expected, "{}", op.name());
        }
    }

    // A documented path serves no undocumented method.
    for (path, methods) in &by_path {
        for method in PROBED.iter().filter(|m| !methods.contains(*m)) {
            let r = app
                .client
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    app.url(&concrete(path)),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(
                error_code(r, StatusCode::METHOD_NOT_ALLOWED).await,
                "method_not_allowed",
                "{} {path} is served but not documented",
                method.to_uppercase()
            );
        }
    }

    // Anything else is the router's 404.
    for path in [
        "/v1/auth/undocumented",
        "/undocumented",
        "/v2/auth/register",
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    }
}}

e2e! {
/// A body the server cannot take is refused in the envelope, as documented, whatever
/// extractor reads it. `POST /v1/auth/token` reads its body raw (a form or JSON) and
/// answered these in actix's plain text (413 "payload reached size limit", 400
/// "payload reached EOF ...") before the `Body` extractor.
async fn a_body_too_large_or_undecodable_is_refused_in_the_envelope_everywhere(backend) {
    let app = spawn_app_on(backend).await;
    let doc = fetch_document(&app).await;
    let (_, token) = app.new_user().await;
    let limit = app.settings.server.max_body_bytes;
    let mut checked = 0;
    for op in operations(&doc) {
        let Some(content) = op.operation["requestBody"]["content"].as_object() else {
            continue;
        };
        let content_type = content.keys().next().expect("a documented content type");
        let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
        let cases = [
            (
                "too large",
                vec![b'a'; limit + 1],
                None,
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            // Refused unread: no body is ever inflated (see hardening.rs).
            (
                "gzip",
                b"not gzip at all".to_vec(),
                Some("gzip"),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
        ];
        for (what, bytes, encoding, status) in cases {
            let mut request = app
                .client
                .request(method.clone(), app.url(&concrete(op.path)))
                .bearer_auth(&token)
                .header("content-type", content_type.as_str())
                .body(bytes);
            if let Some(encoding) = encoding {
                request = request.header("content-encoding", encoding);
            }
            let response = request.send().await.unwrap();
            let name = format!("{} ({what} {content_type} body)", op.name());
            assert_eq!(response.status(), status, "{name}");
            let is_json = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json");
            let text = response.text().await.unwrap();
            assert!(is_json, "{name}: not the envelope: {text}");
            let answer: Value = serde_json::from_str(&text).unwrap();
            let code = answer["error"].as_str().expect("error code");
            assert!(answer["message"].is_string(), "{name}: {answer}");
            assert!(
                op.codes(status.as_str()).contains(code),
                "{name}: {code} undocumented"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} bodies checked");
}}

e2e! {
/// Query parameters are required exactly where the document says: without any query
/// string, an operation whose parameters are all optional is not refused with a 400,
/// and one with a required parameter is. Asked as a platform administrator, so no
/// 403 answers first. `GET /v1/auth/permissions/{user_id}` documented its required
/// `organization_id` as optional (found by schemathesis).
async fn query_parameters_are_required_exactly_where_documented(backend) {
    let app = spawn_app_on(backend).await;
    let doc = fetch_document(&app).await;
    let (admin, token) = app.new_user().await;
    app.make_platform_admin(admin).await;
    let mut checked = 0;
    for op in operations(&doc) {
        let query: Vec<&Value> = op.operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query")
            .collect();
        if query.is_empty() {
            continue;
        }
        let required = query.iter().any(|p| p["required"] == json!(true));
        let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
        let response = app
            .call(method, &concrete(op.path), Some(&token), None)
            .await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(
            status == StatusCode::BAD_REQUEST,
            required,
            "{} without a query string answered {status} {text} (required parameter \
             documented: {required})",
            op.name()
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} operations have query parameters"
    );
}}

e2e! {
/// A NUL in any query parameter is refused with a documented 4xx. PostgreSQL's
/// `text` cannot hold NUL: the free-text filters of `GET /v1/admin/users` (`query`,
/// `after`) and `GET /v1/audit/events` (`actor`, `subject`, `action`, `outcome`) went
/// to the database as they were and answered 503 `unavailable` (found by
/// schemathesis). The refusal is the API's, whatever a store would make of a NUL,
/// so both back ends answer the same.
async fn a_nul_in_a_query_parameter_is_refused_not_a_server_error(backend) {
    let app = spawn_app_on(backend).await;
    let doc = fetch_document(&app).await;
    let (admin, token) = app.new_user().await;
    app.make_platform_admin(admin).await;
    let mut checked = 0;
    for op in operations(&doc) {
        let names = op.operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query")
            .filter_map(|p| p["name"].as_str());
        for name in names {
            let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
            let path = format!("{}?{name}=a%00b", concrete(op.path));
            let response = app.call(method, &path, Some(&token), None).await;
            let status = response.status();
            let text = response.text().await.unwrap();
            let what = format!("{} with {name}=a%00b answered {status} {text}", op.name());
            assert!(status.is_client_error(), "{what}");
            assert!(op.responses().contains_key(status.as_str()), "{what}");
            let answer: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{what}: not the envelope ({e})"));
            let code = answer["error"].as_str().expect("error code");
            assert!(op.codes(status.as_str()).contains(code), "{what}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} query parameters checked");
}}

e2e! { async fn docs_page_renders_the_document(backend) {
    let app = spawn_app_on(backend).await;
    let response = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = response.text().await.unwrap();
    assert!(html
        .trim_start()
        .to_lowercase()
        .starts_with("<!doctype html>"));
    assert!(html.contains("'/openapi.json'") || html.contains("\"/openapi.json\""));
    assert!(html.contains("</html>"));
}}

e2e! { async fn rate_limit_answers_as_documented_and_spares_the_docs(backend) {
    // `keys` is a token check (see `rate_limit::Class`).
    let app = spawn_app_on_with(backend, |s| {
        s.rate_limits.token_checks_per_second = 2;
    })
    .await;
    let doc = fetch_document(&app).await;
    let documented = &doc["paths"]["/v1/auth/keys"]["get"]["responses"]["429"];
    let r = first_rate_limited(|_| app.get("/v1/auth/keys"))
        .await
        .expect("the rate limit answered 429");
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        documented["content"][&content_type].is_object(),
        "{content_type} not documented: {documented}"
    );
    for header in documented["headers"].as_object().unwrap().keys() {
        assert!(
            r.headers().contains_key(header.as_str()),
            "{header} missing"
        );
    }
    // The envelope, as the document's description says (it used to say plain text).
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
    assert!(!doc["info"]["description"]
        .as_str()
        .unwrap()
        .contains("plain"));
    // The document and the docs page are outside the rate-limited scope.
    for _ in 0..10 {
        for path in ["/openapi.json", "/docs"] {
            let r = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
        }
    }
}}

/// Registration APIs of actix that would serve a route without an `Endpoint`.
const BYPASSES: [&str; 14] = [
    "web::resource(",
    "web::route(",
    "web::scope(",
    "Resource::new(",
    "Scope::new(",
    ".route(",
    ".configure(",
    "openapi_service(",
    "#[get(",
    "#[post(",
    "#[put(",
    "#[delete(",
    "#[patch(",
    "#[route(",
];

#[test]
fn routes_are_only_registered_as_documented_endpoints() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src");
    let mut scanned = 0;
    let mut offences = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("api/src")
        .map(|e| e.unwrap().path())
        .collect();
    while let Some(file) = files.pop() {
        if file.is_dir() {
            files.extend(std::fs::read_dir(&file).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if file.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        scanned += 1;
        // `Endpoint` itself builds the one actix resource per documented route.
        let is_endpoint = file.file_name().unwrap() == "openapi.rs";
        // The source without comment lines, each line keeping its number.
        let source = std::fs::read_to_string(&file).unwrap();
        let code: String = source
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("//") {
                    ""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let line_of = |at: usize| code[..at].matches('\n').count() + 1;
        let mut offend = |at: usize, why: String| {
            let n = line_of(at);
            let text = code.lines().nth(n - 1).unwrap_or_default().trim();
            offences.push(format!("{}:{n}: {text} ({why})", file.display()));
        };
        if !is_endpoint {
            for bypass in BYPASSES {
                for (at, _) in code.match_indices(bypass) {
                    offend(at, format!("uses {bypass}"));
                }
            }
        }
        for (at, call) in code.match_indices(".service(") {
            let argument = code[at + call.len()..].trim_start();
            // A utoipa-actix-web scope only accepts documented services itself, and
            // its own `.service(` calls are scanned like any other.
            if !(argument.starts_with("endpoint!(")
                || argument.starts_with("RateLimited(")
                || argument.starts_with("scope::scope("))
            {
                offend(at, "registers something that is not an Endpoint".into());
            }
        }
    }
    assert!(
        scanned > 5,
        "scanned only {scanned} files in {}",
        dir.display()
    );
    assert!(
        offences.is_empty(),
        "routes must be registered with endpoint!(..) in startup::routes so that they \
         are documented:\n{}",
        offences.join("\n")
    );
}
