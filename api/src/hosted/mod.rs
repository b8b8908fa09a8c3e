//! The hosted pages: sign-in and sign-up, the pages mailed links open, and the
//! account page, server-rendered (askama templates in `api/templates`, compiled
//! in) in English or Korean (`api/locales`), for apps that would rather not
//! build their own. Forms post back to the page's own path and work without
//! JavaScript; the only scripts are the WebAuthn ceremonies, which browsers
//! offer to scripts alone.
//!
//! Every page is answered with a policy that allows scripts only with that
//! answer's nonce (no inline handler, no other origin) and is never framed. A
//! form post is taken only from this server's own page (see [`forms::is_own`]).
//! A signed-in page is the cookie session of `crate::browser_session`: the same
//! cookies an app on this site uses in cookie mode.
//!
//! | Pages | Module |
//! |---|---|
//! | `/sign-in`, `/sign-out` | [`sign_in`] |
//! | `/account` | [`account`] |
//! | `/assets/…` | [`assets`] |

use actix_web::dev::{ServiceFactory, ServiceRequest};
use utoipa_actix_web::UtoipaApp;

pub mod account;
pub mod assets;
pub mod chrome;
pub mod forms;
pub mod i18n;
pub mod sign_in;

pub use chrome::{Chrome, PagesConfig};

/// The pages whose form posts check a credential or start a flow, and so are
/// rate limited as credential routes (their GETs are not).
pub const FORM_PATHS: &[&str] = &[
    "/sign-in",
    "/sign-out",
    // The account page's forms that check a password or a code.
    "/account/email",
    "/account/password",
    "/account/totp/confirm",
    "/account/delete",
];

/// What a page's form post answers in the JSON envelope besides its pages:
/// a body too large or unreadable (before the page could be built).
///
/// Its 400 documents the form's page as well (a form that does not parse is
/// answered with its page again): utoipa keeps one entry per status, and an
/// operation's later `responses` entry replaces an earlier one, so the page's
/// 400 listed before this would otherwise be lost.
pub struct FormFailures;

impl utoipa::IntoResponses for FormFailures {
    fn responses(
    ) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        let page = utoipa::openapi::ResponseBuilder::new()
            .description("The form again, or the error page: the form did not parse.")
            .content(
                "text/html; charset=utf-8",
                utoipa::openapi::content::ContentBuilder::new()
                    .schema(Some(
                        utoipa::openapi::schema::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::Type::String),
                    ))
                    .build(),
            )
            .build();
        let mut responses =
            std::collections::BTreeMap::from([("400".to_owned(), utoipa::openapi::RefOr::T(page))]);
        crate::openapi::document_failures(&mut responses, crate::openapi::raw_body());
        responses
    }
}

crate::openapi::failures!(
    /// What a page with query parameters answers in the JSON envelope: a query
    /// string that does not parse (a NUL, a field twice).
    pub QueryFailures = [crate::resources::admin::invalid_query()]
);

/// The generic error page.
#[derive(askama::Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub chrome: &'a Chrome,
    /// The error code (`csrf_failed`, …), shown by its message.
    pub code: &'a str,
}

/// The error page for `code` with `status`.
pub fn error_page(
    chrome: &Chrome,
    status: actix_web::http::StatusCode,
    code: &str,
) -> actix_web::HttpResponse {
    chrome.render(status, &ErrorPage { chrome, code })
}

/// Registers the pages at the root. Their form posts are rate limited like the
/// API routes they stand for (see `rate_limit::Class::of`).
pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    let app = assets::routes(app);
    let app = sign_in::routes(app);
    account::routes(app)
}
