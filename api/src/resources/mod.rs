//! The HTTP resources, one module each: its handlers and the registration of its
//! routes. To find a route, take its first segments after `/v1` (or the root, for
//! `/health`, `/metrics`, `/openapi.json`, `/docs`, `/pages/…`) to the module of that name:
//!
//! | Routes | Module |
//! |---|---|
//! | `/v1/auth/{register,login,refresh,logout,password,me,validate,keys}` | [`auth`] |
//! | `/v1/auth/{verify-email,resend-verification,forgot-password,reset-password,unlock}` | [`recovery`] |
//! | `/v1/auth/email-login…` | [`email_login`] |
//! | `/v1/auth/passkey…`, `/v1/passkeys…` | [`passkeys`] |
//! | `/v1/auth/sessions…` | [`sessions`] |
//! | `/v1/auth/oauth…`, `/v1/users/me/identities…` | [`social`] |
//! | `/v1/auth/{authorize,permissions,switch-organization,token}` | [`access`] |
//! | `/v1/users/me` | [`users`] |
//! | `/v1/users/me/email` | [`email_change`] |
//! | `/v1/users/me/invitations…`, `/v1/organizations/{id}/invitations…` | [`invitations`] |
//! | `/v1/organizations…` | [`organizations`] |
//! | `/v1/oidc/clients…`, `/v1/auth/me/consents…` | [`oidc_clients`] |
//! | `/.well-known/openid-configuration`, `/v1/oidc/{authorize,userinfo,revoke,introspect,logout}` | [`oidc`] |
//! | `/v1/admin…` | [`admin`] |
//! | `/v1/audit…` | [`audit`] |
//! | `/v1/oidc/jwks` | [`oidc_keys`] |
//! | `/health…`, `/metrics` | [`operations`] |
//! | `/openapi.json`, `/docs` | [`docs`] |
//! | `/pages/passkeys`, `/pages/passkeys.js` | [`pages`] |
//!
//! The hosted pages (`/sign-in`, `/sign-up`, `/account`, the pages mailed links open,
//! `/assets/…`) live in [`crate::hosted`], one module per page group, registered the
//! same way.
//!
//! Each module has one `routes` function adding its routes, as
//! `.service(endpoint!(module::handler))`, to the scopes of [`Routes`] (or to the app,
//! for the root routes). `UtoipaApp::service` and `Scope::service` only take services
//! that carry their own OpenAPI paths; [`endpoint!`](crate::openapi::Endpoint) builds
//! each route from its handler's `#[utoipa::path]` (path and methods included), so a
//! route cannot be served without being documented. Do not bypass this with
//! `.route(...)`, `.map(...)` or plain actix resources: the e2e test `openapi` checks
//! the document against the running server.

use actix_web::dev::{ServiceFactory, ServiceRequest};
use utoipa_actix_web::{scope, UtoipaApp};

use crate::openapi::RateLimited;

pub mod access;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod docs;
pub mod email_change;
pub mod email_login;
pub mod invitations;
pub mod mfa;
pub mod oidc;
pub mod oidc_clients;
pub mod oidc_keys;
pub mod operations;
pub mod organizations;
pub mod pages;
pub mod passkeys;
pub mod recovery;
pub mod sessions;
pub mod social;
pub mod users;

/// Prefix of the authentication routes, all rate limited (see `rate_limit::Class`).
pub const AUTH_SCOPE: &str = "/v1/auth";

/// The type of an actix scope, which actix does not name outside its crate.
pub(crate) trait ScopeService {
    type Endpoint;
}

impl<T> ScopeService for actix_web::Scope<T> {
    type Endpoint = T;
}

/// A documented scope of `/v1` routes.
pub(crate) type Scope = scope::Scope<<actix_web::Scope as ScopeService>::Endpoint>;

/// The `/v1` scopes, each rate limited as a whole, that resources add routes to.
/// Actix picks the first scope whose prefix matches and never falls through to
/// another, so resources sharing a prefix share its scope.
pub(crate) struct Routes {
    pub(crate) auth: Scope,
    pub(crate) passkeys: Scope,
    pub(crate) users: Scope,
    pub(crate) organizations: Scope,
    pub(crate) admin: Scope,
    pub(crate) audit: Scope,
    pub(crate) mfa: Scope,
    /// Keyledger as an OpenID provider: the client registry, and the protocol
    /// endpoints.
    pub(crate) oidc: Scope,
}

impl Routes {
    pub(crate) fn new() -> Self {
        Self {
            auth: scope::scope(AUTH_SCOPE),
            passkeys: scope::scope("/v1/passkeys"),
            users: scope::scope("/v1/users"),
            organizations: scope::scope("/v1/organizations"),
            admin: scope::scope("/v1/admin"),
            audit: scope::scope("/v1/audit"),
            mfa: scope::scope("/v1/mfa"),
            oidc: scope::scope("/v1/oidc"),
        }
    }

    /// Registers the scopes on `app`, each behind its rate limit (whose classes
    /// `rate_limit::Class::of` gives by path; [`RateLimited`] documents the 429).
    pub(crate) fn mount<T>(self, app: UtoipaApp<T>) -> UtoipaApp<T>
    where
        T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
    {
        app.service(RateLimited(self.auth))
            .service(RateLimited(self.users))
            .service(RateLimited(self.organizations))
            .service(RateLimited(self.admin))
            .service(RateLimited(self.audit))
            .service(RateLimited(self.mfa))
            .service(RateLimited(self.passkeys))
            .service(RateLimited(self.oidc))
    }
}
