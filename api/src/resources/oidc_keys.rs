//! The JWKS (RFC 7517) of the JWTs this server signs: `GET /v1/oidc/jwks`, the
//! `jwks_uri` of OpenID Connect Discovery. Gateways verify RFC 9068 access tokens
//! and relying parties verify ID tokens with it, picking the key by the `kid` of
//! the token's header.

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::openapi::endpoint;
use crate::resources::Routes;
use crate::state::State;

/// A public key as a JWK: the members every key has, and the public parameters
/// of its type (never a private one).
#[derive(Serialize, ToSchema)]
pub struct Jwk {
    /// `OKP` (Ed25519), `EC` (P-256) or `RSA`.
    #[schema(example = "OKP")]
    kty: String,
    /// The key's id, as the `kid` of the tokens it signs. An Ed25519 key's is its
    /// PASERK id, the `kid` of the PASETO tokens it signs too; the others' are
    /// their RFC 7638 thumbprints.
    kid: String,
    /// `EdDSA`, `ES256` or `RS256`.
    #[schema(example = "EdDSA")]
    alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    #[schema(example = "sig")]
    use_: String,
    /// `Ed25519` (OKP) or `P-256` (EC).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    crv: Option<String>,
    /// The public key (OKP) or its x coordinate (EC), base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    x: Option<String>,
    /// The y coordinate (EC), base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    y: Option<String>,
    /// The modulus (RSA), base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    n: Option<String>,
    /// The public exponent (RSA), base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    e: Option<String>,
}

/// The keys that verify the JWTs this server signs.
#[derive(Serialize, ToSchema)]
pub struct JwkSet {
    keys: Vec<Jwk>,
}

/// Public keys for verifying JWTs (JWKS)
///
/// Every key in use: per algorithm (EdDSA, ES256, RS256) the one signing new
/// tokens, and retired ones until every token they signed has expired. Pick the
/// key by the `kid` of the token's header, and accept only its `alg`. Cacheable
/// for five minutes.
#[utoipa::path(
    get,
    path = "/jwks",
    tag = "keys",
    responses(
        (status = 200, description = "The signing keys and retired keys still verifying.",
            body = JwkSet),
    )
)]
pub async fn jwks(state: State) -> HttpResponse {
    let set = state.auth.tokens().jwt_keys().jwks();
    let keys = set["keys"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let keys = keys.iter().map(Jwk::of).collect();
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "public, max-age=300"))
        .json(JwkSet { keys })
}

impl Jwk {
    /// The members `JwtKeys::jwks` writes.
    fn of(key: &serde_json::Value) -> Self {
        let text = |name: &str| key[name].as_str().map(str::to_owned);
        Self {
            kty: text("kty").unwrap_or_default(),
            kid: text("kid").unwrap_or_default(),
            alg: text("alg").unwrap_or_default(),
            use_: text("use").unwrap_or_default(),
            crv: text("crv"),
            x: text("x"),
            y: text("y"),
            n: text("n"),
            e: text("e"),
        }
    }
}

/// Registers the JWKS in `/v1/oidc`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.oidc = routes.oidc.service(endpoint!(self::jwks));
    routes
}
