//! `/sign-in/second-factor`: the sign-in's second step, for an account with a
//! second factor, after its password, a provider or an emailed link.
//!
//! The step's page carries the `mfa_token` of the login in a hidden field (it
//! is the step's only state: single use, a few attempts, short-lived, never in
//! a URL) and the methods it may use, so that a wrong code or a "send me a
//! code" can show the page again without asking the server what they were.
//! The methods field only chooses which buttons show: the token decides what
//! the server accepts.

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use keyledger_commands::{AuthError, SecondFactorChallenge, SignIn};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::UtoipaApp;
use uuid::Uuid;

use super::sign_in::allow_return;
use super::{error_page, forms, Chrome, FormFailures};
use crate::browser_session;
use crate::error::ApiError;
use crate::extract::{Body, Context};
use crate::openapi::{endpoint, RateLimited};
use crate::resources::sessions::forget_sessions;
use crate::state::State;

/// One method the step may use (nothing secret: its id and kind).
pub struct StepMethod {
    pub id: Uuid,
    pub kind: &'static str,
}

/// A second step in progress, as its page shows it.
pub struct Step {
    pub mfa_token: String,
    pub methods: Vec<StepMethod>,
    pub return_to: String,
}

/// The kinds a page knows (an unknown one in a posted field is dropped).
const KINDS: [&str; 4] = ["totp", "email", "sms", "passkey"];

impl Step {
    fn of(challenge: SecondFactorChallenge, return_to: String) -> Self {
        Self {
            mfa_token: challenge.mfa_token,
            methods: challenge
                .methods
                .into_iter()
                .map(|m| StepMethod {
                    id: m.method_id,
                    kind: m.kind.as_str(),
                })
                .collect(),
            return_to,
        }
    }

    /// The step again from a posted form.
    fn posted(mfa_token: String, methods: &str, return_to: String) -> Self {
        let methods = methods
            .split(',')
            .filter_map(|item| {
                let (kind, id) = item.split_once(':')?;
                let kind = KINDS.into_iter().find(|k| *k == kind)?;
                Some(StepMethod {
                    id: id.parse().ok()?,
                    kind,
                })
            })
            .take(KINDS.len() * 8)
            .collect();
        Self {
            mfa_token,
            methods,
            return_to,
        }
    }

    /// The methods as the page's hidden field keeps them: `kind:id,…`.
    pub fn methods_field(&self) -> String {
        self.methods
            .iter()
            .map(|m| format!("{}:{}", m.kind, m.id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The methods whose code is sent when asked for (email, SMS).
    pub fn sendable(&self) -> Vec<&StepMethod> {
        self.methods
            .iter()
            .filter(|m| matches!(m.kind, "email" | "sms"))
            .collect()
    }

    /// The passkey method, if the account has one (every passkey answers it).
    pub fn passkey(&self) -> Option<&StepMethod> {
        self.methods.iter().find(|m| m.kind == "passkey")
    }

    pub fn has_other_ways(&self) -> bool {
        !self.sendable().is_empty() || self.passkey().is_some()
    }
}

#[derive(askama::Template)]
#[template(path = "second_factor.html")]
struct SecondFactorPage<'a> {
    chrome: &'a Chrome,
    step: &'a Step,
    error: Option<&'a str>,
    code_sent: bool,
}

fn page(
    chrome: &Chrome,
    status: StatusCode,
    step: &Step,
    error: Option<&str>,
    code_sent: bool,
) -> HttpResponse {
    chrome.render(
        status,
        &SecondFactorPage {
            chrome,
            step,
            error,
            code_sent,
        },
    )
}

/// The answer to a sign-in that got through its first factor (a password, a
/// provider, an emailed link): signed in, the session's cookies and to
/// `return_to` (303); or the second step's page (200).
pub(super) async fn signed_in(
    state: &State,
    chrome: &Chrome,
    return_to: String,
    outcome: SignIn,
) -> HttpResponse {
    match outcome {
        SignIn::Complete(outcome) => {
            forget_sessions(state, &outcome.ended_sessions);
            state.settle(outcome.written).await;
            let mut answer = chrome.redirect(&return_to);
            browser_session::set_session_cookies(state, &mut answer, &outcome.tokens);
            answer.finish()
        }
        SignIn::SecondFactorRequired(challenge) => {
            state.settle(challenge.written.clone()).await;
            let step = Step::of(challenge, return_to);
            page(chrome, StatusCode::OK, &step, None, false)
        }
    }
}

/// The second step's code.
#[derive(Deserialize, ToSchema)]
pub struct SecondFactorForm {
    /// The page's form token (read first, by `forms::accept`, whatever the
    /// rest of the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
    /// The login's `mfa_token` (a hidden field of the step's page).
    mfa_token: String,
    /// The step's methods, `kind:id,…` (what the page shows).
    #[serde(default)]
    methods: String,
    #[serde(default)]
    return_to: Option<String>,
    /// A code of the authenticator app, an emailed or texted code, or a
    /// backup code.
    code: String,
}

/// A "send me a code" of the second step.
#[derive(Deserialize, ToSchema)]
pub struct SendCodeForm {
    /// The page's form token (read first, by `forms::accept`, whatever the
    /// rest of the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
    mfa_token: String,
    #[serde(default)]
    methods: String,
    #[serde(default)]
    return_to: Option<String>,
    /// The email or SMS method to send a code by.
    method_id: Uuid,
}

/// What went wrong, as a page shows it: its status and code.
fn refusal(e: AuthError) -> (StatusCode, &'static str) {
    let e = ApiError::from(e);
    (actix_web::ResponseError::status_code(&e), e.code())
}

/// Complete a sign-in with a second factor
///
/// The step's form. A right code: the session's cookies, and to `return_to`
/// (303). A wrong one: the step again with the error tied to the code (401;
/// it counts towards the account's lockout). A spent or expired step: the
/// error page, to sign in again.
#[utoipa::path(
    post,
    path = "/sign-in/second-factor",
    tag = "pages",
    request_body(content = SecondFactorForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed in: the session's cookies, and to `return_to`."),
        (status = 400, description = "The form did not parse.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 401, description = "A wrong code (the step again), or the step is spent \
            (`invalid_mfa_token`: sign in again).", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 403, description = "Not from this server's page (`csrf_failed`), or the \
            account is suspended.", body = String, content_type = "text/html; charset=utf-8"),
        (status = 409, description = "A concurrent change; try again.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 429, description = "Too many attempts: the account is locked for a while.",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 503, description = "A backing service is unavailable.", body = String,
            content_type = "text/html; charset=utf-8"),
        FormFailures,
    )
)]
pub async fn verify(
    state: State,
    ctx: Context,
    mut chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let form = match forms::accept::<SecondFactorForm>(&chrome, &req, &body) {
        Ok(form) => form,
        Err(answer) => return *answer,
    };
    let return_to = forms::return_to(&chrome, form.return_to.as_deref());
    allow_return(&mut chrome, &return_to);
    let outcome = state
        .auth
        .verify_second_factor(&form.mfa_token, form.code.trim(), None, None, &ctx.0)
        .await;
    match outcome {
        Ok(outcome) => signed_in(&state, &chrome, return_to, SignIn::Complete(outcome)).await,
        Err(AuthError::InvalidCode) => {
            let step = Step::posted(form.mfa_token, &form.methods, return_to);
            page(
                &chrome,
                StatusCode::UNAUTHORIZED,
                &step,
                Some("invalid_code"),
                false,
            )
        }
        Err(e) => {
            let (status, code) = refusal(e);
            error_page(&chrome, status, code)
        }
    }
}

/// Send a second-step code
///
/// For an email or SMS method of the step: a code is sent (at most one per
/// method per `KEYLEDGER_MAIL_INTERVAL_SECS`; a request within it is answered
/// alike and sends nothing), and the step's page shows again, saying so.
#[utoipa::path(
    post,
    path = "/sign-in/second-factor/send",
    tag = "pages",
    request_body(content = SendCodeForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The step again: a code is on its way.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 400, description = "The form did not parse.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 401, description = "The step is spent (`invalid_mfa_token`: sign in again).",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 403, description = "Not from this server's page (`csrf_failed`).",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 404, description = "Not a method of this step.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 409, description = "A concurrent change; try again.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 429, description = "Too many attempts.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 503, description = "A backing service is unavailable.", body = String,
            content_type = "text/html; charset=utf-8"),
        FormFailures,
    )
)]
pub async fn send_code(
    state: State,
    ctx: Context,
    mut chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let form = match forms::accept::<SendCodeForm>(&chrome, &req, &body) {
        Ok(form) => form,
        Err(answer) => return *answer,
    };
    let return_to = forms::return_to(&chrome, form.return_to.as_deref());
    allow_return(&mut chrome, &return_to);
    let step = Step::posted(form.mfa_token, &form.methods, return_to);
    // Only a code method: a passkey's options are the script's business.
    if !step.sendable().iter().any(|m| m.id == form.method_id) {
        return error_page(&chrome, StatusCode::NOT_FOUND, "second_factor_not_found");
    }
    match state
        .auth
        .send_second_factor_code(&step.mfa_token, form.method_id, &ctx.0)
        .await
    {
        Ok(written) => {
            state.settle(written).await;
            page(&chrome, StatusCode::OK, &step, None, true)
        }
        Err(e) => {
            let (status, code) = refusal(e);
            error_page(&chrome, status, code)
        }
    }
}

pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(RateLimited(endpoint!(self::verify)))
        .service(RateLimited(endpoint!(self::send_code)))
}
