//! The pages' static files, compiled in: one stylesheet, and the scripts the
//! WebAuthn ceremonies need (each page loads its own, with its nonce).

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::header;
use actix_web::HttpResponse;
use utoipa_actix_web::UtoipaApp;

use crate::openapi::endpoint;

const STYLESHEET: &str = include_str!("assets/keyledger.css");
const SIGN_IN_SCRIPT: &str = include_str!("assets/sign-in.js");

/// The pages' stylesheet
///
/// Light and dark by the reader's setting; the accent colour is set per page.
#[utoipa::path(
    get,
    path = "/assets/keyledger.css",
    tag = "pages",
    responses((status = 200, description = "CSS.", body = String,
        content_type = "text/css; charset=utf-8"))
)]
pub async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        // The same bytes for every reader until the next release.
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(STYLESHEET)
}

/// The sign-in pages' script
///
/// Passkeys on `/sign-in` (a button, and the email field's autofill) and on the
/// second step, through the JSON API in cookie mode. Nothing else on the pages
/// needs a script.
#[utoipa::path(
    get,
    path = "/assets/sign-in.js",
    tag = "pages",
    responses((status = 200, description = "JavaScript.", body = String,
        content_type = "text/javascript; charset=utf-8"))
)]
pub async fn sign_in_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        // The same bytes for every reader until the next release.
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(SIGN_IN_SCRIPT)
}

pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(endpoint!(self::stylesheet))
        .service(endpoint!(self::sign_in_script))
}
