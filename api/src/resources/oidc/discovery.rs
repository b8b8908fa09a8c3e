//! Discovery: OpenID Connect Discovery 1.0 and RFC 8414 metadata.

use super::*;

pub(super) fn metadata(state: &AppState) -> Value {
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

pub(super) fn discovery_answer(state: &AppState) -> HttpResponse {
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
