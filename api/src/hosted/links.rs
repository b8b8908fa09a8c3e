//! The pages mailed links open (`/verify-email`, `/reset-password`,
//! `/unlock`, `/email-login`, at the paths the mailer writes), and
//! `/forgot-password`, which asks for such a mail.
//!
//! Opening a link never acts: mail scanners and link previews fetch it before
//! its reader does. Opening it moves the token out of the address bar at once:
//! the answer (303) puts it in a short-lived cookie of that page's path alone
//! and leads to the page without it, a form carrying the token in a hidden
//! field; the form's post does the work, and clears the cookie. So the token
//! stays in neither the history nor the address bar, and the language switch
//! keeps working. (The redirect is `Referrer-Policy: no-referrer` like every API
//! answer; the pages are `same-origin`, and their address holds no token.)

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use keyledger_commands::{AuthError, EmailLoginProof, Password};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::UtoipaApp;

use super::{error_page, forms, second_factor, Chrome, FormFailures, NoticePage, QueryFailures};
use crate::error::ApiError;
use crate::extract::{Body, Context, QueryText};
use crate::openapi::{endpoint, RateLimited};
use crate::rate_limit::Limits;
use crate::resources::recovery::{in_background, spend_budget};
use crate::resources::sessions::forget_sessions;
use crate::state::State;

/// One of the link pages' forms: its element ids (`<id>-form`,
/// `<id>-submit`), where it posts, its words, and its fields besides the
/// token.
pub struct LinkForm {
    pub id: &'static str,
    pub action: &'static str,
    pub title: &'static str,
    pub text: &'static str,
    pub submit: &'static str,
    pub email: bool,
    pub new_password: bool,
}

const VERIFY_EMAIL: LinkForm = LinkForm {
    id: "verify-email",
    action: "/verify-email",
    title: "verify-email-title",
    text: "verify-email-text",
    submit: "verify-email-submit",
    email: false,
    new_password: false,
};

const RESET_PASSWORD: LinkForm = LinkForm {
    id: "reset-password",
    action: "/reset-password",
    title: "reset-password-title",
    text: "reset-password-text",
    submit: "reset-password-submit",
    email: false,
    new_password: true,
};

const UNLOCK: LinkForm = LinkForm {
    id: "unlock",
    action: "/unlock",
    title: "unlock-title",
    text: "unlock-text",
    submit: "unlock-submit",
    email: false,
    new_password: false,
};

const EMAIL_LOGIN: LinkForm = LinkForm {
    id: "email-login",
    action: "/email-login",
    title: "email-login-title",
    text: "email-login-text",
    submit: "email-login-submit",
    email: false,
    new_password: false,
};

const FORGOT_PASSWORD: LinkForm = LinkForm {
    id: "forgot-password",
    action: "/forgot-password",
    title: "forgot-password-title",
    text: "forgot-password-text",
    submit: "forgot-password-submit",
    email: true,
    new_password: false,
};

#[derive(askama::Template)]
#[template(path = "link_form.html")]
struct LinkPage<'a> {
    chrome: &'a Chrome,
    form: &'a LinkForm,
    token: Option<&'a str>,
    error: Option<&'a str>,
    reasons: &'a [String],
    email: &'a str,
}

fn form_page(
    chrome: &Chrome,
    status: StatusCode,
    form: &LinkForm,
    token: Option<&str>,
    error: Option<&str>,
    reasons: &[String],
) -> HttpResponse {
    chrome.render(
        status,
        &LinkPage {
            chrome,
            form,
            token,
            error,
            reasons,
            email: "",
        },
    )
}

fn notice(
    chrome: &Chrome,
    title: &'static str,
    id: &'static str,
    text: &'static str,
) -> HttpResponse {
    chrome.render(
        StatusCode::OK,
        &NoticePage {
            chrome,
            title,
            id,
            text,
        },
    )
}

/// The query of a mailed link's page.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkQuery {
    /// The mailed link's token (`klm1.…`); it goes into the page's form.
    #[param(value_type = Option<String>)]
    token: Option<QueryText>,
    /// `1` after the form's post: the page saying it is done.
    #[param(value_type = Option<String>)]
    done: Option<QueryText>,
    /// The page's language (`en`, `ko`), kept in a cookie.
    #[allow(dead_code)]
    #[param(value_type = Option<String>)]
    lang: Option<QueryText>,
}

/// The cookie that keeps a link's token for its page (`__Secure-`: set over
/// https only; the path, the page's own, keeps the links of different pages
/// apart).
fn link_cookie_name(form: &LinkForm) -> String {
    format!("__Secure-keyledger-link-{}", form.id)
}

/// How long an opened link's token is kept for its page: the links' shortest
/// lifetime (a reset link's 15 minutes); the token itself decides beyond.
const LINK_COOKIE_MINUTES: i64 = 15;

fn link_cookie(form: &LinkForm, token: &str, minutes: i64) -> Cookie<'static> {
    Cookie::build(link_cookie_name(form), token.to_owned())
        .path(form.action)
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Lax)
        .max_age(actix_web::cookie::time::Duration::minutes(minutes))
        .finish()
}

/// Clears the link's cookie on `answer` (its work is done).
fn forget_link(answer: &mut actix_web::HttpResponseBuilder, form: &LinkForm) {
    answer.cookie(link_cookie(form, "", 0));
}

/// A token as mailed (`klm1.` and base64url): nothing else is put in a cookie.
fn well_formed(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 512
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A link page's GET: with `token`, to the page without it (303), the token
/// in the page's cookie; without, the form with the cookie's token, the
/// "done" page, or (no token at all: a link cut short, or its cookie expired)
/// the error page, 404 as for a page that is not there.
fn link_page(
    chrome: &Chrome,
    req: &HttpRequest,
    query: &LinkQuery,
    form: &LinkForm,
    done: (&'static str, &'static str),
) -> HttpResponse {
    if query.done.is_some() {
        return notice(chrome, form.title, done.0, done.1);
    }
    if let Some(token) = query.token.as_deref() {
        if !well_formed(token) {
            return error_page(chrome, StatusCode::NOT_FOUND, "invalid_token");
        }
        return chrome
            .redirect(form.action)
            .cookie(link_cookie(form, token, LINK_COOKIE_MINUTES))
            .finish();
    }
    match crate::browser_session::cookie_value(req, &link_cookie_name(form))
        .filter(|t| well_formed(t))
    {
        Some(token) => form_page(chrome, StatusCode::OK, form, Some(token), None, &[]),
        None => error_page(chrome, StatusCode::NOT_FOUND, "invalid_token"),
    }
}

/// A link form's post.
#[derive(Deserialize, ToSchema)]
pub struct TokenForm {
    /// The page's form token (read first, by `forms::accept`, whatever the
    /// rest of the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
    /// The mailed link's token.
    token: String,
}

/// The reset form's post.
#[derive(Deserialize, ToSchema)]
pub struct ResetPasswordForm {
    /// The page's form token (read first, by `forms::accept`, whatever the
    /// rest of the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
    token: String,
    /// The new password (the password policy applies).
    password: String,
}

/// The forgot-password form's post.
#[derive(Deserialize, ToSchema)]
pub struct ForgotPasswordForm {
    /// The page's form token (read first, by `forms::accept`, whatever the
    /// rest of the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
    email: String,
}

/// The error page of a refusal.
fn refused(chrome: &Chrome, e: AuthError) -> HttpResponse {
    let e = ApiError::from(e);
    error_page(chrome, actix_web::ResponseError::status_code(&e), e.code())
}

/// The verify-email link's page
///
/// A form with the link's token (opening the link verifies nothing: see the
/// module for the token's way from the URL into the form); with
/// `done=1`, the page saying the address is verified (`#email-verified`).
#[utoipa::path(
    get,
    path = "/verify-email",
    tag = "pages",
    params(LinkQuery),
    responses(
        (status = 200, description = "An HTML page.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "With `token`: to this page without it, the token kept \
            in a cookie of this page's path for 15 minutes."),
        (status = 404, description = "No token: the error page.", body = String,
            content_type = "text/html; charset=utf-8"),
        QueryFailures,
    )
)]
pub async fn verify_email_page(
    chrome: Chrome,
    req: HttpRequest,
    query: web::Query<LinkQuery>,
) -> HttpResponse {
    link_page(
        &chrome,
        &req,
        &query,
        &VERIFY_EMAIL,
        ("email-verified", "email-verified-text"),
    )
}

/// Verify an address
///
/// The form's post, as `POST /v1/auth/verify-email`: the address is verified
/// (or an address change done), to `/verify-email?done=1` (303). A used,
/// expired or forged token is the error page.
#[utoipa::path(
    post,
    path = "/verify-email",
    tag = "pages",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Verified: to `/verify-email?done=1`."),
        (status = 400, description = "The form did not parse, or the token is used, expired \
            or not one (`invalid_token`).", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 403, description = "Not from this server's page (`csrf_failed`).",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 409, description = "Another account took the new address meanwhile, or a \
            concurrent change.", body = String, content_type = "text/html; charset=utf-8"),
        (status = 503, description = "A backing service is unavailable.", body = String,
            content_type = "text/html; charset=utf-8"),
        FormFailures,
    )
)]
pub async fn verify_email(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let form = match forms::accept::<TokenForm>(&chrome, &req, &body) {
        Ok(form) => form,
        Err(answer) => return *answer,
    };
    match state.auth.verify_email(form.token.trim(), &ctx.0).await {
        Ok(written) => {
            state.settle(written).await;
            let mut answer = chrome.redirect("/verify-email?done=1");
            forget_link(&mut answer, &VERIFY_EMAIL);
            answer.finish()
        }
        Err(e) => refused(&chrome, e),
    }
}

/// The reset-password link's page
///
/// A form with the link's token and a new password; with `done=1`, the page
/// saying the password is set (`#password-reset`).
#[utoipa::path(
    get,
    path = "/reset-password",
    tag = "pages",
    params(LinkQuery),
    responses(
        (status = 200, description = "An HTML page.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "With `token`: to this page without it, the token kept \
            in a cookie of this page's path for 15 minutes."),
        (status = 404, description = "No token: the error page.", body = String,
            content_type = "text/html; charset=utf-8"),
        QueryFailures,
    )
)]
pub async fn reset_password_page(
    chrome: Chrome,
    req: HttpRequest,
    query: web::Query<LinkQuery>,
) -> HttpResponse {
    link_page(
        &chrome,
        &req,
        &query,
        &RESET_PASSWORD,
        ("password-reset", "password-reset-text"),
    )
}

/// Set a new password through a reset link
///
/// The form's post, as `POST /v1/auth/reset-password`: the password is set and
/// every session of the account ends, to `/reset-password?done=1` (303). A
/// password the policy refuses: the form again with the reasons (400).
#[utoipa::path(
    post,
    path = "/reset-password",
    tag = "pages",
    request_body(content = ResetPasswordForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Set: to `/reset-password?done=1`."),
        (status = 400, description = "The form did not parse, or the token is used, expired \
            or not one (`invalid_token`).", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 403, description = "Not from this server's page (`csrf_failed`).",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 409, description = "A concurrent change; try again.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 422, description = "The form again: a password the policy refuses, with \
            the reasons.", body = String, content_type = "text/html; charset=utf-8"),
        (status = 429, description = "Too many password checks at once.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 503, description = "A backing service is unavailable, or the server is \
            busy.", body = String, content_type = "text/html; charset=utf-8"),
        FormFailures,
    )
)]
pub async fn reset_password(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let form = match forms::accept::<ResetPasswordForm>(&chrome, &req, &body) {
        Ok(form) => form,
        Err(answer) => return *answer,
    };
    let token = form.token.trim();
    match state
        .auth
        .reset_password(token, Password::new(form.password), &ctx.0)
        .await
    {
        Ok(outcome) => {
            forget_sessions(&state, &outcome.ended_sessions);
            state.settle(outcome.written).await;
            let mut answer = chrome.redirect("/reset-password?done=1");
            forget_link(&mut answer, &RESET_PASSWORD);
            answer.finish()
        }
        Err(AuthError::WeakPassword(weak)) => form_page(
            &chrome,
            StatusCode::UNPROCESSABLE_ENTITY,
            &RESET_PASSWORD,
            Some(token),
            Some("weak_password"),
            &super::password_reasons(&chrome, &weak),
        ),
        Err(e) => refused(&chrome, e),
    }
}

/// The unlock link's page
///
/// A form with the link's token; with `done=1`, the page saying the account
/// is unlocked (`#account-unlocked`).
#[utoipa::path(
    get,
    path = "/unlock",
    tag = "pages",
    params(LinkQuery),
    responses(
        (status = 200, description = "An HTML page.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "With `token`: to this page without it, the token kept \
            in a cookie of this page's path for 15 minutes."),
        (status = 404, description = "No token: the error page.", body = String,
            content_type = "text/html; charset=utf-8"),
        QueryFailures,
    )
)]
pub async fn unlock_page(
    chrome: Chrome,
    req: HttpRequest,
    query: web::Query<LinkQuery>,
) -> HttpResponse {
    link_page(
        &chrome,
        &req,
        &query,
        &UNLOCK,
        ("account-unlocked", "account-unlocked-text"),
    )
}

/// Unlock a locked account through the mailed link
///
/// The form's post, as `POST /v1/auth/unlock`: to `/unlock?done=1` (303).
#[utoipa::path(
    post,
    path = "/unlock",
    tag = "pages",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Unlocked: to `/unlock?done=1`."),
        (status = 400, description = "The form did not parse, or the token is used, expired \
            or not one (`invalid_token`).", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 403, description = "Not from this server's page (`csrf_failed`).",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 409, description = "A concurrent change; try again.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 503, description = "A backing service is unavailable.", body = String,
            content_type = "text/html; charset=utf-8"),
        FormFailures,
    )
)]
pub async fn unlock(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let form = match forms::accept::<TokenForm>(&chrome, &req, &body) {
        Ok(form) => form,
        Err(answer) => return *answer,
    };
    match state.auth.unlock_with_link(form.token.trim(), &ctx.0).await {
        Ok(written) => {
            state.settle(written).await;
            let mut answer = chrome.redirect("/unlock?done=1");
            forget_link(&mut answer, &UNLOCK);
            answer.finish()
        }
        Err(e) => refused(&chrome, e),
    }
}

/// The email sign-in link's page
///
/// A form with the link's token (opening the link signs nobody in). 404 when
/// sign-in by email is off (`KEYLEDGER_EMAIL_LOGIN`).
#[utoipa::path(
    get,
    path = "/email-login",
    tag = "pages",
    params(LinkQuery),
    responses(
        (status = 200, description = "An HTML page.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "With `token`: to this page without it, the token kept \
            in a cookie of this page's path for 15 minutes."),
        (status = 404, description = "No token, or sign-in by email is off \
            (`email_login_disabled`).",
            body = String, content_type = "text/html; charset=utf-8"),
        QueryFailures,
    )
)]
pub async fn email_login_page(
    state: State,
    chrome: Chrome,
    req: HttpRequest,
    query: web::Query<LinkQuery>,
) -> HttpResponse {
    if !state.auth.email_login_enabled() {
        return refused(&chrome, AuthError::EmailLoginOff);
    }
    if query.done.is_some() {
        return chrome.redirect("/account").finish();
    }
    link_page(&chrome, &req, &query, &EMAIL_LOGIN, ("", ""))
}

/// Sign in with an emailed link
///
/// The form's post, as `POST /v1/auth/email-login/verify` with the token:
/// signed in, the session's cookies and to the account page (303); for an
/// account with a second factor, the second step's page.
#[utoipa::path(
    post,
    path = "/email-login",
    tag = "pages",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The second step's page.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "Signed in: the session's cookies, and to `/account`."),
        (status = 400, description = "The form did not parse, or the token is used, expired \
            or not one (`invalid_token`).", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 403, description = "Not from this server's page (`csrf_failed`), or the \
            account is suspended.", body = String, content_type = "text/html; charset=utf-8"),
        (status = 404, description = "Sign-in by email is off (`email_login_disabled`).",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 409, description = "A concurrent change; try again.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 429, description = "Too many attempts.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 503, description = "A backing service is unavailable.", body = String,
            content_type = "text/html; charset=utf-8"),
        FormFailures,
    )
)]
pub async fn email_login(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let form = match forms::accept::<TokenForm>(&chrome, &req, &body) {
        Ok(form) => form,
        Err(answer) => return *answer,
    };
    if !state.auth.email_login_enabled() {
        return refused(&chrome, AuthError::EmailLoginOff);
    }
    match state
        .auth
        .email_login(EmailLoginProof::Link(form.token.trim()), None, &ctx.0)
        .await
    {
        Ok(outcome) => {
            let mut answer =
                second_factor::signed_in(&state, &chrome, "/account".to_owned(), outcome).await;
            // The link is spent either way (signed in, or its second step begun).
            let _ = answer.add_cookie(&link_cookie(&EMAIL_LOGIN, "", 0));
            answer
        }
        Err(e) => refused(&chrome, e),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForgotQuery {
    /// `1` once the form was taken: the "link sent" page.
    #[param(value_type = Option<String>)]
    sent: Option<QueryText>,
    /// The page's language (`en`, `ko`), kept in a cookie.
    #[allow(dead_code)]
    #[param(value_type = Option<String>)]
    lang: Option<QueryText>,
}

/// The forgot-password page
///
/// A form for the account's address; with `sent=1`, the page saying a link is
/// on its way if an account has it (`#reset-link-sent`).
#[utoipa::path(
    get,
    path = "/forgot-password",
    tag = "pages",
    params(ForgotQuery),
    responses(
        (status = 200, description = "An HTML page.", body = String,
            content_type = "text/html; charset=utf-8"),
        QueryFailures,
    )
)]
pub async fn forgot_password_page(chrome: Chrome, query: web::Query<ForgotQuery>) -> HttpResponse {
    if query.sent.is_some() {
        return notice(
            &chrome,
            FORGOT_PASSWORD.title,
            "reset-link-sent",
            "reset-link-sent-text",
        );
    }
    form_page(&chrome, StatusCode::OK, &FORGOT_PASSWORD, None, None, &[])
}

/// Ask for a password-reset link
///
/// The form's post, as `POST /v1/auth/forgot-password`: to
/// `/forgot-password?sent=1` (303) at once, whether an account has the address
/// or not; the look-up and the mail follow after the answer.
#[utoipa::path(
    post,
    path = "/forgot-password",
    tag = "pages",
    request_body(content = ForgotPasswordForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Taken: to `/forgot-password?sent=1`."),
        (status = 400, description = "The form did not parse.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 403, description = "Not from this server's page (`csrf_failed`).",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 422, description = "The form again: not an email address.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 429, description = "Too many requests for this address.", body = String,
            content_type = "text/html; charset=utf-8"),
        FormFailures,
    )
)]
pub async fn forgot_password(
    state: State,
    limits: Limits,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let form = match forms::accept::<ForgotPasswordForm>(&chrome, &req, &body) {
        Ok(form) => form,
        Err(answer) => return *answer,
    };
    let again = |status: StatusCode, code: &str| {
        chrome.render(
            status,
            &LinkPage {
                chrome: &chrome,
                form: &FORGOT_PASSWORD,
                token: None,
                error: Some(code),
                reasons: &[],
                email: &form.email,
            },
        )
    };
    // An address no account can have is refused at once: that tells nothing.
    let email = match keyledger_domain::Email::parse(&form.email) {
        Ok(email) => email.as_str().to_owned(),
        Err(_) => return again(StatusCode::UNPROCESSABLE_ENTITY, "invalid_email"),
    };
    if let Err(e) = spend_budget(&limits, "forgot-password", &email, &ctx.0) {
        return again(actix_web::ResponseError::status_code(&e), e.code());
    }
    let request_id = ctx.0.request_id.clone();
    let background = state.clone();
    in_background("forgot-password", request_id, async move {
        background.auth.forgot_password(&email, &ctx.0).await
    });
    chrome.redirect("/forgot-password?sent=1").finish()
}

pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(RateLimited(endpoint!(
        self::verify_email_page,
        self::verify_email
    )))
    .service(RateLimited(endpoint!(
        self::reset_password_page,
        self::reset_password
    )))
    .service(RateLimited(endpoint!(self::unlock_page, self::unlock)))
    .service(RateLimited(endpoint!(
        self::email_login_page,
        self::email_login
    )))
    .service(RateLimited(endpoint!(
        self::forgot_password_page,
        self::forgot_password
    )))
}
