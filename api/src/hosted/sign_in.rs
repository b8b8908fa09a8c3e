//! `/sign-in` and `/sign-out`: the password sign-in form and its answer, and
//! ending the session.

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use keyledger_commands::{AuthError, Password, SignIn};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::UtoipaApp;

use super::{error_page, forms, Chrome, FormFailures, QueryFailures};
use crate::browser_session;
use crate::error::ApiError;
use crate::extract::{Body, Context, QueryText};
use crate::openapi::{endpoint, RateLimited};
use crate::rate_limit::{context_address, Limits};
use crate::resources::sessions::forget_sessions;
use crate::state::State;

#[derive(askama::Template)]
#[template(path = "sign_in.html")]
struct SignInPage<'a> {
    chrome: &'a Chrome,
    error: Option<&'a str>,
    email: &'a str,
    return_to: &'a str,
    /// Whether the browser comes from deleting its account (a notice says it
    /// worked).
    deleted: bool,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignInQuery {
    /// Where to go once signed in: a path on this server, or an app URL of
    /// `KEYLEDGER_PAGES_RETURN_URLS`; anything else is the account page.
    #[param(value_type = Option<String>)]
    return_to: Option<QueryText>,
    /// The page's language (`en`, `ko`), kept in a cookie.
    #[allow(dead_code)]
    #[param(value_type = Option<String>)]
    lang: Option<QueryText>,
    /// `1` after the account page deleted the account: the page says so.
    #[param(value_type = Option<String>)]
    deleted: Option<QueryText>,
}

/// The sign-in form's fields.
#[derive(Deserialize, ToSchema)]
pub struct SignInForm {
    email: String,
    password: String,
    /// The page's form token.
    csrf_token: String,
    #[serde(default)]
    return_to: Option<String>,
}

/// Lets the sign-in form's post lead to the app it returns to.
fn allow_return(chrome: &mut Chrome, return_to: &str) {
    if let Ok(url) = url::Url::parse(return_to) {
        chrome.allow_form_target(browser_session::origin_of(&url));
    }
}

/// The sign-in page
///
/// Email and password; a signed-in browser goes straight to `return_to`.
#[utoipa::path(
    get,
    path = "/sign-in",
    tag = "pages",
    params(SignInQuery),
    responses(
        (status = 200, description = "An HTML page.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "Already signed in: to `return_to`."),
        QueryFailures,
    )
)]
pub async fn sign_in_page(mut chrome: Chrome, query: web::Query<SignInQuery>) -> HttpResponse {
    let return_to = forms::return_to(&chrome, query.return_to.as_deref());
    if chrome.signed_in() {
        return chrome.redirect(&return_to).finish();
    }
    allow_return(&mut chrome, &return_to);
    chrome.render(
        StatusCode::OK,
        &SignInPage {
            chrome: &chrome,
            error: None,
            email: "",
            return_to: &return_to,
            deleted: query.deleted.as_deref() == Some("1"),
        },
    )
}

/// Sign in with a password
///
/// The form's post. Signed in: the session's cookies are set and the browser
/// goes to `return_to` (303). Otherwise the form again, with what went wrong
/// (the same words for an unknown email as for a wrong password).
#[utoipa::path(
    post,
    path = "/sign-in",
    tag = "pages",
    request_body(content = SignInForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed in: the session's cookies, and to `return_to`."),
        (status = 400, description = "The form again: it did not parse.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 401, description = "The form again: wrong email or password.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 403, description = "Not from this server's page (`csrf_failed`), or the \
            account is suspended or its email not verified.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 429, description = "Too many attempts.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 503, description = "A backing service is unavailable.", body = String,
            content_type = "text/html; charset=utf-8"),
        FormFailures,
    )
)]
pub async fn sign_in(
    state: State,
    limits: Limits,
    ctx: Context,
    mut chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let Some(form) = forms::parse::<SignInForm>(&body) else {
        return error_page(&chrome, StatusCode::BAD_REQUEST, "invalid_form");
    };
    if !forms::is_own(&chrome, &req, &form.csrf_token) {
        return error_page(&chrome, StatusCode::FORBIDDEN, "csrf_failed");
    }
    let return_to = forms::return_to(&chrome, form.return_to.as_deref());
    allow_return(&mut chrome, &return_to);
    let outcome = limits
        .accounts
        .attempt(
            &form.email,
            context_address(ctx.0.ip.as_deref()),
            |e| matches!(e, AuthError::InvalidCredentials),
            state
                .auth
                .login_from_device(&form.email, Password::new(form.password), None, &ctx.0),
        )
        .await;
    match outcome {
        Ok(SignIn::Complete(outcome)) => {
            forget_sessions(&state, &outcome.ended_sessions);
            state.settle(outcome.written).await;
            let mut answer = chrome.redirect(&return_to);
            browser_session::set_session_cookies(&state, &mut answer, &outcome.tokens);
            answer.finish()
        }
        Ok(SignIn::SecondFactorRequired(challenge)) => {
            state.settle(challenge.written.clone()).await;
            // The second step's page.
            error_page(&chrome, StatusCode::FORBIDDEN, "mfa_required")
        }
        Err(e) => {
            let status = actix_web::ResponseError::status_code(&e);
            chrome.render(
                status,
                &SignInPage {
                    chrome: &chrome,
                    error: Some(e.code()),
                    email: &form.email,
                    return_to: &return_to,
                    deleted: false,
                },
            )
        }
    }
}

/// The sign-out form's field.
#[derive(Deserialize, ToSchema)]
pub struct SignOutForm {
    csrf_token: String,
}

/// Sign out
///
/// Ends the browser's session and clears its cookies; then to `/sign-in`.
#[utoipa::path(
    post,
    path = "/sign-out",
    tag = "pages",
    request_body(content = SignOutForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed out (or was not): to `/sign-in`."),
        (status = 400, description = "The form did not parse.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 403, description = "Not from this server's page (`csrf_failed`).",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 503, description = "A backing service is unavailable.", body = String,
            content_type = "text/html; charset=utf-8"),
        FormFailures,
    )
)]
pub async fn sign_out(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let Some(form) = forms::parse::<SignOutForm>(&body) else {
        return error_page(&chrome, StatusCode::BAD_REQUEST, "invalid_form");
    };
    if !forms::is_own(&chrome, &req, &form.csrf_token) {
        return error_page(&chrome, StatusCode::FORBIDDEN, "csrf_failed");
    }
    if let Some(session) = &chrome.session {
        match state
            .auth
            .logout(session.user_id, session.session_id, &ctx.0)
            .await
        {
            Ok(written) => {
                state.revoked.insert(session.session_id, Utc::now());
                state.settle(written).await;
            }
            // Ended already (elsewhere, or expired): signed out all the same.
            Err(AuthError::SessionNotFound) => {}
            Err(e) => {
                let e = ApiError::from(e);
                let status = actix_web::ResponseError::status_code(&e);
                return error_page(&chrome, status, e.code());
            }
        }
    }
    let mut answer = chrome.redirect("/sign-in");
    browser_session::clear_session_cookies(&mut answer);
    answer.finish()
}

pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(RateLimited(endpoint!(self::sign_in_page, self::sign_in)))
        .service(RateLimited(endpoint!(self::sign_out)))
}
