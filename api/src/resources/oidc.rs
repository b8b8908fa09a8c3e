//! Keyledger as an OpenID provider: discovery, the authorization endpoint (the
//! user signs in on the hosted pages), userinfo, revocation (RFC 7009),
//! introspection (RFC 7662) and RP-initiated logout. The token endpoint is
//! `POST /v1/auth/token` (`resources::access`), whose grants are here.
//!
//! Apps are registered OpenID clients (`resources::oidc_clients`). An app's
//! sign-in starts a session of its own, separate from the browser session of the
//! hosted pages: its refresh token works for that app only, and ending one does
//! not end the other unless the app asks (logout).

use std::collections::BTreeSet;

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use keyledger_commands::{
    AccessClaims, AppClient, AppTokens, AuthError, AuthorizationGrant, ClientView,
    OAuthClientError, Redemption, SubjectKind,
};
use keyledger_domain::oauth_client::{AccessTokenFormat, GrantType, SigningAlg};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::UtoipaApp;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{live_claims, Body, Context};
use crate::openapi::{endpoint, failures, raw_body, unavailable};
use crate::resources::Routes;
use crate::state::{AppState, State};

/// The scopes an app may ask for (OpenID Connect Core §5.4, and
/// `offline_access` for a refresh token, §11).
pub const SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// `acr` of a sign-in with one factor, and with more than one (a second factor,
/// or a passkey with user verification). The same values as Keycloak's default
/// levels, so apps written for it ask the same way.
pub const ACR_SINGLE_FACTOR: &str = "1";
pub const ACR_MULTI_FACTOR: &str = "2";

/// The longest `state`, `nonce` or `login_hint` taken: they come back in URLs.
const PARAMETER_LIMIT: usize = 1024;

/// The provider's own settings, built once at start.
#[derive(Clone)]
pub struct Provider {
    /// The issuer identifier: `KEYLEDGER_PUBLIC_URL` without a trailing slash.
    pub issuer: String,
    pub codes: keyledger_commands::AuthorizationCodes,
}

impl Provider {
    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }
}

/// The `acr` of a sign-in with `amr`.
pub fn acr_of(amr: &[String]) -> &'static str {
    if amr.iter().any(|f| f == "mfa") {
        ACR_MULTI_FACTOR
    } else {
        ACR_SINGLE_FACTOR
    }
}

// ---------------------------------------------------------------------------
// Discovery

fn metadata(state: &AppState) -> Value {
    let p = &state.oidc;
    json!({
        "issuer": p.issuer,
        "authorization_endpoint": p.endpoint("/v1/oidc/authorize"),
        "token_endpoint": p.endpoint("/v1/auth/token"),
        "userinfo_endpoint": p.endpoint("/v1/oidc/userinfo"),
        "jwks_uri": p.endpoint("/v1/oidc/jwks"),
        "revocation_endpoint": p.endpoint("/v1/oidc/revoke"),
        "introspection_endpoint": p.endpoint("/v1/oidc/introspect"),
        "end_session_endpoint": p.endpoint("/v1/oidc/logout"),
        "service_documentation": p.endpoint("/docs"),
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "EdDSA", "ES256"],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "azp",
            "sid", "email", "email_verified", "name"
        ],
        "acr_values_supported": [ACR_SINGLE_FACTOR, ACR_MULTI_FACTOR],
        "prompt_values_supported": ["none", "login", "consent"],
        "ui_locales_supported": ["en", "ko"],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "authorization_response_iss_parameter_supported": true,
    })
}

fn discovery_answer(state: &AppState) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .json(metadata(state))
}

/// OpenID Provider metadata (OpenID Connect Discovery 1.0)
///
/// Where every endpoint is and what this provider supports; OpenID client
/// libraries start here.
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tag = "oidc",
    responses((status = 200, description = "The provider's metadata.", body = Object))
)]
pub async fn openid_configuration(state: State) -> HttpResponse {
    discovery_answer(&state)
}

/// Authorization server metadata (RFC 8414)
///
/// The same document as `/.well-known/openid-configuration`, for OAuth 2.0
/// libraries that look here.
#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    tag = "oidc",
    responses((status = 200, description = "The server's metadata.", body = Object))
)]
pub async fn authorization_server_metadata(state: State) -> HttpResponse {
    discovery_answer(&state)
}

// ---------------------------------------------------------------------------
// Authorization endpoint

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

fn found(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location.to_owned()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// An error the app is told about through the browser.
fn to_app(
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
fn demands_sign_in(request: &AuthorizationRequest) -> bool {
    request.signed_in_after.is_some()
        || request.prompts().contains("login")
        || request.max_age.is_some()
        || wants_multi_factor(request)
}

fn wants_multi_factor(request: &AuthorizationRequest) -> bool {
    request
        .acr_values
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .any(|v| v == ACR_MULTI_FACTOR)
}

/// What the browser's sign-in is worth to this request.
fn needs_sign_in(
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
    if let Some(max_age) = request
        .max_age
        .as_deref()
        .and_then(|m| m.parse::<i64>().ok())
    {
        if (now - auth_time).num_seconds() > max_age {
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
    params(AuthorizationRequest),
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
    let Ok(request) = serde_urlencoded::from_bytes::<AuthorizationRequest>(&body.0) else {
        return actix_web::ResponseError::error_response(&unparsable());
    };
    authorize_request(&state, &req, request).await
}

async fn authorize_request(
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
    let code = random_token();
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
fn to_sign_in(request: &AuthorizationRequest, now: DateTime<Utc>) -> HttpResponse {
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

/// 256 random bits, base64url: a code or another one-time value.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------
// Client authentication (RFC 6749 §2.3.1)

/// Who a back-channel request says it is: from `Authorization: Basic`
/// (`client_secret_basic`, the id and secret form-urlencoded first) or from the
/// body (`client_secret_post`, or `none` for a public client's `client_id`).
#[derive(Default)]
pub struct ClientCredentials {
    pub client_id: Option<String>,
    pub secret: Option<String>,
    /// Whether they came in `Authorization: Basic`.
    pub basic: bool,
}

impl ClientCredentials {
    /// From the request's header and the body's `client_id`/`client_secret`;
    /// more than one method at once is `invalid_request` (RFC 6749 §2.3).
    pub fn of(
        req: &HttpRequest,
        body_id: Option<&str>,
        body_secret: Option<&str>,
    ) -> Result<Self, ApiError> {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            return Ok(Self {
                client_id: body_id.map(str::to_owned),
                secret: body_secret.map(str::to_owned),
                basic: false,
            });
        };
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(invalid_client_request(
                "only HTTP Basic client authentication",
            ));
        }
        let decoded = STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| invalid_client_request("the Basic credentials do not decode"))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| invalid_client_request("the Basic credentials do not decode"))?;
        let decode = |part: &str| {
            url::form_urlencoded::parse(format!("v={part}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let (id, secret) = (decode(id), decode(secret));
        if body_secret.is_some() || body_id.is_some_and(|body_id| body_id != id) {
            return Err(invalid_client_request(
                "the client authenticates one way: in the Authorization header or the body",
            ));
        }
        Ok(Self {
            client_id: Some(id),
            secret: Some(secret),
            basic: true,
        })
    }
}

fn invalid_client_request(message: &str) -> ApiError {
    ApiError::bad_request("invalid_request", message.to_owned())
}

/// Authenticates the app presenting `credentials`; any failure is 401
/// `invalid_client` (with `WWW-Authenticate: Basic`, RFC 6749 §5.2).
pub async fn authenticate_client(
    state: &AppState,
    credentials: &ClientCredentials,
) -> Result<ClientView, ApiError> {
    let id = credentials.client_id.as_deref().unwrap_or_default();
    Ok(state
        .oauth_clients
        .authenticate(id, credentials.secret.as_deref())
        .await?)
}

// ---------------------------------------------------------------------------
// Token endpoint grants

/// What the token endpoint answers an app (RFC 6749 §5.1, OpenID Connect Core
/// §3.1.3.3).
#[derive(serde::Serialize, ToSchema)]
pub struct AppTokenResponse {
    access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    token_type: &'static str,
    expires_in: u64,
    /// When the client may use the refresh grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// When the scope holds `openid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    /// The granted scope, space-separated.
    scope: String,
}

fn app_client(client: &ClientView) -> AppClient {
    AppClient {
        client_id: client.client_id,
        access: match client.access_token_format {
            AccessTokenFormat::Paseto => keyledger_commands::AccessTokenForm::Paseto,
            AccessTokenFormat::Jwt => {
                keyledger_commands::AccessTokenForm::Jwt(jws(client.access_token_alg))
            }
        },
    }
}

fn jws(alg: SigningAlg) -> keyledger_commands::JwsAlg {
    match alg {
        SigningAlg::EdDSA => keyledger_commands::JwsAlg::EdDSA,
        SigningAlg::ES256 => keyledger_commands::JwsAlg::ES256,
        SigningAlg::RS256 => keyledger_commands::JwsAlg::RS256,
    }
}

fn invalid_grant(message: &str) -> ApiError {
    ApiError::bad_request("invalid_grant", message.to_owned())
}

/// `grant_type=authorization_code`: the code, once, by the client it was
/// issued to, with the same redirect URI and the PKCE verifier.
pub async fn code_grant(
    state: &AppState,
    ctx: &keyledger_commands::RequestContext,
    client: &ClientView,
    code: Option<&str>,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(ApiError::bad_request(
            "unauthorized_client",
            "the client may not use the authorization code grant",
        ));
    }
    let code = code.ok_or_else(|| ApiError::bad_request("invalid_request", "code is required"))?;
    if code.len() > 128 {
        return Err(invalid_grant("no such code"));
    }
    let redemption = state
        .oidc
        .codes
        .redeem(code)
        .await
        .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))?;
    let grant = match redemption {
        Redemption::Granted(grant) => grant,
        Redemption::Replayed {
            client_id,
            session_id,
        } => {
            // A code presented twice may have been stolen: what it gave ends.
            if let Some(session_id) = session_id.filter(|_| client_id == client.client_id) {
                end_app_session(state, ctx, session_id).await;
            }
            metrics::counter!("keyledger_oidc_code_replays_total").increment(1);
            return Err(invalid_grant("the code was used already"));
        }
        Redemption::Unknown => return Err(invalid_grant("no such code, or it expired")),
    };
    if grant.client_id != client.client_id {
        return Err(invalid_grant("the code was issued to another client"));
    }
    if redirect_uri != Some(grant.redirect_uri.as_str()) {
        return Err(invalid_grant(
            "redirect_uri must be the one the code was sent to",
        ));
    }
    match (&grant.code_challenge, verifier) {
        (Some(challenge), Some(verifier)) => {
            let valid = (43..=128).contains(&verifier.len())
                && verifier
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if !valid || !bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
                return Err(invalid_grant(
                    "code_verifier does not match the code_challenge",
                ));
            }
        }
        (Some(_), None) => return Err(invalid_grant("code_verifier is required")),
        (None, Some(_)) => return Err(invalid_grant("the request sent no code_challenge")),
        (None, None) => {}
    }
    let tokens = state
        .auth
        .start_app_session(&grant, &app_client(client), ctx)
        .await?;
    if let Err(e) = state.oidc.codes.started(code, tokens.session_id).await {
        tracing::warn!(error = %e, "a redeemed code's session could not be recorded");
    }
    state.settle(tokens.written.clone()).await;
    token_answer(state, client, tokens, grant.nonce.as_deref()).await
}

/// `grant_type=refresh_token`: rotation and reuse detection as for Keyledger's
/// own refresh, for the client the session was granted to; `scope`, if sent,
/// may only narrow what was granted (RFC 6749 §6), and is not kept.
pub async fn refresh_grant(
    state: &AppState,
    ctx: &keyledger_commands::RequestContext,
    client: &ClientView,
    refresh_token: Option<&str>,
    scope: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    if !client.grant_types.contains(&GrantType::RefreshToken) {
        return Err(ApiError::bad_request(
            "unauthorized_client",
            "the client may not use the refresh token grant",
        ));
    }
    let token = refresh_token
        .ok_or_else(|| ApiError::bad_request("invalid_request", "refresh_token is required"))?;
    let mut tokens = match state
        .auth
        .refresh_app_session(token, &app_client(client), ctx)
        .await
    {
        Ok(tokens) => tokens,
        Err(AuthError::RefreshTokenReused {
            session_id,
            written,
        }) => {
            state.revoked.insert(session_id, Utc::now());
            state.settle(written).await;
            return Err(invalid_grant(
                "the refresh token was used already; the session ended",
            ));
        }
        Err(AuthError::InvalidRefreshToken) => {
            return Err(invalid_grant("the refresh token is not valid"))
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(requested) = scope {
        let granted: BTreeSet<&str> = tokens.scope.split_whitespace().collect();
        let requested: BTreeSet<&str> = requested.split_whitespace().collect();
        if !requested.is_subset(&granted) {
            return Err(ApiError::bad_request(
                "invalid_scope",
                "a refresh may not ask for more than was granted",
            ));
        }
        tokens.scope = requested.into_iter().collect::<Vec<_>>().join(" ");
    }
    token_answer(state, client, tokens, None).await
}

async fn token_answer(
    state: &AppState,
    client: &ClientView,
    tokens: AppTokens,
    nonce: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let scopes: BTreeSet<&str> = tokens.scope.split_whitespace().collect();
    let id_token = if scopes.contains("openid") {
        Some(id_token(state, client, &tokens, &scopes, nonce).await?)
    } else {
        None
    };
    let refresh_token = client
        .grant_types
        .contains(&GrantType::RefreshToken)
        .then(|| tokens.refresh_token.expose().to_owned());
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(AppTokenResponse {
            access_token: tokens.access_token,
            token_type: "Bearer",
            expires_in: tokens.expires_in,
            refresh_token,
            id_token,
            scope: tokens.scope,
        }))
}

/// The user's claims a scope releases (OpenID Connect Core §5.4), from the
/// users read model.
async fn scoped_claims(
    state: &AppState,
    user_id: Uuid,
    scopes: &BTreeSet<&str>,
    claims: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    if !scopes.contains("email") && !scopes.contains("profile") {
        return Ok(());
    }
    let account = state
        .queries
        .account(user_id)
        .await
        .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))?;
    let Some(account) = account else {
        return Ok(());
    };
    if scopes.contains("email") {
        claims.insert("email".into(), json!(account.email));
        claims.insert("email_verified".into(), json!(account.email_verified));
    }
    if scopes.contains("profile") {
        if let Some(name) = account.display_name {
            claims.insert("name".into(), json!(name));
        }
    }
    Ok(())
}

async fn id_token(
    state: &AppState,
    client: &ClientView,
    tokens: &AppTokens,
    scopes: &BTreeSet<&str>,
    nonce: Option<&str>,
) -> Result<String, ApiError> {
    let now = Utc::now().timestamp();
    let lifetime = i64::try_from(tokens.expires_in).unwrap_or(900);
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(state.oidc.issuer));
    claims.insert("sub".into(), json!(tokens.user_id));
    claims.insert("aud".into(), json!(client.client_id));
    claims.insert("azp".into(), json!(client.client_id));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + lifetime));
    claims.insert("auth_time".into(), json!(tokens.auth_time.timestamp()));
    claims.insert("sid".into(), json!(tokens.session_id));
    claims.insert("acr".into(), json!(acr_of(&tokens.factors)));
    if !tokens.factors.is_empty() {
        claims.insert("amr".into(), json!(tokens.factors));
    }
    if let Some(nonce) = nonce {
        claims.insert("nonce".into(), json!(nonce));
    }
    scoped_claims(state, tokens.user_id, scopes, &mut claims).await?;
    state
        .auth
        .tokens()
        .jwt_keys()
        .sign(jws(client.id_token_alg), "JWT", &Value::Object(claims))
        .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))
}

async fn end_app_session(
    state: &AppState,
    ctx: &keyledger_commands::RequestContext,
    session_id: Uuid,
) {
    match state.auth.end_app_session(session_id, ctx).await {
        Ok(Some(written)) => {
            state.revoked.insert(session_id, Utc::now());
            state.settle([written]).await;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "an app's session could not be ended"),
    }
}

// ---------------------------------------------------------------------------
// Userinfo

/// The bearer token of a userinfo request: the `Authorization` header only
/// (RFC 6750 §2.1; a token in a query string would land in logs).
fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// UserInfo (OpenID Connect Core §5.3)
///
/// The signed-in user's claims for an access token with scope `openid`: `sub`,
/// and `email`/`email_verified` (scope `email`) and `name` (scope `profile`).
/// The token goes in `Authorization: Bearer`.
#[utoipa::path(
    get,
    path = "/userinfo",
    tag = "oidc",
    responses(
        (status = 200, description = "The user's claims.", body = Object),
        UserinfoFailures,
    ),
    security(("bearer" = []))
)]
pub async fn userinfo(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let claims = bearer_token(&req)
        .and_then(|token| live_claims(&state, token))
        .filter(|claims| claims.kind == SubjectKind::User)
        .ok_or(ApiError::Unauthorized)?;
    // Keyledger's own tokens carry no scope and speak for the whole account.
    let scopes: BTreeSet<&str> = match claims.scope.as_deref() {
        Some(scope) => scope.split_whitespace().collect(),
        None => SCOPES.into_iter().collect(),
    };
    if !scopes.contains("openid") {
        return Err(ApiError::InsufficientScope);
    }
    let mut answer = Map::new();
    answer.insert("sub".into(), json!(claims.user_id));
    scoped_claims(&state, claims.user_id, &scopes, &mut answer).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(Value::Object(answer)))
}

failures!(
    /// What `userinfo` can answer besides 200.
    pub UserinfoFailures = [ApiError::Unauthorized, ApiError::InsufficientScope, unavailable()]
);

/// UserInfo, as a post (OpenID Connect Core §5.3.1)
///
/// The same as `GET`.
#[utoipa::path(
    post,
    path = "/userinfo",
    tag = "oidc",
    responses(
        (status = 200, description = "The user's claims.", body = Object),
        UserinfoFailures,
    ),
    security(("bearer" = []))
)]
pub async fn userinfo_post(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    userinfo(state, req).await
}

// ---------------------------------------------------------------------------
// Revocation and introspection

/// A revocation or introspection request (RFC 7009 §2.1, RFC 7662 §2.1), with
/// the client's credentials in the body or in `Authorization: Basic`.
#[derive(Deserialize, ToSchema)]
pub struct TokenQuery {
    token: Option<String>,
    /// `access_token` or `refresh_token`: a hint, tried first.
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn token_query(req: &HttpRequest, body: &[u8]) -> Result<TokenQuery, ApiError> {
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(ApiError::UnsupportedMediaType);
    }
    serde_urlencoded::from_bytes(body)
        .map_err(|_| ApiError::bad_request("invalid_request", "the form does not parse"))
}

failures!(
    /// What `revoke` and `introspect` can answer besides 200.
    pub TokenQueryFailures = [
        raw_body(),
        crate::resources::access::invalid_request(),
        keyledger_commands::OAuthClientError::InvalidClient,
        unavailable(),
    ]
);

/// Token revocation (RFC 7009)
///
/// Ends the session behind a refresh token or an access token the calling
/// client was issued (the app's sign-in ends: every token of it stops working
/// at once). An unknown, invalid or already revoked token, or another client's,
/// answers 200 all the same (§2.2).
#[utoipa::path(
    post,
    path = "/revoke",
    tag = "oidc",
    request_body(content = TokenQuery, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or nothing to revoke."),
        TokenQueryFailures,
    )
)]
pub async fn revoke(
    state: State,
    ctx: Context,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let query = token_query(&req, &body.0)?;
    let credentials = ClientCredentials::of(
        &req,
        query.client_id.as_deref(),
        query.client_secret.as_deref(),
    )?;
    let client = authenticate_client(&state, &credentials).await?;
    let token = query
        .token
        .ok_or_else(|| ApiError::bad_request("invalid_request", "token is required"))?;
    let refresh_first = query.token_type_hint.as_deref() == Some("refresh_token");
    let session = token_session(&state, &token, refresh_first).await?;
    if let Some((session_id, client_id)) = session {
        if client_id == Some(client.client_id) {
            end_app_session(&state, &ctx.0, session_id).await;
        }
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

/// The session a token belongs to and the client it was granted to, for a
/// refresh token or an access token (tried in the hinted order).
async fn token_session(
    state: &AppState,
    token: &str,
    refresh_first: bool,
) -> Result<Option<(Uuid, Option<Uuid>)>, ApiError> {
    let as_access = || {
        state
            .auth
            .tokens()
            .verify(token)
            .ok()
            .filter(|c| c.kind == SubjectKind::User)
            .map(|c| {
                let client = c.client_id.as_deref().and_then(|id| id.parse().ok());
                (c.session_id, client)
            })
    };
    if !refresh_first {
        if let Some(found) = as_access() {
            return Ok(Some(found));
        }
    }
    if let Some(status) = state.auth.refresh_token_status(token).await? {
        return Ok(Some((status.session_id, status.client_id)));
    }
    Ok(as_access())
}

/// Token introspection (RFC 7662)
///
/// For an authenticated confidential client (a resource server registered as
/// one): whether an access or refresh token is active, and what it is.
/// Inactive tokens answer `{"active": false}` and nothing else.
#[utoipa::path(
    post,
    path = "/introspect",
    tag = "oidc",
    request_body(content = TokenQuery, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`active`, and the token's claims when it is.", body = Object),
        TokenQueryFailures,
    )
)]
pub async fn introspect(
    state: State,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let query = token_query(&req, &body.0)?;
    let credentials = ClientCredentials::of(
        &req,
        query.client_id.as_deref(),
        query.client_secret.as_deref(),
    )?;
    let client = authenticate_client(&state, &credentials).await?;
    if !client.confidential {
        return Err(OAuthClientError::InvalidClient.into());
    }
    let token = query
        .token
        .ok_or_else(|| ApiError::bad_request("invalid_request", "token is required"))?;
    let answer = match introspection(&state, &token, query.token_type_hint.as_deref()).await? {
        Some(answer) => answer,
        None => json!({ "active": false }),
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(answer))
}

async fn introspection(
    state: &AppState,
    token: &str,
    hint: Option<&str>,
) -> Result<Option<Value>, ApiError> {
    let access = || live_claims(state, token).map(|claims| access_introspection(state, claims));
    if hint != Some("refresh_token") {
        if let Some(answer) = access() {
            return Ok(Some(answer));
        }
    }
    if let Some(status) = state.auth.refresh_token_status(token).await? {
        if status.active && !state.revoked.is_revoked(&status.session_id) {
            let mut answer = json!({
                "active": true,
                "token_type": "refresh_token",
                "sub": status.user_id,
                "sid": status.session_id,
                "iss": state.oidc.issuer,
            });
            if let Some(client_id) = status.client_id {
                answer["client_id"] = json!(client_id);
            }
            if let Some(scope) = status.scope {
                answer["scope"] = json!(scope);
            }
            if let Some(expires_at) = status.expires_at {
                answer["exp"] = json!(expires_at.timestamp());
            }
            return Ok(Some(answer));
        }
        return Ok(None);
    }
    Ok(access())
}

fn access_introspection(state: &AppState, claims: AccessClaims) -> Value {
    let mut answer = json!({
        "active": true,
        "token_type": "Bearer",
        "sub": claims.user_id,
        "kind": claims.kind.as_str(),
        "iss": claims.issuer,
        "aud": claims.audience,
        "iat": claims.issued_at.timestamp(),
        "exp": claims.expires_at.timestamp(),
        "jti": claims.token_id,
        "sid": claims.session_id,
    });
    let _ = state;
    if let Some(client_id) = &claims.client_id {
        answer["client_id"] = json!(client_id);
    } else if claims.kind == SubjectKind::ServiceAccount {
        answer["client_id"] = json!(claims.user_id);
    }
    if let Some(scope) = &claims.scope {
        answer["scope"] = json!(scope);
    }
    if let Some(org) = claims.organization_id {
        answer["org"] = json!(org);
        answer["roles"] = json!(claims.roles);
    }
    if let Some(verified) = claims.email_verified {
        answer["email_verified"] = json!(verified);
    }
    if let Some(auth_time) = claims.authenticated_at {
        answer["auth_time"] = json!(auth_time.timestamp());
    }
    if !claims.amr.is_empty() {
        answer["acr"] = json!(acr_of(&claims.amr));
        answer["amr"] = json!(claims.amr);
    }
    answer
}

// ---------------------------------------------------------------------------
// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0)

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
    pub LogoutFailures = [invalid_logout(), unknown_client(), unavailable()]
);

failures!(
    /// What `logout`'s form post can answer besides its redirect.
    pub LogoutFormFailures = [raw_body(), invalid_logout(), unknown_client(), unavailable()]
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
    let Ok(request) = serde_urlencoded::from_bytes::<LogoutRequest>(&body.0) else {
        return actix_web::ResponseError::error_response(&unparsable());
    };
    end_session(&state, &ctx, &req, request).await
}

async fn end_session(
    state: &AppState,
    ctx: &Context,
    req: &HttpRequest,
    request: LogoutRequest,
) -> HttpResponse {
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

pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.oidc = routes
        .oidc
        .service(endpoint!(self::authorize, self::authorize_form))
        .service(endpoint!(self::userinfo, self::userinfo_post))
        .service(endpoint!(self::revoke))
        .service(endpoint!(self::introspect))
        .service(endpoint!(self::logout, self::logout_form));
    routes
}

/// The discovery documents, at the root as the standards place them.
pub(crate) fn discovery_routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(endpoint!(self::openid_configuration))
        .service(endpoint!(self::authorization_server_metadata))
}
