//! Social login's configuration as the handlers use it: the providers (built
//! from settings by `keyledger-federation`), the app URLs a sign-in may return
//! to, and the cookie that binds a flow to the browser that started it.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::HttpRequest;
use keyledger_federation::{ClientSecret, FederationSettings, Preset, ProviderConfig, Providers};
use url::Url;

use crate::settings::{OAuthProviderSettings, OAuthSettings};

/// Why social login's settings were refused at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SocialLoginError {
    #[error("provider {provider}: KEYLEDGER_OAUTH_{upper}_PRESET = {preset:?} is not google, microsoft, github, kakao, naver or oidc")]
    UnknownPreset {
        provider: String,
        upper: String,
        preset: String,
    },
    #[error("provider {provider}: {variable} is not a URL: {reason}")]
    BadUrl {
        provider: String,
        variable: String,
        reason: String,
    },
    #[error(transparent)]
    Config(#[from] keyledger_federation::ConfigError),
}

/// Social login for the handlers.
#[derive(Clone)]
pub struct SocialLogin {
    pub providers: Providers,
    /// The app URLs a sign-in may return to, matched exactly.
    redirect_uris: Vec<Url>,
    /// Whether the server is reached over https: the binding cookie is then
    /// `__Host-` prefixed and `Secure`.
    secure: bool,
    flow_ttl: std::time::Duration,
    /// The hosted sign-in page's own return URL (`<public>/sign-in/social`):
    /// allowed like the apps' URLs, since this server is the app there.
    pages_return: Url,
}

/// The binding cookie's name over https (`__Host-`: set by this host only, on
/// `/`, `Secure`) and over plain http (development, loopback tests).
const SECURE_COOKIE: &str = "__Host-keyledger-oauth";
const PLAIN_COOKIE: &str = "keyledger-oauth";

impl SocialLogin {
    /// The providers of `settings`, their callbacks under `public_base`.
    pub fn new(settings: &OAuthSettings, public_base: &Url) -> Result<Self, SocialLoginError> {
        let configs = settings
            .providers
            .iter()
            .map(provider_config)
            .collect::<Result<Vec<_>, _>>()?;
        let providers = Providers::new(
            configs,
            FederationSettings {
                timeout: settings.timeout,
                breaker_failures: settings.breaker_failures,
                breaker_cooldown: settings.breaker_cooldown,
            },
            public_base,
        )?;
        let pages_return = Url::parse(&format!(
            "{}/sign-in/social",
            public_base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| SocialLoginError::BadUrl {
            provider: "(hosted pages)".into(),
            variable: "KEYLEDGER_PUBLIC_URL".into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            providers,
            pages_return,
            redirect_uris: settings.redirect_uris.clone(),
            secure: public_base.scheme() == "https",
            flow_ttl: settings.flow_ttl,
        })
    }

    /// The allowlisted URL `uri` is, if any: equal once both are parsed (so
    /// `https://app.example` matches as configured, though it is kept as
    /// `https://app.example/`); no prefix, no other path, query or fragment.
    /// The hosted sign-in page's return URL is allowed too.
    pub fn allows_redirect(&self, uri: &str) -> Option<Url> {
        let uri = Url::parse(uri).ok()?;
        self.redirect_uris
            .iter()
            .chain(std::iter::once(&self.pages_return))
            .find(|allowed| **allowed == uri)
            .cloned()
    }

    /// Where a provider sign-in started from the hosted sign-in page comes
    /// back to: the page that exchanges its code (`GET /sign-in/social`).
    pub fn pages_return(&self) -> &Url {
        &self.pages_return
    }

    fn cookie_name(&self) -> &'static str {
        if self.secure {
            SECURE_COOKIE
        } else {
            PLAIN_COOKIE
        }
    }

    /// The browser's binding value, if its cookie holds a well-formed one.
    pub fn binding_of(&self, request: &HttpRequest) -> Option<String> {
        crate::browser_session::cookie_value(request, self.cookie_name())
            .filter(|value| {
                value.len() == 43
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .map(str::to_owned)
    }

    /// The cookie that binds flows to this browser (HttpOnly, SameSite=Lax so
    /// that the provider's redirect back carries it).
    pub fn binding_cookie(&self, value: &str) -> Cookie<'static> {
        let max_age = i64::try_from(self.flow_ttl.as_secs()).unwrap_or(i64::MAX);
        Cookie::build(self.cookie_name(), value.to_owned())
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .max_age(actix_web::cookie::time::Duration::seconds(max_age))
            .finish()
    }
}

fn provider_config(settings: &OAuthProviderSettings) -> Result<ProviderConfig, SocialLoginError> {
    let name = &settings.name;
    let upper = name.to_ascii_uppercase().replace('-', "_");
    let preset = match &settings.preset {
        Some(preset) => preset
            .parse::<Preset>()
            .map_err(|_| SocialLoginError::UnknownPreset {
                provider: name.clone(),
                upper: upper.clone(),
                preset: preset.clone(),
            })?,
        None => name.parse::<Preset>().unwrap_or(Preset::Oidc),
    };
    let url = |suffix: &str, value: &Option<String>| -> Result<Option<Url>, SocialLoginError> {
        value
            .as_deref()
            .map(|v| {
                Url::parse(v).map_err(|e| SocialLoginError::BadUrl {
                    provider: name.clone(),
                    variable: format!("KEYLEDGER_OAUTH_{upper}{suffix}"),
                    reason: e.to_string(),
                })
            })
            .transpose()
    };
    Ok(ProviderConfig {
        name: name.clone(),
        preset,
        display_name: settings.display_name.clone(),
        client_id: settings.client_id.clone(),
        client_secret: settings
            .client_secret
            .as_ref()
            .map(|s| ClientSecret::new(s.expose().to_owned())),
        scopes: settings.scopes.clone(),
        issuer: url("_ISSUER", &settings.issuer)?,
        authorize_url: url("_AUTHORIZE_URL", &settings.authorize_url)?,
        token_url: url("_TOKEN_URL", &settings.token_url)?,
        userinfo_url: url("_USERINFO_URL", &settings.userinfo_url)?,
        trust_mfa: settings.trust_mfa,
        keep_tokens: settings.keep_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_return_url_matches_only_an_allowlisted_one_as_a_whole() {
        let settings = OAuthSettings {
            redirect_uris: vec![
                "https://app.example".parse().unwrap(),
                "https://app.example/done?x=1".parse().unwrap(),
            ],
            ..OAuthSettings::default()
        };
        let social = SocialLogin::new(&settings, &"https://id.example".parse().unwrap()).unwrap();
        for allowed in [
            "https://app.example",
            "https://app.example/",
            "https://APP.example:443/",
            "https://app.example/done?x=1",
            "https://id.example/sign-in/social",
        ] {
            assert!(social.allows_redirect(allowed).is_some(), "{allowed}");
        }
        for refused in [
            "https://app.example/x",
            "https://app.example/done",
            "https://app.example/done?x=2",
            "https://app.example/done?x=1#f",
            "https://app.example.evil.test/",
            "http://app.example/",
            "not a url",
            "https://id.example/sign-in/social?x=1",
            "https://id.example/sign-in",
        ] {
            assert!(social.allows_redirect(refused).is_none(), "{refused}");
        }
    }
}
