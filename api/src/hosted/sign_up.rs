//! `/sign-up`: an account with an email, a password and a name.
//!
//! With address verification on, the post is answered like `POST
//! /v1/auth/register`: once the input is checked and before any account work,
//! the same "check your inbox" whether the address was free or taken (the
//! inbox tells its owner which), so the page never tells who has an account.

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use keyledger_commands::{AuthError, Password};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::UtoipaApp;

use super::{forms, Chrome, FormFailures, NoticePage, QueryFailures};
use crate::error::ApiError;
use crate::extract::{Body, Context, QueryText};
use crate::openapi::{endpoint, RateLimited};
use crate::rate_limit::Limits;
use crate::resources::recovery::{in_background, spend_budget};
use crate::state::State;

#[derive(askama::Template)]
#[template(path = "sign_up.html")]
struct SignUpPage<'a> {
    chrome: &'a Chrome,
    error: Option<&'a str>,
    /// The field the error is about (`email`, `password`, `display_name`).
    field: &'a str,
    /// Why a password was refused (the policy's words).
    reasons: &'a [String],
    email: &'a str,
    display_name: &'a str,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignUpQuery {
    /// `1` once the form was taken: the "check your inbox" page.
    #[param(value_type = Option<String>)]
    sent: Option<QueryText>,
    /// The page's language (`en`, `ko`), kept in a cookie.
    #[allow(dead_code)]
    #[param(value_type = Option<String>)]
    lang: Option<QueryText>,
}

/// The sign-up form's fields.
#[derive(Deserialize, ToSchema)]
pub struct SignUpForm {
    /// The page's form token (read first, by `forms::accept`, whatever the
    /// rest of the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
    email: String,
    password: String,
    #[serde(default)]
    display_name: Option<String>,
}

/// The sign-up page
///
/// The form; with `sent=1`, the "check your inbox" page its post leads to.
#[utoipa::path(
    get,
    path = "/sign-up",
    tag = "pages",
    params(SignUpQuery),
    responses(
        (status = 200, description = "An HTML page.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "Already signed in: to the account page."),
        QueryFailures,
    )
)]
pub async fn sign_up_page(chrome: Chrome, query: web::Query<SignUpQuery>) -> HttpResponse {
    if query.sent.is_some() {
        return chrome.render(
            StatusCode::OK,
            &NoticePage {
                chrome: &chrome,
                title: "check-inbox-title",
                id: "check-inbox",
                text: "check-inbox-text",
            },
        );
    }
    if chrome.signed_in() {
        return chrome.redirect("/account").finish();
    }
    form_again(&chrome, StatusCode::OK, None, "", &[], "", "")
}

fn form_again(
    chrome: &Chrome,
    status: StatusCode,
    error: Option<&str>,
    field: &str,
    reasons: &[String],
    email: &str,
    display_name: &str,
) -> HttpResponse {
    chrome.render(
        status,
        &SignUpPage {
            chrome,
            error,
            field,
            reasons,
            email,
            display_name,
        },
    )
}

/// Create an account
///
/// The form's post. With address verification on: to the "check your inbox"
/// page (303), the same for a free and a taken address; the mail says what
/// follows. Off: the account exists, to `/sign-in?registered=1` (303). Input
/// that will not do (an address that cannot be one, a guessable password, a
/// name with control characters): the form again, saying why.
#[utoipa::path(
    post,
    path = "/sign-up",
    tag = "pages",
    request_body(content = SignUpForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Taken: to the \"check your inbox\" page, or (verification \
            off) to `/sign-in?registered=1`."),
        (status = 400, description = "The form did not parse.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 403, description = "Not from this server's page (`csrf_failed`).",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 409, description = "The form again: the address has an account \
            (verification off only), or a concurrent change.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 422, description = "The form again: an email, password or name that will \
            not do, and why.", body = String, content_type = "text/html; charset=utf-8"),
        (status = 429, description = "Too many sign-ups for this address, or too many \
            password checks at once.", body = String, content_type = "text/html; charset=utf-8"),
        (status = 503, description = "A backing service is unavailable, or the server is \
            busy.", body = String, content_type = "text/html; charset=utf-8"),
        FormFailures,
    )
)]
pub async fn sign_up(
    state: State,
    limits: Limits,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let form = match forms::accept::<SignUpForm>(&chrome, &req, &body) {
        Ok(form) => form,
        Err(answer) => return *answer,
    };
    let display_name = form
        .display_name
        .as_deref()
        .map(str::trim)
        .filter(|name| !name.is_empty());
    let refused = |e: ApiError| {
        let (field, reasons) = match &e {
            ApiError::Auth(AuthError::InvalidEmail | AuthError::EmailTaken) => ("email", vec![]),
            ApiError::Auth(AuthError::InvalidDisplayName) => ("display_name", vec![]),
            ApiError::Auth(AuthError::WeakPassword(weak)) => {
                ("password", super::password_reasons(&chrome, weak))
            }
            _ => ("", vec![]),
        };
        form_again(
            &chrome,
            actix_web::ResponseError::status_code(&e),
            Some(e.code()),
            field,
            &reasons,
            &form.email,
            display_name.unwrap_or_default(),
        )
    };
    // The same budget as the API's registration: a sign-up counts against its
    // address, whether or not it has an account.
    if let Err(e) = spend_budget(&limits, "register", &form.email, &ctx.0) {
        return refused(e);
    }
    if state.auth.email_verification().is_on() {
        let account = match state
            .auth
            .check_new_account(
                &form.email,
                Password::new(form.password.clone()),
                display_name,
            )
            .await
        {
            Ok(account) => account,
            Err(e) => return refused(e.into()),
        };
        let turn = match state.auth.hashing_turn(&ctx.0) {
            Ok(turn) => turn,
            Err(e) => return refused(e.into()),
        };
        let request_id = ctx.0.request_id.clone();
        let background = state.clone();
        in_background("registering", request_id, async move {
            background
                .auth
                .register_unrevealing(account, turn, &ctx.0)
                .await
                .map(drop)
        });
        return chrome.redirect("/sign-up?sent=1").finish();
    }
    match state
        .auth
        .register(
            &form.email,
            Password::new(form.password.clone()),
            display_name,
            &ctx.0,
        )
        .await
    {
        Ok(registered) => {
            state.settle([registered.written]).await;
            chrome.redirect("/sign-in?registered=1").finish()
        }
        Err(e) => refused(e.into()),
    }
}

pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(RateLimited(endpoint!(self::sign_up_page, self::sign_up)))
}
