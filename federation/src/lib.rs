//! Sign-in with external identity providers.
//!
//! A leaf crate: it speaks OpenID Connect (Google, Microsoft, any issuer) and the OAuth
//! dialects of GitHub, Kakao and Naver, and hands back a checked [`ExternalProfile`]. It
//! knows no database, HTTP server or Keyledger account: the caller keeps the state of a
//! sign-in between [`Provider::authorization`] and [`Provider::complete`] and decides what
//! the profile means.
#![forbid(unsafe_code)]

mod breaker;
mod config;
mod http;
mod oidc;
mod social;
mod types;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use openidconnect::{CsrfToken, PkceCodeChallenge};
use url::Url;

pub use config::{
    ClientSecret, ConfigError, FederationSettings, Preset, ProviderConfig, UnknownPreset,
};
pub use types::{Authorization, ExternalProfile, ProviderError, ProviderTokens};

use breaker::{Breaker, Outcome};
use config::{secure_url, valid_name};
use http::Http;
use oidc::Oidc;
use social::{Endpoints, TokenRequest};

/// Bytes of randomness in a state and a nonce: 256 bits, twice what makes guessing hopeless,
/// at the cost of a few characters in a URL.
const RANDOM_BYTES: u32 = 32;

/// The configured providers, checked once at start. Cheap to clone.
#[derive(Clone)]
pub struct Providers {
    inner: Arc<Vec<Provider>>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.inner.iter().map(|p| p.name()))
            .finish()
    }
}

impl Providers {
    /// Checks every configuration and builds one HTTP client for all providers. The
    /// callback of provider `p` is `{public_base}/v1/auth/oauth/{p}/callback`.
    pub fn new(
        configs: Vec<ProviderConfig>,
        settings: FederationSettings,
        public_base: &Url,
    ) -> Result<Self, ConfigError> {
        let http = Http::new(settings.timeout).map_err(|e| ConfigError::Invalid {
            provider: "*".into(),
            problem: format!("cannot build the HTTP client: {e}"),
        })?;
        let mut seen = HashSet::new();
        let mut providers = Vec::with_capacity(configs.len());
        for config in configs {
            if !seen.insert(config.name.clone()) {
                return Err(ConfigError::DuplicateName(config.name));
            }
            providers.push(Provider::new(config, &settings, public_base, http.clone())?);
        }
        Ok(Providers {
            inner: Arc::new(providers),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.inner.iter().find(|p| p.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Provider> {
        self.inner.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

enum Protocol {
    Oidc(Oidc),
    OAuth(Endpoints),
}

/// One configured provider.
pub struct Provider {
    name: String,
    display_name: String,
    preset: Preset,
    client_id: String,
    client_secret: Option<ClientSecret>,
    scopes: Vec<String>,
    callback: Url,
    trust_mfa: bool,
    keep_tokens: bool,
    protocol: Protocol,
    breaker: Breaker,
    http: Http,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("preset", &self.preset)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// `{base}/v1/auth/oauth/{name}/callback`, whether or not the base ends with a slash.
fn callback_url(public_base: &Url, name: &str) -> Result<Url, url::ParseError> {
    let base = public_base.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/v1/auth/oauth/{name}/callback"))
}

impl Provider {
    fn new(
        c: ProviderConfig,
        settings: &FederationSettings,
        public_base: &Url,
        http: Http,
    ) -> Result<Provider, ConfigError> {
        if !valid_name(&c.name) {
            return Err(ConfigError::BadName(c.name));
        }
        let name = c.name;
        if c.client_id.trim().is_empty() {
            return Err(ConfigError::EmptyClientId(name));
        }
        let callback = callback_url(public_base, &name).map_err(|e| ConfigError::Invalid {
            provider: name.clone(),
            problem: format!("cannot build the callback URL: {e}"),
        })?;
        if !secure_url(&callback) {
            return Err(ConfigError::CallbackNotHttps {
                provider: name,
                url: callback.to_string(),
            });
        }
        let check = |what: &'static str, url: &Url| {
            if secure_url(url) {
                Ok(())
            } else {
                Err(ConfigError::NotHttps {
                    provider: name.clone(),
                    what,
                    url: url.to_string(),
                })
            }
        };
        let scopes = c.scopes.unwrap_or_else(|| {
            c.preset
                .default_scopes()
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        });
        let overrides = [
            ("authorize_url", &c.authorize_url),
            ("token_url", &c.token_url),
            ("userinfo_url", &c.userinfo_url),
        ];
        let protocol = if c.preset.is_oidc() {
            if let Some((what, _)) = overrides.iter().find(|(_, u)| u.is_some()) {
                return Err(ConfigError::OverrideOnOidc {
                    provider: name,
                    preset: c.preset,
                    what,
                });
            }
            let issuer = match (c.issuer, c.preset.default_issuer()) {
                (Some(issuer), _) => issuer,
                (None, Some(default)) => Url::parse(default).expect("default issuer is a URL"),
                (None, None) => return Err(ConfigError::MissingIssuer(name, c.preset)),
            };
            check("issuer", &issuer)?;
            Protocol::Oidc(Oidc::new(
                issuer,
                &c.client_id,
                c.client_secret.as_ref().map(ClientSecret::expose),
                &callback,
                scopes.clone(),
            ))
        } else {
            if c.issuer.is_some() {
                return Err(ConfigError::IssuerNotAllowed(name, c.preset));
            }
            let mut endpoints = Endpoints::documented(c.preset);
            if let Some(u) = c.authorize_url {
                endpoints.authorize = u;
            }
            if let Some(u) = c.token_url {
                endpoints.token = u;
            }
            if let Some(u) = c.userinfo_url {
                endpoints.userinfo = u;
            }
            check("authorize_url", &endpoints.authorize)?;
            check("token_url", &endpoints.token)?;
            check("userinfo_url", &endpoints.userinfo)?;
            Protocol::OAuth(endpoints)
        };
        let display_name = c
            .display_name
            .filter(|d| !d.trim().is_empty())
            .or_else(|| c.preset.default_display_name().map(str::to_owned))
            .unwrap_or_else(|| name.clone());
        Ok(Provider {
            display_name,
            preset: c.preset,
            client_id: c.client_id,
            client_secret: c.client_secret,
            scopes,
            callback,
            trust_mfa: c.trust_mfa,
            keep_tokens: c.keep_tokens,
            protocol,
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
            http,
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    pub fn preset(&self) -> Preset {
        self.preset
    }

    pub fn trusts_mfa(&self) -> bool {
        self.trust_mfa
    }

    pub fn keeps_tokens(&self) -> bool {
        self.keep_tokens
    }

    pub fn is_oidc(&self) -> bool {
        matches!(self.protocol, Protocol::Oidc(_))
    }

    pub fn callback_url(&self) -> &Url {
        &self.callback
    }

    /// Runs one call to the provider through its breaker. Only `Unavailable` counts as a
    /// failure; any answer from the provider, even a refusal, shows it is up.
    async fn guarded<T, F>(&self, call: F) -> Result<T, ProviderError>
    where
        F: Future<Output = Result<T, ProviderError>>,
    {
        if !self.breaker.try_acquire() {
            return Err(ProviderError::Unavailable);
        }
        let result = call.await;
        match &result {
            Ok(_) => self.breaker.record_success(),
            Err(ProviderError::Unavailable) => {
                metrics::counter!(
                    "keyledger_oauth_provider_failures_total",
                    "provider" => self.name.clone()
                )
                .increment(1);
                if self.breaker.record_failure() == Outcome::Opened {
                    tracing::warn!(
                        provider = %self.name,
                        "identity provider unavailable: circuit breaker opened"
                    );
                }
            }
            Err(_) => self.breaker.record_neutral(),
        }
        result
    }

    /// Starts a sign-in: a fresh random state (256 bits, URL-safe), a nonce (OIDC only) and
    /// a PKCE S256 verifier, and the provider URL to send the browser to, with `extra`
    /// parameters (`login_hint`, `prompt`, …) appended. An open breaker answers
    /// `Unavailable` at once, without a network call. OIDC discovery is fetched on first use
    /// and cached; a failure counts for the breaker and is retried next time.
    pub async fn authorization(
        &self,
        extra: &[(&str, &str)],
    ) -> Result<Authorization, ProviderError> {
        match &self.protocol {
            Protocol::Oidc(oidc) => {
                let metadata = self.oidc_metadata(oidc).await?;
                Ok(oidc.authorization(&metadata, extra))
            }
            Protocol::OAuth(endpoints) => {
                if self.breaker.is_open() {
                    return Err(ProviderError::Unavailable);
                }
                Ok(self.oauth_authorization(endpoints, extra))
            }
        }
    }

    /// The discovery document: from memory when there (no network call, so it neither
    /// takes nor settles the breaker's trial), else fetched through the breaker.
    async fn oidc_metadata(&self, oidc: &Oidc) -> Result<Arc<oidc::Metadata>, ProviderError> {
        if let Some(metadata) = oidc.cached_metadata() {
            if self.breaker.is_open() {
                return Err(ProviderError::Unavailable);
            }
            return Ok(metadata);
        }
        self.guarded(oidc.metadata(&self.http)).await
    }

    fn oauth_authorization(&self, endpoints: &Endpoints, extra: &[(&str, &str)]) -> Authorization {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = CsrfToken::new_random_len(RANDOM_BYTES);
        let mut url = endpoints.authorize.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", self.callback.as_str());
            if !self.scopes.is_empty() {
                q.append_pair("scope", &self.scopes.join(" "));
            }
            q.append_pair("state", state.secret())
                .append_pair("code_challenge", challenge.as_str())
                .append_pair("code_challenge_method", "S256");
            for (name, value) in extra {
                q.append_pair(name, value);
            }
        }
        Authorization {
            url,
            state: state.into_secret(),
            nonce: None,
            pkce_verifier: verifier.into_secret(),
        }
    }

    fn token_request<'a>(&'a self, endpoints: &'a Endpoints) -> TokenRequest<'a> {
        TokenRequest {
            preset: self.preset,
            token_url: &endpoints.token,
            client_id: &self.client_id,
            client_secret: self.client_secret.as_ref().map(ClientSecret::expose),
        }
    }

    /// Exchanges the code (with the PKCE verifier) and returns the checked profile. OIDC:
    /// the ID token is checked (signature, with one JWKS refetch on an unknown key; iss,
    /// aud, exp, nonce; azp; iat within 5 minutes ahead and 10 minutes back), and user info
    /// fills in a missing email. OAuth presets: the profile comes from the user endpoint.
    pub async fn complete(
        &self,
        code: &str,
        state: &str,
        pkce_verifier: &str,
        nonce: Option<&str>,
    ) -> Result<ExternalProfile, ProviderError> {
        self.guarded(async {
            match &self.protocol {
                Protocol::Oidc(oidc) => {
                    let (p, provider_mfa, tokens) = oidc
                        .complete(&self.http, code, pkce_verifier, nonce)
                        .await?;
                    Ok(ExternalProfile {
                        subject: p.subject,
                        email: p.email,
                        email_verified: p.email_verified,
                        name: p.name,
                        provider_mfa,
                        tokens,
                    })
                }
                Protocol::OAuth(endpoints) => {
                    let tokens = self
                        .token_request(endpoints)
                        .exchange(&self.http, (code, state), &self.callback, pkce_verifier)
                        .await?;
                    let p = social::fetch_profile(
                        &self.http,
                        self.preset,
                        &endpoints.userinfo,
                        &tokens.access_token,
                    )
                    .await?;
                    Ok(ExternalProfile {
                        subject: p.subject,
                        email: p.email,
                        email_verified: p.email_verified,
                        name: p.name,
                        provider_mfa: false,
                        tokens,
                    })
                }
            }
        })
        .await
    }

    /// RFC 9207: the callback's `iss`, when present, must be the issuer, and a provider
    /// whose metadata says it always sends one must have sent it. This is what stops a
    /// malicious provider from replaying another provider's code at our callback (mix-up).
    /// OAuth presets have no issuer: always true.
    pub async fn accepts_callback_issuer(&self, iss: Option<&str>) -> bool {
        match &self.protocol {
            // Without the metadata the callback could not complete anyway: refuse.
            Protocol::Oidc(oidc) => match self.oidc_metadata(oidc).await {
                Ok(metadata) => oidc::accepts_issuer(&metadata, iss),
                Err(_) => false,
            },
            Protocol::OAuth(_) => true,
        }
    }

    /// Refresh grant, for kept tokens.
    pub async fn refresh(&self, refresh_token: &str) -> Result<ProviderTokens, ProviderError> {
        self.guarded(async {
            match &self.protocol {
                Protocol::Oidc(oidc) => oidc.refresh(&self.http, refresh_token).await,
                Protocol::OAuth(endpoints) => {
                    self.token_request(endpoints)
                        .refresh(&self.http, refresh_token)
                        .await
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests;
