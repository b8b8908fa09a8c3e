//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0).

use super::*;

use crate::hosted::{self, Chrome};

/// A logout request.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct LogoutRequest {
    /// An ID token this provider issued to the app (expired ones are taken):
    /// the app's session it names ends.
    pub id_token_hint: Option<String>,
    /// Where to send the browser afterwards: one of the client's registered
    /// post-logout redirect URIs, exactly.
    pub post_logout_redirect_uri: Option<String>,
    pub client_id: Option<String>,
    pub state: Option<String>,
    pub ui_locales: Option<String>,
    pub logout_hint: Option<String>,
}

pub fn invalid_logout() -> ApiError {
    ApiError::bad_request(
        "invalid_request",
        "id_token_hint must be an ID token of this provider, and post_logout_redirect_uri one \
         of the named client's, exactly",
    )
}

failures!(
    /// What `logout` can answer besides its redirect.
    pub LogoutFailures = [invalid_logout(), unknown_client(), unparsable(), unavailable()]
);

failures!(
    /// What `logout`'s form post can answer besides its redirect.
    pub LogoutFormFailures = [raw_body(), invalid_logout(), unknown_client(), unparsable(), unavailable()]
);

/// The confirmation page's form (posted to the same endpoint): the logout
/// request's own parameters, `confirm`, and the page's form token.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct LogoutForm {
    /// As for `GET` (never sent by the confirmation page).
    id_token_hint: Option<String>,
    post_logout_redirect_uri: Option<String>,
    client_id: Option<String>,
    state: Option<String>,
    ui_locales: Option<String>,
    logout_hint: Option<String>,
    /// `yes`: the user confirmed on the page. Without it a post is a logout
    /// request like `GET`.
    confirm: Option<String>,
    /// The page's form token (checked first, with the origin).
    csrf_token: Option<String>,
}

/// Whether a form post is the confirmation page's, not an app's request.
#[derive(Deserialize)]
struct Confirmation {
    confirm: Option<String>,
}

/// Logout (`end_session_endpoint`)
///
/// With `id_token_hint` (an ID token this provider issued, expired ones too):
/// ends the app's session it names, and the browser's session on the hosted
/// pages when it is the same user's (its cookies are cleared), then sends the
/// browser to `post_logout_redirect_uri` with `state`, or to the sign-in page.
/// Without a valid hint, or with one of another user than the browser's, a
/// signed-in browser gets a confirmation page ("Sign out?", RP-Initiated Logout
/// §2); only its form post ends the session. A browser that is not signed in
/// goes straight on.
#[utoipa::path(
    get,
    path = "/logout",
    tag = "oidc",
    params(LogoutRequest),
    responses(
        (status = 200, description = "The confirmation page (the browser is signed in and \
            the request brought no ID token of its user).", body = String,
            content_type = "text/html; charset=utf-8"),
        (status = 303, description = "Signed out: to the app's post-logout URI, or to sign in."),
        LogoutFailures,
    )
)]
pub async fn logout(
    state: State,
    ctx: Context,
    chrome: Option<Chrome>,
    req: HttpRequest,
) -> HttpResponse {
    let request = match web::Query::<LogoutRequest>::from_query(req.query_string()) {
        Ok(query) => query.into_inner(),
        Err(_) => return actix_web::ResponseError::error_response(&unparsable()),
    };
    end_session(&state, &ctx, &req, chrome, request).await
}

/// Logout, as a form post
///
/// An app's logout request as a form: the same as `GET`. The confirmation
/// page's post (`confirm=yes` with its form token, from this server's page
/// only: 403 `csrf_failed` otherwise) ends the browser's session, then goes to
/// the app's registered `post_logout_redirect_uri` with `state`, or shows a
/// "signed out" page.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "oidc",
    request_body(content = LogoutForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The confirmation page, or (confirmed) the signed-out \
            page.", body = String, content_type = "text/html; charset=utf-8"),
        (status = 303, description = "As for `GET`; confirmed: to the app's post-logout URI."),
        (status = 403, description = "A confirmation not from this server's page \
            (`csrf_failed`).", body = String, content_type = "text/html; charset=utf-8"),
        LogoutFormFailures,
    )
)]
pub async fn logout_form(
    state: State,
    ctx: Context,
    chrome: Option<Chrome>,
    req: HttpRequest,
    body: Body,
) -> HttpResponse {
    let confirmed = form_fields::<Confirmation>(&req, &body.0)
        .and_then(|c| c.confirm)
        .filter(|c| c == "yes");
    if let (Some(_), Some(chrome)) = (confirmed, chrome.as_ref()) {
        let request = match hosted::forms::accept::<LogoutRequest>(chrome, &req, &body.0) {
            Ok(request) => request,
            Err(page) => return *page,
        };
        return confirmed_logout(&state, &ctx, chrome, request).await;
    }
    let Some(request) = form_fields::<LogoutRequest>(&req, &body.0) else {
        return actix_web::ResponseError::error_response(&unparsable());
    };
    end_session(&state, &ctx, &req, chrome, request).await
}

/// A logout request, checked: the hint's claims (an ID token this provider
/// signed), the client (named or the hint's), and the post-logout URI (one of
/// that client's, exactly). Anything that does not check is refused whole
/// (RP-Initiated Logout §4): nothing is ended.
struct CheckedLogout {
    hint: Option<Map<String, Value>>,
    client: Option<ClientView>,
    back: Option<String>,
}

async fn check_logout(
    state: &AppState,
    request: &mut LogoutRequest,
) -> Result<CheckedLogout, ApiError> {
    for value in [
        &mut request.id_token_hint,
        &mut request.post_logout_redirect_uri,
        &mut request.client_id,
        &mut request.state,
        &mut request.ui_locales,
        &mut request.logout_hint,
    ] {
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(unparsable());
        }
        present(value);
    }
    // The hint: an ID token we signed (typ `JWT`: an `at+jwt` access token is
    // no hint), whose lifetime is not checked: an app signs out long after it
    // signed in.
    let hint = request
        .id_token_hint
        .as_deref()
        .and_then(|t| {
            state
                .auth
                .tokens()
                .jwt_keys()
                .verify(t, &["JWT"], Utc::now())
                .ok()
        })
        .map(|verified| verified.claims)
        .filter(|claims| claims.get("iss").and_then(Value::as_str) == Some(&state.oidc.issuer));
    if request.id_token_hint.is_some() && hint.is_none() {
        return Err(invalid_logout());
    }
    let hinted_client = hint
        .as_ref()
        .and_then(|c| c.get("aud"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let (Some(named), Some(hinted)) = (&request.client_id, &hinted_client) {
        if named != hinted {
            return Err(invalid_logout());
        }
    }
    let client = match request.client_id.clone().or(hinted_client) {
        Some(id) => Some(
            state
                .oauth_clients
                .find(&id)
                .await?
                .ok_or_else(unknown_client)?,
        ),
        None => None,
    };
    let back = match (&request.post_logout_redirect_uri, &client) {
        (None, _) => None,
        (Some(uri), Some(client)) if client.post_logout_redirect_uris.iter().any(|u| u == uri) => {
            Some(uri.clone())
        }
        (Some(_), _) => return Err(invalid_logout()),
    };
    Ok(CheckedLogout { hint, client, back })
}

/// Where the browser goes after a logout: the app's post-logout URI with its
/// `state`, else the sign-in page.
fn after_logout(back: Option<&str>, app_state: Option<&str>) -> Result<String, ApiError> {
    let Some(uri) = back else {
        return Ok("/sign-in".to_owned());
    };
    let mut url = url::Url::parse(uri).map_err(|_| invalid_logout())?;
    if let Some(app_state) = app_state {
        url.query_pairs_mut().append_pair("state", app_state);
    }
    Ok(url.to_string())
}

/// Ends the browser's session of `user_id`/`session_id` (a failure is logged:
/// the cookies are cleared all the same).
async fn end_browser_session(state: &AppState, ctx: &Context, user_id: Uuid, session_id: Uuid) {
    match state.auth.logout(user_id, session_id, &ctx.0).await {
        Ok(written) => {
            state.revoked.insert(session_id, Utc::now());
            state.settle(written).await;
        }
        Err(AuthError::SessionNotFound) => {}
        Err(e) => tracing::warn!(error = %e, "the browser's session could not be ended"),
    }
}

pub(super) async fn end_session(
    state: &AppState,
    ctx: &Context,
    req: &HttpRequest,
    chrome: Option<Chrome>,
    mut request: LogoutRequest,
) -> HttpResponse {
    let checked = match check_logout(state, &mut request).await {
        Ok(checked) => checked,
        Err(e) => return actix_web::ResponseError::error_response(&e),
    };
    let claim = |name: &str| {
        checked
            .hint
            .as_ref()
            .and_then(|c| c.get(name))
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Uuid>().ok())
    };
    if let Some(session_id) = claim("sid") {
        end_app_session(state, &ctx.0, session_id).await;
    }
    let location = match after_logout(checked.back.as_deref(), request.state.as_deref()) {
        Ok(location) => location,
        Err(e) => return actix_web::ResponseError::error_response(&e),
    };
    let browser = crate::browser_session::cookie_value(req, crate::browser_session::ACCESS_COOKIE)
        .and_then(|token| live_claims(state, token))
        .filter(|claims| claims.kind == SubjectKind::User);
    let mut answer = HttpResponse::SeeOther();
    answer
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    match (browser, claim("sub")) {
        // Nothing to end on the pages.
        (None, _) => {}
        // The app's ID token is this browser's user's: they asked through it.
        (Some(b), Some(user)) if b.user_id == user => {
            end_browser_session(state, ctx, b.user_id, b.session_id).await;
            crate::browser_session::clear_session_cookies(&mut answer);
        }
        // No ID token of this user: ask them (the app's session named by a
        // hint has ended already).
        (Some(b), _) => {
            let Some(mut chrome) = chrome else {
                // Without the pages there is no one to ask: the browser's
                // session stays.
                return answer.finish();
            };
            hosted::logout::apply_ui_locales(
                &mut chrome,
                req.query_string(),
                request.ui_locales.as_deref(),
            );
            let email = match state.queries.account(b.user_id).await {
                Ok(account) => account.map(|a| a.email),
                Err(e) => {
                    tracing::warn!(error = %e, "the signed-in account could not be read");
                    None
                }
            };
            let fields: Vec<(&'static str, String)> = [
                (
                    "client_id",
                    checked.client.as_ref().map(|c| c.client_id.to_string()),
                ),
                ("post_logout_redirect_uri", checked.back.clone()),
                ("state", request.state.clone()),
                ("ui_locales", request.ui_locales.clone()),
            ]
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect();
            return hosted::logout::confirmation(
                chrome,
                email.as_deref(),
                checked.client.as_ref().map(|c| c.name.as_str()),
                checked.back.as_deref(),
                &fields,
            );
        }
    }
    answer.finish()
}

/// The confirmation page's post: the user said yes. The request is checked
/// again (the page's fields are only what the browser sent back), the
/// browser's session ends, and the browser goes to the app's post-logout URI or
/// sees the signed-out page.
async fn confirmed_logout(
    state: &AppState,
    ctx: &Context,
    chrome: &Chrome,
    mut request: LogoutRequest,
) -> HttpResponse {
    // The page never carries a hint; one sent with a confirmation is no part of it.
    request.id_token_hint = None;
    let checked = match check_logout(state, &mut request).await {
        Ok(checked) => checked,
        Err(e) => {
            return hosted::error_page(chrome, actix_web::ResponseError::status_code(&e), e.code())
        }
    };
    if let Some(session) = &chrome.session {
        end_browser_session(state, ctx, session.user_id, session.session_id).await;
    }
    let Some(back) = checked.back.as_deref() else {
        return hosted::logout::signed_out(chrome);
    };
    let location = match after_logout(Some(back), request.state.as_deref()) {
        Ok(location) => location,
        Err(e) => {
            return hosted::error_page(chrome, actix_web::ResponseError::status_code(&e), e.code())
        }
    };
    let mut answer = chrome.redirect(&location);
    crate::browser_session::clear_session_cookies(&mut answer);
    answer.finish()
}
