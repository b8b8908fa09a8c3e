//! The authorization endpoint (OpenID Connect Core §3.1.2): checking the
//! request, signing in on the hosted pages, consent, and the one-time code.

use super::*;

/// An authorization request (OpenID Connect Core §3.1.2.1). Every parameter is
/// optional here so that a missing one is answered as the protocol says (an
/// error sent to the app when the redirect URI is known), not as a parse
/// failure; unknown parameters are ignored, as RFC 6749 §3.1 requires.
#[derive(Debug, Default, Clone, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct AuthorizationRequest {
    /// Must be `code`.
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    /// Exactly one of the client's registered redirect URIs.
    pub redirect_uri: Option<String>,
    /// Space-separated: `openid` and any of `profile email offline_access`.
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    /// PKCE (RFC 7636): the S256 challenge; required of public clients.
    pub code_challenge: Option<String>,
    /// `S256` (`plain` is refused).
    pub code_challenge_method: Option<String>,
    /// Space-separated: `none`, `login`, `consent`.
    pub prompt: Option<String>,
    /// Seconds: a sign-in older than this is asked again.
    pub max_age: Option<String>,
    /// The address to fill in on the sign-in page.
    pub login_hint: Option<String>,
    /// `2` asks for a sign-in with more than one factor.
    pub acr_values: Option<String>,
    /// `query` (the only mode).
    pub response_mode: Option<String>,
    pub ui_locales: Option<String>,
    pub id_token_hint: Option<String>,
    /// Not supported (`request_not_supported`).
    pub request: Option<String>,
    /// Not supported (`request_uri_not_supported`).
    pub request_uri: Option<String>,
    /// Not supported (`registration_not_supported`).
    pub registration: Option<String>,
    /// Set by this server when it sends the browser to sign in again: the
    /// sign-in must be from this instant (Unix seconds) on.
    pub signed_in_after: Option<i64>,
}

impl AuthorizationRequest {
    /// The request as a query string, to come back to after a page.
    pub fn to_query(&self) -> String {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        let mut add = |name: &str, value: &Option<String>| {
            if let Some(value) = value {
                pairs.append_pair(name, value);
            }
        };
        add("response_type", &self.response_type);
        add("client_id", &self.client_id);
        add("redirect_uri", &self.redirect_uri);
        add("scope", &self.scope);
        add("state", &self.state);
        add("nonce", &self.nonce);
        add("code_challenge", &self.code_challenge);
        add("code_challenge_method", &self.code_challenge_method);
        add("prompt", &self.prompt);
        add("max_age", &self.max_age);
        add("login_hint", &self.login_hint);
        add("acr_values", &self.acr_values);
        add("response_mode", &self.response_mode);
        add("ui_locales", &self.ui_locales);
        add(
            "signed_in_after",
            &self.signed_in_after.map(|t| t.to_string()),
        );
        pairs.finish()
    }

    /// The request with every parameter sent without a value taken as omitted
    /// (RFC 6749 §3.1).
    pub fn without_empty(mut self) -> Self {
        for value in [
            &mut self.response_type,
            &mut self.client_id,
            &mut self.redirect_uri,
            &mut self.scope,
            &mut self.state,
            &mut self.nonce,
            &mut self.code_challenge,
            &mut self.code_challenge_method,
            &mut self.prompt,
            &mut self.max_age,
            &mut self.login_hint,
            &mut self.acr_values,
            &mut self.response_mode,
            &mut self.ui_locales,
            &mut self.id_token_hint,
            &mut self.request,
            &mut self.request_uri,
            &mut self.registration,
        ] {
            present(value);
        }
        self
    }

    pub fn path(&self) -> String {
        format!("/v1/oidc/authorize?{}", self.to_query())
    }

    fn prompts(&self) -> BTreeSet<&str> {
        self.prompt
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .collect()
    }

    /// The request without `prompt` value `value`: what the browser comes back
    /// with once that prompt has been shown.
    pub fn without_prompt(&self, value: &str) -> Self {
        let rest: Vec<&str> = self.prompts().into_iter().filter(|p| *p != value).collect();
        Self {
            prompt: (!rest.is_empty()).then(|| rest.join(" ")),
            ..self.clone()
        }
    }
}

/// The authorization request as documented: `client_id` and `redirect_uri` are
/// required (without them nothing can be answered but a 400); the handler reads
/// [`AuthorizationRequest`], where every parameter is optional so that the others
/// are refused as the protocol says.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AuthorizeParams {
    /// Must be `code`.
    response_type: Option<String>,
    /// A registered client's id.
    client_id: String,
    /// Exactly one of the client's registered redirect URIs.
    redirect_uri: String,
    /// Space-separated: `openid` and any of `profile email offline_access`.
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    /// PKCE (RFC 7636): the S256 challenge; required of public clients.
    code_challenge: Option<String>,
    /// `S256` (`plain` is refused).
    code_challenge_method: Option<String>,
    /// Space-separated: `none`, `login`, `consent`.
    prompt: Option<String>,
    /// Seconds: a sign-in older than this is asked again.
    max_age: Option<String>,
    /// The address to fill in on the sign-in page.
    login_hint: Option<String>,
    /// `2` asks for a sign-in with more than one factor.
    acr_values: Option<String>,
    /// `query` (the only mode).
    response_mode: Option<String>,
    ui_locales: Option<String>,
    id_token_hint: Option<String>,
    /// Not supported (`request_not_supported`).
    request: Option<String>,
    /// Not supported (`request_uri_not_supported`).
    request_uri: Option<String>,
    /// Not supported (`registration_not_supported`).
    registration: Option<String>,
    /// Set by this server when it sends the browser to sign in again (Unix seconds).
    signed_in_after: Option<i64>,
}

/// A request whose client and redirect URI are known: from here on, errors go
/// back to the app (RFC 6749 §4.1.2.1).
pub struct CheckedRequest {
    pub client: ClientView,
    pub redirect_uri: String,
    pub scopes: BTreeSet<String>,
    pub request: AuthorizationRequest,
}

/// Where an authorization answer goes: the redirect URI with `params`, the
/// app's `state` and our `iss` (RFC 9207) added to its query.
pub fn answer_url(
    state: &AppState,
    redirect_uri: &str,
    app_state: Option<&str>,
    params: &[(&str, &str)],
) -> String {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return redirect_uri.to_owned();
    };
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in params {
            query.append_pair(name, value);
        }
        if let Some(app_state) = app_state {
            query.append_pair("state", app_state);
        }
        query.append_pair("iss", &state.oidc.issuer);
    }
    url.to_string()
}

pub(super) fn found(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location.to_owned()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// An error the app is told about through the browser.
pub(super) fn to_app(
    state: &AppState,
    checked: &CheckedRequest,
    error: &str,
    description: &str,
) -> HttpResponse {
    found(&answer_url(
        state,
        &checked.redirect_uri,
        checked.request.state.as_deref(),
        &[("error", error), ("error_description", description)],
    ))
}

// Errors the app cannot be told about (no known client, or a redirect URI not
// registered for it): never redirect there, answer the user.

pub fn unknown_client() -> ApiError {
    ApiError::bad_request("invalid_client", "no such client")
}

pub fn unregistered_redirect() -> ApiError {
    ApiError::bad_request(
        "invalid_redirect_uri",
        "redirect_uri must be one of the client's registered redirect URIs, exactly",
    )
}

pub fn unparsable() -> ApiError {
    ApiError::bad_request("invalid_request", "the request's parameters do not parse")
}

failures!(
    /// What the authorization endpoint answers itself (the app cannot be told).
    pub AuthorizeFailures = [unknown_client(), unregistered_redirect(), unparsable(), unavailable()]
);

failures!(
    /// What the authorization endpoint's form post answers itself.
    pub AuthorizeFormFailures = [
        raw_body(),
        unknown_client(),
        unregistered_redirect(),
        unparsable(),
        unavailable(),
    ]
);

/// Checks client and redirect URI (errors shown to the user), then the rest
/// (errors sent to the app). `Ok` carries the request ready for a decision.
pub async fn check_request(
    state: &AppState,
    request: AuthorizationRequest,
) -> Result<CheckedRequest, Box<HttpResponse>> {
    let request = request.without_empty();
    let client_id = request.client_id.as_deref().unwrap_or_default();
    let client = state
        .oauth_clients
        .find(client_id)
        .await
        .map_err(|e| Box::new(actix_web::ResponseError::error_response(&ApiError::from(e))))?;
    let Some(client) = client else {
        return Err(Box::new(actix_web::ResponseError::error_response(
            &unknown_client(),
        )));
    };
    let Some(redirect_uri) = request
        .redirect_uri
        .clone()
        .filter(|uri| client.redirect_uris.iter().any(|r| r == uri))
    else {
        return Err(Box::new(actix_web::ResponseError::error_response(
            &unregistered_redirect(),
        )));
    };
    let mut checked = CheckedRequest {
        client,
        redirect_uri,
        scopes: BTreeSet::new(),
        request,
    };
    let r = &checked.request;
    let fail =
        |error: &str, description: &str| Err(Box::new(to_app(state, &checked, error, description)));
    if r.request.is_some() {
        return fail("request_not_supported", "request objects are not supported");
    }
    if r.request_uri.is_some() {
        return fail("request_uri_not_supported", "request_uri is not supported");
    }
    if r.registration.is_some() {
        return fail(
            "registration_not_supported",
            "registration is not supported",
        );
    }
    match r.response_type.as_deref() {
        Some("code") => {}
        None => return fail("invalid_request", "response_type is required"),
        Some(_) => return fail("unsupported_response_type", "only response_type=code"),
    }
    if r.response_mode.as_deref().is_some_and(|m| m != "query") {
        return fail("invalid_request", "only response_mode=query");
    }
    if !checked
        .client
        .grant_types
        .contains(&GrantType::AuthorizationCode)
    {
        return fail(
            "unauthorized_client",
            "the client may not use the authorization code grant",
        );
    }
    let too_long = |v: &Option<String>| v.as_ref().is_some_and(|v| v.len() > PARAMETER_LIMIT);
    if too_long(&r.state) || too_long(&r.nonce) || too_long(&r.login_hint) {
        return fail(
            "invalid_request",
            "state, nonce and login_hint are limited to 1024 bytes",
        );
    }
    let scopes: BTreeSet<String> = r
        .scope
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if scopes.is_empty() {
        return fail(
            "invalid_scope",
            "scope is required (openid, for OpenID Connect)",
        );
    }
    if let Some(unknown) = scopes
        .iter()
        .find(|s| !checked.client.scopes.iter().any(|allowed| allowed == *s))
    {
        return fail(
            "invalid_scope",
            &format!("the client may not ask for scope {unknown}"),
        );
    }
    match (
        r.code_challenge.as_deref(),
        r.code_challenge_method.as_deref(),
    ) {
        (Some(challenge), Some("S256") | None) => {
            // RFC 7636 §4.2: 43 octets of base64url without padding.
            let decoded = URL_SAFE_NO_PAD.decode(challenge).ok();
            if decoded.is_none_or(|d| d.len() != 32) {
                return fail(
                    "invalid_request",
                    "code_challenge must be a base64url SHA-256",
                );
            }
            if r.code_challenge_method.is_none() {
                return fail("invalid_request", "code_challenge_method must be S256");
            }
        }
        (Some(_), Some(_)) => {
            return fail("invalid_request", "code_challenge_method must be S256");
        }
        (None, Some(_)) => return fail("invalid_request", "code_challenge is missing"),
        (None, None) if !checked.client.confidential => {
            return fail(
                "invalid_request",
                "a public client must send a PKCE code_challenge (S256)",
            );
        }
        (None, None) => {}
    }
    let prompts = r.prompts();
    if prompts.contains("none") && prompts.len() > 1 {
        return fail("invalid_request", "prompt=none cannot be combined");
    }
    if r.max_age
        .as_deref()
        .is_some_and(|m| m.parse::<u64>().is_err())
    {
        return fail("invalid_request", "max_age must be a number of seconds");
    }
    checked.scopes = scopes;
    Ok(checked)
}

/// Whether the request asks for a sign-in whatever the browser holds.
pub(super) fn demands_sign_in(request: &AuthorizationRequest) -> bool {
    request.signed_in_after.is_some()
        || request.prompts().contains("login")
        || request.max_age.is_some()
        || wants_multi_factor(request)
}

pub(super) fn wants_multi_factor(request: &AuthorizationRequest) -> bool {
    request
        .acr_values
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .any(|v| v == ACR_MULTI_FACTOR)
}

/// What the browser's sign-in is worth to this request.
pub(super) fn needs_sign_in(
    request: &AuthorizationRequest,
    session: &AccessClaims,
    now: DateTime<Utc>,
) -> bool {
    let auth_time = session.authenticated_at.unwrap_or(session.issued_at);
    // Sent to sign in again by this server: what happened since counts.
    if let Some(after) = request.signed_in_after {
        return auth_time.timestamp() < after;
    }
    if request.prompts().contains("login") {
        return true;
    }
    // Compared at full precision: `max_age=0` is `prompt=login` (OpenID
    // Connect Core §3.1.2.1), even for a sign-in within the same second. An age
    // beyond what a duration can hold is no limit (and must not panic).
    if let Some(max_age) = request
        .max_age
        .as_deref()
        .and_then(|m| m.parse::<i64>().ok())
        .and_then(chrono::TimeDelta::try_seconds)
    {
        if now - auth_time > max_age {
            return true;
        }
    }
    wants_multi_factor(request) && acr_of(&session.amr) != ACR_MULTI_FACTOR
}

/// Authorization endpoint (OpenID Connect Core §3.1.2)
///
/// Signs the user in on the hosted pages if needed (or again, for `prompt=login`,
/// `max_age`, or `acr_values=2` when the sign-in had one factor), asks for consent
/// for third-party apps, then sends the browser back to the app's `redirect_uri`
/// with a one-time `code`, its `state` and `iss`. Errors about the client or the
/// redirect URI are shown here (400), never sent to an unverified URI.
#[utoipa::path(
    get,
    path = "/authorize",
    tag = "oidc",
    params(AuthorizeParams),
    responses(
        (status = 303, description = "To the app's redirect URI (a code, or an error), to \
            sign in, or to the consent page."),
        AuthorizeFailures,
    )
)]
pub async fn authorize(state: State, req: HttpRequest) -> HttpResponse {
    let request = match web::Query::<AuthorizationRequest>::from_query(req.query_string()) {
        Ok(query) => query.into_inner(),
        Err(_) => return actix_web::ResponseError::error_response(&unparsable()),
    };
    authorize_request(&state, &req, request).await
}

/// Authorization endpoint, form post (OpenID Connect Core §3.1.2.1)
///
/// The same request as a form body.
#[utoipa::path(
    post,
    path = "/authorize",
    tag = "oidc",
    request_body(content = AuthorizationRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "As for `GET`."),
        AuthorizeFormFailures,
    )
)]
pub async fn authorize_form(state: State, req: HttpRequest, body: Body) -> HttpResponse {
    let Some(request) = form_fields::<AuthorizationRequest>(&req, &body.0) else {
        return actix_web::ResponseError::error_response(&unparsable());
    };
    authorize_request(&state, &req, request).await
}

pub(super) async fn authorize_request(
    state: &AppState,
    req: &HttpRequest,
    request: AuthorizationRequest,
) -> HttpResponse {
    let checked = match check_request(state, request).await {
        Ok(checked) => checked,
        Err(answer) => return *answer,
    };
    let now = Utc::now();
    let prompts = checked.request.prompts();
    let session = crate::browser_session::cookie_value(req, crate::browser_session::ACCESS_COOKIE)
        .and_then(|token| live_claims(state, token))
        .filter(|claims| claims.kind == SubjectKind::User);
    let has_session = session.is_some();
    let Some(session) = session.filter(|s| !needs_sign_in(&checked.request, s, now)) else {
        if prompts.contains("none") {
            return to_app(state, &checked, "login_required", "the user must sign in");
        }
        if !has_session && !demands_sign_in(&checked.request) {
            // The access cookie may only have expired: the refresh cookie (sent
            // to the refresh routes only) brings the browser back signed in, or
            // sends it to sign in.
            let query = serde_urlencoded::to_string([("return_to", checked.request.path())])
                .unwrap_or_default();
            return found(&format!("/v1/auth/refresh/resume?{query}"));
        }
        return to_sign_in(&checked.request, now);
    };
    if !checked.client.first_party {
        let consented = match state
            .oauth_clients
            .consented_scopes(session.user_id, checked.client.client_id)
            .await
        {
            Ok(scopes) => scopes,
            Err(e) => return actix_web::ResponseError::error_response(&ApiError::from(e)),
        };
        let covered = checked.scopes.iter().all(|s| consented.contains(s));
        if !covered || prompts.contains("consent") {
            if prompts.contains("none") {
                return to_app(state, &checked, "consent_required", "the user must consent");
            }
            return found(&format!("/consent?{}", checked.request.to_query()));
        }
    }
    // 256 random bits, as every other one-time value of the write side.
    let code = keyledger_commands::random_secret();
    let scope = checked.scopes.iter().cloned().collect::<Vec<_>>().join(" ");
    let grant = AuthorizationGrant {
        client_id: checked.client.client_id,
        user_id: session.user_id,
        redirect_uri: checked.redirect_uri.clone(),
        scope,
        nonce: checked.request.nonce.clone(),
        code_challenge: checked.request.code_challenge.clone(),
        auth_time: session.authenticated_at.unwrap_or(session.issued_at),
        factors: session.amr.clone(),
        browser_session_id: session.session_id,
    };
    if let Err(e) = state.oidc.codes.issue(&code, &grant).await {
        tracing::error!(error = %e, "an authorization code could not be stored");
        return actix_web::ResponseError::error_response(&ApiError::Auth(AuthError::Unavailable(
            "the code could not be stored".into(),
        )));
    }
    metrics::counter!("keyledger_oidc_codes_total").increment(1);
    found(&answer_url(
        state,
        &checked.redirect_uri,
        checked.request.state.as_deref(),
        &[("code", &code)],
    ))
}

/// To the sign-in page, coming back to this request once signed in; a
/// sign-in from now on is what it will take.
pub(super) fn to_sign_in(request: &AuthorizationRequest, now: DateTime<Utc>) -> HttpResponse {
    let again = AuthorizationRequest {
        max_age: None,
        signed_in_after: Some(now.timestamp()),
        ..request.without_prompt("login")
    };
    let mut query = vec![("return_to", again.path())];
    if let Some(hint) = &request.login_hint {
        query.push(("login_hint", hint.clone()));
    }
    // Asked to sign in again although signed in: the page shows its form.
    query.push(("prompt", "login".to_owned()));
    let query = serde_urlencoded::to_string(query).unwrap_or_default();
    found(&format!("/sign-in?{query}"))
}
