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
//! | `/sign-in`, `/sign-in/social`, `/sign-out` | [`sign_in`] |
//! | `/sign-in/second-factor`, `/sign-in/second-factor/send` | [`second_factor`] |
//! | `/sign-up` | [`sign_up`] |
//! | `/verify-email`, `/reset-password`, `/unlock`, `/email-login`, `/forgot-password` | [`links`] |
//! | `/account` | [`account`] |
//! | the confirmation page of `/v1/oidc/logout` | [`logout`] |
//! | `/assets/…` | [`assets`] |

use actix_web::dev::{ServiceFactory, ServiceRequest};
use utoipa_actix_web::UtoipaApp;

pub mod account;
pub mod assets;
pub mod chrome;
pub mod consent;
pub mod forms;
pub mod i18n;
pub mod links;
pub mod logout;
pub mod second_factor;
pub mod sign_in;
pub mod sign_up;

pub use chrome::{Chrome, PagesConfig};

/// The pages whose form posts check a credential or start a flow, and so are
/// rate limited as credential routes (their GETs are not).
pub const FORM_PATHS: &[&str] = &[
    "/sign-in",
    "/sign-out",
    "/sign-in/second-factor",
    "/sign-in/second-factor/send",
    "/sign-up",
    "/verify-email",
    "/reset-password",
    "/unlock",
    "/email-login",
    "/forgot-password",
    // Allowing an app (OpenID Connect).
    "/consent",
    // The account page's forms that check a password or a code.
    "/account/email",
    "/account/password",
    "/account/totp/confirm",
    "/account/delete",
];

/// The pages whose GET checks a credential (a provider sign-in's one-time
/// code), rate limited as credential routes like their form posts.
pub const CREDENTIAL_PAGES: &[&str] = &["/sign-in/social"];

crate::openapi::failures!(
    /// A form post's answers in the JSON envelope: a body too large or
    /// unreadable (before the page could be built).
    pub FormEnvelopeFailures = [crate::openapi::raw_body()]
);

crate::openapi::failures!(
    /// A page's answers in the JSON envelope: a query string that does not
    /// parse (a NUL, a field twice).
    pub QueryEnvelopeFailures = [crate::resources::admin::invalid_query()]
);

/// `envelope`'s answers, their 400 also as a page: a page answers its own 400
/// (a form that does not parse, a refused input) as HTML, and one status has
/// one entry in the document, so the entry lists both content types.
fn also_as_page(
    mut envelope: std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::Response>,
    >,
) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
    if let Some(utoipa::openapi::RefOr::T(response)) = envelope.get_mut("400") {
        response.description = format!(
            "{} Or a page saying what will not do (HTML).",
            response.description
        );
        response.content.insert(
            "text/html; charset=utf-8".to_owned(),
            utoipa::openapi::RefOr::T(utoipa::openapi::Content::new(Some(
                <String as utoipa::PartialSchema>::schema(),
            ))),
        );
    }
    envelope
}

/// What a page's form post answers besides its pages: a body too large or
/// unreadable in the JSON envelope; its 400 is also the page's own.
pub struct FormFailures;

impl utoipa::IntoResponses for FormFailures {
    fn responses(
    ) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        also_as_page(<FormEnvelopeFailures as utoipa::IntoResponses>::responses())
    }
}

/// What a page with query parameters answers besides its pages: a query
/// string that does not parse, in the JSON envelope; its 400 may also be the
/// page's own.
pub struct QueryFailures;

impl utoipa::IntoResponses for QueryFailures {
    fn responses(
    ) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        also_as_page(<QueryEnvelopeFailures as utoipa::IntoResponses>::responses())
    }
}

/// Why a password was refused, in the reader's language: in English the
/// policy's own words (with the guess estimator's advice); in another language
/// each refusal from the catalogue, the estimator's English advice replaced by
/// the catalogue's general one.
pub fn password_reasons(chrome: &Chrome, weak: &keyledger_commands::WeakPassword) -> Vec<String> {
    use keyledger_commands::password::Refusal;
    if chrome.language == i18n::Language::English || weak.refusals.is_empty() {
        return weak.reasons.clone();
    }
    let mut reasons = Vec::new();
    for refusal in &weak.refusals {
        match refusal {
            Refusal::TooShort(min) => {
                reasons.push(chrome.t1("password-too-short", "min", &min.to_string()))
            }
            Refusal::TooLong(max) => {
                reasons.push(chrome.t1("password-too-long", "max", &max.to_string()))
            }
            Refusal::PersonalDetails => reasons.push(chrome.t("password-personal-details")),
            Refusal::Guessable => {
                reasons.push(chrome.t("password-guessable"));
                reasons.push(chrome.t("password-guessable-advice"));
            }
            Refusal::Breached => reasons.push(chrome.t("password-breached")),
        }
    }
    reasons
}

/// The generic error page.
#[derive(askama::Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub chrome: &'a Chrome,
    /// The error code (`csrf_failed`, …), shown by its message.
    pub code: &'a str,
}

/// A page that says one thing: a flow's result ("check your inbox", "your
/// address is verified"), its element id the contract's (`#check-inbox`, …).
#[derive(askama::Template)]
#[template(path = "notice.html")]
pub struct NoticePage<'a> {
    pub chrome: &'a Chrome,
    /// Catalogue ids of its heading and text.
    pub title: &'a str,
    pub text: &'a str,
    /// The text's element id.
    pub id: &'a str,
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
    let app = second_factor::routes(app);
    let app = sign_up::routes(app);
    let app = links::routes(app);
    let app = consent::routes(app);
    account::routes(app)
}
