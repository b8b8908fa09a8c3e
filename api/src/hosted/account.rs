//! `/account`: what a signed-in person sees of their account and can change,
//! as forms that work without JavaScript (the passkey registration alone needs
//! a script: browsers offer WebAuthn to scripts only).
//!
//! Every form post takes the page's form token (the session's CSRF token) and
//! comes from this server's page (see [`forms::is_own`]), then calls the same
//! service methods the JSON API's handlers call, with the same rules (recent
//! authentication, the per-account throttle for passwords and codes). A post
//! that worked answers 303 to `/account?done=<what>`, whose notice comes from
//! the catalogue; one that did not answers the account page again, with the
//! refusal next to the form it came from. Nothing secret goes into a URL: the
//! TOTP secret and backup codes are in the body of the one answer that shows
//! them (`Cache-Control: no-store`).

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use keyledger_commands::tokens::AccessClaims;
use keyledger_commands::{AuthError, NewSecondFactor, Password, SubjectKind};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::UtoipaApp;
use uuid::Uuid;

use super::{error_page, forms, Chrome, QueryFailures};
use crate::browser_session;
use crate::error::ApiError;
use crate::extract::{Body, Context, QueryText};
use crate::openapi::{endpoint, RateLimited};
use crate::rate_limit::{context_address, Limits};
use crate::resources::sessions::forget_sessions;
use crate::state::{AppState, State};

/// Where a browser that is not signed in goes (and comes back from).
const SIGN_IN: &str = "/sign-in?return_to=%2Faccount";

/// How many security events the activity list shows.
const ACTIVITY_ROWS: i64 = 20;

/// The notices `?done=` may ask for; anything else shows none (the parameter
/// is the reader's to edit: the page shows only words of its own).
const NOTICES: &[&str] = &[
    "verification-sent",
    "email-change-requested",
    "password-changed",
    "session-revoked",
    "passkey-renamed",
    "passkey-removed",
    "factor-removed",
    "totp-added",
    "identity-unlinked",
];

/// A moment as the page shows it: machine-readable for `<time datetime>`, and
/// in words the same in every language (ISO date, 24-hour time, UTC).
pub struct Stamp {
    pub iso: String,
    pub text: String,
}

impl From<DateTime<Utc>> for Stamp {
    fn from(at: DateTime<Utc>) -> Self {
        Self {
            iso: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            text: at.format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

/// One active session of the account.
pub struct SessionRow {
    pub id: String,
    pub device: Option<String>,
    pub ip: Option<String>,
    pub started: Stamp,
    pub last_active: Stamp,
    pub current: bool,
}

/// One passkey of the account.
pub struct PasskeyRow {
    pub id: String,
    pub name: String,
    pub created: Stamp,
    pub last_used: Option<Stamp>,
}

/// One second factor of the account.
pub struct FactorRow {
    pub id: String,
    /// Its kind's words, from the catalogue.
    pub label: String,
    pub confirmed: bool,
    pub added: Stamp,
    pub last_used: Option<Stamp>,
}

/// One identity at another provider linked to the account.
pub struct IdentityRow {
    pub id: String,
    pub provider: String,
    pub email: Option<String>,
    pub linked: Stamp,
}

/// One security event of the account, in words.
pub struct ActivityRow {
    pub at: Stamp,
    pub text: String,
    pub ip: Option<String>,
    pub failed: bool,
}

/// A refused form post: which form, why (an error code), and for a weak
/// password the policy's reasons.
pub struct Problem {
    pub form: &'static str,
    pub code: String,
    pub reasons: Vec<String>,
}

#[derive(askama::Template)]
#[template(path = "account.html")]
struct AccountPage<'a> {
    chrome: &'a Chrome,
    email: String,
    display_name: Option<String>,
    email_verified: bool,
    /// Whether verification mails are sent at all (the resend form is offered
    /// only then: with verification off, no address is ever verified).
    verification_on: bool,
    member_since: Stamp,
    notice: Option<String>,
    problem: Option<Problem>,
    sessions: Vec<SessionRow>,
    passkeys: Vec<PasskeyRow>,
    factors: Vec<FactorRow>,
    has_confirmed_factor: bool,
    backup_codes_remaining: usize,
    identities: Vec<IdentityRow>,
    activity: Vec<ActivityRow>,
    /// The new address typed into a refused email change, kept in its field.
    new_email: String,
}

impl AccountPage<'_> {
    /// The refusal of form `form`, if this answer is one.
    fn problem_in(&self, form: &str) -> Option<&Problem> {
        self.problem.as_ref().filter(|p| p.form == form)
    }

    /// The words for `code`: the account page's own (`account-error-…`), else
    /// the pages' shared ones.
    fn message(&self, code: &str) -> String {
        message(self.chrome, code)
    }
}

fn message(chrome: &Chrome, code: &str) -> String {
    let id = format!("account-error-{}", code.replace('_', "-"));
    let text = chrome.t(&id);
    if text == id {
        chrome.error_text(code)
    } else {
        text
    }
}

/// Renders the account page of `claims`'s account with `status`, a notice or
/// a refusal. An account erased meanwhile is sent to sign in again.
async fn account_page(
    state: &AppState,
    chrome: &Chrome,
    claims: &AccessClaims,
    status: StatusCode,
    notice: Option<String>,
    problem: Option<Problem>,
    new_email: &str,
) -> HttpResponse {
    match load(state, chrome, claims, notice, problem, new_email).await {
        Ok(Some(page)) => chrome.render(status, &page),
        Ok(None) => {
            let mut answer = chrome.redirect("/sign-in");
            browser_session::clear_session_cookies(&mut answer);
            answer.finish()
        }
        Err(e) => unavailable(chrome, &e),
    }
}

/// The page's reads: the account, its sessions, passkeys, factors, linked
/// identities and recent activity. `None` when the account is gone.
async fn load<'a>(
    state: &AppState,
    chrome: &'a Chrome,
    claims: &AccessClaims,
    notice: Option<String>,
    problem: Option<Problem>,
    new_email: &str,
) -> Result<Option<AccountPage<'a>>, String> {
    let user = claims.user_id;
    let Some(account) = state
        .queries
        .account(user)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let now = Utc::now();
    let cutoff = state.revoked.cutoff();
    let sessions = state
        .queries
        .sessions(user, now)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        // Ended by the platform's cut-off, which the session's own history
        // does not record (as in `GET /v1/auth/sessions`).
        .filter(|s| s.state == "active" && cutoff.is_none_or(|c| s.created_at >= c.before))
        .map(|s| SessionRow {
            id: s.session_id.to_string(),
            device: s.user_agent,
            ip: s.ip,
            started: s.created_at.into(),
            last_active: s.last_refreshed_at.unwrap_or(s.created_at).into(),
            current: s.session_id == claims.session_id,
        })
        .collect();
    let not_gone = |e: AuthError| match e {
        AuthError::UserNotFound => None,
        other => Some(other.to_string()),
    };
    let passkeys = match state.auth.passkeys(user).await {
        Ok(passkeys) => passkeys,
        Err(e) => return not_gone(e).map_or(Ok(None), Err),
    };
    let factors = match state.auth.second_factors(user).await {
        Ok(factors) => factors,
        Err(e) => return not_gone(e).map_or(Ok(None), Err),
    };
    let identities = match state.auth.external_identities(user).await {
        Ok(identities) => identities,
        Err(e) => return not_gone(e).map_or(Ok(None), Err),
    };
    let activity = state
        .queries
        .account_activity(user, ACTIVITY_ROWS)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(AccountPage {
        chrome,
        email: account.email,
        display_name: account.display_name,
        email_verified: account.email_verified,
        verification_on: state.auth.email_verification().is_on(),
        member_since: account.created_at.into(),
        notice,
        problem,
        sessions,
        passkeys: passkeys
            .into_iter()
            .map(|p| PasskeyRow {
                id: p.passkey_id.to_string(),
                name: p.name,
                created: p.created_at.into(),
                last_used: p.last_used_at.map(Stamp::from),
            })
            .collect(),
        has_confirmed_factor: factors.methods.iter().any(|m| m.confirmed),
        factors: factors
            .methods
            .into_iter()
            .map(|m| FactorRow {
                id: m.method_id.to_string(),
                label: {
                    let id = format!("account-factor-{}", m.kind.as_str());
                    let text = chrome.t(&id);
                    if text == id {
                        m.label.to_owned()
                    } else {
                        text
                    }
                },
                confirmed: m.confirmed,
                added: m.added_at.into(),
                last_used: m.last_used_at.map(Stamp::from),
            })
            .collect(),
        backup_codes_remaining: factors.backup_codes_remaining,
        identities: identities
            .into_iter()
            .map(|i| IdentityRow {
                id: i.identity_id.to_string(),
                provider: i.provider,
                email: i.email,
                linked: i.linked_at.into(),
            })
            .collect(),
        activity: activity
            .into_iter()
            .map(|event| {
                let id = format!("account-activity-{}", event.action);
                let text = chrome.t(&id);
                ActivityRow {
                    text: if text == id {
                        chrome.t1("account-activity-other", "action", &event.action)
                    } else {
                        text
                    },
                    at: event.occurred_at.into(),
                    ip: event.ip,
                    failed: event.outcome != "success",
                }
            })
            .collect(),
        new_email: new_email.to_owned(),
    }))
}

/// A backing service failed: logged (the cause, never a form's values) and
/// answered 503, never a 500 page.
fn unavailable(chrome: &Chrome, cause: &dyn std::fmt::Display) -> HttpResponse {
    tracing::warn!(error = %cause, "the account page could not be built");
    error_page(chrome, StatusCode::SERVICE_UNAVAILABLE, "unavailable")
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountQuery {
    /// What the last form did (`password-changed`, …): its notice is shown.
    #[param(value_type = Option<String>)]
    done: Option<QueryText>,
    /// The page's language (`en`, `ko`), kept in a cookie.
    #[allow(dead_code)]
    #[param(value_type = Option<String>)]
    lang: Option<QueryText>,
    /// `1` when the browser comes back from resuming its session: if it is
    /// still not signed in, it goes to sign in (never round again).
    #[param(value_type = Option<String>)]
    resumed: Option<QueryText>,
}

/// Where a browser without a live access cookie goes first: the refresh
/// cookie is sent to `/v1/auth/refresh…` only, so that route resumes the
/// session and brings the browser back (or sends it to sign in).
const RESUME: &str = "/v1/auth/refresh/resume?return_to=%2Faccount%3Fresumed%3D1";

/// The account page
///
/// For a signed-in browser (the session's cookies). A browser whose access
/// cookie has expired goes to `GET /v1/auth/refresh/resume`, which renews it
/// from the refresh cookie and brings it back; any other is sent to
/// `/sign-in`, which brings it back here.
#[utoipa::path(
    get,
    path = "/account",
    tag = "pages",
    params(AccountQuery),
    responses(
        (status = 200, description = "An HTML page.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "Not signed in: to resume the session \
            (`/v1/auth/refresh/resume`), or after that to `/sign-in?return_to=/account`."),
        (status = 503, description = "A backing service is unavailable.", body = String,
            content_type = "text/html; charset=utf-8"),
        QueryFailures,
    )
)]
pub async fn account(
    state: State,
    chrome: Chrome,
    query: web::Query<AccountQuery>,
) -> HttpResponse {
    let Some(session) = chrome.session.clone() else {
        let resumed = query.resumed.is_some();
        return chrome
            .redirect(if resumed { SIGN_IN } else { RESUME })
            .finish();
    };
    let notice = query
        .done
        .as_deref()
        .filter(|done| NOTICES.contains(done))
        .map(|done| chrome.t(&format!("account-done-{done}")));
    account_page(&state, &chrome, &session, StatusCode::OK, notice, None, "").await
}

/// The checks every account form post passes before anything is done, in this
/// order: a form body that parses, from this server's page with its token (else 403
/// `csrf_failed`, whatever else the body holds), a signed-in person (else to
/// sign in), then the form's own fields.
fn accept<T: DeserializeOwned>(
    chrome: &Chrome,
    req: &HttpRequest,
    body: &[u8],
) -> Result<(AccessClaims, T), Box<HttpResponse>> {
    // The token first: a post from elsewhere is refused whatever it holds.
    forms::accept::<serde::de::IgnoredAny>(chrome, req, body)?;
    let Some(claims) = chrome.session.clone() else {
        return Err(Box::new(chrome.redirect(SIGN_IN).finish()));
    };
    if claims.kind != SubjectKind::User {
        return Err(Box::new(error_page(
            chrome,
            StatusCode::FORBIDDEN,
            "forbidden",
        )));
    }
    let form = forms::accept::<T>(chrome, req, body)?;
    Ok((claims, form))
}

/// A form post that worked: back to the page, with its notice.
fn done(chrome: &Chrome, what: &str) -> HttpResponse {
    debug_assert!(NOTICES.contains(&what));
    chrome.redirect(&format!("/account?done={what}")).finish()
}

/// The end of a form post that writes: its events settled and back to the page
/// with notice `what`, or the page again with the refusal next to `form`.
async fn settled_or_refused(
    state: &AppState,
    chrome: &Chrome,
    claims: &AccessClaims,
    form: &'static str,
    what: &str,
    outcome: Result<impl IntoIterator<Item = keyledger_commands::Written>, AuthError>,
) -> HttpResponse {
    match outcome {
        Ok(written) => {
            state.settle(written).await;
            done(chrome, what)
        }
        Err(e) => refused(state, chrome, claims, form, e.into(), "").await,
    }
}

/// A form post that was refused: the page again with the refusal next to
/// `form`, at the status the API answers for it. A token whose account is gone
/// signs the browser out; a backing service's failure is a 503 page.
async fn refused(
    state: &AppState,
    chrome: &Chrome,
    claims: &AccessClaims,
    form: &'static str,
    error: ApiError,
    new_email: &str,
) -> HttpResponse {
    let status = error.status_code();
    if status.is_server_error() {
        return unavailable(chrome, &error);
    }
    if matches!(
        error,
        ApiError::Unauthorized | ApiError::Auth(AuthError::UserNotFound)
    ) {
        let mut answer = chrome.redirect("/sign-in");
        browser_session::clear_session_cookies(&mut answer);
        return answer.finish();
    }
    let reasons = match &error {
        ApiError::Auth(AuthError::WeakPassword(weak)) => super::password_reasons(chrome, weak),
        _ => Vec::new(),
    };
    let problem = Problem {
        form,
        code: error.code().to_owned(),
        reasons,
    };
    account_page(
        state,
        chrome,
        claims,
        status,
        None,
        Some(problem),
        new_email,
    )
    .await
}

/// The HTML answers of an account form post besides 303: the account page
/// again with the refusal (the status the API answers for it), or the error
/// page (a form that does not parse, not from this page, a backing service);
/// and [`super::FormFailures`]' answers in the JSON envelope, merged into the same
/// statuses (listing both types would let the second replace the first's 400).
pub struct AccountFormPages;

impl utoipa::IntoResponses for AccountFormPages {
    fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
        let html = || {
            ContentBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build()
        };
        let mut responses = [
            (400, "The form did not parse, or a value is malformed."),
            (
                401,
                "The password or code is wrong, or the change needs a recent sign-in.",
            ),
            (403, "Not from this server's page (`csrf_failed`)."),
            (
                404,
                "No such session, passkey, factor or identity on this account.",
            ),
            (
                409,
                "Refused as it stands (the last way to sign in, a last owner, a lost race).",
            ),
            (
                422,
                "A value the rules refuse (a weak password, an invalid address or name).",
            ),
            (429, "Too many attempts."),
            (503, "A backing service is unavailable."),
        ]
        .into_iter()
        .map(|(status, description)| {
            (
                status.to_string(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content("text/html; charset=utf-8", html())
                        .build(),
                ),
            )
        })
        .collect::<std::collections::BTreeMap<_, _>>();
        // A body too large or unreadable is answered in the JSON envelope
        // before the page exists (`super::FormFailures`): added to the same entries,
        // so a 400 documents both its page and its envelope.
        crate::openapi::document_failures(&mut responses, crate::openapi::raw_body());
        responses
    }
}

/// A form with no field but its token.
#[derive(Deserialize, ToSchema)]
pub struct TokenForm {
    /// The page's form token (read first, by `accept`, whatever the rest of
    /// the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
}

/// Mail another verification link
///
/// To the account's own address (at most one per `KEYLEDGER_MAIL_INTERVAL_SECS`;
/// a verified address is mailed nothing).
#[utoipa::path(
    post,
    path = "/account/resend-verification",
    tag = "pages",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Taken: to `/account?done=verification-sent`, or to sign in."),
        AccountFormPages,
    )
)]
pub async fn resend_verification(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let (claims, _) = match accept::<TokenForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    let request_ctx = ctx.acting_as(&claims);
    settled_or_refused(
        &state,
        &chrome,
        &claims,
        "profile",
        "verification-sent",
        state
            .auth
            .request_verification(claims.user_id, &request_ctx)
            .await,
    )
    .await
}

/// The email change form's fields.
#[derive(Deserialize, ToSchema)]
pub struct EmailChangeForm {
    new_email: String,
    /// The account's password.
    password: String,
    /// The page's form token (read first, by `accept`, whatever the rest of
    /// the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
}

/// Change my address
///
/// As `POST /v1/users/me/email`: needs the password; mails a link to the new
/// address, which moves the account once followed.
#[utoipa::path(
    post,
    path = "/account/email",
    tag = "pages",
    request_body(content = EmailChangeForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Taken: to `/account?done=email-change-requested`, or to \
            sign in."),
        AccountFormPages,
    )
)]
pub async fn change_email(
    state: State,
    limits: Limits,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let (claims, form) = match accept::<EmailChangeForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    let request_ctx = ctx.acting_as(&claims);
    let outcome = async {
        state
            .auth
            .require_recent_second_factor(claims.user_id, claims.session_id)
            .await?;
        limits
            .accounts
            .attempt(
                &claims.user_id.to_string(),
                context_address(request_ctx.ip.as_deref()),
                |e| matches!(e, AuthError::InvalidCredentials),
                state.auth.request_email_change(
                    claims.user_id,
                    &form.new_email,
                    Password::new(form.password.clone()),
                    &request_ctx,
                ),
            )
            .await
    }
    .await;
    match outcome {
        // Nothing to settle, as in the API: waiting only when something was
        // written would tell a free address from a taken one.
        Ok(_) => done(&chrome, "email-change-requested"),
        Err(e) => {
            refused(
                &state,
                &chrome,
                &claims,
                "email-change",
                e,
                form.new_email.trim(),
            )
            .await
        }
    }
}

/// The password change form's fields.
#[derive(Deserialize, ToSchema)]
pub struct PasswordChangeForm {
    current_password: String,
    new_password: String,
    /// The page's form token (read first, by `accept`, whatever the rest of
    /// the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
}

/// Change my password
///
/// As `POST /v1/auth/password`: needs the current password; every other
/// session of the account ends, this one stays.
#[utoipa::path(
    post,
    path = "/account/password",
    tag = "pages",
    request_body(content = PasswordChangeForm,
        content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Changed: to `/account?done=password-changed`, or to \
            sign in."),
        AccountFormPages,
    )
)]
pub async fn change_password(
    state: State,
    limits: Limits,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let (claims, form) = match accept::<PasswordChangeForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    let outcome = async {
        state
            .auth
            .require_recent_second_factor(claims.user_id, claims.session_id)
            .await?;
        limits
            .accounts
            .attempt(
                &claims.user_id.to_string(),
                context_address(ctx.0.ip.as_deref()),
                |e| matches!(e, AuthError::InvalidCredentials),
                state.auth.change_password(
                    claims.user_id,
                    Password::new(form.current_password),
                    Password::new(form.new_password),
                    claims.session_id,
                    &ctx.0,
                ),
            )
            .await
    }
    .await;
    match outcome {
        Ok(change) => {
            // The browser's own session is kept, so it stays signed in.
            forget_sessions(&state, &change.ended_sessions);
            state.settle(change.written).await;
            done(&chrome, "password-changed")
        }
        Err(e) => refused(&state, &chrome, &claims, "password-change", e, "").await,
    }
}

/// Ends another session of mine
///
/// As `DELETE /v1/auth/sessions/{session_id}`: its tokens stop working at once.
#[utoipa::path(
    post,
    path = "/account/sessions/{session_id}/revoke",
    tag = "pages",
    params(("session_id" = String, Path, description = "A session of the account.")),
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Ended: to `/account?done=session-revoked`, or to sign in."),
        AccountFormPages,
    )
)]
pub async fn revoke_session(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    path: web::Path<String>,
    Body(body): Body,
) -> HttpResponse {
    let (claims, _) = match accept::<TokenForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    // A malformed id is just another session the account does not have.
    let Ok(session_id) = path.parse::<Uuid>() else {
        let e = ApiError::Auth(AuthError::SessionNotFound);
        return refused(&state, &chrome, &claims, "sessions", e, "").await;
    };
    match state
        .auth
        .revoke_session(claims.user_id, session_id, &ctx.0)
        .await
    {
        Ok(written) => {
            forget_sessions(&state, &[session_id]);
            state.settle(written).await;
            if session_id == claims.session_id {
                // This browser's own session (the page offers no button for
                // it, but a hand-made post may): it is signed out.
                let mut answer = chrome.redirect("/sign-in");
                browser_session::clear_session_cookies(&mut answer);
                return answer.finish();
            }
            done(&chrome, "session-revoked")
        }
        Err(e) => refused(&state, &chrome, &claims, "sessions", e.into(), "").await,
    }
}

/// A passkey's new name.
#[derive(Deserialize, ToSchema)]
pub struct RenameForm {
    name: String,
    /// The page's form token (read first, by `accept`, whatever the rest of
    /// the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
}

/// Rename a passkey
#[utoipa::path(
    post,
    path = "/account/passkeys/{id}/rename",
    tag = "pages",
    params(("id" = String, Path, description = "A passkey of the account.")),
    request_body(content = RenameForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Renamed: to `/account?done=passkey-renamed`, or to \
            sign in."),
        AccountFormPages,
    )
)]
pub async fn rename_passkey(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    path: web::Path<String>,
    Body(body): Body,
) -> HttpResponse {
    let (claims, form) = match accept::<RenameForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    let Ok(passkey_id) = path.parse::<Uuid>() else {
        let e = ApiError::Auth(AuthError::PasskeyNotFound);
        return refused(&state, &chrome, &claims, "passkeys", e, "").await;
    };
    let request_ctx = ctx.acting_as(&claims);
    match state
        .auth
        .rename_passkey(claims.user_id, passkey_id, &form.name, &request_ctx)
        .await
    {
        Ok((_, written)) => {
            state.settle(written).await;
            done(&chrome, "passkey-renamed")
        }
        Err(e) => refused(&state, &chrome, &claims, "passkeys", e.into(), "").await,
    }
}

/// Remove a passkey
///
/// As `DELETE /v1/passkeys/{id}`: needs a recent sign-in; refused for the
/// account's last way to sign in.
#[utoipa::path(
    post,
    path = "/account/passkeys/{id}/delete",
    tag = "pages",
    params(("id" = String, Path, description = "A passkey of the account.")),
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Removed: to `/account?done=passkey-removed`, or to \
            sign in."),
        AccountFormPages,
    )
)]
pub async fn delete_passkey(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    path: web::Path<String>,
    Body(body): Body,
) -> HttpResponse {
    let (claims, _) = match accept::<TokenForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    let Ok(passkey_id) = path.parse::<Uuid>() else {
        let e = ApiError::Auth(AuthError::PasskeyNotFound);
        return refused(&state, &chrome, &claims, "passkeys", e, "").await;
    };
    let request_ctx = ctx.acting_as(&claims);
    let outcome = async {
        state
            .auth
            .require_recent_authentication(claims.user_id, claims.session_id)
            .await?;
        state
            .auth
            .remove_passkey(claims.user_id, passkey_id, &request_ctx)
            .await
    }
    .await;
    settled_or_refused(
        &state,
        &chrome,
        &claims,
        "passkeys",
        "passkey-removed",
        outcome,
    )
    .await
}

/// Remove a second factor
///
/// As `DELETE /v1/mfa/methods/{method_id}`: needs a recent sign-in with the
/// account's factors.
#[utoipa::path(
    post,
    path = "/account/factors/{id}/remove",
    tag = "pages",
    params(("id" = String, Path, description = "A second factor of the account.")),
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Removed: to `/account?done=factor-removed`, or to \
            sign in."),
        AccountFormPages,
    )
)]
pub async fn remove_factor(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    path: web::Path<String>,
    Body(body): Body,
) -> HttpResponse {
    let (claims, _) = match accept::<TokenForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    let Ok(method_id) = path.parse::<Uuid>() else {
        let e = ApiError::Auth(AuthError::SecondFactorNotFound);
        return refused(&state, &chrome, &claims, "second-factors", e, "").await;
    };
    let request_ctx = ctx.acting_as(&claims);
    settled_or_refused(
        &state,
        &chrome,
        &claims,
        "second-factors",
        "factor-removed",
        state
            .auth
            .remove_second_factor(claims.user_id, claims.session_id, method_id, &request_ctx)
            .await,
    )
    .await
}

#[derive(askama::Template)]
#[template(path = "account_totp.html")]
struct TotpPage<'a> {
    chrome: &'a Chrome,
    method_id: String,
    /// The `otpauth://` URI as a QR code; shown once, at the start.
    qr: Option<String>,
    /// The secret for typing into the app; shown once, at the start.
    secret: Option<String>,
    /// A refused code.
    error: Option<String>,
}

/// Start adding an authenticator app
///
/// As `POST /v1/mfa/setup` with `totp`: needs a recent sign-in. Answers the
/// page with the app's QR code and secret (shown only here) and the form for
/// its first code.
#[utoipa::path(
    post,
    path = "/account/totp",
    tag = "pages",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The QR code, the secret and the form for a first code; \
            `Cache-Control: no-store`.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "Not signed in: to sign in."),
        AccountFormPages,
    )
)]
pub async fn start_totp(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let (claims, _) = match accept::<TokenForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    let request_ctx = ctx.acting_as(&claims);
    let enrolment = match state
        .auth
        .setup_second_factor(
            claims.user_id,
            claims.session_id,
            NewSecondFactor::Totp,
            &request_ctx,
        )
        .await
    {
        Ok(enrolment) => enrolment,
        Err(e) => return refused(&state, &chrome, &claims, "second-factors", e.into(), "").await,
    };
    state.settle(enrolment.written).await;
    let qr = enrolment
        .otpauth_uri
        .as_deref()
        .and_then(crate::qr::svg_data_url);
    chrome.render(
        StatusCode::OK,
        &TotpPage {
            chrome: &chrome,
            method_id: enrolment.method_id.to_string(),
            qr,
            secret: enrolment.secret,
            error: None,
        },
    )
}

/// The first code of a new authenticator app.
#[derive(Deserialize, ToSchema)]
pub struct TotpConfirmForm {
    /// The method `POST /account/totp` set up.
    method_id: String,
    /// A code the app shows.
    code: String,
    /// The page's form token (read first, by `accept`, whatever the rest of
    /// the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
}

#[derive(askama::Template)]
#[template(path = "account_codes.html")]
struct CodesPage<'a> {
    chrome: &'a Chrome,
    /// Why the codes are shown: `totp-added` or `codes-regenerated`.
    reason: &'static str,
    codes: Vec<String>,
}

impl CodesPage<'_> {
    /// What was done, in words (`account-done-<reason>`).
    fn notice(&self) -> String {
        self.chrome.t(&format!("account-done-{}", self.reason))
    }
}

/// Finish adding an authenticator app
///
/// As `POST /v1/mfa/methods/{method_id}/confirm`: a first code from the app
/// confirms it (wrong codes count towards the per-account throttle). The
/// account's first factor brings its backup codes, shown in this answer once.
#[utoipa::path(
    post,
    path = "/account/totp/confirm",
    tag = "pages",
    request_body(content = TotpConfirmForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Confirmed: the backup codes, shown once; \
            `Cache-Control: no-store`.", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "Confirmed (the account had backup codes already): to \
            `/account?done=totp-added`; or to sign in."),
        AccountFormPages,
    )
)]
pub async fn confirm_totp(
    state: State,
    limits: Limits,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let (claims, form) = match accept::<TotpConfirmForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    let Ok(method_id) = form.method_id.parse::<Uuid>() else {
        let e = ApiError::Auth(AuthError::SecondFactorNotFound);
        return refused(&state, &chrome, &claims, "second-factors", e, "").await;
    };
    let request_ctx = ctx.acting_as(&claims);
    let outcome = limits
        .accounts
        .attempt(
            &claims.user_id.to_string(),
            context_address(request_ctx.ip.as_deref()),
            |e| matches!(e, AuthError::InvalidCode),
            state.auth.confirm_second_factor(
                claims.user_id,
                method_id,
                form.code.trim(),
                &request_ctx,
            ),
        )
        .await;
    match outcome {
        Ok(confirmed) => {
            state.settle(confirmed.written).await;
            match confirmed.backup_codes {
                Some(codes) => chrome.render(
                    StatusCode::OK,
                    &CodesPage {
                        chrome: &chrome,
                        reason: "totp-added",
                        codes,
                    },
                ),
                None => done(&chrome, "totp-added"),
            }
        }
        // A wrong code: the form again (the app is set up already; the secret
        // is not shown twice).
        Err(ApiError::Auth(AuthError::InvalidCode)) => chrome.render(
            StatusCode::UNAUTHORIZED,
            &TotpPage {
                chrome: &chrome,
                method_id: method_id.to_string(),
                qr: None,
                secret: None,
                error: Some("invalid_code".to_owned()),
            },
        ),
        Err(e) => refused(&state, &chrome, &claims, "second-factors", e, "").await,
    }
}

/// Replace my backup codes
///
/// As `POST /v1/mfa/backup-codes/regenerate`: needs a confirmed second factor
/// and a recent sign-in with it. The new codes are shown in this answer once.
#[utoipa::path(
    post,
    path = "/account/backup-codes",
    tag = "pages",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The new codes, shown once; `Cache-Control: no-store`.",
            body = String, content_type = "text/html; charset=utf-8"),
        (status = 303, description = "Not signed in: to sign in."),
        AccountFormPages,
    )
)]
pub async fn regenerate_backup_codes(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let (claims, _) = match accept::<TokenForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    let request_ctx = ctx.acting_as(&claims);
    match state
        .auth
        .regenerate_backup_codes(claims.user_id, claims.session_id, &request_ctx)
        .await
    {
        Ok(issued) => {
            state.settle(issued.written).await;
            chrome.render(
                StatusCode::OK,
                &CodesPage {
                    chrome: &chrome,
                    reason: "codes-regenerated",
                    codes: issued.codes,
                },
            )
        }
        Err(e) => refused(&state, &chrome, &claims, "second-factors", e.into(), "").await,
    }
}

/// Unlink an identity at another provider
///
/// As `DELETE /v1/users/me/identities/{id}`: needs a recent sign-in; refused
/// for the account's last way to sign in.
#[utoipa::path(
    post,
    path = "/account/identities/{id}/unlink",
    tag = "pages",
    params(("id" = String, Path, description = "A linked identity of the account.")),
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Unlinked: to `/account?done=identity-unlinked`, or to \
            sign in."),
        AccountFormPages,
    )
)]
pub async fn unlink_identity(
    state: State,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    path: web::Path<String>,
    Body(body): Body,
) -> HttpResponse {
    let (claims, _) = match accept::<TokenForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    let Ok(identity_id) = path.parse::<Uuid>() else {
        let e = ApiError::Auth(AuthError::ExternalIdentityNotFound);
        return refused(&state, &chrome, &claims, "identities", e, "").await;
    };
    let request_ctx = ctx.acting_as(&claims);
    let outcome = async {
        state
            .auth
            .require_recent_authentication(claims.user_id, claims.session_id)
            .await?;
        state
            .auth
            .unlink_external_identity(claims.user_id, identity_id, &request_ctx)
            .await
    }
    .await;
    settled_or_refused(
        &state,
        &chrome,
        &claims,
        "identities",
        "identity-unlinked",
        outcome,
    )
    .await
}

/// The delete form's fields.
#[derive(Deserialize, ToSchema)]
pub struct DeleteAccountForm {
    /// The account's password; empty for an account without one (it must have
    /// signed in lately instead).
    #[serde(default)]
    password: String,
    /// The page's form token (read first, by `accept`, whatever the rest of
    /// the form holds; declared here for the form's documentation).
    #[allow(dead_code)]
    csrf_token: String,
}

/// Delete my account
///
/// As `DELETE /v1/users/me`: needs the password (an account without one: a
/// recent sign-in), and a recent second factor when it has one. Every session
/// ends, the cookies are cleared, and the browser goes to
/// `/sign-in?deleted=1`.
#[utoipa::path(
    post,
    path = "/account/delete",
    tag = "pages",
    request_body(content = DeleteAccountForm,
        content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Erased: the cookies cleared, to `/sign-in?deleted=1`; or \
            to sign in."),
        AccountFormPages,
    )
)]
pub async fn delete_account(
    state: State,
    limits: Limits,
    ctx: Context,
    chrome: Chrome,
    req: HttpRequest,
    Body(body): Body,
) -> HttpResponse {
    let (claims, form) = match accept::<DeleteAccountForm>(&chrome, &req, &body) {
        Ok(accepted) => accepted,
        Err(answer) => return *answer,
    };
    let request_ctx = ctx.acting_as(&claims);
    let outcome: Result<(), ApiError> = async {
        state
            .auth
            .require_recent_second_factor(claims.user_id, claims.session_id)
            .await?;
        if form.password.is_empty() {
            state
                .auth
                .require_passwordless_reauthentication(claims.user_id, claims.session_id)
                .await?;
        } else {
            let password = Password::new(form.password.clone());
            limits
                .accounts
                .attempt(
                    &claims.user_id.to_string(),
                    context_address(request_ctx.ip.as_deref()),
                    |e| matches!(e, AuthError::InvalidCredentials),
                    state
                        .auth
                        .reauthenticate(claims.user_id, &password, &request_ctx),
                )
                .await?;
        }
        crate::resources::users::erase_account(&state, claims.user_id, &request_ctx).await
    }
    .await;
    match outcome {
        Ok(()) => {
            // This browser's session may have ended in an earlier, interrupted
            // attempt: forgotten all the same.
            forget_sessions(&state, &[claims.session_id]);
            let mut answer = chrome.redirect("/sign-in?deleted=1");
            browser_session::clear_session_cookies(&mut answer);
            answer.finish()
        }
        Err(e) => refused(&state, &chrome, &claims, "delete-account", e, "").await,
    }
}

const SCRIPT: &str = include_str!("assets/account.js");

/// The account page's script
///
/// Registers a passkey (WebAuthn offers its ceremony to scripts only) through
/// the JSON API with the page's cookie session and CSRF token; the rest of the
/// page works without it.
#[utoipa::path(
    get,
    path = "/assets/account.js",
    tag = "pages",
    responses((status = 200, description = "JavaScript.", body = String,
        content_type = "text/javascript; charset=utf-8"))
)]
pub async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        // The same bytes for every reader until the next release.
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(SCRIPT)
}

pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(endpoint!(self::account))
        .service(endpoint!(self::script))
        .service(RateLimited(endpoint!(self::resend_verification)))
        .service(RateLimited(endpoint!(self::change_email)))
        .service(RateLimited(endpoint!(self::change_password)))
        .service(RateLimited(endpoint!(self::revoke_session)))
        .service(RateLimited(endpoint!(self::rename_passkey)))
        .service(RateLimited(endpoint!(self::delete_passkey)))
        .service(RateLimited(endpoint!(self::remove_factor)))
        .service(RateLimited(endpoint!(self::start_totp)))
        .service(RateLimited(endpoint!(self::confirm_totp)))
        .service(RateLimited(endpoint!(self::regenerate_backup_codes)))
        .service(RateLimited(endpoint!(self::unlink_identity)))
        .service(RateLimited(endpoint!(self::delete_account)))
}
