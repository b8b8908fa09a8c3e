//! The pages this server serves to browsers, compiled in: `/pages/passkeys`, where a
//! person signs in with a passkey or registers one, and its script
//! `/pages/passkeys.js`, the reference code for passkeys in a browser (docs/api.md
//! quotes it). Plain files, no template: nothing in them depends on the request.

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::header::{HeaderValue, CONTENT_SECURITY_POLICY};
use actix_web::HttpResponse;
use utoipa_actix_web::UtoipaApp;

use crate::openapi::endpoint;

const PASSKEYS_HTML: &str = include_str!("../pages/passkeys.html");
const PASSKEYS_JS: &str = include_str!("../pages/passkeys.js");

/// The pages' own `Content-Security-Policy`, which replaces the JSON answers'
/// `default-src 'none'` (the security headers fill it in only when a handler set
/// none, see `hardening.rs`): scripts, styles, images and requests from this origin
/// only, and no inline script at all, so text injected into a page cannot run. The
/// script is a file of its own for this reason. Passkey ceremonies need no more:
/// `navigator.credentials` is not a fetch, and the API is on this origin.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
     style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Passkeys: sign in or register one
///
/// An HTML page with an email field and two buttons, signing in with a passkey
/// (discoverable, or for the email given) and registering one for the signed-in
/// account. It keeps its tokens in memory only. Its script is
/// `/pages/passkeys.js`; nothing comes from another origin.
#[utoipa::path(
    get,
    path = "/pages/passkeys",
    tag = "pages",
    responses((status = 200, description = "An HTML page.", body = String,
        content_type = "text/html; charset=utf-8"))
)]
pub async fn passkeys() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        ))
        .body(PASSKEYS_HTML)
}

/// The passkeys page's script
///
/// Defines `window.keyledgerPasskeys` with `register(accessToken, name)`,
/// `signIn(email?)` and `secondFactor(mfaToken, methodId)`, each one WebAuthn
/// ceremony against this API, and wires the page's buttons to them. A file of its
/// own, not inline, so that the page's policy allows scripts from this origin only.
#[utoipa::path(
    get,
    path = "/pages/passkeys.js",
    tag = "pages",
    responses((status = 200, description = "The page's JavaScript.", body = String,
        content_type = "text/javascript; charset=utf-8"))
)]
pub async fn passkeys_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        ))
        .body(PASSKEYS_JS)
}

/// Registers the pages at the root, outside the rate limits: they are static files,
/// and the API routes they call are limited as always.
pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(endpoint!(self::passkeys))
        .service(endpoint!(self::passkeys_js))
}
