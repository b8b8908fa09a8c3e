//! The OIDC presets (Google, Microsoft, any issuer): discovery, the code flow with PKCE and
//! a nonce, and an ID token checked by `openidconnect` plus the two checks it leaves to its
//! callers (`azp` and `iat`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreErrorResponseType, CoreGrantType, CoreIdToken, CoreIdTokenClaims,
    CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
    CoreTokenResponse, CoreUserInfoClaims,
};
use openidconnect::{
    AccessToken, AdditionalProviderMetadata, Audience, AuthType, AuthorizationCode,
    ClaimsVerificationError, ClientId, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, SignatureVerificationError,
    StandardErrorResponse, SubjectIdentifier, TokenResponse, UserInfoError,
};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::http::{Http, TransportError};
use crate::social::Profile;
use crate::types::{Authorization, ProviderError, ProviderTokens};
use crate::RANDOM_BYTES;

/// The one discovery field this crate reads beyond the standard set: whether the provider
/// always sends `iss` on its callback (RFC 9207), so that a callback without one is forged.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub(crate) struct IssParameter {
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

impl AdditionalProviderMetadata for IssParameter {}

pub(crate) type Metadata = ProviderMetadata<
    IssParameter,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type DiscoveredClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// How far ahead of our clock a provider may date an ID token: clocks drift, but a token
/// from the future by more than this is forged or from a broken provider.
pub(crate) const IAT_MAX_FUTURE: chrono::Duration = chrono::Duration::minutes(5);
/// How old an ID token may be when we see it. It is fetched straight from the token
/// endpoint a moment after it was minted; an older one is a replay, and this also bounds
/// how long a captured nonce is worth anything. Generous for slow networks and drift.
pub(crate) const IAT_MAX_AGE: chrono::Duration = chrono::Duration::minutes(10);
/// A key rotation is rare; an attacker sending tokens with made-up key ids must not make
/// us hammer the provider's JWKS endpoint.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// The `iat` rule `openidconnect` leaves to the caller.
pub(crate) fn check_issue_time(iat: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), String> {
    if iat > now + IAT_MAX_FUTURE {
        return Err(format!("issued in the future ({iat}, now {now})"));
    }
    if iat < now - IAT_MAX_AGE {
        return Err(format!("issued too long ago ({iat}, now {now})"));
    }
    Ok(())
}

/// The `azp` rule `openidconnect` leaves to the caller (OIDC Core 3.1.3.7, steps 4-5): a
/// token meant for several audiences must say which of them it was issued to, and that
/// must be us; a present `azp` naming another client means the token was issued to it.
pub(crate) fn check_authorized_party(
    audiences: &[Audience],
    azp: Option<&str>,
    client_id: &str,
) -> Result<(), String> {
    match azp {
        Some(azp) if azp == client_id => Ok(()),
        Some(azp) => Err(format!("azp `{azp}` is not this client")),
        None if audiences.len() > 1 => Err("several audiences and no azp".into()),
        None => Ok(()),
    }
}

/// `url` keeps a root path as `/`, but issuers are compared as exact strings and most are
/// written without it (`https://accounts.google.com`) while some keep it. Both spellings
/// are tried, the bare one first.
pub(crate) fn issuer_spellings(issuer: &Url) -> Vec<String> {
    let s = issuer.as_str();
    if issuer.path() == "/" && issuer.query().is_none() && s.ends_with('/') {
        vec![s.trim_end_matches('/').to_owned(), s.to_owned()]
    } else {
        vec![s.to_owned()]
    }
}

struct Cached {
    metadata: Arc<Metadata>,
    /// When the key set was last fetched again for an unknown key (none since
    /// discovery: a key rotated just after discovery is fetched at once).
    jwks_refetched: Option<Instant>,
}

pub(crate) struct Oidc {
    issuer: Url,
    client_id: ClientId,
    client_secret: Option<openidconnect::ClientSecret>,
    redirect: RedirectUrl,
    scopes: Vec<String>,
    cache: Mutex<Option<Cached>>,
}

impl Oidc {
    pub(crate) fn new(
        issuer: Url,
        client_id: &str,
        client_secret: Option<&str>,
        callback: &Url,
        scopes: Vec<String>,
    ) -> Oidc {
        Oidc {
            issuer,
            client_id: ClientId::new(client_id.to_owned()),
            client_secret: client_secret.map(|s| openidconnect::ClientSecret::new(s.to_owned())),
            redirect: RedirectUrl::from_url(callback.clone()),
            scopes,
            cache: Mutex::new(None),
        }
    }

    fn cached(&self) -> Option<(Arc<Metadata>, Option<Instant>)> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .as_ref()
            .map(|c| (Arc::clone(&c.metadata), c.jwks_refetched))
    }

    /// Keeps `metadata`; `refetched`: its key set was fetched again for an
    /// unknown key (rather than by discovery).
    fn store(&self, metadata: Metadata, refetched: bool) -> Arc<Metadata> {
        let metadata = Arc::new(metadata);
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(Cached {
            metadata: Arc::clone(&metadata),
            jwks_refetched: refetched.then(Instant::now),
        });
        metadata
    }

    /// Discovery once, then from memory. A failure is not cached: the next sign-in tries
    /// again (the breaker keeps that from piling up while the provider is down).
    pub(crate) async fn metadata(&self, http: &Http) -> Result<Arc<Metadata>, ProviderError> {
        if let Some((metadata, _)) = self.cached() {
            return Ok(metadata);
        }
        let mut last = String::new();
        for spelling in issuer_spellings(&self.issuer) {
            let issuer = IssuerUrl::new(spelling)
                .map_err(|e| ProviderError::InvalidResponse(format!("issuer is not a URL: {e}")))?;
            match Metadata::discover_async(issuer, http).await {
                Ok(metadata) => return Ok(self.store(metadata, false)),
                Err(openidconnect::DiscoveryError::Validation(why)) => last = why,
                Err(e) => {
                    tracing::debug!(error = %e, "OIDC discovery failed");
                    return Err(ProviderError::Unavailable);
                }
            }
        }
        tracing::warn!(issuer = %self.issuer, problem = %last, "OIDC discovery answered for another issuer");
        Err(ProviderError::Unavailable)
    }

    /// Basic authentication unless the provider's metadata lists only the form-body method.
    fn client(&self, metadata: &Metadata) -> DiscoveredClient {
        let methods = metadata.token_endpoint_auth_methods_supported();
        let body_only = methods.is_some_and(|m| {
            !m.contains(&CoreClientAuthMethod::ClientSecretBasic)
                && m.contains(&CoreClientAuthMethod::ClientSecretPost)
        });
        CoreClient::from_provider_metadata(
            metadata.clone(),
            self.client_id.clone(),
            self.client_secret.clone(),
        )
        .set_redirect_uri(self.redirect.clone())
        .set_auth_type(if body_only {
            AuthType::RequestBody
        } else {
            AuthType::BasicAuth
        })
    }

    pub(crate) fn cached_metadata(&self) -> Option<Arc<Metadata>> {
        self.cached().map(|(metadata, _)| metadata)
    }

    pub(crate) fn authorization(
        &self,
        metadata: &Metadata,
        extra: &[(&str, &str)],
    ) -> Authorization {
        let client = self.client(metadata);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                || CsrfToken::new_random_len(RANDOM_BYTES),
                || Nonce::new_random_len(RANDOM_BYTES),
            )
            .set_pkce_challenge(challenge);
        // `openid` is always sent by the crate; adding it again would repeat it.
        for scope in self.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        for (name, value) in extra {
            request = request.add_extra_param(*name, *value);
        }
        let (url, state, nonce) = request.url();
        Authorization {
            url,
            state: state.into_secret(),
            nonce: Some(nonce.secret().clone()),
            pkce_verifier: verifier.into_secret(),
        }
    }

    pub(crate) async fn complete(
        &self,
        http: &Http,
        code: &str,
        pkce_verifier: &str,
        nonce: Option<&str>,
    ) -> Result<(Profile, bool, ProviderTokens), ProviderError> {
        // A nonce is always sent by `authorization`, so a caller without one has lost it.
        let nonce = Nonce::new(
            nonce
                .ok_or_else(|| ProviderError::InvalidIdToken("no nonce to check against".into()))?
                .to_owned(),
        );
        let metadata = self.metadata(http).await?;
        let client = self.client(&metadata);
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| ProviderError::InvalidResponse(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(http)
            .await
            .map_err(token_error)?;
        let id_token = token
            .id_token()
            .ok_or_else(|| ProviderError::InvalidResponse("token answer has no ID token".into()))?;

        let (client, claims) = match self.verify(&client, id_token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider may have rotated its keys since discovery.
                let client = self.refetch_jwks(http, &metadata).await?;
                let claims = self
                    .verify(&client, id_token, &nonce)
                    .map_err(id_token_error)?;
                (client, claims)
            }
            Err(e) => return Err(id_token_error(e)),
            Ok(claims) => (client, claims),
        };

        let provider_mfa = claims
            .auth_method_refs()
            .is_some_and(|amr| amr.iter().any(|a| a.as_str() == "mfa"));
        let mut profile = Profile {
            subject: claims.subject().as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified() == Some(true),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_owned())
                .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned())),
        };
        if profile.email.is_none() {
            // Some providers put only `sub` in the ID token and the rest in user info.
            if let Some(info) = self
                .user_info(http, &client, token.access_token(), claims.subject())
                .await?
            {
                profile.email = info.email().map(|e| e.as_str().to_owned());
                profile.email_verified =
                    profile.email.is_some() && info.email_verified() == Some(true);
                if profile.name.is_none() {
                    profile.name = info
                        .name()
                        .and_then(|n| n.get(None))
                        .map(|n| n.as_str().to_owned());
                }
            }
        }
        profile.email_verified = profile.email_verified && profile.email.is_some();
        Ok((profile, provider_mfa, tokens(&token)))
    }

    fn verifier<'a>(
        &self,
        client: &'a DiscoveredClient,
    ) -> openidconnect::IdTokenVerifier<'a, CoreJsonWebKey> {
        client
            .id_token_verifier()
            .set_issue_time_verifier_fn(|iat| check_issue_time(iat, Utc::now()))
    }

    /// Every check on the ID token: the crate's (signature, iss, aud, exp, iat through our
    /// rule, nonce), then `azp`.
    fn verify<'t>(
        &self,
        client: &DiscoveredClient,
        id_token: &'t CoreIdToken,
        nonce: &Nonce,
    ) -> Result<&'t CoreIdTokenClaims, ClaimsVerificationError> {
        let verifier = self.verifier(client);
        let claims = id_token.claims(&verifier, nonce)?;
        check_authorized_party(
            claims.audiences(),
            claims.authorized_party().map(|a| a.as_str()),
            self.client_id.as_str(),
        )
        .map_err(ClaimsVerificationError::InvalidAudience)?;
        Ok(claims)
    }

    /// Refetches the key set, at most once a minute (so that tokens signed with
    /// made-up key ids cannot make us hammer the provider), and returns a client
    /// that uses it.
    async fn refetch_jwks(
        &self,
        http: &Http,
        metadata: &Metadata,
    ) -> Result<DiscoveredClient, ProviderError> {
        let recent = self
            .cached()
            .and_then(|(_, at)| at)
            .is_some_and(|at| at.elapsed() < JWKS_REFETCH_INTERVAL);
        if recent {
            return Err(ProviderError::InvalidIdToken(
                "signed with an unknown key (key set fetched again less than a minute ago)".into(),
            ));
        }
        let jwks = CoreJsonWebKeySet::fetch_async(metadata.jwks_uri(), http)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "JWKS refetch failed");
                ProviderError::Unavailable
            })?;
        let updated = self.store(metadata.clone().set_jwks(jwks), true);
        Ok(self.client(&updated))
    }

    async fn user_info(
        &self,
        http: &Http,
        client: &DiscoveredClient,
        access_token: &AccessToken,
        subject: &SubjectIdentifier,
    ) -> Result<Option<CoreUserInfoClaims>, ProviderError> {
        let Ok(request) = client.user_info(access_token.clone(), Some(subject.clone())) else {
            // No user info endpoint: the ID token is all there is.
            return Ok(None);
        };
        match request.request_async(http).await {
            Ok(info) => Ok(Some(info)),
            Err(UserInfoError::Request(_)) => Err(ProviderError::Unavailable),
            Err(UserInfoError::ClaimsVerification(e)) => Err(ProviderError::InvalidResponse(
                format!("user info rejected: {e}"),
            )),
            Err(e) => Err(ProviderError::InvalidResponse(format!("user info: {e}"))),
        }
    }

    pub(crate) async fn refresh(
        &self,
        http: &Http,
        refresh_token: &str,
    ) -> Result<ProviderTokens, ProviderError> {
        let metadata = self.metadata(http).await?;
        let client = self.client(&metadata);
        let refresh_token = RefreshToken::new(refresh_token.to_owned());
        let token = client
            .exchange_refresh_token(&refresh_token)
            .map_err(|e| ProviderError::InvalidResponse(e.to_string()))?
            .request_async(http)
            .await
            .map_err(token_error)?;
        Ok(tokens(&token))
    }
}

/// RFC 9207 against the discovered issuer (exact string, as the RFC says).
pub(crate) fn accepts_issuer(metadata: &Metadata, iss: Option<&str>) -> bool {
    match iss {
        Some(iss) => iss == metadata.issuer().as_str(),
        None => {
            !metadata
                .additional_metadata()
                .authorization_response_iss_parameter_supported
        }
    }
}

fn tokens(token: &CoreTokenResponse) -> ProviderTokens {
    ProviderTokens {
        access_token: token.access_token().secret().clone(),
        refresh_token: token.refresh_token().map(|t| t.secret().clone()),
        expires_at: token
            .expires_in()
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .and_then(|d| Utc::now().checked_add_signed(d)),
        scope: token
            .scopes()
            .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
    }
}

#[derive(Deserialize)]
struct ErrorOnly {
    error: String,
}

fn token_error(
    e: RequestTokenError<TransportError, StandardErrorResponse<CoreErrorResponseType>>,
) -> ProviderError {
    match e {
        RequestTokenError::ServerResponse(r) => ProviderError::Refused {
            code: error_code(r.error()),
        },
        RequestTokenError::Request(e) => {
            tracing::debug!(error = %e, "token request failed");
            ProviderError::Unavailable
        }
        // An error sent with status 200 fails the success parse; read its code.
        RequestTokenError::Parse(_, body) => match serde_json::from_slice::<ErrorOnly>(&body) {
            Ok(ErrorOnly { error }) => ProviderError::Refused { code: error },
            Err(_) => {
                ProviderError::InvalidResponse("token answer is not the expected JSON".into())
            }
        },
        RequestTokenError::Other(why) => ProviderError::InvalidResponse(why),
    }
}

fn error_code(e: &CoreErrorResponseType) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown_error".into())
}

/// The crate's messages name claims and values, never the token itself.
fn id_token_error(e: ClaimsVerificationError) -> ProviderError {
    ProviderError::InvalidIdToken(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn aud(s: &str) -> Audience {
        Audience::new(s.to_owned())
    }

    #[test]
    fn azp_may_be_absent_with_a_single_audience() {
        assert!(check_authorized_party(&[aud("me")], None, "me").is_ok());
    }

    #[test]
    fn azp_must_name_this_client_when_present() {
        assert!(check_authorized_party(&[aud("me")], Some("me"), "me").is_ok());
        assert!(check_authorized_party(&[aud("me")], Some("other"), "me").is_err());
    }

    #[test]
    fn several_audiences_require_azp() {
        let auds = [aud("me"), aud("api")];
        assert!(check_authorized_party(&auds, None, "me").is_err());
        assert!(check_authorized_party(&auds, Some("me"), "me").is_ok());
        assert!(check_authorized_party(&auds, Some("api"), "me").is_err());
    }

    #[test]
    fn iat_bounds() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let m = chrono::Duration::minutes;
        assert!(check_issue_time(now, now).is_ok());
        assert!(check_issue_time(now + m(5), now).is_ok());
        assert!(check_issue_time(now + m(5) + chrono::Duration::seconds(1), now).is_err());
        assert!(check_issue_time(now - m(10), now).is_ok());
        assert!(check_issue_time(now - m(10) - chrono::Duration::seconds(1), now).is_err());
    }

    #[test]
    fn a_root_issuer_is_tried_without_then_with_its_slash() {
        let google = Url::parse("https://accounts.google.com").unwrap();
        assert_eq!(
            issuer_spellings(&google),
            [
                "https://accounts.google.com",
                "https://accounts.google.com/"
            ]
        );
        let ms = Url::parse("https://login.microsoftonline.com/tid/v2.0").unwrap();
        assert_eq!(
            issuer_spellings(&ms),
            ["https://login.microsoftonline.com/tid/v2.0"]
        );
    }
}
