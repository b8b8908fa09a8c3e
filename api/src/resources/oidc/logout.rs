//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0).

use super::*;

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

/// Logout (`end_session_endpoint`)
///
/// Ends the app's session named by `id_token_hint` and the browser's session on
/// the hosted pages when it is the same user's (its cookies are cleared), then
/// sends the browser to `post_logout_redirect_uri` with `state`, or to the
/// sign-in page. Without a valid `id_token_hint` only the browser's own session
/// ends, and only when the request comes from this server's pages or the app's
/// registered client names where to return (a link elsewhere cannot sign anyone
/// out of their apps).
#[utoipa::path(
    get,
    path = "/logout",
    tag = "oidc",
    params(LogoutRequest),
    responses(
        (status = 303, description = "Signed out: to the app's post-logout URI, or to sign in."),
        LogoutFailures,
    )
)]
pub async fn logout(state: State, ctx: Context, req: HttpRequest) -> HttpResponse {
    let request = match web::Query::<LogoutRequest>::from_query(req.query_string()) {
        Ok(query) => query.into_inner(),
        Err(_) => return actix_web::ResponseError::error_response(&unparsable()),
    };
    end_session(&state, &ctx, &req, request).await
}

/// Logout, as a form post
///
/// The same as `GET`.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "oidc",
    request_body(content = LogoutRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "As for `GET`."),
        LogoutFormFailures,
    )
)]
pub async fn logout_form(state: State, ctx: Context, req: HttpRequest, body: Body) -> HttpResponse {
    let Some(request) = form_fields::<LogoutRequest>(&req, &body.0) else {
        return actix_web::ResponseError::error_response(&unparsable());
    };
    end_session(&state, &ctx, &req, request).await
}

pub(super) async fn end_session(
    state: &AppState,
    ctx: &Context,
    req: &HttpRequest,
    request: LogoutRequest,
) -> HttpResponse {
    let fields = [
        &request.id_token_hint,
        &request.post_logout_redirect_uri,
        &request.client_id,
        &request.state,
        &request.ui_locales,
        &request.logout_hint,
    ];
    if fields
        .iter()
        .any(|f| f.as_deref().is_some_and(|v| v.contains('\0')))
    {
        return actix_web::ResponseError::error_response(&unparsable());
    }
    // The hint: an ID token we signed (its lifetime is not checked: an app
    // signs out long after it signed in).
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
        return actix_web::ResponseError::error_response(&invalid_logout());
    }
    let hinted_client = hint
        .as_ref()
        .and_then(|c| c.get("aud"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let (Some(named), Some(hinted)) = (&request.client_id, &hinted_client) {
        if named != hinted {
            return actix_web::ResponseError::error_response(&invalid_logout());
        }
    }
    let client_id = request.client_id.clone().or(hinted_client);
    let client = match &client_id {
        Some(id) => match state.oauth_clients.find(id).await {
            Ok(Some(client)) => Some(client),
            Ok(None) => return actix_web::ResponseError::error_response(&unknown_client()),
            Err(e) => return actix_web::ResponseError::error_response(&ApiError::from(e)),
        },
        None => None,
    };
    let back = match (&request.post_logout_redirect_uri, &client) {
        (None, _) => None,
        (Some(uri), Some(client)) if client.post_logout_redirect_uris.iter().any(|u| u == uri) => {
            Some(uri.clone())
        }
        (Some(_), _) => return actix_web::ResponseError::error_response(&invalid_logout()),
    };
    let hinted_user = hint
        .as_ref()
        .and_then(|c| c.get("sub"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Uuid>().ok());
    if let Some(session_id) = hint
        .as_ref()
        .and_then(|c| c.get("sid"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Uuid>().ok())
    {
        end_app_session(state, &ctx.0, session_id).await;
    }
    let browser = crate::browser_session::cookie_value(req, crate::browser_session::ACCESS_COOKIE)
        .and_then(|token| live_claims(state, token))
        .filter(|claims| claims.kind == SubjectKind::User);
    // Without a hint, a request from anywhere could sign the browser out; with
    // one, only its own user's browser session ends.
    let ends_browser = match (&browser, hinted_user) {
        (Some(b), Some(user)) => b.user_id == user,
        (Some(_), None) => client.is_some() && back.is_some(),
        (None, _) => false,
    };
    if let (true, Some(b)) = (ends_browser, &browser) {
        match state.auth.logout(b.user_id, b.session_id, &ctx.0).await {
            Ok(written) => {
                state.revoked.insert(b.session_id, Utc::now());
                state.settle(written).await;
            }
            Err(e) => tracing::warn!(error = %e, "the browser's session could not be ended"),
        }
    }
    let location = match back {
        Some(uri) => {
            let Ok(mut url) = url::Url::parse(&uri) else {
                return actix_web::ResponseError::error_response(&invalid_logout());
            };
            if let Some(app_state) = &request.state {
                url.query_pairs_mut().append_pair("state", app_state);
            }
            url.to_string()
        }
        None => "/sign-in".to_owned(),
    };
    let mut answer = HttpResponse::SeeOther();
    answer
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if ends_browser {
        crate::browser_session::clear_session_cookies(&mut answer);
    }
    answer.finish()
}
