//! This API's own documentation: the OpenAPI document at `/openapi.json` and its
//! rendering as a page at `/docs`, both built once at start-up.

use actix_web::http::header::{HeaderValue, CONTENT_SECURITY_POLICY};
use actix_web::{web, HttpResponse};
use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::openapi::failures;
use actix_web::dev::{ServiceFactory, ServiceRequest};
use utoipa_actix_web::UtoipaApp;

use crate::openapi::endpoint;

/// The document as served at `/openapi.json`.
pub struct Document(String);

impl Document {
    pub fn new(openapi: &OpenApiDoc) -> Self {
        Self(openapi.to_pretty_json().expect("the document is JSON"))
    }
}

/// The OpenAPI 3.1 document of this API
///
/// Generated from the code at startup: every route, its bodies, and every answer
/// it can give.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "docs",
    responses((status = 200, description = "This document.", body = Object,
        content_type = "application/json"))
)]
pub async fn openapi_json(document: web::Data<Document>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.0.clone())
}

/// The API reference page at `/docs`, rendered once at start-up from the same
/// document as `/openapi.json`: plain HTML and one inline stylesheet, no script and
/// nothing from another origin (a renderer fetched from a CDN would run with this
/// server's origin, unpinned). Its own `Content-Security-Policy` allows exactly that
/// stylesheet, by hash. `None` when KEYLEDGER_DOCS=off.
pub struct DocsPage(Option<(String, HeaderValue)>);

/// The page's only style; the CSP names its hash, so nothing else can be injected.
const DOCS_STYLE: &str =
    "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;\
padding:0 1rem;color:#1a1a1a}h2{border-bottom:1px solid #ccc;margin-top:2.5rem}\
h3{margin-bottom:.25rem}code,pre{font:13px/1.4 ui-monospace,monospace}\
pre{background:#f4f4f4;padding:.5rem;overflow-x:auto}.text{white-space:pre-wrap}\
.method{display:inline-block;min-width:4.5rem;font-weight:bold}";

impl DocsPage {
    pub fn new(openapi: &OpenApiDoc, enabled: bool) -> Self {
        if !enabled {
            return Self(None);
        }
        let document = serde_json::to_value(openapi).expect("the document is JSON");
        let html = docs_html(&document);
        let style_hash = base64::engine::general_purpose::STANDARD.encode(
            <sha2::Sha256 as sha2::Digest>::digest(DOCS_STYLE.as_bytes()),
        );
        let policy = format!(
            "default-src 'none'; style-src 'sha256-{style_hash}'; frame-ancestors 'none'; \
             base-uri 'none'; form-action 'none'"
        );
        let policy = HeaderValue::from_str(&policy).expect("the policy is ASCII");
        Self(Some((html, policy)))
    }
}

/// Text for HTML (element content and quoted attribute values).
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn pretty(value: &Value) -> String {
    escape(&serde_json::to_string_pretty(value).unwrap_or_default())
}

/// Pushes `<pre>` blocks of the schema of each content type of a body or response.
fn content_html(html: &mut String, content: &Value) {
    for (content_type, content) in content.as_object().into_iter().flatten() {
        html.push_str(&format!("<p><code>{}</code></p>", escape(content_type)));
        if let Some(schema) = content.get("schema") {
            html.push_str(&format!("<pre>{}</pre>", pretty(schema)));
        }
    }
}

fn docs_html(document: &Value) -> String {
    let text = |value: &Value| escape(value.as_str().unwrap_or_default());
    let mut html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} API</title>\n<style>{DOCS_STYLE}</style>\n</head>\n<body>\n\
         <h1>{title} API {version}</h1>\n<p class=\"text\">{description}</p>\n\
         <p>The machine-readable document: <a href=\"/openapi.json\">/openapi.json</a> \
         (OpenAPI {openapi}).</p>\n",
        title = text(&document["info"]["title"]),
        version = text(&document["info"]["version"]),
        description = text(&document["info"]["description"]),
        openapi = text(&document["openapi"]),
    );
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            let Some(operation) = item.get(method) else {
                continue;
            };
            html.push_str(&format!(
                "<h2><span class=\"method\">{}</span> <code>{}</code></h2>\n<h3>{}</h3>\n\
                 <p class=\"text\">{}</p>\n",
                method.to_uppercase(),
                escape(path),
                text(&operation["summary"]),
                text(&operation["description"]),
            ));
            if let Some(parameters) = operation["parameters"].as_array() {
                html.push_str("<h4>Parameters</h4>\n<ul>\n");
                for parameter in parameters {
                    html.push_str(&format!(
                        "<li><code>{}</code> (in {}{}): <span class=\"text\">{}</span></li>\n",
                        text(&parameter["name"]),
                        text(&parameter["in"]),
                        if parameter["required"] == true {
                            ", required"
                        } else {
                            ""
                        },
                        text(&parameter["description"]),
                    ));
                }
                html.push_str("</ul>\n");
            }
            if let Some(body) = operation.get("requestBody") {
                html.push_str("<h4>Request body</h4>\n");
                content_html(&mut html, &body["content"]);
            }
            html.push_str("<h4>Responses</h4>\n");
            for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                html.push_str(&format!(
                    "<h5>{}</h5>\n<p class=\"text\">{}</p>\n",
                    escape(status),
                    text(&response["description"]),
                ));
                content_html(&mut html, &response["content"]);
            }
        }
    }
    html.push_str("<h2>Schemas</h2>\n");
    for (name, schema) in document["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        html.push_str(&format!(
            "<h3 id=\"{name}\">{name}</h3>\n<pre>{schema}</pre>\n",
            name = escape(name),
            schema = pretty(schema),
        ));
    }
    html.push_str("</body>\n</html>\n");
    html
}

failures!(
    /// What `docs` answers when KEYLEDGER_DOCS=off.
    pub DocsFailures = [ApiError::NotFound]
);

/// Human-readable API documentation
///
/// An HTML page rendering this document, served by this server with no script and
/// nothing from another origin. 404 when the server runs with KEYLEDGER_DOCS=off.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "docs",
    responses(
        (status = 200, description = "An HTML page.", body = String,
            content_type = "text/html; charset=utf-8"),
        DocsFailures,
    )
)]
pub async fn docs(page: web::Data<DocsPage>) -> Result<HttpResponse, ApiError> {
    let (html, policy) = page.0.as_ref().ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((CONTENT_SECURITY_POLICY, policy.clone()))
        .body(html.clone()))
}

/// What `GET /` answers: what this server is and where to read about it.
#[derive(Serialize, ToSchema)]
pub struct Index {
    #[schema(example = "keyledger")]
    name: &'static str,
    /// The server's version.
    #[schema(example = "0.1.0")]
    version: &'static str,
    /// The API reference page; null when the server runs with KEYLEDGER_DOCS=off.
    #[schema(example = "/docs")]
    docs: Option<&'static str>,
    /// The OpenAPI 3.1 document.
    #[schema(example = "/openapi.json")]
    openapi: &'static str,
    /// The OpenID provider's discovery document.
    #[schema(example = "/.well-known/openid-configuration")]
    openid_configuration: &'static str,
    /// The health check.
    #[schema(example = "/health")]
    health: &'static str,
}

/// Where to start
///
/// The server's name and version and where its documentation, OpenAPI document,
/// OpenID configuration and health check are.
#[utoipa::path(
    get,
    path = "/",
    tag = "docs",
    responses((status = 200, description = "Where to read about this server.", body = Index))
)]
pub async fn index(page: web::Data<DocsPage>) -> HttpResponse {
    HttpResponse::Ok().json(Index {
        name: "keyledger",
        version: env!("CARGO_PKG_VERSION"),
        docs: page.0.is_some().then_some("/docs"),
        openapi: "/openapi.json",
        openid_configuration: "/.well-known/openid-configuration",
        health: "/health",
    })
}

/// Registers the root, the document and its page, outside the rate limits.
pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(endpoint!(self::index))
        .service(endpoint!(self::openapi_json))
        .service(endpoint!(self::docs))
}
