//! `/sign-in` and `/sign-out`: the sign-in page (password; a passkey, by the
//! page's script; a link per social provider) and its answers, a provider
//! sign-in's return (`/sign-in/social`), and ending the session.

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use keyledger_commands::{AuthError, Password};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::UtoipaApp;

use super::{error_page, forms, second_factor, Chrome, FormFailures, QueryFailures};
use crate::browser_session;
use crate::error::ApiError;
use crate::extract::{Body, Context, QueryText};
use crate::openapi::{endpoint, RateLimited};
use crate::rate_limit::{context_address, Limits};
use crate::state::State;

#[derive(askama::Template)]
#[template(path = "sign_in.html")]
struct SignInPage<'a> {
    chrome: &'a Chrome,
    error: Option<&'a str>,
    email: &'a str,
    return_to: &'a str,
    /// A notice's element id and text (signed up, account deleted).
    notice: Option<(&'static str, String)>,
    providers: Vec<ProviderLink>,
}

/// A social provider's button: a plain link to the API's start, which comes
/// back to `/sign-in/social`.
struct ProviderLink {
    name: String,
    display_name: String,
    href: String,
}

/// The cookie that binds a provider sign-in started on the sign-in page to
/// the browser that comes back with its code: its value is in the start's app
/// `state`, and `/sign-in/social` takes a code only with both equal. Without
/// it, anyone could send a victim a link with a code of *their own* account
/// and have the victim signed in to it (login CSRF). `SameSite=Lax`: the way
/// back is a cross-site redirect chain, which a `Strict` cookie would miss.
pub const SOCIAL_COOKIE: &str = "__Host-keyledger-social";

/// This browser's social binding, if its cookie holds a well-formed one.
fn social_binding(req: &HttpRequest) -> Option<&str> {
    browser_session::cookie_value(req, SOCIAL_COOKIE).filter(|v| {
        v.len() == 43
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The app `state` a provider start carries for the sign-in page: the
/// browser's binding, then (if it fits the 512 printable characters the start
/// takes) the return URL.
fn social_state(binding: &str, return_to: &str) -> String {
    let state = format!("{binding}~{return_to}");
    if state.len() <= 512 && state.bytes().all(|b| b.is_ascii_graphic()) {
        state
    } else {
        binding.to_owned()
    }
}

/// The configured providers' links, the start's `state` bound to this
/// browser (see [`SOCIAL_COOKIE`]).
fn provider_links(state: &State, binding: &str, return_to: &str) -> Vec<ProviderLink> {
    let back = state.social.pages_return().as_str();
    let app_state = social_state(binding, return_to);
    state
        .social
        .providers
        .iter()
        .map(|provider| {
            let query = [("redirect_uri", back), ("state", app_state.as_str())];
            let query = serde_urlencoded::to_string(query).unwrap_or_default();
            ProviderLink {
                name: provider.name().to_owned(),
                display_name: provider.display_name().to_owned(),
                href: format!("/v1/auth/oauth/{}/start?{query}", provider.name()),
            }
        })
        .collect()
}

/// The sign-in page, with what went wrong (`error`) or a notice.
#[allow(clippy::too_many_arguments)]
pub(super) fn page(
    state: &State,
    chrome: &Chrome,
    req: &HttpRequest,
    status: StatusCode,
    error: Option<&str>,
    email: &str,
    return_to: &str,
    notice: Option<(&'static str, String)>,
) -> HttpResponse {
    let known = social_binding(req);
    let binding = known.map_or_else(keyledger_commands::random_secret, str::to_owned);
    let mut answer = chrome.render(
        status,
        &SignInPage {
            chrome,
            error,
            email,
            return_to,
            notice,
            providers: provider_links(state, &binding, return_to),
        },
    );
    if known.is_none() && !state.social.providers.is_empty() {
        let cookie = actix_web::cookie::Cookie::build(SOCIAL_COOKIE, binding)
            .path("/")
            .http_only(true)
            .secure(true)
            .same_site(actix_web::cookie::SameSite::Lax)
            .finish();
        // A page that failed to render has no links to bind.
        let _ = answer.add_cookie(&cookie);
    }
    answer
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
    /// `1` after a sign-up (verification off): the account is ready.
    #[param(value_type = Option<String>)]
    registered: Option<QueryText>,
    /// `1` after the account was deleted.
    #[param(value_type = Option<String>)]
    deleted: Option<QueryText>,
    /// `login`: show the form even to a signed-in browser (an app asked for a
    /// fresh sign-in, OpenID Connect `prompt=login`).
    #[param(value_type = Option<String>)]
    prompt: Option<QueryText>,
    /// The address to fill in (OpenID Connect `login_hint`).
    #[param(value_type = Option<String>)]
    login_hint: Option<QueryText>,
}

/// The sign-in form's fields.
#[derive(Deserialize, ToSchema)]
pub struct SignInForm {
    email: String,
    password: String,
    /// The page's form token (read first, by `forms::accept`, whatever the
    /// rest of the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
    #[serde(default)]
    return_to: Option<String>,
}

/// Lets the sign-in form's post lead to the app it returns to: an app URL, or
/// the app an authorization request (`/v1/oidc/authorize?…`) sends the browser
/// on to (Chromium applies `form-action` to every redirect after the post).
pub(super) fn allow_return(chrome: &mut Chrome, return_to: &str) {
    let app = match return_to.strip_prefix("/v1/oidc/authorize?") {
        Some(query) => url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "redirect_uri")
            .map(|(_, uri)| uri.into_owned()),
        None => Some(return_to.to_owned()),
    };
    if let Some(url) = app.and_then(|app| url::Url::parse(&app).ok()) {
        if matches!(url.scheme(), "http" | "https") {
            chrome.allow_form_target(browser_session::origin_of(&url));
        }
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
pub async fn sign_in_page(
    state: State,
    mut chrome: Chrome,
    req: HttpRequest,
    query: web::Query<SignInQuery>,
) -> HttpResponse {
    let return_to = forms::return_to(&chrome, query.return_to.as_deref());
    let fresh = query.prompt.as_deref() == Some("login");
    if chrome.signed_in() && !fresh {
        return chrome.redirect(&return_to).finish();
    }
    allow_return(&mut chrome, &return_to);
    let notice = if query.deleted.is_some() {
        Some((
            "account-deleted",
            chrome.t("sign-in-notice-account-deleted"),
        ))
    } else if query.registered.is_some() {
        Some(("registered", chrome.t("sign-in-notice-registered")))
    } else {
        None
    };
    let hint = query.login_hint.as_deref().unwrap_or_default();
    page(
        &state,
        &chrome,
        &req,
        StatusCode::OK,
        None,
        hint,
        &return_to,
        notice,
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
        (status = 200, description = "The second step's page (`form#second-factor-form`): \
            the account has a second factor.", body = String,
            content_type = "text/html; charset=utf-8"),
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
    let form = match forms::accept::<SignInForm>(&chrome, &req, &body) {
        Ok(form) => form,
        Err(answer) => return *answer,
    };
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
        Ok(outcome) => second_factor::signed_in(&state, &chrome, return_to, outcome).await,
        Err(e) => {
            let status = actix_web::ResponseError::status_code(&e);
            page(
                &state,
                &chrome,
                &req,
                status,
                Some(e.code()),
                &form.email,
                &return_to,
                None,
            )
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SocialQuery {
    /// The one-time code of the provider sign-in (from the API's callback).
    #[param(value_type = Option<String>)]
    code: Option<QueryText>,
    /// What the sign-in page put in the start's `state`: the browser's
    /// binding, `~`, and where to go once signed in (checked like `return_to`).
    #[param(value_type = Option<String>)]
    state: Option<QueryText>,
    /// Why the provider sign-in did not happen (`access_denied`, …).
    #[param(value_type = Option<String>)]
    error: Option<QueryText>,
}

/// The codes a provider sign-in's `error` may be (any other is shown as
/// `provider_error`: the page shows no text someone else chose).
const SOCIAL_ERRORS: [&str; 12] = [
    "access_denied",
    "login_required",
    "consent_required",
    "interaction_required",
    "provider_unavailable",
    "provider_error",
    "invalid_id_token",
    "account_exists",
    "identity_in_use",
    "email_required",
    "account_suspended",
    "server_error",
];

/// Back from a social provider
///
/// Where a provider sign-in started on the sign-in page comes back (through
/// the API's callback) with a one-time `code`, taken only by the browser that
/// started it (`state` holds its `__Host-keyledger-social` binding; else 400
/// `invalid_state`, the code left unspent), and exchanged as
/// `POST /v1/auth/oauth/exchange` does: signed in, the session's cookies and
/// to the return URL the sign-in page gave (303); for an account with a
/// second factor, the second step's page. With `error`, or a code that does
/// not work, the sign-in page with what went wrong.
#[utoipa::path(
    get,
    path = "/sign-in/social",
    tag = "pages",
    params(SocialQuery),
    responses(
        (status = 200, description = "The second step's page.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "Signed in: the session's cookies, and to the return URL \
            (without `code` or `error`: to `/sign-in`)."),
        (status = 400, description = "The sign-in page: the provider sign-in failed, the \
            code is used, expired or not one, or it came back to another browser \
            (`invalid_state`).", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 403, description = "The sign-in page: the account is suspended or its email \
            not verified.", body = String, content_type = "text/html; charset=utf-8"),
        (status = 409, description = "The sign-in page: a concurrent change; try again.",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 429, description = "The sign-in page: too many attempts.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 503, description = "The sign-in page: a backing service is unavailable.",
            body = String, content_type = "text/html; charset=utf-8"),
        QueryFailures,
    )
)]
pub async fn social(
    state: State,
    ctx: Context,
    mut chrome: Chrome,
    req: HttpRequest,
    query: web::Query<SocialQuery>,
) -> HttpResponse {
    let (bound, return_to) = match query
        .state
        .as_deref()
        .map(|s| s.split_once('~').unwrap_or((s, "")))
    {
        Some((binding, return_to)) => (
            social_binding(&req).is_some_and(|own| {
                bool::from(subtle::ConstantTimeEq::ct_eq(
                    own.as_bytes(),
                    binding.as_bytes(),
                ))
            }),
            Some(return_to),
        ),
        None => (false, None),
    };
    let return_to = forms::return_to(&chrome, return_to);
    allow_return(&mut chrome, &return_to);
    let refused = |code: &str, status: StatusCode| {
        page(
            &state,
            &chrome,
            &req,
            status,
            Some(code),
            "",
            &return_to,
            None,
        )
    };
    if let Some(error) = query.error.as_deref() {
        let code = SOCIAL_ERRORS
            .into_iter()
            .find(|known| *known == error)
            .unwrap_or("provider_error");
        return refused(code, StatusCode::BAD_REQUEST);
    }
    // Neither: nothing to finish here.
    let Some(code) = query.code.as_deref() else {
        return chrome.redirect("/sign-in").finish();
    };
    // Checked before the code is spent: the browser it was meant for may
    // still use it.
    if !bound {
        return refused("invalid_state", StatusCode::BAD_REQUEST);
    }
    match state
        .auth
        .exchange_federation_code(code, None, &ctx.0)
        .await
    {
        Ok(outcome) => second_factor::signed_in(&state, &chrome, return_to, outcome).await,
        Err(e) => {
            let e = ApiError::from(e);
            refused(e.code(), actix_web::ResponseError::status_code(&e))
        }
    }
}

/// The sign-out form's field.
#[derive(Deserialize, ToSchema)]
pub struct SignOutForm {
    /// The page's form token (read first, by `forms::accept`, whatever the
    /// rest of the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
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
    if let Err(answer) = forms::accept::<SignOutForm>(&chrome, &req, &body) {
        return *answer;
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
        .service(RateLimited(endpoint!(self::social)))
        .service(RateLimited(endpoint!(self::sign_out)))
}
