//! The logout confirmation page of the OpenID provider's `end_session_endpoint`
//! (`/v1/oidc/logout`, whose routes are in `resources::oidc`).
//!
//! RP-Initiated Logout 1.0 §2: the provider must ask the user before ending
//! the browser's session when the request brings no ID token of this user (no
//! `id_token_hint`, or one of another user). A link on any site can send a
//! browser to the logout endpoint; only the user's own click on this page,
//! posted from this server's page with its form token (the pages' CSRF rule),
//! ends the session.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use askama::Template as _;

use super::{i18n::Language, Chrome};
use crate::error::ApiError;

#[derive(askama::Template)]
#[template(path = "logout.html")]
struct LogoutPage<'a> {
    chrome: &'a Chrome,
    /// The question (`true`) or the answer once signed out.
    confirm: bool,
    /// The signed-in account's address, so the user knows which one ends.
    email: Option<&'a str>,
    /// The app that asked, by its registered name.
    app: Option<&'a str>,
    /// The logout request's parameters the form posts again.
    fields: &'a [(&'static str, String)],
}

/// The reader's language from `ui_locales` (OpenID Connect Core §3.1.2.1, as
/// RP-Initiated Logout §2 takes it), unless the page's own switch was used.
pub fn apply_ui_locales(chrome: &mut Chrome, query: &str, ui_locales: Option<&str>) {
    let switched = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .iter()
        .any(|(key, _)| key == super::i18n::LANGUAGE_PARAMETER);
    if switched {
        return;
    }
    if let Some(language) = ui_locales
        .unwrap_or_default()
        .split_whitespace()
        .find_map(Language::of_tag)
    {
        chrome.language = language;
    }
}

/// "Sign out of Keyledger?": a form that posts `fields` back to the logout
/// endpoint with `confirm`. `back` is where the browser goes afterwards (an
/// app's registered post-logout URI), which the page's policy must let a form
/// post lead to.
pub fn confirmation(
    mut chrome: Chrome,
    email: Option<&str>,
    app: Option<&str>,
    back: Option<&str>,
    fields: &[(&'static str, String)],
) -> HttpResponse {
    if let Some(url) = back.and_then(|b| url::Url::parse(b).ok()) {
        if matches!(url.scheme(), "http" | "https") {
            chrome.allow_form_target(crate::browser_session::origin_of(&url));
        }
    }
    chrome.render(
        StatusCode::OK,
        &LogoutPage {
            chrome: &chrome,
            confirm: true,
            email,
            app,
            fields,
        },
    )
}

/// "You have signed out": the answer to a confirmed logout without a URI to
/// return to. The session's cookies are cleared with it.
pub fn signed_out(chrome: &Chrome) -> HttpResponse {
    let page = LogoutPage {
        chrome,
        confirm: false,
        email: None,
        app: None,
        fields: &[],
    };
    match page.render() {
        Ok(html) => {
            let mut answer = chrome.answer(StatusCode::OK);
            crate::browser_session::clear_session_cookies(&mut answer);
            answer.body(html)
        }
        Err(e) => {
            tracing::error!(error = %e, "a page failed to render");
            actix_web::ResponseError::error_response(&ApiError::Internal(
                "a page failed to render".into(),
            ))
        }
    }
}
