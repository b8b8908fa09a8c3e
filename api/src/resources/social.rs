//! Social login (`/v1/auth/oauth/…`) and the account's linked identities
//! (`/v1/users/me/identities…`).
//!
//! The browser goes to `GET /v1/auth/oauth/{provider}/start?redirect_uri=<app URL>`,
//! which sends it to the provider with `state`, `nonce` (OpenID providers) and
//! PKCE S256, and sets a cookie that binds the flow to this browser. The
//! provider sends it back to `…/callback`; Keyledger checks the `state` (once,
//! and only in the browser that started it), exchanges the code, checks the ID
//! token or calls user info, finds, creates or links the account, and sends the
//! browser to the app's URL with a one-time `code` (or `error=<code>`), never a
//! token. The app exchanges the code at `POST /v1/auth/oauth/exchange` for the
//! token pair, or the second-factor step of an account that has one.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_commands::federation::{FlowPurpose, OAuthFlow};
use keyledger_commands::{
    random_secret, AuthError, ExternalIdentityView, FederatedProfile, FederationDone,
};
use keyledger_federation::{Provider, ProviderError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::browser_session::Delivery;
use crate::error::ApiError;
use crate::extract::{Authenticated, Context};
use crate::openapi::{bearer, endpoint, failures, json_body, too_many_attempts, unavailable};
use crate::resources::auth::{login_answer, no_store, TokenResponse};
use crate::resources::mfa::user;
use crate::resources::Routes;
use crate::state::State;

/// The longest `state` an app may have handed back.
const MAX_APP_STATE: usize = 512;

/// The query of a sign-in's start.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StartQuery {
    /// The app's URL to come back to; exactly one of `KEYLEDGER_OAUTH_REDIRECT_URIS`.
    redirect_uri: Option<String>,
    /// The app's own `state` (up to 512 printable characters), handed back with
    /// the answer so the app can check it is its own.
    state: Option<String>,
    /// Passed on to the provider (an address to preselect the account).
    login_hint: Option<String>,
    /// Passed on to the provider (`login`, `consent`, `select_account`).
    prompt: Option<String>,
}

/// A link's start.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// The app's URL to come back to; exactly one of `KEYLEDGER_OAUTH_REDIRECT_URIS`.
    #[schema(example = "https://app.example/settings")]
    redirect_uri: String,
    /// The app's own `state`, handed back with the answer.
    state: Option<String>,
}

/// Where to send the browser.
#[derive(Serialize, ToSchema)]
pub struct ProviderUrl {
    /// The provider's sign-in page; open it in the browser that made this request.
    url: String,
}

/// The query of a provider's callback.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    /// The provider refused (`access_denied` when the person declined).
    error: Option<String>,
    /// RFC 9207: the provider that answered.
    iss: Option<String>,
}

/// A one-time code from a provider's callback.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    code: String,
    /// The `device_token` of an earlier login to this account (optional).
    device_token: Option<String>,
}

/// One configured provider.
#[derive(Serialize, ToSchema)]
pub struct ProviderInfo {
    /// Its name in the routes.
    #[schema(example = "google")]
    name: String,
    #[schema(example = "Google")]
    display_name: String,
}

/// The providers people can sign in with.
#[derive(Serialize, ToSchema)]
pub struct ProviderList {
    providers: Vec<ProviderInfo>,
}

/// One linked identity.
#[derive(Serialize, ToSchema)]
pub struct IdentityResponse {
    id: Uuid,
    #[schema(example = "google")]
    provider: String,
    /// The address the provider gave when it was linked.
    email: Option<String>,
    linked_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
}

impl From<ExternalIdentityView> for IdentityResponse {
    fn from(view: ExternalIdentityView) -> Self {
        Self {
            id: view.identity_id,
            provider: view.provider,
            email: view.email,
            linked_at: view.linked_at,
            last_used_at: view.last_used_at,
        }
    }
}

/// The account's linked identities.
#[derive(Serialize, ToSchema)]
pub struct Identities {
    identities: Vec<IdentityResponse>,
}

/// A provider's access token, for an identity whose provider keeps tokens.
#[derive(Serialize, ToSchema)]
pub struct ProviderAccessToken {
    access_token: String,
    expires_at: Option<DateTime<Utc>>,
    scope: Option<String>,
}

fn unknown_provider() -> ApiError {
    ApiError::UnknownProvider
}

pub(crate) fn bad_redirect_uri() -> ApiError {
    ApiError::bad_request(
        "invalid_redirect_uri",
        "redirect_uri must be exactly one of the app URLs the server allows",
    )
}

pub(crate) fn bad_app_state() -> ApiError {
    ApiError::bad_request(
        "invalid_app_state",
        "state must be at most 512 printable ASCII characters",
    )
}

pub(crate) fn tokens_not_kept() -> ApiError {
    ApiError::bad_request(
        "tokens_not_kept",
        "this identity's provider tokens are not kept (KEYLEDGER_OAUTH_<NAME>_KEEP_TOKENS)",
    )
}

fn provider<'a>(state: &'a State, name: &str) -> Result<&'a Provider, ApiError> {
    state
        .social
        .providers
        .get(name)
        .ok_or_else(unknown_provider)
}

/// The app's `state`, checked: printable ASCII, not too long.
fn app_state(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(s) if s.len() > MAX_APP_STATE || !s.bytes().all(|b| b.is_ascii_graphic()) => {
            Err(bad_app_state())
        }
        other => Ok(other),
    }
}

/// The provider URL for a new flow, kept under its `state` and bound to the
/// browser (its cookie value, made if it has none yet).
async fn begin(
    state: &State,
    request: &HttpRequest,
    provider: &Provider,
    flow: (FlowPurpose, Option<Uuid>),
    (redirect_uri, app_state): (String, Option<String>),
    extra: &[(&str, &str)],
) -> Result<(url::Url, String), ApiError> {
    let authorization = provider
        .authorization(extra)
        .await
        .map_err(|_| ApiError::ProviderUnavailable)?;
    let binding = state
        .social
        .binding_of(request)
        .unwrap_or_else(random_secret);
    let flow = OAuthFlow {
        provider: provider.name().to_owned(),
        purpose: flow.0,
        user_id: flow.1,
        redirect_uri,
        app_state,
        pkce_verifier: authorization.pkce_verifier,
        nonce: authorization.nonce,
    };
    state
        .auth
        .keep_federation_flow(&authorization.state, &binding, &flow)
        .await?;
    Ok((authorization.url, binding))
}

/// List the sign-in providers
///
/// The providers configured (`KEYLEDGER_OAUTH_PROVIDERS`), for a sign-in page's
/// buttons.
#[utoipa::path(
    get,
    path = "/oauth/providers",
    tag = "social login",
    responses(
        (status = 200, description = "The providers.", body = ProviderList),
    )
)]
pub async fn providers(state: State) -> HttpResponse {
    HttpResponse::Ok().json(ProviderList {
        providers: state
            .social
            .providers
            .iter()
            .map(|p| ProviderInfo {
                name: p.name().to_owned(),
                display_name: p.display_name().to_owned(),
            })
            .collect(),
    })
}

failures!(
    /// What `start` can answer besides 302.
    pub StartFailures = [
        unknown_provider(),
        bad_redirect_uri(),
        bad_app_state(),
        ApiError::ProviderUnavailable,
        unavailable(),
    ]
);

/// Sign in with a provider
///
/// Open in the browser (a link, not a fetch). Answers 302 to the provider with
/// `state`, `nonce` (OpenID providers) and PKCE S256, and sets a cookie binding
/// the sign-in to this browser. After the provider, the browser comes back to
/// `redirect_uri` with `code` (exchange it at `POST /v1/auth/oauth/exchange`)
/// or `error`, and the app's `state`. A provider that failed repeatedly answers
/// 503 `provider_unavailable` at once until it recovers.
#[utoipa::path(
    get,
    path = "/oauth/{provider}/start",
    tag = "social login",
    params(("provider" = String, Path, description = "A configured provider"), StartQuery),
    responses(
        (status = 302, description = "To the provider (`Location`); sets the binding cookie."),
        StartFailures,
    )
)]
pub async fn start(
    state: State,
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<StartQuery>,
) -> Result<HttpResponse, ApiError> {
    let provider = provider(&state, &path)?;
    let query = query.into_inner();
    let redirect_uri = query
        .redirect_uri
        .as_deref()
        .and_then(|uri| state.social.allows_redirect(uri))
        .ok_or_else(bad_redirect_uri)?;
    let app_state = app_state(query.state)?;
    let mut extra = Vec::new();
    if let Some(hint) = query.login_hint.as_deref() {
        extra.push(("login_hint", hint));
    }
    if let Some(prompt) = query.prompt.as_deref() {
        extra.push(("prompt", prompt));
    }
    let (url, binding) = begin(
        &state,
        &request,
        provider,
        (FlowPurpose::SignIn, None),
        (redirect_uri.to_string(), app_state),
        &extra,
    )
    .await?;
    Ok(no_store(StatusCode::FOUND)
        .insert_header((actix_web::http::header::LOCATION, url.as_str()))
        .cookie(state.social.binding_cookie(&binding))
        .finish())
}

/// The `error` a provider sent, as the app gets it: the OAuth codes a provider
/// may send as they are, anything else as `provider_error` (the app's URL
/// carries no text the provider chose).
fn provider_refusal(error: &str) -> &'static str {
    match error {
        "access_denied" => "access_denied",
        "login_required" => "login_required",
        "consent_required" => "consent_required",
        "interaction_required" => "interaction_required",
        "temporarily_unavailable" | "server_error" => "provider_unavailable",
        _ => "provider_error",
    }
}

/// The `error` an app gets for a failed exchange or check.
fn exchange_refusal(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::Unavailable => "provider_unavailable",
        ProviderError::Refused { .. } | ProviderError::InvalidResponse(_) => "provider_error",
        ProviderError::InvalidIdToken(_) => "invalid_id_token",
    }
}

/// The `error` an app gets when the account side refused.
fn account_refusal(error: &AuthError) -> &'static str {
    match error {
        AuthError::AccountExists => "account_exists",
        AuthError::IdentityInUse => "identity_in_use",
        AuthError::ProviderAlreadyLinked => "provider_already_linked",
        AuthError::TooManyExternalIdentities => "too_many_identities",
        AuthError::ProviderEmailMissing | AuthError::InvalidEmail => "email_required",
        AuthError::AccountSuspended => "account_suspended",
        AuthError::Conflict => "conflict",
        _ => "server_error",
    }
}

/// 302 to the app's URL with `params` (and its `state`) added to its query.
fn back_to_app(flow: &OAuthFlow, params: &[(&str, &str)]) -> HttpResponse {
    // Kept from the allowlist at the start; a row that no longer parses (a
    // stored value changed by hand) sends nobody anywhere.
    let Ok(mut url) = url::Url::parse(&flow.redirect_uri) else {
        return actix_web::ResponseError::error_response(&ApiError::Auth(AuthError::InvalidState));
    };
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in params {
            query.append_pair(name, value);
        }
        if let Some(app_state) = &flow.app_state {
            query.append_pair("state", app_state);
        }
    }
    no_store(StatusCode::FOUND)
        .insert_header((actix_web::http::header::LOCATION, url.as_str()))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .finish()
}

failures!(
    /// What `callback` can answer besides 302.
    pub CallbackFailures = [unknown_provider(), AuthError::InvalidState, unavailable()]
);

/// A provider's answer
///
/// Where the provider sends the browser back (the redirect URI to register at
/// the provider: `<KEYLEDGER_PUBLIC_URL>/v1/auth/oauth/{provider}/callback`). A
/// `state` that is unknown, used, expired or from another browser is 400
/// `invalid_state`; everything else goes back to the app's `redirect_uri`:
/// `code` (one-time, short-lived), `linked=<identity id>` for a link, or `error`:
/// `access_denied`, `provider_error`, `provider_unavailable`, `invalid_id_token`,
/// `account_exists` (the address has an account that may not be linked
/// automatically: sign in to it and link the provider there),
/// `identity_in_use`, `provider_already_linked`, `email_required`,
/// `account_suspended`, `server_error`.
#[utoipa::path(
    get,
    path = "/oauth/{provider}/callback",
    tag = "social login",
    params(("provider" = String, Path, description = "A configured provider"), CallbackQuery),
    responses(
        (status = 302, description = "To the app's `redirect_uri` with `code`, `linked` or `error`."),
        CallbackFailures,
    )
)]
pub async fn callback(
    state: State,
    request: HttpRequest,
    ctx: Context,
    path: web::Path<String>,
    query: web::Query<CallbackQuery>,
) -> Result<HttpResponse, ApiError> {
    let provider = provider(&state, &path)?;
    let query = query.into_inner();
    let flow_state = query.state.as_deref().ok_or(AuthError::InvalidState)?;
    let binding = state.social.binding_of(&request);
    let flow = state
        .auth
        .take_federation_flow(provider.name(), flow_state, binding.as_deref())
        .await?;
    if let Some(error) = query.error.as_deref() {
        return Ok(back_to_app(&flow, &[("error", provider_refusal(error))]));
    }
    if !provider.accepts_callback_issuer(query.iss.as_deref()).await {
        tracing::warn!(
            provider = provider.name(),
            "a callback named another issuer"
        );
        return Ok(back_to_app(&flow, &[("error", "provider_error")]));
    }
    let Some(code) = query.code.as_deref() else {
        return Ok(back_to_app(&flow, &[("error", "provider_error")]));
    };
    let profile = match provider
        .complete(code, flow_state, &flow.pkce_verifier, flow.nonce.as_deref())
        .await
    {
        Ok(profile) => profile,
        Err(e) => {
            tracing::warn!(provider = provider.name(), error = %e, "a provider's answer was refused");
            return Ok(back_to_app(&flow, &[("error", exchange_refusal(&e))]));
        }
    };
    let tokens_to_keep = if provider.keeps_tokens() {
        serde_json::to_string(&profile.tokens).ok()
    } else {
        None
    };
    let profile = FederatedProfile {
        provider: provider.name().to_owned(),
        subject: profile.subject,
        email: profile.email,
        email_verified: profile.email_verified,
        name: profile.name,
        provider_mfa: profile.provider_mfa && provider.trusts_mfa(),
        tokens_to_keep,
    };
    let request_ctx = match flow.user_id {
        Some(user_id) => keyledger_commands::RequestContext {
            actor: Some(user_id),
            ..ctx.0
        },
        None => ctx.0,
    };
    match state
        .auth
        .finish_federation(&flow, profile, &request_ctx)
        .await
    {
        Ok(FederationDone::SignedIn { code, written }) => {
            state.settle(written).await;
            Ok(back_to_app(&flow, &[("code", &code)]))
        }
        Ok(FederationDone::Linked {
            identity_id,
            written,
        }) => {
            state.settle(written).await;
            Ok(back_to_app(&flow, &[("linked", &identity_id.to_string())]))
        }
        Err(e) => {
            if matches!(e, AuthError::Unavailable(_)) {
                tracing::error!(provider = provider.name(), error = %e, "a social sign-in failed");
            }
            Ok(back_to_app(&flow, &[("error", account_refusal(&e))]))
        }
    }
}

failures!(
    /// What `exchange` can answer besides 200.
    pub ExchangeFailures = [
        json_body(),
        AuthError::InvalidToken,
        AuthError::AccountSuspended,
        AuthError::EmailNotVerified,
        too_many_attempts(),
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Exchange a provider sign-in's code
///
/// The one-time `code` the app got on its `redirect_uri` (it works once, for
/// `KEYLEDGER_OAUTH_CODE_TTL_SECS`) for the token pair, whose `amr` is
/// `["fed", "idp:<provider>"]`; or, for an account with a second factor, the
/// second-factor step (`mfa_required`, as after a password). A provider trusted
/// for its own second factor (`KEYLEDGER_OAUTH_<NAME>_TRUST_MFA`) that asserted
/// one skips the step, and `amr` has `mfa`.
#[utoipa::path(
    post,
    path = "/oauth/exchange",
    tag = "social login",
    request_body = ExchangeRequest,
    responses(
        (status = 200, description = "The token pair, or the second-factor step \
            (`mfa_required`); `Cache-Control: no-store`.", body = TokenResponse),
        ExchangeFailures,
    )
)]
pub async fn exchange(
    state: State,
    ctx: Context,
    delivery: Delivery,
    body: web::Json<ExchangeRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let outcome = state
        .auth
        .exchange_federation_code(&body.code, body.device_token.as_deref(), &ctx.0)
        .await?;
    Ok(login_answer(&state, delivery, outcome).await)
}

failures!(
    /// What `list` can answer besides 200.
    pub ListFailures = [bearer(), ApiError::Forbidden, unavailable()]
);

/// List my linked identities
#[utoipa::path(
    get,
    path = "/me/identities",
    tag = "social login",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account's identities at other providers.",
            body = Identities),
        ListFailures,
    )
)]
pub async fn list(state: State, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let (user_id, _) = user(&caller)?;
    let identities = state.auth.external_identities(user_id).await?;
    Ok(no_store(StatusCode::OK).json(Identities {
        identities: identities.into_iter().map(IdentityResponse::from).collect(),
    }))
}

failures!(
    /// What `link` can answer besides 200.
    pub LinkFailures = [
        json_body(),
        bearer(),
        ApiError::Forbidden,
        unknown_provider(),
        bad_redirect_uri(),
        bad_app_state(),
        AuthError::ReauthenticationRequired,
        AuthError::ProviderAlreadyLinked,
        ApiError::ProviderUnavailable,
        unavailable(),
    ]
);

/// Link a provider to my account
///
/// `POST /v1/users/me/identities/{provider}`, the provider's name in place of `{id}`.
/// After a recent authentication (otherwise 401 `reauthentication_required`).
/// Answers the provider's URL and sets the binding cookie: open the URL in the
/// same browser (call this with the browser's credentials). The browser comes
/// back to `redirect_uri` with `linked=<identity id>`, or `error`
/// (`identity_in_use` when the identity belongs to another account).
#[utoipa::path(
    post,
    path = "/me/identities/{id}",
    tag = "social login",
    security(("bearer" = [])),
    params(("id" = String, Path,
        description = "The provider to link: its name, as in `/v1/auth/oauth/{provider}`")),
    request_body = LinkRequest,
    responses(
        (status = 200, description = "The provider's URL; sets the binding cookie.",
            body = ProviderUrl),
        LinkFailures,
    )
)]
pub async fn link(
    state: State,
    request: HttpRequest,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<LinkRequest>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, session_id) = user(&caller)?;
    let provider = provider(&state, &path)?;
    let body = body.into_inner();
    let redirect_uri = state
        .social
        .allows_redirect(&body.redirect_uri)
        .ok_or_else(bad_redirect_uri)?;
    let app_state = app_state(body.state)?;
    state
        .auth
        .require_recent_authentication(user_id, session_id)
        .await?;
    if state.auth.has_identity_at(user_id, provider.name()).await? {
        return Err(AuthError::ProviderAlreadyLinked.into());
    }
    let (url, binding) = begin(
        &state,
        &request,
        provider,
        (FlowPurpose::Link, Some(user_id)),
        (redirect_uri.to_string(), app_state),
        &[],
    )
    .await?;
    Ok(no_store(StatusCode::OK)
        .cookie(state.social.binding_cookie(&binding))
        .json(ProviderUrl {
            url: url.to_string(),
        }))
}

/// An identity id from the path: a malformed one is just another identity the
/// account does not have.
fn identity_id(path: &str) -> Result<Uuid, ApiError> {
    path.parse()
        .map_err(|_| ApiError::Auth(AuthError::ExternalIdentityNotFound))
}

failures!(
    /// What `unlink` can answer besides 204.
    pub UnlinkFailures = [
        bearer(),
        ApiError::Forbidden,
        AuthError::ReauthenticationRequired,
        AuthError::ExternalIdentityNotFound,
        AuthError::LastWayToSignIn,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Unlink an identity
///
/// After a recent authentication. Refused (409 `last_sign_in_method`) when it is
/// the account's last way to sign in (no password, no passkey, no other
/// identity).
#[utoipa::path(
    delete,
    path = "/me/identities/{id}",
    tag = "social login",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The identity")),
    responses(
        (status = 204, description = "Unlinked."),
        UnlinkFailures,
    )
)]
pub async fn unlink(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, session_id) = user(&caller)?;
    let identity_id = identity_id(&path)?;
    state
        .auth
        .require_recent_authentication(user_id, session_id)
        .await?;
    let request_ctx = ctx.acting_as(&caller.0);
    let written = state
        .auth
        .unlink_external_identity(user_id, identity_id, &request_ctx)
        .await?;
    state.settle(written).await;
    Ok(no_store(StatusCode::NO_CONTENT).finish())
}

failures!(
    /// What `provider_token` can answer besides 200.
    pub ProviderTokenFailures = [
        bearer(),
        ApiError::Forbidden,
        AuthError::ExternalIdentityNotFound,
        tokens_not_kept(),
        ApiError::ProviderUnavailable,
        unavailable(),
    ]
);

/// Get the provider's access token of an identity
///
/// For providers configured to keep their tokens
/// (`KEYLEDGER_OAUTH_<NAME>_KEEP_TOKENS=on`): the provider's access token for
/// calling its APIs on the person's behalf, refreshed with the provider when it
/// has expired (or expires within a minute) and a refresh token was given.
#[utoipa::path(
    post,
    path = "/me/identities/{id}/token",
    tag = "social login",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The identity")),
    responses(
        (status = 200, description = "The provider's access token; `Cache-Control: no-store`.",
            body = ProviderAccessToken),
        ProviderTokenFailures,
    )
)]
pub async fn provider_token(
    state: State,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, _) = user(&caller)?;
    let identity_id = identity_id(&path)?;
    let provider_name = state
        .auth
        .external_identity_provider(user_id, identity_id)
        .await?;
    let provider = state
        .social
        .providers
        .get(&provider_name)
        .filter(|p| p.keeps_tokens())
        .ok_or_else(tokens_not_kept)?;
    let kept = state
        .auth
        .kept_provider_tokens(user_id, identity_id)
        .await?
        .ok_or_else(tokens_not_kept)?;
    let mut tokens: keyledger_federation::ProviderTokens =
        serde_json::from_str(&kept).map_err(|_| tokens_not_kept())?;
    let stale = tokens
        .expires_at
        .is_some_and(|at| at <= Utc::now() + chrono::Duration::seconds(60));
    if let (true, Some(refresh_token)) = (stale, tokens.refresh_token.clone()) {
        let mut fresh = provider
            .refresh(&refresh_token)
            .await
            .map_err(|_| ApiError::ProviderUnavailable)?;
        // A provider that does not rotate refresh tokens sends none back.
        if fresh.refresh_token.is_none() {
            fresh.refresh_token = Some(refresh_token);
        }
        let json = serde_json::to_string(&fresh).map_err(|e| ApiError::Internal(e.to_string()))?;
        state
            .auth
            .keep_provider_tokens(user_id, identity_id, Some(&json))
            .await?;
        tokens = fresh;
    }
    Ok(no_store(StatusCode::OK).json(ProviderAccessToken {
        access_token: tokens.access_token,
        expires_at: tokens.expires_at,
        scope: tokens.scope,
    }))
}

/// Registers the social login routes in `/v1/auth/oauth/…` and
/// `/v1/users/me/identities…`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.auth = routes
        .auth
        .service(endpoint!(self::providers))
        .service(endpoint!(self::exchange))
        .service(endpoint!(self::start))
        .service(endpoint!(self::callback));
    routes.users = routes
        .users
        .service(endpoint!(self::list))
        // One path for both (actix answers 405 from the first resource that
        // matches a path): a provider's name to link, an identity's id to unlink.
        .service(endpoint!(self::link, self::unlink))
        .service(endpoint!(self::provider_token));
    routes
}
