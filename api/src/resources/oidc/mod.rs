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
pub(super) const PARAMETER_LIMIT: usize = 1024;

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

/// A form post's fields (`application/x-www-form-urlencoded`, as OpenID Connect
/// sends its requests by POST); anything else is `invalid_request`.
fn form_fields<T: serde::de::DeserializeOwned>(req: &HttpRequest, body: &[u8]) -> Option<T> {
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    is_form
        .then(|| serde_urlencoded::from_bytes(body).ok())
        .flatten()
}

/// A parameter sent without a value is treated as if omitted (RFC 6749 §3.1,
/// §3.2): `state=` is no state, `client_secret=` no secret.
pub(crate) fn present(value: &mut Option<String>) {
    if value.as_deref().is_some_and(str::is_empty) {
        *value = None;
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

mod authorize;
mod client_auth;
mod discovery;
mod grants;
mod introspection;
mod logout;
mod userinfo;

pub use authorize::*;
pub use client_auth::*;
pub use discovery::*;
pub use grants::*;
pub use introspection::*;
pub use logout::*;
pub use userinfo::*;

pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.oidc = routes
        .oidc
        .service(endpoint!(authorize::authorize, authorize::authorize_form))
        .service(endpoint!(userinfo::userinfo, userinfo::userinfo_post))
        .service(endpoint!(introspection::revoke))
        .service(endpoint!(introspection::introspect))
        .service(endpoint!(logout::logout, logout::logout_form));
    routes
}

/// The discovery documents, at the root as the standards place them.
pub(crate) fn discovery_routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(endpoint!(discovery::openid_configuration))
        .service(endpoint!(discovery::authorization_server_metadata))
}
