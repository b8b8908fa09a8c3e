//! The pages' static files, compiled in: one stylesheet (scripts are per page,
//! next to the page that needs them).

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::header;
use actix_web::HttpResponse;
use utoipa_actix_web::UtoipaApp;

use crate::openapi::endpoint;

const STYLESHEET: &str = include_str!("assets/keyledger.css");

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

pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(endpoint!(self::stylesheet))
}
