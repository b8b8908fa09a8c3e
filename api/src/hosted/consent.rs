//! `/consent`: a third-party app asks for the user's account (OpenID Connect).
//!
//! The authorization endpoint sends the browser here with its request when the
//! app is not first-party and the user has not yet allowed what it asks for
//! (or it asked with `prompt=consent`). Allowing remembers the scopes for that
//! app (an event on the account) and goes back to the authorization endpoint;
//! denying sends the app `access_denied`.

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::UtoipaApp;

use super::{also_as_page, forms, Chrome};
use crate::error::ApiError;
use crate::extract::{Body, Context};
use crate::openapi::{endpoint, RateLimited};
use crate::resources::oidc::{self, AuthorizationRequest};
use crate::state::State;

crate::openapi::failures!(
    /// The consent page's answers in the JSON envelope: a query that does not
    /// parse, a client or redirect URI that is not registered.
    pub ConsentQueryEnvelope = [
        crate::resources::admin::invalid_query(),
        oidc::unknown_client(),
        oidc::unregistered_redirect(),
        oidc::unparsable(),
        crate::openapi::unavailable(),
    ]
);

crate::openapi::failures!(
    /// The consent form's answers in the JSON envelope.
    pub ConsentFormEnvelope = [
        crate::openapi::raw_body(),
        oidc::unknown_client(),
        oidc::unregistered_redirect(),
        oidc::unparsable(),
        crate::openapi::unavailable(),
    ]
);

/// What the consent page answers besides itself; its 400 may also be a page.
pub struct ConsentPageFailures;

impl utoipa::IntoResponses for ConsentPageFailures {
    fn responses(
    ) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        also_as_page(<ConsentQueryEnvelope as utoipa::IntoResponses>::responses())
    }
}

/// What the consent form's post answers besides its redirects.
pub struct ConsentFormFailures;

impl utoipa::IntoResponses for ConsentFormFailures {
    fn responses(
    ) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        also_as_page(<ConsentFormEnvelope as utoipa::IntoResponses>::responses())
    }
}

#[derive(askama::Template)]
#[template(path = "consent.html")]
struct ConsentPage<'a> {
    chrome: &'a Chrome,
    app: &'a str,
    /// Each scope asked for, with the message that says what it lets the app do.
    scopes: Vec<(String, String)>,
    /// The host the browser goes back to.
    host: &'a str,
    /// The authorization request, to come back to.
    request: &'a str,
}

/// The consent form's fields.
#[derive(Deserialize, ToSchema)]
pub struct ConsentForm {
    /// The page's form token (checked first by `forms::accept`).
    #[allow(dead_code)]
    csrf_token: String,
    /// The authorization request as a query string, as the page received it.
    request: String,
    /// `allow` or `deny`.
    decision: String,
}

/// The consent page
///
/// What the app asks for, with Allow and Deny. Signed out: to sign in first.
#[utoipa::path(
    get,
    path = "/consent",
    tag = "pages",
    params(oidc::AuthorizeParams),
    responses(
        (status = 200, description = "An HTML page.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "To the app (an error), or to sign in first."),
        ConsentPageFailures,
    )
)]
pub async fn consent_page(state: State, mut chrome: Chrome, req: HttpRequest) -> HttpResponse {
    let Ok(request) = actix_web::web::Query::<AuthorizationRequest>::from_query(req.query_string())
    else {
        return actix_web::ResponseError::error_response(&oidc::unparsable());
    };
    let request = request.into_inner();
    let query = request.to_query();
    let checked = match oidc::check_request(&state, request).await {
        Ok(checked) => checked,
        Err(answer) => return *answer,
    };
    if chrome.session.is_none() {
        let back = format!("/consent?{query}");
        let to = serde_urlencoded::to_string([("return_to", back.as_str())]).unwrap_or_default();
        return chrome.redirect(&format!("/sign-in?{to}")).finish();
    }
    let host = url::Url::parse(&checked.redirect_uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| checked.redirect_uri.clone());
    allow_app(&mut chrome, &checked.redirect_uri);
    let scopes = checked
        .scopes
        .iter()
        .map(|s| (s.clone(), format!("consent-scope-{s}")))
        .collect();
    chrome.render(
        StatusCode::OK,
        &ConsentPage {
            chrome: &chrome,
            app: &checked.client.name,
            scopes,
            host: &host,
            request: &query,
        },
    )
}

/// After the post the browser goes on to the app (through the authorization
/// endpoint): Chromium applies `form-action` to those redirects too.
fn allow_app(chrome: &mut Chrome, redirect_uri: &str) {
    if let Ok(url) = url::Url::parse(redirect_uri) {
        if matches!(url.scheme(), "http" | "https") {
            chrome.allow_form_target(crate::browser_session::origin_of(&url));
        }
    }
}

/// The consent form's post
///
/// `allow`: the scopes are remembered for the app and the browser goes back to
/// the authorization endpoint (which now sends it to the app with a code).
/// `deny`: to the app with `error=access_denied`.
#[utoipa::path(
    post,
    path = "/consent",
    tag = "pages",
    request_body(content = ConsentForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "To the authorization endpoint, or to the app; \
            signed out: to sign in."),
        (status = 403, description = "Not from this server's page (`csrf_failed`).",
            body = String, content_type = "text/html; charset=utf-8"),
        ConsentFormFailures,
    )
)]
pub async fn consent(
    state: State,
    mut chrome: Chrome,
    ctx: Context,
    req: HttpRequest,
    body: Body,
) -> HttpResponse {
    let form: ConsentForm = match forms::accept(&chrome, &req, &body.0) {
        Ok(form) => form,
        Err(page) => return *page,
    };
    let Some(session) = chrome.session.clone() else {
        return chrome.redirect("/sign-in").finish();
    };
    let Ok(request) = serde_urlencoded::from_str::<AuthorizationRequest>(&form.request) else {
        return super::error_page(&chrome, StatusCode::BAD_REQUEST, "invalid_request");
    };
    let checked = match oidc::check_request(&state, request).await {
        Ok(checked) => checked,
        Err(answer) => return *answer,
    };
    allow_app(&mut chrome, &checked.redirect_uri);
    if form.decision != "allow" {
        let to = oidc::answer_url(
            &state,
            &checked.redirect_uri,
            checked.request.state.as_deref(),
            &[
                ("error", "access_denied"),
                ("error_description", "the user did not allow it"),
            ],
        );
        return chrome.redirect(&to).finish();
    }
    let scopes: Vec<String> = checked.scopes.iter().cloned().collect();
    if let Err(e) = state
        .oauth_clients
        .grant_consent(session.user_id, checked.client.client_id, &scopes, &ctx.0)
        .await
    {
        return actix_web::ResponseError::error_response(&ApiError::from(e));
    }
    let back = checked.request.without_prompt("consent").path();
    chrome.redirect(&back).finish()
}

pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(RateLimited(endpoint!(self::consent_page, self::consent)))
}
