//! `/account`: what a signed-in person sees of their account and can change.

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use utoipa_actix_web::UtoipaApp;

use super::Chrome;
use crate::openapi::endpoint;
use crate::state::State;

#[derive(askama::Template)]
#[template(path = "account.html")]
struct AccountPage<'a> {
    chrome: &'a Chrome,
    email: &'a str,
}

/// The account page
///
/// For a signed-in browser (the session's cookies); any other is sent to
/// `/sign-in`, which brings it back here.
#[utoipa::path(
    get,
    path = "/account",
    tag = "pages",
    responses(
        (status = 200, description = "An HTML page.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "Not signed in: to `/sign-in?return_to=/account`."),
    )
)]
pub async fn account(state: State, chrome: Chrome) -> HttpResponse {
    let Some(session) = &chrome.session else {
        return chrome.redirect("/sign-in?return_to=%2Faccount").finish();
    };
    let email = match state.queries.account(session.user_id).await {
        Ok(Some(account)) => account.email,
        // Erased since its token was issued.
        Ok(None) => return chrome.redirect("/sign-in").finish(),
        Err(e) => {
            tracing::warn!(error = %e, "the account page could not read the account");
            return super::error_page(&chrome, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
    };
    chrome.render(
        StatusCode::OK,
        &AccountPage {
            chrome: &chrome,
            email: &email,
        },
    )
}

pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(endpoint!(self::account))
}
